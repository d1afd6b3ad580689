"""The integrity of a checkpoint: a checksum of every array, recorded at save and verified at restore, and
what becomes of a step that fails (hold_jax/workdir/checkpoints.py saves, checkpoint_restore.py restores).

Checksums. For every array the words of its bytes w_i (uint32) give (sum_i w_i, sum_i (2i + 1) w_i) mod 2^32,
computed on the devices in one jit. Changing any one word changes both sums (2i + 1 is odd, hence invertible
mod 2^32), so a flipped bit is always caught, and the cost is one read of the state in device memory. tensorstore
decodes a damaged chunk without complaint when its bytes are raw, which is why the check is needed at all.

Damage. A step that cannot be read, or whose arrays fail their checksums, is `Damaged`. Restoring the newest
step sets it aside: it is moved to workdir/damaged_checkpoints/<step> with the reason in REASON.txt, never
deleted, so that a user can inspect it or move it back. A failure raised by this package's own code is a bug,
not damage (`raised_by_hold_jax`): it must never cost the user a checkpoint.
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

from hold_jax import multihost

DAMAGED_DIR = "damaged_checkpoints"
CHECKSUM_FORMAT = "uint32 words w_i of each array: [sum w_i, sum (2i+1) w_i] mod 2^32"


class Damaged(ValueError):
  """A checkpoint read without error whose contents fail the checksum test."""


# ----------------------------------------------------------------------------------------------------------
# Checksums.


def _key_name(key) -> str:
  for attribute in ("key", "name", "idx"):
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def leaves_by_path(tree) -> dict[str, Any]:
  """{'params/Dense_0/kernel': leaf, ...}: the same names for a TrainState, its state dict and orbax's metadata
  tree (a dataclass field, a dict key and a list index are all written as their name)."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {"/".join(_key_name(key) for key in path): leaf for path, leaf in flat}


def _words(x: jax.Array) -> jax.Array:
  """The bytes of x as a flat uint32 vector (narrower types widened word by word, wider ones split)."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  size = x.dtype.itemsize
  if size == 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
  if size < 4:
    unsigned = {1: jnp.uint8, 2: jnp.uint16}[size]
    return jax.lax.bitcast_convert_type(x, unsigned).reshape(-1).astype(jnp.uint32)
  return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)  # 8 bytes: (..., 2) words


@jax.jit
def _leaf_sums(leaves: list[jax.Array]) -> jax.Array:
  """(num_leaves, 2) uint32: [sum w_i, sum (2i+1) w_i] of each leaf."""
  sums = []
  for leaf in leaves:
    words = _words(leaf)
    odd = 2 * jnp.arange(words.shape[0], dtype=jnp.uint32) + 1
    sums.append(jnp.stack([jnp.sum(words, dtype=jnp.uint32), jnp.sum(words * odd, dtype=jnp.uint32)]))
  return jnp.stack(sums) if sums else jnp.zeros((0, 2), jnp.uint32)


def checksums(tree) -> dict[str, list[int]]:
  """{path: [sum, odd-weighted sum]} of every array leaf of `tree` (see the module docstring)."""
  named = leaves_by_path(tree)
  sums = np.asarray(jax.device_get(_leaf_sums(list(named.values()))))
  return {path: [int(a), int(b)] for path, (a, b) in zip(named, sums)}


def mismatched(recorded: dict[str, list[int]], tree) -> list[str]:
  """Paths of `tree` whose checksums differ from `recorded` (a path recorded nowhere counts as different)."""
  actual = checksums(tree)
  return [path for path, sums in actual.items() if recorded.get(path) != sums]


def record(tree, step: int) -> dict[str, Any]:
  """The checksum item of checkpoint `step`: the format, the step, the sums and the shape of every array."""
  return {"format": CHECKSUM_FORMAT, "step": int(step), "arrays": checksums(tree),
          "shapes": {path: list(np.shape(leaf)) for path, leaf in leaves_by_path(tree).items()}}


def check_step(record: Any, step: int) -> None:
  """Raises Damaged when the record names another step than the folder it sits in: a step folder renamed by
  hand would otherwise resume (and label samples) as a step it is not, and the run would later fail to save
  the step it names. Records written before the step was recorded have nothing to compare."""
  if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] != step:
    raise Damaged(f"its checksum record says it is the checkpoint of step {record['step']}, not {step} (a folder "
                  "renamed?)")


def nonfinite_arrays(tree) -> list[str]:
  """Paths of the floating arrays of `tree` that hold a NaN or an infinity."""
  return [path for path, leaf in leaves_by_path(tree).items()
          if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating) and not bool(jnp.isfinite(leaf).all())]


def nonfinite_checkpoint_message(params, step: int, what: str = "the EMA parameters") -> str | None:
  """The sentence that blames the checkpoint when `params` of checkpoint `step` are not finite, or None: samples
  and bounds from such parameters are not finite either, and no sampler setting can fix them, so the readers
  (trained_model.load_ema_params) say so before any sampling and never suggest settings."""
  bad = nonfinite_arrays(params)
  if not bad:
    return None
  return (f"{what} of the checkpoint of step {step} are not finite ({len(bad)} array(s), first {bad[0]!r}): the "
          "checkpoint holds a diverged state, so no sampling setting can help; use an earlier checkpoint "
          "(eval.checkpoint_step) or train again from one.")


# ----------------------------------------------------------------------------------------------------------
# Whether a step must have checksums.

INTEGRITY_RECORD = "checkpoint_integrity.json"  # in the workdir, beside config.json


def checksums_since(workdir: epath.Path) -> int | None:
  """The first step of this run saved with checksums (workdir/checkpoint_integrity.json), or None when the run
  has not recorded one (a run of an earlier version, or one that never saved). An unreadable record is None:
  the step metadata still says which steps were saved with checksums (listed_items)."""
  path = workdir / INTEGRITY_RECORD
  try:
    return int(json.loads(path.read_text())["checksums_from_step"]) if path.exists() else None
  except (ValueError, KeyError, TypeError, OSError):
    logging.warning("%s cannot be read; the step metadata still says which steps carry checksums.", path)
    return None


def note_checksums_since(workdir: epath.Path, step: int) -> None:
  """Records (once, process 0) that the checkpoints of this run carry checksums from `step` on, so that a
  later step whose checksum record is missing is damage, never an old checkpoint to load unverified."""
  path = workdir / INTEGRITY_RECORD
  if jax.process_index() != 0 or path.exists():
    return
  temporary = workdir / (INTEGRITY_RECORD + ".tmp")
  temporary.write_text(json.dumps({"checksums_from_step": int(step), "format": CHECKSUM_FORMAT}) + "\n")
  temporary.replace(path)


def listed_items(step_dir: epath.Path) -> set[str]:
  """The items orbax's step metadata (_CHECKPOINT_METADATA) says the step was saved with; empty when that file
  is missing or unreadable (it is bookkeeping, not evidence about the arrays)."""
  try:
    return set(json.loads((step_dir / "_CHECKPOINT_METADATA").read_text()).get("item_handlers") or {})
  except (ValueError, OSError, AttributeError):
    return set()


def missing_record_is_damage(step_dir: epath.Path, step: int, item: str) -> str | None:
  """Why a step without its checksum item `item` is damaged, or None for a step of a run that never recorded
  checksums (an earlier version's), which loads unverified with a warning."""
  if item in listed_items(step_dir):
    return "its checksum record is missing, though its step metadata lists one"
  since = checksums_since(step_dir.parent.parent)
  if since is not None and step >= since:
    return f"its checksum record is missing, and this run records checksums from step {since} on"
  return None


# ----------------------------------------------------------------------------------------------------------
# Step folders that cannot be read at all.


def unusable_step_entries(checkpoints_dir: epath.Path) -> list[tuple[epath.Path, str]]:
  """(path, reason) of each entry named like a step that is not a readable checkpoint folder: a symbolic link
  whose target is gone, or a file. orbax does not list them as steps, so they are never restored, but a save
  of that step later fails on them; they are damage (their data is not there)."""
  if not checkpoints_dir.exists():
    return []
  found = []
  for entry in checkpoints_dir.iterdir():
    if not entry.name.isdigit():
      continue
    if os.path.islink(str(entry)) and not entry.exists():
      found.append((entry, f"a symbolic link to {os.readlink(str(entry))}, which does not exist"))
    elif entry.exists() and not entry.is_dir():
      found.append((entry, "a file, not a checkpoint folder"))
  return found


def unreadable_step_folders(checkpoints_dir: epath.Path) -> list[tuple[epath.Path, str]]:
  """(path, error) of each step folder this user cannot list: not damage (the bytes may be fine), so the
  training job names them and stops instead of setting them aside."""
  if not checkpoints_dir.exists() or "://" in str(checkpoints_dir):
    return []
  found = []
  for entry in checkpoints_dir.iterdir():
    if entry.name.isdigit() and entry.is_dir():
      try:
        os.listdir(str(entry))
      except PermissionError as error:
        found.append((entry, f"{type(error).__name__}: {error.strerror}"))
  return found


def check_shapes(record: Any, metadata_shapes: dict[str, tuple[int, ...]]) -> None:
  """Raises Damaged when a step's array metadata gives an array another shape than its checksum record, which
  was written from the same arrays: one of the two files changed. Records written before shapes were recorded
  have nothing to compare."""
  if not isinstance(record, dict) or not isinstance(record.get("shapes"), dict):
    return
  for path, shape in metadata_shapes.items():
    recorded = record["shapes"].get(path)
    if recorded is not None and tuple(recorded) != tuple(shape):
      raise Damaged(f"its array metadata gives {path!r} the shape {tuple(shape)}, its checksum record "
                    f"{tuple(recorded)}")


def verify(record: Any, tree) -> None:
  """Raises Damaged unless `record` (a step's checksum item) is readable and matches every array of `tree`.

  A record of another form (no 'arrays' mapping of [sum, sum] pairs) is damage to the record, and an array of
  `tree` that it does not name fails its check: the arrays and their record are written together.
  """
  if not isinstance(record, dict) or record.get("format") != CHECKSUM_FORMAT:
    raise Damaged("its checksum record is unreadable")
  arrays = record.get("arrays")
  if not isinstance(arrays, dict) or not all(isinstance(sums, list) for sums in arrays.values()):
    raise Damaged("its checksum record holds no checksums of its arrays")
  bad = mismatched(arrays, tree)
  if bad:
    raise Damaged(f"checksum mismatch in {len(bad)} array(s), first {bad[0]!r}: the data changed after it "
                  "was written")


# ----------------------------------------------------------------------------------------------------------
# Damage judged on evidence.

# tensorstore reports its failures as absl status codes at the start of a message line. These say the bytes on
# disk are wrong: a file or key that a complete step must hold is missing, a read past a file's end, bytes that
# do not decode.
_DAMAGE_CODES = ("DATA_LOSS", "OUT_OF_RANGE", "NOT_FOUND")
_UNDECODABLE = ("Truncated", "decompress", "Error decoding", "corrupt", "Unexpected end")
# These say nothing about the bytes: the reader lacked memory, rights or a working connection.
_OUT_OF_MEMORY_CODES = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory")
_PERMISSION_CODES = ("PERMISSION_DENIED", "UNAUTHENTICATED")
_TRANSIENT_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "CANCELLED", "timed out", "Timeout",
                    "Connection reset")

# The kinds of a failed read. Only DAMAGED sets a step aside; the others leave every step in place.
DAMAGED = "damaged"
VANISHED = "vanished"  # the step directory was removed while it was read (training's clean-up of old steps)
OUT_OF_MEMORY = "out of memory"
PERMISSION = "permission"
TRANSIENT = "transient storage error"
LIBRARY = "checkpoint library error"  # a changed orbax API, or orbax failing on a well-formed step
UNKNOWN = "unknown"

FIXES = {
    OUT_OF_MEMORY: "free host or device memory (or use a machine with more) and rerun",
    PERMISSION: "make the workdir's files readable (and, for training, writable) by this user, or fix the "
                "bucket's credentials, and rerun",
    TRANSIENT: "the storage failed to answer; rerun when it does",
    LIBRARY: "install the versions of requirements.txt (pyproject.toml bounds orbax-checkpoint to the versions "
             "this package reads) and rerun",
    UNKNOWN: "nothing proves the files damaged; rerun, and report the error if it repeats",
    VANISHED: "it was removed while it was read (training keeps the newest checkpoint.keep steps); choose a "
              "newer step",
}


def error_chain(error: BaseException) -> list[BaseException]:
  """error and its causes and contexts (each once), outermost first."""
  seen, chain = set(), []
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    chain.append(error)
    error = error.__cause__ or error.__context__
  return chain


def _inside(path: Any, directory: epath.Path) -> bool:
  return path is not None and os.path.abspath(str(path)).startswith(os.path.abspath(str(directory)) + os.sep)


def classify(error: BaseException, step_dir: epath.Path) -> str:
  """The kind of a failed read of the step in `step_dir` (one of the constants above), from evidence only.

  Damage is proven by: a Damaged verdict (a checksum mismatch, a record without its arrays, a shape that
  disagrees with its own metadata); a file of the step that is missing or cannot be parsed (JSON or UTF-8
  errors, FileNotFoundError inside the step); tensorstore's DATA_LOSS, OUT_OF_RANGE (a truncated file) and
  NOT_FOUND, or a decoder's complaint. Whatever else went wrong (memory, permissions, storage timeouts, the
  library, an error nobody foresaw) is not a property of the bytes, and setting the step aside for it would
  cost the user a good checkpoint. Resource and permission codes are looked for first: a message may carry
  both (a timeout while reading a key that then counts as missing).
  """
  if not step_dir.exists():
    return VANISHED
  chain = error_chain(error)
  texts = [str(link) for link in chain]
  if any(isinstance(link, Damaged) for link in chain):
    return DAMAGED
  if any(isinstance(link, MemoryError) for link in chain) or any(code in text for text in texts
                                                                  for code in _OUT_OF_MEMORY_CODES):
    return OUT_OF_MEMORY
  if any(isinstance(link, PermissionError) for link in chain) or any(code in text for text in texts
                                                                      for code in _PERMISSION_CODES):
    return PERMISSION
  if any(isinstance(link, (TimeoutError, ConnectionError)) for link in chain) or any(
      code in text for text in texts for code in _TRANSIENT_CODES):
    return TRANSIENT
  for link in chain:
    if isinstance(link, (json.JSONDecodeError, UnicodeDecodeError)):
      return DAMAGED
    if isinstance(link, FileNotFoundError) and (_inside(link.filename, step_dir) or str(step_dir) in str(link)):
      return DAMAGED
  if any(code in text for text in texts for code in _DAMAGE_CODES):
    return DAMAGED
  if any("FAILED_PRECONDITION" in text and any(word in text for word in _UNDECODABLE) for text in texts):
    return DAMAGED
  if any(isinstance(link, (AttributeError, TypeError, ImportError, NotImplementedError)) for link in chain):
    return LIBRARY
  return UNKNOWN


def raised_by_hold_jax(error: BaseException) -> bool:
  """True when the innermost frame of error's traceback is this package's code (not orbax or tensorstore),
  and the error is not a Damaged verdict."""
  if isinstance(error, Damaged):
    return False
  traceback = error.__traceback__
  while traceback is not None and traceback.tb_next is not None:
    traceback = traceback.tb_next
  package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # hold_jax/, above workdir/
  return traceback is not None and os.path.abspath(traceback.tb_frame.f_code.co_filename).startswith(package)


def set_aside(checkpoints_dir: epath.Path, step: int, reason: str, entry: epath.Path | None = None
              ) -> epath.Path | None:
  """Moves checkpoints_dir/<step> (or `entry`, a thing named like that step) to
  workdir/damaged_checkpoints/<step>[-k] with the reason in REASON.txt inside it (process 0), or beside it as
  <step>[-k].REASON.txt when it is not a folder (a file, a dangling link). Returns the new path, or None when
  it could not be moved."""
  source = entry if entry is not None else checkpoints_dir / str(step)
  target_dir = checkpoints_dir.parent / DAMAGED_DIR
  target = target_dir / str(step)
  if jax.process_index() == 0:
    target_dir.mkdir(parents=True, exist_ok=True)
    suffix = 1
    while target.exists() or os.path.islink(str(target)):
      target, suffix = target_dir / f"{step}-{suffix}", suffix + 1
    try:
      source.rename(target)
    except OSError as error:
      logging.warning("Could not move the damaged checkpoint %s aside (%s); it stays in place.", source, error)
      target = None
    if target is not None:
      note = target / "REASON.txt" if target.is_dir() and not os.path.islink(str(target)) else (
          target_dir / f"{target.name}.REASON.txt")
      note.write_text(reason + "\n")
  multihost.barrier(f"set_aside_{step}")
  return target


@contextlib.contextmanager
def abandoned_reads_to_log():
  """A failed orbax read leaves coroutines for the other arrays behind; when they are collected, each prints
  'Exception ignored in ...' with a TensorStore spec of dozens of lines. The failure is already reported once
  (the warning in restore), so these go to the debug log instead of the console."""
  previous = sys.unraisablehook
  sys.unraisablehook = lambda unraisable: logging.debug("Ignored while reading a checkpoint: %s",
                                                        unraisable.exc_value)
  try:
    yield
  finally:
    gc.collect()
    sys.unraisablehook = previous

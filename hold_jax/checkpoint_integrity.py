"""The integrity of a checkpoint: a checksum of every array, recorded at save and verified at restore, and
what becomes of a step that fails (hold_jax/checkpoints.py saves and restores).

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
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

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


def verify(record: Any, tree) -> None:
  """Raises Damaged unless `record` (a step's checksum item) is readable and matches every array of `tree`."""
  if not isinstance(record, dict) or record.get("format") != CHECKSUM_FORMAT:
    raise Damaged("its checksum record is unreadable")
  bad = mismatched(record["arrays"], tree)
  if bad:
    raise Damaged(f"checksum mismatch in {len(bad)} array(s), first {bad[0]!r}: the data changed after it "
                  "was written")


# ----------------------------------------------------------------------------------------------------------
# Damaged steps.


def raised_by_hold_jax(error: BaseException) -> bool:
  """True when the innermost frame of error's traceback is this package's code (not orbax or tensorstore),
  and the error is not a Damaged verdict."""
  if isinstance(error, Damaged):
    return False
  traceback = error.__traceback__
  while traceback is not None and traceback.tb_next is not None:
    traceback = traceback.tb_next
  package = os.path.dirname(os.path.abspath(__file__))
  return traceback is not None and os.path.abspath(traceback.tb_frame.f_code.co_filename).startswith(package)


def set_aside(checkpoints_dir: epath.Path, step: int, reason: str) -> epath.Path | None:
  """Moves checkpoints_dir/<step> to workdir/damaged_checkpoints/<step>[-k] with REASON.txt (process 0)."""
  source = checkpoints_dir / str(step)
  target_dir = checkpoints_dir.parent / DAMAGED_DIR
  target = target_dir / str(step)
  if jax.process_index() == 0:
    target_dir.mkdir(parents=True, exist_ok=True)
    suffix = 1
    while target.exists():
      target, suffix = target_dir / f"{step}-{suffix}", suffix + 1
    try:
      source.rename(target)
      (target / "REASON.txt").write_text(reason + "\n")
    except OSError as error:
      logging.warning("Could not move the damaged checkpoint %s aside (%s); it stays in place.", source, error)
      target = None
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f"hold_jax_set_aside_{step}")
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

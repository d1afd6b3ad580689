"""Checkpoints of a run: orbax saves that carry a checksum of every array, and the checks of a workdir before
any compute (restoring: hold_jax/workdir/checkpoint_restore.py; the checksums and damage: checkpoint_integrity.py).

Saving. Each step directory holds two orbax items: 'default' (the train state, named so that checkpoints
written before checksums existed still load) and 'checksums' (JSON: the checksum and the shape of every
array). orbax writes a step into a temporary directory and renames it when complete, so a save killed at any
moment leaves the older steps untouched; the temporary directory of a save that failed (a full disk) is
removed here, and leftovers of killed saves are removed by the training job's manager when it starts
(cleanup_tmp_directories). Only the training job writes: readers open a read-only manager.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging as logging_lib
import os
import re
import shutil
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from hold_jax import field_checks
from hold_jax.workdir import checkpoint_integrity

STATE_ITEM = "default"
CHECKSUM_ITEM = "checksums"
DAMAGED_DIR = checkpoint_integrity.DAMAGED_DIR  # where damaged steps go; train.py and the tests name it here


class CheckpointError(RuntimeError):
  """A checkpoint problem the user has to act on; its message says what happened and what to do."""


class ChangedStructure(CheckpointError):
  """The checkpoint holds arrays of other names or shapes than the config builds: the config changed."""


# ----------------------------------------------------------------------------------------------------------
# The manager and saving.


@dataclasses.dataclass(frozen=True)
class Settings:
  """config.checkpoint: the newest `keep` steps stay on disk; `asynchronous` saves are written by orbax's
  threads while training goes on (each is complete before the next starts or the job ends)."""

  keep: int = 3
  asynchronous: bool = True

  def __post_init__(self):
    field_checks.require_int("checkpoint.keep", self.keep, 1)
    field_checks.require(isinstance(self.asynchronous, bool), "checkpoint.asynchronous", self.asynchronous,
                         "true or false")


def settings_from_config(checkpoint_config) -> Settings:
  """config.checkpoint checked once into Settings; a field the config lacks keeps its default."""
  return field_checks.settings_of(Settings, checkpoint_config)


def make_manager(directory: epath.Path, keep: int = 3, asynchronous: bool = True,
                 read_only: bool = False) -> ocp.CheckpointManager:
  """An orbax manager of `directory` (workdir/checkpoints) with the two items of every step."""
  options = ocp.CheckpointManagerOptions(max_to_keep=None if read_only else keep,
                                         save_interval_steps=0 if read_only else 1,
                                         enable_async_checkpointing=asynchronous,
                                         cleanup_tmp_directories=not read_only, read_only=read_only,
                                         create=not read_only)
  handlers = {STATE_ITEM: ocp.PyTreeCheckpointHandler(), CHECKSUM_ITEM: ocp.JsonCheckpointHandler()}
  with _without_read_only_notice():
    return ocp.CheckpointManager(directory, item_handlers=handlers, options=options)


class _ReadOnlyNotice(logging_lib.Filter):
  def filter(self, record: logging_lib.LogRecord) -> bool:
    return not str(record.msg).startswith("Given directory is read only")


@contextlib.contextmanager
def _without_read_only_notice():
  """orbax warns 'Given directory is read only' for every read-only manager: that is the point of one (the
  readers of a workdir), not a problem to show on the console."""
  notice, logger = _ReadOnlyNotice(), logging_lib.getLogger("absl")
  logger.addFilter(notice)
  try:
    yield
  finally:
    logger.removeFilter(notice)


def save(manager: ocp.CheckpointManager, step: int, state, config=None) -> None:
  """Starts saving `state` as `step` (asynchronously if the manager is), with its checksums and a copy of the
  run's `config` (its fields as JSON, the same record as workdir/config.json: hold_jax/workdir/run_record.py reads it
  when config.json is gone).

  The checksums are computed from the same device arrays orbax writes, before the save starts.
  """
  record = checkpoint_integrity.record(state, step)
  if config is not None:
    record["config"] = json.loads(config.to_json_best_effort())
  checkpoint_integrity.note_checksums_since(epath.Path(manager.directory).parent, step)
  try:
    manager.save(step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.PyTreeSave(state),
                                                  CHECKSUM_ITEM: ocp.args.JsonSave(record)}), force=True)
  except Exception as error:  # pylint: disable=broad-except
    raise save_error(manager, step, error) from error


def wait(manager: ocp.CheckpointManager, step: int | None) -> None:
  """Waits for the save in flight; a failed one becomes a CheckpointError (its temporary directory removed)."""
  try:
    manager.wait_until_finished()
  except Exception as error:  # pylint: disable=broad-except
    raise save_error(manager, step, error) from error


_LIBRARIES = ("orbax", "tensorstore", "clu")


class _OneLineLibraryErrors(logging_lib.Filter):
  """Drops the traceback of orbax's, tensorstore's and clu's own error records (keeping their first line): a
  failed save is reported once, by save_error, instead of in hundreds of lines from each background thread."""

  def filter(self, record: logging_lib.LogRecord) -> bool:
    if record.exc_info and any(f"/{library}/" in record.pathname for library in _LIBRARIES):
      record.exc_info, record.exc_text = None, None
      record.msg, record.args = str(record.getMessage()).splitlines()[0][:300], None
    return True


def shorten_library_tracebacks() -> None:
  """Installs _OneLineLibraryErrors on absl's logger, and sends to the debug log the 'Event loop is closed'
  errors that orbax's abandoned asyncio callbacks raise after a failed save (the command line does this; a
  notebook keeps everything)."""
  logger = logging_lib.getLogger("absl")
  if not any(isinstance(existing, _OneLineLibraryErrors) for existing in logger.filters):
    logger.addFilter(_OneLineLibraryErrors())
  previous = sys.unraisablehook
  if getattr(previous, "hold_jax_wrapper", False):
    return

  def unraisablehook(unraisable):
    if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
      logging.debug("Ignored after a failed save: %s", unraisable.exc_value)
      return
    previous(unraisable)

  unraisablehook.hold_jax_wrapper = True
  sys.unraisablehook = unraisablehook


def _is_disk_full(error: BaseException | None) -> bool:
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if any(text in str(error) for text in ("No space left", "ENOSPC", "RESOURCE_EXHAUSTED")):
      return True
    error = error.__cause__ or error.__context__
  return False


def temporary_directories(directory: epath.Path) -> list[epath.Path]:
  """orbax's directories of unfinished saves in `directory` ('<step>.orbax-checkpoint-tmp')."""
  if not directory.exists():
    return []
  return [path for path in directory.iterdir() if ".orbax-checkpoint-tmp" in path.name]


# After a failed save, orbax's threads writing the save's other items (the checksums' JSON beside the state)
# may still create files in its temporary directory for a moment: it is removed until it stays gone this long.
SETTLE_SECONDS, SETTLE_LIMIT_SECONDS = 0.5, 10.0


def remove_temporary_directories(directory: epath.Path) -> None:
  """Removes orbax's directories of unfinished saves in `directory`, again until none has come back for
  SETTLE_SECONDS (at most SETTLE_LIMIT_SECONDS)."""
  started = quiet_since = time.monotonic()
  while True:
    found = temporary_directories(directory)
    for path in found:
      shutil.rmtree(path, ignore_errors=True) if "://" not in str(path) else path.rmtree(missing_ok=True)
    now = time.monotonic()
    if found:
      quiet_since = now
    elif now - quiet_since >= SETTLE_SECONDS or now - started >= SETTLE_LIMIT_SECONDS:
      return
    time.sleep(0.05)


def save_error(manager: ocp.CheckpointManager, step: int | None, error: BaseException) -> CheckpointError:
  """The one message of a failed save, after removing its temporary directory."""
  directory = epath.Path(manager.directory)
  if jax.process_index() == 0:
    remove_temporary_directories(directory)
  previous = [s for s in manager.all_steps() if step is None or s < step]
  intact = (f"the checkpoint of step {max(previous)} is intact and a rerun resumes from it"
            if previous else "no earlier checkpoint exists")
  what = f"the checkpoint of step {step}" if step is not None else "a checkpoint"
  if _is_disk_full(error):
    free = free_bytes(directory)
    reason = f"the disk is full ({free / 2**20:.0f} MiB free)" if free is not None else "the disk is full"
    fix = "Free space (or point --workdir at a larger disk) and rerun the same command."
  else:
    reason = one_line(error)
    fix = "Check that the workdir is writable and rerun the same command."
  return CheckpointError(f"Saving {what} to {directory} failed: {reason}. Its partial files were removed; "
                         f"{intact}. {fix}")


def one_line(error: BaseException) -> str:
  """The error in one line. orbax wraps tensorstore's failures in 'Encountered error while reading array',
  so the first line of the chain that carries a status code (NOT_FOUND: ..., DATA_LOSS: ...) is preferred."""
  for link in checkpoint_integrity.error_chain(error):
    for line in str(link).splitlines():
      if re.match(r"\s*[A-Z_]{6,}: ", line):
        error, text = link, line.strip()
        break
    else:
      continue
    break
  else:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
  text = text.split(" See full TensorStore details")[0].split(" [tensorstore_spec=")[0]
  return f"{type(error).__name__}: {text[:240]}{'...' if len(text) > 240 else ''}"


# ----------------------------------------------------------------------------------------------------------
# The workdir before any compute.


def free_bytes(path: epath.Path) -> int | None:
  """Free bytes on the file system of `path` (its nearest existing ancestor); None for buckets."""
  if "://" in str(path):
    return None
  path = os.path.abspath(str(path))
  while not os.path.exists(path):
    path = os.path.dirname(path)
  return shutil.disk_usage(path).free


def state_bytes(abstract_tree) -> int:
  """Bytes of the arrays of a (possibly abstract) tree: what one checkpoint writes, uncompressed."""
  return int(sum(np.prod(leaf.shape, dtype=np.int64) * np.dtype(leaf.dtype).itemsize
                 for leaf in jax.tree.leaves(abstract_tree)))


def check_workdir(directory: epath.Path, bytes_needed: int, what: str = "one checkpoint of this run") -> None:
  """Raises CheckpointError unless `directory` (the workdir, or its samples/ or eval/ folder) can take
  bytes_needed more: it must be (or become) a directory, be writable, and have room for bytes_needed plus 5%
  (local disks; buckets are not measured). Called before any compute, so no work is lost to it."""
  if directory.exists() and not directory.is_dir():
    raise CheckpointError(f"{directory} is a file, not a directory: choose another --workdir.")
  try:
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / f".write_test_{os.getpid()}_{jax.process_index()}"
    probe.write_text("ok")
    probe.unlink()
  except OSError as error:
    raise CheckpointError(f"{directory} is not writable ({one_line(error)}): choose a --workdir this user can "
                          "write, or fix its permissions.") from None
  free = free_bytes(directory)
  needed = int(bytes_needed * 1.05)
  if free is not None and free < needed:
    raise CheckpointError(f"{directory} has {free / 2**20:.1f} MiB free, and {what} needs about "
                          f"{needed / 2**20:.1f} MiB: free space or choose a larger disk.")

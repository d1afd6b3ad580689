"""Checkpoints of a run: orbax saves that carry a checksum of every array, and restores that verify them and
fall back past damage (the checksums and the handling of a damaged step: hold_jax/checkpoint_integrity.py).

Saving. Each step directory holds two orbax items: 'default' (the train state, named so that checkpoints
written before checksums existed still load) and 'checksums' (JSON: the checksum and the shape of every
array). orbax writes a step into a temporary directory and renames it when complete, so a save killed at any
moment leaves the older steps untouched; the temporary directory of a save that failed (a full disk) is
removed here, and leftovers of killed saves are removed by the training job's manager when it starts
(cleanup_tmp_directories). Only the training job writes: readers open a read-only manager.

Restoring for training (restore). The newest step is tried first: its checksum record and array metadata are
read (metadata that disagrees with the record is damage; a different shape than the config builds is a
changed config, which is an error, never a reason to fall back), the arrays are read, and their checksums
compared with the recorded ones. A step is set aside only on evidence that its bytes are damaged
(checkpoint_integrity.classify): it is moved to workdir/damaged_checkpoints/<step> with the reason in
REASON.txt (never deleted), a warning names the step and the reason, and the next older one is tried. Any
other failure (out of memory, permissions, a storage timeout, a changed orbax API, an unknown error) is one
CheckpointError naming the step and its path, and every step stays where it is.

Restoring for reading (restore_for_reading): sampling, evaluation and notebooks may run while training writes
to the same workdir. They read the newest complete step and change nothing: no temporary directory is cleaned
up, no step is moved; a step removed by training while it was read is passed over.

Restoring a chosen step (restore_step) reads that step alone, with the same checks; when it is damaged the
error says why, and nothing else happens: no other step is read in its place and the step is not moved,
because the user asked for that one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging as logging_lib
import os
import re
import shutil
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from hold_jax import checkpoint_integrity

STATE_ITEM = "default"
CHECKSUM_ITEM = "checksums"
DAMAGED_DIR = checkpoint_integrity.DAMAGED_DIR  # where damaged steps go; train.py and the tests name it here


class CheckpointError(RuntimeError):
  """A checkpoint problem the user has to act on; its message says what happened and what to do."""


class ChangedStructure(CheckpointError):
  """The checkpoint holds arrays of other names or shapes than the config builds: the config changed."""


# ----------------------------------------------------------------------------------------------------------
# The manager and saving.


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


def save(manager: ocp.CheckpointManager, step: int, state) -> None:
  """Starts saving `state` as `step` (asynchronously if the manager is), with its checksums.

  The checksums are computed from the same device arrays orbax writes, before the save starts.
  """
  record = checkpoint_integrity.record(state)
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


def save_error(manager: ocp.CheckpointManager, step: int | None, error: BaseException) -> CheckpointError:
  """The one message of a failed save, after removing its temporary directory."""
  directory = epath.Path(manager.directory)
  if jax.process_index() == 0:
    for path in temporary_directories(directory):
      shutil.rmtree(path, ignore_errors=True) if "://" not in str(path) else path.rmtree(missing_ok=True)
  previous = [s for s in manager.all_steps() if step is None or s < step]
  intact = (f"the checkpoint of step {max(previous)} is intact and a rerun resumes from it"
            if previous else "no earlier checkpoint exists")
  what = f"the checkpoint of step {step}" if step is not None else "a checkpoint"
  if _is_disk_full(error):
    free = free_bytes(directory)
    reason = f"the disk is full ({free / 2**20:.0f} MiB free)" if free is not None else "the disk is full"
    fix = "Free space (or point --workdir at a larger disk) and rerun the same command."
  else:
    reason = _one_line(error)
    fix = "Check that the workdir is writable and rerun the same command."
  return CheckpointError(f"Saving {what} to {directory} failed: {reason}. Its partial files were removed; "
                         f"{intact}. {fix}")


def _one_line(error: BaseException) -> str:
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
    raise CheckpointError(f"{directory} is not writable ({_one_line(error)}): choose a --workdir this user can "
                          "write, or fix its permissions.") from None
  free = free_bytes(directory)
  needed = int(bytes_needed * 1.05)
  if free is not None and free < needed:
    raise CheckpointError(f"{directory} has {free / 2**20:.1f} MiB free, and {what} needs about "
                          f"{needed / 2**20:.1f} MiB: free space or choose a larger disk.")


# ----------------------------------------------------------------------------------------------------------
# Restoring with fallback.


@dataclasses.dataclass(frozen=True)
class Restored:
  """The tree read from checkpoint `step` (verified), and the (step, reason) of each newer one set aside."""

  tree: Any
  step: int
  set_aside: tuple[tuple[int, str], ...] = ()


def _read_record(manager: ocp.CheckpointManager, step: int) -> Any:
  """The checksum item of `step`, or None for a step written before checksums were recorded (no such item)."""
  if not (epath.Path(manager.directory) / str(step) / CHECKSUM_ITEM).exists():
    return None
  return manager.restore(step, args=ocp.args.Composite(**{CHECKSUM_ITEM: ocp.args.JsonRestore()}))[CHECKSUM_ITEM]


def _check_structure(manager: ocp.CheckpointManager, step: int, abstract_tree, record: Any) -> None:
  """Raises Damaged when the step's array metadata is unreadable or disagrees with its own checksum record,
  and ChangedStructure when the saved arrays differ in names or shapes from abstract_tree (the config)."""
  item = manager.item_metadata(step)[STATE_ITEM]
  if item is None or getattr(item, "tree", None) is None:
    raise checkpoint_integrity.Damaged("its array metadata cannot be read")
  metadata = checkpoint_integrity.leaves_by_path(item.tree)
  checkpoint_integrity.check_shapes(record, {path: tuple(leaf.shape) for path, leaf in metadata.items()})
  expected = checkpoint_integrity.leaves_by_path(abstract_tree)
  missing = sorted(set(expected) - set(metadata))
  if missing:
    raise ChangedStructure(f"the checkpoint of step {step} has no array {missing[0]!r} (and {len(missing) - 1} "
                           "more missing)" if len(missing) > 1 else
                           f"the checkpoint of step {step} has no array {missing[0]!r}")
  for path, leaf in expected.items():
    saved = metadata[path]
    if tuple(saved.shape) != tuple(leaf.shape):
      raise ChangedStructure(f"the checkpoint of step {step} holds {path!r} of shape {tuple(saved.shape)}, the "
                             f"config builds {tuple(leaf.shape)}")


def _read_verified(manager: ocp.CheckpointManager, step: int, abstract_tree, partial: bool, record: Any):
  """The arrays of `step`, checked against the recorded checksums (Damaged when they differ)."""
  restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_tree)
  state_args = ocp.args.PyTreeRestore(item=abstract_tree, restore_args=restore_args, partial_restore=partial)
  tree = manager.restore(step, args=ocp.args.Composite(**{STATE_ITEM: state_args}))[STATE_ITEM]
  if record is None:
    logging.warning("The checkpoint of step %d has no checksums (written before they were recorded): its "
                    "arrays are not verified.", step)
    return tree
  checkpoint_integrity.verify(record, tree)
  return tree


@dataclasses.dataclass(frozen=True)
class _Failure:
  """Why a step could not be read: its kind (checkpoint_integrity.classify) and the reason in one line."""

  kind: str
  reason: str

  @property
  def damaged(self) -> bool:
    return self.kind == checkpoint_integrity.DAMAGED


def _read_or_failure(manager: ocp.CheckpointManager, step: int, abstract_tree, partial: bool):
  """(tree, None) when `step` reads and passes its checks; (None, _Failure) when it cannot be read.
  ChangedStructure (the config changed) and a bug of this package are raised: neither is the checkpoint's
  fault."""
  step_dir = epath.Path(manager.directory) / str(step)
  try:
    record = _read_record(manager, step)
    _check_structure(manager, step, abstract_tree, record)
    return _read_verified(manager, step, abstract_tree, partial, record), None
  except ChangedStructure:
    raise
  except Exception as error:  # pylint: disable=broad-except  (judged below, on evidence)
    if checkpoint_integrity.raised_by_hold_jax(error):
      raise  # a bug of this package must never cost the user a checkpoint
    reason = str(error) if isinstance(error, checkpoint_integrity.Damaged) else _one_line(error)
    return None, _Failure(checkpoint_integrity.classify(error, step_dir), reason)


def _not_damage_error(directory: epath.Path, step: int, failure: _Failure) -> CheckpointError:
  """The one message of a read that failed for a reason other than damage: every step stays where it is."""
  return CheckpointError(
      f"Reading the checkpoint of step {step} in {directory / str(step)} failed ({failure.kind}): "
      f"{failure.reason.rstrip('.')}. This is no evidence that its files are damaged, so every checkpoint was "
      f"left in place; {checkpoint_integrity.FIXES[failure.kind]}.")


def restore(manager: ocp.CheckpointManager, abstract_tree, partial: bool = False) -> Restored | None:
  """For training: the newest readable, verified checkpoint of `manager` read into `abstract_tree`, or None when
  there is no checkpoint at all. With partial, abstract_tree names a subset of the saved tree.

  A step whose files are proven damaged (checkpoint_integrity.classify) is set aside with a warning and the
  next older one tried; any other failure (memory, permissions, storage, the library) is a CheckpointError
  naming the step and its path, with nothing moved. ChangedStructure (the config changed) is raised as it is;
  when every step is damaged a CheckpointError names the directory and what to do.
  """
  with checkpoint_integrity.abandoned_reads_to_log():
    return _restore_newest_readable(manager, abstract_tree, partial, set_aside=True)


def restore_for_reading(manager: ocp.CheckpointManager, abstract_tree, partial: bool = False) -> Restored | None:
  """For sampling, evaluation, notebooks: `restore` without changing anything in the workdir.

  Such readers may run while training writes to the same workdir (users watch a run this way), so `manager`
  is read-only (make_manager(read_only=True): orbax then leaves the temporary directory of training's save in
  flight alone) and nothing is moved, renamed or deleted here. The newest complete step is read; a step that
  disappears while it is read (training removed it as an old step) is passed over silently, and a damaged one
  with a warning, leaving it for the training job to set aside.
  """
  with checkpoint_integrity.abandoned_reads_to_log():
    return _restore_newest_readable(manager, abstract_tree, partial, set_aside=False)


def _restore_newest_readable(manager: ocp.CheckpointManager, abstract_tree, partial: bool,
                             set_aside: bool) -> Restored | None:
  directory = epath.Path(manager.directory)
  damaged_steps, tried = [], set()
  while True:
    manager.reload()  # the steps as they are now: another job may have saved or removed some
    untried = [step for step in manager.all_steps() if step not in tried]
    if not untried:
      break
    step = max(untried)
    tried.add(step)
    tree, failure = _read_or_failure(manager, step, abstract_tree, partial)
    if failure is None:
      return Restored(tree, step, tuple(damaged_steps))
    if failure.kind == checkpoint_integrity.VANISHED:
      logging.info("The checkpoint of step %d in %s was removed while it was read; reading an older one.", step,
                   directory)
      continue
    if not failure.damaged:
      raise _not_damage_error(directory, step, failure)
    if set_aside:
      moved = checkpoint_integrity.set_aside(directory, step, f"step {step} could not be restored: {failure.reason}")
      where = f"moved to {moved}" if moved else "left in place"
    else:
      where = "left in place for the training job to set aside"
    logging.warning("The checkpoint of step %d in %s cannot be used (%s); %s; trying the next older one.", step,
                    directory, failure.reason, where)
    damaged_steps.append((step, failure.reason))
  if damaged_steps:
    newest = damaged_steps[0]
    where = (f"they were moved to {directory.parent / DAMAGED_DIR}. Rerunning training starts again from step "
             f"0; to retry a checkpoint, move it back into {directory}." if set_aside else
             "they were left in place. Training, when rerun, sets damaged steps aside and resumes from the newest "
             "readable one.")
    raise CheckpointError(f"None of the {len(damaged_steps)} checkpoints in {directory} could be read (newest: step "
                          f"{newest[0]}, {newest[1]}); {where}")
  return None


def restore_step(manager: ocp.CheckpointManager, step: int, abstract_tree, partial: bool = False) -> Restored:
  """Checkpoint `step` of `manager` read into `abstract_tree` and verified as `restore` verifies the newest.

  A step the user chose is that step or an error: a CheckpointError lists the steps there when it is absent,
  and says why when it is damaged, leaving it in place (no fallback, nothing moved: another step would answer
  a question the user did not ask). ChangedStructure is raised as it is.
  """
  directory = epath.Path(manager.directory)
  steps = sorted(manager.all_steps())
  if step not in steps:
    raise CheckpointError(_absent_step_message(directory, step, steps))
  with checkpoint_integrity.abandoned_reads_to_log():
    tree, failure = _read_or_failure(manager, step, abstract_tree, partial)
  if failure is not None and not failure.damaged:
    raise _not_damage_error(directory, step, failure)
  if failure is not None:
    raise CheckpointError(f"The checkpoint of step {step} in {directory} cannot be used: {failure.reason.rstrip('.')}. It was "
                          "chosen by its step, so no other step is read in its place, and it is left where it is "
                          f"(not moved to {DAMAGED_DIR}). The steps there: {_step_list(steps)}; choose another, "
                          "or the newest readable one.")
  return Restored(tree, step)


def _step_list(steps: list[int]) -> str:
  return ", ".join(str(step) for step in steps) if steps else "none"


def _absent_step_message(directory: epath.Path, step: int, steps: list[int]) -> str:
  """Why `step` cannot be chosen: the steps that exist, and where it went when it was set aside as damaged or
  left unfinished (a directory orbax does not list as a complete checkpoint)."""
  message = f"There is no checkpoint of step {step} in {directory}; the steps there: {_step_list(steps)}."
  damaged = directory.parent / DAMAGED_DIR / str(step)
  if damaged.exists():
    message += f" Step {step} was set aside as damaged to {damaged} (REASON.txt says why)."
  elif (directory / str(step)).exists():
    message += f" {directory / str(step)} exists but is not a complete checkpoint (a save that did not finish?)."
  return message

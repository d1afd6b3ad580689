"""Restoring checkpoints: the newest readable step for training (setting proven damage aside), the newest
complete step for readers (changing nothing), or a chosen step (hold_jax/workdir/checkpoints.py saves them;
checkpoint_integrity.py holds the checksums and judges damage).

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

import dataclasses
from typing import Any

import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from hold_jax.workdir import checkpoint_integrity
from hold_jax.workdir.checkpoints import CHECKSUM_ITEM, DAMAGED_DIR, STATE_ITEM, ChangedStructure, CheckpointError
from hold_jax.workdir.checkpoints import one_line


@dataclasses.dataclass(frozen=True)
class Restored:
  """The tree read from checkpoint `step` (verified), and the (step, reason) of each newer one set aside."""

  tree: Any
  step: int
  set_aside: tuple[tuple[int, str], ...] = ()


def _read_record(manager: ocp.CheckpointManager, step: int) -> Any:
  """The checksum item of `step`, or None for a step written before checksums were recorded (no such item);
  Damaged when the item is missing from a step that had one (checkpoint_integrity.missing_record_is_damage)."""
  step_dir = epath.Path(manager.directory) / str(step)
  if not (step_dir / CHECKSUM_ITEM).exists():
    damage = checkpoint_integrity.missing_record_is_damage(step_dir, step, CHECKSUM_ITEM)
    if damage:
      raise checkpoint_integrity.Damaged(damage)
    return None
  return manager.restore(step, args=ocp.args.Composite(**{CHECKSUM_ITEM: ocp.args.JsonRestore()}))[CHECKSUM_ITEM]


def _check_structure(manager: ocp.CheckpointManager, step: int, abstract_tree, record: Any) -> None:
  """Raises Damaged when the step's array metadata is unreadable or disagrees with its own checksum record,
  and ChangedStructure when the saved arrays differ in names or shapes from abstract_tree (the config)."""
  item = manager.item_metadata(step)[STATE_ITEM]
  if item is None or getattr(item, "tree", None) is None:
    raise checkpoint_integrity.Damaged("its array metadata cannot be read")
  metadata = checkpoint_integrity.leaves_by_path(item.tree)
  checkpoint_integrity.check_step(record, step)
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
    reason = str(error) if isinstance(error, checkpoint_integrity.Damaged) else one_line(error)
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
  set_aside_unusable_entries(epath.Path(manager.directory))
  with checkpoint_integrity.abandoned_reads_to_log():
    return _restore_newest_readable(manager, abstract_tree, partial, set_aside=True)


def set_aside_unusable_entries(directory: epath.Path) -> None:
  """Before training resumes: entries named like a step that cannot be a checkpoint (a dangling link, a file)
  are set aside as damaged, and step folders this user cannot read stop the run with their path and the fix.
  orbax lists neither as a step, so without this training would start over and fail when it saves that step."""
  unreadable = checkpoint_integrity.unreadable_step_folders(directory)
  if unreadable:
    path, error = unreadable[0]
    raise CheckpointError(f"The checkpoint folder {path} cannot be read by this user ({error}): fix its "
                          f"permissions (chmod -R u+rwX {path}) or move it out of {directory}, and rerun; nothing "
                          "was changed.")
  for entry, reason in checkpoint_integrity.unusable_step_entries(directory):
    step = int(entry.name)
    moved = checkpoint_integrity.set_aside(directory, step, f"{entry} is {reason}", entry)
    if moved is None:
      raise CheckpointError(f"{entry} is {reason}, and it could not be moved aside: remove or move it out of "
                            f"{directory} and rerun (a save of step {step} would fail on it).")
    logging.warning("%s is %s: moved to %s.", entry, reason, moved)


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

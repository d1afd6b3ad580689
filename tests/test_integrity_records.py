"""Integrity that damage cannot switch off, and step folders that cannot be read or set aside: a checksum record
that goes missing from a step of a run that records them is damage; a renamed step folder is damage; a dangling
link or a file named like a step is set aside before training; an unreadable one stops the run by name."""
import json
import os
import shutil

import numpy as np
import pytest

from benchmarks import damage
from hold_jax.training import train
from hold_jax.workdir import checkpoint_integrity
from hold_jax.workdir import checkpoints
from hold_jax.workdir import trained_model

from test_fault_tolerance import flat, full_restore, local_config


@pytest.fixture
def copy(trained_workdir, tmp_path):
  workdir, _, _ = trained_workdir
  shutil.copytree(workdir, tmp_path / "run")
  return tmp_path / "run"


def test_the_run_records_from_which_step_it_has_checksums(copy):
  assert json.loads((copy / checkpoint_integrity.INTEGRITY_RECORD).read_text())["checksums_from_step"] == 20


@pytest.mark.parametrize("evidence", ["step metadata", "integrity record"])
def test_a_missing_checksum_record_is_damage_and_flipped_bits_are_never_trained_on(trained_workdir, copy, evidence):
  _, config, _ = trained_workdir
  step_dir = copy / "checkpoints" / "40"
  shutil.rmtree(step_dir / checkpoints.CHECKSUM_ITEM)
  damage.kinds()["array data bytes flipped"](step_dir)  # undetectable without the record
  if evidence == "integrity record":  # the step metadata, which lists the item, is gone as well
    (step_dir / "_CHECKPOINT_METADATA").unlink()
  state = full_restore(config, copy)
  assert int(state.step) == 20
  reason = (copy / checkpoints.DAMAGED_DIR / "40" / "REASON.txt").read_text()
  assert "checksum record is missing" in reason
  assert ("step metadata lists one" in reason) if evidence == "step metadata" else ("from step 20 on" in reason)


def test_a_renamed_step_folder_is_damage_for_training_and_skipped_by_readers(trained_workdir, copy, caplog):
  _, config, _ = trained_workdir
  (copy / "checkpoints" / "40").rename(copy / "checkpoints" / "60")
  params, step = trained_model.load_ema_params(config, str(copy), (2,))
  assert step == 20 and sorted(os.listdir(copy / "checkpoints")) == ["20", "60"]
  assert "checkpoint of step 40, not 60" in caplog.text
  assert int(full_restore(config, copy).step) == 20
  assert os.listdir(copy / checkpoints.DAMAGED_DIR) == ["60"]


@pytest.mark.parametrize("kind", ["dangling link", "file"])
def test_an_entry_named_like_a_step_that_is_no_folder_is_set_aside_before_training(trained_workdir, copy, kind):
  _, config, trained = trained_workdir
  entry = copy / "checkpoints" / "60"
  if kind == "dangling link":
    os.symlink(copy / "elsewhere", entry)
  else:
    entry.write_text("not a checkpoint")
  state = full_restore(config, copy)
  assert int(state.step) == 40 and not os.path.lexists(entry)
  np.testing.assert_array_equal(flat(state.params), trained)
  aside = sorted(os.listdir(copy / checkpoints.DAMAGED_DIR))
  assert aside == ["60", "60.REASON.txt"]
  reason = (copy / checkpoints.DAMAGED_DIR / "60.REASON.txt").read_text()
  assert ("symbolic link" in reason) if kind == "dangling link" else ("a file" in reason)


def test_a_dangling_step_link_no_longer_breaks_the_save_of_that_step(copy):
  os.symlink(copy / "elsewhere", copy / "checkpoints" / "60")
  state = train.train(local_config(num_steps=60, checkpoint_every=20), str(copy))
  assert int(state.step) == 60 and (copy / "checkpoints" / "60").is_dir()


def test_an_unreadable_step_folder_stops_training_by_name_and_changes_nothing(trained_workdir, copy, monkeypatch):
  _, config, _ = trained_workdir
  unreadable = str(copy / "checkpoints" / "40")
  listdir = os.listdir

  def refusing(path):
    if str(path) == unreadable:
      raise PermissionError(13, "Permission denied", path)
    return listdir(path)

  monkeypatch.setattr(checkpoint_integrity.os, "listdir", refusing)  # mode 000 does not stop root
  with pytest.raises(checkpoints.CheckpointError, match=rf"{unreadable} cannot be read by this user .*chmod"):
    full_restore(config, copy)
  assert sorted(listdir(copy / "checkpoints")) == ["20", "40"] and not (copy / checkpoints.DAMAGED_DIR).exists()


def test_a_checkpoint_with_non_finite_parameters_is_named_before_any_sampling(trained_workdir, monkeypatch):
  import jax  # pylint: disable=g-import-not-at-top
  from hold_jax.sampling import sample_job  # pylint: disable=g-import-not-at-top
  from hold_jax.workdir import checkpoint_restore  # pylint: disable=g-import-not-at-top
  workdir, config, _ = trained_workdir
  read = checkpoint_restore.restore_for_reading

  def poisoned(*args, **kwargs):  # a diverged state that was saved (a run of an earlier version, say)
    restored = read(*args, **kwargs)
    return checkpoint_restore.Restored(jax.tree.map(lambda leaf: leaf * np.nan, restored.tree), restored.step)

  monkeypatch.setattr(checkpoint_restore, "restore_for_reading", poisoned)
  monkeypatch.setattr(sample_job, "draw", lambda *args, **kwargs: pytest.fail("sampled from non-finite parameters"))
  with pytest.raises(checkpoints.CheckpointError, match=r"The EMA parameters of the checkpoint of step 40 are not "
                     r"finite .*no sampling setting can help"):
    sample_job.sample_to_disk(config, str(workdir))


def test_a_deleted_config_json_is_read_from_the_checkpoints_copy(trained_workdir, copy):
  from hold_jax.workdir import run_record  # pylint: disable=g-import-not-at-top
  _, config, _ = trained_workdir
  (copy / run_record.RECORD_NAME).unlink()
  changed = local_config(num_steps=60)
  changed.sde.beta_0 = 2.0  # another process than the one the checkpoints were trained with
  with pytest.raises(run_record.RecordMismatch, match=r"sde.beta_0"):
    train.train(changed, str(copy))
  assert not (copy / run_record.RECORD_NAME).exists() and sorted(os.listdir(copy / "checkpoints")) == ["20", "40"]
  inference = run_record.for_inference(copy, changed, {})  # sampling takes the trained process from the copy
  assert inference.sde.beta_0 == config.sde.beta_0
  state = train.train(local_config(num_steps=40), str(copy))  # the same config resumes and writes it again
  assert int(state.step) == 40
  assert json.loads((copy / run_record.RECORD_NAME).read_text())["sde"]["beta_0"] == config.sde.beta_0

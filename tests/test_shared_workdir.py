"""A workdir that live jobs share, and damage judged on evidence: readers (sampling, evaluation, notebooks) open
checkpoints read-only and change nothing while training writes; only proven damage sets a step aside."""
import asyncio
import json
import os
import shutil
import threading
import tomllib

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath

from benchmarks import damage
from benchmarks import read_failures
from hold_jax.training import train
from hold_jax.workdir import checkpoint_integrity
from hold_jax.workdir import checkpoints
from hold_jax.workdir import trained_model

from test_fault_tolerance import flat, full_restore, local_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def hold_saves_of(step: int, monkeypatch) -> tuple[threading.Event, threading.Event]:
  """(started, release): the checksum item of `step` is written only after release is set, so that save stays
  in flight (its temporary directory present) for as long as the test wants; started is set when it waits."""
  started, release = threading.Event(), threading.Event()
  original = ocp.JsonCheckpointHandler._save_fn  # pylint: disable=protected-access

  async def held(self, x, directory):
    if f"/{step}.orbax-checkpoint-tmp" in str(directory):
      started.set()
      await asyncio.to_thread(release.wait, 60)
    await original(self, x, directory)

  monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", held)
  return started, release


def test_an_eval_during_an_in_flight_save_leaves_it_intact_and_training_repeats_exactly(trained_workdir, tmp_path,
                                                                                      monkeypatch):
  _, _, uninterrupted_params = trained_workdir  # 40 steps, saved every 20 (the cadence does not change training)
  config = local_config(num_steps=40, checkpoint_every=10)
  config.checkpoint.asynchronous = True
  workdir = tmp_path / "run"
  started, release = hold_saves_of(20, monkeypatch)
  seen = {}

  def read_while_saving(step, state, writer):
    del state, writer
    if step != 20:
      return
    assert started.wait(60), "the save of step 20 never started"
    seen["in flight"] = checkpoints.temporary_directories(epath.Path(workdir) / "checkpoints")
    seen["params"], seen["step"] = trained_model.load_ema_params(config, str(workdir), (2,))  # what --mode=eval reads
    seen["after"] = checkpoints.temporary_directories(epath.Path(workdir) / "checkpoints")
    release.set()

  state = train.train(config, str(workdir), callbacks=[read_while_saving])
  assert len(seen["in flight"]) == 1 and seen["after"] == seen["in flight"]  # the reader left the save alone
  assert seen["step"] == 10  # the newest complete step
  assert sorted(os.listdir(workdir / "checkpoints")) == ["20", "30", "40"]
  np.testing.assert_array_equal(flat(state.params), uninterrupted_params)
  assert trained_model.load_ema_params(config, str(workdir), (2,), 20)[1] == 20  # the held save completed and verifies


def _save_beside_another_manager(directory, started, release, read_only):
  """Saves step 5 while a second manager (read-only or not) is made and closed beside the held save; returns
  the CheckpointError of the save, or None when it completed (then step 5 is listed)."""
  started.clear()
  release.clear()
  writer = checkpoints.make_manager(directory, asynchronous=True)
  checkpoints.save(writer, 5, {"a": jax.numpy.ones(3)})
  assert started.wait(60)
  checkpoints.make_manager(directory, read_only=read_only).close()
  release.set()
  try:
    checkpoints.wait(writer, 5)
  except checkpoints.CheckpointError as error:
    return error
  finally:
    steps = writer.all_steps()
    writer.close()
  assert steps == [5]
  return None


def test_a_read_only_manager_leaves_a_save_in_flight_alone(tmp_path, monkeypatch):
  started, release = hold_saves_of(5, monkeypatch)
  for attempt in range(3):
    assert _save_beside_another_manager(epath.Path(tmp_path / f"run{attempt}"), started, release, True) is None


def test_a_writable_manager_beside_a_save_in_flight_can_lose_it(tmp_path, monkeypatch):
  """The hazard, shown on orbax itself: a writable manager started beside an unfinished save removes its
  temporary directory, and the save then fails. Whether its clean-up reaches the directory before the save
  ends is a race (about 9 tries in 10 here), so up to 6 tries: one loss shows the hazard."""
  started, release = hold_saves_of(5, monkeypatch)
  for attempt in range(6):
    error = _save_beside_another_manager(epath.Path(tmp_path / f"run{attempt}"), started, release, False)
    if error is not None:
      assert "Saving the checkpoint of step 5" in str(error)
      return
  pytest.fail("six saves beside a writable manager all completed: orbax no longer removes a save in flight")


def test_a_step_removed_by_training_while_it_is_read_is_passed_over(trained_workdir, tmp_path, monkeypatch):
  workdir, config, _ = trained_workdir
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  original = ocp.CheckpointManager.restore

  def restore_after_cleanup(self, step, *args, **kwargs):
    if step == 40 and (copy / "checkpoints" / "40").exists():
      shutil.rmtree(copy / "checkpoints" / "40")  # training's max_to_keep clean-up, between listing and reading
    return original(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "restore", restore_after_cleanup)
  params, step = trained_model.load_ema_params(config, str(copy), (2,))
  assert step == 20 and np.isfinite(flat(params)).all()
  assert not (copy / checkpoints.DAMAGED_DIR).exists()


# ---------------------------------------------------------------------------------------------------------
# Damage judged on evidence.


@pytest.mark.parametrize("name", read_failures.names())
def test_an_error_that_is_not_damage_names_the_step_and_moves_nothing(trained_workdir, tmp_path, monkeypatch,
                                                                      name):
  workdir, config, _ = trained_workdir
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  _, kind = read_failures.error(name)
  monkeypatch.setattr(ocp.CheckpointManager, "restore", ocp.CheckpointManager.restore)  # undone after the test
  read_failures.inject(name)
  expected = rf"step 40 in {copy}/checkpoints/40 failed \({kind}\): .*left in place"
  with pytest.raises(checkpoints.CheckpointError, match=expected):
    full_restore(config, copy)  # training
  with pytest.raises(checkpoints.CheckpointError, match=expected):
    trained_model.load_ema_params(config, str(copy), (2,))  # a reader
  with pytest.raises(checkpoints.CheckpointError, match=expected):
    trained_model.load_ema_params(config, str(copy), (2,), 40)  # a chosen step
  assert sorted(os.listdir(copy / "checkpoints")) == ["20", "40"] and not (copy / checkpoints.DAMAGED_DIR).exists()


def test_classify_reads_evidence_not_error_types(tmp_path):
  step_dir = epath.Path(tmp_path / "40")
  step_dir.mkdir()
  damaged = [checkpoint_integrity.Damaged("checksum mismatch"), json.JSONDecodeError("Unterminated", "{", 1),
             ValueError("DATA_LOSS: Error decoding local file"), ValueError("OUT_OF_RANGE: Requested byte range"),
             ValueError("NOT_FOUND: Metadata at \"a/.zarray\" does not exist"),
             ValueError("FAILED_PRECONDITION: Truncated Zstd-compressed stream"),
             FileNotFoundError(2, "No such file", str(step_dir / "checksums" / "metadata"))]
  for error in damaged:
    assert checkpoint_integrity.classify(error, step_dir) == checkpoint_integrity.DAMAGED, error
  wrapped = Exception("Encountered error while reading array index")
  wrapped.__cause__ = ValueError("DATA_LOSS: bad chunk")
  assert checkpoint_integrity.classify(wrapped, step_dir) == checkpoint_integrity.DAMAGED
  for name in read_failures.names():
    make_error, kind = read_failures.error(name)
    assert checkpoint_integrity.classify(make_error(), step_dir) == kind, make_error
  # A file outside the step that is missing says nothing about the step; a generic precondition neither.
  assert checkpoint_integrity.classify(FileNotFoundError(2, "No such file", "/etc/x"), step_dir) != "damaged"
  assert checkpoint_integrity.classify(ValueError("FAILED_PRECONDITION: lock held"), step_dir) != "damaged"
  shutil.rmtree(step_dir)
  assert checkpoint_integrity.classify(ValueError("NOT_FOUND: x"), step_dir) == checkpoint_integrity.VANISHED


@pytest.mark.parametrize("kind", ["checksum record without arrays", "checksum record shape changed"])
def test_a_record_that_disagrees_with_its_arrays_is_damage_not_a_bug(trained_workdir, tmp_path, kind):
  workdir, config, _ = trained_workdir
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  damage.kinds()[kind](copy / "checkpoints" / "40")
  assert int(full_restore(config, copy).step) == 20
  reason = (copy / checkpoints.DAMAGED_DIR / "40" / "REASON.txt").read_text()
  assert ("no checksums" in reason) if "without" in kind else ("checksum record" in reason and "shape" in reason)


def test_orbax_has_an_upper_bound():
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as file:
    dependencies = tomllib.load(file)["project"]["dependencies"]
  orbax = next(line for line in dependencies if line.startswith("orbax-checkpoint"))
  assert "<" in orbax, orbax
  installed = tuple(int(part) for part in ocp.__version__.split(".")[:2])
  bound = tuple(int(part) for part in orbax.split("<")[1].split(".")[:2])
  assert installed < bound, (ocp.__version__, orbax)

"""Fault tolerance: checksums, fallback past damaged checkpoints, the workdir's record, full disks, stop signals."""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath

from benchmarks import damage
from hold_jax import multihost
from hold_jax.configs import toy2d
from hold_jax.training import optimization
from hold_jax.training import train
from hold_jax.workdir import checkpoint_integrity
from hold_jax.workdir import checkpoint_restore
from hold_jax.workdir import checkpoints
from hold_jax.workdir import run_record
from hold_jax.workdir import trained_model

import run_helpers  # tests/run_helpers.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


BLOCKS = trained_model.input_blocks(3, toy2d.get_config().loss.parametrization)  # the network's input blocks


def local_config(**training):
  config = toy2d.get_config("local")
  config.checkpoint.asynchronous = False
  for key, value in training.items():
    config.training[key] = value
  return config


def flat(tree):
  return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])


def full_restore(config, workdir):
  """restore_or_init of the whole train state, as a resumed run does; returns (state, manager closed)."""
  from hold_jax import models  # pylint: disable=g-import-not-at-top
  model = models.create_model(config.model, (2,))
  optimizer = optimization.make_optimizer(config.optim, config.training.num_steps)
  replicated = jax.sharding.NamedSharding(multihost.make_mesh(), jax.sharding.PartitionSpec())
  manager = trained_model.checkpoint_manager(str(workdir), config.checkpoint)
  try:
    return train.restore_or_init(manager, lambda: train.init_state(model, (2,), BLOCKS, optimizer, 0), replicated)
  finally:
    manager.close()


# ---------------------------------------------------------------------------------------------------------
# Checksums.


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.int32, jnp.uint32, jnp.bfloat16, jnp.float16, jnp.uint8,
                                   jnp.bool_, pytest.param(jnp.float64, marks=pytest.mark.float64)])
def test_checksums_change_with_any_flipped_bit(dtype):
  rng = np.random.default_rng(0)
  values = rng.standard_normal((7, 5)) * 10
  array = np.asarray(values > 0) if dtype == jnp.bool_ else np.asarray(values).astype(dtype)
  tree = {"a": jnp.asarray(array), "b": jnp.arange(3)}
  reference = checkpoint_integrity.checksums(tree)
  assert set(reference) == {"a", "b"}
  raw = bytearray(np.asarray(array).tobytes())
  bits = 1 if dtype == jnp.bool_ else 8
  for position in rng.choice(len(raw), size=min(len(raw), 12), replace=False):
    for bit in rng.choice(bits, size=min(bits, 2), replace=False):
      changed = bytearray(raw)
      changed[position] ^= 1 << int(bit)
      flipped = np.frombuffer(bytes(changed), dtype=np.asarray(array).dtype).reshape(array.shape)
      sums = checkpoint_integrity.checksums({"a": jnp.asarray(flipped), "b": jnp.arange(3)})
      assert sums["a"] != reference["a"] and sums["b"] == reference["b"], (position, bit)


def test_checksums_are_the_documented_sums():
  words = np.array([3, 2**32 - 1, 7, 123456789], np.uint32)
  expected_sum = int(words.astype(np.uint64).sum() % 2**32)
  expected_weighted = int(sum(int(w) * (2 * i + 1) for i, w in enumerate(words)) % 2**32)
  sums = checkpoint_integrity.checksums({"x": jnp.asarray(words.view(np.float32))})
  assert sums["x"] == [expected_sum, expected_weighted]


# ---------------------------------------------------------------------------------------------------------
# Fallback past damage.


def damaged_copy(trained_workdir, tmp_path, kind):
  workdir, config, _ = trained_workdir
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  damage.kinds()[kind](copy / "checkpoints" / "40")
  return copy, config


# Damage to orbax's bookkeeping file of the step alone leaves the arrays readable and verified.
HARMLESS = {"step metadata deleted", "step metadata truncated", "step metadata garbage"}


@pytest.mark.parametrize("kind", sorted(damage.kinds()))
def test_every_damage_falls_back_to_the_older_checkpoint(trained_workdir, tmp_path, kind, caplog):
  copy, config = damaged_copy(trained_workdir, tmp_path, kind)
  state = full_restore(config, copy)
  if kind in HARMLESS:
    assert int(state.step) == 40 and not (copy / checkpoints.DAMAGED_DIR).exists()
    np.testing.assert_array_equal(flat(state.params), trained_workdir[2])
    return
  assert int(state.step) == 20
  assert sorted(os.listdir(copy / "checkpoints")) == ["20"]
  assert os.listdir(copy / checkpoints.DAMAGED_DIR) == ["40"]  # set aside, never deleted
  reason = (copy / checkpoints.DAMAGED_DIR / "40" / "REASON.txt").read_text()
  assert "step 40 could not be restored" in reason
  assert any("checkpoint of step 40" in record.getMessage() and "trying the next older one" in record.getMessage()
             for record in caplog.records)
  params, step = trained_model.load_ema_params(config, str(copy), (2,))  # sampling reads the same checkpoint
  assert step == 20 and np.isfinite(flat(params)).all()


def test_arrays_that_differ_from_their_checksums_are_caught(trained_workdir, tmp_path):
  # Flipped bytes decode silently only where tensorstore stored a chunk raw, which depends on the layout of a
  # save; changing one recorded sum in the (still valid) checksum record is the same disagreement, always.
  workdir, config, _ = trained_workdir
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  record_path = copy / "checkpoints" / "40" / "checksums" / "metadata"
  record = json.loads(record_path.read_text())
  name = sorted(record["arrays"])[0]
  record["arrays"][name][0] = (record["arrays"][name][0] + 1) % 2**32
  record_path.write_text(json.dumps(record))
  assert int(full_restore(config, copy).step) == 20
  reason = (copy / checkpoints.DAMAGED_DIR / "40" / "REASON.txt").read_text()
  assert "checksum mismatch" in reason and name in reason


def test_resume_after_damage_repeats_the_uninterrupted_run(trained_workdir, tmp_path):
  copy, config = damaged_copy(trained_workdir, tmp_path, "array data truncated")
  state = train.train(config, str(copy))  # falls back to step 20 and trains 20 -> 40 again
  assert int(state.step) == 40
  np.testing.assert_array_equal(flat(state.params), trained_workdir[2])


def test_no_readable_checkpoint_is_one_error_naming_the_directory(trained_workdir, tmp_path):
  copy, config = damaged_copy(trained_workdir, tmp_path, "array metadata garbage")
  damage.kinds()["array metadata garbage"](copy / "checkpoints" / "20")
  with pytest.raises(checkpoints.CheckpointError, match=r"None of the 2 checkpoints in .*checkpoints could be read"
                     r".*left in place"):
    trained_model.load_ema_params(config, str(copy), (2,))  # a reader changes nothing...
  assert sorted(os.listdir(copy / "checkpoints")) == ["20", "40"] and not (copy / checkpoints.DAMAGED_DIR).exists()
  with pytest.raises(checkpoints.CheckpointError, match=r"None of the 2 checkpoints in .*checkpoints could be read"
                     r".*moved to"):
    full_restore(config, copy)  # ...training sets them aside
  assert sorted(os.listdir(copy / checkpoints.DAMAGED_DIR)) == ["20", "40"]


def test_a_changed_model_is_an_error_not_damage(trained_workdir, tmp_path):
  workdir, config, _ = trained_workdir
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  wider = local_config(num_steps=40)
  wider.model.width = 48
  with pytest.raises(checkpoints.CheckpointError, match=r"shape .*config builds"):
    full_restore(wider, copy)
  assert sorted(os.listdir(copy / "checkpoints")) == ["20", "40"] and not (copy / checkpoints.DAMAGED_DIR).exists()


def chosen_restore(config, workdir, step):
  """checkpoint_restore.restore_step of the whole train state at `step`: every array read, so every kind of damage
  reaches it."""
  from hold_jax import models  # pylint: disable=g-import-not-at-top
  model = models.create_model(config.model, (2,))
  optimizer = optimization.make_optimizer(config.optim, config.training.num_steps)
  replicated = jax.sharding.NamedSharding(multihost.make_mesh(), jax.sharding.PartitionSpec())
  abstract = train.abstract_state(lambda: train.init_state(model, (2,), BLOCKS, optimizer, 0), replicated)
  manager = trained_model.checkpoint_manager(str(workdir), config.checkpoint)
  try:
    return checkpoint_restore.restore_step(manager, step, abstract)
  finally:
    manager.close()


# A read that fails leaves tensorstore callbacks that find orbax's event loop closed some milliseconds later;
# restore's fallback reads the next step meanwhile, restore_step returns at once. The command line sends these
# to the debug log (checkpoints.shorten_library_tracebacks); here pytest would report them as warnings.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("kind", sorted(damage.kinds()))
def test_a_damaged_chosen_step_is_an_error_never_a_fallback(trained_workdir, tmp_path, kind):
  copy, config = damaged_copy(trained_workdir, tmp_path, kind)
  if kind in HARMLESS:
    assert chosen_restore(config, copy, 40).step == 40
    return
  with pytest.raises(checkpoints.CheckpointError, match=r"checkpoint of step 40 in .*cannot be used: .*no other "
                     r"step is read in its place, and it is left where it is.*The steps there: 20, 40;"):
    chosen_restore(config, copy, 40)
  assert sorted(os.listdir(copy / "checkpoints")) == ["20", "40"] and not (copy / checkpoints.DAMAGED_DIR).exists()


def test_a_chosen_step_that_is_absent_or_set_aside_is_named(trained_workdir, tmp_path):
  workdir, config, _ = trained_workdir
  params, step = trained_model.load_ema_params(config, str(workdir), (2,), 20)
  assert step == 20 and not np.array_equal(flat(params), flat(trained_model.load_ema_params(config, str(workdir), (2,))[0]))
  with pytest.raises(checkpoints.CheckpointError, match=r"no checkpoint of step 30 in .*; the steps there: 20, 40\.$"):
    trained_model.load_ema_params(config, str(workdir), (2,), 30)
  copy, config = damaged_copy(trained_workdir, tmp_path, "array metadata garbage")
  assert trained_model.load_ema_params(config, str(copy), (2,))[1] == 20  # the newest readable; 40 stays for training
  assert sorted(os.listdir(copy / "checkpoints")) == ["20", "40"]
  assert int(full_restore(config, copy).step) == 20  # training sets 40 aside
  with pytest.raises(checkpoints.CheckpointError, match=r"the steps there: 20\. Step 40 was set aside as damaged to "
                     r".*damaged_checkpoints/40 \(REASON.txt says why\)"):
    trained_model.load_ema_params(config, str(copy), (2,), 40)


def test_sampling_restores_the_ema_parameters_alone(trained_workdir):
  workdir, config, _ = trained_workdir
  other_optimizer = local_config(num_steps=40)
  other_optimizer.optim.grad_clip = 0.0  # no clipping: a different optimizer state tree
  params, step = trained_model.load_ema_params(other_optimizer, str(workdir), (2,))
  assert step == 40
  state = full_restore(config, workdir)
  np.testing.assert_array_equal(flat(params), flat(state.ema_params))


# ---------------------------------------------------------------------------------------------------------
# The workdir's record.


def test_resuming_with_a_changed_trained_field_names_it_and_keeps_the_record(trained_workdir, tmp_path):
  workdir, _, _ = trained_workdir
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  before = (copy / "config.json").read_text()
  for field, value in [("sde.beta_0", 5.0), ("seed", 3), ("model.width", 16), ("optim.learning_rate", 2e-3)]:
    config = local_config(num_steps=60, checkpoint_every=20)
    section, _, name = field.rpartition(".")
    (config[section] if section else config)[name] = value
    with pytest.raises(run_record.RecordMismatch, match=rf"{field}: trained with .*, given {value!r}"):
      train.train(config, str(copy))
  assert (copy / "config.json").read_text() == before
  assert sorted(os.listdir(copy / "checkpoints")) == ["20", "40"]


def test_extending_training_continues_and_fewer_steps_says_so(trained_workdir, tmp_path):
  workdir, _, _ = trained_workdir
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  config = local_config(num_steps=50, checkpoint_every=20, log_every=5)
  assert int(train.train(config, str(copy)).step) == 50
  with pytest.raises(checkpoints.CheckpointError, match=r"at step 50, past training.num_steps = 30"):
    train.train(local_config(num_steps=30, checkpoint_every=20), str(copy))


def test_sampling_takes_trained_fields_from_the_record(tmp_path):
  recorded = local_config(num_steps=5)
  recorded.sde.beta_0 = 4.0
  recorded.model.width = 16
  run_record.write(epath.Path(tmp_path), recorded)
  given = local_config()
  given.sampling.num_steps = 7
  merged = run_record.for_inference(epath.Path(tmp_path), given, {"sampling.num_steps": 7})
  assert merged.sde.beta_0 == 4.0 and merged.model.width == 16 and merged.sampling.num_steps == 7
  assert run_record.for_inference(epath.Path(tmp_path), given, {"model.width": 16}).model.width == 16
  with pytest.raises(run_record.RecordMismatch, match=r"model.width: trained with 16, given 32"):
    run_record.for_inference(epath.Path(tmp_path), given, {"model.width": 32})
  # The stock network is a denoiser, whose process is a sampling setting (tests/test_denoiser_runs.py has a
  # score network's, which stays trained).
  assert run_record.for_inference(epath.Path(tmp_path), given, {"sde.beta_0": 6.5}).sde.beta_0 == 6.5


# ---------------------------------------------------------------------------------------------------------
# Unwritable and full disks.


def test_workdir_that_is_a_file_or_too_small_is_named_before_compute(tmp_path, monkeypatch):
  config = local_config(num_steps=5)
  (tmp_path / "file").write_text("x")
  with pytest.raises(checkpoints.CheckpointError, match=r"is a file, not a directory"):
    train.train(config, str(tmp_path / "file"))
  monkeypatch.setattr(checkpoints, "free_bytes", lambda path: 1000)
  with pytest.raises(checkpoints.CheckpointError, match=r"0.0 MiB free, and one checkpoint of this run needs"):
    train.train(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.fixture
def small_disk(tmp_path):
  """A 600 KiB tmpfs: room for two toy checkpoints of ~260 KiB, not three."""
  with run_helpers.tmpfs(tmp_path / "disk", "size=600k") as mount:
    yield mount


def test_a_save_that_fills_the_disk_is_one_message_and_keeps_the_previous_checkpoint(small_disk):
  config = local_config(num_steps=60, checkpoint_every=20, log_every=20)
  config.checkpoint.keep = 5
  with pytest.raises(checkpoints.CheckpointError, match=r"Saving the checkpoint of step \d+ to .* failed: the disk "
                     r"is full .*partial files were removed; the checkpoint of step \d+ is intact"):
    train.train(config, str(small_disk / "run"))
  names = os.listdir(small_disk / "run" / "checkpoints")
  assert names and all(name.isdigit() for name in names)  # no temporary directory left behind
  params, step = trained_model.load_ema_params(config, str(small_disk / "run"), (2,))
  assert step == max(int(name) for name in names) and np.isfinite(flat(params)).all()


def test_a_temporary_directory_that_a_late_writer_brings_back_is_removed_again(tmp_path):
  """After a failed save, orbax's thread writing another item of it may recreate its temporary directory."""
  def late_writer():
    time.sleep(0.2)
    (tmp_path / "60.orbax-checkpoint-tmp" / "checksums").mkdir(parents=True)

  (tmp_path / "60.orbax-checkpoint-tmp").mkdir()
  (tmp_path / "40").mkdir()
  writer = threading.Thread(target=late_writer)
  writer.start()
  checkpoints.remove_temporary_directories(epath.Path(tmp_path))
  writer.join()
  assert os.listdir(tmp_path) == ["40"]


def test_read_only_workdir_is_named(tmp_path):
  with run_helpers.tmpfs(tmp_path / "ro", "ro,size=64k") as mount:
    with pytest.raises(checkpoints.CheckpointError, match=r"is not writable"):
      train.train(local_config(num_steps=5), str(mount / "run"))


# ---------------------------------------------------------------------------------------------------------
# Stop signals.


def start_training(workdir, *flags):
  command = [sys.executable, "-m", "hold_jax.main", "--config", "configs/toy2d.py:local", "--workdir",
             str(workdir), "--config.training.num_steps=1000000", "--config.training.checkpoint_every=50",
             "--config.training.log_every=50", "--config.checkpoint.asynchronous=True", *flags]
  return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT))


# Every signal takes the same path after its handler; the resume is checked once.
@pytest.mark.slow
@pytest.mark.parametrize("signum, resume", [(signal.SIGTERM, True), (signal.SIGINT, False), (signal.SIGUSR1, False)])
def test_stop_signals_save_the_step_reached_and_resume_bit_identically(tmp_path, signum, resume):
  workdir = tmp_path / "run"
  process = start_training(workdir)
  run_helpers.wait_for_checkpoint(workdir, [process])
  sent = time.time()
  process.send_signal(signum)
  stdout, stderr = process.communicate(timeout=60)
  seconds = time.time() - sent
  assert process.returncode == 0, stderr[-3000:]
  assert seconds < 20
  stopped = max(int(name) for name in os.listdir(workdir / "checkpoints"))
  assert f"stopped at step {stopped} of 1000000" in stdout
  assert f"{signal.Signals(signum).name}: saved the checkpoint of step {stopped}" in stderr

  if not resume:
    return
  config = local_config(num_steps=stopped + 10, checkpoint_every=50, log_every=50)
  resumed = train.train(config, str(workdir))  # in float32, as the command line runs (conftest)
  reference = train.train(config, str(tmp_path / "uninterrupted"))
  assert int(resumed.step) == stopped + 10
  np.testing.assert_array_equal(flat(resumed.params), flat(reference.params))


def test_checkpoints_written_before_checksums_still_load(tmp_path, caplog):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  config = local_config(num_steps=40)
  state = full_restore(config, tmp_path / "fresh")  # a fresh state (no checkpoint there)
  legacy = ocp.CheckpointManager(tmp_path / "run" / "checkpoints")  # the single-item layout of earlier versions
  legacy.save(7, args=ocp.args.StandardSave(state))
  legacy.wait_until_finished()
  legacy.close()
  restored = full_restore(config, tmp_path / "run")
  assert int(restored.step) == 0 and "has no checksums" in caplog.text
  np.testing.assert_array_equal(flat(restored.params), flat(state.params))
  params, step = trained_model.load_ema_params(config, str(tmp_path / "run"), (2,))
  assert step == 7


def test_sampling_into_an_unwritable_place_stops_before_drawing(trained_workdir, tmp_path, monkeypatch):
  from hold_jax.sampling import sample_job  # pylint: disable=g-import-not-at-top
  workdir, config, _ = trained_workdir
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  (copy / "samples").write_text("a file where the samples folder belongs")
  monkeypatch.setattr(sample_job, "draw", lambda *args, **kwargs: pytest.fail("sampled before checking the workdir"))
  with pytest.raises(checkpoints.CheckpointError, match=r"samples is a file, not a directory"):
    sample_job.sample_to_disk(config, str(copy))

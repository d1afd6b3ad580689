"""The training system on 2-D data: data streams, the sharded step, EMA, resume, non-finite stops, CLI."""
import glob
import json
import os
import subprocess
import sys
import textwrap

import jax
import ml_collections
import numpy as np
import pytest

from hold_jax.configs import toy2d
from hold_jax.data import input_pipeline
from hold_jax.evaluation import point_clouds
from hold_jax.training import optimization
from hold_jax.training import train
from hold_jax.workdir import trained_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def local_config(**training):
  config = toy2d.get_config("local")
  for key, value in training.items():
    config.training[key] = value
  return config


def flat_params(state):
  return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(state.params)])


def run_python(code, env_overrides=None, timeout=600):
  env = dict(os.environ, PYTHONPATH=ROOT, **(env_overrides or {}))
  result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
  assert result.returncode == 0, result.stderr[-4000:]
  return result


def test_swiss_roll_is_the_specified_distribution():
  points = input_pipeline.multimodal_swiss_roll(np.random.default_rng(0), 20000)
  distance = point_clouds.spiral_distance(points)
  assert np.mean(distance < 0.008) > 0.99  # noise N(0, 0.002^2 I) around the arms
  nearest = np.argmin(np.linalg.norm(points[:, None] - input_pipeline.SWISS_ROLL_CENTRES[None], axis=-1), 1)
  np.testing.assert_allclose(np.bincount(nearest) / len(points), 0.2, atol=0.02)


def test_data_range_is_what_the_data_covers(tmp_path):
  images = ml_collections.ConfigDict({"dataset": "digits"})
  assert input_pipeline.data_range(images) == (-1.0, 1.0)
  low, high = input_pipeline.data_range(ml_collections.ConfigDict({"dataset": "multimodal_swiss_roll"}))
  points = input_pipeline.multimodal_swiss_roll(np.random.default_rng(1), 20_000)
  assert np.all(low <= points.min(0) + 1e-3) and np.all(high >= points.max(0) - 1e-3)
  assert np.all(high - low < points.max(0) - points.min(0) + 0.02)
  cloud = np.array([[0.0, 5.0], [-2.0, 1.0], [3.0, 2.0]], np.float32)
  np.save(tmp_path / "cloud.npy", cloud)
  low, high = input_pipeline.data_range(ml_collections.ConfigDict({"dataset": f"npy:{tmp_path / 'cloud.npy'}"}))
  assert list(low) == [-2.0, 1.0] and list(high) == [3.0, 5.0]
  with pytest.raises(ValueError, match="data.dataset"):
    input_pipeline.data_range(ml_collections.ConfigDict({"dataset": "spiral"}))


def test_streams_are_functions_of_seed_step_and_process():
  config = local_config()
  make = lambda index, count: input_pipeline.PointStream("multimodal_swiss_roll", 64, 3, index, count)
  np.testing.assert_array_equal(make(0, 1).local_batch(5), make(0, 1).local_batch(5))
  assert not np.array_equal(make(0, 1).local_batch(5), make(0, 1).local_batch(6))
  assert make(1, 2).local_batch(5).shape == (32, 2)
  assert not np.array_equal(make(0, 2).local_batch(5), make(1, 2).local_batch(5))
  for name in input_pipeline.GENERATORS:
    config.data.dataset = name
    batch = input_pipeline.create_stream(config.data, 64, 0).local_batch(0)
    assert batch.shape == (64, 2) and batch.dtype == np.float32 and np.isfinite(batch).all()


def test_npy_point_cloud_trains_and_bad_files_are_named(tmp_path):
  cloud = np.random.default_rng(0).standard_normal((100, 3))
  np.save(tmp_path / "cloud.npy", cloud)
  config = local_config(num_steps=3, checkpoint_every=3, log_every=3)
  config.data.dataset = f"npy:{tmp_path / 'cloud.npy'}"
  state = train.train(config, str(tmp_path / "run"))
  assert int(state.step) == 3 and np.isfinite(flat_params(state)).all()

  np.save(tmp_path / "flat.npy", np.zeros(10))
  bad = cloud.copy()
  bad[7, 1] = np.nan
  np.save(tmp_path / "nan.npy", bad)
  for name, message in [("missing.npy", "no such file"), ("flat.npy", r"shape \(10,\)"),
                        ("nan.npy", "first at row 7")]:
    config.data.dataset = f"npy:{tmp_path / name}"
    with pytest.raises(ValueError, match=message):
      input_pipeline.create_stream(config.data, 64, 0)


def test_ema_starts_at_the_parameters_and_warms_up():
  assert float(optimization.ema_decay(0, 0.999, True)) == pytest.approx(0.1)
  assert float(optimization.ema_decay(10**6, 0.999, True)) == pytest.approx(0.999)
  assert float(optimization.ema_decay(0, 0.999, False)) == pytest.approx(0.999)
  config = local_config(num_steps=1)
  state = train.init_state(*_model_and_optimizer(config), config.seed)
  np.testing.assert_array_equal(flat_params(state), np.concatenate(
      [np.ravel(x) for x in jax.tree.leaves(state.ema_params)]))


def _model_and_optimizer(config):
  from hold_jax import models  # pylint: disable=g-import-not-at-top
  optimizer = optimization.make_optimizer(config.optim, config.training.num_steps)
  return (models.create_model(config.model, (2,)), (2,),
          trained_model.input_blocks(config.sde.order, config.loss.parametrization), optimizer)


def test_resumed_run_equals_uninterrupted_run(tmp_path, monkeypatch):
  config = local_config(num_steps=30, checkpoint_every=10, log_every=10)
  uninterrupted = train.train(config, str(tmp_path / "a"))

  original = input_pipeline.PointStream.local_batch

  def dies_at_step_25(self, step):
    if step == 25:
      raise KeyboardInterrupt("preempted")
    return original(self, step)

  monkeypatch.setattr(input_pipeline.PointStream, "local_batch", dies_at_step_25)
  with pytest.raises(KeyboardInterrupt):
    train.train(config, str(tmp_path / "b"))
  assert sorted(os.listdir(tmp_path / "b" / "checkpoints")) == ["10", "20"]
  monkeypatch.setattr(input_pipeline.PointStream, "local_batch", original)
  resumed = train.train(config, str(tmp_path / "b"))  # same command, no flag: resumes from step 20
  assert int(resumed.step) == 30
  np.testing.assert_array_equal(flat_params(resumed), flat_params(uninterrupted))
  assert sorted(os.listdir(tmp_path / "b" / "checkpoints")) == ["10", "20", "30"]


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  config = local_config(num_steps=20, checkpoint_every=1, log_every=1)
  config.optim.learning_rate = 1e30
  config.optim.grad_clip = 0.0
  config.optim.warmup_steps = 1
  with pytest.raises(FloatingPointError, match=r"Non-finite loss or gradient at step \d+.*optim.learning_rate"):
    train.train(config, str(tmp_path))
  saved = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints"))
  assert saved and saved[-1] < 20
  params, step = trained_model.load_ema_params(config, str(tmp_path), (2,))
  assert step == saved[-1]
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


@pytest.mark.slow
def test_same_losses_and_parameters_on_one_and_four_devices(tmp_path):
  code = """
    import json, sys, jax, numpy as np
    from hold_jax.training import train
    from hold_jax.configs import toy2d
    config = toy2d.get_config("local")
    config.training.num_steps = 20
    config.training.log_every = 1
    config.checkpoint.asynchronous = False
    state = train.train(config, "{workdir}")
    params = np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(state.params)])
    np.save("{workdir}/params.npy", params)
    print(json.dumps({{"devices": jax.device_count()}}))
  """
  results = {}
  for count in (1, 4):
    workdir = tmp_path / f"devices{count}"
    output = run_python(code.format(workdir=workdir),
                        {"XLA_FLAGS": f"--xla_force_host_platform_device_count={count}"})
    assert json.loads(output.stdout.strip().splitlines()[-1])["devices"] == count
    losses = _logged_scalars(workdir, "loss")
    results[count] = (losses, np.load(workdir / "params.npy"))
  np.testing.assert_allclose(results[4][0], results[1][0], rtol=1e-5)
  np.testing.assert_allclose(results[4][1], results[1][1], rtol=1e-4, atol=1e-6)


def _logged_scalars(workdir, tag):
  """The values of `tag` from the TensorBoard event files clu wrote, in step order."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  accumulator = event_accumulator.EventAccumulator(str(workdir), size_guidance={"tensors": 0})
  accumulator.Reload()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return np.array([float(tf.make_ndarray(event.tensor_proto)) for event in accumulator.Tensors(tag)])


@pytest.mark.slow
def test_command_line_trains_logs_and_samples(tmp_path):
  base = [sys.executable, "-m", "hold_jax.main", "--config", "configs/toy2d.py:local", "--workdir", str(tmp_path)]
  trained_with = ["--config.model.width=16", "--config.sde.beta_0=5.0"]  # sampling needs not repeat them
  trained = subprocess.run(base + trained_with, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert trained.returncode == 0, trained.stderr[-4000:]
  assert glob.glob(str(tmp_path / "events.out.tfevents.*"))
  for tag in ("loss", "grad_norm", "learning_rate", "steps_per_sec"):
    assert len(_logged_scalars(tmp_path, tag)) > 0, tag
  adaptive = ["--config.sampling.method=ode_adaptive", "--config.sampling.ode_rtol=1e-3",
              "--config.sampling.ode_atol=1e-3"]
  sampled = subprocess.run(base + ["--mode=sample"] + adaptive, cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
  assert sampled.returncode == 0, sampled.stderr[-4000:]
  path = sampled.stdout.strip().splitlines()[-1]
  assert path.endswith(".npz") and os.path.isfile(path) and "ode_adaptive_tsit5_rtol0.001" in path
  with np.load(path) as archive:
    assert archive["x"].shape == (256, 2) and np.isfinite(archive["x"]).all()
    assert str(archive["method"]) == "ode_adaptive" and float(archive["ode_rtol"]) == 1e-3
    assert int(archive["nfe"]) > 10  # counted by the solver
  assert os.path.isfile(path[:-len(".npz")] + ".png")
  changed = subprocess.run(base + ["--mode=sample", "--config.model.width=24"], cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
  assert changed.returncode != 0 and "model.width: trained with 16, given 24" in changed.stderr
  assert "Traceback" not in changed.stderr


def test_non_finite_samples_are_reported_not_written(tmp_path, monkeypatch):
  from hold_jax.sampling import sample_job  # pylint: disable=g-import-not-at-top
  config = local_config()
  config.sampling.method = "ode_heun"
  samples = np.ones((config.sampling.num_samples, 2), np.float32)
  samples[3] = np.nan
  monkeypatch.setattr(trained_model, "load_ema_params", lambda config, workdir, shape: (None, 7))
  monkeypatch.setattr(sample_job, "draw", lambda config, params, shape, return_nfe=False: (samples, 40))
  with pytest.raises(FloatingPointError, match=r"1 of 256 samples are not finite .*nothing was written.*num_steps"):
    sample_job.sample_to_disk(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "samples") or not os.listdir(tmp_path / "samples")


def test_a_bad_command_line_value_names_the_field(tmp_path):
  # One real process; the other fields take the same path in-process (tests/test_bad_input_cli.py, a misspelt
  # field name: tests/test_bad_input.py).
  command = [sys.executable, "-m", "hold_jax.main", "--config", "configs/toy2d.py:local", "--workdir",
             str(tmp_path), "--config.model.name=unet"]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode != 0
  assert "model.name = 'unet' is not allowed" in result.stderr


def test_sampling_without_a_checkpoint_says_what_to_do(tmp_path):
  command = [sys.executable, "-m", "hold_jax.main", "--config", "configs/toy2d.py:local", "--workdir",
             str(tmp_path), "--mode=sample"]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode != 0 and "No checkpoint in" in result.stderr

"""The image path end to end: a real train step of the local CIFAR-10 config on mocked tfds data, and the
digits config through the command line (train with sample grids, then --mode=sample)."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from hold_jax.configs import cifar10
from hold_jax.configs import digits
from hold_jax.sampling import sample_job
from hold_jax.training import optimization
from hold_jax.training import train
from hold_jax.workdir import trained_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def flat(tree):
  return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])


@pytest.mark.slow
def test_cifar10_local_trains_on_mocked_tfds_with_dropout(tmp_path, prepared_mock_tfds):
  config = cifar10.get_config("local")
  config.training.num_steps = config.training.checkpoint_every = 2
  config.model.dropout = 0.1  # the training score function must pass a dropout key
  fresh = train.init_state(train.models.create_model(config.model, (32, 32, 3)), (32, 32, 3),
                           trained_model.input_blocks(config.sde.order, config.loss.parametrization),
                           optimization.make_optimizer(config.optim, 2), config.seed)
  state = train.train(config, str(tmp_path))
  assert int(state.step) == 2 and int(state.first_bad_step) == -1
  params = flat(state.params)
  assert np.isfinite(params).all() and not np.allclose(params, flat(fresh.params))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]


@pytest.mark.slow
def test_digits_command_line_trains_writes_grids_and_samples(tmp_path):
  base = [sys.executable, "-m", "hold_jax.main", "--config", "configs/digits.py:local", "--workdir", str(tmp_path),
          "--config.training.num_steps=4", "--config.training.sample_every=4", "--config.sampling.num_steps=4"]
  trained = subprocess.run(base, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert trained.returncode == 0, trained.stderr[-4000:]
  config = digits.get_config("local")
  config.training.update(num_steps=4, sample_every=4)
  config.sampling.num_steps = 4
  assert os.listdir(tmp_path / "samples") == [sample_job.grid_file_name(config, 4)]  # grid_step4_<settings hash>.png
  sampled = subprocess.run(base + ["--mode=sample"], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert sampled.returncode == 0, sampled.stderr[-4000:]
  path = sampled.stdout.strip().splitlines()[-1]
  assert path == str(tmp_path / "samples" / f"{sample_job.sample_file_stem(config, 4)}.npz")
  with np.load(path) as archive:
    assert archive["x"].shape == (8, 8, 8, 1) and np.isfinite(archive["x"]).all()
    assert archive["pixels"].dtype == np.uint8 and archive["pixels"].shape == (8, 8, 8, 1)
  assert os.path.isfile(path[:-len(".npz")] + ".png")

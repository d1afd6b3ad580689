"""Sample-quality evaluation (hold_jax/quality.py) end to end on the digits, with the bundled classifier."""
import json
import os

import numpy as np
import pytest

from configs import digits
from hold_jax import checkpoints
from hold_jax import quality
from hold_jax import train


def eval_config():
  config = digits.get_config("local")
  config.training.num_steps = 4
  config.training.sample_every = 0
  config.sampling.num_steps = 2
  config.eval.num_samples = 13  # rounds of 8 and 5: the last round and batch are padded and cut back
  config.eval.round_size = 8
  config.eval.stats_cache_dir = ""
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("digits")
  config = eval_config()
  config.eval.stats_cache_dir = str(workdir / "stats_cache")
  train.train(config, str(workdir))
  return workdir, config


def run(config, workdir):
  path = quality.evaluate_quality(config, str(workdir))
  with open(path) as file:
    return path, json.load(file)


def test_report_has_the_metrics_the_baselines_and_resumes_round_by_round(trained, monkeypatch):
  workdir, config = trained
  path, report = run(config, workdir)
  repeat = report["repeats"][0]
  assert repeat["num_samples"] == 13 and repeat["nfe"] == 2
  for name in ("fd_digits", "kid_digits", "is_digits"):
    assert np.isfinite(repeat[name]) and report["summary"][f"{name}_mean"] == repeat[name]
  baselines = report["baselines"]
  assert baselines["heldout_digits"]["fd_digits"] < 0.1 * baselines["uniform_noise"]["fd_digits"]
  assert report["feature_network"]["name"] == "digits-classifier-v1" and report["checkpoint_step"] == 4
  run_dir = workdir / "eval" / report["run"]
  assert sorted(os.listdir(run_dir)) == ["repeat0_round0.npz", "repeat0_round1.npz"]
  assert len(os.listdir(config.eval.stats_cache_dir)) == 1  # reference statistics cached for the next run

  generated = []
  original = quality._generate_round  # pylint: disable=protected-access
  monkeypatch.setattr(quality, "_generate_round", lambda *args: generated.append(args[3]) or original(*args))
  os.remove(run_dir / "repeat0_round1.npz")  # killed before the second round was written
  assert run(config, workdir)[1]["repeats"] == report["repeats"]
  assert [list(ids) for ids in generated] == [list(range(8, 13))]  # only the missing round

  generated.clear()
  data = (run_dir / "repeat0_round0.npz").read_bytes()
  (run_dir / "repeat0_round0.npz").write_bytes(data[:len(data) // 2] + bytes(len(data) - len(data) // 2))
  assert run(config, workdir)[1]["repeats"] == report["repeats"]  # the damaged round was generated again
  assert [list(ids) for ids in generated] == [list(range(8))]


def test_a_round_file_with_changed_numbers_fails_its_checksum(trained, tmp_path):
  features = np.arange(12, dtype=np.float32).reshape(3, 4)
  path = tmp_path / "round.npz"
  quality.write_round(path, features, features[:, :2], 7)
  found = quality.read_round(path, 3)
  assert found[2] == 7 and np.array_equal(found[0], features)
  assert quality.read_round(path, 4) is None  # wrong number of rows
  with np.load(path) as archive:
    arrays = dict(archive)
  arrays["features"][1, 2] += 1
  np.savez(path, **arrays)
  assert quality.read_round(path, 3) is None


def test_bad_evaluation_inputs_are_named(trained, tmp_path):
  workdir, config = trained
  inception = eval_config()
  inception.eval.feature_network = "inception"
  with pytest.raises(ValueError, match=r"eval.inception_weights is not set.*pt_inception-2015-12-05"):
    quality.evaluate_quality(inception, str(workdir))
  inception.eval.inception_weights = str(tmp_path / "missing.pth")
  with pytest.raises(ValueError, match=r"missing.pth"):
    quality.evaluate_quality(inception, str(workdir))
  with pytest.raises(checkpoints.CheckpointError, match=r"No checkpoint in"):
    quality.evaluate_quality(config, str(tmp_path / "empty"))

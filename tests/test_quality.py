"""Sample-quality evaluation (hold_jax/evaluation/image_quality.py) end to end on the digits, with the bundled
classifier."""
import json
import os
import re
import shutil

import jax
import numpy as np
import pytest

from benchmarks import damage
from hold_jax.configs import digits
from hold_jax.evaluation import eval_job
from hold_jax.evaluation import image_features
from hold_jax.evaluation import image_quality
from hold_jax.evaluation import nll_rounds
from hold_jax.evaluation import quality_files
from hold_jax.training import train
from hold_jax.workdir import checkpoints
from hold_jax.workdir import trained_model


def eval_config():
  config = digits.get_config("local")
  config.training.num_steps = 4
  config.training.sample_every = 0
  config.sampling.num_steps = 2
  config.eval.num_samples = 13  # rounds of 8 and 5: the last round and batch are padded and cut back
  config.eval.round_size = 8
  config.eval.stats_cache_dir = ""
  # Steps large enough that the checkpoints of steps 2 and 4 draw visibly different images (the denoiser's
  # output layer starts at zero, so a few small steps change no pixel).
  config.optim.warmup_steps, config.optim.learning_rate = 0, 1e-2
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """4 steps of digits:local with checkpoints at steps 2 and 4 (one training serves every test)."""
  workdir = tmp_path_factory.mktemp("digits")
  config = eval_config()
  config.training.checkpoint_every = 2
  config.eval.stats_cache_dir = str(workdir / "stats_cache")
  train.train(config, str(workdir))
  return workdir, config


def with_eval(config, **fields):
  """A copy of config with the given eval fields."""
  result = config.copy_and_resolve_references()
  for name, value in fields.items():
    result.eval[name] = value
  return result


def run(config, workdir):
  path = image_quality.evaluate_quality(config, str(workdir))
  with open(path) as file:
    return path, json.load(file)


@pytest.mark.slow
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
  original = image_quality._generate_round  # pylint: disable=protected-access
  monkeypatch.setattr(image_quality, "_generate_round", lambda *args: generated.append(args[3]) or original(*args))
  os.remove(run_dir / "repeat0_round1.npz")  # killed before the second round was written
  assert run(config, workdir)[1]["repeats"] == report["repeats"]
  assert [list(ids) for ids in generated] == [list(range(8, 13))]  # only the missing round

  generated.clear()
  data = (run_dir / "repeat0_round0.npz").read_bytes()
  (run_dir / "repeat0_round0.npz").write_bytes(data[:len(data) // 2] + bytes(len(data) - len(data) // 2))
  assert run(config, workdir)[1]["repeats"] == report["repeats"]  # the damaged round was generated again
  assert [list(ids) for ids in generated] == [list(range(8))]


def test_bad_evaluation_inputs_are_named(trained, tmp_path):
  workdir, config = trained
  inception = eval_config()
  inception.eval.feature_network = "inception"
  with pytest.raises(ValueError, match=r"eval.inception_weights is not set.*pt_inception-2015-12-05"):
    image_quality.evaluate_quality(inception, str(workdir))
  inception.eval.inception_weights = str(tmp_path / "missing.pth")
  with pytest.raises(ValueError, match=r"missing.pth"):
    image_quality.evaluate_quality(inception, str(workdir))
  with pytest.raises(checkpoints.CheckpointError, match=r"No checkpoint in"):
    image_quality.evaluate_quality(config, str(tmp_path / "empty"))


# ----------------------------------------------------------------------------------------------------------
# A chosen checkpoint.


def test_a_chosen_checkpoint_is_evaluated_instead_of_the_newest(trained, monkeypatch):
  workdir, config = trained
  newest = run(config, workdir)[1]
  chosen = run(with_eval(config, checkpoint_step=2), workdir)[1]
  assert newest["checkpoint_step"] == 4 and chosen["checkpoint_step"] == 2
  assert chosen["run"] != newest["run"] and "_ckpt2_" in chosen["run"]  # its own rounds folder
  assert chosen["summary"]["fd_digits_mean"] != newest["summary"]["fd_digits_mean"]
  params, step = trained_model.load_ema_params(config, str(workdir), (8, 8, 1), 2)
  latest, latest_step = trained_model.load_ema_params(config, str(workdir), (8, 8, 1))
  flat = lambda tree: np.concatenate([np.ravel(np.asarray(leaf)) for leaf in jax.tree.leaves(tree)])
  assert (step, latest_step) == (2, 4) and not np.array_equal(flat(params), flat(latest))

  asked = []  # the NLL bound reads the same field

  def load_ema_params(config, workdir, data_shape, step=None):
    asked.append(step)
    raise checkpoints.CheckpointError("stop here")

  monkeypatch.setattr(trained_model, "load_ema_params", load_ema_params)
  with pytest.raises(checkpoints.CheckpointError, match="stop here"):
    nll_rounds.evaluate(with_eval(config, checkpoint_step=2, num_examples=4, batch_size=4), str(workdir))
  assert asked == [2]


def test_an_absent_chosen_step_lists_the_steps_there(trained):
  workdir, config = trained
  with pytest.raises(checkpoints.CheckpointError, match=r"no checkpoint of step 3 in .*checkpoints; the steps "
                     r"there: 2, 4\."):
    image_quality.evaluate_quality(with_eval(config, checkpoint_step=3), str(workdir))


# Kinds that reach the EMA parameters: the evaluation reads them alone, and flipped bytes in the largest data
# file land in other arrays (tests/test_fault_tolerance.py covers every kind on a whole-state read).
@pytest.mark.parametrize("kind", ["array metadata garbage", "checksum record truncated"])
def test_a_damaged_chosen_step_is_an_error_not_a_fallback(trained, tmp_path, kind):
  workdir, config = trained
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("eval"))
  damage.kinds()[kind](copy / "checkpoints" / "2")
  with pytest.raises(checkpoints.CheckpointError) as info:
    image_quality.evaluate_quality(with_eval(config, checkpoint_step=2), str(copy))
  message = str(info.value)
  assert "checkpoint of step 2" in message and "cannot be used" in message
  assert "no other step is read in its place" in message and "left where it is" in message
  assert sorted(os.listdir(copy / "checkpoints")) == ["2", "4"]  # not moved aside
  assert not (copy / checkpoints.DAMAGED_DIR).exists() and not (copy / "eval").exists()  # nothing evaluated


# ----------------------------------------------------------------------------------------------------------
# Quality versus NFE.


def test_a_sampler_sweep_writes_a_report_per_entry_and_a_table(trained, monkeypatch):
  workdir, config = trained
  calls = {"reference_statistics": 0, "load_network": 0, "load_ema_params": 0}
  for module, name in ((image_features, "reference_statistics"), (image_features, "load_network"),
                       (trained_model, "load_ema_params")):
    original = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *args, name=name, original=original:
                        calls.__setitem__(name, calls[name] + 1) or original(*args))
  method, grid = config.sampling.method, config.sampling.grid
  sweep = (f"{method}:{grid}:1", f"{method}:{grid}:2")
  path = image_quality.evaluate_quality(with_eval(config, sampler_sweep=sweep), str(workdir))
  assert calls == {"reference_statistics": 1, "load_network": 1, "load_ema_params": 1}  # loaded once each
  assert re.fullmatch(r"quality_vs_nfe_ckpt4_digits-classifier-v1_[0-9a-f]{8}\.json", os.path.basename(path))
  with open(path) as file:
    table = json.load(file)
  assert quality_files.table_stem(table["hashed_settings"]) + ".json" == os.path.basename(path)
  assert table["hashed_settings"]["sampler_sweep"] == list(sweep)
  rows = table["rows"]
  assert [(row["method"], row["grid"], row["num_steps"], row["nfe"]) for row in rows] == [
      (method, grid, 1, 1), (method, grid, 2, 2)]
  assert table["checkpoint_step"] == 4 and all(np.isfinite(row["fd_digits_mean"]) for row in rows)
  for row, num_steps in zip(rows, (1, 2)):
    with open(workdir / "eval" / row["report"]) as file:
      report = json.load(file)
    assert report["sampling"]["num_steps"] == num_steps and report["summary"] == {
        name: value for name, value in row.items() if name.endswith(("_mean", "_min"))}
    assert quality_files.report_stem(report["hashed_settings"]) + ".json" == row["report"]  # named by its record
    assert os.path.isdir(workdir / "eval" / report["run"])
  assert rows[0]["fd_digits_mean"] != rows[1]["fd_digits_mean"]
  assert rows[0]["report"] != rows[1]["report"]
  lines = eval_job.summary([path]).splitlines()  # what --mode=eval prints: the table, its baselines once
  assert lines[-1] == path and sum(line.startswith(("held-out digits:", "noise:")) for line in lines) == 2
  report_lines = eval_job.summary([str(workdir / "eval" / rows[0]["report"])]).splitlines()
  assert re.fullmatch(r"fd_digits [0-9.]+ \(held-out digits [0-9.]+, noise [0-9.]+\)", report_lines[1])


def test_a_bad_sweep_entry_fails_before_anything_is_loaded(trained, monkeypatch):
  workdir, config = trained
  monkeypatch.setattr(image_features, "load_network",
                      lambda *args: pytest.fail("loaded before the sweep was checked"))
  bad = with_eval(config, sampler_sweep=("strang:edm:20", "strang:cosine:20"))
  with pytest.raises(ValueError, match=r"eval.sampler_sweep\[1\] = 'strang:cosine:20' is not allowed \(unknown "
                     r"grid 'cosine'\).*\('uniform', 'quadratic', 'edm'\)"):
    image_quality.evaluate_quality(bad, str(workdir))


def test_feature_stream_computes_full_batches_whatever_the_sampling_batches():
  calls = []

  def features(images):  # a stand-in network: the image's mean pixel and its first pixel, per image
    calls.append(len(images))
    flat = images.reshape(len(images), -1).astype(np.float32)
    return np.stack([flat.mean(axis=1), flat[:, 0]], axis=1), flat[:, :3]

  network = image_features.Network("stand-in", "0" * 64, "tf1", features, "")
  images = np.random.default_rng(0).integers(0, 256, (23, 4, 4, 1), dtype=np.uint8)
  stream = image_features.FeatureStream(network, batch_size=5)
  for start, stop in ((0, 3), (3, 10), (10, 11), (11, 23)):  # sampling batches of 3, 7, 1 and 12
    stream.add(images[start:stop])
  got_features, got_logits = stream.finish()
  want_features, want_logits = features(images)
  np.testing.assert_array_equal(got_features, want_features)
  np.testing.assert_array_equal(got_logits, want_logits)
  assert calls == [5, 5, 5, 5, 5, 23]  # four full batches and the remainder of 3 padded to 5; then the check

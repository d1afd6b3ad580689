"""Evaluation reports are named from every setting that can change them and record those settings, so a run
with other settings writes a new report beside the earlier ones; and a report is written whole or not at all
(hold_jax/evaluation/nll_rounds.py, hold_jax/evaluation/image_quality.py, hold_jax/workdir/workdir_view.py)."""
from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from etils import epath

from hold_jax import report_files
from hold_jax.configs import digits
from hold_jax.configs import toy2d
from hold_jax.evaluation import image_features
from hold_jax.evaluation import image_quality
from hold_jax.evaluation import nll_rounds
from hold_jax.evaluation import quality_files
from hold_jax.workdir import trained_model
from hold_jax.workdir import workdir_view

HASH = r"[0-9a-f]{8}"


def changed(config, **fields):
  """A copy of `config` with fields changed: 'seed', or '<group>.<field>' (e.g. 'eval.num_probes')."""
  config = ml_collections.ConfigDict(config.to_dict())
  for name, value in fields.items():
    if name == "seed":
      config.seed = value
    else:
      group, field = name.split(".")
      config[group][field] = value
  return config


# ----------------------------------------------------------------------------------------------------------
# The NLL bound's report.


def nll_stem(config, step: int = 4) -> str:
  data_shape = (8, 8, 1) if config.data.dataset == "digits" else (2,)
  return nll_rounds.report_stem(nll_rounds.report_settings(config, step, data_shape))


# Every eval field the bound reads, with a value other than the default.
NLL_FIELDS = {"eval.num_examples": 100, "eval.seed": 1, "eval.num_probes": 2, "eval.aux_distribution": "initial",
              "eval.solver": "dopri5", "eval.ode_rtol": 1e-3, "eval.ode_atol": 1e-4, "eval.max_steps": 100,
              "eval.divergence": "hutchinson"}


@pytest.mark.parametrize("field", sorted(NLL_FIELDS))
def test_an_nll_setting_that_changes_the_bound_changes_the_report_name(field):
  config = toy2d.get_config("local")
  assert nll_stem(changed(config, **{field: NLL_FIELDS[field]})) != nll_stem(config)


def test_the_nll_report_name_is_readable_and_follows_the_step_and_the_split():
  config = toy2d.get_config("local")
  assert re.fullmatch(rf"nll_generated_kernel_exact_ckpt4_{HASH}", nll_stem(config))
  assert nll_stem(config, 6).startswith("nll_generated_kernel_exact_ckpt6_")
  images = digits.get_config("local")
  stem = nll_stem(images)
  assert re.fullmatch(rf"nll_{images.eval.split}_kernel_hutchinson_ckpt4_{HASH}", stem)
  assert nll_stem(changed(images, **{"eval.split": "other"})) != stem


@pytest.mark.parametrize("fields", [
    {}, {"eval.batch_size": 7}, {"eval.round_size": 3}, {"eval.checkpoint_step": 4},
    {"eval.num_samples": 10}, {"eval.metrics": ("nll", "fid")}, {"sampling.num_steps": 3}, {"seed": 5}])
def test_what_cannot_change_the_bound_leaves_the_nll_report_name(fields):
  """Batches and rounds cut the examples, whose bounds depend on (eval.seed, k) alone; the chosen step as
  written resolves to the step already named; quality and sampling fields and config.seed are not read."""
  config = toy2d.get_config("local")
  assert nll_stem(changed(config, **fields)) == nll_stem(toy2d.get_config("local"))


def test_an_nll_report_and_its_rounds_folder_share_their_readable_part():
  config = toy2d.get_config("local")
  settings = nll_rounds.report_settings(config, 4, (2,))
  label = nll_rounds.report_label(settings)
  assert nll_rounds.report_stem(settings).startswith(label + "_")
  folder = nll_rounds.rounds_folder(config, 4, label).name
  assert folder.startswith(label + "_rounds_")
  other_rounds = changed(config, **{"eval.round_size": 3})  # other round files, the same report
  assert nll_rounds.rounds_folder(other_rounds, 4, label).name != folder
  assert nll_stem(other_rounds) == nll_rounds.report_stem(settings)


# ----------------------------------------------------------------------------------------------------------
# The sample-quality report and the quality-versus-NFE table.


def stand_in_network(weights_sha256: str = "ab" * 32) -> image_features.Network:
  return image_features.Network("digits-classifier-v1", weights_sha256, "tf1", None, "_digits")


def quality_stem(config, step: int = 4, network=None) -> str:
  return quality_files.report_stem(quality_files.report_settings(config, network or stand_in_network(), step))


# Every setting a quality report depends on, with a value other than digits:local's.
QUALITY_FIELDS = {"sampling.stochasticity": 0.5, "sampling.num_steps": 7, "sampling.grid": "edm",
                  "sampling.clip_x0": "none", "seed": 3, "eval.num_samples": 99, "eval.num_repeats": 2,
                  "eval.reference_split": "heldout", "eval.reference_stats": "/stats/ref.npz",
                  "eval.kid_subset_size": 50, "eval.is_splits": 7, "eval.metrics": ("fid",)}


@pytest.mark.parametrize("field", sorted(QUALITY_FIELDS))
def test_a_setting_that_changes_the_quality_report_changes_its_name(field):
  config = digits.get_config("local")
  assert quality_stem(changed(config, **{field: QUALITY_FIELDS[field]})) != quality_stem(config)


def test_the_quality_report_name_follows_the_step_and_the_network():
  config = digits.get_config("local")
  stem = quality_stem(config)
  sampler = config.sampling
  assert re.fullmatch(rf"quality_{sampler.method}_{sampler.grid}_{sampler.num_steps}steps_ckpt4_"
                      rf"digits-classifier-v1_{HASH}", stem)
  assert quality_stem(config, 6) != stem and "_ckpt6_" in quality_stem(config, 6)
  assert quality_stem(config, network=stand_in_network("cd" * 32)) != stem  # other weights


@pytest.mark.parametrize("fields", [
    {}, {"sampling.batch_size": 7}, {"sampling.num_samples": 5}, {"eval.feature_batch_size": 3},
    {"eval.round_size": 3}, {"eval.stats_cache_dir": "/elsewhere"}, {"eval.inception_weights": "/w.pth"},
    {"eval.checkpoint_step": 4}, {"eval.num_examples": 10}, {"eval.metrics": ("kid", "nll", "is", "fid")}])
def test_what_cannot_change_the_numbers_leaves_the_quality_report_name(fields):
  """Sample k of repeat r comes from fold_in(PRNGKey(seed + r), k) whatever batch or round holds it; features do
  not depend on their batch; the weights are named by their hash; metrics are named in one order."""
  config = digits.get_config("local")
  assert quality_stem(changed(config, **fields)) == quality_stem(digits.get_config("local"))


def test_quality_rounds_are_found_again_by_a_run_with_more_samples_or_another_reference():
  config = digits.get_config("local")
  network = stand_in_network()
  folder = quality_files.run_name(config, network, 4)
  for fields in ({"eval.num_samples": 99}, {"eval.num_repeats": 3}, {"eval.reference_split": "heldout"}):
    assert quality_files.run_name(changed(config, **fields), network, 4) == folder  # its rounds are resumed
    assert quality_stem(changed(config, **fields), network=network) != quality_stem(config, network=network)
  readable = folder[:folder.rindex("_")]
  assert quality_stem(config, network=network).startswith(readable + "_")


def evaluated(tmp_path):
  """tmp_path as a workdir whose eval/ folder exists, as the evaluation leaves it before writing a table."""
  (tmp_path / "eval").mkdir(exist_ok=True)
  return str(tmp_path)


def stand_in_loaded(step: int = 4) -> image_quality.Loaded:
  return image_quality.Loaded((8, 8, 1), stand_in_network(), None, step, {"key": "digits-reference"}, None)


ROWS = [{"method": "lie_trotter", "grid": "quadratic", "num_steps": 2, "nfe": 2, "fd_digits_mean": 1.5,
         "report": "quality_lie_trotter_quadratic_2steps.json"}]


def sweep_config(**fields):
  config = changed(digits.get_config("local"), **{"eval.sampler_sweep": ("lie_trotter:quadratic:2",
                                                                         "strang:edm:4")})
  return changed(config, **fields)


@pytest.mark.parametrize("fields", [
    {"eval.sampler_sweep": ("strang:edm:4",)}, {"eval.sampler_sweep": ("strang:edm:4", "lie_trotter:quadratic:2")},
    {"seed": 3}, {"eval.num_samples": 99}, {"sampling.stochasticity": 0.5}, {"eval.num_repeats": 2}])
def test_a_sweep_with_other_settings_keeps_the_earlier_table(tmp_path, fields):
  first = image_quality.write_table(sweep_config(), evaluated(tmp_path), stand_in_loaded(), ROWS, 1.0)
  kept = epath.Path(first).read_text()
  second = image_quality.write_table(sweep_config(**fields), evaluated(tmp_path), stand_in_loaded(), ROWS, 2.0)
  assert second != first and epath.Path(first).read_text() == kept
  assert re.fullmatch(rf"quality_vs_nfe_ckpt4_digits-classifier-v1_{HASH}\.json", os.path.basename(second))
  table = json.loads(epath.Path(second).read_text())
  assert quality_files.table_stem(table["hashed_settings"]) + ".json" == os.path.basename(second)  # named by its record
  assert table["seed"] == sweep_config(**fields).seed and table["checkpoint_step"] == 4
  assert tuple(table["eval"]["sampler_sweep"]) == tuple(sweep_config(**fields).eval.sampler_sweep)


def test_a_sweep_that_differs_in_batch_sizes_rewrites_the_same_table(tmp_path):
  first = image_quality.write_table(sweep_config(), evaluated(tmp_path), stand_in_loaded(), ROWS, 1.0)
  again = image_quality.write_table(sweep_config(**{"sampling.batch_size": 8, "eval.feature_batch_size": 3}),
                              evaluated(tmp_path), stand_in_loaded(), ROWS, 1.0)
  stem = os.path.basename(first)[:-len(".json")]
  assert again == first and sorted(os.listdir(tmp_path / "eval")) == [f"{stem}.json", f"{stem}.png"]  # and its plot
  sweep = changed(sweep_config(), **{"sampling.method": "gddim", "sampling.num_steps": 9})  # replaced by the entries
  assert image_quality.write_table(sweep, evaluated(tmp_path), stand_in_loaded(), ROWS, 1.0) == first


def test_quality_tables_finds_every_table_newest_first(tmp_path):
  older = image_quality.write_table(sweep_config(), evaluated(tmp_path), stand_in_loaded(), ROWS, 1.0)
  newer = image_quality.write_table(sweep_config(seed=3), evaluated(tmp_path), stand_in_loaded(), ROWS, 1.0)
  os.utime(older, (1_000_000, 1_000_000))
  (tmp_path / "eval" / f".{os.path.basename(newer)}.tmp-0123").write_text("{")  # a table being written
  assert [str(path) for path in workdir_view.quality_tables(tmp_path)] == [newer, older]


# ----------------------------------------------------------------------------------------------------------
# Writing whole reports.


@pytest.fixture
def interrupted_writes(monkeypatch):
  """Makes every write of a path's text or bytes stop half-way, as a killed job would."""
  def half(original):
    def write(self, data, *args, **kwargs):
      original(self, data[:len(data) // 2], *args, **kwargs)
      raise KeyboardInterrupt("killed while writing")
    return write
  monkeypatch.setattr(epath.Path, "write_text", half(epath.Path.write_text))
  monkeypatch.setattr(epath.Path, "write_bytes", half(epath.Path.write_bytes))


def test_an_interrupted_report_leaves_the_earlier_one_whole(tmp_path, interrupted_writes):
  path = tmp_path / "eval" / "report.json"
  path.parent.mkdir()
  path.write_text(json.dumps({"nll_bound_nats": 1.0}))  # an earlier, whole report (os's writer, not epath's)
  with pytest.raises(KeyboardInterrupt):
    report_files.write_json_atomic(path, {"nll_bound_nats": 2.0, "seed": np.int64(0)})
  assert json.loads(path.read_text()) == {"nll_bound_nats": 1.0}
  assert os.listdir(path.parent) == ["report.json"]  # the half-written temporary file was removed


def test_an_interrupted_table_never_stands_under_its_name(tmp_path, interrupted_writes):
  directory = tmp_path / "eval"
  directory.mkdir()
  with pytest.raises(KeyboardInterrupt):
    image_quality.write_table(sweep_config(), evaluated(tmp_path), stand_in_loaded(), ROWS, 1.0)
  assert os.listdir(directory) == []
  assert workdir_view.quality_tables(tmp_path) == []


def test_a_report_that_cannot_be_serialised_writes_nothing(tmp_path):
  path = tmp_path / "report.json"
  with pytest.raises(TypeError, match="object is not JSON serialisable"):
    report_files.write_json_atomic(path, {"value": object()})
  assert os.listdir(tmp_path) == []
  report_files.write_json_atomic(path, {"steps": (1, 2), "nfe": np.float32(3.5)})
  assert json.loads(path.read_text()) == {"steps": [1, 2], "nfe": 3.5}


# ----------------------------------------------------------------------------------------------------------
# One NLL run end to end, with a stand-in bound and parameters (the real bound is tests/test_nll_rounds.py's).


def read_json(path) -> dict:
  return json.loads(epath.Path(path).read_text())


def stand_in_bound(config, data_shape, settings):
  """A bound that depends on the example and its index, as the real one does through (eval.seed, k)."""
  @jax.jit
  def bound(params, x, indices):
    return jnp.sum(x ** 2, axis=1) + indices, jnp.full(indices.shape, 7), jnp.ones(indices.shape, bool)
  return bound


def test_an_nll_run_with_other_settings_keeps_the_earlier_report(tmp_path, monkeypatch):
  monkeypatch.setattr(nll_rounds, "make_batch_bound", stand_in_bound)
  monkeypatch.setattr(trained_model, "load_ema_params", lambda config, workdir, data_shape, step=None: ({}, 4))
  config = changed(toy2d.get_config("local"), **{"eval.num_examples": 6, "eval.round_size": 4,
                                                  "eval.batch_size": 2})
  first = nll_rounds.evaluate(config, str(tmp_path))
  report = read_json(first)
  other = nll_rounds.evaluate(changed(config, **{"eval.seed": 1}), str(tmp_path))  # other points
  assert other != first and read_json(first) == report
  assert read_json(other)["nll_bound_nats"] != report["nll_bound_nats"]
  assert re.fullmatch(rf"nll_generated_kernel_exact_ckpt4_{HASH}\.json", os.path.basename(first))
  assert nll_rounds.report_stem(report["hashed_settings"]) + ".json" == os.path.basename(first)  # named by its record
  assert report["settings"]["seed"] == 0 and report["checkpoint_step"] == 4
  assert report["rounds"].startswith(nll_rounds.report_label(report["hashed_settings"]) + "_rounds_")

  rebatched = changed(config, **{"eval.batch_size": 1, "eval.round_size": 6})
  assert nll_rounds.evaluate(rebatched, str(tmp_path)) == first  # the same numbers rewrite the same report
  assert read_json(first)["nll_bound_nats"] == pytest.approx(report["nll_bound_nats"])
  reports = sorted(name for name in os.listdir(tmp_path / "eval") if name.endswith(".json"))
  assert reports == sorted([os.path.basename(first), os.path.basename(other)])

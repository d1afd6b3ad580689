"""--mode=eval's results as a reader sees them (hold_jax/evaluation/report_text.py and each report kind's
format_report), and the sliced Wasserstein-1 metric of point sets with its baselines
(hold_jax/evaluation/point_quality.py)."""
import json
import os
import re

import numpy as np
import pytest

from hold_jax.cli import config_checks
from hold_jax.configs import digits
from hold_jax.configs import toy2d
from hold_jax.evaluation import eval_job
from hold_jax.evaluation import image_quality
from hold_jax.evaluation import nll_rounds
from hold_jax.evaluation import point_quality
from hold_jax.evaluation import report_text
from hold_jax.training import train
from hold_jax.workdir import workdir_view

# ----------------------------------------------------------------------------------------------------------
# The console's view of small report dicts.

DIGITS_BASELINES = {"heldout_digits": {"num_samples": 297, "nfe": 0, "fd_digits": 6.1392, "kid_digits": 0.010417},
                    "uniform_noise": {"num_samples": 297, "nfe": 0, "fd_digits": 871.27, "kid_digits": 2.9512}}


def digits_report(num_repeats=1):
  repeats = [{"num_samples": 297, "nfe": 50, "fd_digits": 1.3145 + repeat, "kid_digits": 0.0021234}
             for repeat in range(num_repeats)]
  fd = [repeat["fd_digits"] for repeat in repeats]
  return {"repeats": repeats, "checkpoint_step": 4, "baselines": DIGITS_BASELINES,
          "summary": {"fd_digits_mean": float(np.mean(fd)), "fd_digits_min": min(fd),
                      "kid_digits_mean": 0.0021234, "kid_digits_min": 0.0021234},
          "sampling": {"method": "lie_trotter", "grid": "quadratic", "num_steps": 50},
          "feature_network": {"name": "digits-classifier-v1"}}


def test_numbers_are_rounded_to_three_significant_digits_and_keep_their_integer_digits():
  assert [report_text.significant(value) for value in (1.3145, 871.27, 0.0123456, -2.7719, 12345.6, 1.0, 50)] == [
      "1.31", "871", "0.0123", "-2.77", "12346", "1", "50"]
  assert report_text.significant(-2.77194, 4) == "-2.772" and report_text.significant(float("nan")) == "nan"


def test_a_quality_report_says_each_metric_beside_its_baselines_then_its_path():
  text = image_quality.format_report(digits_report(), "runs/digits/eval/quality_x.json")
  lines = text.splitlines()
  assert "fd_digits 1.31 (held-out digits 6.14, noise 871)" in lines
  assert "kid_digits 0.00212 (held-out digits 0.0104, noise 2.95)" in lines
  assert lines[-1] == "runs/digits/eval/quality_x.json" and "{" not in text  # no raw dict
  several = image_quality.format_report(digits_report(num_repeats=3), "r.json").splitlines()
  assert "fd_digits 2.31 mean, 1.31 min of 3 repeats (held-out digits 6.14, noise 871)" in several


def test_the_nll_bound_is_quoted_in_nats_per_point_for_points_and_bits_per_dim_for_images():
  points = {"nll_bound_nats": -2.77194, "nll_bound_nats_stderr": 0.04312, "nll_bound_nats_per_dim": -1.38597,
            "num_examples": 1000, "nfe_mean": 371.6, "checkpoint_step": 20}
  assert nll_rounds.format_report(points, "p.json").splitlines() == [
      "nll_bound -2.772 +- 0.043 nats per point (1000 points, mean NFE 372, checkpoint step 20)", "p.json"]
  images = dict(points, nll_bound_nats=4567.8, nll_bound_nats_per_dim=2.2304, bits_per_dim=3.21768,
                bits_per_dim_stderr=0.01234, num_levels=256)
  first = nll_rounds.format_report(images, "i.json").splitlines()[0]
  assert first.startswith("nll_bound 3.218 +- 0.012 bits/dim (1000 images") and "nats" not in first
  assert nll_rounds.in_reported_unit(-2.5, 2, None) == (-2.5, "nats per point")
  assert nll_rounds.in_reported_unit(0.0, 4, 256) == (7.0, "bits/dim")  # log2(256 / 2) for [-1, 1] scaling


def test_a_sweep_table_shows_the_baselines_once_under_the_metric_means():
  rows = [{"method": "lie_trotter", "grid": "quadratic", "num_steps": n, "nfe": n, "fd_digits_mean": 10.0 / n,
           "fd_digits_min": 9.0 / n, "report": "r.json"} for n in (10, 20)]
  lines = image_quality.format_table(rows, DIGITS_BASELINES).splitlines()
  assert len(lines) == 5 and lines[0].split() == ["method", "grid", "num_steps", "nfe", "fd_digits_mean",
                                                  "fd_digits_min"]
  assert lines[3].split() == ["held-out", "digits:", "6.139"] and lines[4].split() == ["noise:", "871.3"]
  column = lines[0].index("fd_digits_mean")
  assert lines[3][column:].split()[0] == "6.139" and lines[1][column:].split()[0] == "1"  # aligned
  assert len(image_quality.format_table(rows).splitlines()) == 3  # no baselines, no rows for them


def test_evaluation_summary_reads_each_report_and_formats_it_by_its_kind(tmp_path):
  nll = {"nll_bound_nats": -2.5, "nll_bound_nats_stderr": 0.1, "num_examples": 10, "nfe_mean": 30.0,
         "checkpoint_step": 4}
  points = {"kind": point_quality.KIND, "num_samples": 64, "checkpoint_step": 4,
            "repeats": [{"nfe": 2}], "sampling": {"method": "strang", "grid": "edm", "num_steps": 2},
            "summary": {"sw1_mean": 0.12345, "sw1_min": 0.12345},
            "baselines": {"heldout_points": {"sw1": 0.0261}, "gaussian_noise": {"sw1": 0.2712}}}
  paths = []
  for name, report in (("nll.json", nll), ("points.json", points), ("quality.json", digits_report())):
    (tmp_path / name).write_text(json.dumps(report))
    paths.append(str(tmp_path / name))
  lines = eval_job.summary(paths + [str(tmp_path / "elsewhere.json")]).splitlines()
  assert lines[0].startswith("nll_bound -2.5 +- 0.1 nats per point") and lines[1] == paths[0]
  assert "sw1 0.123 (held-out points 0.0261, noise 0.271)" in lines and paths[1] in lines
  assert "fd_digits 1.31 (held-out digits 6.14, noise 871)" in lines
  assert lines[-1] == str(tmp_path / "elsewhere.json")  # another host's report: its path alone


# ----------------------------------------------------------------------------------------------------------
# Held-out points and baselines.


def test_two_held_out_draws_are_far_closer_than_noise_is_to_the_data():
  heldout = point_quality.heldout_points("multimodal_swiss_roll", 2000, seed=0)
  assert heldout.points.shape == heldout.second.shape == (2000, 2) and heldout.points.dtype == np.float32
  assert not np.array_equal(heldout.points, heldout.second)
  baselines = point_quality.data_baselines(heldout, "multimodal_swiss_roll", seed=0)
  assert baselines["heldout_points"]["sw1"] < 0.1 * baselines["gaussian_noise"]["sw1"]
  assert baselines["heldout_points"]["within_0_01"] > 0.99 > 0.1 > baselines["gaussian_noise"]["within_0_01"]
  again = point_quality.heldout_points("multimodal_swiss_roll", 2000, seed=0)
  np.testing.assert_array_equal(again.points, heldout.points)  # a pure function of (data set, count, eval.seed)
  assert not np.array_equal(point_quality.heldout_points("multimodal_swiss_roll", 2000, seed=1).points,
                            heldout.points)


def test_a_point_cloud_gives_two_disjoint_random_subsets_of_at_most_half_of_it(tmp_path):
  cloud = np.random.default_rng(3).standard_normal((101, 3)).astype(np.float32)
  np.save(tmp_path / "cloud.npy", cloud)
  heldout = point_quality.heldout_points(f"npy:{tmp_path / 'cloud.npy'}", 80, seed=0)
  assert heldout.points.shape == heldout.second.shape == (50, 3) and "cut to half the cloud" in heldout.description
  rows = lambda points: {tuple(row) for row in points}
  assert not rows(heldout.points) & rows(heldout.second) and rows(heldout.points) <= rows(cloud)
  assert "within_0_01" not in point_quality.data_baselines(heldout, "npy:x", 0)["heldout_points"]


def test_sw1_on_images_or_an_unknown_metric_is_one_line_naming_eval_metrics():
  config = digits.get_config("local")
  config.eval.metrics = ("fd", "sw1")
  with pytest.raises(ValueError, match=r"^eval.metrics = \('fd', 'sw1'\) is not allowed: .*'sw1'") as info:
    config_checks.check(config)
  config.eval.metrics = ("nll", "sw1")
  with pytest.raises(ValueError, match=r"^eval.metrics = \('nll', 'sw1'\) is not allowed: .*data.dataset = "
                     r"'digits'.*not images") as info:
    config_checks.check(config)
  assert "\n" not in str(info.value)
  points = toy2d.get_config("local")
  assert "sw1" in points.eval.metrics  # the toy's --mode=eval reports it by default
  config_checks.check(points)
  points.eval.metrics = ("fid",)
  with pytest.raises(ValueError, match=r"^eval.metrics = \('fid',\) is not allowed: .*'sw1'.*need images"):
    config_checks.check(points)


# ----------------------------------------------------------------------------------------------------------
# A tiny toy run.


def toy_config():
  config = toy2d.get_config("local")
  config.training.num_steps = config.training.checkpoint_every = 4
  config.checkpoint.asynchronous = False
  config.sampling.num_steps = 2
  config.eval.metrics = ("sw1",)
  config.eval.num_samples = 64
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("toy")
  config = toy_config()
  train.train(config, str(workdir))
  return workdir, config


def test_an_sw1_report_holds_the_metric_its_baselines_and_is_named_by_its_settings(trained):
  workdir, config = trained
  config = config.copy_and_resolve_references()
  config.eval.num_repeats = 2
  paths = eval_job.run(config, str(workdir))
  assert len(paths) == 1 and os.path.dirname(paths[0]) == str(workdir / "eval")
  assert re.fullmatch(r"quality_lie_trotter_quadratic_2steps_ckpt4_points_[0-9a-f]{8}\.json",
                      os.path.basename(paths[0]))
  report = json.load(open(paths[0]))
  assert point_quality.report_stem(report["hashed_settings"]) + ".json" == os.path.basename(paths[0])
  assert [repeat["seed"] for repeat in report["repeats"]] == [0, 1] and report["num_samples"] == 64
  assert all(repeat["nfe"] == 2 and np.isfinite(repeat["sw1"]) for repeat in report["repeats"])
  assert report["summary"]["sw1_min"] <= report["summary"]["sw1_mean"]
  assert report["repeats"][0]["sw1"] != report["repeats"][1]["sw1"]  # two seeds, two sample sets
  assert set(report["baselines"]) == {"heldout_points", "gaussian_noise"}
  assert "within_0_01_mean" in report["summary"] and "within_0_01" in report["baselines"]["heldout_points"]
  text = eval_job.summary(paths).splitlines()
  assert text[-1] == paths[0] and re.fullmatch(r"sw1 [0-9.]+ mean, [0-9.]+ min of 2 repeats \(held-out points "
                                               r"[0-9.]+, noise [0-9.]+\)", text[1])
  stem = lambda config: point_quality.report_stem(point_quality.report_settings(config, 4))
  assert stem(config) + ".json" == os.path.basename(paths[0])
  for field, value in (("seed", 1), ("num_samples", 65), ("num_repeats", 1)):  # other numbers, another report
    other = config.copy_and_resolve_references()
    other.eval[field] = value
    assert stem(other) != stem(config), field
  other = config.copy_and_resolve_references()
  other.sampling.batch_size, other.eval.batch_size = 7, 3  # the same numbers, the same report
  assert stem(other) == stem(config)


def test_an_sw1_sweep_writes_a_table_that_workdir_view_finds_and_draws(trained):
  workdir, config = trained
  config = config.copy_and_resolve_references()
  config.eval.sampler_sweep = ("lie_trotter:quadratic:1", "lie_trotter:quadratic:3")
  path = eval_job.run(config, str(workdir))[0]
  assert re.fullmatch(r"quality_vs_nfe_ckpt4_points_[0-9a-f]{8}\.json", os.path.basename(path))
  table = workdir_view.load_table(path)
  assert [(row["method"], row["num_steps"], row["nfe"]) for row in table["rows"]] == [
      ("lie_trotter", 1, 1), ("lie_trotter", 3, 3)]
  assert workdir_view.table_metrics(table)[0] == "sw1_mean" and table["baselines"]["gaussian_noise"]["sw1"] > 0
  assert str(path) in [str(found) for found in workdir_view.quality_tables(workdir)]
  workdir_view.plot_quality_vs_nfe(table)
  assert os.path.isfile(path[:-len(".json")] + ".png")  # the plot beside the table
  for row in table["rows"]:
    assert os.path.isfile(workdir / "eval" / row["report"])
  lines = eval_job.summary([path]).splitlines()
  assert lines[-1] == path and sum(line.startswith(("held-out points:", "noise:")) for line in lines) == 2


def test_main_run_returns_the_results_not_the_report_paths(trained):
  from hold_jax import main  # pylint: disable=g-import-not-at-top  (imports tensorflow)
  workdir, config = trained
  text = main.run(config.copy_and_resolve_references(), str(workdir), "eval", {})
  lines = text.splitlines()
  assert lines[0].startswith("point quality: 64 samples") and lines[1].startswith("sw1 ")
  assert "(held-out points " in lines[1] and lines[-1].startswith(str(workdir / "eval" / "quality_"))

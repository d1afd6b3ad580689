"""`--mode=eval` with point-set metrics: the sliced Wasserstein-1 distance ('sw1') between samples of a model
of point data and held-out points of the same data set, beside the data set's own baselines.

What is measured. eval.num_samples samples are drawn with config.sampling from the EMA parameters of the newest
readable checkpoint, or of step eval.checkpoint_step, by the code --mode=sample uses (sample_job.make_drawer;
sample k of repeat r from fold_in(PRNGKey(seed + r), k), the image metrics' seeds), and compared with as many
held-out points: for a generated data set (input_pipeline.GENERATORS) fresh points from the numpy stream
[eval.seed, HELDOUT_STREAM, 0], apart from training's [seed, step, process] and the NLL bound's
[eval.seed, 'eval', k]; for a user's cloud ('npy:PATH') a random subset of the cloud (its permutation by
[eval.seed, HELDOUT_STREAM, 0]). The distance is hold_jax/evaluation/point_clouds.py's sliced_wasserstein over
NUM_DIRECTIONS random directions, the same ones for every comparison. On the multimodal swiss roll the report
adds 'within_0_01', the share of samples within 0.01 of the noiseless arms (their noise is 0.002).

Baselines. SW1 of a finite sample never reaches 0, so each report carries the data set's own floor and a
ceiling, both against the same held-out points: 'heldout_points', a second held-out draw of the same size (what a
perfect model reaches: an independent sample of the data's law; for a cloud, the next points of the same
permutation, disjoint from the first), and 'gaussian_noise', as many N(0, I) points of the data's dimension.
A cloud of M points therefore gives at most M // 2 points to each; eval.num_samples is cut to that (said in the
report's 'heldout' and in the log).

Why no rounds. Unlike FID's 50,000 images, point sets are drawn in seconds (10,000 swiss-roll samples: one batch)
and held in a few MB, so a killed job draws them again rather than resuming.

Reports. workdir/eval/quality_<sampler>_ckpt<step>_points_<hash>.json (`report_stem`), <hash>
report_files.canonical_hash of `report_settings`: the sampling fields but the batch size and
sampling.num_samples, the seed, the step, the data set, the metrics, eval.num_samples, num_repeats and seed, and
NUM_DIRECTIONS; written atomically by process 0 (report_files.write_json_atomic). With eval.sampler_sweep each
entry is one such report (hold_jax/evaluation/sampler_sweep.py), the parameters and held-out points loaded once, and
workdir/eval/quality_vs_nfe_ckpt<step>_points_<hash>.json (`table_stem`) holds one row per entry in the shape of
image_quality.py's tables (method, grid, num_steps, nfe, '<metric>_mean', '<metric>_min', report), with the
baselines, so workdir_view.quality_tables finds it and workdir_view.plot_quality_vs_nfe draws it; its plot is
written beside it (<table_stem>.png, workdir_view.write_quality_plot).
"""
from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Callable

import jax
import numpy as np
from absl import logging
from clu import metric_writers

from hold_jax import console
from hold_jax import field_checks
from hold_jax import report_files
from hold_jax.data import input_pipeline
from hold_jax.evaluation import eval_settings
from hold_jax.evaluation import image_quality
from hold_jax.evaluation import point_clouds
from hold_jax.evaluation import quality_files
from hold_jax.evaluation import report_text
from hold_jax.evaluation import sampler_sweep
from hold_jax.sampling import sample_job
from hold_jax.sampling import samplers
from hold_jax.workdir import checkpoints
from hold_jax.workdir import run_record
from hold_jax.workdir import trained_model

POINT_METRICS = eval_settings.POINT_METRICS  # ('sw1',): what eval.metrics may name for point data
# The numpy stream of the held-out points (SeedSequence words [eval.seed, HELDOUT_STREAM, draw]; draw 0 the
# compared points, 1 the second held-out draw, 2 the noise), apart from nll_rounds.GENERATED_POINT_STREAM.
HELDOUT_STREAM = 0x68656C64  # 'held'
NUM_DIRECTIONS = 256  # benchmarks/toy2d_quality.py's; fixed directions (seed 0) for every comparison
SWISS_ROLL_DATASETS = ("multimodal_swiss_roll",)  # those whose report adds 'within_0_01'
WITHIN = 0.01
KIND, TABLE_KIND = "point_quality", "point_quality_vs_nfe"  # a report's and a table's 'kind' (eval_job.py)


def point_shape(metrics, data_config) -> tuple[int]:
  """(D,): the shape of one point of `config.data`; a ValueError naming eval.metrics when the data are images."""
  data_shape = input_pipeline.data_shape(data_config)
  field_checks.require(len(data_shape) == 1, "eval.metrics", tuple(metrics),
                       f"names from {('nll',) + eval_settings.IMAGE_METRICS} for data.dataset = "
                       f"{data_config.dataset!r}: "
                       f"{POINT_METRICS} compare point sets (N, D), not images")
  return tuple(data_shape)


# ----------------------------------------------------------------------------------------------------------
# Held-out points and the metrics.


@dataclasses.dataclass(frozen=True)
class HeldOut:
  """Held-out points of a data set: `points` (n, D) float32, compared with n samples; `second` (n, D), another
  draw of the same size for the baseline; `description`, what they are, for the report."""

  points: np.ndarray
  second: np.ndarray
  description: str


def heldout_points(dataset: str, num_points: int, seed: int) -> HeldOut:
  """Two independent held-out draws of num_points points of `dataset` (module docstring): fresh points of a
  generated set, or two disjoint random subsets of a user's cloud of M points, num_points cut to M // 2."""
  rng = lambda draw: np.random.default_rng([seed, HELDOUT_STREAM, draw])
  if dataset.startswith("npy:"):
    cloud = input_pipeline.load_point_cloud(dataset[len("npy:"):])
    count = min(num_points, len(cloud) // 2)
    order = rng(0).permutation(len(cloud))
    return HeldOut(cloud[order[:count]], cloud[order[count:2 * count]],
                   f"{dataset}: {count} random points of its {len(cloud)}"
                   + (f" (eval.num_samples = {num_points} cut to half the cloud)" if count < num_points else ""))
  generate = input_pipeline.GENERATORS[dataset]
  first, second = (np.asarray(generate(rng(draw), num_points), np.float32) for draw in (0, 1))
  return HeldOut(first, second, f"{dataset}: {num_points} fresh points, eval.seed = {seed}")


def measure(points: np.ndarray, heldout: np.ndarray, dataset: str) -> dict[str, float]:
  """The metrics of `points` (n, D) against `heldout` (n, D): 'sw1', and 'within_0_01' on the swiss roll."""
  results = {"sw1": point_clouds.sliced_wasserstein(points, heldout, NUM_DIRECTIONS)}
  if dataset in SWISS_ROLL_DATASETS:
    results["within_0_01"] = float(np.mean(point_clouds.spiral_distance(points) < WITHIN))
  return results


def data_baselines(heldout: HeldOut, dataset: str, seed: int) -> dict[str, dict[str, float]]:
  """The metrics of the second held-out draw ('heldout_points', the floor a perfect model reaches at this
  size) and of N(0, I) points of the data's dimension ('gaussian_noise'), each against heldout.points."""
  noise = np.random.default_rng([seed, HELDOUT_STREAM, 2]).standard_normal(heldout.points.shape)
  return {"heldout_points": measure(heldout.second, heldout.points, dataset),
          "gaussian_noise": measure(noise.astype(np.float32), heldout.points, dataset)}


# ----------------------------------------------------------------------------------------------------------
# Names.


def report_settings(config, step: int) -> dict[str, Any]:
  """What the point-quality report of `config` from checkpoint `step` is a function of within a workdir, as
  JSON values; its report_files.canonical_hash is the name's (module docstring)."""
  sampling_settings = json.loads(config.sampling.to_json_best_effort())
  return {"sampling": {field: value for field, value in sampling_settings.items()
                       if field not in quality_files.UNHASHED_SAMPLING_FIELDS},
          "seed": int(config.seed), "checkpoint_step": int(step), "dataset": config.data.dataset,
          "metrics": [name for name in POINT_METRICS if name in config.eval.metrics],
          "eval": {field: config.eval[field] for field in ("num_samples", "num_repeats", "seed")},
          "num_directions": NUM_DIRECTIONS, **run_record.sampling_process(config)}


def report_stem(settings: dict[str, Any]) -> str:
  """quality_<sampler_part>_ckpt<step>_points_<canonical_hash> of `report_settings`: a report's file name less
  .json."""
  return (f"quality_{quality_files.sampler_part(settings['sampling'])}_ckpt{settings['checkpoint_step']}_points_"
          f"{report_files.canonical_hash(settings)}")


def table_settings(config, step: int) -> dict[str, Any]:
  """`report_settings` less the sampling fields eval.sampler_sweep's entries replace, with 'sampler_sweep', the
  entries as "method:grid:num_steps" in their order (the rows')."""
  settings = report_settings(config, step)
  settings["sampling"] = {field: value for field, value in settings["sampling"].items()
                          if field not in quality_files.SWEPT_SAMPLING_FIELDS}
  settings["sampler_sweep"] = [f"{entry.method}:{entry.grid}:{entry.num_steps}" for entry in
                               sampler_sweep.parse_sampler_sweep(config.eval.get("sampler_sweep", ()))]
  return settings


def table_stem(settings: dict[str, Any]) -> str:
  """quality_vs_nfe_ckpt<step>_points_<canonical_hash> of `table_settings` (workdir_view.quality_tables finds
  it by its prefix, beside the image tables)."""
  return f"quality_vs_nfe_ckpt{settings['checkpoint_step']}_points_{report_files.canonical_hash(settings)}"


# ----------------------------------------------------------------------------------------------------------
# The console's view.


def format_report(report: dict[str, Any], path: str) -> str:
  """The console's view of a point-quality report: a header, each metric to 3 significant digits beside its
  baselines (the repeats' mean, and their minimum when several), then the report's path, e.g.

    point quality: 10000 samples, lie_trotter_quadratic_50steps (NFE 50), checkpoint step 40000
    sw1 0.0213 (held-out points 0.00587, noise 0.26)
    within_0_01 0.903 (held-out points 1, noise 0.0097)
    runs/toy2d/eval/quality_lie_trotter_quadratic_50steps_ckpt40000_points_0123abcd.json
  """
  nfe = max(repeat["nfe"] for repeat in report["repeats"])
  lines = [f"point quality: {report['num_samples']} samples, {quality_files.sampler_part(report['sampling'])} "
           f"(NFE {nfe}), checkpoint step {report['checkpoint_step']}"]
  lines += [report_text.metric_line(name, report["summary"], len(report["repeats"]), report.get("baselines"))
            for name in report_text.metric_names(report["summary"])]
  return "\n".join(lines + [path])


def format_table_report(table: dict[str, Any], path: str) -> str:
  """The console's view of a point-quality table: its rows and baselines (report_text.format_table), then its
  path."""
  return (f"point quality versus NFE at checkpoint step {table['checkpoint_step']}, {table['num_samples']} "
          f"samples:\n{report_text.format_table(table['rows'], table.get('baselines'))}\n{path}")


# ----------------------------------------------------------------------------------------------------------
# The evaluation.


@dataclasses.dataclass(frozen=True)
class Loaded:
  """What every sampler of one job shares, loaded once: the EMA parameters of one checkpoint and its step, the
  held-out points and the baselines (which depend on none of the sampler settings)."""

  data_shape: tuple[int, ...]
  params: Any
  step: int
  heldout: HeldOut
  baselines: dict[str, dict[str, float]]


def load(config, settings: eval_settings.Settings, workdir: str) -> Loaded:
  """The shared pieces of config's evaluation (`settings` its config.eval, checked); the parameters first, so an
  absent checkpoint fails at once."""
  data_shape = point_shape(settings.metrics, config.data)
  params, step = trained_model.load_ema_params(config, workdir, data_shape, settings.chosen_step)
  heldout = heldout_points(config.data.dataset, settings.num_samples, settings.seed)
  if len(heldout.points) < settings.num_samples:
    console.say(f"eval: {heldout.description}")
  return Loaded(data_shape, params, step, heldout,
                data_baselines(heldout, config.data.dataset, settings.seed))


def evaluate_points(config, workdir: str, settings: eval_settings.Settings | None = None) -> str:
  """Draws, measures and reports (module docstring); returns the report's path, or with eval.sampler_sweep the
  table's. `settings`: config.eval checked (eval_settings), made here when None."""
  started = time.time()
  settings = eval_settings.settings_from_config(config.eval if settings is None else settings)
  entries = sampler_sweep.sweep_configs(config)
  loaded = load(config, settings, workdir)
  if jax.process_index() == 0:  # an unwritable workdir is found before the sampling, not after
    checkpoints.check_workdir(trained_model.workdir_path(workdir) / "eval", 1 << 20, "the report")
  writer = metric_writers.create_default_writer(workdir, collection="eval") if jax.process_index() == 0 else None
  if not entries:
    return evaluate_loaded(config, settings, workdir, loaded, writer, started)[0]
  rows = []
  for index, (entry, config_of_entry) in enumerate(entries):
    rows.append(image_quality.table_row(entry, *evaluate_loaded(config_of_entry, settings, workdir, loaded, writer,
                                                                time.time())))
    if jax.process_index() == 0:
      console.say(f"eval: sampler {index + 1}/{len(entries)} ({entry.method}:{entry.grid}:{entry.num_steps}, NFE "
                  f"{rows[-1]['nfe']}): {report_text.means_line(rows[-1])}")
  return write_table(config, workdir, loaded, rows, time.time() - started)


def draw_repeat(draw: Callable, params, num_samples: int, seed: int, sampling_config) -> tuple[np.ndarray, int]:
  """(samples (num_samples, D), nfe) of one repeat, drawn with `seed` by draw = sample_job.make_drawer(config,
  data_shape, return_nfe=True); a FloatingPointError when any is not finite (a metric of them would be
  meaningless)."""
  samples, nfe = draw(params, num_samples, seed)
  bad = ~np.isfinite(samples).all(axis=1)
  if bad.any():
    raise FloatingPointError(f"{bad.sum()} of {num_samples} samples drawn with seed {seed} are not finite; no "
                             f"report was written. {samplers.non_finite_advice(sampling_config)}")
  return samples, nfe


def evaluate_loaded(config, settings: eval_settings.Settings, workdir: str, loaded: Loaded,
                    writer: metric_writers.MetricWriter | None, started: float) -> tuple[str, dict[str, Any]]:
  """One evaluation with config.sampling from the loaded pieces: every repeat drawn and measured, then the
  report written (process 0, its summary to `writer`); returns its path and the report."""
  heldout = loaded.heldout
  num_samples = len(heldout.points)
  repeats = []
  draw = sample_job.make_drawer(config, loaded.data_shape, return_nfe=True)  # compiled once for every repeat
  for repeat in range(settings.num_repeats):
    samples, nfe = draw_repeat(draw, loaded.params, num_samples, config.seed + repeat, config.sampling)
    repeats.append({"seed": int(config.seed + repeat), "num_samples": num_samples, "nfe": int(nfe),
                    **measure(samples, heldout.points, config.data.dataset)})
  names = [name for name in repeats[0] if name not in ("seed", "num_samples", "nfe")]
  summary = {}
  for name in names:
    values = np.array([repeat[name] for repeat in repeats])
    summary[f"{name}_mean"], summary[f"{name}_min"] = float(values.mean()), float(values.min())
  recorded = report_settings(config, loaded.step)
  report = {
      "kind": KIND,
      "quantity": (f"Sliced Wasserstein-1 distance ({NUM_DIRECTIONS} random directions) between num_samples samples "
                   "and as many held-out points; see hold_jax/evaluation/point_quality.py."),
      "hashed_settings": recorded,
      "checkpoint_step": loaded.step,
      "seed": config.seed,
      "dataset": config.data.dataset,
      "heldout": heldout.description,
      "num_samples": num_samples,
      "repeats": repeats,
      "summary": summary,
      "baselines": loaded.baselines,
      "sampling": config.sampling.to_dict(),
      "eval": config.eval.to_dict(),
      "seconds": round(time.time() - started, 1),
  }
  path = trained_model.workdir_path(workdir) / "eval" / f"{report_stem(recorded)}.json"
  if jax.process_index() == 0:
    report_files.write_json_atomic(path, report)
    writer.write_scalars(loaded.step, {f"{path.stem}/{name}": value for name, value in summary.items()})
    writer.flush()
    logging.info("eval: %s", format_report(report, str(path)))  # main prints it on the console
  return str(path), report


def write_table(config, workdir: str, loaded: Loaded, rows: list[dict[str, Any]], seconds: float) -> str:
  """Writes the point-quality-versus-NFE table (process 0, atomically) to workdir/eval/<table_stem>.json and its
  plot beside it, <table_stem>.png (workdir_view.write_quality_plot, as image_quality.write_table does; that function
  itself takes an image evaluation's feature network and reference statistics, which points have not), logs
  its text and returns the table's path. The table is written first: a plot that fails leaves it whole."""
  from hold_jax.workdir import workdir_view  # pylint: disable=g-import-not-at-top  (matplotlib, for sweeps only)
  recorded = table_settings(config, loaded.step)
  path = trained_model.workdir_path(workdir) / "eval" / f"{table_stem(recorded)}.json"
  table = {"kind": TABLE_KIND, "checkpoint_step": loaded.step, "rows": rows, "baselines": loaded.baselines,
           "dataset": config.data.dataset, "heldout": loaded.heldout.description,
           "num_samples": len(loaded.heldout.points), "num_repeats": config.eval.num_repeats, "seed": config.seed,
           "other_sampling_fields": {name: value for name, value in config.sampling.to_dict().items()
                                     if name not in quality_files.SWEPT_SAMPLING_FIELDS},
           "eval": config.eval.to_dict(), "hashed_settings": recorded, "seconds": round(seconds, 1)}
  if jax.process_index() == 0:
    report_files.write_json_atomic(path, table)
    picture = workdir_view.write_quality_plot(table, path, {"settings": json.dumps(recorded, sort_keys=True)})
    console.say(f"eval: point quality versus NFE at step {loaded.step}: wrote {path} and {picture}")
    logging.info("eval: %s", format_table_report(table, str(path)))  # main prints it on the console
  return str(path)

"""`--mode=eval` with sample-quality metrics: FID, KID and IS of generated images, in resumable rounds.

What is measured. eval.num_samples images are generated with config.sampling from the EMA parameters of the
newest readable checkpoint, or of step eval.checkpoint_step (that step or an error, never another one)
(sample k of repeat r from the key fold_in(PRNGKey(seed + r), k): EDM's practice of several seeds, each
reported, with their mean and minimum), quantised to uint8 as an image file would be, and passed through a
feature network (hold_jax/evaluation/image_features.py, which also computes and caches the reference statistics): the
FID Inception-v3 (eval.feature_network = 'inception', weights from the local file eval.inception_weights,
hold_jax/evaluation/feature_networks/inception.py) or, for the digits, a small classifier that needs no download
('digits', hold_jax/evaluation/feature_networks/digits_features.py). FID and KID compare the features with those of the
reference images (eval.reference_split of the training data, or a user's statistics file eval.reference_stats); IS uses
the network's logits. With the digits network the report names them fd_digits, kid_digits and is_digits: they are
comparable only with each other, never with published FIDs.

Rounds. Generation runs in rounds of eval.round_size samples; after each round process 0 writes the round's
features and logits atomically (temporary file + rename) with a SHA-256 of their bytes, into
workdir/eval/<run>/ (quality_files.run_name, a hash of what the rounds' contents depend on). A job killed at
any moment resumes at the first round without a valid file and ends with the same numbers as an
uninterrupted one; a round file that fails its checksum or has the wrong shape is regenerated. Images are
never held beyond one sampling batch; features (a few KB per image) are.

Reports. Each run's report, and a sweep's table, are named by a hash of every setting that changes them, so
that no run overwrites one of other settings (hold_jax/evaluation/quality_files.py).

Quality versus NFE. eval.sampler_sweep lists "method:grid:num_steps" entries, all checked before any work
(hold_jax/evaluation/sampler_sweep.py); each is one evaluation as above with those three sampling fields replaced (its
own rounds folder and its own report, since both name the sampler), sharing the feature network, the
reference statistics and the parameters, which are loaded once.
workdir/eval/quality_vs_nfe_ckpt<step>_<network>_<hash>.json then holds one row per entry (its NFE and summary
metrics, and its report's name), with its plot beside it (<table_stem>.png).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any

import jax
import numpy as np
from absl import logging
from clu import metric_writers
from etils import epath

from hold_jax import console
from hold_jax import field_checks
from hold_jax import models
from hold_jax import multihost
from hold_jax import report_files
from hold_jax.data import image_data
from hold_jax.data import input_pipeline
from hold_jax.evaluation import eval_settings
from hold_jax.evaluation import image_features
from hold_jax.evaluation import quality_files
from hold_jax.evaluation import report_text
from hold_jax.evaluation import round_files
from hold_jax.evaluation import sampler_sweep
from hold_jax.process import sde as sde_lib
from hold_jax.sampling import data_parallel
from hold_jax.sampling import samplers
from hold_jax.workdir import checkpoints
from hold_jax.workdir import trained_model
from hold_jax.workdir import workdir_view


def image_shape(metrics, data_config) -> tuple[int, int, int]:
  """The shape of one image of `config.data`; a ValueError naming eval.metrics when the data are not images."""
  data_shape = input_pipeline.data_shape(data_config)
  field_checks.require(len(data_shape) == 3, "eval.metrics", tuple(metrics),
                       f"names from {('nll',) + eval_settings.POINT_METRICS} for data.dataset = "
                       f"{data_config.dataset!r}: FID, KID and IS need images")
  return data_shape


# ----------------------------------------------------------------------------------------------------------
# Rounds.


# The arrays of a round file: its images' features and logits, and the most network evaluations of a sample.
ROUND_NAMES = ("features", "logits", "nfe")


# ----------------------------------------------------------------------------------------------------------
# The quality-versus-NFE table.


def table_row(entry: sampler_sweep.SweepEntry, path: str, report: dict[str, Any]) -> dict[str, Any]:
  """One row of the quality-versus-NFE table: the sampler, its NFE (the largest of the repeats'; the adaptive
  solver's differs per sample), the report's summary metrics and the name of the report (at `path`)."""
  nfe = max(repeat["nfe"] for repeat in report["repeats"])
  return {"method": entry.method, "grid": entry.grid, "num_steps": entry.num_steps, "nfe": nfe,
          **report["summary"], "report": epath.Path(path).name}


def format_table(rows: list[dict[str, Any]], baselines: dict[str, dict[str, float]] | None = None) -> str:
  """The rows as a text table with aligned columns (the log's and the console's view; the JSON holds the
  numbers), numbers to 4 significant digits, then each of the baselines once (a report's 'baselines', e.g.
  held-out digits and noise) as a row under the '<metric>_mean' columns: report_text.format_table."""
  return report_text.format_table(rows, baselines)


def format_report(report: dict[str, Any], path: str) -> str:
  """The console's view of a quality report: a header, each metric to 3 significant digits beside its
  baselines (the repeats' mean, and their minimum when several), then the report's path, e.g.

    sample quality: 297 samples, lie_trotter_quadratic_50steps (NFE 50), checkpoint step 4, digits-classifier-v1
    fd_digits 1.31 (held-out digits 6.14, noise 871)
    kid_digits 0.0021 (held-out digits 0.0104, noise 2.95)
    runs/digits/eval/quality_lie_trotter_quadratic_50steps_ckpt4_digits-classifier-v1_0123abcd.json
  """
  repeats = report["repeats"]
  lines = [f"sample quality: {repeats[0]['num_samples']} samples, {quality_files.sampler_part(report['sampling'])} "
           f"(NFE {max(repeat['nfe'] for repeat in repeats)}), checkpoint step {report['checkpoint_step']}, "
           f"{report['feature_network']['name']}"]
  lines += [report_text.metric_line(name, report["summary"], len(repeats), report.get("baselines"))
            for name in report_text.metric_names(report["summary"])]
  return "\n".join(lines + [path])


def format_table_report(table: dict[str, Any], path: str, baselines: dict[str, dict[str, float]] | None = None
                        ) -> str:
  """The console's view of a quality-versus-NFE table: its rows with the baselines once (the table's own
  'baselines', else `baselines`, which eval_job.py reads from a row's report), then its path."""
  return (f"sample quality versus NFE at checkpoint step {table['checkpoint_step']}, {table['num_samples']} "
          f"samples:\n{format_table(table['rows'], table.get('baselines', baselines))}\n{path}")


# ----------------------------------------------------------------------------------------------------------
# The evaluation.


@dataclasses.dataclass(frozen=True)
class Loaded:
  """What every evaluation of one job shares, loaded once however many samplers it evaluates: the feature
  network, the EMA parameters of one checkpoint and its step, the reference statistics, and (digits network
  only) the baselines, which depend on none of the sampler settings."""

  data_shape: tuple[int, ...]
  network: image_features.Network
  params: Any
  step: int
  reference: dict[str, Any]
  baselines: dict[str, dict[str, float]] | None


def load(config, settings: eval_settings.Settings, workdir: str) -> Loaded:
  """The shared pieces of config's evaluation (`settings` its config.eval, checked). The parameters are read
  before the reference statistics are computed, so an absent or damaged checkpoint fails in seconds rather than
  after the reference features."""
  data_shape = image_shape(settings.metrics, config.data)
  network = image_features.load_network(settings)
  params, step = trained_model.load_ema_params(config, workdir, data_shape, settings.chosen_step)
  reference = image_features.reference_statistics(config, network)
  baselines = digits_baselines(config, network, settings) if settings.feature_network == "digits" else None
  return Loaded(tuple(data_shape), network, params, step, reference, baselines)


def evaluate_quality(config, workdir: str, settings: eval_settings.Settings | None = None) -> str:
  """Generates, measures and reports (module docstring); returns the report's path
  (workdir/eval/<report_stem>.json), or with eval.sampler_sweep the table's (workdir/eval/<table_stem>.json).
  `settings`: config.eval checked (eval_settings), made here when None."""
  started = time.time()
  settings = eval_settings.settings_from_config(config.eval if settings is None else settings)
  entries = sampler_sweep.sweep_configs(config)
  loaded = load(config, settings, workdir)
  writer = metric_writers.create_default_writer(workdir, collection="eval") if jax.process_index() == 0 else None
  if not entries:
    return evaluate_loaded(config, settings, workdir, loaded, writer, started)[0]
  rows = []
  for index, (entry, config_of_entry) in enumerate(entries):
    rows.append(table_row(entry, *evaluate_loaded(config_of_entry, settings, workdir, loaded, writer, time.time())))
    if jax.process_index() == 0:
      console.say(f"eval: sampler {index + 1}/{len(entries)} ({entry.method}:{entry.grid}:{entry.num_steps}, NFE "
                  f"{rows[-1]['nfe']}): {report_text.means_line(rows[-1])}")
  return write_table(config, workdir, loaded, rows, time.time() - started)


def write_table(config, workdir: str, loaded: Loaded, rows: list[dict[str, Any]], seconds: float) -> str:
  """Writes the quality-versus-NFE table (process 0, atomically) to workdir/eval/<table_stem>.json and its plot
  beside it, <table_stem>.png (workdir_view.write_quality_plot: every metric against NFE, the table's settings
  as a PNG text entry), says both paths on the console and returns the table's path; the table's text is the
  command's summary (eval_job.summary), printed once at the end. The table records the settings its name
  hashes ('hashed_settings'), the whole eval group and, with the digits network, the baselines beside its own
  fields. The table is written first: a plot that fails leaves it whole."""
  network = loaded.network
  recorded = quality_files.table_settings(config, network, loaded.step)
  path = trained_model.workdir_path(workdir) / "eval" / f"{quality_files.table_stem(recorded)}.json"
  table = {"checkpoint_step": loaded.step, "rows": rows,
           "feature_network": {"name": network.name, "weights_sha256": network.weights_sha256,
                               "resize": network.resize},
           "reference": loaded.reference["key"], "num_samples": config.eval.num_samples,
           "num_repeats": config.eval.num_repeats, "seed": config.seed,
           "other_sampling_fields": {name: value for name, value in config.sampling.to_dict().items()
                                     if name not in quality_files.SWEPT_SAMPLING_FIELDS},
           "eval": config.eval.to_dict(), "hashed_settings": recorded,
           "seconds": round(seconds, 1)}
  if loaded.baselines is not None:  # the plot marks them (and a reader of the table needs no report for them)
    table["baselines"] = loaded.baselines
  if jax.process_index() == 0:
    report_files.write_json_atomic(path, table)
    picture = workdir_view.write_quality_plot(table, path, {"settings": json.dumps(recorded, sort_keys=True)})
    console.say(f"eval: quality versus NFE at step {loaded.step}: wrote {path} and {picture}")
  return str(path)


def evaluate_loaded(config, settings: eval_settings.Settings, workdir: str, loaded: Loaded,
                    writer: metric_writers.MetricWriter | None, started: float) -> tuple[str, dict[str, Any]]:
  """One evaluation with config.sampling from the already-loaded pieces: generates the missing rounds, then
  writes the report (process 0, with its summary to `writer`); returns its path and the report. `started` is
  when its clock began (the report's seconds and the ETA count from there)."""
  network, step = loaded.network, loaded.step
  run_dir = trained_model.workdir_path(workdir) / "eval" / quality_files.run_name(config, network, step)
  if jax.process_index() == 0:
    checkpoints.check_workdir(run_dir, 0, "the round files")
  sde = sde_lib.from_config(config.sde)
  score_fn = trained_model.make_score_fn(sde, models.create_model(config.model, loaded.data_shape), config.loss)
  sampler = samplers.make_sampler(sde, score_fn, loaded.data_shape, config.sampling, return_nfe=True,
                                  data_range=input_pipeline.data_range(config.data))
  mesh = multihost.make_mesh()
  num_rounds = math.ceil(settings.num_samples / settings.round_size)
  total_rounds, repeats = settings.num_repeats * num_rounds, []
  for repeat in range(settings.num_repeats):
    rng = jax.random.PRNGKey(config.seed + repeat)

    def compute(first: int, last: int, rng=rng) -> dict[str, np.ndarray]:
      features, logits, nfe = _generate_round(sampler, loaded.params, rng, np.arange(first, last), mesh, network,
                                              settings.feature_batch_size, config.sampling)
      return {"features": features, "logits": logits, "nfe": np.asarray(nfe)}

    def after_round(found, round_index: int, rounds: int, last: int, computed: int, repeat=repeat) -> None:
      done = repeat * rounds + round_index + 1
      elapsed = time.time() - started
      if jax.process_index() == 0:
        console.say(f"eval: repeat {repeat + 1}/{settings.num_repeats}, round {round_index + 1}/{rounds} done "
                    f"({last} images), {console.duration(elapsed)} elapsed, ETA "
                    f"{console.duration(elapsed / done * (total_rounds - done))}")

    found = round_files.in_rounds(run_dir, f"repeat{repeat}_round", settings.num_samples, settings.round_size,
                                  ROUND_NAMES, compute, after_round)
    repeats.append(_metrics(np.concatenate([part["features"] for part in found]),
                            np.concatenate([part["logits"] for part in found]), loaded.reference, settings, network,
                            max(int(part["nfe"]) for part in found)))
  report = _report(config, network, loaded.reference, step, repeats, time.time() - started, run_dir.name)
  if loaded.baselines is not None:
    report["baselines"] = loaded.baselines
  path = trained_model.workdir_path(workdir) / "eval" / f"{quality_files.report_stem(report['hashed_settings'])}.json"
  if jax.process_index() == 0:
    report_files.write_json_atomic(path, report)
    writer.write_scalars(step, {f"{run_dir.name}/{name}": value for name, value in report["summary"].items()})
    writer.flush()
    logging.info("eval: %s", format_report(report, str(path)))  # main prints it on the console
  return str(path), report


def digits_baselines(config, network: image_features.Network,
                     settings: eval_settings.Settings) -> dict[str, dict[str, float]]:
  """The same metrics for real digits the model never saw against the others, and for uniform noise: the
  classifier's split of the digits (hold_jax/evaluation/feature_networks/digits_features.py), its 297 held-out images
  and as many noise images against statistics of its 1,500 training images. They bracket what a model can reach; with
  fewer samples than the model's, they carry a larger small-sample bias."""
  from hold_jax.evaluation import statistics  # pylint: disable=g-import-not-at-top
  from hold_jax.evaluation.feature_networks import digits_features  # pylint: disable=g-import-not-at-top
  size = config.data.image_size
  train_features, _ = image_features.features_in_batches(network, digits_features.digits_pixels("train", size),
                                          settings.feature_batch_size)
  accumulator = statistics.FeatureStats(train_features.shape[1])
  accumulator.add(train_features)
  reference = {"mu": accumulator.mean(), "sigma": accumulator.covariance(), "features": train_features,
               "key": "digits classifier's 1,500 training images"}
  heldout = digits_features.digits_pixels("heldout", size)
  noise = np.random.default_rng(0).integers(0, 256, heldout.shape, dtype=np.uint8)
  results = {}
  for name, images in (("heldout_digits", heldout), ("uniform_noise", noise)):
    features, logits = image_features.features_in_batches(network, images, settings.feature_batch_size)
    results[name] = _metrics(features, logits, reference, settings, network, nfe=0)
  return results


def _generate_round(sampler, params, rng, ids, mesh, network: image_features.Network, feature_batch_size: int,
                    sampling_config):
  """(features, logits, nfe) of the samples `ids`, generated in sampling batches (images never all held)."""
  stream, nfe = image_features.FeatureStream(network, feature_batch_size), 0
  for batch in data_parallel.id_batches(int(ids[0]), int(ids[-1]) + 1, sampling_config.batch_size):
    samples, batch_nfe = data_parallel.generate(sampler, params, rng, batch, mesh)
    if not np.isfinite(samples).all():
      raise FloatingPointError(f"Samples {batch[0]}..{batch[-1]} are not finite; nothing of this round was "
                               f"written. {samplers.non_finite_advice(sampling_config)}")
    stream.add(image_data.to_pixels(samples))
    nfe = max(nfe, batch_nfe)
  return (*stream.finish(), nfe)


def _metrics(features, logits, reference, settings: eval_settings.Settings, network: image_features.Network,
             nfe: int) -> dict[str, float]:
  from hold_jax.evaluation import statistics  # pylint: disable=g-import-not-at-top
  results = {"num_samples": int(len(features)), "nfe": int(nfe)}
  if "fid" in settings.metrics:
    accumulator = statistics.FeatureStats(features.shape[1])
    accumulator.add(features)
    results[network.metric_name("fid")] = float(statistics.frechet_distance(
        accumulator.mean(), accumulator.covariance(), reference["mu"], reference["sigma"]))
  if "kid" in settings.metrics:
    if reference.get("features") is None:
      raise ValueError(f"eval.metrics has 'kid', but the reference statistics {reference['key']} hold no "
                       "features (a mu/sigma file): drop 'kid' or use computed reference statistics.")
    mean, std = statistics.kid(features, np.asarray(reference["features"]),
                               subset_size=min(settings.kid_subset_size, len(features),
                                               len(reference["features"])))
    results[network.metric_name("kid")], results[network.metric_name("kid") + "_std"] = float(mean), float(std)
  if "is" in settings.metrics:
    mean, std = statistics.inception_score(logits, splits=settings.is_splits)
    results[network.metric_name("is")], results[network.metric_name("is") + "_std"] = float(mean), float(std)
  return results


def _report(config, network: image_features.Network, reference, step, repeats, seconds, run: str) -> dict[str, Any]:
  names = [name for name in repeats[0] if name not in ("num_samples", "nfe") and not name.endswith("_std")]
  summary = {}
  for name in names:
    values = np.array([repeat[name] for repeat in repeats])
    summary[f"{name}_mean"], summary[f"{name}_min"] = float(values.mean()), float(values.min())
  return {
      "run": run,
      "hashed_settings": quality_files.report_settings(config, network, step),
      "checkpoint_step": step,
      "seed": config.seed,
      "repeats": repeats,
      "summary": summary,
      "feature_network": {"name": network.name, "weights_sha256": network.weights_sha256,
                          "resize": network.resize},
      "reference": reference["key"],
      "sampling": config.sampling.to_dict(),
      "eval": config.eval.to_dict(),
      "seconds": round(seconds, 1),
  }

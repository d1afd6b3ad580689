"""`--mode=eval`: the negative log-likelihood bound of a workdir's EMA parameters (the newest readable
checkpoint, or step eval.checkpoint_step) over a data split (docs/likelihood.md; the computation is
hold_jax/evaluation/likelihood.py), written to workdir/eval/<label>_<hash>.json. The console and the log quote it in one
unit, nats per point for point sets and bits/dim for images (`in_reported_unit`, `format_report`); the report
keeps nats per example, nats per dimension and, for images, bits/dim.

Which examples. Image data: the first eval.num_examples images of eval.split (-1: all of them), read by the
training pipeline with its flips off, each dequantised once with its own noise. A user's point cloud
('npy:PATH'): its first eval.num_examples points. Generated 2-D data: eval.num_examples fresh points. Example
k (its dequantisation noise, generated point, auxiliaries and Hutchinson probes) depends only on
(eval.seed, k), never on the batch size, the device count or the number of processes: every example is
evaluated exactly once, and a rerun gives the same report.

Report names. <label> is nll_<split>_<aux_distribution>_<divergence>_ckpt<step> (<split> is 'points' for a
user's point cloud, 'generated' for fresh 2-D points; <divergence> the one used, 'auto' resolved), and <hash> is
report_files.canonical_hash of `report_settings`: every eval field the bound reads (ROUND_FIELDS) but round_size, the
checkpoint step and the data set. So an NLL run with other settings writes a new report beside the earlier
ones, and the same settings rewrite the same file. Left out, because no reported number depends on them:
eval.batch_size and eval.round_size (example k's bound depends on (eval.seed, k) alone, whichever batch or
round holds it), eval.checkpoint_step as written (-1 and the step it resolves to give one report), and the
fields of the sample-quality metrics. The trained fields (process, model, parametrization) are fixed for a
workdir by its config.json, except a denoiser's process, which is chosen at evaluation and hashed
(run_record.sampling_process). A field that cannot matter for these data (eval.split for point data, num_probes
for the exact divergence) is hashed all the same: at worst the same report gets a second file. The report
records `report_settings` under 'hashed_settings' (`report_stem` gives its name again) and the whole eval
group under 'settings'; it is written under a temporary name and renamed, so a killed job never leaves half a
report under the final name.

Rounds. The examples are bounded in rounds of eval.round_size consecutive indices; after each round the
per-example results go to workdir/eval/<label>_rounds_<tag>/round<r>.npz (atomically, with a checksum; the tag
hashes ROUND_FIELDS, round_size included, the step and the data set, so the settings of a report decide its
rounds folder, which the report names under 'rounds'). A job killed at any moment resumes at its first missing
round and reports the same numbers as an uninterrupted one; a damaged round file is computed again.

Multi-host: each process bounds its own share of each round on its local devices; the per-example results
are gathered after every round, and process 0 writes the round files and the report.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from typing import Any

import jax
import numpy as np
from absl import logging
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hold_jax import console
from hold_jax import models
from hold_jax import multihost
from hold_jax import report_files
from hold_jax.data import image_data
from hold_jax.data import image_sources
from hold_jax.data import input_pipeline
from hold_jax.evaluation import eval_settings
from hold_jax.evaluation import likelihood
from hold_jax.evaluation import report_text
from hold_jax.evaluation import round_files
from hold_jax.process import sde as sde_lib
from hold_jax.workdir import checkpoints
from hold_jax.workdir import run_record
from hold_jax.workdir import trained_model

# Entropy words that keep eval's per-example numpy draws apart from each other and from the training
# stream's [seed, step, process] draws (SeedSequence pads with zeros, so a distinct nonzero word is needed).
GENERATED_POINT_STREAM = 0x6576616C  # 'eval'
DEQUANTIZATION_STREAM = 0x64657175  # 'dequ'


@dataclasses.dataclass(frozen=True)
class Examples:
  """This process's share of the examples to bound.

  values: (n, *data_shape): float32 model-space points, or uint8 pixel levels of images (dequantised per batch).
  indices: (n,) their global example indices k, which seed everything random about them; each process holds
    a contiguous run of range(num_total).
  num_total: the examples of every process together.
  num_levels: pixel levels of image data (for bits/dim); None for points.
  description: what the examples are, for the report.
  """

  values: np.ndarray
  indices: np.ndarray
  num_total: int
  num_levels: int | None
  description: str


def generated_points(dataset: str, seed: int, indices: np.ndarray) -> np.ndarray:
  """(n, D) float32: point k drawn alone from np.random.default_rng([seed, GENERATED_POINT_STREAM, k])."""
  generate = input_pipeline.GENERATORS[dataset]
  points = [generate(np.random.default_rng([seed, GENERATED_POINT_STREAM, int(k)]), 1)[0] for k in indices]
  return np.asarray(points, np.float32).reshape((len(indices), -1))


def first_examples(num_total: int, num_wanted: int) -> int:
  """How many of a fixed split's num_total examples to bound: num_wanted (-1: all), at most num_total."""
  return num_total if num_wanted == -1 else min(num_wanted, num_total)


def load_examples(config, settings: eval_settings.Settings) -> Examples:
  """This process's examples of `config.data` for `settings` (config.eval; see the module docstring)."""
  dataset = config.data.dataset
  if dataset in image_sources.SOURCES:
    data = dataclasses.replace(input_pipeline.settings_from_config(config.data), split=settings.split,
                               random_flip=False, dequantize=True)
    stream = input_pipeline.create_stream(data, jax.device_count(), config.seed)
    sizes = multihost.all_processes(np.array([len(stream.images)]))[:, 0]
    offset = int(sizes[:jax.process_index()].sum())
    keep = first_examples(int(sizes.sum()), settings.num_examples)
    indices = np.arange(offset, offset + len(stream.images))
    mine = indices < keep
    return Examples(stream.images[mine], indices[mine], keep, stream.num_levels,
                    f"{dataset} {settings.split!r}: the first {keep} of {int(sizes.sum())} images")
  if dataset.startswith("npy:"):
    points = input_pipeline.load_point_cloud(dataset[len("npy:"):])
    keep = first_examples(len(points), settings.num_examples)
    indices = multihost.process_share(keep)
    return Examples(points[indices], indices, keep, None, f"{dataset}: the first {keep} of {len(points)} points")
  input_pipeline.data_shape(config.data)  # names the field of an unknown dataset
  if settings.num_examples < 1:
    raise ValueError(f"eval.num_examples = {settings.num_examples}: generated data ({dataset!r}) needs a number "
                     "of fresh points >= 1.")
  indices = multihost.process_share(settings.num_examples)
  return Examples(generated_points(dataset, settings.seed, indices), indices, settings.num_examples, None,
                  f"{dataset}: {settings.num_examples} fresh points, eval.seed = {settings.seed}")


def model_inputs(examples: Examples, positions: np.ndarray, seed: int) -> np.ndarray:
  """The examples at `positions` in model space; images dequantised with per-example noise (seed, stream, k)."""
  values = examples.values[positions]
  if examples.num_levels is None:
    return values
  noise = np.stack([np.random.default_rng([seed, DEQUANTIZATION_STREAM, int(k)]).random(values.shape[1:],
                                                                                          dtype=np.float32)
                    for k in examples.indices[positions]])
  return image_data.to_model_space(values, examples.num_levels, noise)


def gather(per_example: dict[str, np.ndarray], indices: np.ndarray) -> dict[str, np.ndarray]:
  """Every process's per-example arrays (n_p,), joined and sorted by global example index."""
  if jax.process_count() == 1:
    order = np.argsort(indices)
    return {name: values[order] for name, values in per_example.items()}
  longest = int(multihost.all_processes(np.array([len(indices)])).max())
  pad = lambda values, fill: np.concatenate([values, np.full(longest - len(values), fill, values.dtype)])
  all_indices = multihost.all_processes(pad(indices.astype(np.int64), -1)).reshape(-1)
  valid = all_indices >= 0
  order = np.argsort(all_indices[valid])
  return {name: multihost.all_processes(pad(values.astype(np.float64), np.nan)).reshape(-1)[valid][order]
          for name, values in per_example.items()}


def summarize(nll_bound: np.ndarray, num_coords: int, num_levels: int | None) -> dict[str, float]:
  """The mean bound and its standard error over examples, in nats per example and per dimension, and in
  bits/dim for images: the JSON keeps every unit (other code reads these keys), while the console and the logs
  quote one (in_reported_unit). The standard error includes the one-draw noise of the auxiliaries and probes."""
  mean = float(np.mean(nll_bound))
  stderr = float(np.std(nll_bound, ddof=1) / np.sqrt(len(nll_bound))) if len(nll_bound) > 1 else float("nan")
  summary = {"nll_bound_nats": mean, "nll_bound_nats_stderr": stderr,
             "nll_bound_nats_per_dim": mean / num_coords, "nll_bound_nats_per_dim_stderr": stderr / num_coords}
  if num_levels is not None:
    summary["bits_per_dim"] = float(likelihood.bits_per_dim(mean, num_coords, num_levels))
    summary["bits_per_dim_stderr"] = stderr / (num_coords * math.log(2))
  return summary


# The one unit the console, the logs and the docs quote an NLL bound in: bits per dimension for images (what
# image papers compare), nats per point for point sets (whose dimension is a property of the data, not of
# resolution); the report's JSON keeps nats per example and per dimension beside bits_per_dim.
POINT_UNIT, IMAGE_UNIT = "nats per point", "bits/dim"


def in_reported_unit(nll_nats: float, num_coords: int, num_levels: int | None) -> tuple[float, str]:
  """(value, unit) of a mean bound of nll_nats nats per example in the unit it is quoted in: bits/dim for
  images with num_levels pixel levels (likelihood.bits_per_dim), nats per point for point sets."""
  if num_levels is None:
    return float(nll_nats), POINT_UNIT
  return float(likelihood.bits_per_dim(nll_nats, num_coords, num_levels)), IMAGE_UNIT


def format_report(report: dict[str, Any], path: str) -> str:
  """The console's view of an NLL report: the bound with its standard error in its unit (bits/dim for images,
  nats per point for points), to 4 and 2 significant digits, what it is over, then the report's path, e.g.

    nll_bound -2.772 +- 0.043 nats per point (1000 points, mean NFE 372, checkpoint step 20)
    runs/toy2d/eval/nll_generated_kernel_exact_ckpt20_0123abcd.json
  """
  if report.get("bits_per_dim") is not None:
    value, stderr, unit, what = report["bits_per_dim"], report["bits_per_dim_stderr"], IMAGE_UNIT, "images"
  else:
    value, stderr, unit, what = report["nll_bound_nats"], report["nll_bound_nats_stderr"], POINT_UNIT, "points"
  return (f"nll_bound {report_text.significant(value, 4)} +- {report_text.significant(stderr, 2)} {unit} "
          f"({report['num_examples']} {what}, mean NFE {report['nfe_mean']:.0f}, checkpoint step "
          f"{report['checkpoint_step']})\n{path}")


def make_batch_bound(config, data_shape: tuple[int, ...], settings: eval_settings.Settings):
  """bound(params, x (B, *data_shape), indices (B,)) -> (nll_bound, nfe, solved), each (B,); jitted. `settings`
  an eval_settings.Settings or config.eval: its ODE settings, eval.seed and eval.aux_distribution."""
  settings = eval_settings.settings_from_config(settings)
  sde = sde_lib.from_config(config.sde)
  model = models.create_model(config.model, data_shape)
  score_fn = trained_model.make_score_fn(sde, model, config.loss)
  base_key = jax.random.PRNGKey(settings.seed)
  ode_settings, aux_distribution = settings.ode_settings(data_shape), settings.aux_distribution

  @jax.jit
  def bound(params, x, indices):
    keys = jax.vmap(lambda k: jax.random.fold_in(base_key, k))(indices)
    result = likelihood.nll_bound(sde, score_fn, params, x, keys, ode_settings, aux_distribution)
    return result.nll_bound, result.nfe, result.solved

  return bound


def bound_examples(bound, params, examples: Examples, positions: np.ndarray, batch_size: int, seed: int,
                   mesh: Mesh) -> dict[str, np.ndarray]:
  """Per-example nll_bound, nfe and solved (len(positions),) of this process's examples at `positions`, in
  batches of batch_size. The last batch is padded with copies of its last example (one shape, one compile)
  and cut back."""
  batch_sharding = multihost.batch_sharding(mesh)
  results = {name: [np.zeros((0,))] for name in RESULT_NAMES}
  for start in range(0, len(positions), batch_size):
    batch = positions[start:start + batch_size]
    padded = multihost.pad_to_multiple(batch, batch_size)
    x = jax.device_put(model_inputs(examples, padded, seed), batch_sharding)
    indices = jax.device_put(examples.indices[padded].astype(np.int32), batch_sharding)
    for name, values in zip(RESULT_NAMES, jax.device_get(bound(params, x, indices))):
      results[name].append(np.asarray(values, np.float64)[:len(batch)])
  return {name: np.concatenate(values) for name, values in results.items()}


RESULT_NAMES = ("nll_bound", "nfe", "solved")


def rounds_folder(config, step: int, name: str) -> epath.Path:
  """workdir-relative folder of a bound's round files: <name>_rounds_<tag>, `name` the report's label and <tag>
  a hash of everything that decides the per-example results and the rounds' boundaries (not the batch size,
  which changes neither)."""
  settings = {field: config.eval[field] for field in ROUND_FIELDS}
  settings.update(step=step, dataset=config.data.dataset, **run_record.sampling_process(config))
  tag = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
  return epath.Path(f"{name}_rounds_{tag}")


# The eval fields the per-example bounds depend on (with the checkpoint step and the trained config).
ROUND_FIELDS = ("split", "num_examples", "seed", "divergence", "num_probes", "aux_distribution", "solver",
                "ode_rtol", "ode_atol", "max_steps", "round_size")
# Fields of ROUND_FIELDS that decide which round files are written, never a reported number (module docstring).
UNREPORTED_ROUND_FIELDS = ("round_size",)


def examples_label(config) -> str:
  """The examples' part of a report's name: eval.split for image data, 'points' for a user's point cloud
  ('npy:PATH'), 'generated' for fresh 2-D points."""
  dataset = config.data.dataset
  if dataset in image_sources.SOURCES:
    return config.eval.split
  return "points" if dataset.startswith("npy:") else "generated"


def report_settings(config, step: int, data_shape: tuple[int, ...]) -> dict[str, Any]:
  """What the NLL report of `config` from checkpoint `step` is a function of within a workdir, as JSON values;
  its report_files.canonical_hash is the name's (module docstring).

  'eval': ROUND_FIELDS but UNREPORTED_ROUND_FIELDS; 'checkpoint_step' and 'dataset'; 'examples' and
  'divergence_used', the name's readable parts, follow from those and `data_shape`.
  """
  values = json.loads(config.eval.to_json_best_effort())
  return {"eval": {field: values[field] for field in ROUND_FIELDS if field not in UNREPORTED_ROUND_FIELDS},
          "checkpoint_step": int(step), "dataset": config.data.dataset, "examples": examples_label(config),
          "divergence_used": likelihood.settings_from_config(config.eval, data_shape).divergence,
          **run_record.sampling_process(config)}


def report_label(settings: dict[str, Any]) -> str:
  """nll_<split>_<aux_distribution>_<divergence>_ckpt<step> of `report_settings`: the readable part that a
  report and its rounds folder share."""
  return (f"nll_{settings['examples']}_{settings['eval']['aux_distribution']}_{settings['divergence_used']}_"
          f"ckpt{settings['checkpoint_step']}")


def report_stem(settings: dict[str, Any]) -> str:
  """<report_label>_<canonical_hash> of `report_settings`: a report's file name less .json."""
  return f"{report_label(settings)}_{report_files.canonical_hash(settings)}"


def bound_in_rounds(bound, params, examples: Examples, settings: eval_settings.Settings, mesh: Mesh,
                    rounds_dir: epath.Path, num_coords: int) -> dict[str, np.ndarray]:
  """nll_bound, nfe and solved (num_total,) of every example, in index order, computed in rounds.

  Round r holds the examples with global index in [r R, (r + 1) R), R = eval.round_size, whichever process
  holds them; after each round the gathered results go to rounds_dir/round<r>.npz (process 0, atomically, with
  a checksum), and a round whose file is valid on every process is read instead of computed. A job killed at
  any moment therefore resumes at its first missing round, with any process count, and reports the same
  numbers as an uninterrupted one.
  """
  started, parts = time.time(), {name: [] for name in RESULT_NAMES}

  def compute(first: int, last: int) -> dict[str, np.ndarray]:
    positions = np.flatnonzero((examples.indices >= first) & (examples.indices < last))
    local = bound_examples(bound, params, examples, positions, settings.batch_size, settings.seed, mesh)
    return {"indices": np.arange(first, last), **gather(local, examples.indices[positions])}

  def after_round(found: dict[str, np.ndarray], round_index: int, num_rounds: int, last: int, computed: int) -> None:
    for name in RESULT_NAMES:
      parts[name].append(found[name])
    if jax.process_index() == 0:
      elapsed = time.time() - started
      eta = elapsed / computed * (num_rounds - round_index - 1) if computed else float("nan")
      mean, unit = in_reported_unit(np.nanmean(np.concatenate(parts["nll_bound"])), num_coords, examples.num_levels)
      console.say(f"eval: round {round_index + 1}/{num_rounds} ({last}/{examples.num_total} examples), mean bound "
                  f"{mean:.4f} {unit}, mean NFE "
                  f"{np.mean(np.concatenate(parts['nfe'])):.0f}, {console.duration(elapsed)} elapsed, ETA "
                  f"{console.duration(eta) if np.isfinite(eta) else '?'}")

  round_files.in_rounds(rounds_dir, "round", examples.num_total, settings.round_size, ("indices",) + RESULT_NAMES,
                        compute, after_round)
  return {name: np.concatenate(values) for name, values in parts.items()}


def evaluate(config, workdir: str, settings: eval_settings.Settings | None = None) -> str:
  """Bounds the NLL of the examples of config.eval and writes workdir/eval/<report_stem>.json; returns its
  path."""
  started = time.time()
  # config.eval checked (made here when None); the reports record config.eval itself
  checked = eval_settings.settings_from_config(config.eval if settings is None else settings)
  data_shape = input_pipeline.data_shape(config.data)
  num_coords = math.prod(data_shape)
  ode = checked.ode_settings(data_shape)
  sde = sde_lib.from_config(config.sde)
  entropy = float(likelihood.auxiliary_entropy(sde, num_coords, checked.aux_distribution))  # checks q
  if jax.process_index() == 0:  # an unwritable workdir is found before the bound is computed, not after
    checkpoints.check_workdir(trained_model.workdir_path(workdir) / "eval", 1 << 20, "the report")
  mesh = multihost.make_mesh(jax.local_devices())
  if checked.batch_size % mesh.size:
    raise ValueError(f"eval.batch_size = {checked.batch_size} must be divisible by this host's {mesh.size} "
                     "devices.")
  examples = load_examples(config, checked)
  if examples.num_levels is not None and not config.data.dequantize:
    logging.warning("The model was trained with data.dequantize = False (pixel / 255) and is bounded on dequantised "
                    "data ((pixel + U) / 256); the bound is valid but looser than for a model trained dequantised.")

  params, step = trained_model.load_ema_params(config, workdir, data_shape, checked.chosen_step)
  params = jax.device_put(jax.device_get(params), NamedSharding(mesh, PartitionSpec()))  # this host's devices
  bound = make_batch_bound(config, data_shape, checked)
  recorded = report_settings(config, step, data_shape)
  name = report_stem(recorded)
  directory = trained_model.workdir_path(workdir) / "eval"
  rounds_dir = directory / rounds_folder(config, step, report_label(recorded))
  gathered = bound_in_rounds(bound, params, examples, checked, mesh, rounds_dir, num_coords)
  nll_bound, nfe, solved = gathered["nll_bound"], gathered["nfe"], gathered["solved"].astype(bool)
  failed = ~solved | ~np.isfinite(nll_bound)
  if failed.any():
    raise FloatingPointError(
        f"{failed.sum()} of {len(nll_bound)} examples have no finite bound (the first is example "
        f"{int(np.argmax(failed))}); no report was written. Raise eval.max_steps (now {ode.max_steps}), loosen "
        f"eval.ode_rtol / eval.ode_atol (now {ode.rtol} / {ode.atol}), or raise sde.eps.")

  report = {
      "quantity": ("Upper bound on -log p_model(x) per example, p_model the x-marginal of the probability-flow "
                   "ODE's density at t = eps (data placed at eps, auxiliaries drawn from q, H[q] subtracted); "
                   "see hold_jax/evaluation/likelihood.py. bits_per_dim adds log2(num_levels / 2) for [-1, 1] "
                   "scaling."),
      **summarize(nll_bound, num_coords, examples.num_levels),
      "num_examples": int(len(nll_bound)),
      "num_dims": num_coords,
      "num_levels": examples.num_levels,
      "examples": examples.description,
      "aux_entropy_nats": entropy,
      "nfe_mean": float(np.mean(nfe)),
      "nfe_max": int(np.max(nfe)),
      "checkpoint_step": step,
      "rounds": rounds_dir.name,
      "hashed_settings": recorded,
      "seconds": round(time.time() - started, 1),
      "settings": {**config.eval.to_dict(), "divergence_used": ode.divergence,
                   "num_probes_used": ode.num_probes if ode.divergence == "hutchinson" else num_coords,
                   "sde": dataclasses.asdict(sde), "parametrization": config.loss.parametrization,
                   "dataset": config.data.dataset},
  }
  path = directory / f"{name}.json"
  if jax.process_index() == 0:
    report_files.write_json_atomic(path, report)
    logging.info("eval: %s", format_report(report, str(path)))  # main prints it on the console
  return str(path)

"""The Python API: a trained model sampled, bounded or evaluated in a few lines.

  import hold_jax
  model = hold_jax.load("digits")            # a pretrained model (hold_jax.pretrained_models()), or a workdir:
  model = hold_jax.load("runs/digits")       # local or gs://, only read
  x = model.sample(64)                       # (64, 8, 8, 1) in [-1, 1], with the sampler of model.config
  x = model.sample(64, method="lie_trotter", num_steps=200, seed=1)   # any config.sampling field
  model.plot(x)                              # a matplotlib figure: an image grid, or points over the data
  model.nll(levels)                          # the NLL bound of given data (images: integer pixel levels)
  model.evaluate(metrics=("fid",), num_samples=1000)   # --mode=eval's reports, with their baselines

A model is what a workdir decides (its config.json: the process, the network, the data) and a checkpoint's EMA
parameters; the keywords of each call are the config's sampling or eval fields, checked as the command line
checks them. Every call goes through the functions the command line runs (run_record.for_inference,
trained_model.load_ema_params, sample_job.make_drawer, nll_rounds.make_batch_bound, eval_job.run), so the same settings
give the same samples and numbers here and with `hold-jax --mode=sample` / `--mode=eval`.

A denoiser (loss.parametrization = 'denoiser') samples with any process: `process='vp' | 'cld' | 'hold'`
(sde.STOCK_PROCESSES) at load, or any sde.* field through `overrides`.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec

from hold_jax import field_checks
from hold_jax import multihost
from hold_jax import plots
from hold_jax import pretrained
from hold_jax.cli import config_checks
from hold_jax.data import image_data
from hold_jax.data import image_sources
from hold_jax.data import input_pipeline
from hold_jax.evaluation import eval_job
from hold_jax.evaluation import nll_rounds
from hold_jax.process import sde as sde_lib
from hold_jax.sampling import sample_job as sample_lib
from hold_jax.workdir import run_record
from hold_jax.workdir import trained_model

to_pixels = image_data.to_pixels  # model-space images -> uint8 (for image files and viewers)


def pretrained_models() -> dict[str, dict[str, Any]]:
  """{name: the figures measured on it} of the models shipped with the package (hold_jax/pretrained)."""
  return {name: pretrained.figures(name) for name in pretrained.names()}


def summary(reports: list[dict[str, Any]]) -> str:
  """The reports of Model.evaluate as the command line prints them: each metric to 3-4 significant digits
  beside its baselines, then the report's path (eval_job.summary)."""
  return eval_job.summary([report["path"] for report in reports])


def with_fields(config: ml_collections.ConfigDict, fields: dict[str, Any]) -> ml_collections.ConfigDict:
  """A copy of config with the dotted `fields` ('sampling.num_steps': 50) replaced (run_record.set_field: a
  ValueError names a field the config does not have)."""
  config = ml_collections.ConfigDict(config.to_dict())
  for field, value in fields.items():
    run_record.set_field(config, field, value)
  return config


@dataclasses.dataclass(frozen=True)
class Model:
  """A workdir's network at one checkpoint, with the config that samples and evaluates it.

  source: what `load` was given (a pretrained name or a workdir); workdir: the workdir read (a pretrained
  model's is a cache made by pretrained.workdir); config: the inference config (trained fields from config.json,
  run settings as loaded); params: the EMA parameters of checkpoint `step`; data_shape: one example's shape,
  (D,) for points, (H, W, C) for images.
  """

  source: str
  workdir: str
  config: ml_collections.ConfigDict
  params: Any
  step: int
  data_shape: tuple[int, ...]
  _drawers: dict[str, Callable] = dataclasses.field(default_factory=dict, repr=False, compare=False)

  @property
  def is_images(self) -> bool:
    return len(self.data_shape) == 3

  def configured(self, **groups: dict[str, Any]) -> ml_collections.ConfigDict:
    """The model's config with fields of the named groups replaced (configured(sampling={'num_steps': 50})),
    checked as the command line checks a config (config_checks.check): bad values are one ValueError naming the
    field."""
    fields = {f"{group}.{name}": value for group, values in groups.items() for name, value in values.items()}
    config = with_fields(self.config, fields)
    config_checks.check(config)
    return config

  def sample(self, num_samples: int, *, seed: int | None = None, **sampling: Any) -> np.ndarray:
    """(num_samples, *data_shape) float32 samples in model space ([-1, 1] for images: `to_pixels` makes them
    uint8), drawn with config.sampling and the given fields replaced (method, num_steps, grid, stochasticity...;
    configs/default.py lists them). Sample i is drawn from fold_in(PRNGKey(seed), i) (seed: config.seed unless
    given), as `--mode=sample` draws it, whatever the batch size."""
    if not (isinstance(num_samples, int) and num_samples >= 1):
      raise ValueError(f"num_samples = {num_samples!r}: give an integer >= 1.")
    sampling.setdefault("batch_size", min(int(self.config.sampling.batch_size), num_samples))
    config = self.configured(sampling={**sampling, "num_samples": num_samples})
    if seed is not None:
      field_checks.require_seed("seed", seed)
    key = json.dumps({"sampling": config.sampling.to_dict(), "sde": config.sde.to_dict()}, sort_keys=True,
                     default=str)
    if key not in self._drawers:  # one compile per sampler and batch size, not per call or seed
      self._drawers[key] = sample_lib.make_drawer(config, self.data_shape)
    return self._drawers[key](self.params, num_samples, config.seed if seed is None else seed)

  def plot(self, samples, title: str | None = None):
    """A matplotlib figure of `samples` (plots.samples_figure): images as one grid with gaps; 2-D points over a
    faint sample of the data set; more dimensions as a corner plot, also over the data."""
    samples = np.asarray(samples)
    if title is None:
      title = f"{self.source}: {len(samples)} samples, order {self.config.sde.order}, step {self.step}"
    return plots.samples_figure(samples, input_pipeline.reference_points(self.config.data), title, pyplot=True)

  def nll(self, data, **eval_settings: Any) -> dict[str, Any]:
    """The NLL bound of each example of `data` (docs/likelihood.md), as `--mode=eval` computes it.

    data: points (N, D) float, or images (N, H, W, C) of integer pixel levels in [0, num_levels) (256 for 8-bit
      images, 17 for the digits), dequantised with per-example noise as the evaluation job does.
    eval_settings: config.eval fields of the bound (solver, ode_rtol, divergence, aux_distribution, seed,
      batch_size...).
    Returns {'nll_bound_nats': (N,) per example, 'nfe': (N,), and the summary of the job's report:
    nll_bound_nats (the mean), its stderr, per dimension, and bits_per_dim for images}. Example k's auxiliaries
    and probes come from (eval.seed, k), as in the job.
    """
    config = self.configured(eval=eval_settings)
    values, num_levels = self._examples(data)
    examples = nll_rounds.Examples(values, np.arange(len(values)), len(values), num_levels, "given data")
    bound = nll_rounds.make_batch_bound(config, self.data_shape, config.eval)
    mesh = multihost.make_mesh(jax.local_devices())
    batch_size = -(-min(int(config.eval.batch_size), len(values)) // mesh.size) * mesh.size
    params = jax.device_put(jax.device_get(self.params), NamedSharding(mesh, PartitionSpec()))
    results = nll_rounds.bound_examples(bound, params, examples, np.arange(len(values)), batch_size,
                                      int(config.eval.seed), mesh)
    failed = (results["solved"] == 0) | ~np.isfinite(results["nll_bound"])
    if failed.any():
      raise FloatingPointError(f"{failed.sum()} of {len(values)} examples have no finite bound (the first is example "
                               f"{int(np.argmax(failed))}): raise max_steps, loosen ode_rtol / ode_atol, or raise "
                               "sde.eps.")
    return {**nll_rounds.summarize(results["nll_bound"], int(np.prod(self.data_shape)), num_levels),
            "nll_bound_nats_per_example": results["nll_bound"], "nfe": results["nfe"]}

  def _examples(self, data) -> tuple[np.ndarray, int | None]:
    """(values, num_levels) of `nll`'s data: float32 points, or uint8 levels of images with their count."""
    data = np.asarray(data)
    if data.ndim != 1 + len(self.data_shape) or data.shape[1:] != self.data_shape or not len(data):
      raise ValueError(f"data of shape {data.shape}: this model's examples are {self.data_shape}, so give "
                       f"(N, {', '.join(map(str, self.data_shape))}) with N >= 1.")
    if not self.is_images:
      return data.astype(np.float32), None
    num_levels = image_sources.SOURCES[self.config.data.dataset].num_levels
    if not np.issubdtype(data.dtype, np.integer) or data.min() < 0 or data.max() >= num_levels:
      raise ValueError(f"image data must be integer pixel levels in [0, {num_levels}) for "
                       f"{self.config.data.dataset!r} (got {data.dtype}, range [{data.min()}, {data.max()}]): the "
                       "bound in bits/dim is of the discrete images, dequantised here.")
    return data.astype(np.uint8), num_levels

  def evaluate(self, **eval_settings: Any) -> list[dict[str, Any]]:
    """Runs `--mode=eval` on this model with config.eval's fields replaced (metrics, num_samples, num_repeats,
    sampler_sweep, num_examples...) and returns its reports (each with its 'path'): they are written into
    workdir/eval, resumable, and named by their settings as the job's are (hold_jax/evaluation/eval_job.py)."""
    config = self.configured(eval=eval_settings)
    if config.eval.get("checkpoint_step", -1) == -1:
      config.eval.checkpoint_step = self.step  # the step this model holds, even if training saved a newer one
    return [{**json.loads(epath.Path(path).read_text()), "path": path}
            for path in eval_job.run(config, self.workdir)]


def load(source: str, *, step: int | None = None, process: str | None = None,
         overrides: dict[str, Any] | None = None) -> Model:
  """The model of a pretrained name (pretrained_models()) or of a workdir (a path, local or gs://).

  step: the checkpoint to read (None: the newest readable one). process: 'vp', 'cld' or 'hold' (the stock
  processes of sde.STOCK_PROCESSES) for a denoiser, which samples with any (a pretrained name chooses one).
  overrides: dotted config fields that replace run settings ({'sampling.num_steps': 50}); a trained field that
  differs from the workdir's config.json is a ValueError (run_record.RecordMismatch), as on the command line.
  """
  if epath.Path(source).exists() or "://" in source:
    workdir, default_process = str(source), None
  else:
    workdir, default_process = pretrained.workdir(source), pretrained.resolve(source)[1]
  process = process or default_process
  path = trained_model.workdir_path(workdir)
  recorded = run_record.load_config(path)
  fields = dict(sde_lib.stock_process_fields(process)) if process else {}
  if process and recorded.loss.parametrization != "denoiser":
    raise ValueError(f"process = {process!r}: {workdir}'s network is '{recorded.loss.parametrization}', a score of "
                     "its own process; only a denoiser (loss.parametrization = 'denoiser') samples with another.")
  fields.update(overrides or {})
  config = run_record.for_inference(path, with_fields(recorded, fields), fields)
  config_checks.check(config)
  data_shape = tuple(input_pipeline.data_shape(config.data))
  params, found_step = trained_model.load_ema_params(config, workdir, data_shape, step)
  return Model(source=str(source), workdir=workdir, config=config, params=params, step=found_step,
               data_shape=data_shape)

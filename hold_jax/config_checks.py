"""Checks a whole config before any work starts, so a bad value fails in seconds with its field named."""
from __future__ import annotations

from hold_jax import field_checks
from hold_jax import input_pipeline
from hold_jax import likelihood
from hold_jax import losses
from hold_jax import models
from hold_jax import quality
from hold_jax import sampling
from hold_jax import sde as sde_lib
from hold_jax import train

JOBS = ("train", "exact_score_demo")


def check(config) -> None:
  """Raises ValueError naming the first bad field of `config`.

  Every numeric test is written so that NaN fails it (`not (x >= 1)`, not `x < 1`): NaN compares False with
  everything, so a negative test would let it through to fail steps later without a field named.
  """
  if config.get("job") not in JOBS:
    raise ValueError(f"job = {config.get('job')!r} is not allowed: it must be one of {JOBS}.")
  sde = sde_lib.from_config(config.sde)
  sampling.check_settings(sde, config.sampling)
  for field in ("num_samples", "batch_size"):
    if not config.sampling[field] >= 1:
      raise ValueError(f"sampling.{field} = {config.sampling[field]} must be >= 1.")
  if "eval" in config:
    check_eval(config.eval)
    if set(config.eval.get("metrics", ())) & set(quality.IMAGE_METRICS) and "data" in config:
      field_checks.require(len(input_pipeline.data_shape(config.data)) == 3, "eval.metrics", config.eval.metrics,
                           f"('nll',) for data.dataset = {config.data.dataset!r}: FID, KID and IS need images")
  if config.job != "train":
    return
  losses.make_loss_fn(sde, lambda params, u, t: u[:, -1], config.loss)
  for field in ("num_steps", "batch_size", "log_every", "checkpoint_every"):
    if not config.training[field] >= 1:
      raise ValueError(f"training.{field} = {config.training[field]} must be >= 1.")
  if not (field_checks.is_finite(config.ema.decay) and 0 <= config.ema.decay < 1):
    raise ValueError(f"ema.decay = {config.ema.decay} must lie in [0, 1).")
  if not config.checkpoint.keep >= 1:
    raise ValueError(f"checkpoint.keep = {config.checkpoint.keep} must be >= 1.")
  input_pipeline.check_global_batch(config.training.batch_size)
  # create_model runs models.check_config; the data itself loads in train.
  models.create_model(config.model, input_pipeline.data_shape(config.data))
  check_optim(config.optim)
  train.make_optimizer(config.optim, config.training.num_steps)


def check_optim(optim_config) -> None:
  """The numbers of `config.optim` (configs/toy2d.py) that optax takes without complaint and turns into NaN
  parameters within steps (a NaN or inf learning rate, beta2 = 1: Adam's bias correction divides by 1 - beta2^t)
  or silently ignores (a NaN grad_clip fails `grad_clip > 0`, which switches clipping off)."""
  field_checks.require_positive("optim.learning_rate", optim_config.learning_rate)
  field_checks.require_unit_interval("optim.beta1", optim_config.beta1)
  field_checks.require_unit_interval("optim.beta2", optim_config.beta2)
  field_checks.require_positive("optim.eps", optim_config.eps)
  field_checks.require(field_checks.is_finite(optim_config.grad_clip), "optim.grad_clip", optim_config.grad_clip,
                       "a finite number (<= 0 for no clipping)")
  field_checks.require_int("optim.warmup_steps", optim_config.warmup_steps, 0)


def check_eval(eval_config) -> None:
  """The fields of `config.eval` (configs/default.py); the data-dependent ones are checked by evaluate."""
  if eval_config.divergence != "auto":
    likelihood.ODESettings(divergence=eval_config.divergence)
  likelihood.ODESettings(num_probes=eval_config.num_probes, solver=eval_config.solver,
                         rtol=eval_config.ode_rtol, atol=eval_config.ode_atol, max_steps=eval_config.max_steps)
  if eval_config.aux_distribution not in likelihood.AUX_DISTRIBUTIONS:
    raise ValueError(f"eval.aux_distribution = {eval_config.aux_distribution!r} is not allowed: it must be one "
                     f"of {likelihood.AUX_DISTRIBUTIONS}.")
  if not eval_config.batch_size >= 1:
    raise ValueError(f"eval.batch_size = {eval_config.batch_size} must be >= 1.")
  if not (eval_config.num_examples >= 1 or eval_config.num_examples == -1):
    raise ValueError(f"eval.num_examples = {eval_config.num_examples} must be >= 1, or -1 for a whole split.")
  if "metrics" in eval_config:
    check_quality(eval_config)


METRICS = ("nll",) + quality.IMAGE_METRICS


def check_quality(eval_config) -> None:
  """The sample-quality fields of `config.eval` (hold_jax/quality.py), and the checkpoint every metric reads."""
  metrics = eval_config.metrics
  field_checks.require(isinstance(metrics, (tuple, list)) and len(metrics) > 0 and
                       all(name in METRICS for name in metrics), "eval.metrics", metrics,
                       f"a non-empty tuple of names from {METRICS}, e.g. --config.eval.metrics=\"('fid', 'kid')\"")
  field_checks.require(eval_config.feature_network in quality.FEATURE_NETWORKS, "eval.feature_network",
                       eval_config.feature_network, f"one of {quality.FEATURE_NETWORKS}")
  field_checks.require(eval_config.resize in quality.RESIZE_MODES, "eval.resize", eval_config.resize,
                       f"one of {quality.RESIZE_MODES}")
  for field, minimum in (("num_samples", 1), ("round_size", 1), ("num_repeats", 1), ("feature_batch_size", 1),
                         ("kid_subset_size", 2), ("is_splits", 1)):
    field_checks.require_int(f"eval.{field}", eval_config[field], minimum)
  # -1 is the newest readable checkpoint; whether a chosen step exists is known only once the workdir is read.
  field_checks.require_int("eval.checkpoint_step", eval_config.get("checkpoint_step", -1), -1)
  quality.parse_sampler_sweep(eval_config.get("sampler_sweep", ()))

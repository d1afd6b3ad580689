"""Checks a whole config before any work starts, so a bad value fails in seconds with its field named."""
from __future__ import annotations

from hold_jax import input_pipeline
from hold_jax import likelihood
from hold_jax import losses
from hold_jax import models
from hold_jax import sampling
from hold_jax import sde as sde_lib
from hold_jax import train

JOBS = ("train", "exact_score_demo")


def check(config) -> None:
  """Raises ValueError naming the first bad field of `config`."""
  if config.get("job") not in JOBS:
    raise ValueError(f"job = {config.get('job')!r} is not allowed: it must be one of {JOBS}.")
  sde = sde_lib.from_config(config.sde)
  sampling.check_settings(sde, config.sampling)
  for field in ("num_samples", "batch_size"):
    if config.sampling[field] < 1:
      raise ValueError(f"sampling.{field} = {config.sampling[field]} must be >= 1.")
  if "eval" in config:
    check_eval(config.eval)
  if config.job != "train":
    return
  losses.make_loss_fn(sde, lambda params, u, t: u[:, -1], config.loss)
  for field in ("num_steps", "batch_size", "log_every", "checkpoint_every"):
    if config.training[field] < 1:
      raise ValueError(f"training.{field} = {config.training[field]} must be >= 1.")
  if config.ema.decay < 0 or config.ema.decay >= 1:
    raise ValueError(f"ema.decay = {config.ema.decay} must lie in [0, 1).")
  if config.checkpoint.keep < 1:
    raise ValueError(f"checkpoint.keep = {config.checkpoint.keep} must be >= 1.")
  input_pipeline.check_global_batch(config.training.batch_size)
  models.create_model(config.model, input_pipeline.data_shape(config.data))  # the data itself loads in train
  train.make_optimizer(config.optim, config.training.num_steps)


def check_eval(eval_config) -> None:
  """The fields of `config.eval` (configs/default.py); the data-dependent ones are checked by evaluate."""
  if eval_config.divergence != "auto":
    likelihood.ODESettings(divergence=eval_config.divergence)
  likelihood.ODESettings(num_probes=eval_config.num_probes, solver=eval_config.solver,
                         rtol=eval_config.ode_rtol, atol=eval_config.ode_atol, max_steps=eval_config.max_steps)
  if eval_config.aux_distribution not in likelihood.AUX_DISTRIBUTIONS:
    raise ValueError(f"eval.aux_distribution = {eval_config.aux_distribution!r} is not allowed: it must be one "
                     f"of {likelihood.AUX_DISTRIBUTIONS}.")
  if eval_config.batch_size < 1:
    raise ValueError(f"eval.batch_size = {eval_config.batch_size} must be >= 1.")
  if eval_config.num_examples < 1 and eval_config.num_examples != -1:
    raise ValueError(f"eval.num_examples = {eval_config.num_examples} must be >= 1, or -1 for a whole split.")

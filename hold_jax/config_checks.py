"""Checks a whole config before any work starts, so a bad value fails in seconds with its field named."""
from __future__ import annotations

from hold_jax import input_pipeline
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
  sampling.time_grid(sde, config.sampling.num_steps, config.sampling.grid, config.sampling.rho)
  if config.sampling.method not in sampling.METHODS:
    raise ValueError(f"sampling.method = {config.sampling.method!r} is not allowed: it must be one of "
                     f"{sampling.METHODS}.")
  for field in ("num_samples", "batch_size"):
    if config.sampling[field] < 1:
      raise ValueError(f"sampling.{field} = {config.sampling[field]} must be >= 1.")
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

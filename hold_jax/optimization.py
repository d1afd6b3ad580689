"""The optimizer and the parameter average: Adam after global-norm clipping, with a linear warm-up into a
constant or cosine learning rate (optax's schedules), and the EMA of the parameters that samples are drawn
with. Fields: `config.optim` and `config.ema` (hold_jax/configs/default.py)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from hold_jax import field_checks

SCHEDULES = ("constant", "cosine")


def check_settings(optim_config, ema_config) -> None:
  """The numbers optax takes without complaint and turns into NaN parameters within steps (a NaN or inf
  learning rate; beta2 = 1, where Adam's bias correction divides by 1 - beta2^t) or silently ignores (a NaN
  grad_clip fails `grad_clip > 0`, which switches clipping off); the schedule's name; the EMA decay."""
  field_checks.require_positive("optim.learning_rate", optim_config.learning_rate)
  field_checks.require_unit_interval("optim.beta1", optim_config.beta1)
  field_checks.require_unit_interval("optim.beta2", optim_config.beta2)
  field_checks.require_positive("optim.eps", optim_config.eps)
  field_checks.require(field_checks.is_finite(optim_config.grad_clip), "optim.grad_clip", optim_config.grad_clip,
                       "a finite number (<= 0 for no clipping)")
  field_checks.require_int("optim.warmup_steps", optim_config.warmup_steps, 0)
  field_checks.require(optim_config.schedule in SCHEDULES, "optim.schedule", optim_config.schedule,
                       f"one of {SCHEDULES}")
  field_checks.require_unit_interval("ema.decay", ema_config.decay)


def learning_rate_schedule(optim_config, num_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to optim.learning_rate over optim.warmup_steps, then optim.schedule: 'constant', or
  'cosine' decay to 0 at num_steps (the training length)."""
  warmup = max(int(optim_config.warmup_steps), 1)
  if optim_config.schedule == "constant":
    return optax.warmup_constant_schedule(0.0, optim_config.learning_rate, warmup)
  if optim_config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, optim_config.learning_rate, warmup, max(num_steps, warmup + 1))
  raise ValueError(f"optim.schedule = {optim_config.schedule!r} is not allowed: it must be one of {SCHEDULES}.")


def make_optimizer(optim_config, num_steps: int) -> optax.GradientTransformation:
  """Adam with warm-up, after clipping the global gradient norm to optim.grad_clip (<= 0: no clipping)."""
  adam = optax.adam(learning_rate_schedule(optim_config, num_steps), b1=optim_config.beta1, b2=optim_config.beta2,
                    eps=optim_config.eps)
  if optim_config.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(optim_config.grad_clip), adam)
  return adam


def ema_decay(step: jax.Array, decay: float, warmup: bool) -> jax.Array:
  """EMA decay at `step`: min(decay, (1 + step) / (10 + step)) with warm-up, so early averages forget init."""
  if not warmup:
    return jnp.asarray(decay, jnp.float32)
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))

"""Checks a whole config before any work starts, so a bad value fails in seconds with its field named."""
from __future__ import annotations

from hold_jax import evaluate
from hold_jax import field_checks
from hold_jax import input_pipeline
from hold_jax import losses
from hold_jax import models
from hold_jax import quality
from hold_jax import sampling
from hold_jax import sde as sde_lib
from hold_jax import train

TRAINING_GROUPS = ("data", "model", "training")


def check(config) -> None:
  """Raises ValueError naming the first bad field of `config`, a config that trains a network.

  Every numeric test is written so that NaN fails it (`not (x >= 1)`, not `x < 1`): NaN compares False with
  everything, so a negative test would let it through to fail steps later without a field named.
  """
  missing = [group for group in TRAINING_GROUPS if group not in config]
  if missing:
    raise ValueError(f"the config has no {', '.join(missing)}: it does not train a network. The exact-score demo "
                     "(configs/mixture_demo.py) runs with `python -m hold_jax.demo --config configs/mixture_demo.py "
                     "--workdir DIR`; a training config starts from configs/toy2d.py or configs/images.py.")
  sampling.check_settings(sde_lib.from_config(config.sde), config.sampling)
  if "eval" in config:
    check_eval(config.eval)
    if set(config.eval.get("metrics", ())) & set(quality.IMAGE_METRICS):
      quality.image_shape(config.eval.metrics, config.data)
  losses.check_settings(config.loss)
  check_training(config)
  input_pipeline.check_global_batch(config.training.batch_size)
  # create_model runs models.check_config; the data itself loads in train.
  models.create_model(config.model, input_pipeline.data_shape(config.data))
  check_optim(config.optim)
  train.make_optimizer(config.optim, config.training.num_steps)


def check_training(config) -> None:
  """The loop's own fields (hold_jax/train.py reads them): config.training's counts, ema.decay, checkpoint.keep."""
  for field in ("num_steps", "batch_size", "log_every", "checkpoint_every"):
    field_checks.require_int(f"training.{field}", config.training[field], 1)
  field_checks.require_unit_interval("ema.decay", config.ema.decay)
  field_checks.require_int("checkpoint.keep", config.checkpoint.keep, 1)


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
  """The fields of `config.eval` (configs/default.py), each by the module that reads it; the data-dependent
  ones are checked by evaluate."""
  evaluate.check_settings(eval_config)
  if "metrics" in eval_config:
    quality.check_settings(eval_config)

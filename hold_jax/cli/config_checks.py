"""Checks a whole config before any work starts, so a bad value fails in seconds with its field named."""
from __future__ import annotations

from hold_jax import field_checks
from hold_jax import models
from hold_jax.data import input_pipeline
from hold_jax.evaluation import eval_settings
from hold_jax.evaluation import image_quality
from hold_jax.evaluation import point_quality
from hold_jax.process import sde as sde_lib
from hold_jax.sampling import samplers
from hold_jax.training import loop_settings
from hold_jax.training import losses
from hold_jax.training import optimization
from hold_jax.workdir import checkpoints

TRAINING_GROUPS = ("data", "model", "training")


def check(config) -> None:
  """Raises ValueError naming the first bad field of `config`, a config that trains a network.

  Every numeric test is written so that NaN fails it (`not (x >= 1)`, not `x < 1`): NaN compares False with
  everything, so a negative test would let it through to fail steps later without a field named.
  """
  missing = [group for group in TRAINING_GROUPS if group not in config]
  if missing:
    raise ValueError(f"the config has no {', '.join(missing)}: it does not train a network. The exact-score demo "
                     "(configs/mixture_demo.py) runs with `python -m hold_jax.cli.demo --config "
                     "configs/mixture_demo.py --workdir DIR`; a training config starts from configs/toy2d.py or "
                     "configs/images.py.")
  if "seed" in config:
    field_checks.require_seed("seed", config.seed)
  data = input_pipeline.settings_from_config(config.data)
  samplers.settings_from_config(sde_lib.from_config(config.sde), config.sampling)
  if "eval" in config:
    metrics = set(check_eval(config.eval).metrics)
    if metrics & set(eval_settings.IMAGE_METRICS):
      image_quality.image_shape(config.eval.metrics, data)
    if metrics & set(eval_settings.POINT_METRICS):
      point_quality.point_shape(config.eval.metrics, data)
  losses.settings_from_config(config.loss)
  if config.loss.parametrization == "denoiser":
    field_checks.require(config.model.get("embedding", "fourier") == "fourier", "model.embedding",
                         config.model.get("embedding"), "'fourier' with loss.parametrization = 'denoiser': the "
                         "denoiser is conditioned on sigma_eff in (0, inf), embedded through its log; 'sinusoidal' "
                         "embeds 1000 t for times in [0, 1]")
  check_training(config)
  input_pipeline.check_global_batch(config.training.batch_size)
  # create_model runs models.check_config; the data itself loads in train.
  models.create_model(config.model, input_pipeline.data_shape(data))


def check_eval(eval_config) -> eval_settings.Settings:
  """config.eval checked into the record the metrics take (the data-dependent fields are checked by each metric
  once the data are known)."""
  return eval_settings.settings_from_config(eval_config)


def check_training(config) -> None:
  """The training loop's groups, each by the settings record the loop takes: config.training, config.checkpoint,
  config.optim and config.ema."""
  loop_settings.settings_from_config(config.training)
  checkpoints.settings_from_config(config.checkpoint)
  optimization.settings_from_config(config.optim)
  optimization.ema_settings_from_config(config.ema)

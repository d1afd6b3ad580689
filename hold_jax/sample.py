"""`--mode=sample`: draw samples from the latest EMA parameters of a workdir and write them to disk."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from hold_jax import input_pipeline
from hold_jax import models
from hold_jax import plots
from hold_jax import sampling
from hold_jax import sde as sde_lib
from hold_jax import train


def draw(config, params, data_shape: tuple[int, ...]) -> np.ndarray:
  """config.sampling.num_samples samples (N, *data_shape), in batches of config.sampling.batch_size."""
  sde = sde_lib.from_config(config.sde)
  model = models.create_model(config.model, data_shape)
  score_fn = train.make_score_fn(sde, model, config.loss.parametrization)
  sampler = sampling.make_sampler(sde, score_fn, data_shape, config.sampling)
  rng = jax.random.PRNGKey(config.seed)
  num, batch = config.sampling.num_samples, config.sampling.batch_size
  chunks = [np.asarray(sampler(params, rng, jnp.arange(start, min(start + batch, num))))
            for start in range(0, num, batch)]
  return np.concatenate(chunks)


def sample_to_disk(config, workdir: str) -> str:
  """Writes workdir/samples/<name>.npz (array x plus the settings) and, for 2-D data, <name>.png."""
  data_shape = input_pipeline.create_stream(config.data, config.training.batch_size, config.seed).data_shape
  params, step = train.load_ema_params(config, workdir, data_shape)
  samples = draw(config, params, data_shape)
  settings = config.sampling
  bad = ~np.isfinite(samples.reshape(len(samples), -1)).all(axis=1)
  if bad.any():
    raise FloatingPointError(
        f"{bad.sum()} of {len(samples)} samples are not finite ({settings.method}, {settings.num_steps} steps, "
        f"{settings.grid} grid); nothing was written. The explicit score step is stiff near sde.eps: raise "
        "sampling.num_steps, use sampling.grid = 'quadratic', or raise sde.eps.")
  name = f"{settings.method}_{settings.grid}_{settings.num_steps}steps_ckpt{step}"
  directory = os.path.join(workdir, "samples")
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, name + ".npz")
  np.savez(path, x=samples, method=settings.method, num_steps=settings.num_steps, grid=settings.grid,
           denoise=settings.denoise, seed=config.seed, checkpoint_step=step)
  if data_shape == (2,):
    plots.scatter(os.path.join(directory, name + ".png"), samples,
                  f"{config.data.dataset}: {settings.method}, {settings.num_steps} steps, step {step}")
  return path

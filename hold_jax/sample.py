"""`--mode=sample`: draw samples from the latest EMA parameters of a workdir and write them to disk; image
grids during training (`grid_callback`)."""
from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from hold_jax import checkpoints
from hold_jax import image_data
from hold_jax import input_pipeline
from hold_jax import models
from hold_jax import plots
from hold_jax import sampling
from hold_jax import sde as sde_lib
from hold_jax import train


def make_drawer(config, data_shape: tuple[int, ...], return_nfe: bool = False) -> Callable[[Any, int], Any]:
  """draw(params, num_samples) -> (num_samples, *data_shape) samples of `config.sampling`, in batches of
  config.sampling.batch_size; sample i always has the seed fold_in(PRNGKey(config.seed), i).

  With return_nfe, draw returns (samples, nfe): the network evaluations of a batch, the largest over the
  batches (they differ only for the adaptive ODE solver).
  """
  sde = sde_lib.from_config(config.sde)
  model = models.create_model(config.model, data_shape)
  score_fn = train.make_score_fn(sde, model, config.loss.parametrization)
  sampler = sampling.make_sampler(sde, score_fn, data_shape, config.sampling, return_nfe=True)
  rng = jax.random.PRNGKey(config.seed)
  batch = config.sampling.batch_size

  def draw_samples(params, num_samples: int):
    results = [sampler(params, rng, jnp.arange(start, min(start + batch, num_samples)))
               for start in range(0, num_samples, batch)]
    samples = np.concatenate([np.asarray(result.x) for result in results])
    return (samples, max(int(result.nfe) for result in results)) if return_nfe else samples

  return draw_samples


def draw(config, params, data_shape: tuple[int, ...], return_nfe: bool = False):
  """config.sampling.num_samples samples (N, *data_shape), and with return_nfe the NFE of a batch."""
  return make_drawer(config, data_shape, return_nfe)(params, config.sampling.num_samples)


def image_grid(samples: np.ndarray, max_images: int = 64) -> np.ndarray:
  """The first max_images model-space images (N, H, W, C) as one uint8 grid image (for PNGs and TensorBoard)."""
  return plots.tile(image_data.to_pixels(samples[:max_images]))


def grid_callback(config, workdir: str, data_shape: tuple[int, ...]) -> train.Callback | None:
  """A train callback that, for image data, samples config.training.num_grid_samples images from the EMA
  parameters every training.sample_every steps and at the end, and writes them as one grid to TensorBoard
  ('samples') and to workdir/samples/grid_step<N>.png (process 0). None for non-image data or sample_every 0."""
  every = config.training.get("sample_every", 0)
  if len(data_shape) != 3 or not every:
    return None
  draw_samples = make_drawer(config, data_shape)
  num = config.training.num_grid_samples

  def callback(step: int, state: train.TrainState, writer) -> None:
    if (step % every and step != config.training.num_steps) or jax.process_index() != 0:
      return
    samples = draw_samples(jax.device_get(state.ema_params), num)
    if not np.isfinite(samples).all():
      logging.warning("step %d: some grid samples are not finite; grid not written.", step)
      return
    grid = image_grid(samples, num)
    writer.write_images(step, {"samples": grid[None]})
    directory = os.path.join(workdir, "samples")
    os.makedirs(directory, exist_ok=True)
    plots.save_image(os.path.join(directory, f"grid_step{step}.png"), grid)

  return callback


def sample_to_disk(config, workdir: str) -> str:
  """Writes workdir/samples/<name>.npz (array x plus the settings) and, for 2-D data, <name>.png."""
  data_shape = input_pipeline.data_shape(config.data)
  params, step = train.load_ema_params(config, workdir, data_shape)
  if jax.process_index() == 0:  # a read-only or full disk is found before the sampling, not after it
    checkpoints.check_workdir(train.workdir_path(workdir) / "samples",
                              2 * config.sampling.num_samples * 4 * int(np.prod(data_shape)), "these samples")
  samples, nfe = draw(config, params, data_shape, return_nfe=True)
  settings = config.sampling
  adaptive = settings.method == "ode_adaptive"
  if adaptive:
    name = f"{settings.method}_{settings.ode_solver}_rtol{settings.ode_rtol:g}_atol{settings.ode_atol:g}"
  else:
    name = f"{settings.method}_{settings.grid}_{settings.num_steps}steps"
  bad = ~np.isfinite(samples.reshape(len(samples), -1)).all(axis=1)
  if bad.any():
    raise FloatingPointError(f"{bad.sum()} of {len(samples)} samples are not finite ({name}, NFE {nfe}); nothing "
                             f"was written. {sampling.non_finite_advice(settings)}")
  logging.info("%d samples (%s): %d network evaluations per batch.", len(samples), name, nfe)
  name = f"{name}_ckpt{step}"
  directory = os.path.join(workdir, "samples")
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, name + ".npz")
  images = {"pixels": image_data.to_pixels(samples)} if len(data_shape) == 3 else {}  # uint8, for FID
  ode = {field: settings[field] for field in ("ode_solver", "ode_rtol", "ode_atol")} if adaptive else {}
  np.savez(path, x=samples, method=settings.method, num_steps=settings.num_steps, grid=settings.grid,
           denoise=settings.denoise, nfe=nfe, seed=config.seed, checkpoint_step=step, **ode, **images)
  if len(data_shape) == 3:
    plots.save_image(os.path.join(directory, name + ".png"), image_grid(samples))
  elif data_shape == (2,):
    plots.scatter(os.path.join(directory, name + ".png"), samples,
                  f"{config.data.dataset}: {settings.method}, NFE {nfe}, step {step}")
  return path

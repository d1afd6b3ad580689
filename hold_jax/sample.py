"""`--mode=sample`: draw samples from the latest EMA parameters of a workdir and write them to disk; image
grids during training (`grid_callback`)."""
from __future__ import annotations

import io
from typing import Any, Callable

import jax
import numpy as np
from absl import logging

from hold_jax import checkpoints
from hold_jax import console
from hold_jax import generation
from hold_jax import image_data
from hold_jax import input_pipeline
from hold_jax import models
from hold_jax import plots
from hold_jax import sampling
from hold_jax import sde as sde_lib
from hold_jax import train


def make_drawer(config, data_shape: tuple[int, ...], return_nfe: bool = False) -> Callable[[Any, int], Any]:
  """draw(params, num_samples) -> (num_samples, *data_shape) samples of `config.sampling`, in batches of
  config.sampling.batch_size sharded over every device of every process (hold_jax/generation.py); sample i
  always has the seed fold_in(PRNGKey(config.seed), i), whatever the batch size or the device count.

  With return_nfe, draw returns (samples, nfe): the network evaluations of a batch, the largest over the
  batches (they differ only for the adaptive ODE solver).
  """
  sde = sde_lib.from_config(config.sde)
  model = models.create_model(config.model, data_shape)
  score_fn = train.make_score_fn(sde, model, config.loss.parametrization)
  sampler = sampling.make_sampler(sde, score_fn, data_shape, config.sampling, return_nfe=True,
                                  data_range=input_pipeline.data_range(config.data))
  rng = jax.random.PRNGKey(config.seed)
  mesh = train.make_mesh()

  def draw_samples(params, num_samples: int):
    results = [generation.generate(sampler, params, rng, ids, mesh)
               for ids in generation.id_batches(0, num_samples, config.sampling.batch_size)]
    samples = np.concatenate([samples for samples, _ in results])
    return (samples, max(nfe for _, nfe in results)) if return_nfe else samples

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
    if step % every and step != config.training.num_steps:
      return
    samples = draw_samples(state.ema_params, num)  # every process takes part; process 0 writes
    if jax.process_index() != 0:
      return
    if not np.isfinite(samples).all():
      logging.warning("step %d: some grid samples are not finite; grid not written.", step)
      return
    grid = image_grid(samples, num)
    writer.write_images(step, {"samples": grid[None]})
    directory = train.workdir_path(workdir) / "samples"
    directory.mkdir(parents=True, exist_ok=True)
    plots.save_image(str(directory / f"grid_step{step}.png"), grid)

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
    name = (f"{settings.method}_{settings.ode_solver}_rtol{settings.ode_rtol:g}_atol{settings.ode_atol:g}_"
            f"{settings.get('ode_variable', 'flow')}")
  else:
    name = f"{settings.method}_{settings.grid}_{settings.num_steps}steps"
  bad = ~np.isfinite(samples.reshape(len(samples), -1)).all(axis=1)
  if bad.any():
    raise FloatingPointError(f"{bad.sum()} of {len(samples)} samples are not finite ({name}, NFE {nfe}); nothing "
                             f"was written. {sampling.non_finite_advice(settings)}")
  console.say(f"{len(samples)} samples ({name}): {nfe} network evaluations per batch")
  name = f"{name}_ckpt{step}"
  directory = train.workdir_path(workdir) / "samples"
  path = directory / f"{name}.npz"
  if jax.process_index() != 0:  # every process sampled its share; process 0 writes
    return str(path)
  images = {"pixels": image_data.to_pixels(samples)} if len(data_shape) == 3 else {}  # uint8, for FID
  ode = {field: settings[field] for field in ("ode_solver", "ode_rtol", "ode_atol", "ode_variable")
         if field in settings} if adaptive else {}
  if settings.method == "gddim":
    ode = {field: settings[field] for field in ("multistep_order", "time_variable") if field in settings}
  buffer = io.BytesIO()
  np.savez(buffer, x=samples, method=settings.method, num_steps=settings.num_steps, grid=settings.grid,
           denoise=settings.denoise, nfe=nfe, seed=config.seed, checkpoint_step=step, **ode, **images)
  path.write_bytes(buffer.getvalue())
  if len(data_shape) == 3:
    plots.save_image(str(directory / f"{name}.png"), image_grid(samples))
  elif data_shape == (2,):
    plots.scatter(str(directory / f"{name}.png"), samples,
                  f"{config.data.dataset}: {settings.method}, NFE {nfe}, step {step}")
  return str(path)

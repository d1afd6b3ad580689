"""`--mode=sample`: draw samples from the latest EMA parameters of a workdir and write them to disk; image
grids during training (`grid_callback`).

File names. Every file here is named from all the settings that can change its contents, so that a run with
other settings writes a new file instead of replacing an earlier one: a readable part naming the sampler and
the checkpoint step, then `settings_hash`, 8 hex digits of SHA-256 over the canonical JSON of
- every field of config.sampling but batch_size: sample i is drawn from fold_in(PRNGKey(seed), i) whatever
  batch it falls in (hold_jax/sampling/data_parallel.py), so the batch size changes how many are drawn at once, never
  which; num_samples is hashed, since it sets the file's rows;
- config.seed and the checkpoint step.
The trained fields (process, model, data...) are not hashed: the workdir's config.json fixes them for every
sampling command (hold_jax/workdir/run_record.py). A field the chosen method ignores (stochasticity for 'strang') is
hashed all the same: at worst the same samples get a second file, where a table of which method reads which
field would have to follow every sampler. The same settings give the same name; a rerun rewrites the file.
The files record what produced them (`sample_settings`), from which `settings_stem` gives their name again.
"""
from __future__ import annotations

import json
from typing import Any, Callable

import jax
import numpy as np
from absl import logging

from hold_jax import console
from hold_jax import memory_budget
from hold_jax import models
from hold_jax import multihost
from hold_jax import plots
from hold_jax import report_files
from hold_jax.data import image_data
from hold_jax.data import input_pipeline
from hold_jax.data import npz_files
from hold_jax.process import sde as sde_lib
from hold_jax.sampling import data_parallel
from hold_jax.sampling import samplers
from hold_jax.workdir import checkpoints
from hold_jax.workdir import run_record
from hold_jax.workdir import trained_model

# Fields of config.sampling that cannot change the samples, left out of settings_hash (see above).
UNHASHED_SAMPLING_FIELDS = ("batch_size",)


def sample_settings(config, step: int, num_samples: int | None = None) -> dict[str, Any]:
  """What produced the samples of `config` from checkpoint `step`, as JSON values: the record a sample file
  keeps (its settings_hash is the name's).

  'sampling' is the whole config.sampling group, its num_samples replaced by `num_samples` when given (the
  training grids draw training.num_grid_samples); 'seed' and 'checkpoint_step' complete what the samples are
  a function of within a workdir; 'sde_order' and 'dataset' are there for whoever reads the file; a denoiser's
  records its process ('sde', run_record.sampling_process), which the hash includes.
  """
  settings = json.loads(config.sampling.to_json_best_effort())
  if num_samples is not None:
    settings["num_samples"] = int(num_samples)
  return {"sampling": settings, "seed": int(config.seed), "checkpoint_step": int(step),
          "sde_order": int(config.sde.order), "dataset": config.data.get("dataset"),
          **run_record.sampling_process(config)}


def settings_hash(settings: dict[str, Any]) -> str:
  """`report_files.canonical_hash` of the parts of `sample_settings` that can change the samples: 'sampling' without
  UNHASHED_SAMPLING_FIELDS, 'seed' and 'checkpoint_step'."""
  hashed = {"sampling": {field: value for field, value in settings["sampling"].items()
                         if field not in UNHASHED_SAMPLING_FIELDS},
            "seed": settings["seed"], "checkpoint_step": settings["checkpoint_step"]}
  if "sde" in settings:  # a denoiser's samples depend on the process chosen at sampling (run_record)
    hashed["sde"] = settings["sde"]
  return report_files.canonical_hash(hashed)


def sampler_label(sampling_settings: dict[str, Any]) -> str:
  """The readable part of a sample file's name: <method>_<grid>_<N>steps, or for the adaptive solver
  ode_adaptive_<solver>_rtol<r>_atol<a>_<ode_variable> (config.sampling or its JSON dict)."""
  if sampling_settings["method"] == "ode_adaptive":
    return (f"ode_adaptive_{sampling_settings['ode_solver']}_rtol{sampling_settings['ode_rtol']:g}_"
            f"atol{sampling_settings['ode_atol']:g}_{sampling_settings.get('ode_variable', 'flow')}")
  return f"{sampling_settings['method']}_{sampling_settings['grid']}_{sampling_settings['num_steps']}steps"


def settings_stem(settings: dict[str, Any]) -> str:
  """<sampler_label>_ckpt<step>_<settings_hash> of recorded `sample_settings`: a sample file's name less .npz."""
  return f"{sampler_label(settings['sampling'])}_ckpt{settings['checkpoint_step']}_{settings_hash(settings)}"


def sample_file_stem(config, step: int) -> str:
  """The name (less .npz / .png) of the files `sample_to_disk` writes for `config` from checkpoint `step`."""
  return settings_stem(sample_settings(config, step))


def grid_file_name(config, step: int) -> str:
  """grid_step<step>_<settings_hash>.png: the training grid of `step`, drawn with config.sampling; the hash
  keeps a resumed run with other sampling settings from replacing the grid of the same step."""
  settings = sample_settings(config, step, config.training.num_grid_samples)
  return f"grid_step{step}_{settings_hash(settings)}.png"


def png_metadata(settings: dict[str, Any]) -> dict[str, str]:
  """The PNG text entry that records `sample_settings` in a picture."""
  return {"settings": json.dumps(settings, sort_keys=True)}


def make_drawer(config, data_shape: tuple[int, ...], return_nfe: bool = False) -> Callable[[Any, int], Any]:
  """draw(params, num_samples, seed=None) -> (num_samples, *data_shape) samples of `config.sampling`, in
  batches of config.sampling.batch_size sharded over every device of every process
  (hold_jax/sampling/data_parallel.py); sample i always has the seed fold_in(PRNGKey(seed), i), seed =
  config.seed unless given, whatever the batch size or the device count. The sampler is compiled once per
  batch shape: another seed is an argument, not a recompilation.

  With return_nfe, draw returns (samples, nfe): the network evaluations of a batch, the largest over the
  batches (they differ only for the adaptive ODE solver).
  """
  sde = sde_lib.from_config(config.sde)
  model = models.create_model(config.model, data_shape)
  score_fn = trained_model.make_score_fn(sde, model, config.loss)
  sampler = samplers.make_sampler(sde, score_fn, data_shape, config.sampling, return_nfe=True,
                                  data_range=input_pipeline.data_range(config.data))
  mesh = multihost.make_mesh()

  def draw_samples(params, num_samples: int, seed: int | None = None):
    rng = jax.random.PRNGKey(config.seed if seed is None else seed)
    results = [data_parallel.generate(sampler, params, rng, ids, mesh)
               for ids in data_parallel.id_batches(0, num_samples, config.sampling.batch_size)]
    samples = np.concatenate([samples for samples, _ in results])
    return (samples, max(nfe for _, nfe in results)) if return_nfe else samples

  return draw_samples


def draw(config, params, data_shape: tuple[int, ...], return_nfe: bool = False):
  """config.sampling.num_samples samples (N, *data_shape), and with return_nfe the NFE of a batch."""
  return make_drawer(config, data_shape, return_nfe)(params, config.sampling.num_samples)


def image_grid(samples: np.ndarray, max_images: int = plots.MAX_IMAGES) -> np.ndarray:
  """The first max_images model-space images (N, H, W, C) as one uint8 grid image, 1-pixel white gaps between
  them (plots.tile), for PNGs and TensorBoard."""
  return plots.tile(image_data.to_pixels(samples[:max_images]))


def grid_callback(config, workdir: str, data_shape: tuple[int, ...]) -> Callable[[int, Any, Any], None] | None:
  """A train callback that, for image data, samples config.training.num_grid_samples images from the EMA
  parameters every training.sample_every steps and at the end, and writes them as one grid to TensorBoard
  ('samples') and to workdir/samples/grid_step<N>_<hash>.png (`grid_file_name`; process 0), its settings in
  the PNG's text and its path in the log file. None for non-image data or sample_every 0."""
  every = config.training.get("sample_every", 0)
  if len(data_shape) != 3 or not every:
    return None
  draw_samples = make_drawer(config, data_shape)
  num = config.training.num_grid_samples

  def callback(step: int, state, writer) -> None:  # train.Callback: state a train.TrainState
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
    directory = trained_model.workdir_path(workdir) / "samples"
    directory.mkdir(parents=True, exist_ok=True)
    settings = sample_settings(config, step, num)
    path = directory / grid_file_name(config, step)
    plots.save_image(str(path), grid, metadata=png_metadata(settings))
    logging.info("step %d: sample grid written to %s", step, path)  # one per sample_every steps: log, not console

  return callback


def sample_to_disk(config, workdir: str) -> str:
  """Writes workdir/samples/<stem>.npz and <stem>.png, says both paths on the console and returns the .npz's.

  <stem> (`sample_file_stem`) is <method>_<grid>_<N>steps_ckpt<step>_<hash>, for 'ode_adaptive'
  ode_adaptive_<solver>_rtol<r>_atol<a>_<ode_variable>_ckpt<step>_<hash>; <hash> covers every field of
  config.sampling but batch_size, the seed and the step (module docstring). The .npz holds x, uint8 pixels for
  images, nfe, settings_json (`sample_settings`, from which `settings_stem` gives <stem> again), config_json
  (the whole config) and the fields earlier readers use (method, num_steps, grid, denoise, seed,
  checkpoint_step, the ode_* or gddim fields); the .png carries settings_json as a text entry. Each is written
  under a temporary name and renamed, so a killed run never leaves half a file under the final name.

  The .png (`plots.save_samples`): images as one grid; points over a faint sample of the data
  (input_pipeline.reference_points): a scatter in 2-D, a corner plot of the first coordinates in more, a
  histogram in 1-D.
  """
  data_shape = input_pipeline.data_shape(config.data)
  memory_budget.check_sampling(config.sampling.num_samples, config.sampling.batch_size, config.sde.order,
                               data_shape)  # before the checkpoint is read; generate checks XLA's count
  params, step = trained_model.load_ema_params(config, workdir, data_shape)
  if jax.process_index() == 0:  # a read-only or full disk is found before the sampling, not after it
    checkpoints.check_workdir(trained_model.workdir_path(workdir) / "samples",
                              2 * config.sampling.num_samples * 4 * int(np.prod(data_shape)), "these samples")
  samples, nfe = draw(config, params, data_shape, return_nfe=True)
  settings = config.sampling
  recorded = sample_settings(config, step)
  name = settings_stem(recorded)
  bad = ~np.isfinite(samples.reshape(len(samples), -1)).all(axis=1)
  if bad.any():
    raise FloatingPointError(f"{bad.sum()} of {len(samples)} samples are not finite ({name}, NFE {nfe}); nothing "
                             f"was written. {samplers.non_finite_advice(settings)}")
  directory = trained_model.workdir_path(workdir) / "samples"
  path = directory / f"{name}.npz"
  if jax.process_index() != 0:  # every process sampled its share; process 0 writes
    return str(path)
  images = {"pixels": image_data.to_pixels(samples)} if len(data_shape) == 3 else {}  # uint8, for FID
  adaptive = settings.method == "ode_adaptive"
  ode = {field: settings[field] for field in ("ode_solver", "ode_rtol", "ode_atol", "ode_variable")
         if field in settings} if adaptive else {}
  if settings.method == "gddim":
    ode = {field: settings[field] for field in ("multistep_order", "time_variable") if field in settings}
  npz_files.write_npz_atomic(path, dict(
      x=samples, method=settings.method, num_steps=settings.num_steps, grid=settings.grid, denoise=settings.denoise,
      nfe=nfe, seed=config.seed, checkpoint_step=step, settings_json=json.dumps(recorded, sort_keys=True),
      config_json=config.to_json_best_effort(), **ode, **images))
  picture = directory / f"{name}.png"
  plots.save_samples(str(picture), samples, input_pipeline.reference_points(config.data),
                     f"{config.data.dataset}: {len(samples)} samples, {sampler_label(recorded['sampling'])}, "
                     f"NFE {nfe}, step {step}", metadata=png_metadata(recorded))
  console.say(f"{len(samples)} samples, {nfe} network evaluations per batch: wrote {path} and {picture}")
  return str(path)

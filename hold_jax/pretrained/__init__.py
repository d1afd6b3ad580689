"""Small pretrained models shipped with the package: the swiss roll and the digits, each sampled with the VP,
CLD or HOLD process (orders 1-3).

Each data set has one network, a denoiser of the sufficient statistic (docs/denoiser.md): its loss is the same
function for every order, so one set of EMA parameters serves all three processes, and a name picks the
process the model samples and is evaluated with. A folder here holds what a workdir would:
- config.json: the config the network was trained with (its trained fields are the run's record; its
  sampling and evaluation fields are the stock config's, or the best measured sampler where model.json says so);
- ema_params.msgpack: the EMA parameters (flax.serialization), nothing else of the training state;
- model.json: the step, the SHA-256 of ema_params.msgpack, how the network was made (command, steps, date)
  and the figures measured on each process (benchmarks/RESULTS.md says how).

`workdir(name)` turns a folder into a real, read-only-usable workdir in a cache (once per version of the
parameters): its config.json and one orbax checkpoint holding the parameters, so that the command line, the
Python API (hold_jax/api.py) and the notebooks load pretrained models and trained runs through the same code.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Any

from etils import epath

FOLDER = epath.Path(__file__).parent
PARAMS_FILE = "ema_params.msgpack"
MODEL_FILE = "model.json"
CACHE_ENV = "HOLD_JAX_CACHE"

# name -> (folder, process of hold_jax/process/sde.py's STOCK_PROCESSES); the bare data set name is HOLD.
MODELS = {
    "swiss_roll": ("swiss_roll", "hold"),
    "swiss_roll-cld": ("swiss_roll", "cld"),
    "swiss_roll-vp": ("swiss_roll", "vp"),
    "digits": ("digits", "hold"),
    "digits-cld": ("digits", "cld"),
    "digits-vp": ("digits", "vp"),
}


def names() -> list[str]:
  """The names `hold_jax.load` and `workdir` accept."""
  return list(MODELS)


def resolve(name: str) -> tuple[str, str]:
  """(folder, process) of a pretrained model's name; a ValueError listing the names for an unknown one."""
  if name not in MODELS:
    raise ValueError(f"{name!r} is not a pretrained model of hold_jax: the names are {', '.join(MODELS)} (or give "
                     "the path of a workdir).")
  return MODELS[name]


def info(name: str) -> dict[str, Any]:
  """model.json of the name's folder: the step, the parameters' SHA-256, how they were made, the figures."""
  folder, _ = resolve(name)
  return json.loads((FOLDER / folder / MODEL_FILE).read_text())


def figures(name: str) -> dict[str, Any]:
  """The figures measured on the pretrained model `name` (its process), as model.json records them."""
  _, process = resolve(name)
  return info(name)["figures"][process]


def cache_root() -> epath.Path:
  """$HOLD_JAX_CACHE, else $XDG_CACHE_HOME/hold_jax, else ~/.cache/hold_jax."""
  if os.environ.get(CACHE_ENV):
    return epath.Path(os.environ[CACHE_ENV])
  return epath.Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "hold_jax"


def file_sha256(path: epath.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def workdir(name: str, cache_dir: str | None = None) -> str:
  """The path of a workdir holding pretrained model `name`'s network (one per data set), made on first use
  under cache_dir (default `cache_root()`)/pretrained/<folder>-<sha8>: config.json and one orbax checkpoint
  of the packaged step. It is built in a temporary folder and renamed, so a killed build never leaves half a
  workdir; the SHA-256 of the packaged parameters is checked first.

  Sample or evaluate it like any workdir, choosing the name's process with its sde fields (`hold_jax.load`
  does), e.g. python -m hold_jax.main --config configs/digits.py --workdir PATH --mode=sample.
  """
  folder, _ = resolve(name)
  source = FOLDER / folder
  record = info(name)
  found = file_sha256(source / PARAMS_FILE)
  if found != record["sha256"]:
    raise ValueError(f"{source / PARAMS_FILE} has SHA-256 {found}, not the {record['sha256']} of {source / MODEL_FILE}: "
                     "the package's pretrained files are damaged; reinstall hold_jax.")
  target = epath.Path(cache_dir or cache_root()) / "pretrained" / f"{folder}-{found[:8]}"
  if not (target / "checkpoints" / str(record["step"])).exists():
    if target.exists():  # a cached copy that lost its checkpoint: made again
      shutil.rmtree(target)
    _build_workdir(source, target, int(record["step"]))
  return str(target)


def _build_workdir(source: epath.Path, target: epath.Path, step: int) -> None:
  """Writes config.json and the checkpoint of `step` (its parameters and EMA parameters both the packaged
  EMA parameters, a fresh optimizer state) into a temporary sibling of `target`, then renames it."""
  import jax  # pylint: disable=g-import-not-at-top  (the registry above is read without JAX)
  from flax import serialization  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top

  from hold_jax import models  # pylint: disable=g-import-not-at-top
  from hold_jax import multihost  # pylint: disable=g-import-not-at-top
  from hold_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  from hold_jax.process import sde as sde_lib  # pylint: disable=g-import-not-at-top
  from hold_jax.training import optimization  # pylint: disable=g-import-not-at-top
  from hold_jax.training import train  # pylint: disable=g-import-not-at-top
  from hold_jax.workdir import checkpoints  # pylint: disable=g-import-not-at-top
  from hold_jax.workdir import run_record  # pylint: disable=g-import-not-at-top
  from hold_jax.workdir import trained_model  # pylint: disable=g-import-not-at-top

  config = run_record.load_config(source)
  data_shape = input_pipeline.data_shape(config.data)
  model = models.create_model(config.model, data_shape)
  optimizer = optimization.make_optimizer(config.optim, config.training.num_steps)
  blocks = trained_model.input_blocks(sde_lib.from_config(config.sde).order, config.loss.parametrization)
  fresh = train.init_state(model, data_shape, blocks, optimizer, config.seed)
  params = serialization.from_bytes(fresh.ema_params, (source / PARAMS_FILE).read_bytes())
  state = fresh.replace(step=jax.numpy.asarray(step, jax.numpy.int32), params=params,
                        ema_params=jax.tree.map(jax.numpy.copy, params))
  state = jax.device_put(state, NamedSharding(multihost.make_mesh(), PartitionSpec()))
  building = target.parent / f".{target.name}.building-{os.getpid()}"
  if building.exists():
    shutil.rmtree(building)
  run_record.write(building, config)
  manager = checkpoints.make_manager(building / run_record.CHECKPOINTS_DIR, keep=1, asynchronous=False)
  try:
    checkpoints.save(manager, step, state, config)
    checkpoints.wait(manager, step)
  finally:
    manager.close()
  try:
    building.rename(target)
  except OSError:  # another process built it first: theirs is the same
    shutil.rmtree(building, ignore_errors=True)
    if not target.exists():
      raise

"""What sampling and evaluation read from a workdir: its path, the EMA parameters of one of its checkpoints, and
the score function of its network. Training (hold_jax/training/train.py) writes the workdir and builds on these; nothing
that samples or evaluates needs the training loop.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import NamedSharding

from hold_jax import models
from hold_jax import multihost
from hold_jax.models import denoiser
from hold_jax.models import score_outputs
from hold_jax.process import sde as sde_lib
from hold_jax.workdir import checkpoint_integrity
from hold_jax.workdir import checkpoint_restore
from hold_jax.workdir import checkpoints


def workdir_path(workdir: str) -> epath.Path:
  """The workdir as a path that may also be a bucket (gs://...), absolute when local."""
  return epath.Path(workdir if "://" in workdir else os.path.abspath(workdir))


def checkpoint_manager(workdir: str, settings: checkpoints.Settings,
                       read_only: bool = False) -> ocp.CheckpointManager:
  """The orbax manager of workdir/checkpoints (hold_jax/workdir/checkpoints.py: two items per step, checksums);
  `settings` a checkpoints.Settings or config.checkpoint."""
  settings = checkpoints.settings_from_config(settings)
  return checkpoints.make_manager(workdir_path(workdir) / "checkpoints", settings.keep, settings.asynchronous,
                                  read_only=read_only)


def network_fn(model: nn.Module, dropout_rng: jax.Array | None = None) -> Callable:
  """network(params, inputs (batch, blocks, *data_shape), conditioning (batch,)) -> (batch, *data_shape).

  With dropout_rng the network runs in training mode (dropout on, with that key); without, in inference mode.
  """

  def network(params, inputs, conditioning):
    if dropout_rng is None:
      return model.apply({"params": params}, inputs, conditioning, train=False)
    return model.apply({"params": params}, inputs, conditioning, train=True, rngs={"dropout": dropout_rng})

  return network


def make_score_fn(sde: sde_lib.LangevinSDE, model: nn.Module, loss_config,
                  dropout_rng: jax.Array | None = None) -> score_outputs.ScoreFn:
  """score_fn(params, u, t) of a network read through `loss_config.parametrization`: a denoiser of the sufficient
  statistic (hold_jax/models/denoiser.py), or a network of (u, t) whose output `score_outputs.score_from_output`
  reads."""
  network = network_fn(model, dropout_rng)
  if loss_config.parametrization == "denoiser":
    return denoiser.score_fn(sde, network, float(loss_config.sigma_data))

  def score_fn(params, u, t):
    return score_outputs.score_from_output(sde, loss_config.parametrization, network(params, u, t), u, t)

  return score_fn


def input_blocks(order: int, parametrization: str) -> int:
  """Blocks the network takes: the statistic alone for a denoiser (any order), all n blocks of the state else."""
  return 1 if parametrization == "denoiser" else order


def abstract_params(model: nn.Module, data_shape: tuple[int, ...], blocks: int, sharding: NamedSharding) -> Any:
  """The structure, shapes and placement of the network's parameters, without computing them (eval_shape): what
  a partial restore of a checkpoint's EMA parameters reads into."""
  u = jnp.zeros((1, blocks) + tuple(data_shape), jnp.float32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), u, jnp.ones((1,), jnp.float32))["params"])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)


def load_ema_params(config, workdir: str, data_shape: tuple[int, ...], step: int | None = None
                    ) -> tuple[Any, int]:
  """EMA parameters and step of a checkpoint in workdir, read alone (a partial restore, so the optimizer
  settings never matter); a CheckpointError when there is none, or when its EMA parameters are not finite
  (samples and bounds from them would be too, whatever the settings).

  step: None for the newest complete and readable checkpoint, or the step to read: that one or a
  CheckpointError (checkpoint_restore.restore_step), never another step in its place.

  The workdir is only read (a read-only orbax manager; nothing moved, renamed or deleted), so this is safe
  while training writes to the same workdir: its save in flight and its clean-up of old steps are untouched,
  and damaged steps are left for training to set aside.
  """
  sde = sde_lib.from_config(config.sde)
  model = models.create_model(config.model, data_shape)
  directory = workdir_path(workdir) / "checkpoints"
  if not directory.exists():
    raise checkpoints.CheckpointError(f"No checkpoint in {directory}: train first (python -m hold_jax.main "
                                      "--config ... --workdir ... --mode=train).")
  manager = checkpoint_manager(workdir, config.checkpoint, read_only=True)  # training may be writing there
  try:
    blocks = input_blocks(sde.order, config.loss.parametrization)
    wanted = {"ema_params": abstract_params(model, data_shape, blocks, multihost.replicated(multihost.make_mesh()))}
    try:
      if step is None:
        restored = checkpoint_restore.restore_for_reading(manager, wanted, partial=True)
      else:
        restored = checkpoint_restore.restore_step(manager, step, wanted, partial=True)
    except checkpoints.ChangedStructure as error:
      raise checkpoints.CheckpointError(f"Cannot read the EMA parameters in {directory}: {error}. The model config "
                                        "differs from the one in the workdir's config.json.") from None
  finally:
    manager.close()
  if restored is None:
    raise checkpoints.CheckpointError(f"No checkpoint in {directory}: train first (python -m hold_jax.main "
                                      "--config ... --workdir ... --mode=train).")
  not_finite = checkpoint_integrity.nonfinite_checkpoint_message(restored.tree["ema_params"], restored.step)
  if not_finite:  # no sampler or evaluation setting could give finite results from these
    raise checkpoints.CheckpointError(f"{not_finite[0].upper()}{not_finite[1:]} ({directory})")
  return restored.tree["ema_params"], restored.step

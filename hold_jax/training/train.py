"""Train state, the data-parallel train step, and the training loop with automatic resume (docs/training.md).

One `jax.jit` step over a `Mesh` of every device of every host: the batch is sharded on the 'data' axis
and the state replicated, which is the data-parallel "pmapped" step written with today's sharding API.
Each host builds its share of the global batch (`input_pipeline`) on a thread ahead of the step (`prefetch`)
and the global array is assembled with `jax.make_array_from_process_local_data`. The rng of step k is
fold_in(state.rng, k), and batch k depends only on (seed, k), so a resumed run repeats an uninterrupted one exactly.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from clu import metric_writers
from clu import periodic_actions
from jax.sharding import NamedSharding, PartitionSpec

from hold_jax import console
from hold_jax import memory_budget
from hold_jax import models
from hold_jax import multihost
from hold_jax.data import input_pipeline
from hold_jax.process import sde as sde_lib
from hold_jax.training import loop_settings
from hold_jax.training import losses
from hold_jax.training import optimization
from hold_jax.training import preemption
from hold_jax.training import prefetch
from hold_jax.workdir import checkpoint_restore
from hold_jax.workdir import checkpoints
from hold_jax.workdir import run_record
from hold_jax.workdir import trained_model



@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue; saved whole by orbax.

  first_bad_step is -1 while every loss and gradient has been finite; at the first non-finite one it
  records that step and the state stops changing, so what is saved or inspected is the last good state.
  """

  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array
  first_bad_step: jax.Array


def make_training_loss_fn(sde: sde_lib.LangevinSDE, model: nn.Module, loss_config) -> Callable:
  """loss_fn(params, x0, rng) of `config.loss` with the network in training mode (a dropout key per step)."""
  settings = losses.settings_from_config(loss_config)  # the fields once, up front

  def loss_fn(params, x0, rng):
    dropout_rng, loss_rng = jax.random.split(rng)
    if settings.parametrization == "denoiser":
      network = trained_model.network_fn(model, dropout_rng)
      return losses.make_denoiser_loss_fn(sde, network, settings)(params, x0, loss_rng)
    score_fn = trained_model.make_score_fn(sde, model, loss_config, dropout_rng)
    return losses.make_loss_fn(sde, score_fn, settings)(params, x0, loss_rng)

  return loss_fn


def init_state(model: nn.Module, data_shape: tuple[int, ...], blocks: int, optimizer: optax.GradientTransformation,
               seed: int) -> TrainState:
  """Fresh parameters (EMA equal to them), optimizer state, step 0, for a network that takes `blocks` input
  blocks (`input_blocks`)."""
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
  u = jnp.zeros((1, blocks) + tuple(data_shape), jnp.float32)
  params = jax.jit(model.init)(init_rng, u, jnp.ones((1,), jnp.float32))["params"]  # eager init of a U-Net is slow
  return TrainState(step=jnp.asarray(0, jnp.int32), params=params, ema_params=jax.tree.map(jnp.copy, params),
                    opt_state=optimizer.init(params), rng=train_rng,
                    first_bad_step=jnp.asarray(-1, jnp.int32))


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation,
                    ema: optimization.EMASettings) -> Callable:
  """train_step(state, batch (global_batch, *data_shape)) -> (state, metrics); not yet jitted. `ema` an
  optimization.EMASettings or config.ema."""
  ema = optimization.ema_settings_from_config(ema)

  def train_step(state: TrainState, batch: jax.Array):
    rng = jax.random.fold_in(state.rng, state.step)
    loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, rng)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = optimization.ema_decay(state.step, ema.decay, ema.warmup)
    ema_params = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    good = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & (state.first_bad_step < 0)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(good, a, b), new, old)
    new_state = state.replace(step=jnp.where(good, state.step + 1, state.step),
                              params=keep(params, state.params), ema_params=keep(ema_params, state.ema_params),
                              opt_state=keep(opt_state, state.opt_state),
                              first_bad_step=jnp.where(good | (state.first_bad_step >= 0), state.first_bad_step,
                                                       state.step))
    metrics = {"loss": loss, "grad_norm": grad_norm}
    return new_state, metrics

  return train_step


def abstract_state(make_fresh_state: Callable[[], TrainState], sharding: NamedSharding) -> TrainState:
  """The structure, shapes and placement of make_fresh_state() without computing it (eval_shape)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      jax.eval_shape(make_fresh_state))


def restore_or_init(manager: ocp.CheckpointManager, make_fresh_state: Callable[[], TrainState],
                    sharding: NamedSharding) -> TrainState:
  """The newest readable checkpoint of the workdir if there is one, else make_fresh_state(); placed with
  `sharding`. Damaged checkpoints are set aside and older ones tried (hold_jax/workdir/checkpoint_restore.py).

  On resume the fresh state is only traced (eval_shape) for its structure, never computed.
  """
  abstract = abstract_state(make_fresh_state, sharding)
  try:
    restored = checkpoint_restore.restore(manager, abstract)
  except checkpoints.ChangedStructure as error:
    raise checkpoints.CheckpointError(f"Cannot resume from {manager.directory}: {error}. The model or optimizer "
                                      "config differs from the one the run was trained with; use that config, "
                                      "or a new --workdir for a new run.") from None
  if restored is None:
    damaged = trained_model.workdir_path(str(manager.directory.parent)) / checkpoints.DAMAGED_DIR
    if damaged.exists() and any(damaged.iterdir()):
      logging.warning("No usable checkpoint in %s (damaged ones are in %s): starting from step 0.",
                      manager.directory, damaged)
    console.say(f"Starting at step 0: no checkpoint in {manager.directory} yet")
    return jax.device_put(make_fresh_state(), sharding)
  console.say(f"Resuming from the checkpoint of step {restored.step} in {manager.directory}")
  return restored.tree


def hparams(config) -> dict[str, bool | int | float | str]:
  """The whole config flattened to dotted names ('sde.order': 3, 'model.ch_mult': '(1, 2, 2, 2)'), for
  TensorBoard's hparams dashboard, which takes scalars and strings only; unset fields are 'None'."""
  flat = {}

  def visit(prefix: str, node) -> None:
    for key, value in node.items():
      if isinstance(value, dict):
        visit(f"{prefix}{key}.", value)
      else:
        flat[f"{prefix}{key}"] = value if isinstance(value, (bool, int, float, str)) else str(value)

  visit("", config.to_dict())
  return flat


def nonfinite_error(state: TrainState, last_saved: int | None) -> FloatingPointError:
  saved = (f"the checkpoint of step {last_saved} is intact and a restart resumes from it"
           if last_saved is not None else "no checkpoint was written yet")
  return FloatingPointError(
      f"Non-finite loss or gradient at step {int(state.first_bad_step)}; training stopped and {saved}. "
      "Lower optim.learning_rate, lower optim.grad_clip, or raise sde.eps (the score scale 1/l_t grows as "
      "t -> 0); with loss.weighting = 'likelihood' or 'none' try 'eps'.")


# callback(step, state, writer), called after every train step with the number of steps done; it decides
# itself when to act (sample_job.grid_callback writes image grids every training.sample_every steps).
Callback = Callable[[int, TrainState, metric_writers.MetricWriter], None]


def prepare_workdir(config, workdir: str, abstract: TrainState) -> str | None:
  """Before any compute: the workdir can hold a checkpoint, config agrees with its record, and
  training.num_steps fits the learning-rate schedule's horizon (optimization.check_training_length: a cosine
  run past it is an error). Returns the line saying how the training length relates to the horizon where they
  differ, else None.

  config: with optim.schedule_horizon a number (run_record.with_schedule_horizon), as the record must hold it.
  The record (config.json) is written when the workdir has no checkpoint yet; once one exists it is the
  reference a resumed run is checked against (hold_jax/workdir/run_record.py).
  """
  path = trained_model.workdir_path(workdir)
  checkpoints.check_workdir(path, checkpoints.state_bytes(abstract))
  optim, num_steps = optimization.settings_from_config(config.optim), config.training.num_steps
  if not run_record.has_checkpoints(path):
    note = optimization.check_training_length(optim, num_steps)
    run_record.write(path, config)
    return note
  run_record.check_resume(path, config)  # against config.json, or its copy in the newest checkpoint
  if not (path / run_record.RECORD_NAME).exists():
    note = optimization.check_training_length(optim, num_steps)
    if run_record.copy_in_checkpoints(path) is None:  # checkpoints of an earlier version: nothing to compare
      logging.warning("%s has checkpoints but no config.json: recording the given config.", path)
    else:
      logging.warning("%s has no config.json: writing it again (the given config agrees with the copy in its "
                      "newest checkpoint).", path)
    run_record.write(path, config)
    return note
  return optimization.check_training_length(optim, num_steps, str(path / run_record.RECORD_NAME))


def train(config, workdir: str, callbacks: Sequence[Callback] = ()) -> TrainState:
  """Trains config.training.num_steps steps in workdir, resuming from its newest readable checkpoint.

  SIGTERM, SIGINT and SIGUSR1 save the step reached and return early (hold_jax/training/preemption.py); the returned
  state's step then falls short of training.num_steps.

  The learning-rate schedule's horizon is the run's, not the command's: optim.schedule_horizon, else the
  record's on resume, else training.num_steps at the start (run_record.with_schedule_horizon). A resumed
  'constant' run may extend at the same rate; a 'cosine' run stops early with its recorded schedule and
  refuses to train past its horizon (optimization.check_training_length). Either is said at the start.
  """
  config = run_record.with_schedule_horizon(config, trained_model.workdir_path(workdir))
  # Each group checked once, here at the edge; the library below takes the checked settings.
  training = loop_settings.settings_from_config(config.training)
  optim = optimization.settings_from_config(config.optim)
  mesh = multihost.make_mesh()
  replicated = NamedSharding(mesh, PartitionSpec())
  batch_sharding = multihost.batch_sharding(mesh)
  stream = input_pipeline.create_stream(input_pipeline.settings_from_config(config.data), training.batch_size,
                                        config.seed)
  sde = sde_lib.from_config(config.sde)
  model = models.create_model(config.model, stream.data_shape)
  optimizer = optimization.make_optimizer(optim, training.num_steps)
  loss_fn = make_training_loss_fn(sde, model, config.loss)
  blocks = trained_model.input_blocks(sde.order, config.loss.parametrization)
  make_fresh_state = lambda: init_state(model, stream.data_shape, blocks, optimizer, config.seed)
  abstract = abstract_state(make_fresh_state, replicated)
  schedule_note = prepare_workdir(config, workdir, abstract)
  train_step = jax.jit(make_train_step(loss_fn, optimizer, optimization.ema_settings_from_config(config.ema)),
                       in_shardings=(replicated, batch_sharding), out_shardings=(replicated, replicated),
                       donate_argnums=0)
  memory_budget.check_train_step(train_step, abstract, (training.batch_size,) + stream.data_shape, batch_sharding)

  manager = trained_model.checkpoint_manager(workdir, checkpoints.settings_from_config(config.checkpoint))
  try:
    state = restore_or_init(manager, make_fresh_state, replicated)
    if schedule_note and jax.process_index() == 0:
      console.say(schedule_note)
    start = int(state.step)
    if start > training.num_steps:
      raise checkpoints.CheckpointError(
          f"The checkpoint in {manager.directory} is at step {start}, past training.num_steps = "
          f"{training.num_steps}: raise training.num_steps to continue, or sample/evaluate it as it is.")
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    if start == 0:
      writer.write_hparams(hparams(config))
    with preemption.StopRequests(manager.reached_preemption) as stop:
      state = _train_loop(config, training, optim, state, start, train_step, stream, batch_sharding, manager,
                          writer, callbacks, stop)
    writer.flush()
  finally:  # every exit completes (or cleanly reports) the save in flight and releases orbax's threads
    manager.close()
  return state


def _train_loop(config, training: loop_settings.Settings, optim: optimization.Settings, state: TrainState,
                start: int, train_step, stream, batch_sharding, manager, writer, callbacks,
                stop: preemption.StopRequests) -> TrainState:
  """Steps start..training.num_steps (or until a stop request), logging and saving on the way; `config` is what
  each checkpoint records."""
  main_process = jax.process_index() == 0
  hooks = [periodic_actions.ReportProgress(num_train_steps=training.num_steps, writer=writer,
                                           every_steps=training.log_every)] if main_process else []
  progress = console.Progress(start, training.num_steps)
  # The optimizer's own schedule (train() resolved optim.schedule_horizon for both), logged at the step whose
  # update it scaled: Adam evaluates it at its count, which equals the step.
  schedule = optimization.learning_rate_schedule(optim, training.num_steps)
  global_shape = (training.batch_size,) + stream.data_shape
  pending = []
  last_saved = manager.latest_step()
  batches = prefetch.prefetch_global_batches(stream, start, training.num_steps, batch_sharding, global_shape)
  try:
    for step, batch in batches:
      state, metrics = train_step(state, batch)
      pending.append(metrics)
      for hook in hooks:
        hook(step + 1)
      done = step + 1 == training.num_steps
      stopping = stop.should_stop(step + 1)
      log = (step + 1) % training.log_every == 0 or done or stopping
      save = (step + 1) % training.checkpoint_every == 0 or done or stopping
      if (log or save) and int(state.first_bad_step) >= 0:  # one host sync per log or save, not per step
        raise nonfinite_error(state, last_saved)
      if log:
        summary = jax.tree.map(lambda *values: float(np.mean(values)), *jax.device_get(pending))
        summary["learning_rate"] = float(schedule(step))
        writer.write_scalars(step + 1, summary)
        pending = []
        if main_process:
          console.say(progress.line(step + 1, summary))
      if save:
        checkpoints.save(manager, step + 1, state, config)
        last_saved = step + 1
        if main_process:
          console.say(f"saving the checkpoint of step {step + 1}")
      if stopping:
        checkpoints.wait(manager, step + 1)
        logging.warning("%s: saved the checkpoint of step %d in %s and stopped; the same command resumes.",
                        stop.received, step + 1, manager.directory)
        break
      for callback in callbacks:
        callback(step + 1, state, writer)
  finally:  # a run that dies still completes the saves it started (and stops the prefetch thread)
    batches.close()
    checkpoints.wait(manager, last_saved)
  return state

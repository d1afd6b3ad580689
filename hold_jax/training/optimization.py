"""The optimizer and the parameter average: Adam after global-norm clipping, with a linear warm-up into a
constant or cosine learning rate (optax's schedules), and the EMA of the parameters that samples are drawn
with. Fields: `config.optim` and `config.ema` (hold_jax/configs/default.py), checked once into `Settings` and
`EMASettings`; the functions below take those, or the config groups themselves (a notebook's shortcut).

The schedule's horizon (optim.schedule_horizon, the step where the cosine reaches 0) is part of what a run
trains with, not of how long one command trains: a run records it in workdir/config.json when it starts
(hold_jax/workdir/run_record.py), and every resumed command keeps it, whatever its training.num_steps. So an
interrupted run trains exactly like an uninterrupted one, and changing the training length never changes the
learning rate of a step already planned. `check_training_length` says what a length other than the horizon
means for the schedule, and refuses a cosine run past its horizon (whose learning rate there is 0).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from hold_jax import field_checks

SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class Settings:
  """config.optim, each field checked when made (`settings_from_config` at the edge, or Settings(...) in a
  notebook). The checks catch the numbers optax takes without complaint and turns into NaN parameters within
  steps (a NaN or inf learning rate; beta2 = 1, where Adam's bias correction divides by 1 - beta2^t) or
  silently ignores (a NaN grad_clip fails `grad_clip > 0`, which switches clipping off)."""

  learning_rate: float = 2e-4
  warmup_steps: int = 5000
  schedule: str = "constant"
  schedule_horizon: int | None = None  # None: training.num_steps when the run starts (`schedule_horizon`)
  beta1: float = 0.9
  beta2: float = 0.999
  eps: float = 1e-8
  grad_clip: float = 1.0  # <= 0: no clipping

  def __post_init__(self):
    field_checks.require_positive("optim.learning_rate", self.learning_rate)
    field_checks.require_unit_interval("optim.beta1", self.beta1)
    field_checks.require_unit_interval("optim.beta2", self.beta2)
    field_checks.require_positive("optim.eps", self.eps)
    field_checks.require(field_checks.is_finite(self.grad_clip), "optim.grad_clip", self.grad_clip,
                         "a finite number (<= 0 for no clipping)")
    field_checks.require_int("optim.warmup_steps", self.warmup_steps, 0)
    field_checks.require(self.schedule in SCHEDULES, "optim.schedule", self.schedule, f"one of {SCHEDULES}")
    horizon = self.schedule_horizon
    field_checks.require(horizon is None or (field_checks.is_int(horizon) and horizon >= 1),
                         "optim.schedule_horizon", horizon,
                         "an integer >= 1, or None for training.num_steps at the start of the run")


@dataclasses.dataclass(frozen=True)
class EMASettings:
  """config.ema: the decay of the parameters' average, and whether it warms up (`ema_decay`)."""

  decay: float = 0.9999
  warmup: bool = True

  def __post_init__(self):
    field_checks.require_unit_interval("ema.decay", self.decay)
    field_checks.require(isinstance(self.warmup, bool), "ema.warmup", self.warmup, "true or false")


def settings_from_config(optim_config) -> Settings:
  """config.optim checked once into Settings; a field the config lacks keeps its default."""
  return field_checks.settings_of(Settings, optim_config)


def ema_settings_from_config(ema_config) -> EMASettings:
  """config.ema checked once into EMASettings; a field the config lacks keeps its default."""
  return field_checks.settings_of(EMASettings, ema_config)


def schedule_horizon(settings: Settings, num_steps: int) -> int:
  """The step where the schedule ends: optim.schedule_horizon, or num_steps where it is None (a fresh config;
  the trainer resolves it to a number before the run's record is written, hold_jax/workdir/run_record.py)."""
  settings = settings_from_config(settings)
  horizon = settings.schedule_horizon
  return int(num_steps if horizon is None else horizon)


def learning_rate_schedule(settings: Settings, num_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to optim.learning_rate over optim.warmup_steps, then optim.schedule: 'constant', or
  'cosine' decay to 0 at the horizon (`schedule_horizon`: optim.schedule_horizon, else num_steps), where it
  stays (optax's cosine holds its end value past decay_steps).

  The optimizer evaluates it at its own count (Adam's state, saved with the checkpoint), the trainer logs it at
  the step: both from the same resolved config, so what is logged is what was applied.
  """
  settings = settings_from_config(settings)
  warmup = max(settings.warmup_steps, 1)
  if settings.schedule == "constant":
    return optax.warmup_constant_schedule(0.0, settings.learning_rate, warmup)
  return optax.warmup_cosine_decay_schedule(0.0, settings.learning_rate, warmup,
                                            max(schedule_horizon(settings, num_steps), warmup + 1))


def check_training_length(settings: Settings, num_steps: int, recorded_in: str | None = None) -> str | None:
  """The line to show when training.num_steps differs from the schedule's horizon, or None when it does not;
  a ValueError for a cosine run asked to train past its horizon.

  recorded_in: the record the horizon was read from (a resumed run), or None (a run that starts now).

  - 'constant': the horizon does not change the learning rate, so a resumed run extends at the same rate.
  - 'cosine', fewer steps than the horizon: the schedule keeps its horizon, and training stops early, with
    the learning rate the full run would have had at that step.
  - 'cosine', more steps than the horizon: refused. The learning rate is 0 past the horizon (those steps
    would change nothing), and stretching the horizon would change the learning rate of steps already planned,
    so the checkpoints would follow one schedule up to the resume and another after it. A longer cosine
    schedule is a new run.

  A different optim.schedule_horizon on resume is refused too, as a changed trained field
  (run_record.check_resume): permitting it would leave config.json describing another schedule than the later
  checkpoints', or make the override something every later command must repeat, where one that forgot it
  would silently go back to the recorded curve.
  """
  settings = settings_from_config(settings)
  horizon = schedule_horizon(settings, num_steps)
  where = f"recorded in {recorded_in}" if recorded_in else "optim.schedule_horizon"
  if settings.schedule == "cosine" and num_steps > horizon:
    fix = (f"start a new run (a new --workdir) with training.num_steps = {num_steps}: a longer horizon here would "
           "change the learning rate of the steps already planned" if recorded_in else
           "leave optim.schedule_horizon unset (it then follows training.num_steps) or make it >= "
           "training.num_steps")
    raise ValueError(f"training.num_steps = {num_steps} is past the cosine schedule's horizon of {horizon} steps "
                     f"({where}): the learning rate is 0 from step {horizon} on, so those steps would change "
                     f"nothing. To train longer, {fix}.")
  if num_steps == horizon:
    return None
  if settings.schedule == "constant":
    if not recorded_in:
      return None
    return (f"training.num_steps = {num_steps} differs from the {horizon} steps this run started with "
            f"({where}): training {'extends to' if num_steps > horizon else 'stops at'} step {num_steps}, at the "
            f"same constant learning rate {settings.learning_rate:g}")
  rate = float(learning_rate_schedule(settings, num_steps)(num_steps))
  return (f"training.num_steps = {num_steps} stops the cosine schedule early: the learning rate keeps the "
          f"horizon of {horizon} steps ({where}) and is {rate:.3g} at step {num_steps}, not 0")


def make_optimizer(settings: Settings, num_steps: int) -> optax.GradientTransformation:
  """Adam with warm-up, after clipping the global gradient norm to optim.grad_clip (<= 0: no clipping); the
  schedule is `learning_rate_schedule(settings, num_steps)`. The horizon never changes the optimizer
  state's shapes, so a state built for shapes alone (sampling, evaluation) may take any num_steps."""
  settings = settings_from_config(settings)
  adam = optax.adam(learning_rate_schedule(settings, num_steps), b1=settings.beta1, b2=settings.beta2,
                    eps=settings.eps)
  if settings.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(settings.grad_clip), adam)
  return adam


def ema_decay(step: jax.Array, decay: float, warmup: bool) -> jax.Array:
  """EMA decay at `step`: min(decay, (1 + step) / (10 + step)) with warm-up, so early averages forget init."""
  if not warmup:
    return jnp.asarray(decay, jnp.float32)
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))

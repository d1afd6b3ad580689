"""The fixed-step samplers: one step function per method and the registry that runs them as one `lax.scan`.

A method is a `Method`: a schedule (per-step inputs with a leading axis of N steps, and constants, computed
in float64 when the sampler is traced; hold_jax/sampling/sampler_schedules.py) and a step that maps the carry (the
state u, or u with what the method keeps, such as gddim's past x0_hat) from t_k to t_{k+1}. A new sampler is
a step function and one line in METHODS; hold_jax/sampling/samplers.py documents what each method does and why.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hold_jax.process import sde as sde_lib
from hold_jax.sampling import flow_schedule
from hold_jax.sampling import sampler_parts
from hold_jax.sampling import sampler_schedules


class Context(NamedTuple):
  """What every step sees: the process, the score, per-sample noise keys (num_samples,), the state's shape
  (n, *data_shape), the dtype, and clip_x0 = (low, high) or None for x0_hat."""

  sde: sde_lib.LangevinSDE
  score_fn: Callable
  params: Any
  noise_keys: jax.Array
  state_shape: tuple[int, ...]
  dtype: Any
  clip_x0: Any

  def score(self, u: jax.Array, t: jax.Array) -> jax.Array:
    """The last-block score (num_samples, *data_shape) at (u, t) for one time t ()."""
    return self.score_fn(self.params, u, jnp.full(u.shape[:1], t, self.dtype))

  def noise(self, step: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Step `step`'s standard normal noise (num_samples, *shape), per sample from its own key."""
    return sampler_parts.per_sample_normal(self.noise_keys, step, shape, self.dtype)

  def coefficient(self, vector: jax.Array) -> jax.Array:
    """A per-block vector (n,) shaped to multiply (num_samples, n, *data_shape)."""
    return vector.reshape((1, self.state_shape[0]) + (1,) * (len(self.state_shape) - 1))


@dataclasses.dataclass(frozen=True)
class Method:
  """schedule(sde, times (N + 1,), settings, dtype) -> (inputs, constants): inputs a pytree with leading axis N.
  step(context, carry, inputs, k) -> carry. start(context, u, constants) -> carry; finish(context, carry,
  constants, num_steps) -> u. evaluations_per_step: network calls of one step."""

  schedule: Callable
  step: Callable
  start: Callable = lambda context, u, constants: u
  finish: Callable = lambda context, carry, constants, num_steps: carry
  evaluations_per_step: int = 1


def run(name: str, context: Context, u: jax.Array, times: jax.Array, settings: dict) -> jax.Array:
  """u at eps (num_samples, n, *data_shape) from u at T by method `name` on the decreasing times (N + 1,).

  The schedule depends on static settings only: it is computed here, when the sampler is traced, and enters
  the program as constants. (Left to XLA, its constant folding of the kernel took compile time that grew with
  the number of steps.)"""
  method = METHODS[name]
  num_steps = times.shape[0] - 1
  with jax.ensure_compile_time_eval():
    inputs, constants = method.schedule(context.sde, times, settings, context.dtype)
  carry = method.start(context, u, constants)
  carry, _ = jax.lax.scan(lambda carry, x: (method.step(context, carry, *x), None), carry,
                          (inputs, jnp.arange(num_steps)))
  return method.finish(context, carry, constants, num_steps)


# ----------------------------------------------------------------------------------------------------------
# Splitting: (A) the exact linear step, then (S) the score step on the last block.


def _splitting_schedule(sde, times, settings, dtype, variant):
  propagators, noise_factors, score_times, score_dbs = sampler_schedules.splitting(sde, variant, times, dtype)
  return (propagators[:-1], noise_factors[:-1], score_times, score_dbs), (propagators[-1], noise_factors[-1])


def _linear_step(context, u, propagator, noise_factor, k):
  """(A), exact: u <- expm(dB F_A) u + N(0, Q_A(dB))."""
  return (sde_lib.apply_blocks(propagator, u)
          + sde_lib.apply_blocks(noise_factor, context.noise(k, context.state_shape)))


def splitting_step(context, u, inputs, k):
  propagator, noise_factor, t, score_db = inputs
  u = _linear_step(context, u, propagator, noise_factor, k)
  score = context.score(u, t)
  return u.at[:, -1].add(2.0 * context.sde.friction * score_db * (score + u[:, -1]))  # (S)


def _strang_finish(context, u, constants, num_steps):
  """Strang's last half step of (A)."""
  return _linear_step(context, u, *constants, num_steps)


# ----------------------------------------------------------------------------------------------------------
# Posterior-mean steps: x0_hat from the score by Tweedie's formula, then the kernel's step given x0_hat.


def _posterior_schedule(sde, times, settings, dtype, variant):
  gains, weights, noise_factors, rows, scales = sampler_schedules.posterior(sde, variant, times, dtype)
  return (gains, weights, noise_factors, rows, scales, times[:-1]), None


def posterior_step(context, u, inputs, k, stochastic):
  gain, x0_weight, noise_factor, row, scale, t = inputs
  x0_hat = sampler_parts.posterior_mean(context.score(u, t), u, row, scale, context.clip_x0)
  u = sde_lib.apply_blocks(gain, u) + context.coefficient(x0_weight) * x0_hat[:, None]
  if stochastic:
    u = u + sde_lib.apply_blocks(noise_factor, context.noise(k, context.state_shape))
  return u


def _gddim_schedule(sde, times, settings, dtype):
  flow = flow_schedule.build(sde, np.asarray(times, np.float64), settings["multistep_order"],
                             settings["time_variable"], stochasticity=settings["stochasticity"])
  as_array = lambda x: None if x is None else jnp.asarray(np.asarray(x), dtype)
  inputs = (as_array(flow.transitions), as_array(flow.weights), as_array(flow.tweedie_row),
            as_array(flow.tweedie_scale), times[:-1], as_array(flow.noise_factors))
  return inputs, flow.weights.shape[1]


def _gddim_start(context, u, order):
  """(u, history): history (order - 1, num_samples, *data_shape) holds x0_hat_{k-1}, x0_hat_{k-2}, ..."""
  return u, jnp.zeros((order - 1,) + u.shape[:1] + u.shape[2:], context.dtype)


def gddim_step(context, carry, inputs, k):
  """The multistep exponential integrator of the probability-flow ODE (hold_jax/sampling/flow_schedule.py):
  u_{k+1} = Psi_k u_k + sum_j w_{k,j} x0_hat_{k-j} (+ N(0, C_k) for stochasticity > 0), x0_hat_k =
  (s + r_k . u_k) / c_k clipped to clip_x0."""
  u, history = carry
  transition, weights, row, scale, t, noise_factor = inputs
  x0_hat = sampler_parts.posterior_mean(context.score(u, t), u, row, scale, context.clip_x0)
  u = sde_lib.apply_blocks(transition, u) + context.coefficient(weights[0]) * x0_hat[:, None]
  for j in range(1, weights.shape[0]):
    u = u + context.coefficient(weights[j]) * history[j - 1][:, None]
  if noise_factor is not None:  # static: the schedule has noise factors only when stochastic
    u = u + sde_lib.apply_blocks(noise_factor, context.noise(k, context.state_shape))
  if history.shape[0]:
    history = jnp.concatenate([x0_hat[None], history[:-1]])
  return u, history


# ----------------------------------------------------------------------------------------------------------
# Steps of the reverse SDE and of the probability-flow ODE in u.


def _step_schedule(sde, times, settings, dtype):
  """(t_k, t_{k+1}, dB_k = B(t_k) - B(t_{k+1}) > 0), each (N,)."""
  integrated = sde_lib.integrated_beta(sde, times)
  return (times[:-1], times[1:], integrated[:-1] - integrated[1:]), None


def euler_maruyama_step(context, u, inputs, k):
  """u <- u + dB [-F u + 2 xi s e_last] + sqrt(2 xi dB) z e_last, score at (u_k, t_k)."""
  t, _, db = inputs
  drift = sde_lib.reverse_drift_per_beta(context.sde, u, context.score(u, t), score_weight=2.0)
  u = u + db * drift
  return u.at[:, -1].add(jnp.sqrt(2.0 * context.sde.friction * db) * context.noise(k, context.state_shape[1:]))


def heun_step(context, u, inputs, k):
  """The trapezoid rule with an Euler predictor on du/dB (steps -dB < 0), the score at both ends."""
  t, t_after, db = inputs
  slope = sampler_parts.probability_flow(context.sde, context.score_fn, context.params, u,
                                         jnp.full(u.shape[:1], t, context.dtype))
  predicted = u - db * slope
  slope_after = sampler_parts.probability_flow(context.sde, context.score_fn, context.params, predicted,
                                               jnp.full(u.shape[:1], t_after, context.dtype))
  return u - 0.5 * db * (slope + slope_after)


def _splitting(variant):
  finish = _strang_finish if variant.startswith("strang") else Method.finish
  return Method(functools.partial(_splitting_schedule, variant=variant), splitting_step, finish=finish)


def _posterior(variant):
  return Method(functools.partial(_posterior_schedule, variant=variant),
                functools.partial(posterior_step, stochastic=variant == "ancestral"))


METHODS = {
    "lie_trotter": _splitting("lie_trotter"),
    "strang": _splitting("strang"),
    "lie_trotter_exponential": _splitting("lie_trotter_exponential"),
    "strang_exponential": _splitting("strang_exponential"),
    "ancestral": _posterior("ancestral"),
    "ddim": _posterior("ddim"),
    "gddim": Method(_gddim_schedule, gddim_step, start=_gddim_start, finish=lambda context, carry, *_: carry[0]),
    "euler_maruyama": Method(_step_schedule, euler_maruyama_step),
    "ode_heun": Method(_step_schedule, heun_step, evaluations_per_step=2),
}

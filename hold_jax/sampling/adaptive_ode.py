"""The probability-flow ODE solved adaptively (diffrax), in the state u or in the flow coordinates
y = Psi(B_ref, B) u of hold_jax/sampling/flow_coordinates.py; every sample is its own solve.
"""
from __future__ import annotations

from typing import Any, Callable

import diffrax
import jax
import jax.numpy as jnp

from hold_jax.process import sde as sde_lib
from hold_jax.sampling import flow_coordinates
from hold_jax.sampling import sampler_parts

# diffrax solver and the network evaluations of one step, accepted or rejected: these explicit Runge-Kutta
# pairs are first-same-as-last, so a step costs its stages less one (tests/test_sampling.py counts them).
# Dopri5 is scipy's RK45, the solver of score_sde's ODE sampler.
SOLVERS = {"tsit5": (diffrax.Tsit5, 6), "dopri5": (diffrax.Dopri5, 6)}
# The variable of the solve: the state u, or the flow coordinates y = Psi(B_ref, B) u in log B
# (hold_jax/sampling/flow_coordinates.py), where the stiff linear part is gone.
VARIABLES = ("state", "flow")
# Evaluations before the first step: the first stage at B(T). The first step is given (1/64 of the
# interval; the controller adapts it from there), so no trial evaluations choose it.
_START_EVALUATIONS = 1
_FIRST_STEP_FRACTION = 1.0 / 64


def probability_flow_vector_field(sde: sde_lib.LangevinSDE, score_fn: Callable, params: Any
                                  ) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """field(b, u) = du/dB = F u - xi s_last(u, t(b)) e_last: the probability-flow ODE per unit of integrated
  beta, forward in time (docs/samplers.md; du/dt = beta(t) field(B(t), u)).

  Integrate it from B(eps) up to B(T) to encode data (the likelihood), from B(T) down to B(eps) to sample.
  b: () or (batch,) integrated beta in [B(eps), B(T)]; the score is evaluated at t = B^{-1}(b).
  u: (batch, n, *data_shape); returns (batch, n, *data_shape).
  score_fn(params, u, t (batch,)) -> (batch, *data_shape).
  """

  def field(b, u):
    t = jnp.broadcast_to(sde_lib.time_at_integrated_beta(sde, jnp.asarray(b, u.dtype)), u.shape[:1])
    return sampler_parts.probability_flow(sde, score_fn, params, u, t)

  return field


def solve(sde, score_fn, params, u, solver, rtol, atol, max_steps, variable="flow", clip_x0=None):
  """The adaptive probability-flow solve in `variable` (VARIABLES): u at eps and the NFE (). clip_x0
  applies in the flow coordinates, where the field is written with x0_hat."""
  if variable == "flow":
    return _solve_in_flow_coordinates(sde, score_fn, params, u, solver, rtol, atol, max_steps, clip_x0=clip_x0)
  return _solve_in_state(sde, score_fn, params, u, solver, rtol, atol, max_steps)


def _solve_in_state(sde, score_fn, params, u, solver, rtol, atol, max_steps):
  """Solves the probability-flow ODE in u from B(T) down to B(eps), every sample with its own steps.

  Each sample is an independent diffrax solve (vmapped), so its steps, and hence its result, do not depend on
  the rest of the batch; the network still sees the whole batch at every stage. A solve that fails
  (max_steps reached) gives NaN for its sample. Returns u at eps (num_samples, n, *data_shape) and the NFE ().
  """
  field = probability_flow_vector_field(sde, score_fn, params)
  solver_class, evaluations_per_step = SOLVERS[solver]
  start = jnp.asarray(sde_lib.integrated_beta(sde, sde.T), u.dtype)
  end = jnp.asarray(sde_lib.integrated_beta(sde, sde.eps), u.dtype)

  def solve_one(initial):
    term = diffrax.ODETerm(lambda b, y, args: field(b, y[None])[0])
    solution = diffrax.diffeqsolve(
        term, solver_class(), t0=start, t1=end, dt0=_FIRST_STEP_FRACTION * (end - start), y0=initial,
        saveat=diffrax.SaveAt(t1=True), stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps, throw=False)
    succeeded = solution.result == diffrax.RESULTS.successful
    return jnp.where(succeeded, solution.ys[0], jnp.nan), solution.stats["num_steps"]

  u, num_steps = jax.vmap(solve_one)(u)
  nfe = evaluations_per_step * jnp.max(num_steps) + _START_EVALUATIONS
  return u, nfe.astype(jnp.int32)


def _solve_in_flow_coordinates(sde, score_fn, params, u, solver, rtol, atol, max_steps,
                               num_segments=flow_coordinates.NUM_SEGMENTS, clip_x0=None):
  """Solves the probability-flow ODE from B(T) down to B(eps), every sample with its own steps, in the
  coordinates y = Psi(B_ref, B) u and the variable s = log B, where its stiff linear part is gone
  (hold_jax/sampling/flow_coordinates.py; one solve per segment of log B, B_ref at its top); the tolerances apply to y.

  Each sample is an independent diffrax solve (vmapped), so its steps, and hence its result, do not depend on
  the rest of the batch; the network still sees the whole batch at every stage. A solve that fails
  (max_steps reached in a segment) gives NaN for its sample. Returns u at eps (num_samples, n, *data_shape)
  and the NFE ().
  """
  with jax.ensure_compile_time_eval():
    segments = [flow_coordinates.Coordinates(sde, u.dtype, k, num_segments) for k in range(num_segments)]
  solver_class, evaluations_per_step = SOLVERS[solver]
  # The first step of each segment: 1/64 of its span at the top, 1/1024 below, where the segment's top
  # continues the previous segment's smallest (last) steps; a rejected first step would re-evaluate the first
  # stage uncounted.
  first_steps = [_FIRST_STEP_FRACTION / 16 * (c.low - c.high) for c in segments[:-1]] + [
      _FIRST_STEP_FRACTION * (segments[-1].low - segments[-1].high)]

  def solve_one(state):
    evaluations = []  # per segment: the batch waits for each segment's slowest sample
    for coordinates, first_step in zip(reversed(segments), reversed(first_steps)):  # from the top; y = u there

      def field(s, y, args, coordinates=coordinates):
        state = coordinates.state(s, y)
        score = score_fn(params, state[None], coordinates.time(s)[None])[0]
        return coordinates.field(s, state, score, clip_x0)

      solution = diffrax.diffeqsolve(
          diffrax.ODETerm(field), solver_class(), t0=coordinates.high, t1=coordinates.low, dt0=first_step,
          y0=state, saveat=diffrax.SaveAt(t1=True), stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
          max_steps=max_steps, throw=False)
      succeeded = solution.result == diffrax.RESULTS.successful
      state = jnp.where(succeeded, sde_lib.apply_blocks(coordinates.expand_low, solution.ys), jnp.nan)[0]
      evaluations.append(evaluations_per_step * solution.stats["num_steps"] + _START_EVALUATIONS)
    return state, jnp.stack(evaluations)

  u, evaluations = jax.vmap(solve_one)(u)
  return u, jnp.sum(jnp.max(evaluations, axis=0)).astype(jnp.int32)

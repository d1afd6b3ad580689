"""Reverse-time samplers: splitting, Euler-Maruyama and probability-flow ODE solvers (DESIGN section 5).

Time is measured in integrated beta: a step from t_k down to t_{k+1} covers dB = B(t_k) - B(t_{k+1}) > 0.
In reverse time the SDE per unit of B is

    du = [F_A u + 2 xi (s_last + u_last) e_last] dB + G dW,   F_A = S F S,

and the probability-flow ODE, written forward in B (and solved from B(T) down to B(eps)), is

    du/dB = F u - xi s_last e_last                                          (`probability_flow_vector_field`).

config.sampling.method, with its network evaluations (NFE) for N = sampling.num_steps:

  'lie_trotter'   (A) u <- expm(dB F_A) u + N(0, Q_A(dB)) exactly, from the float32-safe kernel; then (S) an
                  Euler step of the score part on the last block, u_last <- u_last + 2 xi dB (s + u_last),
                  with the score at the step's start t_k on the state (A) produced. NFE N.
  'strang'        A(dB/2), S(dB), A(dB/2), as CLD's SSCS, with the score at the step's midpoint t_mid (in B),
                  where the state between the two half steps lives. NFE N.
  'lie_trotter_exponential', 'strang_exponential'
                  the same splittings with the exponential score step below. NFE N.
  'ancestral'     the posterior-mean step, DDPM's ancestral step for any order: the score at (u_k, t_k) gives
                  E[x_0 | u_k] by Tweedie's formula through the kernel, s = -[Sigma_t^{-1} (u - phi_t x0_hat)]_last
                  (phi_t = Phi(t)[:, 0], Sigma_t the kernel's covariance given x_0, auxiliaries integrated out),
                  so x0_hat = (s + r . u) / c with r the last row of Sigma_t^{-1} and c = (Sigma_t^{-1} phi_t)_last;
                  then u_{k+1} is drawn from the forward process's exact conditional law of u at t_{k+1} given
                  u_k and x_0 = x0_hat. NFE N.
  'ddim'          the same x0_hat, and u_{k+1} = phi_{k+1} x0_hat + L_{k+1} L_k^{-1} (u_k - phi_k x0_hat) (phi_k, L_k
                  at t_k): the standardised noise is carried over with the Cholesky factors (DDIM, eta = 0;
                  deterministic). NFE N. For orders >= 2 L_{k+1} L_k^{-1} is not the probability-flow ODE's
                  transition, so 'ddim' does not converge to the ODE's solution as the steps shrink (gDDIM's
                  "Cholesky choice"); kept as the comparison for 'gddim'.
  'gddim'         the exponential integrator of the probability-flow ODE in posterior-mean form (gDDIM; the
                  transition R_{k+1} R_k^{-1} of a square root of Sigma moved by the flow, and sampling.multistep_order
                  past x0_hat values extrapolated in sampling.time_variable; hold_jax/flow_schedule.py). Exact for
                  a point mass; converges to the ODE at the multistep order. NFE N.
  'euler_maruyama' u <- u + dB [-F u + 2 xi s e_last] + sqrt(dB) G z, score at (u_k, t_k). NFE N.
  'ode_heun'      Heun (explicit trapezoid) on the probability-flow ODE, the score at both ends of every step:
                  NFE 2N. (EDM makes its last step Euler because its grid ends at sigma = 0, where the score
                  is undefined; ours ends at eps > 0, so every step is a full Heun step.)
  'ode_adaptive'  the same ODE with diffrax (Tsit5 by default) and a PID step-size controller, every sample
                  with its own steps; the NFE is counted (`Samples.nfe`). sampling.ode_variable = 'flow' solves
                  it in the flow coordinates y = Psi(B_ref, B) u (hold_jax/flow_coordinates.py), without the
                  stiff linear part and with x0_hat clipped to sampling.clip_x0; 'state' solves it in u.

Plus one evaluation for the optional denoising step (a noise-free Euler step of the reverse SDE from eps to 0,
as in score_sde) when the order is 1: for order >= 2 the score moves only the last block, which the output
x = u_0 discards, so that step needs no network.

Choices, measured on Gaussian data with the exact score (tests/test_sampling.py) and on the trained order-3
toy model (benchmarks/toy2d_quality.py, share of 10^4 samples within 0.01 of the spirals):
  * Strang's score time. On broad data (order 3, 20 steps, mean + covariance error relative to the law)
    the midpoint gives 0.13 on a uniform grid and 0.15 on a quadratic one, the step's start 0.18 and 0.12,
    the step's end diverges on the uniform grid; Lie-Trotter 0.22 and 0.18. For order 1 the start is 3-6
    times worse than the midpoint at 10-20 steps. With stiff data only a score taken where the state lives
    works (next point). On the toy, Strang at the midpoint on the 'edm' grid reaches 0.81 at 20 NFE and
    0.94 at 30 (Lie-Trotter 0.40 and 0.66).
  * Exponential score step. Near eps the score step is stiff: for concentrated data s ~ -(u_last - m) / l_t^2
    with l_t^2 ~ B (2 xi / l_t^2 = 840 at t = 1e-3 for order 3), and the Euler step multiplies u_last - m by
    1 - 2 xi dB / l_t^2, below -1 (divergence) once dB > l_t^2 / xi. Splitting the score as
    s = -u_last / l_t^2 + r, with l_t the BCSM score scale (the network's s = -eps_theta / l_t under the 'eps'
    parametrisation) and r frozen over the step, the score sub-flow du_last/dB = 2 xi (s + u_last) is linear
    with rate -c = -2 xi (1 / l_t^2 - 1) and solves exactly to

        u_last <- u_last + 2 xi h (s + u_last),   h = (1 - exp(-c dB)) / c  (<= dB, -> dB as c dB -> 0),

    the Euler step with dB replaced by h: it never overshoots, and for point-mass data it lands on the
    posterior mean. The score must be taken where the state is, t_{k+1} for Lie-Trotter (after the full
    linear step) and t_mid for Strang: for near point-mass data at 20 quadratic steps both are within 1.5x
    of the true spread, where Euler Lie-Trotter is 17x too wide, Euler Strang diverges, and the exponential
    step at t_k is 30x too wide. The price: -1 / l_t^2 is the score's stiffness only for data concentrated
    below the noise level; for broader data the step is over-damped (first order, but with a large constant:
    on N(m, 0.5) data it needs ~200 steps where Lie-Trotter needs 100). On the toy: 0.18 / 0.37 at 10 / 15
    NFE ('edm' grid; Lie-Trotter 0.09 / 0.23), but 0.53 at 20, below Euler Strang's 0.81.
  * Posterior-mean steps. Both are exact at any number of steps when the data is a point mass (x0_hat is then
    exact for every u), so the stiffness near eps costs them nothing: on the toy at 20 NFE 'ancestral' puts
    0.82-0.87 of the samples within 0.01 of the spirals. But they drop Var[x_0 | u_t] at every step, a first
    order loss of spread with a large constant for broad data (N(m, 0.5) at 100 quadratic steps: 0.93-0.95 of
    the true standard deviation for 'ancestral', 0.96-0.97 for 'ddim'; 0.985 for 'ancestral' at 400), which
    is what the swiss roll's sliced Wasserstein distance sees at 20 NFE (0.09 for 'ancestral', 0.04 for Strang).
  * Heun and the adaptive solver integrate in B rather than t: beta(t) leaves the vector field (a linear
    schedule is a change of variable, not a source of error), and the score time of a node is t(B)
    (`time_at_integrated_beta`). The probability-flow ODE is as stiff as the score step: explicit Heun
    needs ~100-200 NFE on the toy, where it still leaves a few samples far off.

Every fixed-step sampler is one `lax.scan` over steps. Its schedule (times, and the kernel matrices of all
steps) depends on static settings only, so it is computed once when the sampler is traced and enters the
program as constants: compilation does not grow with the number of steps. Per-sample seeds: sample k's prior
draw and noise come from fold_in(rng, sample_ids[k]) only, so it is the same whatever the batch size or device
count (for a score function that treats examples independently). The prior draw does not depend on the method
or the number of steps, so the deterministic ODE samplers map the same prior draws at any setting.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from hold_jax import flow_coordinates
from hold_jax import flow_schedule
from hold_jax import losses
from hold_jax import sde as sde_lib

SPLITTING_METHODS = ("lie_trotter", "strang", "lie_trotter_exponential", "strang_exponential")
POSTERIOR_METHODS = ("ancestral", "ddim")
FIXED_STEP_METHODS = SPLITTING_METHODS + POSTERIOR_METHODS + ("gddim", "euler_maruyama", "ode_heun")
METHODS = FIXED_STEP_METHODS + ("ode_adaptive",)
GRIDS = ("uniform", "quadratic", "edm")
# The variable of the adaptive solve: the state u, or the flow coordinates y = Psi(B_ref, B) u in log B
# (hold_jax/flow_coordinates.py), where the stiff linear part is gone.
ODE_VARIABLES = ("state", "flow")

# diffrax solver and the network evaluations of one step, accepted or rejected: these explicit Runge-Kutta
# pairs are first-same-as-last, so a step costs its stages less one (tests/test_sampling.py counts them).
# Dopri5 is scipy's RK45, the solver of score_sde's ODE sampler.
ODE_SOLVERS = {"tsit5": (diffrax.Tsit5, 6), "dopri5": (diffrax.Dopri5, 6)}
# Evaluations before the first step: the first stage at B(T). The first step is given (1/64 of the
# interval; the controller adapts it from there), so no trial evaluations choose it.
_ODE_START_EVALUATIONS = 1
_ODE_FIRST_STEP_FRACTION = 1.0 / 64


class Samples(NamedTuple):
  """What a sampler returns with `return_nfe`.

  x: (num_samples, *data_shape) the samples.
  nfe: () int32, the network evaluations the batch took (each a score_fn call on the whole batch); for
    'ode_adaptive' the batch's count: every sample is evaluated until the last is done (in the flow
    coordinates, segment by segment).
  """
  x: jax.Array
  nfe: jax.Array


# ----------------------------------------------------------------------------------------------------------
# Times.


def time_grid(sde: sde_lib.LangevinSDE, num_steps: int, kind: str = "uniform", rho: float = 7.0
              ) -> jax.Array:
  """Decreasing times t_0 = T > ... > t_N = eps, shape (num_steps + 1,).

  'uniform' is linear in t; 'quadratic' places t_k = eps + (T - eps) (1 - k/N)^2, fine near eps where the
  score step is stiff; 'edm' interpolates t^(1/rho) linearly (Karras et al. 2022), finer still.
  """
  if not isinstance(num_steps, int) or num_steps < 1:
    raise ValueError(f"sampling.num_steps = {num_steps!r} is not allowed: it must be an integer >= 1.")
  fraction = jnp.linspace(0.0, 1.0, num_steps + 1)
  if kind == "uniform":
    return sde.T + (sde.eps - sde.T) * fraction
  if kind == "quadratic":
    return sde.eps + (sde.T - sde.eps) * (1.0 - fraction) ** 2
  if kind == "edm":
    if not (rho > 0 and math.isfinite(rho)):  # positive test: NaN fails it
      raise ValueError(f"sampling.rho = {rho!r} is not allowed: it must be a finite number > 0.")
    start, end = sde.T ** (1.0 / rho), sde.eps ** (1.0 / rho)
    return (start + fraction * (end - start)) ** rho
  raise ValueError(f"sampling.grid = {kind!r} is not allowed: it must be one of {GRIDS}.")


time_at_integrated_beta = sde_lib.time_at_integrated_beta  # B^{-1}; lives with B in sde.py


# ----------------------------------------------------------------------------------------------------------
# Settings and their network evaluations.


CLIP_FORMAT = "'auto' (the data's range), 'none', or 'LOW:HIGH' with two numbers, e.g. '-1:1'"


def clip_range(setting: str, data_range: tuple[Any, Any] | None) -> tuple[Any, Any] | None:
  """sampling.clip_x0 as (low, high) or None: 'auto' -> data_range, 'none' -> None, 'LOW:HIGH' -> floats."""
  if setting == "auto":
    return data_range
  if setting == "none":
    return None
  parts = setting.split(":") if isinstance(setting, str) else []
  try:
    low, high = (float(part) for part in parts)
  except ValueError:
    low = high = math.nan
  if not (len(parts) == 2 and low < high):
    raise ValueError(f"sampling.clip_x0 = {setting!r} is not allowed: it must be {CLIP_FORMAT}.")
  return low, high


def check_settings(sde: sde_lib.LangevinSDE, sampling_config) -> None:
  """Raises ValueError naming the first bad field of `config.sampling`; absent ode_* fields keep the defaults
  of `sample_with_nfe`."""
  method = sampling_config.method
  if method not in METHODS:
    raise ValueError(f"sampling.method = {method!r} is not allowed: it must be one of {METHODS}.")
  time_grid(sde, sampling_config.num_steps, sampling_config.grid, sampling_config.rho)
  solver = sampling_config.get("ode_solver", "tsit5")
  if solver not in ODE_SOLVERS:
    raise ValueError(f"sampling.ode_solver = {solver!r} is not allowed: it must be one of {tuple(ODE_SOLVERS)}.")
  for field in ("ode_rtol", "ode_atol"):
    value = sampling_config.get(field, 1e-5)
    if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
      raise ValueError(f"sampling.{field} = {value!r} is not allowed: it must be a finite number > 0.")
  multistep_order = sampling_config.get("multistep_order", 3)
  if multistep_order not in range(1, flow_schedule.MAX_MULTISTEP_ORDER + 1) or isinstance(multistep_order, bool):
    raise ValueError(f"sampling.multistep_order = {multistep_order!r} is not allowed: it must be 1, 2 or 3.")
  variable = sampling_config.get("time_variable", "b")
  if variable not in flow_schedule.TIME_VARIABLES:
    raise ValueError(f"sampling.time_variable = {variable!r} is not allowed: it must be one of "
                     f"{flow_schedule.TIME_VARIABLES}.")
  clip_range(sampling_config.get("clip_x0", "none"), None)
  variable = sampling_config.get("ode_variable", "flow")
  if variable not in ODE_VARIABLES:
    raise ValueError(f"sampling.ode_variable = {variable!r} is not allowed: it must be one of {ODE_VARIABLES}.")
  max_steps = sampling_config.get("ode_max_steps", 4096)
  if not isinstance(max_steps, int) or max_steps < 1:
    raise ValueError(f"sampling.ode_max_steps = {max_steps!r} is not allowed: it must be an integer >= 1.")


def network_evaluations(method: str, num_steps: int, order: int, denoise: bool) -> int:
  """NFE of a fixed-step method: 1 per step (2 for 'ode_heun'), plus 1 to denoise when order == 1."""
  if method not in FIXED_STEP_METHODS:
    raise ValueError(f"{method!r} has no fixed NFE: it must be one of {FIXED_STEP_METHODS}.")
  per_step = 2 if method == "ode_heun" else 1
  return per_step * num_steps + int(denoise and order == 1)


def non_finite_advice(sampling_config) -> str:
  """What to change when `sampling_config` produced non-finite samples (sample.sample_to_disk says it)."""
  method = sampling_config.method
  if method == "ode_adaptive":
    return (f"A solve either needed more than sampling.ode_max_steps = {sampling_config.get('ode_max_steps', 4096)}"
            " steps (raise it) or diverged (tighten sampling.ode_rtol and ode_atol, or raise sde.eps).")
  if method == "ode_heun":
    return ("The explicit Heun step is unstable near sde.eps, where the score is stiff: raise sampling.num_steps, "
            "use sampling.grid = 'edm' or 'quadratic', or use sampling.method = 'ode_adaptive'.")
  advice = ("The explicit score step is stiff near sde.eps: raise sampling.num_steps, use sampling.grid = 'edm' "
            "or 'quadratic', or raise sde.eps")
  if method in ("lie_trotter", "strang"):
    advice += f", or use sampling.method = '{method}_exponential'"
  return advice + "."


# ----------------------------------------------------------------------------------------------------------
# Per-sample randomness.


def _sample_keys(rng: jax.Array, sample_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(prior keys, noise keys), each with a leading axis num_samples, from fold_in(rng, id) per sample."""
  keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(rng, i)))(sample_ids)
  return keys[:, 0], keys[:, 1]


def _per_sample_normal(keys: jax.Array, step: int | jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
  """Noise of one step: (num_samples, *shape), sample k from fold_in(keys[k], step)."""
  return jax.vmap(lambda key: jax.random.normal(jax.random.fold_in(key, step), shape, dtype))(keys)


def prior_draws(rng: jax.Array, sample_ids: jax.Array, order: int, data_shape: tuple[int, ...], dtype=None
                ) -> jax.Array:
  """The draws u_T ~ N(0, I) (the stationary law of every order) that every sampler starts from.

  Returns (num_samples, order, *data_shape); sample k's comes from fold_in(rng, sample_ids[k]) alone and does
  not depend on the method or the number of steps.
  """
  prior_keys, _ = _sample_keys(rng, sample_ids)
  shape = (order,) + tuple(data_shape)
  return jax.vmap(lambda key: jax.random.normal(key, shape, dtype or jnp.result_type(float)))(prior_keys)


# ----------------------------------------------------------------------------------------------------------
# Block products, unrolled.


def _combine_blocks(matrix: jax.Array | np.ndarray, u: jax.Array) -> jax.Array:
  """matrix @ u over the block axis, as sde.apply_blocks: matrix (n, n), u (batch, n, *data_shape).

  Unrolled into n^2 scaled adds that XLA fuses into one elementwise pass; the einsum of apply_blocks lowers
  to a dot with an n-long contraction that is 10-30x slower on CPU (0.9 ms against 0.07 ms for a 10^4 x 3 x 2
  state), which made the linear step cost a tenth of the toy network. Zero entries of a static (numpy)
  matrix, e.g. the tridiagonal F, are skipped.
  """
  n = u.shape[1]
  rows = []
  for i in range(n):
    terms = [matrix[i, j] * u[:, j] for j in range(n) if not (isinstance(matrix, np.ndarray) and matrix[i, j] == 0)]
    rows.append(sum(terms[1:], terms[0]) if terms else jnp.zeros_like(u[:, 0]))
  return jnp.stack(rows, axis=1)


def _reverse_drift_per_beta(sde, u, score_last, score_weight):
  """sde.reverse_drift_per_beta, -F u + score_weight xi s_last e_last, with the block product unrolled."""
  linear = -_combine_blocks(sde_lib.drift_matrix(sde, np.float64).astype(u.dtype), u)
  return linear.at[:, -1].add(score_weight * sde.friction * score_last)


# ----------------------------------------------------------------------------------------------------------
# The probability-flow ODE.


def probability_flow_vector_field(sde: sde_lib.LangevinSDE, score_fn: Callable, params: Any
                                  ) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """field(b, u) = du/dB = F u - xi s_last(u, t(b)) e_last: the probability-flow ODE per unit of integrated
  beta, forward in time (DESIGN section 5; du/dt = beta(t) field(B(t), u)).

  Integrate it from B(eps) up to B(T) to encode data (the likelihood), from B(T) down to B(eps) to sample.
  b: () or (batch,) integrated beta in [B(eps), B(T)]; the score is evaluated at t = time_at_integrated_beta(b).
  u: (batch, n, *data_shape); returns (batch, n, *data_shape).
  score_fn(params, u, t (batch,)) -> (batch, *data_shape).
  """

  def field(b, u):
    t = jnp.broadcast_to(time_at_integrated_beta(sde, jnp.asarray(b, u.dtype)), u.shape[:1])
    return _probability_flow(sde, score_fn, params, u, t)

  return field


def _probability_flow(sde, score_fn, params, u, t):
  """The field of `probability_flow_vector_field` at known times t (batch,)."""
  return -_reverse_drift_per_beta(sde, u, score_fn(params, u, t), score_weight=1.0)


def _solve_adaptively(sde, score_fn, params, u, solver, rtol, atol, max_steps, variable="flow", clip_x0=None):
  """The adaptive probability-flow solve in `variable` (ODE_VARIABLES): u at eps and the NFE (). clip_x0
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
  solver_class, evaluations_per_step = ODE_SOLVERS[solver]
  start = jnp.asarray(sde_lib.integrated_beta(sde, sde.T), u.dtype)
  end = jnp.asarray(sde_lib.integrated_beta(sde, sde.eps), u.dtype)

  def solve_one(initial):
    term = diffrax.ODETerm(lambda b, y, args: field(b, y[None])[0])
    solution = diffrax.diffeqsolve(
        term, solver_class(), t0=start, t1=end, dt0=_ODE_FIRST_STEP_FRACTION * (end - start), y0=initial,
        saveat=diffrax.SaveAt(t1=True), stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps, throw=False)
    succeeded = solution.result == diffrax.RESULTS.successful
    return jnp.where(succeeded, solution.ys[0], jnp.nan), solution.stats["num_steps"]

  u, num_steps = jax.vmap(solve_one)(u)
  nfe = evaluations_per_step * jnp.max(num_steps) + _ODE_START_EVALUATIONS
  return u, nfe.astype(jnp.int32)




def _solve_in_flow_coordinates(sde, score_fn, params, u, solver, rtol, atol, max_steps,
                               num_segments=flow_coordinates.NUM_SEGMENTS, clip_x0=None):
  """Solves the probability-flow ODE from B(T) down to B(eps), every sample with its own steps, in the
  coordinates y = Psi(B_ref, B) u and the variable s = log B, where its stiff linear part is gone
  (hold_jax/flow_coordinates.py; one solve per segment of log B, B_ref at its top); the tolerances apply to y.

  Each sample is an independent diffrax solve (vmapped), so its steps, and hence its result, do not depend on
  the rest of the batch; the network still sees the whole batch at every stage. A solve that fails
  (max_steps reached in a segment) gives NaN for its sample. Returns u at eps (num_samples, n, *data_shape)
  and the NFE ().
  """
  with jax.ensure_compile_time_eval():
    segments = [flow_coordinates.Coordinates(sde, u.dtype, k, num_segments) for k in range(num_segments)]
  solver_class, evaluations_per_step = ODE_SOLVERS[solver]
  # The first step of each segment: 1/64 of its span at the top, 1/1024 below, where the segment's top
  # continues the previous segment's smallest (last) steps; a rejected first step would re-evaluate the first
  # stage uncounted.
  first_steps = [_ODE_FIRST_STEP_FRACTION / 16 * (c.low - c.high) for c in segments[:-1]] + [
      _ODE_FIRST_STEP_FRACTION * (segments[-1].low - segments[-1].high)]

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
      evaluations.append(evaluations_per_step * solution.stats["num_steps"] + _ODE_START_EVALUATIONS)
    return state, jnp.stack(evaluations)

  u, evaluations = jax.vmap(solve_one)(u)
  return u, jnp.sum(jnp.max(evaluations, axis=0)).astype(jnp.int32)


# ----------------------------------------------------------------------------------------------------------
# Samplers.


def _splitting_schedule(sde, method, times, dtype):
  """Per-step inputs of a splitting sampler on the decreasing times (N + 1,).

  Returns (propagators (N + 1, n, n), noise_factors (N + 1, n, n), score_times (N,), score_dBs (N,)): step k
  applies A with propagators[k] and noise_factors[k], then S at score_times[k] over score_dBs[k]; after the
  last step A with the entries N (a step of length 0, the identity, for Lie-Trotter). Strang's two half
  steps A(dB_k / 2) A(dB_{k+1} / 2) between score steps are one A((dB_k + dB_{k+1}) / 2): the linear flow is
  exact, so this has the same law at half the linear steps.
  """
  t_now, t_next = times[:-1], times[1:]
  b_now, b_next = sde_lib.integrated_beta(sde, t_now), sde_lib.integrated_beta(sde, t_next)
  dB = b_now - b_next
  if method.startswith("strang"):
    half = 0.5 * dB
    linear_dBs = jnp.concatenate([half[:1], half[:-1] + half[1:], half[-1:]])
    score_times = time_at_integrated_beta(sde, 0.5 * (b_now + b_next)).astype(dtype)
  else:
    linear_dBs = jnp.concatenate([dB, jnp.zeros((1,), dtype)])
    # Euler: the step's start (see the module docstring); exponential: t_{k+1}, where (A) left the state.
    score_times = t_next if method.endswith("_exponential") else t_now
  score_dBs = dB
  if method.endswith("_exponential"):
    score_scale = losses.score_scale(sde, score_times).astype(dtype)
    rate = 2.0 * sde.friction * (1.0 / score_scale**2 - 1.0)  # c of the exponential score step
    stiff = rate * dB > 1e-6  # elsewhere h = dB to round-off, and (1 - e^{-c dB}) / c would cancel
    safe_rate = jnp.where(stiff, rate, 1.0)
    score_dBs = jnp.where(stiff, -jnp.expm1(-safe_rate * dB) / safe_rate, dB)
  propagators, _, noise_factors = sde_lib.propagator_and_noise(
      sde_lib.reverse_linear_matrix(sde, dtype), 2.0 * sde.friction, linear_dBs, sde.num_doublings,
      sde.decay_rate)
  return propagators, noise_factors, score_times, score_dBs


def _posterior_schedule(sde, method, times, dtype):
  """Per-step coefficients of the posterior-mean samplers on the decreasing times (N + 1,).

  Returns (gains (N, n, n), weights (N, n), noise_factors (N, n, n), tweedie_rows (N, n), tweedie_scales (N,)):
  step k maps u at t_k to gains[k] u + weights[k] x0_hat + noise_factors[k] z at t_{k+1}, where x0_hat =
  (s + tweedie_rows[k] . u) / tweedie_scales[k] for the last-block score s at (u, t_k) and z ~ N(0, I)
  (noise_factors are zero for 'ddim'). Computed in float64 and cast; see the module docstring.
  """
  with jax.enable_x64(True):
    integrated = np.asarray(sde_lib.integrated_beta(sde, jnp.asarray(np.asarray(times, np.float64))))
    transition, _, _ = sde_lib.propagator_and_noise(
        sde_lib.drift_matrix(sde, jnp.float64), sde_lib.noise_variance(sde), integrated[:-1] - integrated[1:],
        sde.num_doublings, sde.decay_rate)
    transition = np.asarray(transition, np.float64)
  # x_0 known, auxiliaries integrated out: the means phi_t = Phi[:, 0], row n of Sigma_t^{-1} and its factor.
  phi, rows, factor = flow_schedule.kernel_moments(sde, integrated)
  # Batched over the N steps (a Python loop would make tracing grow with N): 'now' is t_k, where the score is
  # evaluated, 'next' is t_{k+1} < t_k.
  now_mean, now_factor, next_mean, next_factor = phi[:-1], factor[:-1], phi[1:], factor[1:]
  # Tweedie: s = -[Sigma_t^{-1} (u - phi_t x0_hat)]_last, so x0_hat = (s + r . u) / c, c = (Sigma_t^{-1} phi_t)_n.
  r = rows[:-1]
  c = np.sum(r * now_mean, axis=-1)
  if method == "ancestral":  # u_s | u_t, x_0: the forward process's exact conditional
    next_cov = next_factor @ np.swapaxes(next_factor, -1, -2)
    cross = next_cov @ np.swapaxes(transition, -1, -2)  # Cov(u_s, u_t | x_0) = Sigma_s A^T
    gain = np.swapaxes(np.linalg.solve(np.swapaxes(now_factor, -1, -2),
                                       np.linalg.solve(now_factor, np.swapaxes(cross, -1, -2))), -1, -2)
    noise = np.linalg.cholesky(_nearest_psd(next_cov - gain @ np.swapaxes(cross, -1, -2), next_cov))
  else:  # 'ddim': the same standardised noise L_t^{-1} (u - phi_t x0_hat) carried to t_{k+1}
    gain = next_factor @ np.linalg.inv(now_factor)
    noise = np.zeros_like(gain)
  weight = next_mean - np.einsum("kij,kj->ki", gain, now_mean)  # multiplies x0_hat = (s + r . u) / c
  return tuple(jnp.asarray(x, dtype) for x in (gain, weight, noise, r, c))


def _nearest_psd(cov, scale_reference):
  """cov (..., n, n) symmetrised, with round-off negative eigenvalues lifted to a tiny positive floor (for a
  Cholesky; the last step's conditional covariance is zero up to round-off)."""
  cov = 0.5 * (cov + np.swapaxes(cov, -1, -2))
  values, vectors = np.linalg.eigh(cov)
  scale = np.abs(np.diagonal(scale_reference, axis1=-2, axis2=-1)).max(axis=-1, keepdims=True)
  floor = 1e-14 * np.maximum(scale, 1e-300)
  return (vectors * np.maximum(values, floor)[..., None, :]) @ np.swapaxes(vectors, -1, -2)


def sample_with_nfe(sde: sde_lib.LangevinSDE, score_fn: Callable, params: Any, rng: jax.Array,
                    sample_ids: jax.Array, data_shape: tuple[int, ...], num_steps: int = 100,
                    method: str = "lie_trotter", grid: str = "uniform", rho: float = 7.0, denoise: bool = True,
                    ode_solver: str = "tsit5", ode_rtol: float = 1e-5, ode_atol: float = 1e-5,
                    ode_max_steps: int = 4096, ode_variable: str = "flow", multistep_order: int = 3, time_variable: str = "b",
                    clip_x0: tuple[Any, Any] | None = None, dtype=None) -> Samples:
  """Draws x_0 for each id in sample_ids (num_samples,); returns Samples(x (num_samples, *data_shape), nfe).

  score_fn(params, u (b, n, *data_shape), t (b,)) -> last-block score (b, *data_shape). num_steps, grid and
  rho set the steps of the fixed-step methods; ode_* the adaptive one (the tolerances may be traced).
  denoise adds a final noise-free Euler step from eps to t = 0. Jit it with the other settings static
  (`make_sampler` does).
  """
  if method not in METHODS:
    raise ValueError(f"sampling.method = {method!r} is not allowed: it must be one of {METHODS}.")
  dtype = dtype or jnp.result_type(float)
  n = sde.order
  num_samples = sample_ids.shape[0]
  state_shape = (n,) + tuple(data_shape)
  u = prior_draws(rng, sample_ids, n, data_shape, dtype)
  _, noise_keys = _sample_keys(rng, sample_ids)

  def batch_times(t):
    return jnp.full((num_samples,), t, dtype)

  if method == "ode_adaptive":
    u, nfe = _solve_adaptively(sde, score_fn, params, u, ode_solver, ode_rtol, ode_atol, ode_max_steps,
                               ode_variable, clip_x0)
    return Samples(x=_denoise(sde, score_fn, params, u, dtype) if denoise else u[:, 0], nfe=nfe)

  # The schedule depends on static settings only: it is computed here, when the sampler is traced, and enters
  # the program as constants. (Left to XLA, its constant folding of the kernel took compile time that grew
  # with the number of steps.)
  with jax.ensure_compile_time_eval():
    times = time_grid(sde, num_steps, grid, rho).astype(dtype)
    t_now, t_next = times[:-1], times[1:]
    b_now, b_next = sde_lib.integrated_beta(sde, t_now), sde_lib.integrated_beta(sde, t_next)
    if method in SPLITTING_METHODS:
      propagators, noise_factors, score_times, score_dBs = _splitting_schedule(sde, method, times, dtype)
    if method in POSTERIOR_METHODS:
      gains, x0_weights, posterior_noise, tweedie_rows, tweedie_scales = _posterior_schedule(sde, method, times,
                                                                                             dtype)
    if method == "gddim":
      flow = flow_schedule.build(sde, np.asarray(times, np.float64), multistep_order, time_variable)
  steps = jnp.arange(num_steps)
  two_xi = 2.0 * sde.friction

  if method in SPLITTING_METHODS:

    def linear_step(u, propagator, noise_factor, k):  # (A), exact
      noise = _per_sample_normal(noise_keys, k, state_shape, dtype)
      return _combine_blocks(propagator, u) + _combine_blocks(noise_factor, noise)

    def step(u, inputs):
      propagator, noise_factor, t, score_db, k = inputs
      u = linear_step(u, propagator, noise_factor, k)
      score = score_fn(params, u, batch_times(t))
      return u.at[:, -1].add(two_xi * score_db * (score + u[:, -1])), None  # (S)

    u, _ = jax.lax.scan(step, u, (propagators[:-1], noise_factors[:-1], score_times, score_dBs, steps))
    if method.startswith("strang"):
      u = linear_step(u, propagators[-1], noise_factors[-1], num_steps)

  elif method in POSTERIOR_METHODS:

    def step(u, inputs):
      gain, x0_weight, noise_factor, row, scale, t, k = inputs
      x0_hat = posterior_mean(score_fn(params, u, batch_times(t)), u, row, scale, clip_x0)
      u = _combine_blocks(gain, u) + x0_weight.reshape((1, n) + (1,) * len(data_shape)) * x0_hat[:, None]
      if method == "ancestral":
        u = u + _combine_blocks(noise_factor, _per_sample_normal(noise_keys, k, state_shape, dtype))
      return u, None

    u, _ = jax.lax.scan(step, u, (gains, x0_weights, posterior_noise, tweedie_rows, tweedie_scales, t_now, steps))

  elif method == "gddim":
    u = _gddim(score_fn, params, u, flow, t_now, data_shape, clip_x0, dtype)

  elif method == "euler_maruyama":

    def step(u, inputs):
      t, db, k = inputs
      noise = _per_sample_normal(noise_keys, k, state_shape[1:], dtype)
      u = u + db * _reverse_drift_per_beta(sde, u, score_fn(params, u, batch_times(t)), score_weight=2.0)
      return u.at[:, -1].add(jnp.sqrt(two_xi * db) * noise), None

    u, _ = jax.lax.scan(step, u, (t_now, b_now - b_next, steps))

  else:  # ode_heun: the trapezoid rule with an Euler predictor, on du/dB (steps b_next - b_now < 0)

    def step(u, inputs):
      t, t_after, db = inputs
      slope = _probability_flow(sde, score_fn, params, u, batch_times(t))
      predicted = u + db * slope
      slope_after = _probability_flow(sde, score_fn, params, predicted, batch_times(t_after))
      return u + 0.5 * db * (slope + slope_after), None

    u, _ = jax.lax.scan(step, u, (t_now, t_next, b_next - b_now))

  nfe = jnp.asarray(network_evaluations(method, num_steps, n, denoise), jnp.int32)
  return Samples(x=_denoise(sde, score_fn, params, u, dtype) if denoise else u[:, 0], nfe=nfe)


def posterior_mean(score: jax.Array, u: jax.Array, row: jax.Array, scale: jax.Array, clip_x0=None) -> jax.Array:
  """x0_hat = E[x_0 | u] = (s + r . u) / c by Tweedie's formula through the kernel (module docstring), clipped to
  clip_x0 = (low, high) (each broadcasting against data_shape) when given: the thresholding of DPM-Solver++ and
  Imagen, which keeps an extrapolated or far-off x0_hat inside the data's range.

  score: (batch, *data_shape); u: (batch, n, *data_shape); row: (n,); scale: (). Returns (batch, *data_shape).
  """
  x0_hat = (score + sum(row[i] * u[:, i] for i in range(u.shape[1]))) / scale
  if clip_x0 is not None:
    x0_hat = jnp.clip(x0_hat, jnp.asarray(clip_x0[0], x0_hat.dtype), jnp.asarray(clip_x0[1], x0_hat.dtype))
  return x0_hat


def _gddim(score_fn, params, u, flow: flow_schedule.FlowSchedule, t_now, data_shape, clip_x0, dtype):
  """The multistep exponential integrator of the probability-flow ODE (hold_jax/flow_schedule.py):
  u_{k+1} = Psi_k u_k + sum_j w_{k,j} x0_hat_{k-j}, x0_hat_k = (s + r_k . u_k) / c_k clipped to clip_x0."""
  num_samples, n = u.shape[:2]
  order = flow.weights.shape[1]
  coefficient_shape = (1, n) + (1,) * len(data_shape)
  as_array = lambda x: jnp.asarray(np.asarray(x), dtype)

  def step(carry, inputs):
    u, history = carry  # history (order - 1, num_samples, *data_shape): x0_hat_{k-1}, x0_hat_{k-2}, ...
    transition, weights, row, scale, t = inputs
    x0_hat = posterior_mean(score_fn(params, u, jnp.full((num_samples,), t, dtype)), u, row, scale, clip_x0)
    u = _combine_blocks(transition, u) + weights[0].reshape(coefficient_shape) * x0_hat[:, None]
    for j in range(1, order):
      u = u + weights[j].reshape(coefficient_shape) * history[j - 1][:, None]
    history = jnp.concatenate([x0_hat[None], history[:-1]]) if order > 1 else history
    return (u, history), None

  history = jnp.zeros((max(order - 1, 0), num_samples) + tuple(data_shape), dtype)
  inputs = (as_array(flow.transitions), as_array(flow.weights), as_array(flow.tweedie_row),
            as_array(flow.tweedie_scale), t_now)
  (u, _), _ = jax.lax.scan(step, (u, history), inputs)
  return u


def _denoise(sde, score_fn, params, u, dtype):
  """x after a noise-free Euler step of the reverse SDE from eps to t = 0: (num_samples, *data_shape).

  The score enters the last block only, so for order >= 2 x's step is -B(eps) (F u)_0 and the network is
  not evaluated (its output would be discarded).
  """
  last_db = sde_lib.integrated_beta(sde, jnp.asarray(sde.eps, dtype))
  if sde.order == 1:
    score = score_fn(params, u, jnp.full(u.shape[:1], sde.eps, dtype))
  else:
    score = jnp.zeros_like(u[:, -1])
  return (u + last_db * _reverse_drift_per_beta(sde, u, score, score_weight=2.0))[:, 0]


def sample(sde: sde_lib.LangevinSDE, score_fn: Callable, params: Any, rng: jax.Array, sample_ids: jax.Array,
           data_shape: tuple[int, ...], num_steps: int = 100, method: str = "lie_trotter", **settings
           ) -> jax.Array:
  """The samples x (num_samples, *data_shape) of `sample_with_nfe` (same arguments)."""
  return sample_with_nfe(sde, score_fn, params, rng, sample_ids, data_shape, num_steps, method, **settings).x


_SETTINGS = ("num_steps", "method", "grid", "rho", "denoise", "ode_solver", "ode_rtol", "ode_atol", "ode_max_steps",
             "ode_variable", "multistep_order", "time_variable")


def make_sampler(sde: sde_lib.LangevinSDE, score_fn: Callable, data_shape: tuple[int, ...], sampling_config,
                 dtype=None, return_nfe: bool = False, data_range: tuple[Any, Any] | None = None) -> Callable:
  """jit(sample)(params, rng, sample_ids) with the settings of `config.sampling`.

  The jitted function returns x (num_samples, *data_shape), or `Samples(x, nfe)` with return_nfe.
  Fields absent from sampling_config (e.g. the ode_* fields of an older config) keep `sample_with_nfe`'s defaults.
  data_range: (low, high) of the data (input_pipeline.data_range), which sampling.clip_x0 = 'auto' clips
  x0_hat to in the posterior-mean samplers; None: unknown, no clipping.
  """
  check_settings(sde, sampling_config)
  settings = {field: sampling_config[field] for field in _SETTINGS if field in sampling_config}
  settings["clip_x0"] = clip_range(sampling_config.get("clip_x0", "none"), data_range)

  @jax.jit
  def sampler(params, rng, sample_ids):
    result = sample_with_nfe(sde, score_fn, params, rng, sample_ids, tuple(data_shape), dtype=dtype, **settings)
    return result if return_nfe else result.x

  return sampler

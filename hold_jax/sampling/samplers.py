"""Reverse-time samplers: splitting, Euler-Maruyama and probability-flow ODE solvers (docs/samplers.md).

Time is measured in integrated beta: a step from t_k down to t_{k+1} covers dB = B(t_k) - B(t_{k+1}) > 0.
In reverse time the SDE per unit of B is

    du = [F_A u + 2 xi (s_last + u_last) e_last] dB + G dW,   F_A = S F S,

and the probability-flow ODE, written forward in B (and solved from B(T) down to B(eps)), is

    du/dB = F u - xi s_last e_last                                          (`adaptive_ode.probability_flow_vector_field`).

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
                  past x0_hat values extrapolated in sampling.time_variable; hold_jax/sampling/flow_schedule.py). Exact for
                  a point mass; converges to the ODE at the multistep order. NFE N. sampling.stochasticity =
                  lambda > 0 integrates gDDIM's stochastic family instead (1: the reverse SDE), exact in law
                  for a point mass.
  'euler_maruyama' u <- u + dB [-F u + 2 xi s e_last] + sqrt(dB) G z, score at (u_k, t_k). NFE N.
  'ode_heun'      Heun (explicit trapezoid) on the probability-flow ODE, the score at both ends of every step:
                  NFE 2N. (EDM makes its last step Euler because its grid ends at sigma = 0, where the score
                  is undefined; ours ends at eps > 0, so every step is a full Heun step.)
  'ode_adaptive'  the same ODE with diffrax (Tsit5 by default) and a PID step-size controller, every sample
                  with its own steps; the NFE is counted (`Samples.nfe`). sampling.ode_variable = 'flow' solves
                  it in the flow coordinates y = Psi(B_ref, B) u (hold_jax/sampling/flow_coordinates.py), without the
                  stiff linear part and with x0_hat clipped to sampling.clip_x0; 'state' solves it in u.

Plus one evaluation for the optional denoising step (a noise-free Euler step of the reverse SDE from eps to 0,
as in score_sde) when the order is 1; for order >= 2 the denoised output is x0_gls = a_eps . u, the
least-squares estimate of x_0 from all blocks (noise sigma_eff(eps) instead of the data block's own), which
needs no network.

Choices. The measurements behind them are the moment tests on Gaussian data with the exact score
(tests/test_sampling.py) and the trained toy models (benchmarks/toy2d_quality.py, figures in
benchmarks/RESULTS.md: the share of samples within 0.01 of the spirals and the sliced Wasserstein distance):
  * Strang's score time. On broad data the score at the step's midpoint (in B) gives smaller moment errors than
    Lie-Trotter on uniform and quadratic grids; the step's start is worse on a uniform grid and slightly better
    on a quadratic one (for order 1 several times worse than the midpoint), and the step's end diverges on the
    uniform grid. With stiff data only a score taken where the state lives works (next point). On the toy,
    Strang at the midpoint on the 'edm' grid is well ahead of Lie-Trotter at 20-30 NFE.
  * Exponential score step. Near eps the score step is stiff: for concentrated data s ~ -(u_last - m) / l_t^2
    with l_t^2 ~ B (2 xi / l_t^2 is in the hundreds at t = 1e-3 for order 3), and the Euler step multiplies
    u_last - m by 1 - 2 xi dB / l_t^2, below -1 (divergence) once dB > l_t^2 / xi. Splitting the score as
    s = -u_last / l_t^2 + r, with l_t the BCSM score scale (the network's s = -eps_theta / l_t under the 'eps'
    parametrisation) and r frozen over the step, the score sub-flow du_last/dB = 2 xi (s + u_last) is linear
    with rate -c = -2 xi (1 / l_t^2 - 1) and solves exactly to

        u_last <- u_last + 2 xi h (s + u_last),   h = (1 - exp(-c dB)) / c  (<= dB, -> dB as c dB -> 0),

    the Euler step with dB replaced by h: it never overshoots, and for point-mass data it lands on the
    posterior mean. The score must be taken where the state is, t_{k+1} for Lie-Trotter (after the full
    linear step) and t_mid for Strang: for near point-mass data both then keep close to the true spread, where
    Euler Lie-Trotter and the exponential step with the score at t_k are far too wide and Euler Strang
    diverges. The price: -1 / l_t^2 is the score's stiffness only for data concentrated below the noise level;
    for broader data the step is over-damped (first order, but with a large constant: it needs more steps than
    Lie-Trotter for the same error). On the toy it is ahead of Lie-Trotter at 10-15 NFE and behind Euler
    Strang from 20.
  * Posterior-mean steps. Both are exact at any number of steps when the data is a point mass (x0_hat is then
    exact for every u), so the stiffness near eps costs them nothing: on the toy at 20 NFE 'ancestral' puts
    more samples within 0.01 of the spirals than the splitting samplers. But they drop Var[x_0 | u_t] at every step, a first order
    loss of spread with a large constant for broad data ('ddim' loses less than 'ancestral'), which is what the
    swiss roll's sliced Wasserstein distance sees at 20 NFE ('ancestral' well above Strang).
  * Heun and the adaptive solver integrate in B rather than t: beta(t) leaves the vector field (a linear
    schedule is a change of variable, not a source of error), and the score time of a node is t(B)
    (`time_at_integrated_beta`). The probability-flow ODE is as stiff as the score step: explicit Heun
    needs far more NFE than the stochastic samplers on the toy, and still leaves a few samples far off.

Where things live: the time grids and per-step coefficients in hold_jax/sampling/sampler_schedules.py (gddim's in
hold_jax/sampling/flow_schedule.py), one step function per fixed-step method and their registry in
hold_jax/sampling/fixed_step_samplers.py (a new sampler is a step function and one registry line), the adaptive ODE in
hold_jax/sampling/adaptive_ode.py, shared pieces in hold_jax/sampling/sampler_parts.py; this module checks the settings and draws.

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

import jax
import jax.numpy as jnp

from hold_jax import field_checks
from hold_jax.process import sde as sde_lib
from hold_jax.sampling import adaptive_ode
from hold_jax.sampling import fixed_step_samplers
from hold_jax.sampling import flow_schedule
from hold_jax.sampling import sampler_parts
from hold_jax.sampling import sampler_schedules

SPLITTING_METHODS = ("lie_trotter", "strang", "lie_trotter_exponential", "strang_exponential")
POSTERIOR_METHODS = ("ancestral", "ddim")
FIXED_STEP_METHODS = tuple(fixed_step_samplers.METHODS)
METHODS = FIXED_STEP_METHODS + ("ode_adaptive",)
GRIDS = sampler_schedules.GRIDS
ODE_SOLVERS = adaptive_ode.SOLVERS
ODE_VARIABLES = adaptive_ode.VARIABLES

# The pieces other modules use, from where they live.
time_grid = sampler_schedules.time_grid
time_at_integrated_beta = sde_lib.time_at_integrated_beta


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
    field_checks.require_positive(f"sampling.{field}", sampling_config.get(field, 1e-5))
  flow_schedule.check_settings(sampling_config.get("multistep_order", 3), sampling_config.get("time_variable", "b"),
                               sampling_config.get("stochasticity", 0.0))
  clip_range(sampling_config.get("clip_x0", "none"), None)
  variable = sampling_config.get("ode_variable", "flow")
  if variable not in ODE_VARIABLES:
    raise ValueError(f"sampling.ode_variable = {variable!r} is not allowed: it must be one of {ODE_VARIABLES}.")
  field_checks.require_int("sampling.ode_max_steps", sampling_config.get("ode_max_steps", 4096), 1)
  for field in ("num_samples", "batch_size"):  # read by the jobs that draw samples (sample_job.py, image_quality.py)
    if field in sampling_config:
      field_checks.require_int(f"sampling.{field}", sampling_config[field], 1)


def network_evaluations(method: str, num_steps: int, order: int, denoise: bool) -> int:
  """NFE of a fixed-step method: 1 per step (2 for 'ode_heun'), plus 1 to denoise when order == 1."""
  if method not in FIXED_STEP_METHODS:
    raise ValueError(f"{method!r} has no fixed NFE: it must be one of {FIXED_STEP_METHODS}.")
  per_step = fixed_step_samplers.METHODS[method].evaluations_per_step
  return per_step * num_steps + int(denoise and order == 1)


def non_finite_advice(sampling_config) -> str:
  """What to change when `sampling_config` produced non-finite samples (sample_job.sample_to_disk says it)."""
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
# Sampling.


def prior_draws(rng: jax.Array, sample_ids: jax.Array, order: int, data_shape: tuple[int, ...], dtype=None
                ) -> jax.Array:
  """The draws u_T ~ N(0, I) (the stationary law of every order) that every sampler starts from.

  Returns (num_samples, order, *data_shape); sample k's comes from fold_in(rng, sample_ids[k]) alone and does
  not depend on the method or the number of steps.
  """
  prior_keys, _ = sampler_parts.sample_keys(rng, sample_ids)
  shape = (order,) + tuple(data_shape)
  return jax.vmap(lambda key: jax.random.normal(key, shape, dtype or jnp.result_type(float)))(prior_keys)


def sample_with_nfe(sde: sde_lib.LangevinSDE, score_fn: Callable, params: Any, rng: jax.Array,
                    sample_ids: jax.Array, data_shape: tuple[int, ...], num_steps: int = 100,
                    method: str = "lie_trotter", grid: str = "uniform", rho: float = 7.0, denoise: bool = True,
                    ode_solver: str = "tsit5", ode_rtol: float = 1e-5, ode_atol: float = 1e-5,
                    ode_max_steps: int = 4096, ode_variable: str = "flow", multistep_order: int = 3,
                    time_variable: str = "b", stochasticity: float = 0.0, clip_x0: tuple[Any, Any] | None = None,
                    dtype=None) -> Samples:
  """Draws x_0 for each id in sample_ids (num_samples,); returns Samples(x (num_samples, *data_shape), nfe).

  score_fn(params, u (b, n, *data_shape), t (b,)) -> last-block score (b, *data_shape). num_steps, grid and
  rho set the steps of the fixed-step methods; ode_* the adaptive one (the tolerances may be traced).
  denoise: order 1 a final noise-free Euler step from eps to t = 0, orders >= 2 x0_gls at eps
  (`sampler_parts.denoise`). Jit it with the other settings static
  (`make_sampler` does).
  """
  if method not in METHODS:
    raise ValueError(f"sampling.method = {method!r} is not allowed: it must be one of {METHODS}.")
  dtype = dtype or jnp.result_type(float)
  u = prior_draws(rng, sample_ids, sde.order, data_shape, dtype)
  if method == "ode_adaptive":
    u, nfe = adaptive_ode.solve(sde, score_fn, params, u, ode_solver, ode_rtol, ode_atol, ode_max_steps,
                                ode_variable, clip_x0)
  else:
    _, noise_keys = sampler_parts.sample_keys(rng, sample_ids)
    context = fixed_step_samplers.Context(sde, score_fn, params, noise_keys, (sde.order,) + tuple(data_shape),
                                          dtype, clip_x0)
    with jax.ensure_compile_time_eval():
      times = time_grid(sde, num_steps, grid, rho).astype(dtype)
    u = fixed_step_samplers.run(method, context, u, times,
                                dict(multistep_order=multistep_order, time_variable=time_variable,
                                     stochasticity=stochasticity))
    nfe = jnp.asarray(network_evaluations(method, num_steps, sde.order, denoise), jnp.int32)
  return Samples(x=sampler_parts.denoise(sde, score_fn, params, u, dtype) if denoise else u[:, 0], nfe=nfe)


def sample(sde: sde_lib.LangevinSDE, score_fn: Callable, params: Any, rng: jax.Array, sample_ids: jax.Array,
           data_shape: tuple[int, ...], num_steps: int = 100, method: str = "lie_trotter", **settings
           ) -> jax.Array:
  """The samples x (num_samples, *data_shape) of `sample_with_nfe` (same arguments)."""
  return sample_with_nfe(sde, score_fn, params, rng, sample_ids, data_shape, num_steps, method, **settings).x


_SETTINGS = ("num_steps", "method", "grid", "rho", "denoise", "ode_solver", "ode_rtol", "ode_atol", "ode_max_steps",
             "ode_variable", "multistep_order", "time_variable", "stochasticity")


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

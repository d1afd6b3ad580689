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
                  past x0_hat values extrapolated in sampling.time_variable; hold_jax/sampling/flow_schedule.py). Exact
                  for a point mass; converges to the ODE at the multistep order. NFE N. sampling.stochasticity =
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

Why each method is built the way it is (Strang's score time, the exponential score step, the posterior-mean
steps, integrating in B), with the measurements behind it: docs/samplers.md, "Why the methods are built this
way".

Where things live: the time grids and per-step coefficients in hold_jax/sampling/sampler_schedules.py (gddim's in
hold_jax/sampling/flow_schedule.py), one step function per fixed-step method and their registry in
hold_jax/sampling/fixed_step_samplers.py (a new sampler is a step function and one registry line), the adaptive ODE in
hold_jax/sampling/adaptive_ode.py, shared pieces in hold_jax/sampling/sampler_parts.py; this module checks the settings
and draws.

Every fixed-step sampler is one `lax.scan` over steps. Its schedule (times, and the kernel matrices of all
steps) depends on static settings only, so it is computed once when the sampler is traced and enters the
program as constants: compilation does not grow with the number of steps. Per-sample seeds: sample k's prior
draw and noise come from fold_in(rng, sample_ids[k]) only, so it is the same whatever the batch size or device
count (for a score function that treats examples independently). The prior draw does not depend on the method
or the number of steps, so the deterministic ODE samplers map the same prior draws at any setting.
"""
from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class Settings:
  """What a sampler is built from: the fields of config.sampling it reads, checked when made.

  `settings_from_config` makes one from config.sampling at the edge (the command, the API, config_checks);
  a notebook may write Settings(method='gddim', num_steps=20) directly. Every value is checked in
  __post_init__ with the config field named, so the samplers below never see a bad one; the time grid's
  fields are checked against the process by `check_grid` (settings_from_config does). clip_x0 is the
  resolved (low, high) range or None, not the config's string.
  """

  method: str = "lie_trotter"
  num_steps: int = 100
  grid: str = "uniform"
  rho: float = 7.0
  denoise: bool = True
  ode_solver: str = "tsit5"
  ode_rtol: float = 1e-5
  ode_atol: float = 1e-5
  ode_max_steps: int = 4096
  ode_variable: str = "flow"
  multistep_order: int = 3
  time_variable: str = "b"
  stochasticity: float = 0.0
  clip_x0: tuple[float, float] | None = None

  def __post_init__(self):
    field_checks.require(self.method in METHODS, "sampling.method", self.method, f"one of {METHODS}")
    field_checks.require_int("sampling.num_steps", self.num_steps, 1)
    field_checks.require(self.grid in GRIDS, "sampling.grid", self.grid, f"one of {GRIDS}")
    field_checks.require(self.denoise in (True, False), "sampling.denoise", self.denoise, "True or False")
    field_checks.require(self.ode_solver in ODE_SOLVERS, "sampling.ode_solver", self.ode_solver,
                         f"one of {tuple(ODE_SOLVERS)}")
    for field in ("ode_rtol", "ode_atol"):
      if not isinstance(getattr(self, field), jax.Array):  # a traced tolerance (one compilation for many) is not
        field_checks.require_positive(f"sampling.{field}", getattr(self, field))  # a config's: not checked
    field_checks.require_int("sampling.ode_max_steps", self.ode_max_steps, 1)
    field_checks.require(self.ode_variable in ODE_VARIABLES, "sampling.ode_variable", self.ode_variable,
                         f"one of {ODE_VARIABLES}")
    flow_schedule.check_settings(self.multistep_order, self.time_variable, self.stochasticity)

  def check_grid(self, sde: sde_lib.LangevinSDE) -> None:
    """Raises ValueError naming sampling.num_steps, grid or rho when they give no time grid for `sde`."""
    time_grid(sde, self.num_steps, self.grid, self.rho)


def settings_from_config(sde: sde_lib.LangevinSDE, sampling_config, data_range: tuple[Any, Any] | None = None
                         ) -> Settings:
  """config.sampling checked once into Settings; fields it lacks (an older config's) keep Settings' defaults.

  data_range: (low, high) of the data (input_pipeline.data_range), what sampling.clip_x0 = 'auto' clips the
  posterior mean to; None: unknown, no clipping. Raises ValueError naming the first bad field, including the
  jobs' sampling.num_samples and sampling.batch_size (sample_job.py, image_quality.py read them).
  """
  fields = {field.name: sampling_config[field.name] for field in dataclasses.fields(Settings)
            if field.name != "clip_x0" and field.name in sampling_config}
  settings = Settings(**fields, clip_x0=clip_range(sampling_config.get("clip_x0", "none"), data_range))
  settings.check_grid(sde)
  for field in ("num_samples", "batch_size"):
    if field in sampling_config:
      field_checks.require_int(f"sampling.{field}", sampling_config[field], 1)
  return settings


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
                    sample_ids: jax.Array, data_shape: tuple[int, ...], settings: Settings = Settings(),
                    dtype=None) -> Samples:
  """Draws x_0 for each id in sample_ids (num_samples,); returns Samples(x (num_samples, *data_shape), nfe).

  score_fn(params, u (b, n, *data_shape), t (b,)) -> last-block score (b, *data_shape). settings.num_steps,
  grid and rho set the steps of the fixed-step methods; ode_* the adaptive one. denoise: order 1 a final
  noise-free Euler step from eps to t = 0, orders >= 2 x0_gls at eps (`sampler_parts.denoise`). Jit it with
  the settings static (`make_sampler` does).
  """
  dtype = dtype or jnp.result_type(float)
  u = prior_draws(rng, sample_ids, sde.order, data_shape, dtype)
  if settings.method == "ode_adaptive":
    u, nfe = adaptive_ode.solve(sde, score_fn, params, u, settings.ode_solver, settings.ode_rtol, settings.ode_atol,
                                settings.ode_max_steps, settings.ode_variable, settings.clip_x0)
  else:
    _, noise_keys = sampler_parts.sample_keys(rng, sample_ids)
    context = fixed_step_samplers.Context(sde, score_fn, params, noise_keys, (sde.order,) + tuple(data_shape),
                                          dtype, settings.clip_x0)
    with jax.ensure_compile_time_eval():
      times = time_grid(sde, settings.num_steps, settings.grid, settings.rho).astype(dtype)
    u = fixed_step_samplers.run(settings.method, context, u, times,
                                dict(multistep_order=settings.multistep_order, time_variable=settings.time_variable,
                                     stochasticity=settings.stochasticity))
    nfe = jnp.asarray(network_evaluations(settings.method, settings.num_steps, sde.order, settings.denoise),
                      jnp.int32)
  x = sampler_parts.denoise(sde, score_fn, params, u, dtype) if settings.denoise else u[:, 0]
  return Samples(x=x, nfe=nfe)


def sample(sde: sde_lib.LangevinSDE, score_fn: Callable, params: Any, rng: jax.Array, sample_ids: jax.Array,
           data_shape: tuple[int, ...], num_steps: int = 100, method: str = "lie_trotter", dtype=None, **fields
           ) -> jax.Array:
  """The samples x (num_samples, *data_shape) of `sample_with_nfe` with Settings(num_steps, method, **fields):
  plain arguments, for a notebook."""
  return sample_with_nfe(sde, score_fn, params, rng, sample_ids, data_shape,
                         Settings(num_steps=num_steps, method=method, **fields), dtype).x


def make_sampler(sde: sde_lib.LangevinSDE, score_fn: Callable, data_shape: tuple[int, ...], settings,
                 dtype=None, return_nfe: bool = False, data_range: tuple[Any, Any] | None = None) -> Callable:
  """jit(sample)(params, rng, sample_ids) with `settings`: a Settings, or config.sampling (made into one by
  settings_from_config, with data_range for sampling.clip_x0 = 'auto').

  The jitted function returns x (num_samples, *data_shape), or `Samples(x, nfe)` with return_nfe.
  """
  if not isinstance(settings, Settings):
    settings = settings_from_config(sde, settings, data_range)

  @jax.jit
  def sampler(params, rng, sample_ids):
    result = sample_with_nfe(sde, score_fn, params, rng, sample_ids, tuple(data_shape), settings, dtype)
    return result if return_nfe else result.x

  return sampler

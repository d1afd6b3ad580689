"""Log-densities by the probability-flow ODE, the auxiliary-entropy NLL bound, and bits/dim (docs/likelihood.md).

The probability-flow ODE of docs/samplers.md, du/ds = beta [-F u + xi s_last e_last] in s = T - t, is in
forward time t

    du/dt = f(u, t) = beta(t) [F u - xi s_last(u, t) e_last],

and along its paths the density of the state obeys the instantaneous change of variables
d/dt log p_t(u_t) = -div f(u_t, t). Integrating u and the divergence together FORWARD from t = eps to T gives

    log p_eps(u_eps) = log N(u_T; 0, I) + int_eps^T div f(u_t, t) dt.

The divergence needs the score's Jacobian on the last block only: F contributes D tr F = -xi D (D data
coordinates per block), and s_last enters the last block alone, so

    div f = -beta(t) xi [D + tr(d s_last / d u_last)].

The linear part is therefore exact. The trace is estimated as the mean of z^T J z over a set of probes z on
the last block whose second moment is the identity: Rademacher probes (Hutchinson's estimator, for images; one
or several per example, unbiased) or the scaled basis {sqrt(D) e_k} (the exact trace from D Jacobian-vector
products, for low-dimensional data). One code path serves both. An example's probes stay fixed along its whole
ODE path, so that the adaptive solver integrates one smooth vector field.

Where the ODE starts. As score_sde (VP with eps) and CLD-SGM do, the augmented data point u = (x_0, aux_0)
itself is placed at t = eps. The number we compute is then exact for the generative model that runs the
probability-flow ODE from N(0, I) at T down to eps and outputs that state: p_model(x) is the x-marginal of the
ODE's density at eps (the sampler without its final denoising step). We do not perturb x_0 by the forward
kernel first: a density at eps of a perturbed point would bound the likelihood of the data only with a
decoder p(x_0 | u_eps), which this model does not have.

The bound. For order n > 1 the model's density is over the augmented state, so for ANY law q(aux | x_0) of
the n - 1 auxiliary blocks (Jensen)

    -log p_model(x_0) <= E_q[-log p_model(x_0, aux)] - H[q],   gap = E_q KL(q(aux | x_0) || p_model(aux | x_0)) >= 0.

docs/likelihood.md takes q = the auxiliaries' initial Gaussians, H[q] = sum_k D/2 log(2 pi e sigma_k^2)
(eval.aux_distribution = 'initial'). That q ignores the noise the last block gains by t = eps, which leaves a
clear gap on Gaussian data, larger for order 3 than for order 2; 'kernel' draws the auxiliaries from the
forward kernel's law at eps given x_0 instead and all but closes that gap on broad Gaussian data
(tests/test_likelihood.py checks both). One auxiliary draw per example gives an unbiased estimate of the
right-hand side; averaged over examples it is an upper bound on the NLL and is always called a bound. For order 1 (VP) there are no
auxiliaries and the number is the model's NLL itself (up to solver error and Hutchinson noise).

Bits/dim. Images with L pixel levels are dequantised uniformly and scaled as x = 2 (k + U) / L - 1
(image_data.to_model_space), i.e. x = (2 / L) y with y = k + U in [0, L)^D. Then p_y(y) = p_x(x) (2 / L)^D and

    bpd = -log2 p_y(y) / D = nll_x / (D log 2) + log2(L / 2),

which is nll_x / (D log 2) + 7 for 8-bit images (L = 256, scale 2/256 = 1/128). A uniform density on
[-1, 1]^D (nll_x = D log 2) gives log2 L = 8 bits/dim. By Jensen the dequantised bound is also a bound on
the discrete data's NLL.

Shapes: x (batch, *data_shape); u (batch, n, *data_shape); per-example results (batch,). Per-example keys
make example k's auxiliaries and probes the same whatever the batch it is evaluated in.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from hold_jax import field_checks
from hold_jax.process import perturbation_kernel
from hold_jax.process import sde as sde_lib

ScoreFn = Callable[[Any, jax.Array, jax.Array], jax.Array]  # score_fn(params, u, t) -> (batch, *data_shape)

DIVERGENCES = ("exact", "hutchinson")
# Adaptive explicit Runge-Kutta solvers with an embedded error estimate, all first-same-as-last.
SOLVERS = {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5, "bosh3": diffrax.Bosh3}


@dataclasses.dataclass(frozen=True)
class ODESettings:
  """How the log-density is integrated; hashable, so it can be closed over by jit.

  Attributes:
    divergence: 'exact' (D Jacobian-vector products per evaluation) or 'hutchinson' (Rademacher probes).
    num_probes: Hutchinson probes per example, averaged (ignored for 'exact', which uses D).
    solver: a key of SOLVERS.
    rtol, atol: the adaptive step-size controller's tolerances, on the state and the accumulated divergence.
    max_steps: per example; an example that needs more is reported as not solved (NaN), never cut short.
  """

  divergence: str = "exact"
  num_probes: int = 1
  solver: str = "tsit5"
  rtol: float = 1e-5
  atol: float = 1e-5
  max_steps: int = 4096

  def __post_init__(self):
    field_checks.require(self.divergence in DIVERGENCES, "eval.divergence", self.divergence,
                         f"one of {DIVERGENCES + ('auto',)}")
    field_checks.require(self.solver in SOLVERS, "eval.solver", self.solver, f"one of {sorted(SOLVERS)}")
    field_checks.require_int("eval.num_probes", self.num_probes, 1)
    field_checks.require_int("eval.max_steps", self.max_steps, 1)
    field_checks.require_positive("eval.ode_rtol", self.rtol)  # inf would never step
    field_checks.require_positive("eval.ode_atol", self.atol)

  @property
  def evaluations_per_step(self) -> int:
    """Vector-field evaluations per attempted step: the stages after the first (reused, FSAL)."""
    return len(SOLVERS[self.solver]().tableau.c)


def settings_from_config(eval_config, data_shape: tuple[int, ...]) -> ODESettings:
  """ODESettings of `config.eval`, checked; divergence 'auto' is exact for point data (D,) and Hutchinson for
  images."""
  divergence = eval_config.divergence
  if divergence == "auto":
    divergence = "exact" if len(data_shape) == 1 else "hutchinson"
  settings = ODESettings(divergence=divergence, num_probes=eval_config.num_probes, solver=eval_config.solver,
                         rtol=eval_config.ode_rtol, atol=eval_config.ode_atol, max_steps=eval_config.max_steps)
  return dataclasses.replace(settings, rtol=float(settings.rtol), atol=float(settings.atol))


# ----------------------------------------------------------------------------------------------------------
# The forward-time vector field and its divergence, for one example.


def drift_and_divergence(sde: sde_lib.LangevinSDE, score_fn: ScoreFn, params: Any, u: jax.Array, t: jax.Array,
                         probes: jax.Array) -> tuple[jax.Array, jax.Array]:
  """f(u, t) = du/dt of the probability-flow ODE in forward time and its divergence, for ONE example.

  Args:
    u: (n, *data_shape) state; t: () time.
    probes: (num_probes, *data_shape) on the last block, with mean z z^T = I (exactly, for `exact_probes`,
      or in expectation, for `rademacher_probes`).

  Returns:
    drift (n, *data_shape) = beta [F u - xi s_last e_last]; divergence () = -beta xi [D + tr(ds_last/du_last)],
    the trace being mean_z z^T (ds_last/du_last) z.
  """
  num_coords = math.prod(u.shape[1:])

  def score_of_last_block(last_block):
    return score_fn(params, u.at[-1].set(last_block)[None], t[None])[0]

  # One linearisation serves the drift (its primal) and every probe (its tangents).
  score_last, jvp_of_score = jax.linearize(score_of_last_block, u[-1])
  products = jax.vmap(jvp_of_score)(probes)  # (num_probes, *data_shape): J z
  trace = jnp.mean(jnp.sum((probes * products).reshape(probes.shape[0], -1), axis=-1))
  drift = -sde_lib.probability_flow_drift(sde, u[None], t[None], score_last[None])[0]
  return drift, -sde_lib.beta(sde, t) * sde.friction * (num_coords + trace)


def exact_probes(data_shape: tuple[int, ...], dtype) -> jax.Array:
  """(D, *data_shape) probes sqrt(D) e_k: mean_k z_k^T J z_k = tr J exactly, from D Jacobian-vector products."""
  num_coords = math.prod(data_shape)
  return (math.sqrt(num_coords) * jnp.eye(num_coords, dtype=dtype)).reshape((num_coords,) + tuple(data_shape))


def rademacher_probes(key: jax.Array, num_probes: int, data_shape: tuple[int, ...], dtype) -> jax.Array:
  """(num_probes, *data_shape) independent +-1 entries: E z z^T = I, and z^T J z has the least variance of
  the estimators with independent entries (Hutchinson)."""
  return jax.random.rademacher(key, (num_probes,) + tuple(data_shape), dtype=dtype)


def divergence_probes(settings: ODESettings, keys: jax.Array, data_shape: tuple[int, ...], dtype) -> jax.Array:
  """(batch, num_probes, *data_shape) probes of `settings.divergence`; keys (batch,), used for 'hutchinson'."""
  if settings.divergence == "exact":
    probes = exact_probes(data_shape, dtype)
    return jnp.broadcast_to(probes, (keys.shape[0],) + probes.shape)
  return jax.vmap(lambda key: rademacher_probes(key, settings.num_probes, data_shape, dtype))(keys)


# ----------------------------------------------------------------------------------------------------------
# The ODE log-density of the augmented state.


class LogDensity(NamedTuple):
  """Per-example results of `ode_log_density`, each (batch,).

  log_density: log p_eps(u_eps) of the model (NaN where not solved).
  prior_log_density: log prior(u_T), N(0, I) by default; divergence_integral: int_eps^T div f dt; their sum
    is log_density.
  nfe: vector-field evaluations (each one network evaluation plus its divergence): 1 + stages x steps. diffrax
    re-evaluates the first stage when the very first step is rejected, so this may undercount by a few.
  solved: False where the solver failed (e.g. more than max_steps steps).
  """

  log_density: jax.Array
  prior_log_density: jax.Array
  divergence_integral: jax.Array
  nfe: jax.Array
  solved: jax.Array
  end_state: jax.Array  # (batch, n, *data_shape) u_T, the latent code


def ode_log_density(sde: sde_lib.LangevinSDE, score_fn: ScoreFn, params: Any, u: jax.Array, probes: jax.Array,
                    settings: ODESettings,
                    prior_log_density: Callable[[jax.Array], jax.Array] = sde_lib.prior_logp) -> LogDensity:
  """log p_eps(u) of the model by the probability-flow ODE, integrated forward from t = eps to T.

  Args:
    u: (batch, n, *data_shape) states at t = eps.
    probes: (batch, num_probes, *data_shape) divergence probes of each example (`divergence_probes`).
    settings: the solver's settings (its divergence field is read by `divergence_probes`, not here).
    prior_log_density: log-density at T, (batch, n, *data_shape) -> (batch,); the model's prior is N(0, I).
      (Tests pass the exact marginal at T instead, to check the integral alone.)

  Each example is its own adaptive solve (vmapped): its step sizes, and so its result, do not depend on the
  other examples of the batch. A batch costs the steps of its slowest example.
  """
  dtype = u.dtype
  solver = SOLVERS[settings.solver]()
  controller = diffrax.PIDController(rtol=settings.rtol, atol=settings.atol)
  t_start, t_end = jnp.asarray(sde.eps, dtype), jnp.asarray(sde.T, dtype)

  def vector_field(t, state, example_probes):
    return drift_and_divergence(sde, score_fn, params, state[0], t, example_probes)

  def solve_one(u_eps, example_probes):
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field), solver, t_start, t_end, None, (u_eps, jnp.zeros((), dtype)),
        example_probes, saveat=diffrax.SaveAt(t1=True), stepsize_controller=controller,
        max_steps=settings.max_steps, throw=False)
    solved = solution.result == diffrax.RESULTS.successful
    nfe = 1 + settings.evaluations_per_step * solution.stats["num_steps"]
    return solution.ys[0][-1], solution.ys[1][-1], nfe, solved

  u_end, integral, nfe, solved = jax.vmap(solve_one)(u, probes)
  prior = prior_log_density(u_end)
  log_density = jnp.where(solved, prior + integral, jnp.nan)
  return LogDensity(log_density, prior, integral, nfe, solved, u_end)


# ----------------------------------------------------------------------------------------------------------
# The auxiliary-entropy bound (docs/likelihood.md).


AUX_DISTRIBUTIONS = ("initial", "kernel")


def check_aux_distribution(aux_distribution: str) -> None:
  field_checks.require(aux_distribution in AUX_DISTRIBUTIONS, "eval.aux_distribution", aux_distribution,
                       f"one of {AUX_DISTRIBUTIONS}")


def auxiliary_law(sde: sde_lib.LangevinSDE, aux_distribution: str, dtype) -> tuple[jax.Array, jax.Array]:
  """q(aux | x_0) per data coordinate: aux = mean_coefficients x_0 + factor z, z ~ N(0, I_{n-1}).

  'initial': the auxiliaries' initial Gaussians N(0, diag(sigma_k^2)) (docs/likelihood.md).
  'kernel': their law at t = eps under the forward kernel given x_0, N(Phi[1:, 0] x_0, Sigma_eps[1:, 1:]): by
    eps the last block has already gained noise (for order 3 at eps = 1e-3 its variance is well above its
    initial one), so this q is much closer to the model's p(aux | x) and the bound much tighter (module
    docstring; tests/test_likelihood.py).

  Returns mean_coefficients (n - 1,) and the lower-triangular factor (n - 1, n - 1).
  """
  num_aux = sde.order - 1
  check_aux_distribution(aux_distribution)
  if num_aux == 0:  # order 1 (VP): nothing to augment, H[q] = 0
    return jnp.zeros((0,), dtype), jnp.zeros((0, 0), dtype)
  if aux_distribution == "initial":
    for k, var in enumerate(sde.init_aux_var):
      if var <= 0:
        raise ValueError(f"sde.init_aux_var[{k}] = {var}: eval.aux_distribution = 'initial' needs every "
                         "auxiliary's initial variance > 0 (a point mass has no density); use 'kernel'.")
    return jnp.zeros((num_aux,), dtype), jnp.diag(jnp.sqrt(jnp.asarray(sde.init_aux_var, dtype)))
  with jax.ensure_compile_time_eval():  # a constant of the process: computed once, also while tracing a jit
    phi, sigma = _compiled_marginal(sde, jnp.asarray(sde.eps, dtype), sde_lib.initial_cov(sde, 0.0, dtype))
    return phi[1:, 0], jnp.linalg.cholesky(sigma[1:, 1:])


# One compile of the kernel for every use of the 'kernel' law, instead of a few hundred op-by-op dispatches
# or a copy inlined into every jitted caller.
_compiled_marginal = jax.jit(perturbation_kernel.marginal, static_argnums=0)


def augment_with_auxiliaries(sde: sde_lib.LangevinSDE, x: jax.Array, aux_keys: jax.Array,
                             aux_distribution: str = "initial") -> jax.Array:
  """u = (x, aux_1, ..., aux_{n-1}) with the auxiliaries drawn from q(aux | x), one key per example.

  x: (batch, *data_shape), aux_keys: (batch,). Returns (batch, n, *data_shape).
  """
  num_aux = sde.order - 1
  mean_coefficients, factor = auxiliary_law(sde, aux_distribution, x.dtype)
  if num_aux == 0:
    return x[:, None]
  noise = jax.vmap(lambda key: jax.random.normal(key, (num_aux,) + x.shape[1:], x.dtype))(aux_keys)
  mean = mean_coefficients.reshape((1, num_aux) + (1,) * (x.ndim - 1)) * x[:, None]
  aux = mean + sde_lib.apply_blocks(factor, noise)
  return jnp.concatenate([x[:, None], aux], axis=1)


def auxiliary_entropy(sde: sde_lib.LangevinSDE, num_coords: int, aux_distribution: str = "initial",
                      dtype=None) -> jax.Array:
  """H[q] in nats: num_coords/2 log det(2 pi e C) with C the (n-1) x (n-1) covariance of q; 0 for n = 1.

  For 'initial' this is sum_k num_coords/2 log(2 pi e sigma_k^2). It does not depend on x_0.
  """
  _, factor = auxiliary_law(sde, aux_distribution, dtype or jnp.result_type(float))
  log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(factor)))
  return 0.5 * num_coords * ((sde.order - 1) * jnp.log(2 * jnp.pi * jnp.e) + log_det)


class Bound(NamedTuple):
  """Per-example results of `nll_bound`, each (batch,) unless shaped otherwise.

  nll_bound: -log p_model(x, aux) - H[q] in nats, a one-draw estimate of the bound on -log p_model(x).
  joint_log_density: log p_model(x, aux) of the augmented state at eps.
  state: (batch, n, *data_shape) the augmented state (x, aux) the ODE started from.
  nfe, solved: as in LogDensity.
  """

  nll_bound: jax.Array
  joint_log_density: jax.Array
  state: jax.Array
  nfe: jax.Array
  solved: jax.Array


def nll_bound(sde: sde_lib.LangevinSDE, score_fn: ScoreFn, params: Any, x: jax.Array, keys: jax.Array,
              settings: ODESettings, aux_distribution: str = "initial",
              prior_log_density: Callable[[jax.Array], jax.Array] = sde_lib.prior_logp) -> Bound:
  """The auxiliary-entropy bound on -log p_model(x) in nats, one auxiliary draw per example.

  x: (batch, *data_shape) data, placed at t = eps; keys: (batch,) per-example keys (auxiliaries and probes).
  -log p_model(x) <= E_q[-log p_model(x, aux)] - H[q], with gap E_q KL(q(aux | x) || p_model(aux | x)).
  """
  aux_keys, probe_keys = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
  u = augment_with_auxiliaries(sde, x, aux_keys, aux_distribution)
  probes = divergence_probes(settings, probe_keys, x.shape[1:], x.dtype)
  result = ode_log_density(sde, score_fn, params, u, probes, settings, prior_log_density)
  entropy = auxiliary_entropy(sde, math.prod(x.shape[1:]), aux_distribution, x.dtype)
  return Bound(-result.log_density - entropy, result.log_density, u, result.nfe, result.solved)


def bits_per_dim(nll_nats: Any, num_coords: int, num_levels: int = 256) -> Any:
  """Bits per dimension of pixel data with num_levels levels from the NLL (nats) of its model-space density.

  With x = 2 (k + U) / L - 1 (to_model_space with dequantisation): bpd = nll / (D log 2) + log2(L / 2),
  i.e. + 7 for 8-bit images. Works on numbers and arrays alike.
  """
  return nll_nats / (num_coords * np.log(2.0)) + np.log2(num_levels / 2.0)

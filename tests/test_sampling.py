"""Samplers with the exact score of Gaussian data (docs/samplers.md).

For x_0 ~ N(m, v I) the last-block score is affine in u, so every sampler maps Gaussian draws to Gaussian
samples whose moments are checked against the exact law; the probability-flow ODE samplers are deterministic
maps of the prior draws and are checked path by path.

Speed: the samplers here are compiled once per setting (`compile_fast`, XLA backend optimisation level 0:
half the compile time, and they run briefly) and reused across tests, and the exact score is read from a
table (`score_table`) instead of recomputing the kernel inside every sampler.
"""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.linalg

from hold_jax.process import exact_scores
from hold_jax.process import perturbation_kernel
from hold_jax.process import sde as sde_lib
from hold_jax.sampling import adaptive_ode
from hold_jax.sampling import flow_coordinates
from hold_jax.sampling import samplers
from test_sde import make_sde

DATA_MEAN = np.array([0.5, -0.5])
DATA_VAR = 0.5
NUM_SAMPLES = 10000
POINT_MASS_VAR = 1e-8  # far below the noise left in x at eps (variance 1.7e-6 for order 3)
POINT_MASS_SAMPLES = 4000
PATH_SAMPLES = 256
# beta with B(T) large enough that the prior N(0, I) matches p_T (benchmarks/process.py: B(T) needed is
# 13.0, 9.1 and 6.5 for orders 1, 2 and 3), so that what remains is the sampler's error.
BETA = {1: 13.0, 2: 9.2, 3: 6.5}
TABLE_POINTS = 2049


def make_process(order, **overrides):
  return make_sde(order, beta_0=BETA[order], beta_1=BETA[order], **overrides)


def sampling_config(method, num_steps=100, grid="uniform", denoise=True, **ode):
  return ml_collections.ConfigDict(dict(num_steps=num_steps, method=method, grid=grid, rho=7.0, denoise=denoise,
                                        **ode))


def compile_fast(jitted, *example_args):
  """jitted compiled for the shapes of example_args at XLA backend optimisation level 0."""
  return jitted.lower(*example_args).compile(compiler_options={"xla_backend_optimization_level": 0})


# ----------------------------------------------------------------------------------------------------------
# The exact score of Gaussian data, tabulated.


@functools.lru_cache(maxsize=None)
def score_table(order, data_var):
  """Log-times (G,) and the coefficients a (G, n), c (G,) of the exact score of N(m, data_var I) data,
  s(u, t) = sum_j a_j(t) u_j + c(t) m, in float64.

  As in exact_scores.gaussian_score: with Sigma_t = L L^T (perturbation_kernel.marginal_factor with the data's
  variance), the score is -[L^{-T} L^{-1} (u - Phi_0 m)]_last, so a = -(row n of L^{-1}) / l_nn and
  c = -a . Phi_0. Read back by linear interpolation in log t; checked here on the midpoints of the table, and
  against gaussian_score by the moment tests, whose targets come from perturbation_kernel.marginal. Computed in
  float64 whatever the test's precision (the samplers under test read it in float32).
  """
  sde = make_process(order)
  times = sde.eps * (sde.T / sde.eps) ** np.linspace(0.0, 1.0, 2 * TABLE_POINTS - 1)
  with jax.enable_x64(True):
    phi, factor = (np.asarray(x) for x in perturbation_kernel.marginal_factor(
        sde, jnp.asarray(times), sde_lib.initial_var(sde, data_var, jnp.float64)))
  last_row_of_inverse = np.linalg.solve(np.swapaxes(factor, -1, -2), np.eye(order)[-1])  # L^{-T} e_n
  a = -last_row_of_inverse / factor[:, -1, -1, None]
  c = -np.sum(a * phi[:, :, 0], axis=1)
  table = np.concatenate([a, c[:, None]], axis=1)
  midpoints = 0.5 * (table[:-2:2] + table[2::2])  # linear interpolation at the odd (log-spaced) points
  relative = np.abs(midpoints - table[1::2]) / np.abs(table[1::2]).max(axis=1, keepdims=True)
  assert relative.max() < 1e-4, relative.max()
  return np.log(times[::2]), a[::2], c[::2]


def tabulated_gaussian_score(order, data_var=DATA_VAR):
  """score_fn(params, u, t) of N(DATA_MEAN, data_var I) data for `make_process(order)`."""
  sde = make_process(order)
  log_t, a, c = score_table(order, data_var)

  def score_fn(params, u, t):
    dtype = u.dtype
    at = jnp.log(jnp.clip(t, sde.eps, sde.T)).astype(dtype)
    coefficient = lambda column: jnp.interp(at, jnp.asarray(log_t, dtype), jnp.asarray(column, dtype))
    per_example = lambda values: values.reshape((-1,) + (1,) * (u.ndim - 2))
    linear = sum(per_example(coefficient(a[:, j])) * u[:, j] for j in range(order))
    return linear + per_example(coefficient(c)) * jnp.asarray(DATA_MEAN, dtype)

  return score_fn


# ----------------------------------------------------------------------------------------------------------
# Samples and their errors.


@functools.lru_cache(maxsize=None)
def gaussian_sampler(method, num_steps, grid, order, data_var, denoise, num_samples):
  """Compiled float32 sampler (rng, ids (num_samples,)) -> Samples for N(DATA_MEAN, data_var I) data."""
  sde = make_process(order)
  config = sampling_config(method, num_steps, grid, denoise)
  sampler = samplers.make_sampler(sde, tabulated_gaussian_score(order, data_var), (2,), config, dtype=jnp.float32,
                                  return_nfe=True)
  return compile_fast(jax.jit(lambda rng, ids: sampler(None, rng, ids)), jax.random.PRNGKey(0),
                      jnp.arange(num_samples))


def gaussian_samples(method, num_steps, grid="uniform", order=3, data_var=DATA_VAR, denoise=True,
                     num_samples=NUM_SAMPLES, first_id=0):
  """float64 samples (num_samples, 2) of ids first_id, first_id + 1, ... (seed 0), drawn once per setting."""
  return _gaussian_samples(method, num_steps, grid, order, data_var, denoise, num_samples, first_id)


@functools.lru_cache(maxsize=None)
def _gaussian_samples(method, num_steps, grid, order, data_var, denoise, num_samples, first_id):
  sampler = gaussian_sampler(method, num_steps, grid, order, data_var, denoise, num_samples)
  samples = sampler(jax.random.PRNGKey(0), jnp.arange(first_id, first_id + num_samples)).x
  assert samples.dtype == jnp.float32 and samples.shape == (num_samples, 2)
  return np.asarray(samples, np.float64)


def target_moments(order, data_var=DATA_VAR, denoise=True):
  """Mean (2,) and variance of x: the data's after denoising (used for order 3, where the denoised output
  x0_gls has noise sigma_eff(eps) = 5.6e-6), otherwise the exact marginal of x at eps."""
  if denoise:
    return DATA_MEAN, data_var
  sde = make_process(order)
  phi, sigma = perturbation_kernel.marginal(sde, jnp.asarray(sde.eps), sde_lib.initial_cov(sde, data_var))
  return float(phi[0, 0]) * DATA_MEAN, float(sigma[0, 0])


def moment_errors(samples, mean, var):
  """(|mean error| / its standard error, |covariance error| / its standard error), worst entry each."""
  num = len(samples)
  mean_se = np.sqrt(var / num)
  target = var * np.eye(2)
  cov_se = np.sqrt((target**2 + np.outer(np.diag(target), np.diag(target))) / num)
  return np.max(np.abs(samples.mean(0) - mean)) / mean_se, np.max(np.abs(np.cov(samples.T) - target) / cov_se)


def relative_error(samples, mean, var):
  """|mean error| / std + |covariance error| / var (Frobenius norms): the sampler's bias in units of the law."""
  return (np.linalg.norm(samples.mean(0) - mean) / np.sqrt(var)
          + np.linalg.norm(np.cov(samples.T) - var * np.eye(2)) / var)


# ----------------------------------------------------------------------------------------------------------
# Moments.


@pytest.mark.parametrize("method, num_steps, order, denoise", [
    ("lie_trotter", 100, 3, True),
    ("euler_maruyama", 400, 3, True),
    ("strang", 100, 3, True),
    ("strang", 100, 1, False),
    ("strang_exponential", 200, 3, True),
    ("ode_heun", 50, 3, True),
    ("ode_heun", 50, 2, False),
    pytest.param("ode_adaptive", 1, 3, True, marks=pytest.mark.slow),
])
def test_samples_reproduce_the_data_moments(method, num_steps, order, denoise):
  """Within Monte Carlo error (10^4 samples, 4 standard errors). Euler-Maruyama's covariance is still 5.4
  standard errors off at 100 steps and needs about 400; the exponential score step is biased for data this
  broad (see samplers.py) and needs about 200."""
  samples = gaussian_samples(method, num_steps, order=order, denoise=denoise)
  mean_z, cov_z = moment_errors(samples, *target_moments(order, denoise=denoise))
  assert mean_z < 4 and cov_z < 4, (mean_z, cov_z)


def test_lie_trotter_beats_euler_maruyama_at_20_steps():
  target = target_moments(3)
  lie_trotter = relative_error(gaussian_samples("lie_trotter", 20), *target)
  euler_maruyama = relative_error(gaussian_samples("euler_maruyama", 20), *target)
  assert lie_trotter < euler_maruyama, (lie_trotter, euler_maruyama)


def test_strang_beats_lie_trotter_at_equal_nfe():
  """Order 3, 20 uniform steps (1 NFE each): Lie-Trotter's covariance is 20% off, Strang's 5%."""
  target = target_moments(3)
  lie_trotter = relative_error(gaussian_samples("lie_trotter", 20), *target)
  strang = relative_error(gaussian_samples("strang", 20), *target)
  assert strang < 0.75 * lie_trotter, (strang, lie_trotter)


def test_exponential_score_step_is_stable_where_euler_is_not():
  """Nearly a point mass: the score step is stiff (2 xi dB / l_t^2 up to 13 on 20 quadratic steps).
  Lie-Trotter's Euler step spreads the samples 17 times too wide (Strang's diverges); the exponential step,
  exact for such data when the score is evaluated where the state is, is within 60% at 20 steps."""
  order = 3
  mean, var = target_moments(order, POINT_MASS_VAR, denoise=False)

  def spread_and_bias(method):
    samples = gaussian_samples(method, 20, "quadratic", order, POINT_MASS_VAR, False, POINT_MASS_SAMPLES)
    return samples.std(0).mean() / np.sqrt(var), np.abs(samples.mean(0) - mean).max() / np.sqrt(var)

  euler_spread, _ = spread_and_bias("lie_trotter")
  assert euler_spread > 5, euler_spread
  for method in ("lie_trotter_exponential", "strang_exponential"):
    spread, bias = spread_and_bias(method)
    assert 1 < spread < 1.6 and bias < 0.2, (method, spread, bias)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("method", samplers.POSTERIOR_METHODS + ("gddim", "ode_adaptive"))
def test_posterior_mean_samplers_are_exact_for_a_point_mass_at_any_step_count(method, order):
  """Nearly a point mass: x0_hat is exact for every u, so 5 steps give the law of x at eps (mean and spread
  within 5%; Lie-Trotter at 5 steps is 2, 190 and 220 times too wide for orders 1, 2 and 3)."""
  mean, var = target_moments(order, POINT_MASS_VAR, denoise=False)
  samples = gaussian_samples(method, 5, "quadratic", order, POINT_MASS_VAR, False, POINT_MASS_SAMPLES)
  spread = samples.std(0) / np.sqrt(var)
  assert np.all(np.abs(spread - 1) < 0.05), spread
  assert np.abs(samples.mean(0) - mean).max() / np.sqrt(var) < 0.1


def test_ancestral_sampler_converges_at_first_order_on_broad_data():
  """N(m, 0.5): each step drops Var[x_0 | u_t], so the spread is short by O(1 / N): 5.2% at 100 quadratic steps,
  1.5% at 400 (a sampler that converged to a wrong law would not shrink its error)."""
  mean, var = target_moments(3)
  deficit = {n: 1 - gaussian_samples("ancestral", n, "quadratic").std(0).mean() / np.sqrt(var) for n in (100, 400)}
  assert 0.03 < deficit[100] < 0.12 and deficit[400] < 0.035 and deficit[100] / deficit[400] > 2.5, deficit
  assert np.abs(gaussian_samples("ancestral", 400, "quadratic").mean(0) - mean).max() < 0.05


# ----------------------------------------------------------------------------------------------------------
# gDDIM: the exponential integrators of the probability-flow ODE in posterior-mean form.

GDDIM_PATHS = 64


def exact_gaussian_score(order):
  """The smooth exact score (no table: the convergence orders need a field without interpolation kinks)."""
  sde = make_process(order)
  return lambda params, u, t: exact_scores.gaussian_score(sde, u, t, jnp.asarray(DATA_MEAN, u.dtype), DATA_VAR)


@functools.lru_cache(maxsize=None)
def ode_reference(order, dtype_name):
  """x at eps of the probability-flow ODE from the prior draws of ids 0.. (seed 0) made in `dtype_name`,
  solved in float64 by the adaptive solver at tolerance 1e-10 (x64 on here whatever the test's precision)."""
  sde = make_process(order)
  with jax.enable_x64(True):
    u = samplers.prior_draws(jax.random.PRNGKey(0), jnp.arange(GDDIM_PATHS), order, (2,), jnp.dtype(dtype_name))
    solve = jax.jit(lambda u: adaptive_ode.solve(
        sde, exact_gaussian_score(order), None, u, "tsit5", 1e-10, 1e-10, 100_000)[0])
    return np.asarray(solve(u.astype(jnp.float64))[:, 0], np.float64)


def gddim_paths(order, method, num_steps, dtype, **settings):
  sde = make_process(order)
  chosen = samplers.Settings(method=method, num_steps=num_steps, grid="quadratic", denoise=False, **settings)
  sampler = jax.jit(lambda ids: samplers.sample_with_nfe(
      sde, exact_gaussian_score(order), None, jax.random.PRNGKey(0), ids, (2,), chosen, dtype=dtype).x)
  return np.asarray(compile_fast(sampler, jnp.arange(GDDIM_PATHS))(jnp.arange(GDDIM_PATHS)), np.float64)


@pytest.mark.slow
@pytest.mark.float64  # errors down to 1e-9 at 160 steps of order 3: below float32's round-off
@pytest.mark.parametrize("order", [1, 2, 3])
def test_gddim_converges_to_the_probability_flow_ode_at_its_multistep_order(order):
  """float64 path errors against the ODE's solution from the same prior draws: 4 times the steps divide the
  error by about 4^p for multistep order p = 1, 2, 3. For orders 2 and 3 the Cholesky-form 'ddim' does not
  converge to it (for order 1 the Cholesky factor is the noise level and 'ddim' is DDIM, which does)."""
  reference = ode_reference(order, "float64")
  error = lambda method, n, **settings: np.abs(gddim_paths(order, method, n, jnp.float64, **settings)
                                                - reference).max()
  for multistep_order in (1, 2, 3):
    coarse, fine = (error("gddim", n, multistep_order=multistep_order) for n in (40, 160))
    assert 0.5 < coarse / fine / 4**multistep_order < 2, (multistep_order, coarse, fine)
  if order > 1:
    coarse, fine = (error("ddim", n) for n in (40, 160))
    assert fine > 0.5 * coarse and fine > 0.1, (coarse, fine)


def test_gddim_in_float32_reaches_the_float64_ode_solution():
  """The float32 sampler (schedule cast from float64) at 160 steps of order 3 is within 1e-3 of the float64
  solution from its own (float32) prior draws."""
  reference = ode_reference(3, "float32")
  samples = gddim_paths(3, "gddim", 160, jnp.float32, multistep_order=3)
  assert np.abs(samples - reference).max() < 1e-3


# ----------------------------------------------------------------------------------------------------------
# The probability-flow ODE samplers, path by path.


@functools.lru_cache(maxsize=None)
def ode_path_sampler(order, method, num_steps=1, variable="state"):
  """Compiled (ids (PATH_SAMPLES,), tolerance) -> Samples of an ODE sampler without denoising, seed 0, the
  adaptive one solving in `variable`; the tolerance (rtol = atol) is traced, so one compilation serves all."""
  sde = make_process(order)
  score_fn = tabulated_gaussian_score(order)

  @jax.jit
  def sampler(ids, tolerance):
    chosen = samplers.Settings(method=method, num_steps=num_steps, denoise=False, ode_rtol=tolerance,
                               ode_atol=tolerance, ode_variable=variable)
    return samplers.sample_with_nfe(sde, score_fn, None, jax.random.PRNGKey(0), ids, (2,), chosen, dtype=jnp.float32)

  return compile_fast(sampler, jnp.arange(PATH_SAMPLES), 1e-5)


@functools.lru_cache(maxsize=None)
def ode_paths(order, method, num_steps=1, tolerance=1e-5, first_id=0, variable="state"):
  """x (PATH_SAMPLES, 2) of ids first_id, ... and the NFE: every call maps the same prior draws per id."""
  ids = jnp.arange(first_id, first_id + PATH_SAMPLES)
  result = ode_path_sampler(order, method, num_steps, variable)(ids, tolerance)
  return np.asarray(result.x, np.float64), int(result.nfe)


@pytest.mark.parametrize("order, num_steps", [(1, 32), (2, 32), (3, 64)])
def test_heun_is_second_order(order, num_steps):
  """Path errors against Heun at 1024 steps: doubling the steps divides the error by about 4. (Order 3 is
  stiffer near eps and enters the asymptotic regime later: 16 steps are unstable there.)"""
  reference, nfe = ode_paths(order, "ode_heun", 1024)
  assert nfe == 2048
  coarse, fine = (np.abs(ode_paths(order, "ode_heun", n)[0] - reference).max() for n in (num_steps, 2 * num_steps))
  assert 3.2 < coarse / fine < 4.8, (coarse, fine)


@pytest.mark.parametrize("order", [1, 3])
@pytest.mark.parametrize("variable, floor", [("state", 3e-5), ("flow", 1e-3)])
def test_adaptive_solver_agrees_with_heun_and_takes_more_evaluations_at_tighter_tolerance(order, variable, floor):
  """At tolerance 1e-6 the adaptive solution matches Heun's Richardson extrapolation from 1024 and 2048 steps
  (Heun at 2048 steps alone is 2e-4 off for order 3) to float32 round-off: ~1e-5 when solving in the state;
  in the flow coordinates forming u = Q y amplifies float32 round-off in y by Q's condition number (up to 1e4
  for order 3), so on this broad data they are 2e-4 (order 1) to 6e-4 (order 3) off. At 1e-3 either is visibly
  less accurate (in the state more than 1e-3 off; in the flow coordinates at least twice as far off as at
  1e-6), with fewer evaluations."""
  coarse, _ = ode_paths(order, "ode_heun", 1024)
  fine, _ = ode_paths(order, "ode_heun", 2048)
  reference = (4 * fine - coarse) / 3
  nfe, error = {}, {}
  for tolerance in (1e-3, 1e-6):
    paths, nfe[tolerance] = ode_paths(order, "ode_adaptive", tolerance=tolerance, variable=variable)
    error[tolerance] = np.abs(paths - reference).max()
  assert 0 < nfe[1e-3] < nfe[1e-6], nfe
  assert error[1e-6] < floor and error[1e-3] < 5e-2, error
  assert error[1e-3] > (1e-3 if variable == "state" else 2 * error[1e-6]), error


def count_network_calls(method, order, **settings):
  """(reported NFE, score_fn calls per batch) of a 3-sample batch, counted by a host callback."""
  sde = make_process(order)
  calls = []

  def counting_score(params, u, t):
    jax.debug.callback(lambda t: calls.append(t.shape[0]), t)
    return -u[:, -1] / 0.7

  config = sampling_config(method, **settings)
  sampler = samplers.make_sampler(sde, counting_score, (2,), config, jnp.float32, return_nfe=True)
  result = compile_fast(sampler, None, jax.random.PRNGKey(0), jnp.arange(3))(None, jax.random.PRNGKey(0),
                                                                             jnp.arange(3))
  jax.block_until_ready(result)
  # Inside the adaptive solver's vmap the callback runs once per sample, elsewhere once per batch of 3.
  return int(result.nfe), sum(calls) / 3


@pytest.mark.parametrize("solver", sorted(samplers.ODE_SOLVERS))
def test_reported_nfe_of_the_adaptive_solver_is_its_number_of_network_evaluations(solver):
  """Exact in the state; in the flow coordinates diffrax re-evaluates a segment's first stage when that segment's
  first step is rejected, which the count misses: at most one evaluation per segment."""
  nfe, calls = count_network_calls("ode_adaptive", 3, ode_solver=solver, ode_rtol=1e-4, ode_atol=1e-4,
                                   ode_variable="state")
  assert nfe == calls > 20, (nfe, calls)
  nfe, calls = count_network_calls("ode_adaptive", 3, ode_solver=solver, ode_rtol=1e-4, ode_atol=1e-4,
                                   ode_variable="flow")
  assert calls - flow_coordinates.NUM_SEGMENTS <= nfe <= calls and nfe > 20, (nfe, calls)


def test_reported_nfe_of_a_fixed_step_sampler_counts_the_denoising_step_of_order_one():
  assert count_network_calls("strang", 1, num_steps=5, denoise=True) == (6, 6)


def test_ode_samplers_are_deterministic_maps_of_the_prior_draws():
  """N(0, I) data with unit auxiliaries is stationary: the score is -u_last and the probability-flow ODE is
  du/dB = -K u, a rotation, so x = [expm(K (B(T) - B(eps))) u_T]_0 for the prior draws u_T. (In the flow
  coordinates float32 round-off in y, amplified by forming u = Q y, leaves the adaptive solve 2.5e-4 off.)"""
  sde = make_process(3, init_aux_var=1.0)
  score_fn = lambda params, u, t: -u[:, -1]
  ids = jnp.array([3, 17, 4])
  prior = np.asarray(samplers.prior_draws(jax.random.PRNGKey(5), ids, sde.order, (2,), jnp.float32), np.float64)
  skew = -(np.asarray(sde_lib.drift_matrix(sde, np.float64)) + np.diag([0.0, 0.0, sde.friction]))  # K
  rotation = scipy.linalg.expm(skew * (sde.integrated_beta_at_T - sde.beta_0 * sde.eps))
  expected = np.einsum("j,bjd->bd", rotation[0], prior)
  for method, num_steps, tolerance, variable in (("ode_heun", 2000, 3e-4, "state"), ("ode_adaptive", 1, 3e-5, "state"),
                                                 ("ode_adaptive", 1, 5e-4, "flow")):
    config = sampling_config(method, num_steps, denoise=False, ode_rtol=1e-7, ode_atol=1e-7, ode_variable=variable)
    sampler = compile_fast(samplers.make_sampler(sde, score_fn, (2,), config, dtype=jnp.float32), None,
                           jax.random.PRNGKey(5), ids)
    np.testing.assert_allclose(sampler(None, jax.random.PRNGKey(5), ids), expected, atol=tolerance)


# ----------------------------------------------------------------------------------------------------------
# Per-sample seeds.


def shifted_batches_agree(draw):
  """draw(first_id) -> samples of ids first_id, first_id + 1, ...: the ids both batches share (at other
  positions, among other ids) give the same samples, and different ids different samples."""
  first, second = draw(0), draw(3)
  np.testing.assert_allclose(second[:-3], first[3:], rtol=1e-5, atol=1e-6)
  assert not np.allclose(first[0], first[1])


@pytest.mark.parametrize("method, grid, data_var, denoise, num_samples", [
    ("lie_trotter", "uniform", DATA_VAR, True, NUM_SAMPLES),
    ("strang", "uniform", DATA_VAR, True, NUM_SAMPLES),
    ("euler_maruyama", "uniform", DATA_VAR, True, NUM_SAMPLES),
    ("lie_trotter_exponential", "quadratic", POINT_MASS_VAR, False, POINT_MASS_SAMPLES),
    ("strang_exponential", "quadratic", POINT_MASS_VAR, False, POINT_MASS_SAMPLES),
    ("ancestral", "quadratic", DATA_VAR, True, NUM_SAMPLES)])
def test_sample_depends_only_on_its_own_seed(method, grid, data_var, denoise, num_samples):
  """The 20-step samplers of the tests above, run again on a batch shifted by three ids."""
  shifted_batches_agree(lambda first_id: gaussian_samples(method, 20, grid, 3, data_var, denoise, num_samples,
                                                          first_id))


@pytest.mark.parametrize("method, num_steps", [("ode_heun", 64), ("ode_adaptive", 1)])
def test_ode_sample_depends_only_on_its_own_prior_draw(method, num_steps):
  shifted_batches_agree(lambda first_id: ode_paths(3, method, num_steps, first_id=first_id)[0])


def test_sample_does_not_depend_on_the_batch_size():
  sde = make_process(3)
  score_fn = lambda params, u, t: -(u[:, -1] - 0.3 * u[:, 0]) / 0.7
  sampler = samplers.make_sampler(sde, score_fn, (3,), sampling_config("euler_maruyama", 6), jnp.float32)
  rng = jax.random.PRNGKey(7)
  together = compile_fast(sampler, None, rng, jnp.arange(8))(None, rng, jnp.arange(8))
  alone = compile_fast(sampler, None, rng, jnp.array([5]))(None, rng, jnp.array([5]))
  np.testing.assert_allclose(alone, together[5:6], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# Structure and settings.


@pytest.mark.parametrize("method", samplers.FIXED_STEP_METHODS)
def test_sampler_is_one_scan_whatever_the_number_of_steps(method):
  sde = make_sde(3)
  score_fn = lambda params, u, t: -u[:, -1]

  def jaxpr_size(num_steps):
    fn = lambda rng: samplers.sample(sde, score_fn, None, rng, jnp.arange(4), (2,), num_steps, method)
    jaxpr = jax.make_jaxpr(fn)(jax.random.PRNGKey(0))
    assert sum(eqn.primitive.name == "scan" for eqn in jaxpr.jaxpr.eqns) == 1
    return len(jaxpr.jaxpr.eqns)

  assert jaxpr_size(20) == jaxpr_size(200)  # step counts whose schedules the tests above computed already


def test_stationary_prior_is_preserved_exactly_by_the_linear_step():
  """For N(0, I) 'data' with unit auxiliaries the score is -u_last, step (S) is the identity, and
  Lie-Trotter is exact at any step count: 5 steps give N(0, I)."""
  sde = make_sde(3, init_aux_var=1.0)
  score_fn = lambda params, u, t: -u[:, -1]
  samples = np.asarray(samplers.sample(sde, score_fn, None, jax.random.PRNGKey(3), jnp.arange(20000), (1,), 5,
                                       "lie_trotter", denoise=False))
  assert abs(samples.mean()) < 4 / np.sqrt(20000)
  assert abs(samples.var() - 1) < 4 * np.sqrt(2 / 20000)


def test_network_evaluations():
  assert samplers.network_evaluations("strang", 20, 3, True) == 20  # order >= 2: denoising needs no network
  assert samplers.network_evaluations("lie_trotter", 20, 1, True) == 21
  assert samplers.network_evaluations("ode_heun", 20, 2, False) == 40
  with pytest.raises(ValueError, match="no fixed NFE"):
    samplers.network_evaluations("ode_adaptive", 20, 3, True)


def test_time_at_integrated_beta_inverts_integrated_beta():
  for sde in (make_sde(3), make_sde(2, beta_schedule="linear", beta_0=0.1, beta_1=20.0),
              make_sde(2, beta_schedule="linear", beta_0=12.0, beta_1=0.5)):
    t = np.linspace(0.0, sde.T, 33)
    inverted = samplers.time_at_integrated_beta(sde, sde_lib.integrated_beta(sde, t))
    assert inverted.dtype == jnp.float32
    # float32, as the Strang samplers use it: t rounded once, B(t) and the non-cancelling root a few more
    # (2^-24 each), and t -> B(t) -> t has condition number at most 1 here: 8 roundings' worth is 5e-7.
    np.testing.assert_allclose(inverted, t, rtol=5e-7, atol=0)


@pytest.mark.parametrize("kind", samplers.GRIDS)
def test_time_grids(kind):
  sde = make_sde(3)
  grid = np.asarray(samplers.time_grid(sde, 50, kind))
  assert grid.shape == (51,) and grid.dtype == np.float32
  # The ends are T and eps rounded once to float32 (2^-24 relative), not a float32 cancellation's leftover.
  np.testing.assert_allclose([grid[0], grid[-1]], [sde.T, sde.eps], rtol=6e-8)
  assert np.all(np.diff(grid) < 0)


def test_bad_sampling_settings_name_the_field():
  sde = make_sde(3)
  with pytest.raises(ValueError, match="sampling.grid"):
    samplers.time_grid(sde, 10, "cosine")
  with pytest.raises(ValueError, match="sampling.num_steps"):
    samplers.time_grid(sde, 0)
  for field, value in (("method", "heun"), ("ode_solver", "rk4"), ("ode_rtol", 0.0), ("ode_atol", -1e-5),
                       ("ode_max_steps", 0), ("multistep_order", 4), ("multistep_order", True),
                       ("time_variable", "t"), ("clip_x0", "1:0")):
    config = sampling_config("ode_adaptive")
    config[field] = value
    with pytest.raises(ValueError, match=f"sampling.{field}"):
      samplers.make_sampler(sde, lambda p, u, t: u[:, -1], (2,), config)


def test_non_finite_advice_fits_the_method():
  assert "ode_max_steps" in samplers.non_finite_advice(sampling_config("ode_adaptive"))
  assert "num_steps" in samplers.non_finite_advice(sampling_config("ode_heun"))
  assert "'strang_exponential'" in samplers.non_finite_advice(sampling_config("strang"))
  assert "num_steps" in samplers.non_finite_advice(sampling_config("strang_exponential"))


def test_clip_x0_settings():
  data_range = (np.array([-1.0, -2.0]), np.array([1.0, 2.0]))
  assert samplers.clip_range("auto", data_range) is data_range
  assert samplers.clip_range("auto", None) is None and samplers.clip_range("none", data_range) is None
  assert samplers.clip_range("-1.5:2", None) == (-1.5, 2.0)
  for bad in ("1:-1", "x", "1", "0:1:2", "nan:1"):
    with pytest.raises(ValueError, match="sampling.clip_x0.*LOW:HIGH"):
      samplers.clip_range(bad, None)


@pytest.mark.parametrize("method", samplers.POSTERIOR_METHODS + ("gddim", "ode_adaptive"))
def test_every_posterior_mean_sampler_clips_x0_hat(method):
  """A point mass at (0.5, -0.5) with x0_hat clipped to [0, 0.2]: the samples end at (0.2, 0) instead; with
  'auto' and no known data range nothing is clipped."""
  sde = make_process(3)
  score_fn = tabulated_gaussian_score(3, POINT_MASS_VAR)
  draw = lambda clip, data_range=None: np.asarray(samplers.make_sampler(
      sde, score_fn, (2,), sampling_config(method, 5, "quadratic", clip_x0=clip), dtype=jnp.float32,
      data_range=data_range)(None, jax.random.PRNGKey(0), jnp.arange(256)))
  np.testing.assert_allclose(draw("0:0.2").mean(0), [0.2, 0.0], atol=0.01)
  np.testing.assert_allclose(draw("auto", (0.0, 0.2)).mean(0), [0.2, 0.0], atol=0.01)
  np.testing.assert_allclose(draw("auto").mean(0), DATA_MEAN, atol=0.01)


def test_gddim_reproduces_a_two_component_mixture_better_than_the_cholesky_and_ancestral_steps():
  """Order 3, data 0.3 N((0.8, 0.6), 0.02) + 0.7 N((-0.6, -0.2), 0.02) with its exact score, 20 steps on the
  'edm' grid, 4000 samples: gddim's error in the mean and covariance (0.04, of which ~0.015 is Monte Carlo) is
  under half of 'ddim''s (0.13) and 'ancestral''s (0.17). (At 10 steps Lie-Trotter is better than every gddim
  setting on this mixture: 0.07 against 0.19-0.36.)"""
  sde = make_process(3)
  means, weights, component_var = jnp.asarray([[0.8, 0.6], [-0.6, -0.2]]), jnp.asarray([0.3, 0.7]), 0.02
  score_fn = lambda params, u, t: exact_scores.mixture_score(sde, u, t, means.astype(u.dtype), component_var,
                                                             weights.astype(u.dtype))
  mean = np.asarray(weights) @ np.asarray(means)
  centered = np.asarray(means) - mean
  cov = component_var * np.eye(2) + (np.asarray(weights)[:, None] * centered).T @ centered

  def moment_error(method):
    sampler = samplers.make_sampler(sde, score_fn, (2,), sampling_config(method, 20, "edm", clip_x0="none"),
                                    dtype=jnp.float32)
    x = np.asarray(sampler(None, jax.random.PRNGKey(0), jnp.arange(4000)), np.float64)
    return np.linalg.norm(x.mean(0) - mean) + np.linalg.norm(np.cov(x.T) - cov)

  gddim = moment_error("gddim")
  assert gddim < 0.5 * moment_error("ddim") and gddim < 0.5 * moment_error("ancestral"), gddim


@pytest.mark.parametrize("order", [2, 3])
def test_stochastic_gddim_is_exact_in_law_for_a_point_mass_and_reproduces_broad_data(order):
  """sampling.stochasticity = 1 (the reverse SDE in posterior-mean form): nearly a point mass at 5 steps gives
  the law of x at eps (spread within 5%: the added noise is the exact covariance of the linear SDE), and broad
  Gaussian data at 100 steps the data's moments within 4 standard errors (10^4 samples)."""
  sde = make_process(order)

  def draw(data_var, num_steps, num_samples, stochasticity=1.0):
    config = sampling_config("gddim", num_steps, "quadratic", denoise=False, stochasticity=stochasticity,
                             clip_x0="none")
    sampler = samplers.make_sampler(sde, tabulated_gaussian_score(order, data_var), (2,), config,
                                    dtype=jnp.float32)
    return np.asarray(sampler(None, jax.random.PRNGKey(0), jnp.arange(num_samples)), np.float64)

  mean, var = target_moments(order, POINT_MASS_VAR, denoise=False)
  samples = draw(POINT_MASS_VAR, 5, POINT_MASS_SAMPLES)
  assert np.all(np.abs(samples.std(0) / np.sqrt(var) - 1) < 0.05), samples.std(0) / np.sqrt(var)
  assert np.abs(samples.mean(0) - mean).max() / np.sqrt(var) < 0.1
  mean_z, cov_z = moment_errors(draw(DATA_VAR, 100, NUM_SAMPLES), *target_moments(order, denoise=False))
  assert mean_z < 4 and cov_z < 4, (mean_z, cov_z)


def test_bad_stochasticity_names_the_field():
  for value in (-0.5, float("nan"), "1"):
    with pytest.raises(ValueError, match="sampling.stochasticity"):
      samplers.settings_from_config(make_process(3), sampling_config("gddim", stochasticity=value))

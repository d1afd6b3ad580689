"""BCSM/DSM on Gaussian data, where every marginal score is known, and the square-root factor L_t."""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import references
from hold_jax.models import score_outputs
from hold_jax.process import exact_scores
from hold_jax.process import perturbation_kernel
from hold_jax.process import sde as sde_lib
from hold_jax.training import losses
from test_sde import PARAMETER_SETS, make_sde

DATA_MEAN, DATA_VAR = 0.5, 0.3
NUM_EXAMPLES = 20000


@functools.lru_cache(maxsize=None)
def mpmath_factor(name, t):
  """The lower Cholesky factor of Sigma_t at 80 digits (its inputs B(t) and S_0 in float64 whatever the test's
  precision: the cache serves float32 and float64 tests)."""
  sde = make_sde(**PARAMETER_SETS[name])
  matrix = references.drift(sde.couplings, sde.friction)
  with jax.enable_x64(True):
    init = np.asarray(sde_lib.initial_var(sde), np.float64)
    integrated_beta = float(sde_lib.integrated_beta(sde, t))
  return references.kernel_mpmath(matrix, sde.friction, integrated_beta, init)[2]


def factor_errors(factor, reference):
  """(relative error of l_t, max error of L's entries relative to the norm of their row)."""
  factor = np.asarray(factor, np.float64)
  scale_error = abs(factor[-1, -1] / reference[-1, -1] - 1)
  row_error = np.max(np.abs(factor - reference) / np.linalg.norm(reference, axis=1, keepdims=True))
  return scale_error, row_error


@pytest.mark.float64
@pytest.mark.parametrize("name", sorted(PARAMETER_SETS))
def test_factor_float64_matches_mpmath_down_to_1e_5(name):
  sde = make_sde(**PARAMETER_SETS[name])
  times = (1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0)
  _, factor = perturbation_kernel.marginal_factor(sde, jnp.asarray(times))
  for k, t in enumerate(times):
    scale_error, row_error = factor_errors(factor[k], mpmath_factor(name, t))
    assert scale_error <= 1e-9 and row_error <= 1e-9, t


@pytest.mark.parametrize("name", sorted(PARAMETER_SETS))
def test_factor_float32_matches_mpmath_over_eps_to_T(name):
  """The default eps = 1e-3 is the smallest decade where this holds for every parameter set here.

  Below it the float32 QR loses digits to the near-collinear rows of the stacked factor in a
  parameter-dependent way (8% on l_t at t = 1e-4 for n3_overdamped_linear, and for order 4).
  """
  sde = make_sde(**PARAMETER_SETS[name])
  times = (sde.eps, 3e-3, 1e-2, 0.1, 0.5, 1.0)
  _, factor = perturbation_kernel.marginal_factor(sde, jnp.asarray(times, jnp.float32))
  assert factor.dtype == jnp.float32
  for k, t in enumerate(times):
    scale_error, row_error = factor_errors(factor[k], mpmath_factor(name, t))
    assert scale_error <= 1e-3 and row_error <= 1e-3, t


def test_plain_cholesky_of_sigma_fails_in_float32_where_the_factor_does_not():
  """Why the square-root form: the assembled Sigma_t is too ill-conditioned at t = 1e-4 (docs/process.md)."""
  sde = make_sde(3)
  t = jnp.asarray([1e-4], jnp.float32)
  _, sigma = perturbation_kernel.marginal(sde, t, sde_lib.initial_cov(sde, dtype=jnp.float32))
  plain = np.asarray(jnp.linalg.cholesky(sigma)[0], np.float64)
  _, factor = perturbation_kernel.marginal_factor(sde, t)
  reference = mpmath_factor("n3_critical", 1e-4)
  assert not (factor_errors(plain, reference)[0] <= 1e-2)  # NaN or far off
  assert factor_errors(factor[0], reference)[0] <= 1e-5


def gaussian_data(rng, shape=(NUM_EXAMPLES, 4)):
  return DATA_MEAN + np.sqrt(DATA_VAR) * jax.random.normal(rng, shape)


def true_score_fn(sde):
  return lambda params, u, t: exact_scores.gaussian_score(sde, u, t, DATA_MEAN, DATA_VAR)


def analytic_minimum(sde, objective, weighting, time_sampling="uniform"):
  """E_t c(t) (1 - l_t^2 (Sigma_data^{-1})_{last, last}) over the training times, by composite Gauss-Legendre.

  At the true score, E || l s + eps_last ||^2 = 1 - l^2 E[s^2] per coordinate, and E[s^2] is the last
  diagonal entry of the inverse marginal covariance of the data's u_t; c(t) = lambda(t) / l_t^2.
  """
  with jax.enable_x64(True):  # a reference: in float64 whatever the test's precision
    return _analytic_minimum(sde, objective, weighting, time_sampling)


def _analytic_minimum(sde, objective, weighting, time_sampling):
  edges = np.geomspace(sde.eps, sde.T, 40)
  nodes, weights = np.polynomial.legendre.leggauss(20)
  t = np.concatenate([(a + b) / 2 + (b - a) / 2 * nodes for a, b in zip(edges[:-1], edges[1:])])
  w = np.concatenate([(b - a) / 2 * weights for a, b in zip(edges[:-1], edges[1:])])
  t = jnp.asarray(t)
  init = None if objective == "bcsm" else jnp.zeros((sde.order,))
  _, factor = perturbation_kernel.marginal_factor(sde, t, init)
  scale = factor[:, -1, -1]
  _, sigma = perturbation_kernel.marginal(sde, t, sde_lib.initial_cov(sde, DATA_VAR))
  precision = jnp.linalg.inv(sigma)[:, -1, -1]
  integrand = losses.weighting_over_scale_squared(sde, weighting, t, scale) * (1 - scale**2 * precision)
  density = (np.full_like(np.asarray(t), 1 / (sde.T - sde.eps)) if time_sampling == "uniform"
             else 1 / (np.asarray(t) * np.log(sde.T / sde.eps)))
  return float(np.sum(w * density * np.asarray(integrand)))


@pytest.mark.parametrize("objective, weighting, time_sampling", [
    ("bcsm", "eps", "uniform"), ("bcsm", "likelihood", "uniform"), ("dsm", "eps", "uniform"),
    ("bcsm", "eps", "log_uniform")])
def test_loss_at_true_score_is_the_analytic_minimum(objective, weighting, time_sampling):
  sde = make_sde(3)
  x0 = gaussian_data(jax.random.PRNGKey(0))
  per_example = losses.per_example_loss(sde, true_score_fn(sde), None, x0, jax.random.PRNGKey(1), objective,
                                        weighting, time_sampling)
  standard_error = float(jnp.std(per_example)) / np.sqrt(NUM_EXAMPLES)
  expected = analytic_minimum(sde, objective, weighting, time_sampling)
  assert abs(float(jnp.mean(per_example)) - expected) < 4 * standard_error
  # The test can fail: a score 10% off raises the loss by many standard errors of the paired difference.
  wrong = lambda params, u, t: 1.1 * exact_scores.gaussian_score(sde, u, t, DATA_MEAN, DATA_VAR)
  excess = losses.per_example_loss(sde, wrong, None, x0, jax.random.PRNGKey(1), objective, weighting,
                                   time_sampling) - per_example
  assert float(jnp.mean(excess)) > 10 * float(jnp.std(excess)) / np.sqrt(NUM_EXAMPLES)


@pytest.mark.parametrize("objective", ["bcsm", "dsm"])
def test_gradient_vanishes_at_the_true_score(objective):
  sde = make_sde(3)
  x0 = gaussian_data(jax.random.PRNGKey(2))

  def per_example_gradient(score_scale):
    def score_fn(delta, u, t):  # the score plus delta times an arbitrary direction
      base = score_scale * exact_scores.gaussian_score(sde, u, t, DATA_MEAN, DATA_VAR)
      return base + delta * (jnp.tanh(u[:, -1]) + 0.5 * jnp.sin(u[:, 0]))

    loss = lambda delta: losses.per_example_loss(sde, score_fn, delta, x0, jax.random.PRNGKey(3), objective)
    gradients = jax.jacfwd(loss)(0.0)
    return float(jnp.mean(gradients)), float(jnp.std(gradients)) / np.sqrt(NUM_EXAMPLES)

  mean, standard_error = per_example_gradient(1.0)
  assert abs(mean) < 4 * standard_error
  mean, standard_error = per_example_gradient(1.1)
  assert abs(mean) > 10 * standard_error


def test_perturbed_states_follow_the_kernel():
  """u_t from both objectives has mean Phi x_0 e_0 and covariance Phi S_0 Phi^T + Q (auxiliaries random)."""
  sde = make_sde(3)
  num, t_value, x_value = 40000, 0.05, 1.2
  x0 = jnp.full((num, 1), x_value)
  t = jnp.full((num,), t_value)
  phi, sigma = perturbation_kernel.marginal(sde, jnp.asarray(t_value), sde_lib.initial_cov(sde))
  mean = np.asarray(phi)[:, 0] * x_value
  sigma = np.asarray(sigma)
  for objective in ("bcsm", "dsm"):
    u, eps_last, scale = losses.perturb(sde, objective, x0, t, jax.random.PRNGKey(4))
    u = np.asarray(u)[:, :, 0]
    np.testing.assert_array_less(np.abs(u.mean(0) - mean), 4 * np.sqrt(np.diag(sigma) / num))
    cov_se = np.sqrt((sigma**2 + np.outer(np.diag(sigma), np.diag(sigma))) / num)
    np.testing.assert_array_less(np.abs(np.cov(u.T) - sigma), 4 * cov_se)
    assert abs(float(jnp.var(eps_last)) - 1) < 4 * np.sqrt(2 / num)


def test_parametrizations():
  sde = make_sde(3)
  u = jax.random.normal(jax.random.PRNGKey(5), (6, 3, 2))
  t = jnp.linspace(0.01, 0.9, 6)
  true = exact_scores.gaussian_score(sde, u, t, DATA_MEAN, DATA_VAR)
  scale = score_outputs.score_scale(sde, t)[:, None]
  assert u.dtype == jnp.float32
  # float32: (-l s) / l rounds twice (2^-24 each), 1.2e-7 relative; a wrong scale is O(1) off.
  np.testing.assert_allclose(score_outputs.score_from_output(sde, "eps", -scale * true, u, t), true, rtol=3e-7)
  np.testing.assert_allclose(score_outputs.score_from_output(sde, "score", true, u, t), true)
  normal = exact_scores.gaussian_score(sde, u, t, 0.0, 1.0)
  np.testing.assert_allclose(score_outputs.score_from_output(sde, "mixed", jnp.zeros_like(true), u, t), normal)
  with pytest.raises(ValueError, match="loss.parametrization"):
    score_outputs.score_from_output(sde, "velocity", true, u, t)


def test_eps_weighting_is_eps_prediction_error():
  """With s = -eps_theta / l_t and lambda = l_t^2 the loss is || eps_theta - eps_last ||^2."""
  sde = make_sde(3)
  x0 = gaussian_data(jax.random.PRNGKey(6), (8, 4))
  eps_theta = lambda u: jnp.sin(u[:, 0] + 2 * u[:, 2])
  score_fn = lambda params, u, t: score_outputs.score_from_output(sde, "eps", eps_theta(u), u, t)
  loss = losses.per_example_loss(sde, score_fn, None, x0, jax.random.PRNGKey(7))
  t_rng, noise_rng = jax.random.split(jax.random.PRNGKey(7))
  t = jax.random.uniform(t_rng, (8,), x0.dtype, sde.eps, sde.T)
  u, eps_last, _ = losses.perturb(sde, "bcsm", x0, t, noise_rng)
  assert loss.dtype == jnp.float32
  # float32: l_t s = -eps_theta (1 + 2 roundings of 2^-24), then a difference, a square and a mean of 4: the
  # error is a few 2^-24 of the magnitudes entering the difference, (|eps_theta| + |eps_last|)^2, not of the
  # (possibly cancelled) result. Allow 16 of them; a wrong weighting or scale is O(1) off.
  magnitude = jnp.mean((jnp.abs(eps_theta(u)) + jnp.abs(eps_last)) ** 2, axis=-1)
  np.testing.assert_array_less(np.abs(loss - jnp.mean((eps_theta(u) - eps_last) ** 2, axis=-1)), 1e-6 * magnitude)


@pytest.mark.parametrize("field, value", [("objective", "ism"), ("weighting", "snr"),
                                          ("parametrization", "v"), ("time_sampling", "beta")])
def test_bad_loss_config_names_the_field(field, value):
  config = ml_collections.ConfigDict(dict(objective="bcsm", weighting="eps", parametrization="eps",
                                          time_sampling="uniform"))
  config[field] = value
  with pytest.raises(ValueError, match=f"loss.{field}"):
    losses.make_loss_fn(make_sde(3), lambda p, u, t: u[:, -1], config)

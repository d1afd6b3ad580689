"""The order-n process and its kernel against independent references (docs/process.md)."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import references
from hold_jax.configs import default
from hold_jax.process import perturbation_kernel
from hold_jax.process import sde as sde_lib
from hold_jax.sampling import samplers

TIMES = np.array([1e-5, 1e-4, 1e-3, 1e-2, 0.1, 0.4, 1.0])


def make_sde(order, couplings=None, friction=None, **overrides):
  config = default.get_config().sde
  config.order = order
  if couplings is not None:
    config.couplings = tuple(couplings)
  if friction is not None:
    config.friction = friction
  for key, value in overrides.items():
    config[key] = value
  return sde_lib.from_config(config)


# Critical (the default) and non-critical (under- and over-damped) parameters for orders 1-4.
PARAMETER_SETS = {
    "n1_vp": dict(order=1),
    "n2_critical": dict(order=2),
    "n3_critical": dict(order=3),
    "n4_critical": dict(order=4),
    "n2_underdamped": dict(order=2, couplings=(1.5,), friction=0.5),
    "n3_underdamped": dict(order=3, couplings=(1.0, 1.0), friction=0.5),
    "n3_overdamped_linear": dict(order=3, couplings=(2.0, 0.3), friction=4.0, beta_schedule="linear",
                                 beta_0=0.5, beta_1=12.0),
    "n4_mixed": dict(order=4, couplings=(0.7, 2.5, 1.2), friction=3.0),
}


def normalized_cov_error(estimate, reference):
  """max |estimate - reference|_ij / sqrt(reference_ii reference_jj)."""
  scale = np.sqrt(np.diag(reference))
  return np.max(np.abs(estimate - reference) / np.outer(scale, scale))


def normalized_matrix_error(estimate, reference):
  return np.max(np.abs(estimate - reference)) / np.max(np.abs(reference))


@functools.lru_cache(maxsize=None)
def quadrature_reference(name):
  """Phi, Q for every time in TIMES, by scipy expm and adaptive quadrature (B(t) in float64 whatever the test's
  precision: the cache serves float32 and float64 tests)."""
  sde = make_sde(**PARAMETER_SETS[name])
  matrix = references.drift(sde.couplings, sde.friction)
  with jax.enable_x64(True):
    return [references.kernel_by_quadrature(matrix, sde.friction, float(sde_lib.integrated_beta(sde, t)))
            for t in TIMES]


def test_critical_parameters_known_values():
  couplings, friction, rate = sde_lib.critical_parameters(3, 1.0)
  np.testing.assert_allclose(couplings, [1.0, 2 * math.sqrt(2)], rtol=1e-14)
  np.testing.assert_allclose([friction, rate], [3 * math.sqrt(3), math.sqrt(3)], rtol=1e-14)
  couplings, friction, rate = sde_lib.critical_parameters(2, 2.0)  # CLD: w = 2 -> xi = 4 = 2 w
  np.testing.assert_allclose([couplings[0], friction, rate], [2.0, 4.0, 2.0], rtol=1e-14)


@pytest.mark.parametrize("order", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("first_coupling", [0.5, 1.0, 3.0])
def test_critical_damping_has_one_repeated_eigenvalue(order, first_coupling):
  couplings, friction, rate = sde_lib.critical_parameters(order, first_coupling)
  assert couplings[0] == pytest.approx(first_coupling)
  assert all(w > 0 for w in couplings)
  characteristic = np.poly(references.drift(couplings, friction))  # det(lam I - F), highest power first
  expected = [math.comb(order, k) * rate**k for k in range(order + 1)]  # (lam + rate)^n
  np.testing.assert_allclose(characteristic, expected, rtol=1e-10)


def test_third_order_decays_sqrt3_faster_than_second():
  ratio = make_sde(3).decay_rate / make_sde(2).decay_rate
  assert ratio == pytest.approx(math.sqrt(3), rel=1e-4)  # eigvals of a defective F are ~1e-5 accurate


@pytest.mark.float64
@pytest.mark.parametrize("name", sorted(PARAMETER_SETS))
def test_standard_normal_is_stationary(name):
  sde = make_sde(**PARAMETER_SETS[name])
  matrix = np.asarray(sde_lib.drift_matrix(sde, np.float64))
  noise = np.zeros_like(matrix)
  noise[-1, -1] = sde_lib.noise_variance(sde)
  np.testing.assert_allclose(matrix + matrix.T + noise, 0.0, atol=1e-14)
  _, sigma = perturbation_kernel.marginal(sde, jnp.asarray(TIMES), jnp.eye(sde.order))
  np.testing.assert_allclose(sigma, np.broadcast_to(np.eye(sde.order), sigma.shape), atol=1e-12)


@pytest.mark.float64
@pytest.mark.parametrize("name", sorted(PARAMETER_SETS))
def test_kernel_float64_matches_quadrature(name):
  sde = make_sde(**PARAMETER_SETS[name])
  phi, noise_cov = perturbation_kernel.marginal(sde, jnp.asarray(TIMES), jnp.zeros((sde.order, sde.order)))
  _, sigma = perturbation_kernel.marginal(sde, jnp.asarray(TIMES), sde_lib.initial_cov(sde))
  assert phi.dtype == jnp.float64
  init = np.diag(np.asarray(sde_lib.initial_cov(sde)))
  for k, (phi_ref, noise_ref) in enumerate(quadrature_reference(name)):
    sigma_ref = phi_ref @ np.diag(init) @ phi_ref.T + noise_ref
    assert normalized_matrix_error(phi[k], phi_ref) <= 1e-9, TIMES[k]
    assert normalized_cov_error(noise_cov[k], noise_ref) <= 1e-9, TIMES[k]  # Q alone: the hardest case
    assert normalized_cov_error(sigma[k], sigma_ref) <= 1e-9, TIMES[k]


@pytest.mark.parametrize("name", sorted(PARAMETER_SETS))
def test_kernel_float32_matches_float64_reference(name):
  sde = make_sde(**PARAMETER_SETS[name])
  phi, sigma = perturbation_kernel.marginal(sde, jnp.asarray(TIMES, jnp.float32),
                                            sde_lib.initial_cov(sde, dtype=jnp.float32))
  assert phi.dtype == jnp.float32 and sigma.dtype == jnp.float32
  init = np.diag(np.asarray(sde_lib.initial_cov(sde)))
  for k, (phi_ref, noise_ref) in enumerate(quadrature_reference(name)):
    sigma_ref = phi_ref @ np.diag(init) @ phi_ref.T + noise_ref
    assert normalized_matrix_error(np.asarray(phi[k], np.float64), phi_ref) <= 1e-3, TIMES[k]
    assert normalized_cov_error(np.asarray(sigma[k], np.float64), sigma_ref) <= 1e-3, TIMES[k]


@pytest.mark.float64  # closed forms to 1e-12: the float64 kernel's accuracy
def test_order_one_is_the_vp_sde():
  sde = make_sde(1, beta_schedule="linear", beta_0=0.1, beta_1=20.0)
  assert sde.friction == 0.5
  t = jnp.linspace(1e-4, 1.0, 9)
  integral = 0.1 * t + 0.5 * (20.0 - 0.1) * t**2  # score_sde's VPSDE with beta_min 0.1, beta_max 20
  phi, sigma = perturbation_kernel.marginal(sde, t, jnp.zeros((1, 1)))
  np.testing.assert_allclose(phi[:, 0, 0], np.exp(-0.5 * integral), rtol=1e-12)
  np.testing.assert_allclose(sigma[:, 0, 0], -np.expm1(-integral), rtol=1e-12)


@pytest.mark.float64  # closed forms to 1e-12: the float64 kernel's accuracy
def test_order_two_is_cld():
  """CLD with M = 1/4, Gamma = 1 (Dockhorn et al. 2022, appendix B), velocity rescaled by 1/sqrt(M) = 2."""
  sde = make_sde(2, couplings=(2.0,), friction=4.0, beta_0=4.0, beta_1=4.0)
  gamma = 1.0
  for t in [1e-4, 0.03, 0.25, 1.0]:
    b = 4.0 * t
    var_x0, var_v0 = 0.3, 0.01  # CLD units: v has stationary variance M = 1/4
    x0, v0 = 0.7, -0.2
    e = math.exp(-4 * b / gamma)
    sxx = (var_x0 + 1 / e - 1 + 4 * b / gamma * (var_x0 - 1) + 4 * b**2 / gamma**2 * (var_x0 - 2)
           + 16 * b**2 / gamma**4 * var_v0) * e
    sxv = (-b * var_x0 + 4 * b / gamma**2 * var_v0 - 2 * b**2 / gamma * (var_x0 - 2)
           - 8 * b**2 / gamma**3 * var_v0) * e
    svv = (gamma**2 / 4 / e - gamma**2 / 4 + b * gamma + var_v0 * (1 + 4 * b**2 / gamma**2 - 4 * b / gamma)
           + b**2 * (var_x0 - 2)) * e
    mean_x = (2 * b / gamma * x0 + 4 * b / gamma**2 * v0 + x0) * math.exp(-2 * b / gamma)
    mean_v = (-b * x0 - 2 * b / gamma * v0 + v0) * math.exp(-2 * b / gamma)
    phi, sigma = perturbation_kernel.marginal(sde, jnp.asarray(t), jnp.diag(jnp.array([var_x0, 4 * var_v0])))
    np.testing.assert_allclose(phi @ np.array([x0, 2 * v0]), [mean_x, 2 * mean_v], rtol=1e-11)
    np.testing.assert_allclose(sigma, [[sxx, 2 * sxv], [2 * sxv, 4 * svv]], rtol=1e-10)


def test_monte_carlo_simulation_of_the_forward_sde():
  """Euler-Maruyama paths of du = beta F u dt + sqrt(beta) G dW from x_0 = 1.5 with random auxiliaries."""
  sde = make_sde(3, beta_schedule="linear", beta_0=2.0, beta_1=10.0)
  rng = np.random.default_rng(0)
  num_paths, num_steps, t_end = 20000, 2000, 0.3
  matrix = references.drift(sde.couplings, sde.friction)
  aux_std = np.sqrt(np.array(sde.init_aux_var))
  u = np.concatenate([np.full((num_paths, 1), 1.5), aux_std * rng.standard_normal((num_paths, 2))], axis=1)
  dt = t_end / num_steps
  for k in range(num_steps):
    beta = float(sde_lib.beta(sde, (k + 0.5) * dt))
    u = u + beta * dt * u @ matrix.T
    u[:, -1] += np.sqrt(beta * dt * 2 * sde.friction) * rng.standard_normal(num_paths)
  phi, sigma = perturbation_kernel.marginal(sde, jnp.asarray(t_end), sde_lib.initial_cov(sde))
  mean = np.asarray(phi)[:, 0] * 1.5
  sigma = np.asarray(sigma)
  mean_se = np.sqrt(np.diag(sigma) / num_paths)
  np.testing.assert_array_less(np.abs(u.mean(0) - mean), 4 * mean_se + 2e-3)  # + the O(dt) Euler bias
  cov_se = np.sqrt((sigma**2 + np.outer(np.diag(sigma), np.diag(sigma))) / num_paths)
  np.testing.assert_array_less(np.abs(np.cov(u.T) - sigma), 4 * cov_se + 2e-3)


@pytest.mark.float64  # a central difference of step 1e-6 needs float64
def test_kernel_is_jittable_vmappable_and_differentiable():
  sde = make_sde(3)
  init = sde_lib.initial_cov(sde)
  jitted = jax.jit(perturbation_kernel.marginal, static_argnums=0)
  t = jnp.array([0.01, 0.5])
  np.testing.assert_allclose(jitted(sde, t, init)[1], perturbation_kernel.marginal(sde, t, init)[1], rtol=1e-12)
  vmapped = jax.vmap(lambda s: perturbation_kernel.marginal(sde, s, init)[1])(t)
  np.testing.assert_allclose(vmapped, perturbation_kernel.marginal(sde, t, init)[1], rtol=1e-12)
  entry = lambda s: perturbation_kernel.marginal(sde, s, init)[1][0, 1]
  step = 1e-6
  finite_difference = (entry(0.3 + step) - entry(0.3 - step)) / (2 * step)
  assert jax.grad(entry)(0.3) == pytest.approx(float(finite_difference), rel=1e-6)


def test_prior_draws_and_log_density():
  u = samplers.prior_draws(jax.random.PRNGKey(0), jnp.arange(4000), 3, (2,))
  assert u.shape == (4000, 3, 2)
  assert abs(float(u.mean())) < 0.02 and abs(float(u.var()) - 1) < 0.03
  assert u.dtype == jnp.float32
  expected = scipy.stats.norm.logpdf(np.asarray(u, np.float64)).reshape(4000, -1).sum(-1)
  # float32: a sum of 6 terms -u^2/2 - log(2 pi)/2 of one sign, each a few roundings (2^-24 each) off: ~1e-7.
  np.testing.assert_allclose(sde_lib.prior_logp(u), expected, rtol=1e-6)


def test_reverse_drifts_at_the_stationary_law():
  """For p_t = N(0, I) the score is -u_last: the reverse drift is beta F_A u and the flow beta K u."""
  sde = make_sde(3)
  u = jax.random.normal(jax.random.PRNGKey(1), (5, 3, 4))
  t = jnp.full((5,), 0.3)
  score = -u[:, -1]
  matrix = np.asarray(sde_lib.drift_matrix(sde, np.float64))
  skew = -(matrix + np.diag([0.0, 0.0, sde.friction]))  # K = -(F + D)
  signs = np.array([1.0, -1.0, 1.0])
  reverse = matrix * np.outer(signs, signs)  # F_A = S F S
  np.testing.assert_allclose(sde_lib.reverse_linear_matrix(sde), reverse, rtol=1e-7)
  assert u.dtype == jnp.float32
  # float32 (as sampling runs): a drift entry is 6.5 times a sum of 3 products of u with the matrix, formed in a
  # few roundings of 2^-24 each; allow 16 of them on the sum of the products' magnitudes. A wrong term is O(1) off.
  for drift, linear in ((sde_lib.reverse_drift(sde, u, t, score), reverse),
                        (sde_lib.probability_flow_drift(sde, u, t, score), skew)):
    u64 = np.asarray(u, np.float64)
    expected = 6.5 * np.einsum("ij,bjd->bid", linear, u64)
    bound = 1e-6 * 6.5 * np.einsum("ij,bjd->bid", np.abs(linear), np.abs(u64))
    assert drift.dtype == jnp.float32
    np.testing.assert_array_less(np.abs(np.asarray(drift, np.float64) - expected), bound)


@pytest.mark.parametrize("kind", ["numpy", "traced", "batched"])
def test_apply_blocks_is_the_block_matrix_product(kind):
  """The unrolled product against einsum, for a static numpy matrix with zeros, a jax one and one per example."""
  rng = np.random.default_rng(0)
  u = rng.standard_normal((5, 3, 4, 2)).astype(np.float32)  # float32 as sampling runs; the products in float64
  matrix = rng.standard_normal((5, 3, 3) if kind == "batched" else (3, 3)).astype(np.float32)
  matrix[..., 0, 2] = 0.0
  product = lambda m, v: np.einsum("bij,bj...->bi..." if m.ndim == 3 else "ij,bj...->bi...", m, v)

  def check(given, exact):
    result = sde_lib.apply_blocks(given, jnp.asarray(u))
    assert result.dtype == jnp.float32
    # A sum of 3 exact float32 products rounds 3 times (2^-24 each) relative to the sum of their magnitudes;
    # a wrong block or a transposed matrix is O(1) off.
    bound = 4e-7 * product(np.abs(exact.astype(np.float64)), np.abs(u.astype(np.float64)))
    error = np.abs(np.asarray(result, np.float64) - product(exact.astype(np.float64), u.astype(np.float64)))
    np.testing.assert_array_less(error, bound + 1e-30)

  check(matrix if kind == "numpy" else jnp.asarray(matrix), matrix)
  rectangular = rng.standard_normal((2, 3)).astype(np.float32)  # fewer output blocks than input blocks
  check(rectangular, rectangular)


@pytest.mark.parametrize("field, value, message", [
    ("order", 0, "sde.order"),
    ("couplings", (1.0, -2.0), r"sde.couplings\[1\]"),
    ("couplings", (1.0,), "sde.couplings"),
    ("friction", 0.0, "sde.friction"),
    ("beta_0", -1.0, "sde.beta_0"),
    ("beta_1", 0.0, "sde.beta_1"),
    ("eps", 1.0, "sde.eps"),
    ("init_aux_var", -0.1, r"sde.init_aux_var\[0\]"),
    ("beta_schedule", "cosine", "sde.beta_schedule"),
    ("coupling_scale", 0.0, "sde.coupling_scale"),
])
def test_bad_parameters_name_the_field(field, value, message):
  config = default.get_config().sde
  config[field] = value
  with pytest.raises(ValueError, match=message):
    sde_lib.from_config(config)


def test_bad_kernel_arguments():
  sde = make_sde(3)
  with pytest.raises(ValueError, match=r"t must lie in \[0, sde.T"):
    perturbation_kernel.marginal(sde, jnp.array([0.5, 1.5]), sde_lib.initial_cov(sde))
  with pytest.raises(ValueError, match=r"t must lie in \[0, sde.T"):
    perturbation_kernel.marginal_factor(sde, -0.1)
  with pytest.raises(ValueError, match=r"init_cov has shape \(2, 2\)"):
    perturbation_kernel.marginal(sde, 0.5, jnp.eye(2))

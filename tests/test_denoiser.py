"""The denoiser of the sufficient statistic (hold_jax/process/sufficient_statistic.py, hold_jax/models/denoiser.py)
against exact references: E[x_0 | u_t] = D(x0_gls; sigma_eff) and the last-block score it gives, for Gaussian and
two-point data whose scores are known in closed form (hold_jax/process/exact_scores.py), orders 1-4."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hold_jax.models import denoiser
from hold_jax.process import exact_scores
from hold_jax.process import kernel_table
from hold_jax.process import perturbation_kernel
from hold_jax.process import sufficient_statistic
from hold_jax.sampling import sampler_parts
from hold_jax.training import losses
from test_sde import PARAMETER_SETS, make_sde

ORDERS = ("n1_vp", "n2_critical", "n3_critical", "n4_mixed")  # orders 1-4, critical and not


def states(sde, x0, t, rng):
  """u_t = m_t x_0 + L_t z from the float64 kernel: x0 (batch, D), t (batch,) -> (batch, n, D)."""
  phi, factor = perturbation_kernel.marginal_factor(sde, t)
  noise = rng.standard_normal((len(t), sde.order, x0.shape[1]))
  return np.asarray(phi[:, :, 0, None] * x0[:, None] + np.einsum("bij,bjd->bid", factor, noise))


def times(sde, num):
  return np.geomspace(sde.eps, sde.T, num)


def tweedie_posterior_mean(sde, u, t, score):
  """E[x_0 | u] from an exact score, (s + r . u) / c with r the last row of Sigma_t^{-1} (sampler_parts)."""
  phi, factor = perturbation_kernel.marginal_factor(sde, t)
  sigma = np.einsum("bij,bkj->bik", factor, factor)
  inverse = np.linalg.inv(sigma)
  row = inverse[:, -1, :]
  scale = np.einsum("bj,bj->b", row, phi[:, :, 0])
  return np.stack([np.asarray(sampler_parts.posterior_mean(score[b:b + 1], u[b:b + 1], row[b], scale[b], None))[0]
                   for b in range(len(t))])


@pytest.mark.float64
@pytest.mark.parametrize("name", ORDERS)
def test_gaussian_data_posterior_mean_is_the_denoiser_of_the_statistic(name):
  """x_0 ~ N(mu, s^2): the ideal denoiser is mu + s^2 / (s^2 + sigma^2) (x - mu); through the statistic it gives the
  exact score (exact_scores.gaussian_score) and Tweedie's posterior mean of that score."""
  sde = make_sde(**PARAMETER_SETS[name])
  rng = np.random.default_rng(0)
  mu, var = 0.3, 0.7
  t = times(sde, 12)
  u = states(sde, mu + np.sqrt(var) * rng.standard_normal((len(t), 3)), t, rng)
  x, sigma = sufficient_statistic.statistic(sde, jnp.asarray(u), jnp.asarray(t))
  x, sigma = np.asarray(x), np.asarray(sigma)[:, None]
  ideal = mu + var / (var + sigma**2) * (x - mu)
  exact = np.asarray(exact_scores.gaussian_score(sde, jnp.asarray(u), jnp.asarray(t), mu, var))
  score = sufficient_statistic.score_from_noise(sde, jnp.asarray(u), jnp.asarray(t), jnp.asarray((x - ideal) / sigma))
  np.testing.assert_allclose(score, exact, rtol=1e-6, atol=1e-6 * np.abs(exact).max())
  np.testing.assert_allclose(tweedie_posterior_mean(sde, u, t, exact), ideal, rtol=1e-5, atol=1e-6)


@pytest.mark.float64
@pytest.mark.parametrize("name", ORDERS)
def test_two_point_data_posterior_mean_is_the_denoiser_of_the_statistic(name):
  """x_0 = +-(1, 1) with equal weights: D(x; sigma) = (1, 1) tanh((x_1 + x_2) / sigma^2), against the mixture's
  exact score."""
  sde = make_sde(**PARAMETER_SETS[name])
  rng = np.random.default_rng(1)
  t = times(sde, 12)[2:]  # at the first times D is a step: x0_gls is exact to 1e-10, tanh(x / sigma^2) is +-1
  u = states(sde, rng.choice([-1.0, 1.0], size=(len(t), 1)) * np.ones(2), t, rng)
  x, sigma = sufficient_statistic.statistic(sde, jnp.asarray(u), jnp.asarray(t))
  x, sigma = np.asarray(x), np.asarray(sigma)[:, None]
  ideal = np.tanh(x.sum(axis=1, keepdims=True) / sigma**2) * np.ones(2)
  means = jnp.asarray([[-1.0, -1.0], [1.0, 1.0]])
  exact = np.asarray(exact_scores.mixture_score(sde, jnp.asarray(u), jnp.asarray(t), means, 0.0))
  score = sufficient_statistic.score_from_noise(sde, jnp.asarray(u), jnp.asarray(t), jnp.asarray((x - ideal) / sigma))
  # The coefficients are interpolated from the table (errors ~1e-5), which this steep denoiser amplifies.
  np.testing.assert_allclose(score, exact, rtol=5e-4, atol=1e-5 * np.abs(exact).max())
  np.testing.assert_allclose(tweedie_posterior_mean(sde, u, t, exact), ideal, atol=1e-5)


@pytest.mark.float64
@pytest.mark.parametrize("name", ("n1_vp", "n3_critical", "n4_critical"))
def test_the_statistic_is_x0_plus_noise_of_std_sigma_eff(name):
  """Monte Carlo: a_t . u_t - x_0 over many draws of the kernel has mean 0 and std sigma_eff(t)."""
  sde = make_sde(**PARAMETER_SETS[name])
  rng = np.random.default_rng(2)
  t = np.repeat(np.array([sde.eps, 0.01, 0.2, 1.0]), 20000)
  x0 = rng.uniform(-1, 1, size=(len(t), 1))
  x, sigma = sufficient_statistic.statistic(sde, jnp.asarray(states(sde, x0, t, rng)), jnp.asarray(t))
  error = (np.asarray(x) - x0)[:, 0].reshape(4, -1) / np.asarray(sigma).reshape(4, -1)
  np.testing.assert_allclose(error.mean(axis=1), 0.0, atol=0.03)
  np.testing.assert_allclose(error.std(axis=1), 1.0, atol=0.02)


@pytest.mark.float64
@pytest.mark.parametrize("name", ("n2_critical", "n3_critical", "n4_critical", "n4_mixed"))
def test_float32_statistic_and_score_match_float64(name):
  """The float32 path (float32 states and times, so the table is read in float32) against the float64 one, over
  [eps, T]: x0_gls within 5% of sigma_eff or float32's round-off of O(1) data (4e-7; sigma_eff falls to 5.6e-6 for
  HOLD at eps and 5e-8 for order 4, where denoising is the identity anyway), and the score within 1e-3 of its
  scale 1 / l_t for a noise estimate of a network's size (O(1))."""
  sde = make_sde(**PARAMETER_SETS[name])
  rng = np.random.default_rng(3)
  t = np.exp(rng.uniform(np.log(sde.eps), np.log(sde.T), 256))
  t[:2] = sde.eps, sde.T
  u = states(sde, rng.uniform(-1, 1, size=(len(t), 4)), t, rng)
  noise = rng.standard_normal((len(t), 4))
  x64, sigma64 = (np.asarray(v) for v in sufficient_statistic.statistic(sde, jnp.asarray(u), jnp.asarray(t)))
  s64 = np.asarray(sufficient_statistic.score_from_noise(sde, jnp.asarray(u), jnp.asarray(t), jnp.asarray(noise)))
  u32, t32 = jnp.asarray(u, jnp.float32), jnp.asarray(t, jnp.float32)
  x32, sigma32 = sufficient_statistic.statistic(sde, u32, t32)
  s32 = sufficient_statistic.score_from_noise(sde, u32, t32, jnp.asarray(noise, jnp.float32))
  assert x32.dtype == s32.dtype == jnp.float32
  np.testing.assert_allclose(sigma32, sigma64, rtol=2e-4)
  assert np.all(np.abs(x32 - x64) < 0.05 * sigma64[:, None] + 4e-7)
  l_t = np.asarray(kernel_table.bcsm_kernel(sde, jnp.asarray(t))[1])[:, -1, -1]
  assert np.max(np.abs(s32 - s64) * l_t[:, None]) < 1e-3


@pytest.mark.parametrize("order", (1, 3))
def test_time_at_sigma_inverts_sigma_eff(order):
  sde = make_sde(order)
  low, high = sufficient_statistic.sigma_range(sde)
  assert low < high
  sigma = jnp.geomspace(low, high, 50)
  t = sufficient_statistic.time_at_sigma(sde, sigma)
  np.testing.assert_allclose(sufficient_statistic.coefficients(sde, t).sigma, sigma, rtol=1e-3)
  log_sigma = sufficient_statistic._table(sde, kernel_table.NUM_POINTS)[:, 0]
  assert np.all(np.diff(log_sigma) > 0)  # sigma_eff grows with t: the inverse exists


def test_log_normal_times_follow_the_noise_levels():
  """loss.time_sampling = 'log_normal' for a score network: times whose sigma_eff is log-normal, truncated to the
  process's range; HOLD's log-uniform times put about 31% of the examples below sigma_eff = 1e-3."""
  sde = make_sde(3)
  rng = jax.random.PRNGKey(0)
  t = losses.sample_times(sde, "log_normal", rng, (20000,), jnp.float32)
  log_sigma = np.log(np.asarray(sufficient_statistic.coefficients(sde, t).sigma))
  assert abs(log_sigma.mean() + 1.2) < 0.05 and abs(log_sigma.std() - 1.2) < 0.05
  uniform_t = losses.sample_times(sde, "log_uniform", rng, (20000,), jnp.float32)
  below = np.mean(np.asarray(sufficient_statistic.coefficients(sde, uniform_t).sigma) < 1e-3)
  assert 0.25 < below < 0.37, below


def test_preconditioning_is_edm():
  """c_skip, c_out, c_in of EDM's table 1, the stable noise estimate equal to (x - D) / sigma, the target
  equal to (x_0 - c_skip x) / c_out, and the denoiser loss equal to lambda(sigma) ||D - x_0||^2."""
  rng = np.random.default_rng(4)
  sigma = np.array([0.01, 0.5, 3.0], np.float32)
  sd = 0.5
  x0 = rng.uniform(-1, 1, (3, 5)).astype(np.float32)
  noise = rng.standard_normal((3, 5)).astype(np.float32)
  x = x0 + sigma[:, None] * noise
  output = rng.standard_normal((3, 5)).astype(np.float32)
  total = sigma**2 + sd**2
  c_skip, c_out = sd**2 / total, sigma * sd / np.sqrt(total)
  d = c_skip[:, None] * x + c_out[:, None] * output
  np.testing.assert_allclose(denoiser.denoised(x, sigma, output, sd), d, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(denoiser.noise_estimate(x, sigma, output, sd), (x - d) / sigma[:, None], rtol=1e-3,
                             atol=1e-4)
  np.testing.assert_allclose(denoiser.target(x0, noise, sigma, sd), (x0 - c_skip[:, None] * x) / c_out[:, None],
                             rtol=1e-3, atol=1e-4)
  inputs = []
  network = lambda params, inputs_, sigma_: inputs.append(inputs_) or jnp.asarray(output)
  loss = denoiser.per_example_loss(network, None, jnp.asarray(x0), jnp.asarray(sigma), jax.random.PRNGKey(0), sd)
  drawn = np.asarray(inputs[0][:, 0]) * np.sqrt(total)[:, None]  # the network saw c_in x: recover x
  d = c_skip[:, None] * drawn + c_out[:, None] * output
  np.testing.assert_allclose(loss, np.mean((d - x0) ** 2, axis=1) / c_out**2, rtol=1e-3)


@pytest.mark.float64
@pytest.mark.parametrize("name", ("n2_critical", "n3_critical"))
def test_the_denoised_output_of_orders_two_and_up_is_the_statistic_at_eps(name):
  """sampling.denoise for order >= 2 returns x0_gls (float32 states, as samplers hold them): given x_0 its
  noise has the GLS variance 1 / (m^T Sigma^-1 m) of the float64 kernel at eps (a formula in Sigma itself, not
  the whitened factor the module uses), below the data block's own noise."""
  sde = make_sde(**PARAMETER_SETS[name])
  rng = np.random.default_rng(5)
  num = 20000
  t = np.full(num, sde.eps)
  x0 = np.full((num, 2), 0.3)
  u = states(sde, x0, t, rng)
  output = sampler_parts.denoise(sde, None, None, jnp.asarray(u, jnp.float32), jnp.float32)
  assert output.dtype == jnp.float32 and output.shape == (num, 2)
  phi, factor = perturbation_kernel.marginal_factor(sde, t[:1])
  m, cov = phi[0, :, 0], factor[0] @ factor[0].T
  gls_std = 1.0 / np.sqrt(m @ np.linalg.solve(cov, m))
  error = np.asarray(output, np.float64) - x0
  assert abs(error.mean()) < 4 * gls_std / np.sqrt(error.size)
  assert abs(error.std() / gls_std - 1.0) < 0.03, (error.std(), gls_std)
  assert gls_std < 0.5 * np.sqrt(cov[0, 0])  # the data block alone: 2.8x noisier for CLD, 230x for HOLD

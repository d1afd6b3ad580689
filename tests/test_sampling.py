"""Samplers with the exact score of Gaussian data (DESIGN section 5)."""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from hold_jax import exact_scores
from hold_jax import sampling
from test_sde import make_sde

DATA_MEAN = np.array([0.5, -0.5])
DATA_VAR = 0.5
NUM_SAMPLES = 10000


@functools.lru_cache(maxsize=None)
def gaussian_samples(method, num_steps, grid="uniform"):
  sde = make_sde(3)
  score_fn = lambda params, u, t: exact_scores.gaussian_score(sde, u, t, jnp.asarray(DATA_MEAN, u.dtype), DATA_VAR)
  config = ml_collections.ConfigDict(dict(num_steps=num_steps, method=method, grid=grid, rho=7.0, denoise=True))
  sampler = sampling.make_sampler(sde, score_fn, (2,), config, dtype=jnp.float32)
  samples = sampler(None, jax.random.PRNGKey(0), jnp.arange(NUM_SAMPLES))
  assert samples.dtype == jnp.float32 and samples.shape == (NUM_SAMPLES, 2)
  return np.asarray(samples, np.float64)


def moment_errors(samples):
  """(|mean error| / its standard error, |covariance error| / its standard error), worst entry each."""
  mean_se = np.sqrt(DATA_VAR / NUM_SAMPLES)
  cov = np.cov(samples.T)
  target = DATA_VAR * np.eye(2)
  cov_se = np.sqrt((target**2 + np.outer(np.diag(target), np.diag(target))) / NUM_SAMPLES)
  return np.max(np.abs(samples.mean(0) - DATA_MEAN)) / mean_se, np.max(np.abs(cov - target) / cov_se)


@pytest.mark.parametrize("method, num_steps", [("lie_trotter", 100), ("euler_maruyama", 400)])
def test_samples_reproduce_the_data_moments(method, num_steps):
  """Lie-Trotter is within Monte Carlo error (10^4 samples) at 100 steps; Euler-Maruyama's covariance is
  still 5.4 standard errors off at 100 steps and needs about 400."""
  mean_z, cov_z = moment_errors(gaussian_samples(method, num_steps))
  assert mean_z < 4 and cov_z < 4, (mean_z, cov_z)


def test_lie_trotter_beats_euler_maruyama_at_20_steps():
  def error(samples):
    return (np.linalg.norm(samples.mean(0) - DATA_MEAN)
            + np.linalg.norm(np.cov(samples.T) - DATA_VAR * np.eye(2)))

  lie_trotter = error(gaussian_samples("lie_trotter", 20))
  euler_maruyama = error(gaussian_samples("euler_maruyama", 20))
  assert lie_trotter < euler_maruyama, (lie_trotter, euler_maruyama)


@pytest.mark.parametrize("method", sampling.METHODS)
def test_sample_depends_only_on_its_own_seed(method):
  sde = make_sde(3)
  score_fn = lambda params, u, t: exact_scores.gaussian_score(sde, u, t, 0.3, 0.4)
  config = ml_collections.ConfigDict(dict(num_steps=10, method=method, grid="quadratic", rho=7.0, denoise=True))
  sampler = sampling.make_sampler(sde, score_fn, (3,), config, dtype=jnp.float32)
  rng = jax.random.PRNGKey(7)
  together = sampler(None, rng, jnp.arange(8))
  halves = jnp.concatenate([sampler(None, rng, jnp.arange(4)), sampler(None, rng, jnp.arange(4, 8))])
  alone = sampler(None, rng, jnp.array([5]))
  np.testing.assert_allclose(together, halves, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(together[5:6], alone, rtol=1e-5, atol=1e-6)
  assert not np.allclose(together[0], together[1])


@pytest.mark.parametrize("method", sampling.METHODS)
def test_sampler_is_one_scan_whatever_the_number_of_steps(method):
  sde = make_sde(3)
  score_fn = lambda params, u, t: -u[:, -1]

  def jaxpr_size(num_steps):
    fn = lambda rng: sampling.sample(sde, score_fn, None, rng, jnp.arange(4), (2,), num_steps, method)
    jaxpr = jax.make_jaxpr(fn)(jax.random.PRNGKey(0))
    assert any(eqn.primitive.name == "scan" for eqn in jaxpr.jaxpr.eqns)
    return len(jaxpr.jaxpr.eqns)

  assert jaxpr_size(10) == jaxpr_size(1000)


def test_stationary_prior_is_preserved_exactly_by_the_linear_step():
  """For N(0, I) 'data' with unit auxiliaries the score is -u_last, step (S) is the identity, and
  Lie-Trotter is exact at any step count: 5 steps give N(0, I)."""
  sde = make_sde(3, init_aux_var=1.0)
  score_fn = lambda params, u, t: -u[:, -1]
  samples = np.asarray(sampling.sample(sde, score_fn, None, jax.random.PRNGKey(3), jnp.arange(20000), (1,), 5,
                                       "lie_trotter", denoise=False))
  assert abs(samples.mean()) < 4 / np.sqrt(20000)
  assert abs(samples.var() - 1) < 4 * np.sqrt(2 / 20000)


@pytest.mark.parametrize("kind", sampling.GRIDS)
def test_time_grids(kind):
  sde = make_sde(3)
  grid = np.asarray(sampling.time_grid(sde, 50, kind))
  assert grid.shape == (51,)
  np.testing.assert_allclose([grid[0], grid[-1]], [sde.T, sde.eps], rtol=1e-12)
  assert np.all(np.diff(grid) < 0)


def test_bad_sampling_settings_name_the_field():
  sde = make_sde(3)
  with pytest.raises(ValueError, match="sampling.grid"):
    sampling.time_grid(sde, 10, "cosine")
  with pytest.raises(ValueError, match="sampling.num_steps"):
    sampling.time_grid(sde, 0)
  config = ml_collections.ConfigDict(dict(num_steps=10, method="heun", grid="uniform", rho=7.0, denoise=True))
  with pytest.raises(ValueError, match="sampling.method"):
    sampling.make_sampler(sde, lambda p, u, t: u[:, -1], (2,), config)

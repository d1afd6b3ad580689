"""The network as a denoiser of the sufficient statistic, with EDM's preconditioning, for every order
(docs/denoiser.md).

E[x_0 | u_t] = D(x0_gls; sigma_eff) (hold_jax/process/sufficient_statistic.py), so the network is an isotropic denoiser
and the preconditioning of Karras et al. (2022, "Elucidating the design space", EDM, table 1) carries over
with sigma = sigma_eff(t):

    D(x; sigma) = c_skip x + c_out F_theta(c_in x; sigma),
    c_skip = sd^2 / (sigma^2 + sd^2),  c_out = sigma sd / sqrt(sigma^2 + sd^2),  c_in = 1 / sqrt(sigma^2 + sd^2),

sd = loss.sigma_data. The network sees c_in x0_gls as a single block and is conditioned on sigma (the 'fourier'
embedding takes its log, as EDM's c_noise = log(sigma) / 4 up to scale). It sees nothing else of the state: the
rest of the whitened state is noise independent of x_0, so the network does not depend on the process, and a
denoiser trained with one order drives the samplers of any other (sampled with `--config.sde.*`).

The samplers need the noise of the statistic, (x0_gls - D) / sigma, which at small sigma would subtract nearly
equal numbers; written in F it is sigma x / (sigma^2 + sd^2) - sd F / sqrt(sigma^2 + sd^2), a sum of O(1) terms.

The loss is EDM's, lambda(sigma) || D - x_0 ||^2 with lambda = 1 / c_out^2, i.e. || F - target ||^2 with
target = (x_0 - c_skip x0_gls) / c_out = (sigma x_0 - sd^2 n) / (sd sqrt(sigma^2 + sd^2)) for x0_gls = x_0 +
sigma n: a unit-variance regression at every noise level.

Shapes: x, x_0, noise (batch, *data_shape); sigma (batch,).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from hold_jax.process import sde as sde_lib
from hold_jax.process import sufficient_statistic

# network(params, x (batch, 1, *data_shape), sigma (batch,)) -> F (batch, *data_shape).
Network = Callable[[Any, jax.Array, jax.Array], jax.Array]


def _per(values: jax.Array, like: jax.Array) -> jax.Array:
  return sde_lib.per_example(values, like.ndim)


def network_output(network: Network, params: Any, x: jax.Array, sigma: jax.Array, sigma_data: float) -> jax.Array:
  """F_theta(c_in x; sigma), (batch, *data_shape)."""
  c_in = jax.lax.rsqrt(sigma**2 + sigma_data**2)
  return network(params, (_per(c_in, x) * x)[:, None], sigma)


def denoised(x: jax.Array, sigma: jax.Array, output: jax.Array, sigma_data: float) -> jax.Array:
  """D = c_skip x + c_out F, the estimate of x_0 from the statistic x at noise level sigma."""
  total = sigma**2 + sigma_data**2
  return _per(sigma_data**2 / total, x) * x + _per(sigma * sigma_data * jax.lax.rsqrt(total), x) * output


def noise_estimate(x: jax.Array, sigma: jax.Array, output: jax.Array, sigma_data: float) -> jax.Array:
  """(x - D) / sigma = sigma x / (sigma^2 + sd^2) - sd F / sqrt(sigma^2 + sd^2), without cancellation."""
  total = sigma**2 + sigma_data**2
  return _per(sigma / total, x) * x - _per(sigma_data * jax.lax.rsqrt(total), x) * output


def target(x0: jax.Array, noise: jax.Array, sigma: jax.Array, sigma_data: float) -> jax.Array:
  """(x_0 - c_skip x) / c_out for x = x_0 + sigma noise: what F regresses on, unit variance at every sigma."""
  scale = jax.lax.rsqrt(sigma**2 + sigma_data**2) / sigma_data
  return _per(scale, x0) * (_per(sigma, x0) * x0 - sigma_data**2 * noise)


def score_fn(sde: sde_lib.LangevinSDE, network: Network, sigma_data: float) -> Callable:
  """score_fn(params, u, t) -> last-block score of the preconditioned denoiser under the process `sde`."""

  def score(params, u, t):
    coefficients_t = sufficient_statistic.coefficients(sde, t)  # read once: the statistic and the score share it
    x, sigma = sufficient_statistic.dot_blocks(coefficients_t.a, u), coefficients_t.sigma
    output = network_output(network, params, x, sigma, sigma_data)
    return sufficient_statistic.score_from_noise(sde, u, t, noise_estimate(x, sigma, output, sigma_data),
                                                 coefficients_t)

  return score


def per_example_loss(network: Network, params: Any, x0: jax.Array, sigma: jax.Array, rng: jax.Array,
                     sigma_data: float) -> jax.Array:
  """EDM's lambda(sigma) || D(x_0 + sigma n; sigma) - x_0 ||^2 averaged over data coordinates; returns (batch,).

  x0_gls | x_0 ~ N(x_0, sigma_eff^2) exactly for every order, so the statistic is drawn directly (no state).
  """
  noise = jax.random.normal(rng, x0.shape, x0.dtype)
  x = x0 + _per(sigma, x0) * noise
  residual = network_output(network, params, x, sigma, sigma_data) - target(x0, noise, sigma, sigma_data)
  return jnp.mean(residual.reshape(residual.shape[0], -1) ** 2, axis=-1)

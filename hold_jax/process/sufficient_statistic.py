"""The sufficient statistic of x_0 in the state: every order's score is a denoiser's (docs/denoiser.md).

Under BCSM the kernel is u_t = m_t x_0 + L_t z per data coordinate (m_t = Phi(t)[:, 0] in R^n, L_t lower
triangular, z ~ N(0, I_n)). Whitened, L_t^{-1} u_t = w_t x_0 + z with w_t = L_t^{-1} m_t: n independent
Gaussian looks at x_0, so

    p(x_0 | u_t)  proportional to  p(x_0) N(x_0; x0_gls, sigma_eff^2),
    x0_gls = w . (L^{-1} u) / |w|^2 = a_t . u,   a_t = L_t^{-T} w_t / |w_t|^2,   sigma_eff = 1 / |w_t|,

and E[x_0 | u_t] = D(x0_gls; sigma_eff(t)), the ideal denoiser of the data at noise level sigma_eff. The rest of
the whitened state (its part orthogonal to w_t) is noise independent of x_0. The last-block score is

    s = -(y_last - w_last E[x_0 | u_t]) / l_t = -(c_t . u + w_hat_t (x0_gls - D) / sigma_eff) / l_t,

with y = L^{-1} u, c_t = (L_t^{-1})[last, :] - w_last a_t (c_t . m_t = 0: c_t . u is pure noise) and
w_hat_t = w_last sigma_eff in [-1, 1].

Float32: the whitened state itself is not computable in float32 at small t (y_0 ~ 1e5 x_0 for HOLD at t = 1e-3,
and y_last subtracts such terms), but a_t, c_t, w_hat_t, log sigma_eff and l_t are O(1) or smooth in log t, so
they are tabulated in float64 on the kernel table's grid (kernel_table.py) and x0_gls and the score are dot
products of u with O(1) coefficients. (x0_gls - D) / sigma_eff, the standardised noise of the statistic, is what
a network predicts; it is never formed by subtracting two nearly equal numbers (hold_jax/models/denoiser.py).

Shapes: u (batch, n, *data_shape); t (batch,); statistics and scores (batch, *data_shape).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hold_jax.process import kernel_table
from hold_jax.process import sde as sde_lib


class Coefficients(NamedTuple):
  """The statistic's coefficients at times t (...): a (..., n), c (..., n), w_hat, sigma and l_t (...)."""
  a: jax.Array
  c: jax.Array
  w_hat: jax.Array
  sigma: jax.Array
  score_scale: jax.Array


def coefficients_float64(mean_coefficients: np.ndarray, factor: np.ndarray) -> np.ndarray:
  """The columns [log sigma_eff, a (n), c (n), w_hat, l_t] (..., 2n + 3) from m_t (..., n) and L_t (..., n, n).

  Float64 numpy (the table's precision); the triangular solves are exact to round-off there.
  """
  m = np.asarray(mean_coefficients, np.float64)
  factor = np.asarray(factor, np.float64)
  n = m.shape[-1]
  inverse = np.linalg.inv(factor)  # lower triangular, tiny (n <= 4)
  w = np.einsum("...ij,...j->...i", inverse, m)
  precision = np.sum(w**2, axis=-1)  # |w|^2 = 1 / sigma_eff^2
  a = np.einsum("...ji,...j->...i", inverse, w) / precision[..., None]  # L^{-T} w / |w|^2
  c = inverse[..., n - 1, :] - w[..., n - 1, None] * a
  log_sigma = -0.5 * np.log(precision)
  w_hat = w[..., n - 1] * np.exp(log_sigma)
  return np.concatenate([log_sigma[..., None], a, c, w_hat[..., None], factor[..., n - 1, n - 1, None]], axis=-1)


@functools.lru_cache(maxsize=32)
def _table(sde: sde_lib.LangevinSDE, num_points: int, dtype_name: str = "float64") -> np.ndarray:
  """coefficients_float64 on the kernel table's grid, (G, 2n + 3), computed in float64 and cast to dtype_name."""
  if dtype_name != "float64":
    return _table(sde, num_points).astype(dtype_name)
  mean_coefficients, factor = kernel_table.float64_table(sde, num_points)
  return coefficients_float64(mean_coefficients, factor)


def coefficients(sde: sde_lib.LangevinSDE, t: jax.Array, num_points: int = kernel_table.NUM_POINTS
                 ) -> Coefficients:
  """The statistic's coefficients at t in [eps, T] (clamped), interpolated linearly in log t from float64."""
  n = sde.order
  columns = kernel_table.interpolate(sde, _table(sde, num_points, jnp.dtype(t.dtype).name), t, num_points)
  return Coefficients(a=columns[..., 1:n + 1], c=columns[..., n + 1:2 * n + 1], w_hat=columns[..., 2 * n + 1],
                      sigma=jnp.exp(columns[..., 0]), score_scale=columns[..., 2 * n + 2])


def dot_blocks(weights: jax.Array, u: jax.Array) -> jax.Array:
  """sum_k weights[:, k] u[:, k]: weights (batch, n), u (batch, n, *data_shape) -> (batch, *data_shape)."""
  return sum(sde_lib.per_example(weights[:, k], u.ndim - 1) * u[:, k] for k in range(u.shape[1]))


def statistic(sde: sde_lib.LangevinSDE, u: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
  """x0_gls (batch, *data_shape) and sigma_eff (batch,) of states u at times t: x0_gls | x_0 ~ N(x_0, sigma_eff^2)."""
  coefficients_t = coefficients(sde, t)
  return dot_blocks(coefficients_t.a, u), coefficients_t.sigma


def score_from_noise(sde: sde_lib.LangevinSDE, u: jax.Array, t: jax.Array, noise: jax.Array,
                     coefficients_t: Coefficients | None = None) -> jax.Array:
  """The last-block score from noise = (x0_gls - E[x_0 | u]) / sigma_eff, (batch, *data_shape).

  s = -(c . u + w_hat noise) / l_t; exact for the exact posterior mean (tests/test_denoiser.py). coefficients_t:
  `coefficients(sde, t)` where the caller has them already.
  """
  if coefficients_t is None:
    coefficients_t = coefficients(sde, t)
  per = lambda values: sde_lib.per_example(values, noise.ndim)
  return -(dot_blocks(coefficients_t.c, u) + per(coefficients_t.w_hat) * noise) / per(coefficients_t.score_scale)


def sigma_range(sde: sde_lib.LangevinSDE) -> tuple[float, float]:
  """(sigma_eff(eps), sigma_eff(T)) on the host: the noise levels the process visits between eps and T."""
  log_sigma = _table(sde, kernel_table.NUM_POINTS)[:, 0]
  return float(np.exp(log_sigma[0])), float(np.exp(log_sigma[-1]))


def time_at_sigma(sde: sde_lib.LangevinSDE, sigma: jax.Array) -> jax.Array:
  """The time t in [eps, T] with sigma_eff(t) = sigma (clamped to the process's range), same shape as sigma.

  sigma_eff grows with t (x_0 -> u_s -> u_t is a Markov chain, so u_t knows no more of x_0 than u_s), and the
  table inverts it by linear interpolation of log t in log sigma_eff.
  """
  log_sigma = _table(sde, kernel_table.NUM_POINTS)[:, 0]
  log_t = np.linspace(np.log(sde.eps), np.log(sde.T), log_sigma.size)
  dtype = jnp.result_type(sigma, float)
  log_time = jnp.interp(jnp.log(jnp.asarray(sigma, dtype)), jnp.asarray(log_sigma, dtype), jnp.asarray(log_t, dtype))
  return jnp.exp(log_time)

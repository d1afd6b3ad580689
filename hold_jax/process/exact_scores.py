"""Exact last-block scores of Gaussian and Gaussian-mixture data under the forward process.

If x_0 ~ N(m, s^2 I) and the auxiliaries start as N(0, sigma_k^2), then u_t ~ N(Phi m e_0, Sigma_t) with
Sigma_t = Phi diag(s^2, sigma_1^2, ...) Phi^T + Q, independently per data coordinate. With Sigma_t = L L^T
and y = L^{-1} (u - mean), the score is -L^{-T} y, whose last block is -y_last / L[-1, -1] (L^{-T} is upper
triangular). These scores are the references of the loss and sampler tests, the score of the demo, and the
N(0, I) part of the 'mixed' parametrisation (docs/process.md).

Shapes: u (batch, n, *data_shape), t (batch,); scores (batch, *data_shape).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from hold_jax.process import perturbation_kernel
from hold_jax.process import sde as sde_lib


def _whiten(sde: sde_lib.LangevinSDE, u: jax.Array, t: jax.Array, data_mean: jax.Array, data_var: float
            ) -> tuple[jax.Array, jax.Array]:
  """y = L^{-1} (u - Phi data_mean e_0) and L, for x_0 ~ N(data_mean, data_var I).

  data_mean broadcasts against data_shape. Returns y (batch, n, D) and L (batch, n, n).
  """
  phi, factor = perturbation_kernel.marginal_factor(sde, t, sde_lib.initial_var(sde, data_var, u.dtype))
  data_mean = jnp.broadcast_to(jnp.asarray(data_mean, u.dtype), u.shape[2:])
  mean = phi[:, :, 0, None] * data_mean.reshape(1, 1, -1)  # (batch, n, D)
  centered = u.reshape(u.shape[:2] + (-1,)) - mean
  return jax.scipy.linalg.solve_triangular(factor, centered, lower=True), factor


def gaussian_score(sde: sde_lib.LangevinSDE, u: jax.Array, t: jax.Array, data_mean: jax.Array = 0.0,
                   data_var: float = 1.0) -> jax.Array:
  """grad_{u_{n-1}} log p_t(u) for data x_0 ~ N(data_mean, data_var I)."""
  whitened, factor = _whiten(sde, u, t, data_mean, data_var)
  score = -whitened[:, -1] / factor[:, -1, -1, None]
  return score.reshape(u.shape[:1] + u.shape[2:])


def gaussian_logp(sde: sde_lib.LangevinSDE, u: jax.Array, t: jax.Array, data_mean: jax.Array = 0.0,
                  data_var: float = 1.0) -> jax.Array:
  """log p_t(u) of the full state for x_0 ~ N(data_mean, data_var I); returns (batch,)."""
  whitened, factor = _whiten(sde, u, t, data_mean, data_var)
  num_coords = whitened.shape[-1]
  log_det = num_coords * jnp.sum(jnp.log(jnp.diagonal(factor, axis1=-2, axis2=-1)), axis=-1)
  size = whitened.shape[1] * num_coords
  return -0.5 * jnp.sum(whitened**2, axis=(1, 2)) - log_det - 0.5 * size * jnp.log(2 * jnp.pi)


def mixture_score(sde: sde_lib.LangevinSDE, u: jax.Array, t: jax.Array, means: jax.Array,
                  component_var: float, weights: jax.Array | None = None) -> jax.Array:
  """Last-block score for data drawn from sum_k weights_k N(means_k, component_var I).

  means: (K, *data_shape); weights: (K,) summing to one (uniform by default).
  The mixture's score is the responsibility-weighted average of the component scores.
  """
  num_components = means.shape[0]
  if weights is None:
    weights = jnp.full((num_components,), 1.0 / num_components, u.dtype)
  log_joint = jnp.stack([gaussian_logp(sde, u, t, m, component_var) for m in means], axis=-1)
  log_joint = log_joint + jnp.log(weights)
  responsibilities = jax.nn.softmax(log_joint, axis=-1)  # (batch, K)
  scores = jnp.stack([gaussian_score(sde, u, t, m, component_var) for m in means], axis=-1)
  return jnp.sum(scores * responsibilities.reshape(responsibilities.shape[:1] + (1,) * (u.ndim - 2)
                                                   + responsibilities.shape[1:]), axis=-1)

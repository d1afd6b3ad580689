"""The pieces every sampler shares: per-sample randomness, the probability-flow field of a score function,
Tweedie's posterior mean, and the final denoising step (hold_jax/sampling/samplers.py explains them). The process math
they use (block products, the reverse drifts per unit of integrated beta) lives in hold_jax/process/sde.py.

Shapes: u (batch, n, *data_shape); scores and x0_hat (batch, *data_shape).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from hold_jax.process import sde as sde_lib
from hold_jax.process import sufficient_statistic


def sample_keys(rng: jax.Array, sample_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(prior keys, noise keys), each with a leading axis num_samples, from fold_in(rng, id) per sample."""
  keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(rng, i)))(sample_ids)
  return keys[:, 0], keys[:, 1]


def per_sample_normal(keys: jax.Array, step: int | jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
  """Noise of one step: (num_samples, *shape), sample k from fold_in(keys[k], step)."""
  return jax.vmap(lambda key: jax.random.normal(jax.random.fold_in(key, step), shape, dtype))(keys)


def probability_flow(sde, score_fn, params, u, t):
  """du/dB = F u - xi s_last e_last, the probability-flow ODE per unit of integrated beta, at known times t
  (batch,)."""
  return -sde_lib.reverse_drift_per_beta(sde, u, score_fn(params, u, t), score_weight=1.0)


def posterior_mean(score: jax.Array, u: jax.Array, row: jax.Array, scale: jax.Array, clip_x0=None) -> jax.Array:
  """x0_hat = E[x_0 | u] = (s + r . u) / c by Tweedie's formula through the kernel (hold_jax/sampling/samplers.py),
  clipped to clip_x0 = (low, high) (each broadcasting against data_shape) when given: the thresholding of DPM-Solver++
  and Imagen, which keeps an extrapolated or far-off x0_hat inside the data's range.

  score: (batch, *data_shape); u: (batch, n, *data_shape); row: (n,); scale: (). Returns (batch, *data_shape).
  """
  x0_hat = (score + sum(row[i] * u[:, i] for i in range(u.shape[1]))) / scale
  if clip_x0 is not None:
    x0_hat = jnp.clip(x0_hat, jnp.asarray(clip_x0[0], x0_hat.dtype), jnp.asarray(clip_x0[1], x0_hat.dtype))
  return x0_hat


def denoise(sde, score_fn, params, u, dtype):
  """The samples x_0 (num_samples, *data_shape) from the states u at eps, without noise of the state's own.

  Order 1: a noise-free Euler step of the reverse SDE from eps to t = 0 (score_sde's), one network evaluation.
  Orders >= 2: x0_gls = a_eps . u, the least-squares estimate of x_0 from all n blocks (docs/denoiser.md),
  no network evaluation. Given x_0 it is N(x_0, sigma_eff(eps)^2), where the data block alone carries the
  kernel's noise of x at eps: for HOLD at eps = 1e-3 sigma_eff is 5.6e-6 against 1.3e-3, and for a denoiser
  sampled with a larger sde.eps (a sampling setting there) x0_gls stays at the noise level sigma_eff(eps).
  """
  t = jnp.full(u.shape[:1], sde.eps, dtype)
  if sde.order > 1:
    return sufficient_statistic.statistic(sde, u, t)[0]
  last_db = sde_lib.integrated_beta(sde, jnp.asarray(sde.eps, dtype))
  score = score_fn(params, u, t)
  return (u + last_db * sde_lib.reverse_drift_per_beta(sde, u, score, score_weight=2.0))[:, 0]

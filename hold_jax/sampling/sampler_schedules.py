"""Time grids and the per-step coefficients of the fixed-step samplers, computed when a sampler is traced
(hold_jax/sampling/samplers.py explains the methods; gddim's coefficients are in hold_jax/sampling/flow_schedule.py).

Every schedule is batched over the N steps (a Python loop would make tracing grow with N) and enters the
program as constants.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from hold_jax.models import score_outputs
from hold_jax.process import perturbation_kernel
from hold_jax.process import sde as sde_lib
from hold_jax.sampling import flow_schedule

GRIDS = ("uniform", "quadratic", "edm")


def time_grid(sde: sde_lib.LangevinSDE, num_steps: int, kind: str = "uniform", rho: float = 7.0
              ) -> jax.Array:
  """Decreasing times t_0 = T > ... > t_N = eps, shape (num_steps + 1,).

  'uniform' is linear in t; 'quadratic' places t_k = eps + (T - eps) (1 - k/N)^2, fine near eps where the
  score step is stiff; 'edm' interpolates t^(1/rho) linearly (Karras et al. 2022), finer still.

  Computed on the host in float64 and rounded once to the default float dtype: in float32 the uniform grid's
  T + (eps - T) * 1 cancels to 0.99998 eps, and edm's 7th power multiplies the round-off by rho.
  """
  if not isinstance(num_steps, int) or num_steps < 1:
    raise ValueError(f"sampling.num_steps = {num_steps!r} is not allowed: it must be an integer >= 1.")
  fraction = np.linspace(0.0, 1.0, num_steps + 1)
  if kind == "uniform":
    grid = sde.T + (sde.eps - sde.T) * fraction
  elif kind == "quadratic":
    grid = sde.eps + (sde.T - sde.eps) * (1.0 - fraction) ** 2
  elif kind == "edm":
    if not (rho > 0 and math.isfinite(rho)):  # positive test: NaN fails it
      raise ValueError(f"sampling.rho = {rho!r} is not allowed: it must be a finite number > 0.")
    start, end = sde.T ** (1.0 / rho), sde.eps ** (1.0 / rho)
    grid = (start + fraction * (end - start)) ** rho
  else:
    raise ValueError(f"sampling.grid = {kind!r} is not allowed: it must be one of {GRIDS}.")
  return jnp.asarray(grid, dtype=jnp.result_type(float))


def splitting(sde, method, times, dtype):
  """Per-step inputs of a splitting sampler on the decreasing times (N + 1,).

  Returns (propagators (N + 1, n, n), noise_factors (N + 1, n, n), score_times (N,), score_dBs (N,)): step k
  applies A with propagators[k] and noise_factors[k], then S at score_times[k] over score_dBs[k]; after the
  last step A with the entries N (a step of length 0, the identity, for Lie-Trotter). Strang's two half
  steps A(dB_k / 2) A(dB_{k+1} / 2) between score steps are one A((dB_k + dB_{k+1}) / 2): the linear flow is
  exact, so this has the same law at half the linear steps.
  """
  t_now, t_next = times[:-1], times[1:]
  b_now, b_next = sde_lib.integrated_beta(sde, t_now), sde_lib.integrated_beta(sde, t_next)
  dB = b_now - b_next
  if method.startswith("strang"):
    half = 0.5 * dB
    linear_dBs = jnp.concatenate([half[:1], half[:-1] + half[1:], half[-1:]])
    score_times = sde_lib.time_at_integrated_beta(sde, 0.5 * (b_now + b_next)).astype(dtype)
  else:
    linear_dBs = jnp.concatenate([dB, jnp.zeros((1,), dtype)])
    # Euler: the step's start (see the module docstring); exponential: t_{k+1}, where (A) left the state.
    score_times = t_next if method.endswith("_exponential") else t_now
  score_dBs = dB
  if method.endswith("_exponential"):
    score_scale = score_outputs.score_scale(sde, score_times).astype(dtype)
    rate = 2.0 * sde.friction * (1.0 / score_scale**2 - 1.0)  # c of the exponential score step
    stiff = rate * dB > 1e-6  # elsewhere h = dB to round-off, and (1 - e^{-c dB}) / c would cancel
    safe_rate = jnp.where(stiff, rate, 1.0)
    score_dBs = jnp.where(stiff, -jnp.expm1(-safe_rate * dB) / safe_rate, dB)
  propagators, _, noise_factors = perturbation_kernel.propagator_and_noise(
      sde_lib.reverse_linear_matrix(sde, dtype), 2.0 * sde.friction, linear_dBs, perturbation_kernel.num_doublings(sde),
      sde.decay_rate)
  return propagators, noise_factors, score_times, score_dBs


def posterior(sde, method, times, dtype):
  """Per-step coefficients of the posterior-mean samplers on the decreasing times (N + 1,).

  Returns (gains (N, n, n), weights (N, n), noise_factors (N, n, n), tweedie_rows (N, n), tweedie_scales (N,)):
  step k maps u at t_k to gains[k] u + weights[k] x0_hat + noise_factors[k] z at t_{k+1}, where x0_hat =
  (s + tweedie_rows[k] . u) / tweedie_scales[k] for the last-block score s at (u, t_k) and z ~ N(0, I)
  (noise_factors are zero for 'ddim'). Computed in float64 and cast; see the module docstring.
  """
  with jax.enable_x64(True):
    integrated = np.asarray(sde_lib.integrated_beta(sde, jnp.asarray(np.asarray(times, np.float64))))
    transition, _, _ = perturbation_kernel.propagator_and_noise(
        sde_lib.drift_matrix(sde, jnp.float64), sde_lib.noise_variance(sde), integrated[:-1] - integrated[1:],
        perturbation_kernel.num_doublings(sde), sde.decay_rate)
    transition = np.asarray(transition, np.float64)
  # x_0 known, auxiliaries integrated out: the means phi_t = Phi[:, 0], row n of Sigma_t^{-1} and its factor.
  phi, rows, factor = flow_schedule.kernel_moments(sde, integrated)
  # Batched over the N steps (a Python loop would make tracing grow with N): 'now' is t_k, where the score is
  # evaluated, 'next' is t_{k+1} < t_k.
  now_mean, now_factor, next_mean, next_factor = phi[:-1], factor[:-1], phi[1:], factor[1:]
  # Tweedie: s = -[Sigma_t^{-1} (u - phi_t x0_hat)]_last, so x0_hat = (s + r . u) / c, c = (Sigma_t^{-1} phi_t)_n.
  r = rows[:-1]
  c = np.sum(r * now_mean, axis=-1)
  if method == "ancestral":  # u_s | u_t, x_0: the forward process's exact conditional
    next_cov = next_factor @ np.swapaxes(next_factor, -1, -2)
    cross = next_cov @ np.swapaxes(transition, -1, -2)  # Cov(u_s, u_t | x_0) = Sigma_s A^T
    gain = np.swapaxes(np.linalg.solve(np.swapaxes(now_factor, -1, -2),
                                       np.linalg.solve(now_factor, np.swapaxes(cross, -1, -2))), -1, -2)
    noise = np.linalg.cholesky(nearest_psd(next_cov - gain @ np.swapaxes(cross, -1, -2), next_cov))
  else:  # 'ddim': the same standardised noise L_t^{-1} (u - phi_t x0_hat) carried to t_{k+1}
    gain = next_factor @ np.linalg.inv(now_factor)
    noise = np.zeros_like(gain)
  weight = next_mean - np.einsum("kij,kj->ki", gain, now_mean)  # multiplies x0_hat = (s + r . u) / c
  return tuple(jnp.asarray(x, dtype) for x in (gain, weight, noise, r, c))


def nearest_psd(cov, scale_reference):
  """cov (..., n, n) symmetrised, with round-off negative eigenvalues lifted to a tiny positive floor (for a
  Cholesky; the last step's conditional covariance is zero up to round-off)."""
  cov = 0.5 * (cov + np.swapaxes(cov, -1, -2))
  values, vectors = np.linalg.eigh(cov)
  scale = np.abs(np.diagonal(scale_reference, axis1=-2, axis2=-1)).max(axis=-1, keepdims=True)
  floor = 1e-14 * np.maximum(scale, 1e-300)
  return (vectors * np.maximum(values, floor)[..., None, :]) @ np.swapaxes(vectors, -1, -2)

"""The closed-form perturbation kernel of the process (docs/process.md): u_t given u_0 ~ N(m, S_0) is
N(Phi m, Sigma) with

    Phi = expm(B(t) F),   Sigma = Phi S_0 Phi^T + Q(B(t)),   Q(B) = int_0^B expm(rF) G G^T expm(rF^T) dr.

Phi and Q come from one float32-safe scaling-and-doubling Taylor scheme on a graded (similarity-scaled)
generator (`propagator_and_noise`), because TPUs have no float64 and the blocks of Q span many orders of
magnitude at small t; the Cholesky factor of Sigma is formed by a QR of stacked square roots, never from
Sigma itself (`marginal_factor`). The process (F, G, beta) is hold_jax/process/sde.py; kernel_table.py tabulates the
BCSM kernel for the training hot path.

Shapes: times t (...); kernel matrices (..., n, n). Every function is pure; the process is a static argument.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hold_jax.process import sde as sde_lib

# Step bound and Taylor orders of the scaling-and-doubling kernel (see `propagator_and_noise`): with
# ||h F|| <= 1/2 the truncated series is below the dtype's round-off even for the smallest (x, x) entries
# (their series start at order 2n - 2, hence the order-dependent part).
_TAYLOR_STEP_NORM = 0.5
_TAYLOR_EXTRA_TERMS = {np.dtype(np.float32): 8, np.dtype(np.float64): 14}


def _taylor_order(order: int, dtype) -> int:
  return 2 * order - 2 + _TAYLOR_EXTRA_TERMS.get(np.dtype(dtype), 14)


@functools.lru_cache(maxsize=64)
def num_doublings(sde: sde_lib.LangevinSDE) -> int:
  """Doublings `propagator_and_noise` needs for every step up to B(T) (host, static; cached per process)."""
  return required_doublings(sde_lib.drift_matrix(sde, np.float64), sde.integrated_beta_at_T)


def required_doublings(drift: np.ndarray, max_integrated_beta: float) -> int:
  """Smallest s with max(dB, 1) ||F||_1 2^-s <= 1/2 for all dB <= max_integrated_beta (host, static)."""
  norm = np.abs(np.asarray(drift)).sum(axis=0).max()
  return max(0, int(math.ceil(math.log2(max(max_integrated_beta, 1.0) * norm / _TAYLOR_STEP_NORM))))


def propagator_and_noise(drift: jax.Array, noise_var: float, dB: jax.Array, num_doublings: int,
                         decay_rate: float = 0.0) -> tuple[jax.Array, jax.Array, jax.Array]:
  """expm(dB F) and Q(dB) = int_0^dB expm(rF) g g^T expm(rF^T) dr, with g g^T = noise_var e_last e_last^T.

  Accurate to round-off in float64, and float32-safe, for every dB >= 0 (tests/test_sde.py; the float32 errors
  per order are in benchmarks/RESULTS.md, process.py):
    * Grading. For dB < 1 the blocks live on scales dB^{n-1-k}: we work with the similarity-scaled
      generator Ft = P (dB F) P^{-1}, P = diag(rho^{-(n-1-k)}), rho = min(dB, 1), whose entries stay O(1),
      and with Qt = P Q P; Q_xx ~ dB^{2n-1} is never formed from cancelling O(1) terms.
    * Scaling and doubling. With h = 2^-s, expm(h Ft) and Qt(h) come from their Taylor series
      (Q's terms obey C_{k+1} = Ft C_k + C_k Ft^T), then s doublings Q(2h) = Q(h) + E Q(h) E^T, E <- E E.
      Each doubling adds two positive semi-definite terms, so unlike I - Phi Phi^T (cancels at small dB)
      or Van Loan's block exponential (grows like e^{r dB}) nothing cancels at either end.
    * The shift by decay_rate (-max Re eig F) is carried as a scalar factor so that the matrix being
      squared has no decaying part: for critical damping it is nilpotent and Phi keeps its relative
      accuracy even where it is e^{-r dB} small.

  Args:
    drift: (n, n) matrix F (or F_A for the reverse linear step).
    noise_var: g^2 = 2 xi.
    dB: (...) integrated beta over the step, >= 0.
    num_doublings: s (static), at least `required_doublings(F, max dB)`; larger only costs time.
    decay_rate: shift c in expm(dB F) = e^{-c dB} expm(dB (F + c I)); must make F + c I not decay faster.

  Returns:
    phi: (..., n, n) expm(dB F).
    noise_cov: (..., n, n) Q(dB).
    noise_factor: (..., n, n) lower Cholesky factor of Q(dB), computed on the scaled Qt (zero at dB = 0).
  """
  n = drift.shape[-1]
  dtype = drift.dtype
  dB = jnp.asarray(dB, dtype=dtype)
  positive = dB > 0
  dB_safe = jnp.where(positive, dB, 1.0)  # avoids 0 * inf and NaN gradients at dB = 0
  rho = jnp.minimum(dB_safe, 1.0)[..., None, None]
  index = jnp.arange(n)
  offset = (index[None, :] - index[:, None]).astype(dtype)  # j - i
  grade = (2 * (n - 1) - index[None, :] - index[:, None]).astype(dtype)
  shifted = drift + decay_rate * jnp.eye(n, dtype=dtype)
  generator = dB_safe[..., None, None] * shifted * rho ** (-offset)  # P (dB (F + cI)) P^{-1}
  lyapunov = dB_safe[..., None, None] * drift * rho ** (-offset)  # P (dB F) P^{-1}
  source = dB_safe[..., None, None] * jnp.zeros((n, n), dtype).at[-1, -1].set(noise_var)

  h = 2.0 ** (-num_doublings)
  taylor_order = _taylor_order(n, dtype)
  eye = jnp.broadcast_to(jnp.eye(n, dtype=dtype), generator.shape)
  expm_h, term = eye, eye
  for k in range(1, taylor_order + 1):
    term = (h / k) * (generator @ term)
    expm_h = expm_h + term
  term = h * source
  cov_h = term
  for k in range(1, taylor_order + 1):
    term = (h / (k + 1)) * (lyapunov @ term + term @ _t(lyapunov))
    cov_h = cov_h + term

  step = h * dB_safe[..., None, None]  # unscaled length of the current doubling step
  for _ in range(num_doublings):
    decay = jnp.exp(-2.0 * decay_rate * step)
    cov_h = cov_h + decay * (expm_h @ cov_h @ _t(expm_h))
    expm_h = expm_h @ expm_h
    step = 2.0 * step

  phi = jnp.exp(-decay_rate * dB_safe)[..., None, None] * rho**offset * expm_h
  noise_cov = rho**grade * cov_h
  half_grade = (n - 1 - index).astype(dtype)
  noise_factor = rho ** half_grade[:, None] * jnp.linalg.cholesky(_symmetrize(cov_h))
  phi = jnp.where(positive[..., None, None], phi, jnp.eye(n, dtype=dtype))
  noise_cov = jnp.where(positive[..., None, None], noise_cov, 0.0)
  noise_factor = jnp.where(positive[..., None, None], noise_factor, 0.0)
  return phi, noise_cov, noise_factor


def _t(matrix: jax.Array) -> jax.Array:
  return jnp.swapaxes(matrix, -1, -2)


def _symmetrize(matrix: jax.Array) -> jax.Array:
  return 0.5 * (matrix + _t(matrix))


def _kernel(sde: sde_lib.LangevinSDE, t: jax.Array, dtype=None) -> tuple[jax.Array, jax.Array, jax.Array]:
  t = jnp.asarray(t, dtype=dtype or jnp.result_type(t, float))
  return propagator_and_noise(sde_lib.drift_matrix(sde, t.dtype), sde_lib.noise_variance(sde),
                              sde_lib.integrated_beta(sde, t), num_doublings(sde), sde.decay_rate)


def marginal(sde: sde_lib.LangevinSDE, t: jax.Array, init_cov: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Perturbation kernel of u_t given u_0 ~ N(m, init_cov): mean Phi m, covariance Sigma (docs/process.md).

  Args:
    t: (...) times in [0, T].
    init_cov: (n, n) covariance of u_0 (`sde.initial_cov` conditions on x_0 and integrates the auxiliaries
      out).

  Returns:
    phi: (..., n, n) expm(B(t) F).
    sigma: (..., n, n) Phi init_cov Phi^T + Q(B(t)).
  """
  check_times(sde, t)
  init_cov = jnp.asarray(init_cov)
  if init_cov.shape != (sde.order, sde.order):
    raise ValueError(f"init_cov has shape {init_cov.shape}; it must be (sde.order, sde.order) = "
                     f"({sde.order}, {sde.order}).")
  phi, noise_cov, _ = _kernel(sde, t)
  init_cov = init_cov.astype(phi.dtype)
  return phi, phi @ init_cov @ _t(phi) + noise_cov


def marginal_factor(sde: sde_lib.LangevinSDE, t: jax.Array, init_var: jax.Array | None = None
                    ) -> tuple[jax.Array, jax.Array]:
  """Phi and the lower Cholesky factor L of Sigma, in square-root form (docs/process.md, "The perturbation kernel").

  u_t - Phi u_0 = Phi S_0^{1/2} z_0 + L_Q z is a linear map of independent sources. Sigma_t is too
  ill-conditioned at small t for a Cholesky (its blocks scale like different powers of t), so L comes from a
  QR of the stacked factors [Phi S_0^{1/2}, L_Q]^T, with L_Q from the scaled kernel: the condition number
  is never squared.

  Args:
    t: (...) times in [0, T].
    init_var: (n,) diagonal of S_0; default `sde.initial_var` (x_0 known, auxiliaries integrated out).

  Returns:
    phi: (..., n, n); factor: (..., n, n) lower triangular with a non-negative diagonal, L L^T = Sigma.
    The score scale of BCSM is l_t = factor[..., -1, -1].
  """
  check_times(sde, t)
  phi, _, noise_factor = _kernel(sde, t)
  if init_var is None:
    init_var = sde_lib.initial_var(sde, dtype=phi.dtype)
  init_var = jnp.asarray(init_var, phi.dtype)
  if init_var.shape != (sde.order,):
    raise ValueError(f"init_var has shape {init_var.shape}; it must be (sde.order,) = ({sde.order},).")
  stacked = jnp.concatenate([phi * jnp.sqrt(init_var), noise_factor], axis=-1)  # (..., n, 2n)
  upper = jnp.linalg.qr(_t(stacked), mode="r")  # (..., n, n)
  factor = _t(upper)
  signs = jnp.where(jnp.diagonal(factor, axis1=-2, axis2=-1) < 0, -1.0, 1.0).astype(phi.dtype)
  return phi, factor * signs[..., None, :]


def check_times(sde: sde_lib.LangevinSDE, t: Any) -> None:
  """Raises ValueError when concrete times lie outside [0, T]; traced times are not checked."""
  if isinstance(t, jax.core.Tracer):
    return
  values = np.asarray(t)
  if values.size and (not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > sde.T):
    raise ValueError(f"t must lie in [0, sde.T = {sde.T}]; got values in [{values.min()}, {values.max()}].")

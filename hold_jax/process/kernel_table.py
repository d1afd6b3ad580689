"""The BCSM kernel tabulated on a log-time grid, for the training and sampling hot path.

Every train step needs Phi[:, 0] and L_t (perturbation_kernel.marginal_factor) at a fresh time per example: a
batched Taylor series, doublings and a QR of (n, 2n) matrices, which cost a sizeable part of a small score
network's train step on a CPU (benchmarks/RESULTS.md, train_speed.py). They depend on t alone, so they are
computed once, on a grid geometric in t over [eps, T], and read back by linear interpolation in log t.

Accuracy: the entries behave like powers t^p near eps (p <= 2n - 1/2), smooth in s = log t, so linear
interpolation with spacing h errs by about p^2 h^2 / 8 relative. The table is computed in float64; with
NUM_POINTS points over [eps, T] the interpolated float32 values are closer to the float64 kernel than the
float32 kernel computed directly, for orders up to 4 (tests/test_kernel_table.py checks them; run as a script,
it prints the errors).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from hold_jax.process import perturbation_kernel
from hold_jax.process import sde as sde_lib

NUM_POINTS = 16384


@functools.lru_cache(maxsize=32)
def float64_table(sde: sde_lib.LangevinSDE, num_points: int = NUM_POINTS) -> tuple[np.ndarray, np.ndarray]:
  """mean coefficients Phi[:, :, 0] (G, n) and factors L_t (G, n, n) at t_g = eps (T / eps)^(g / (G - 1)).

  Computed in float64, so the table's only error is the interpolation's; other t-only quantities
  (sufficient_statistic.py) are derived from it.
  """
  # ensure_compile_time_eval: concrete constants even when first called inside a jit trace.
  with jax.ensure_compile_time_eval(), jax.enable_x64(True):
    t = jnp.geomspace(sde.eps, sde.T, num_points, dtype=jnp.float64)
    phi, factor = perturbation_kernel.marginal_factor(sde, t)
    return np.asarray(phi[:, :, 0]), np.asarray(factor)


@functools.lru_cache(maxsize=32)
def _table(sde: sde_lib.LangevinSDE, num_points: int, dtype_name: str) -> tuple[np.ndarray, np.ndarray]:
  mean_coefficients, factor = float64_table(sde, num_points)
  return mean_coefficients.astype(dtype_name), factor.astype(dtype_name)


def interpolate(sde: sde_lib.LangevinSDE, table: np.ndarray, t: jax.Array, num_points: int = NUM_POINTS
                ) -> jax.Array:
  """Rows of `table` (num_points, ...) on the log-t grid, interpolated linearly in log t: (*t.shape, ...).

  t outside [eps, T] is clamped to it (no caller needs it).
  """
  log_eps = float(np.log(sde.eps))  # python floats: weakly typed, so t keeps its dtype
  spacing = float((np.log(sde.T) - log_eps) / (num_points - 1))
  position = jnp.clip((jnp.log(t) - log_eps) / spacing, 0.0, num_points - 1)
  index = jnp.minimum(jnp.floor(position).astype(jnp.int32), num_points - 2)
  flat = jnp.asarray(table.reshape(num_points, -1))
  weight = (position - index)[..., None]
  values = (1.0 - weight) * flat[index] + weight * flat[index + 1]
  return values.reshape(t.shape + table.shape[1:])


def bcsm_kernel(sde: sde_lib.LangevinSDE, t: jax.Array, num_points: int = NUM_POINTS
                ) -> tuple[jax.Array, jax.Array]:
  """Phi[:, 0] and L_t of the BCSM kernel (x_0 known, auxiliaries integrated out) at t in [eps, T].

  Args:
    t: (...) times; values outside [eps, T] are clamped to it (no caller needs them).

  Returns:
    mean_coefficients (..., n): E[u_t | x_0] = mean_coefficients * x_0 blockwise;
    factor (..., n, n): lower Cholesky factor of Cov[u_t | x_0], as perturbation_kernel.marginal_factor(sde, t).
  """
  mean_table, factor_table = _table(sde, num_points, jnp.dtype(t.dtype).name)
  return interpolate(sde, mean_table, t, num_points), interpolate(sde, factor_table, t, num_points)

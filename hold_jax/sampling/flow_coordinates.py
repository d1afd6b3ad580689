"""The probability-flow ODE in coordinates where its stiff linear part is gone: y = Psi(B_ref, B) u.

Per data coordinate (hold_jax/sampling/flow_schedule.py has the derivation), the probability-flow ODE per unit of
integrated beta B is

    du/dB = F_hat(B) u + q(u, B),   F_hat = F + xi e_n r^T,   q = -xi (s + r . u) e_n,

with s the network's last-block score and r = row n of Sigma^{-1}. F_hat carries the stiffness near eps
(r grows like a negative power of B), while s + r . u = (r . m) x0_hat is what the data adds to a point mass.
With P(B) = Psi(B_ref, B) = R(B_ref) R(B)^{-1} (R R^T = Sigma moved by the flow, so dP/dB = -P F_hat) and
Q = P^{-1} = Psi(B, B_ref), y = P u obeys

    dy/dB = P(B) q(Q(B) y, B),   i.e.   dy/ds = -xi B (s + r . u) P(B) e_n  in s = log B,

whose Jacobian in y is P (dq/du) Q: zero for a point mass, small for data concentrated below the noise level
(for data broad against the noise, dq/du nearly cancels F_hat instead, and y is as stiff as u).
An adaptive solver then takes the steps the data needs, not those F_hat's fastest mode needs: on data far
below the noise level (a point mass in the limit) the solve in u takes many times the evaluations. And the
field is written with x0_hat, so x0_hat can be clipped to the data's range (sampling.clip_x0), which removes
the samples that a trained model's unclipped ODE throws far off (benchmarks/RESULTS.md).

Tables. P e_n, Q and r are tabulated in float64 on nodes uniform in log B (fourth-order Magnus on sub-steps
of flow_schedule's length, every `stride`-th node kept) with their exact s-derivatives
(dP/ds = -B P F_hat, dQ/ds = B F_hat Q, dr/ds = -B [S F + F^T S + S G G^T S]_n with S = Sigma^{-1}), and
interpolated by cubic Hermite polynomials in s at run time (in the sampler's precision).

B_ref and segments. Forming u = Q(B) y in float32 amplifies round-off in y by Q's condition number, which
over all of [B(eps), B(T)] is far larger with B_ref = B(eps) than with B_ref = B(T) (Sigma(T) is near the
identity, Sigma(eps) is not), and large in both. So log B is cut into NUM_SEGMENTS equal segments, each solved
with B_ref at its top, where u = y: the solve from T starts with y = u, and each segment hands u = Q(B_low) y
to the next. On Gaussian data with the exact score, more than one segment cuts the float32 error of a single
segment several-fold at about the NFE of the solve in u, and on data far below the noise level the NFE drops
by an order of magnitude from the solve in u. A float32 floor on broad data above the solve in u's is the
price; tests/test_flow_coordinates.py and tests/test_sampling.py state it.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from hold_jax.process import sde as sde_lib
from hold_jax.sampling import flow_schedule

NUM_SEGMENTS = 2  # float32 conditioning of Q within a segment (module docstring)
_STRIDE = 1  # a table node at every Magnus sub-step: with every 4th, the interpolated r left s + r . u (a
# cancellation of large terms near eps) 1e-4 off in log-densities of Gaussian data


@dataclasses.dataclass(frozen=True)
class FlowTable:
  """One segment [B_low, B_high] of the coordinates, B_ref = B_high, on nodes uniform in s = log B (increasing).

  log_b: (M,); column, column_slope: (M, n) P e_n and its s-derivative; expand, expand_slope: (M, n, n)
  Q = Psi(B, B_high) and its s-derivative; row, row_slope: (M, n) r and its s-derivative; scale, scale_slope:
  (M,) c = r . m (Tweedie's x0_hat = (s + r . u) / c) and its s-derivative.
  """

  log_b: np.ndarray
  column: np.ndarray
  column_slope: np.ndarray
  expand: np.ndarray
  expand_slope: np.ndarray
  row: np.ndarray
  row_slope: np.ndarray
  scale: np.ndarray
  scale_slope: np.ndarray


@functools.lru_cache(maxsize=32)
def _magnus_steps(sde: sde_lib.LangevinSDE, stride: int, max_log_step: float):
  """Nodes from B(eps) up to B(T) uniform in log B, a multiple of `stride` sub-steps, and the float64 steps
  Psi(b_{i+1}, b_i) ('up') and Psi(b_i, b_{i+1}) ('down') between them: (nodes (K + 1,), up, down (K, n, n))."""
  with jax.enable_x64(True):
    low, high = (float(sde_lib.integrated_beta(sde, jnp.asarray(t, jnp.float64))) for t in (sde.eps, sde.T))
  count = stride * max(1, math.ceil(math.log(high / low) / (stride * max_log_step)))
  nodes = np.exp(np.linspace(math.log(low), math.log(high), count + 1))
  omega = flow_schedule.magnus_exponents(sde, nodes)
  return nodes, flow_schedule.pade_expm(omega), flow_schedule.pade_expm(-omega)


@functools.lru_cache(maxsize=64)
def table(sde: sde_lib.LangevinSDE, segment: int = 0, num_segments: int = 1, stride: int = _STRIDE,
          max_log_step: float = flow_schedule._MAX_LOG_STEP) -> FlowTable:  # pylint: disable=protected-access
  """The FlowTable of segment `segment` (0 ends at B(eps)) of `num_segments` equal spans of log B."""
  if not 0 <= segment < num_segments:
    raise ValueError(f"segment {segment!r} is not one of the {num_segments} segments.")
  nodes, up, down = _magnus_steps(sde, stride, max_log_step)
  num_kept = (len(nodes) - 1) // stride
  if num_segments > num_kept:
    raise ValueError(f"{num_segments} segments need at least as many table nodes ({num_kept}).")
  first, last = (stride * round(j * num_kept / num_segments) for j in (segment, segment + 1))
  n = sde.order
  expand = np.empty((last - first + 1, n, n))  # Q_i = Psi(b_i, b_last)
  squeeze = np.empty((last - first + 1, n, n))  # P_i = Psi(b_last, b_i)
  expand[-1] = squeeze[-1] = np.eye(n)
  for i in range(last - first - 1, -1, -1):
    expand[i] = down[first + i] @ expand[i + 1]
    squeeze[i] = squeeze[i + 1] @ up[first + i]
  expand, squeeze, b = expand[::stride], squeeze[::stride], nodes[first:last + 1:stride]
  means, row, factor = flow_schedule.kernel_moments(sde, b)
  flow = flow_schedule.flow_matrix(sde, row)  # F_hat (M, n, n)
  # dr/ds = B dr/dB, dS/dB = -(S F + F^T S + S G G^T S), G G^T = noise_variance e_n e_n^T.
  inverse_factor = np.linalg.inv(factor)
  precision = np.swapaxes(inverse_factor, -1, -2) @ inverse_factor  # S = Sigma^{-1}
  drift = np.asarray(sde_lib.drift_matrix(sde, np.float64), np.float64)
  row_slope = -b[:, None] * ((precision @ drift)[:, -1] + (drift.T @ precision)[:, -1]
                             + sde_lib.noise_variance(sde) * precision[:, -1, -1:] * precision[:, -1])
  mean_slope = b[:, None] * (means @ drift.T)  # dm/ds = B F m
  return FlowTable(
      log_b=np.log(b), column=squeeze[:, :, -1], column_slope=-b[:, None] * (squeeze @ flow)[:, :, -1],
      expand=expand, expand_slope=b[:, None, None] * (flow @ expand), row=row, row_slope=row_slope,
      scale=np.sum(row * means, axis=-1),
      scale_slope=np.sum(row_slope * means, axis=-1) + np.sum(row * mean_slope, axis=-1))


def hermite(log_b: jax.Array, values: jax.Array, slopes: jax.Array, s: jax.Array) -> jax.Array:
  """The cubic Hermite interpolant at s () of values (M, ...) with s-derivatives slopes on the uniform nodes
  log_b (M,); s is clipped to the table."""
  step = log_b[1] - log_b[0]
  position = jnp.clip((s - log_b[0]) / step, 0.0, log_b.shape[0] - 1.0)
  index = jnp.clip(jnp.floor(position).astype(jnp.int32), 0, log_b.shape[0] - 2)
  tau = position - index
  tau2, tau3 = tau * tau, tau * tau * tau
  h00, h10 = 2 * tau3 - 3 * tau2 + 1, tau3 - 2 * tau2 + tau
  h01, h11 = -2 * tau3 + 3 * tau2, tau3 - tau2
  return (h00 * values[index] + h10 * step * slopes[index] + h01 * values[index + 1]
          + h11 * step * slopes[index + 1])


class Coordinates:
  """One segment's FlowTable as arrays of one dtype, with the maps and the field of y; built when a solver is
  traced."""

  def __init__(self, sde: sde_lib.LangevinSDE, dtype, segment: int = 0, num_segments: int = 1):
    flow_table = table(sde, segment, num_segments)
    as_array = lambda x: jnp.asarray(x, dtype)
    self.sde = sde
    self.log_b = as_array(flow_table.log_b)
    self.low, self.high = self.log_b[0], self.log_b[-1]
    self._column = (as_array(flow_table.column), as_array(flow_table.column_slope))
    self._expand = (as_array(flow_table.expand), as_array(flow_table.expand_slope))
    self._row = (as_array(flow_table.row), as_array(flow_table.row_slope))
    self._scale = (as_array(flow_table.scale), as_array(flow_table.scale_slope))
    self.expand_low = as_array(flow_table.expand[0])

  def _at(self, pair, s):
    return hermite(self.log_b, pair[0], pair[1], s)

  def state(self, s: jax.Array, y: jax.Array) -> jax.Array:
    """u = Q(B) y for one example y (n, *data_shape) at s = log B ()."""
    return sde_lib.apply_blocks(self._at(self._expand, s), y[None])[0]

  def time(self, s: jax.Array) -> jax.Array:
    """t at s = log B ()."""
    return sde_lib.time_at_integrated_beta(self.sde, jnp.exp(s))

  def field(self, s: jax.Array, u: jax.Array, score: jax.Array, clip_x0=None) -> jax.Array:
    """dy/ds (n, *data_shape) = -xi B (s + r . u) P e_n for one example u (n, *data_shape) with score (*data_shape).

    With clip_x0 = (low, high), x0_hat = (s + r . u) / c is clipped to it first (the thresholding of the
    posterior-mean samplers, sampling.clip_x0): s + r . u is replaced by c clip(x0_hat)."""
    row = self._at(self._row, s)
    forcing = score + jnp.tensordot(row, u, axes=(0, 0))
    if clip_x0 is not None:
      scale = self._at(self._scale, s)
      low, high = (jnp.asarray(bound, forcing.dtype) for bound in clip_x0)
      forcing = scale * jnp.clip(forcing / scale, low, high)
    column = self._at(self._column, s)
    return (-self.sde.friction * jnp.exp(s)) * column.reshape((-1,) + (1,) * score.ndim) * forcing[None]

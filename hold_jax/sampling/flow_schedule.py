"""The probability-flow ODE in posterior-mean form and the coefficients of its exponential integrators (gDDIM).

Per data coordinate, with the auxiliaries integrated out, p_B(u) = int N(u; m(B) x_0, Sigma(B)) p(x_0) dx_0
(m = Phi[:, 0], Sigma the kernel's covariance given x_0; docs/process.md), so the full score is
-Sigma^{-1} (u - m x0_hat(u)) with x0_hat = E[x_0 | u_B], and the probability-flow ODE du/dB = F u - (1/2)
G G^T grad log p reads

    du/dB = F_hat(B) u + g(B) x0_hat(u),   F_hat = F + (1/2) G G^T Sigma^{-1},   g = -(1/2) G G^T Sigma^{-1} m.

Its linear part has the transition matrix Psi(B', B) = R(B') R(B)^{-1}, where dR/dB = F_hat R keeps
R R^T = Sigma: one square root of Sigma moved by the flow, not the Cholesky factor at each time (Zhang, Tao
and Chen, gDDIM, ICLR 2023). Variation of constants gives the exact step

    u(B') = Psi(B', B) u(B) + int_B^B' Psi(B', tau) g(tau) x0_hat(tau) dtau,

and since Psi(B', tau) g(tau) = d/dtau [Psi(B', tau) m(tau)] (both sides: dm/dB = F m), a constant x0_hat
integrates exactly to m(B') - Psi(B', B) m(B): the first-order step u' = m' x0_hat + Psi (u - m x0_hat), exact
for a point mass. Higher orders extrapolate the last x0_hat values by a polynomial in a time variable v(B) and
integrate its Lagrange basis against Psi(B', tau) g(tau) by quadrature (DPM-Solver++'s multistep scheme, here
for any order of the process).

The stochastic family (gDDIM's lambda): for lambda >= 0 the reverse-time SDEs du = [F u - (1 + lambda^2)/2 G G^T
grad log p] dB + lambda G dW (dB < 0) all have the marginals p_B; lambda = 0 is the probability-flow ODE and
lambda = 1 the reverse SDE. In posterior-mean form F_hat becomes F + (1 + lambda^2) xi e_n r^T, the identity
Psi g = d/dtau [Psi m] still holds (so the first-order step keeps its form and is exact in law for a point
mass), and step k adds Gaussian noise with covariance int Psi(b', tau) lambda^2 G G^T Psi(b', tau)^T dtau.

Numerics, all in float64 on the host when a sampler is traced. Psi is stiff near eps (Sigma^{-1} grows like a
negative power of B), so each step [B', B] is cut into sub-steps uniform in log B, at most `max_log_step`
long; on each, fourth-order Magnus (two Gauss points, one commutator) with a [3/3] Pade exponential. The
quadrature of the multistep weights is Simpson's rule in log B on the same nodes. tests/test_flow_schedule.py
checks R R^T = Sigma, the point-mass identity and the weights against a scipy reference solve.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from hold_jax import field_checks
from hold_jax.process import perturbation_kernel
from hold_jax.process import sde as sde_lib

TIME_VARIABLES = ("b", "log_b", "log_snr")
MAX_MULTISTEP_ORDER = 3
_CHUNK = 2048  # kernel evaluations per compiled call
_MAX_LOG_STEP = 0.0025  # sub-step length in log B: R R^T = Sigma within the tests' tolerance for orders 1-3


@dataclasses.dataclass(frozen=True)
class FlowSchedule:
  """Per-step coefficients of the posterior-mean samplers on a decreasing grid b_0 = B(T) > ... > b_N = B(eps).

  transitions: (N, n, n) Psi(b_{k+1}, b_k).
  weights: (N, p, n) step k's weights of x0_hat_k, x0_hat_{k-1}, ..., x0_hat_{k-p+1}: u_{k+1} = transitions[k]
    u_k + sum_j weights[k, j] x0_hat_{k-j} (entries beyond the order a step uses are zero).
  tweedie_row, tweedie_scale: (N, n) and (N,): r_k (row n of Sigma^{-1}) and c_k = r_k . m_k at b_k, so that
    x0_hat = (s + r_k . u) / c_k for the last-block score s at (u, b_k).
  means: (N + 1, n) m(b_k).
  noise_factors: (N, n, n) a square root of step k's noise covariance, or None when deterministic.
  """

  b: np.ndarray
  transitions: np.ndarray
  weights: np.ndarray
  tweedie_row: np.ndarray
  tweedie_scale: np.ndarray
  means: np.ndarray
  noise_factors: np.ndarray | None = None


def kernel_moments(sde: sde_lib.LangevinSDE, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """m (..., n), r (..., n) = row n of Sigma^{-1}, and the Cholesky factor L (..., n, n) of Sigma at the
  integrated betas b (...), in float64 (from the square-root kernel, never by inverting Sigma itself)."""
  b = np.asarray(b, np.float64)
  with jax.enable_x64(True):
    flat = np.clip(np.asarray(sde_lib.time_at_integrated_beta(sde, jnp.asarray(b, jnp.float64))), 0.0,
                   sde.T).reshape(-1)
  # Chunks of one shape: the kernel is compiled once per process whatever the number of times.
  padded = np.concatenate([flat, np.full(-len(flat) % _CHUNK, sde.T)]).reshape(-1, _CHUNK)
  with jax.enable_x64(True):
    kernel = _jitted_marginal_factor(sde)
    chunks = [kernel(jnp.asarray(chunk, jnp.float64)) for chunk in padded]
    phi = np.concatenate([np.asarray(chunk[0], np.float64) for chunk in chunks])[:len(flat)]
    factor = np.concatenate([np.asarray(chunk[1], np.float64) for chunk in chunks])[:len(flat)]
    phi = phi.reshape(b.shape + phi.shape[1:])
    factor = factor.reshape(b.shape + factor.shape[1:])
  last = np.zeros(b.shape + (sde.order,))
  last[..., -1] = 1.0
  whitened = np.linalg.solve(factor, last[..., None])  # L^{-1} e_n
  row = np.linalg.solve(np.swapaxes(factor, -1, -2), whitened)[..., 0]  # L^{-T} L^{-1} e_n
  return phi[..., 0], row, factor


@functools.lru_cache(maxsize=16)
def _jitted_marginal_factor(sde: sde_lib.LangevinSDE):
  return jax.jit(lambda t: perturbation_kernel.marginal_factor(sde, t))


def flow_matrix(sde: sde_lib.LangevinSDE, row: np.ndarray, scale: float = 1.0) -> np.ndarray:
  """F_hat = F + scale xi e_n r^T (..., n, n) for rows r (..., n) of Sigma^{-1} (G G^T = 2 xi e_n e_n^T);
  scale = 1 + lambda^2 for the stochastic family (module docstring)."""
  drift = np.asarray(sde_lib.drift_matrix(sde, np.float64), np.float64)
  result = np.broadcast_to(drift, row.shape + (sde.order,)).copy()
  result[..., -1, :] += scale * sde.friction * row
  return result


def pade_expm(omega: np.ndarray) -> np.ndarray:
  """expm of small matrices (..., n, n) by the [3/3] Pade approximant (error ~ |omega|^7 / 100800)."""
  eye = np.eye(omega.shape[-1])
  square = omega @ omega
  even = eye + square / 10.0
  odd = omega / 2.0 + omega @ square / 120.0
  return np.linalg.solve(even - odd, even + odd)


def _sub_nodes(b: np.ndarray, max_log_step: float) -> list[np.ndarray]:
  """Per step k, nodes from b_k down to b_{k+1}, uniform in log b, an even number of sub-steps each."""
  nodes = []
  for high, low in zip(b[:-1], b[1:]):
    count = max(2, 2 * math.ceil(math.log(high / low) / (2 * max_log_step)))
    nodes.append(np.exp(np.linspace(math.log(high), math.log(low), count + 1)))
  return nodes


def magnus_exponents(sde: sde_lib.LangevinSDE, nodes: np.ndarray, scale: float = 1.0) -> np.ndarray:
  """Omega_i (M, n, n) with Psi(nodes[i + 1], nodes[i]) = expm(Omega_i) to fourth order (Magnus, two Gauss
  points, one commutator), for consecutive nodes (M + 1,); expm(-Omega_i) is the step back."""
  h = np.diff(nodes)
  middle = 0.5 * (nodes[1:] + nodes[:-1])
  offset = h * math.sqrt(3.0) / 6.0
  _, rows, _ = kernel_moments(sde, np.concatenate([middle - offset, middle + offset]))
  first, second = np.split(flow_matrix(sde, rows, scale), 2)
  return (0.5 * h)[:, None, None] * (first + second) + (math.sqrt(3.0) / 12.0 * h**2)[:, None, None] * (
      second @ first - first @ second)


def _sub_step_transitions(sde: sde_lib.LangevinSDE, nodes: np.ndarray, scale: float = 1.0) -> np.ndarray:
  """Psi(nodes[i + 1], nodes[i]) (M, n, n) for consecutive nodes (M + 1,)."""
  return pade_expm(magnus_exponents(sde, nodes, scale))


def time_variable(sde: sde_lib.LangevinSDE, b: np.ndarray, kind: str) -> np.ndarray:
  """v(b), the variable in which x0_hat is extrapolated: 'b' (integrated beta), 'log_b', or 'log_snr' =
  (1/2) log(m_x^2 / Sigma_xx), the signal-to-noise ratio of the data block (DPM-Solver's lambda for order 1)."""
  b = np.asarray(b, np.float64)
  if kind == "b":
    return b
  if kind == "log_b":
    return np.log(b)
  if kind == "log_snr":
    means, _, factor = kernel_moments(sde, b)
    variance_x = np.sum(factor[..., 0, :] ** 2, axis=-1)
    return 0.5 * np.log(means[..., 0] ** 2 / variance_x)
  raise ValueError(f"sampling.time_variable = {kind!r} is not allowed: it must be one of {TIME_VARIABLES}.")


def _lagrange_basis(nodes: np.ndarray, points: np.ndarray) -> np.ndarray:
  """(len(nodes), len(points)): the Lagrange basis polynomials of `nodes` evaluated at `points`."""
  basis = np.ones((len(nodes), len(points)))
  for j, node in enumerate(nodes):
    for i, other in enumerate(nodes):
      if i != j:
        basis[j] *= (points - other) / (node - other)
  return basis


def _simpson(values: np.ndarray, step: float) -> np.ndarray:
  """Simpson's rule over the first axis (an odd number of equally spaced samples)."""
  weights = np.ones(len(values))
  weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
  return step / 3.0 * np.tensordot(weights, values, axes=(0, 0))


def check_settings(multistep_order: int, variable: str, stochasticity: float) -> None:
  """Raises ValueError naming sampling.multistep_order, sampling.time_variable or sampling.stochasticity."""
  field_checks.require(field_checks.is_int(multistep_order) and 1 <= multistep_order <= MAX_MULTISTEP_ORDER,
                       "sampling.multistep_order", multistep_order,
                       f"an integer from 1 to {MAX_MULTISTEP_ORDER}")
  field_checks.require(variable in TIME_VARIABLES, "sampling.time_variable", variable, f"one of {TIME_VARIABLES}")
  field_checks.require(field_checks.is_finite(stochasticity) and stochasticity >= 0, "sampling.stochasticity",
                       stochasticity, "a finite number >= 0 (0: the probability-flow ODE, 1: the reverse SDE)")


def build(sde: sde_lib.LangevinSDE, times: np.ndarray, multistep_order: int = 1, variable: str = "log_snr",
          max_log_step: float = _MAX_LOG_STEP, stochasticity: float = 0.0) -> FlowSchedule:
  """The FlowSchedule of the decreasing times t_0 = T > ... > t_N = eps (N + 1,).

  Step k uses min(multistep_order, k + 1) values of x0_hat (lower orders in the first steps, where there is no
  history yet). stochasticity = lambda >= 0 (module docstring): 0 the probability-flow ODE, 1 the reverse SDE.
  """
  check_settings(multistep_order, variable, stochasticity)
  scale = 1.0 + stochasticity**2
  times = np.asarray(times, np.float64)
  with jax.enable_x64(True):
    b = np.asarray(sde_lib.integrated_beta(sde, jnp.asarray(times, jnp.float64)), np.float64)
  n, num_steps = sde.order, len(times) - 1
  means, rows, _ = kernel_moments(sde, b)
  nodes_per_step = _sub_nodes(b, max_log_step)
  all_nodes = np.concatenate([nodes[:-1] for nodes in nodes_per_step] + [b[-1:]])
  sub_transitions = _sub_step_transitions(sde, all_nodes, scale)
  node_means, node_rows, _ = kernel_moments(sde, all_nodes)
  node_v = time_variable(sde, all_nodes, variable) if multistep_order > 1 else None
  grid_v = time_variable(sde, b, variable) if multistep_order > 1 else None

  transitions = np.zeros((num_steps, n, n))
  weights = np.zeros((num_steps, multistep_order, n))
  noise_covariances = np.zeros((num_steps, n, n))
  start = 0
  for k, nodes in enumerate(nodes_per_step):
    count = len(nodes) - 1
    # to_end[i] = Psi(b_{k+1}, nodes[i]), built backwards from the step's end.
    to_end = np.empty((count + 1, n, n))
    to_end[count] = np.eye(n)
    for i in range(count - 1, -1, -1):
      to_end[i] = to_end[i + 1] @ sub_transitions[start + i]
    transitions[k] = to_end[0]
    # The first-order weight from the exact identity; it is also the quadrature's sum over the basis.
    weights[k, 0] = means[k + 1] - to_end[0] @ means[k]
    step = math.log(nodes[-1] / nodes[0]) / count  # negative: ds from b_k down to b_{k+1}
    if stochasticity > 0:  # int Psi(b', tau) lambda^2 G G^T Psi(b', tau)^T dtau, in s = log tau
      column = to_end[:, :, -1]
      integrand = (column[:, :, None] * column[:, None, :]) * nodes[:, None, None]
      noise_covariances[k] = 2.0 * sde.friction * stochasticity**2 * _simpson(integrand, -step)
    used = min(multistep_order, k + 1)
    if used > 1:
      span = slice(start, start + count + 1)
      # d/dtau [Psi(b', tau) m(tau)] = Psi(b', tau) g(tau), g = -xi (r . m) e_n; integrated in s = log tau.
      source = -scale * sde.friction * np.sum(node_rows[span] * node_means[span], axis=-1)  # (count + 1,)
      integrand = to_end[:, :, -1] * (source * nodes)[:, None]  # (count + 1, n), times dtau/ds = tau
      basis = _lagrange_basis(grid_v[k + 1 - used:k + 1][::-1], node_v[span])  # (used, count + 1)
      quadrature = np.stack([_simpson(integrand * basis[j][:, None], step) for j in range(used)])
      weights[k, :used] = quadrature
    start += count
  tweedie_scale = np.sum(rows * means, axis=-1)
  noise_factors = None
  if stochasticity > 0:
    symmetric = 0.5 * (noise_covariances + np.swapaxes(noise_covariances, -1, -2))
    values, vectors = np.linalg.eigh(symmetric)  # a square root that tolerates round-off negative eigenvalues
    noise_factors = vectors * np.sqrt(np.maximum(values, 0.0))[:, None, :]
  return FlowSchedule(b=b, transitions=transitions, weights=weights, tweedie_row=rows[:-1],
                      tweedie_scale=tweedie_scale[:-1], means=means, noise_factors=noise_factors)


"""The order-n Langevin process: its parameters, critical damping, matrices, time change and reverse drifts
(docs/process.md; its closed-form perturbation kernel is hold_jax/process/perturbation_kernel.py).

Per data coordinate the state is ``u = (u_0, ..., u_{n-1}) = (x, v, a, ...)``. Every coordinate follows

    du = beta(t) F u dt + sqrt(beta(t)) G dW,   F = -(D + K),   G G^T = diag(0, ..., 0, 2 xi),

with ``K`` skew-symmetric tridiagonal (``F[k, k+1] = w_{k+1} = -F[k+1, k]``) and ``D = diag(0, ..., 0, xi)``.
Order 1 with ``xi = 1/2`` is the VP SDE, order 2 with ``w_1 = 2, xi = 4`` is CLD (M = 1/4, Gamma = 1, velocity
at unit scale), order 3 is HOLD.

State layout: a batch of states is an array of shape ``(batch, n, *data_shape)``; the n x n matrices act on
axis 1 (``apply_blocks``). Every function here is pure: the process is the frozen, hashable record
``LangevinSDE`` (pass it as a static argument or close over it), and times are arrays.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from hold_jax import field_checks

BETA_SCHEDULES = ("constant", "linear")

# The highest sde.order a config may ask for. The closed-form kernel (perturbation_kernel.py) runs in the
# precision of the run, float32 on the command line (the Lie-Trotter and Strang samplers' steps, the likelihood),
# and its factor L_t keeps its accuracy there only up to order 4: from order 5 on, its float32 error against the
# float64 kernel reaches percents at the default sde.eps, and from order 7 on it is NaN
# (tests/test_bad_input_cli.py pins where it breaks). The cost grows with the order as well (2n + 6 Taylor terms,
# n^2 block entries), so a large order would spend minutes in the kernel table before failing.
MAX_ORDER = 4

# ----------------------------------------------------------------------------------------------------------
# Parameters.


def critical_parameters(order: int, first_coupling: float = 1.0) -> tuple[tuple[float, ...], float, float]:
  """Couplings and friction that make every eigenvalue of F equal (critical damping), for any order.

  F is a Schwarz matrix (tridiagonal, zero diagonal but the last entry), so its couplings are read off the
  Routh array of its characteristic polynomial: with leading principal minors f_k = det(lam I - F[:k, :k]),
  f_k = lam f_{k-1} + w_{k-1}^2 f_{k-2} for k < n, and f_n = (lam + xi) f_{n-1} + w_{n-1}^2 f_{n-2}. Since f_k
  has the parity of k for k < n, the part of f_n = (lam + r)^n with the parity of n - 1 is xi f_{n-1}; the
  rest peels off one coupling per step. We solve at r = 1 and rescale so that w_1 = first_coupling.

  Args:
    order: n >= 1.
    first_coupling: w_1 > 0, the scale of the process (ignored for n = 1).

  Returns:
    (couplings w_1..w_{n-1}, friction xi, rate r): the characteristic polynomial of F is (lam + r)^n.
    Order 1 has no coupling to fix the scale; it returns the VP SDE, xi = r = 1/2.
  """
  if order == 1:
    return (), 0.5, 0.5
  n = order
  target = np.array([math.comb(n, k) for k in range(n + 1)], dtype=np.float64)  # (lam + 1)^n, low first

  def parity_part(poly, parity):
    return np.array([c if k % 2 == parity % 2 else 0.0 for k, c in enumerate(poly)])

  def times_lam(poly):
    return np.concatenate([[0.0], poly])

  friction = target[n - 1]
  f_hi = parity_part(target, n - 1)[:n] / friction  # f_{n-1}, monic of degree n - 1
  remainder = (parity_part(target, n) - times_lam(f_hi))[: n - 1]
  squared = [0.0] * (n - 1)
  squared[n - 2] = remainder[n - 2]
  f_lo = remainder / remainder[n - 2]  # f_{n-2}
  for k in range(n - 1, 1, -1):  # w_{k-1}^2 f_{k-2} = f_k - lam f_{k-1}
    remainder = (f_hi - times_lam(f_lo))[: k - 1]
    squared[k - 2] = remainder[k - 2]
    f_hi, f_lo = f_lo, remainder / remainder[k - 2]
  couplings = np.sqrt(np.array(squared))
  scale = first_coupling / couplings[0]
  return tuple(float(w) for w in couplings * scale), float(friction * scale), float(scale)


@dataclasses.dataclass(frozen=True)
class LangevinSDE:
  """Parameters of the order-n Langevin process; hashable, so it can be a static jit argument.

  Attributes:
    couplings: (w_1, ..., w_{n-1}), all > 0; the order is n = len(couplings) + 1.
    friction: xi > 0, friction and noise strength of the last block.
    beta_schedule: 'constant' (beta = beta_0) or 'linear' (beta_0 at t = 0 to beta_1 at t = T).
    beta_0, beta_1: > 0.
    T: end time of the forward process.
    eps: smallest time used for training and the end of sampling, 0 < eps < T.
    init_aux_var: initial variances of the auxiliary blocks u_1..u_{n-1}, each >= 0.
  """

  couplings: tuple[float, ...]
  friction: float
  beta_schedule: str = "constant"
  beta_0: float = 6.5
  beta_1: float = 6.5
  T: float = 1.0
  eps: float = 1e-3
  init_aux_var: tuple[float, ...] = ()

  def __post_init__(self):
    # Positive tests (NaN fails them) of finite numbers: an inf beta or T passes `> 0` and gives a NaN kernel.
    for k, w in enumerate(self.couplings):
      field_checks.require_positive(f"sde.couplings[{k}]", w)
    field_checks.require_positive("sde.friction", self.friction)
    field_checks.require(self.beta_schedule in BETA_SCHEDULES, "sde.beta_schedule", self.beta_schedule,
                         f"one of {BETA_SCHEDULES}")
    for field in ("beta_0", "beta_1", "T"):
      field_checks.require_positive(f"sde.{field}", getattr(self, field))
    field_checks.require(0 < self.eps < self.T, "sde.eps", self.eps, f"a number in (0, sde.T = {self.T})")
    field_checks.require(len(self.init_aux_var) == self.order - 1, "sde.init_aux_var", self.init_aux_var,
                         f"one variance per auxiliary block ({self.order - 1} for order {self.order}) or a single "
                         "float")
    for k, var in enumerate(self.init_aux_var):
      field_checks.require(field_checks.is_finite(var) and var >= 0, f"sde.init_aux_var[{k}]", var,
                           "a finite number >= 0")

  @property
  def order(self) -> int:
    return len(self.couplings) + 1

  @functools.cached_property
  def decay_rate(self) -> float:
    """Slowest decay rate of the mean, -max Re(eig F) (the critical rate r when damped critically)."""
    return float(-np.max(np.linalg.eigvals(drift_matrix(self, np.float64)).real))

  @property
  def integrated_beta_at_T(self) -> float:
    """B(T), on the host."""
    if self.beta_schedule == "constant":
      return self.beta_0 * self.T
    return 0.5 * (self.beta_0 + self.beta_1) * self.T


def from_config(config) -> LangevinSDE:
  """Builds the process from `config.sde` (see configs/default.py).

  `order` selects n. Empty `couplings` and unset `friction` give critical damping with w_1 =
  `coupling_scale`; any positive values are accepted instead.
  """
  order = config.order
  field_checks.require(field_checks.is_int(order) and 1 <= order <= MAX_ORDER, "sde.order", order,
                       f"an integer in [1, {MAX_ORDER}] (sde.MAX_ORDER): from order 5 on, the float32 perturbation "
                       "kernel's factor L_t loses its accuracy at small t (2e-2 off at t = 1e-3 for order 5, "
                       "NaN from order 7)")
  field_checks.require_positive("sde.coupling_scale", config.coupling_scale)
  critical_couplings, critical_friction, _ = critical_parameters(order, float(config.coupling_scale))
  couplings = config.get("couplings") or critical_couplings
  # Numbers, so that float() below cannot fail on a string from a config file with no field named.
  field_checks.require(len(couplings) == order - 1 and all(field_checks.is_number(w) for w in couplings),
                       "sde.couplings", couplings, f"{order - 1} numbers for order {order} (or empty for critical "
                       "damping)")
  friction = config.get("friction")
  friction = critical_friction if friction is None else friction
  field_checks.require(field_checks.is_number(friction), "sde.friction", friction,
                       "a finite number > 0 (or unset for critical damping)")
  aux_var = config.init_aux_var
  if isinstance(aux_var, (int, float)):
    aux_var = (float(aux_var),) * (order - 1)
  return LangevinSDE(
      couplings=tuple(float(w) for w in couplings),
      friction=float(friction),
      beta_schedule=config.beta_schedule,
      beta_0=float(config.beta_0),
      beta_1=float(config.beta_1),
      T=float(config.T),
      eps=float(config.eps),
      init_aux_var=tuple(float(v) for v in aux_var),
  )


# The three processes of the family that the project compares, with the settings its results use: VP on the
# linear schedule of score_sde, CLD at the beta its order needs and HOLD as configs/default.py, each critically
# damped (docs/process.md). A denoiser (loss.parametrization = 'denoiser') samples with any of them.
STOCK_PROCESSES = {
    "vp": dict(order=1, beta_schedule="linear", beta_0=0.1, beta_1=20.0, eps=1e-5),
    "cld": dict(order=2, beta_schedule="constant", beta_0=9.2, beta_1=9.2, eps=1e-3),
    "hold": dict(order=3, beta_schedule="constant", beta_0=6.5, beta_1=6.5, eps=1e-3),
}


def stock_process_fields(name: str) -> dict[str, object]:
  """The flattened config.sde fields ('sde.order': 3, ...) of STOCK_PROCESSES[name], critically damped."""
  field_checks.require(name in STOCK_PROCESSES, "process", name, f"one of {tuple(STOCK_PROCESSES)}")
  return {"sde.couplings": None, "sde.friction": None,
          **{f"sde.{field}": value for field, value in STOCK_PROCESSES[name].items()}}


# ----------------------------------------------------------------------------------------------------------
# The process matrices and the time change.


def drift_matrix(sde: LangevinSDE, dtype=None) -> jax.Array:
  """F = -(D + K), shape (n, n) (docs/process.md)."""
  n = sde.order
  matrix = np.zeros((n, n))
  for k, w in enumerate(sde.couplings):
    matrix[k, k + 1] = w
    matrix[k + 1, k] = -w
  matrix[-1, -1] = -sde.friction
  if dtype is np.float64:
    return matrix
  return jnp.asarray(matrix, dtype=dtype or jnp.result_type(float))


def reverse_linear_matrix(sde: LangevinSDE, dtype=None) -> jax.Array:
  """F_A = S F S with S = diag(1, -1, 1, ...): the linear part of the reverse SDE (docs/samplers.md)."""
  signs = np.array([(-1.0) ** k for k in range(sde.order)])
  matrix = drift_matrix(sde, np.float64) * np.outer(signs, signs)
  return jnp.asarray(matrix, dtype=dtype or jnp.result_type(float))


def noise_variance(sde: LangevinSDE) -> float:
  """2 xi: the only non-zero entry of G G^T, on the last block."""
  return 2.0 * sde.friction


def initial_cov(sde: LangevinSDE, data_var: float = 0.0, dtype=None) -> jax.Array:
  """S_0 = diag(data_var, sigma_1^2, ..., sigma_{n-1}^2), shape (n, n). data_var = 0 conditions on x_0."""
  return jnp.diag(initial_var(sde, data_var, dtype))


def initial_var(sde: LangevinSDE, data_var: float = 0.0, dtype=None) -> jax.Array:
  """Diagonal of `initial_cov`, shape (n,)."""
  return jnp.asarray((data_var,) + sde.init_aux_var, dtype=dtype or jnp.result_type(float))


def beta(sde: LangevinSDE, t: jax.Array) -> jax.Array:
  """beta(t), same shape as t."""
  t = jnp.asarray(t, dtype=jnp.result_type(t, float))
  if sde.beta_schedule == "constant":
    return jnp.full_like(t, sde.beta_0)
  return sde.beta_0 + (sde.beta_1 - sde.beta_0) * t / sde.T


def integrated_beta(sde: LangevinSDE, t: jax.Array) -> jax.Array:
  """B(t) = integral_0^t beta, same shape as t."""
  t = jnp.asarray(t, dtype=jnp.result_type(t, float))
  if sde.beta_schedule == "constant":
    return sde.beta_0 * t
  return sde.beta_0 * t + 0.5 * (sde.beta_1 - sde.beta_0) * t**2 / sde.T


def time_at_integrated_beta(sde: LangevinSDE, integrated: jax.Array) -> jax.Array:
  """The inverse of B: t with B(t) = integrated, same shape (B(t) = beta_0 t + (beta_1 - beta_0) t^2 / 2T).

  The root of the quadratic is taken as 2b / (beta_0 + sqrt(beta_0^2 + 4 a b)), a = (beta_1 - beta_0) / 2T,
  which does not cancel for either sign of a and is b / beta_0 for a constant schedule.
  """
  integrated = jnp.asarray(integrated)
  curvature = 0.5 * (sde.beta_1 - sde.beta_0) / sde.T if sde.beta_schedule == "linear" else 0.0
  return 2.0 * integrated / (sde.beta_0 + jnp.sqrt(sde.beta_0**2 + 4.0 * curvature * integrated))


# ----------------------------------------------------------------------------------------------------------
# States, the prior density and the reverse-time drifts.


def apply_blocks(matrix: jax.Array | np.ndarray, u: jax.Array) -> jax.Array:
  """matrix @ u over the block axis: matrix (m, n) or (batch, m, n), u (batch, n, *data_shape) -> (batch, m, ...).

  Unrolled into m n scaled adds, which XLA fuses into one elementwise pass: an einsum lowers to a dot with an
  n-long contraction, far slower on CPU for these few blocks, and on GPUs its float32 default may round
  through TF32. A static (numpy) matrix is cast to u's dtype (a numpy float64 entry would promote a float32
  state), and its zero entries, e.g. most of the tridiagonal F, are skipped.
  """
  static = isinstance(matrix, np.ndarray)
  if static:
    matrix = matrix.astype(u.dtype)

  def entry(i, j):
    value = matrix[..., i, j]
    return per_example(value, u.ndim - 1) if jnp.ndim(value) else value

  rows = []
  for i in range(matrix.shape[-2]):
    terms = [entry(i, j) * u[:, j] for j in range(u.shape[1]) if not (static and not np.any(matrix[..., i, j]))]
    rows.append(sum(terms[1:], terms[0]) if terms else jnp.zeros_like(u[:, 0]))
  return jnp.stack(rows, axis=1)


def prior_logp(u: jax.Array) -> jax.Array:
  """log N(u; 0, I) per example: u (batch, n, *data_shape) -> (batch,)."""
  flat = u.reshape(u.shape[0], -1)
  return -0.5 * jnp.sum(flat**2, axis=-1) - 0.5 * flat.shape[-1] * jnp.log(2 * jnp.pi)


def reverse_drift(sde: LangevinSDE, u: jax.Array, t: jax.Array, score_last: jax.Array) -> jax.Array:
  """du/ds of the reverse SDE in s = T - t: beta [-F u + 2 xi s_last e_last] (docs/samplers.md).

  u: (batch, n, *data_shape); t: (batch,); score_last: (batch, *data_shape) = grad_{u_{n-1}} log p_t(u).
  """
  return _reverse_drift(sde, u, t, score_last, 2.0)


def probability_flow_drift(sde: LangevinSDE, u: jax.Array, t: jax.Array, score_last: jax.Array
                           ) -> jax.Array:
  """du/ds of the probability-flow ODE in s = T - t: beta [-F u + xi s_last e_last]."""
  return _reverse_drift(sde, u, t, score_last, 1.0)


def reverse_drift_per_beta(sde: LangevinSDE, u: jax.Array, score_last: jax.Array,
                           score_weight: float = 2.0) -> jax.Array:
  """-F u + score_weight xi s_last e_last: the reverse drift per unit of integrated beta (dB = beta ds).

  score_weight is 2 for the reverse SDE and 1 for the probability-flow ODE.
  """
  linear = -apply_blocks(drift_matrix(sde, np.float64), u)  # static: the zeros of F are skipped
  return linear.at[:, -1].add(score_weight * sde.friction * score_last)


def _reverse_drift(sde, u, t, score_last, score_weight):
  return per_example(beta(sde, t), u.ndim) * reverse_drift_per_beta(sde, u, score_last, score_weight)


def per_example(values: jax.Array, ndim: int) -> jax.Array:
  """Reshapes (batch,) values to broadcast against (batch, ...) arrays of rank ndim."""
  return jnp.reshape(values, values.shape + (1,) * (ndim - values.ndim))

"""The posterior-mean form of the probability-flow ODE (hold_jax/sampling/flow_schedule.py), against float64 references
that share none of its numerics: scipy's implicit Radau solves of the same ODEs, and Sigma from the kernel's
covariance (perturbation_kernel.marginal), not from its square-root factor."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate

from hold_jax.process import perturbation_kernel
from hold_jax.process import sde as sde_lib
from hold_jax.sampling import flow_schedule
from hold_jax.sampling import samplers
from test_sde import make_sde

# The schedule is a float64 host computation (flow_schedule switches x64 on itself); the references here are float64
# solves at tolerances float32 cannot reach (Radau at 1e-11 on a float32 field does not finish).
pytestmark = pytest.mark.float64

BETA = {1: 13.0, 2: 9.2, 3: 6.5}


def process(order):
  return make_sde(order, beta_0=BETA[order], beta_1=BETA[order])


def grid(sde, num_steps):
  return np.asarray(samplers.time_grid(sde, num_steps, "quadratic"), np.float64)


@functools.lru_cache(maxsize=None)
def jitted_marginal(sde):
  return jax.jit(lambda t: perturbation_kernel.marginal(sde, t, sde_lib.initial_cov(sde, dtype=jnp.float64))[1])


def covariance(sde, b):
  """Sigma at integrated beta b from perturbation_kernel.marginal (x_0 known, auxiliaries integrated out), float64."""
  return np.asarray(jitted_marginal(sde)(jnp.asarray(b / sde.beta_0, jnp.float64)), np.float64)


def reference_flow(sde, b):
  """F_hat(b) = F + (1/2) G G^T Sigma^{-1}, with Sigma inverted directly."""
  drift = np.asarray(sde_lib.drift_matrix(sde, np.float64))
  inverse = np.linalg.inv(covariance(sde, b))
  return drift + sde.friction * np.outer(np.eye(sde.order)[-1], inverse[-1])


@pytest.mark.parametrize("order", [1, 2, 3])
def test_the_transitions_move_a_square_root_of_sigma(order):
  """R_{k+1} = Psi_k R_k from the Cholesky factor at T keeps R R^T = Sigma along the whole grid (1e-9)."""
  sde = process(order)
  schedule = flow_schedule.build(sde, grid(sde, 20))
  root = np.linalg.cholesky(covariance(sde, schedule.b[0]))
  for k, transition in enumerate(schedule.transitions):
    root = transition @ root
    sigma = covariance(sde, schedule.b[k + 1])
    assert np.abs(root @ root.T - sigma).max() < 1e-9 * np.abs(sigma).max(), k


@pytest.mark.parametrize("order", [2, 3])
def test_a_transition_matches_an_implicit_solve_and_is_not_the_cholesky_ratio(order):
  """Psi(b', b) against Radau on dPsi/dB = F_hat Psi (1e-7), in the stiff last step and a middle one; the
  Cholesky ratio L' L^{-1} of 'ddim' is another matrix (the negative control)."""
  sde = process(order)
  schedule = flow_schedule.build(sde, grid(sde, 10))
  n = order
  for k in (4, 9):
    high, low = schedule.b[k], schedule.b[k + 1]
    solution = scipy.integrate.solve_ivp(
        lambda b, psi: (reference_flow(sde, b) @ psi.reshape(n, n)).ravel(), (high, low), np.eye(n).ravel(),
        method="Radau", rtol=1e-11, atol=1e-13)
    reference = solution.y[:, -1].reshape(n, n)
    np.testing.assert_allclose(schedule.transitions[k], reference, atol=1e-7 * np.abs(reference).max())
    cholesky_ratio = np.linalg.cholesky(covariance(sde, low)) @ np.linalg.inv(
        np.linalg.cholesky(covariance(sde, high)))
    assert np.abs(cholesky_ratio - reference).max() > 1e-2 * np.abs(reference).max()


@pytest.mark.parametrize("order", [1, 3])
@pytest.mark.parametrize("multistep_order", [1, 2, 3])
@pytest.mark.parametrize("variable", flow_schedule.TIME_VARIABLES)
def test_a_step_is_exact_when_x0_hat_is_a_polynomial_of_its_degree(order, multistep_order, variable):
  """du/dB = F_hat u + g x0(B) with x0 a polynomial in v(B) of degree multistep_order - 1 through the values
  at the step's nodes: one multistep step equals an 8th-order Runge-Kutta solution (the weights are exact
  quadratures; a middle step, not stiff)."""
  sde = process(order)
  times = grid(sde, 12)
  schedule = flow_schedule.build(sde, times, multistep_order, variable)
  b = schedule.b
  k = 8  # a step with enough history for every multistep order
  nodes = flow_schedule.time_variable(sde, b[k + 1 - multistep_order:k + 1][::-1], variable)
  values = np.array([0.7, -1.3, 0.4][:multistep_order])  # x0 at b_k, b_{k-1}, ...
  polynomial = np.polyfit(nodes, values, multistep_order - 1)

  def field(beta, u):
    means, rows, _ = flow_schedule.kernel_moments(sde, np.array([beta]))
    x0 = np.polyval(polynomial, flow_schedule.time_variable(sde, np.array([beta]), variable)[0])
    source = -sde.friction * np.sum(rows[0] * means[0]) * np.eye(order)[-1]
    return reference_flow(sde, beta) @ u + source * x0

  start = np.linspace(1.0, -0.5, order)
  solution = scipy.integrate.solve_ivp(field, (b[k], b[k + 1]), start, method="DOP853", rtol=1e-11, atol=1e-13)
  stepped = schedule.transitions[k] @ start + schedule.weights[k, :multistep_order].T @ values
  np.testing.assert_allclose(stepped, solution.y[:, -1], atol=1e-7)


def test_the_weights_of_a_step_sum_to_the_first_order_weight_and_early_steps_use_lower_orders():
  sde = process(3)
  schedule = flow_schedule.build(sde, grid(sde, 20), multistep_order=3)
  first_order = schedule.means[1:] - np.einsum("kij,kj->ki", schedule.transitions, schedule.means[:-1])
  np.testing.assert_allclose(schedule.weights.sum(axis=1), first_order, atol=1e-9 * np.abs(first_order).max())
  assert np.all(schedule.weights[0, 1:] == 0) and np.all(schedule.weights[1, 2] == 0)
  assert np.all(schedule.weights[2:, 2] != 0)


def test_bad_settings_name_the_field():
  sde = process(3)
  with pytest.raises(ValueError, match="sampling.multistep_order"):
    flow_schedule.build(sde, grid(sde, 4), multistep_order=4)
  with pytest.raises(ValueError, match="sampling.time_variable"):
    flow_schedule.build(sde, grid(sde, 4), multistep_order=2, variable="t")


def test_the_sub_step_integrator_is_fourth_order():
  """Halving the sub-steps divides the drift of R R^T from Sigma by ~16 (Magnus with its commutator)."""
  sde = process(3)

  def drift(max_log_step):
    schedule = flow_schedule.build(sde, grid(sde, 10), max_log_step=max_log_step)
    root = np.linalg.cholesky(covariance(sde, schedule.b[0]))
    for transition in schedule.transitions[:5]:
      root = transition @ root
    sigma = covariance(sde, schedule.b[5])
    return np.abs(root @ root.T - sigma).max() / np.abs(sigma).max()

  ratio = drift(0.04) / drift(0.02)
  assert 10 < ratio < 24, ratio

"""The flow coordinates y = Psi(B_ref, B) u: their tables against the kernel, and the adaptive sampler in them
against the same ODE solved in the state."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hold_jax.process import exact_scores
from hold_jax.sampling import adaptive_ode
from hold_jax.sampling import flow_coordinates
from hold_jax.sampling import flow_schedule
from hold_jax.sampling import samplers
from test_sampling import DATA_MEAN, make_process

NUM_PATHS = 32


@pytest.mark.float64  # the float64 tables and their interpolants, to 1e-9
@pytest.mark.parametrize("order", [1, 2, 3])
def test_tables_move_a_square_root_of_sigma_and_interpolate_to_the_kernel(order):
  """Q = Psi(B, B_ref) carries Sigma(B_ref) to Sigma(B) (Q Sigma_ref Q^T = Sigma to 1e-9), P e_n is the last
  column of Q^{-1}, and the Hermite interpolants of r and c = r . m between nodes are the kernel's to 1e-9."""
  sde = make_process(order)
  for segment in range(2):
    table = flow_coordinates.table(sde, segment, 2)
    b = np.exp(table.log_b)
    _, rows, factor = flow_schedule.kernel_moments(sde, b)
    sigma = factor @ np.swapaxes(factor, -1, -2)
    moved = table.expand @ sigma[-1] @ np.swapaxes(table.expand, -1, -2)
    assert np.abs(moved - sigma).max() < 1e-9 * np.abs(sigma).max()
    np.testing.assert_allclose(table.column, np.linalg.inv(table.expand)[:, :, -1], rtol=1e-7,
                               atol=1e-9 * np.abs(table.column).max())
    middles = 0.5 * (table.log_b[1::37] + table.log_b[:-1:37])
    exact_means, exact_rows, _ = flow_schedule.kernel_moments(sde, np.exp(middles))
    for values, slopes, exact in ((table.row, table.row_slope, exact_rows),
                                  (table.scale, table.scale_slope, np.sum(exact_rows * exact_means, axis=-1))):
      interpolated = jax.vmap(lambda s, values=values, slopes=slopes: flow_coordinates.hermite(
          jnp.asarray(table.log_b), jnp.asarray(values), jnp.asarray(slopes), s))(jnp.asarray(middles))
      assert np.abs(np.asarray(interpolated) - exact).max() < 1e-9 * np.abs(exact).max()


@functools.lru_cache(maxsize=None)
def adaptive_paths(order, data_var, variable, tolerance, dtype_name, max_steps=100_000):
  """(x at eps (NUM_PATHS, 2), per-batch NFE) of the adaptive solve in `variable` from the prior draws made in
  float32, for Gaussian data N(DATA_MEAN, data_var) with its exact score. x64 is on for a float64 solve and off
  for a float32 one (as users run), whichever test asks first: the cache serves both."""
  sde = make_process(order)
  score = lambda params, u, t: exact_scores.gaussian_score(sde, u, t, jnp.asarray(DATA_MEAN, u.dtype), data_var)
  with jax.enable_x64(dtype_name == "float64"):
    u = samplers.prior_draws(jax.random.PRNGKey(0), jnp.arange(NUM_PATHS), order, (2,), jnp.float32)
    solve = jax.jit(lambda u: adaptive_ode.solve(
        sde, score, None, u, "tsit5", tolerance, tolerance, max_steps, variable))
    x, nfe = solve(u.astype(jnp.dtype(dtype_name)))
    return np.asarray(x[:, 0], np.float64), int(nfe)


@pytest.mark.float64
@pytest.mark.parametrize("order", [1, 3])
def test_adaptive_solve_in_flow_coordinates_matches_the_solve_in_the_state(order):
  """On broad Gaussian data, float64 at tolerance 1e-9: the two variables give the same samples to 1e-6."""
  in_state, _ = adaptive_paths(order, 0.5, "state", 1e-9, "float64")
  in_flow, _ = adaptive_paths(order, 0.5, "flow", 1e-9, "float64")
  assert np.abs(in_state).max() > 0.5
  np.testing.assert_allclose(in_flow, in_state, atol=1e-6)


@pytest.mark.slow
def test_adaptive_solve_in_flow_coordinates_is_cheap_and_finite_on_near_point_mass_data():
  """Order 3, data variance 1e-8 (far below the noise left at eps), float32 at tolerance 1e-5: in the state the
  stiff linear part makes the solver take ~3000 evaluations and it fails within 400 steps (NaN); in flow
  coordinates it takes a tenth of that, stays finite and lands within 1e-3 of the float64 solution."""
  reference, _ = adaptive_paths(3, 1e-8, "flow", 1e-10, "float64")
  in_flow, flow_nfe = adaptive_paths(3, 1e-8, "flow", 1e-5, "float32", 400)
  in_state, state_nfe = adaptive_paths(3, 1e-8, "state", 1e-5, "float32", 400)
  assert np.isfinite(in_flow).all() and np.abs(in_flow - reference).max() < 1e-3
  assert np.isnan(in_state).any(), state_nfe
  _, state_nfe = adaptive_paths(3, 1e-8, "state", 1e-5, "float32")
  assert flow_nfe * 5 < state_nfe, (flow_nfe, state_nfe)


def test_bad_ode_variables_name_the_field():
  config = sampling_config_with(ode_variable="y")
  with pytest.raises(ValueError, match="sampling.ode_variable"):
    samplers.settings_from_config(make_process(3), config)


def sampling_config_with(**fields):
  from test_sampling import sampling_config  # pylint: disable=import-outside-toplevel
  config = sampling_config("ode_adaptive")
  for key, value in fields.items():
    config[key] = value
  return config

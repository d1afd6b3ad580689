"""The tabulated BCSM kernel (hold_jax/process/kernel_table.py) against the float64 kernel it replaces."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hold_jax.process import kernel_table
from hold_jax.process import perturbation_kernel
from test_sde import PARAMETER_SETS, make_sde


def table_errors(sde, num_points=kernel_table.NUM_POINTS):
  """Worst errors of the float32 table over log-uniform t in [eps, T] plus both ends: (Phi[:, 0], L_t, l_t)."""
  rng = np.random.default_rng(0)
  times = np.concatenate([[sde.eps, sde.T], np.exp(rng.uniform(np.log(sde.eps), np.log(sde.T), 1000))])
  mean_coefficients, factor = kernel_table.bcsm_kernel(sde, jnp.asarray(times, jnp.float32), num_points)
  assert mean_coefficients.dtype == jnp.float32 and factor.shape == (len(times), sde.order, sde.order)
  with jax.enable_x64(True):  # the reference in float64; the table above is read in float32, as users do
    phi, reference = (np.asarray(x) for x in perturbation_kernel.marginal_factor(sde, jnp.asarray(times, jnp.float64)))
  phi = phi[:, :, 0]
  mean_error = np.max(np.abs(mean_coefficients - phi) / np.max(np.abs(phi), axis=-1, keepdims=True))
  row_norm = np.linalg.norm(reference, axis=-1, keepdims=True)
  factor_error = np.max(np.abs(factor - reference) / row_norm)
  scale_error = np.max(np.abs(factor[:, -1, -1] / reference[:, -1, -1] - 1))
  return mean_error, factor_error, scale_error


@pytest.mark.parametrize("name", sorted(PARAMETER_SETS))
def test_float32_table_matches_float64_kernel(name):
  mean_error, factor_error, scale_error = table_errors(make_sde(**PARAMETER_SETS[name]))
  assert mean_error < 3e-5 and factor_error < 1e-5 and scale_error < 1e-6, (mean_error, factor_error, scale_error)


def test_a_coarse_table_is_caught():
  """The check above resolves interpolation error: 64 points are visibly worse than the default."""
  sde = make_sde(**PARAMETER_SETS["n3_critical"])
  assert max(table_errors(sde, num_points=64)) > 1e-4


def test_first_use_inside_jit_and_any_time_shape():
  sde = make_sde(order=3, T=0.75, eps=2e-3)  # another eps and T get their own grid
  t = jnp.asarray([[2e-3, 0.01], [0.3, 0.75]], jnp.float32)
  mean_coefficients, factor = jax.jit(lambda t: kernel_table.bcsm_kernel(sde, t))(t)
  with jax.enable_x64(True):  # the float64 reference
    phi, reference = (np.asarray(x) for x in perturbation_kernel.marginal_factor(sde, np.asarray(t, np.float64)))
  np.testing.assert_allclose(factor, reference, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(mean_coefficients, phi[..., 0], rtol=1e-4, atol=1e-7)


if __name__ == "__main__":  # the table's worst errors per process (kernel_table.py's docstring)
  jax.config.update("jax_enable_x64", True)
  for name in sorted(PARAMETER_SETS):
    print(name, ["%.1e" % e for e in table_errors(make_sde(**PARAMETER_SETS[name]))])

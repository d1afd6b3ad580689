"""The conftest machinery: unmarked tests run in float32 as users do, `float64`-marked ones with x64 on.

A float32-only failure is caught only if the tests really run in float32; these guard that.
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest


def assert_float32_defaults():
  assert not jax.config.jax_enable_x64
  assert jnp.ones(1).dtype == jnp.float32
  assert jnp.asarray(np.ones(1)).dtype == jnp.float32  # numpy float64 input is float32 on the device
  assert jax.random.normal(jax.random.PRNGKey(0), (1,)).dtype == jnp.float32
  assert jnp.arange(3).dtype == jnp.int32


def assert_float64_defaults():
  assert jax.config.jax_enable_x64
  assert jnp.ones(1).dtype == jnp.float64
  assert jnp.asarray(np.ones(1)).dtype == jnp.float64
  assert jax.random.normal(jax.random.PRNGKey(0), (1,)).dtype == jnp.float64


@pytest.fixture
def ones():
  """Built during the test's setup: under the test's precision."""
  return jnp.ones(1)


@pytest.fixture(scope="module")
def module_ones():
  """Module scope: built under the precision of the first test that requests it (a float64 one below)."""
  return jnp.ones(1)


def test_unmarked_tests_run_in_float32(ones):
  assert_float32_defaults()
  assert ones.dtype == jnp.float32


@pytest.mark.float64
def test_marked_tests_run_in_float64_from_their_fixtures_on(ones, module_ones):
  assert_float64_defaults()
  assert ones.dtype == jnp.float64 and module_ones.dtype == jnp.float64


def test_a_test_after_a_float64_test_is_back_in_float32(module_ones):
  assert_float32_defaults()
  assert module_ones.dtype == jnp.float64  # built for the marked test above: why wide fixtures serve one precision


@pytest.mark.float64
def test_a_float64_test_may_switch_x64_off_inside(ones):
  jax.config.update("jax_enable_x64", False)  # left off on purpose: the next test must not see it
  assert jnp.ones(1).dtype == jnp.float32


def test_a_switch_left_on_does_not_reach_the_next_test():
  jax.config.update("jax_enable_x64", True)  # left on on purpose: the next test must not see it
  assert jnp.ones(1).dtype == jnp.float64


def test_the_switch_left_on_above_was_reset():
  assert_float32_defaults()


CONSTANT = np.array([0.5, -0.25, 2.0])  # a module-level numpy constant, as the tests and the library have
JITTED = jax.jit(lambda u: u - CONSTANT)  # and a module-level jitted function closing over it


@pytest.mark.float64
def test_a_numpy_constant_traced_in_float64():
  assert JITTED(jnp.ones((2, 3))).dtype == jnp.float64
  assert jnp.asarray(CONSTANT).dtype == jnp.float64


def test_the_same_constant_is_float32_in_the_next_float32_test():
  """jaxlib keeps the first canonical (float64) copy of CONSTANT while the jitted function above lives; the
  conftest drops JAX's caches on a change of precision, or this trace fails to lower."""
  assert jnp.asarray(CONSTANT).dtype == jnp.float32
  assert JITTED(jnp.ones((2, 3))).dtype == jnp.float32
  assert jax.jit(lambda u: u - CONSTANT)(jnp.ones((2, 3))).dtype == jnp.float32


@pytest.mark.float64
def test_and_float64_again_after_it():
  assert jnp.asarray(CONSTANT).dtype == jnp.float64
  assert JITTED(jnp.ones((2, 3))).dtype == jnp.float64


def test_float64_marker_is_registered(pytestconfig):
  assert any(line.startswith("float64:") for line in pytestconfig.getini("markers"))
  assert any(line.startswith("slow:") for line in pytestconfig.getini("markers"))


def test_subprocesses_run_in_float32():
  """Training runs and commands are subprocesses: nothing in the environment turns x64 on there."""
  assert "JAX_ENABLE_X64" not in os.environ
  result = subprocess.run([sys.executable, "-c", "import jax.numpy as jnp; print(jnp.ones(1).dtype)"],
                          capture_output=True, text=True, timeout=120, check=True)
  assert result.stdout.split()[-1] == "float32"

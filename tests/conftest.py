"""Tests run in the precision users run: float32, jax_enable_x64 off.

A test marked `float64` (it computes a float64 reference, or checks the float64 accuracy of a float64 path)
runs with jax_enable_x64 on, from the setup of its fixtures to their teardown; every other test runs with it
off, whatever the test before it left behind. A fixture of scope wider than the function is built under the
precision of the first test that requests it, so such a fixture serves tests of one precision only (or
builds its arrays under an explicit `jax.enable_x64(...)`). Helpers that cache references across tests
(lru_cache) compute them under `jax.enable_x64(True)` for the same reason. JAX_ENABLE_X64 is removed from the
environment, so that subprocesses (training runs, commands) run in float32 as users run them.
"""
import gc
import os
import socket
import sys
import tempfile
from unittest import mock

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
os.environ.pop("JAX_ENABLE_X64", None)  # read by jax at import, here and in every subprocess
# Pretrained models become workdirs in a cache (hold_jax/pretrained): one per test process, never the user's.
os.environ["HOLD_JAX_CACHE"] = os.path.join(tempfile.mkdtemp(prefix="hold_jax_cache_"))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", False)


_last_precision = [False]  # x64 of the test before


def _switch_precision(x64):
  """Sets jax_enable_x64; on a change of precision also drops JAX's caches.

  jaxlib 0.10 canonicalises a numpy array once per array object, whatever jax_enable_x64 says later, for as
  long as the canonical copy lives (a cached jaxpr or executable keeps it): a module-level numpy constant
  traced in a float64 test stays float64 in the float32 tests after it ('stablehlo.broadcast_in_dim op
  requires compatible element types' at lowering), and the other way round. Clearing the caches and
  collecting lets the next trace canonicalise it afresh (test_precision.py checks this).
  """
  jax.config.update("jax_enable_x64", x64)
  if x64 != _last_precision[0]:
    jax.clear_caches()
    gc.collect()
    _last_precision[0] = x64


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
  """x64 on for a float64-marked test (setup, call and teardown), off for every other; off again afterwards."""
  _switch_precision(item.get_closest_marker("float64") is not None)
  try:
    return (yield)
  finally:
    jax.config.update("jax_enable_x64", False)


@pytest.fixture
def no_network(monkeypatch):
  """Any attempt to open a connection fails the test at once instead of hanging on this offline machine."""
  def refuse(*args, **kwargs):
    raise AssertionError(f"the input pipeline tried the network: {args}")
  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def prepared_mock_tfds(no_network):
  """tfds' mock data (random examples, no files) standing in for a prepared dataset."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  download = mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare",
                               side_effect=AssertionError("the pipeline tried to download"))
  # mock_data leaves is_prepared unpatched (its metadata folder is absent from the wheel): say prepared.
  prepared = mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True)
  with tfds.testing.mock_data(num_examples=20), prepared, download:
    yield


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory):
  """(workdir, config, flat final parameters) of a toy run (configs/toy2d.py:local, synchronous saves) with
  checkpoints at steps 20 and 40, trained once per test process and shared: a test that changes a workdir
  copies this one first."""
  from test_fault_tolerance import flat, local_config  # pylint: disable=g-import-not-at-top
  from hold_jax.training import train  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp("trained")
  config = local_config(num_steps=40, checkpoint_every=20)
  state = train.train(config, str(workdir))
  return workdir, config, flat(state.params)

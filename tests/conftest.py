"""Tests run with float64 available; float32 paths pass float32 arrays explicitly and check the dtype."""
import os
import socket
import sys
from unittest import mock

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)


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

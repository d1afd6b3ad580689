"""Data-parallel generation: sample k depends only on (seed, k), whatever the batch size or device count."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hold_jax import multihost
from hold_jax.sampling import data_parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Draws 10 samples of an untrained toy model (seeded init) in batches of `batch`, on every device there is.
DRAW = """
import sys
import jax
import numpy as np
from hold_jax import models
from hold_jax.process import sde as sde_lib
from hold_jax.sampling import sample_job
from hold_jax.training import optimization, train
from hold_jax.workdir import trained_model
from hold_jax.configs import toy2d
config = toy2d.get_config("local")
config.sampling.num_steps = 8
config.sampling.batch_size = {batch}
model = models.create_model(config.model, (2,))
optimizer = optimization.make_optimizer(config.optim, 10)
state = train.init_state(model, (2,), trained_model.input_blocks(3, config.loss.parametrization), optimizer, config.seed)
samples = sample_job.make_drawer(config, (2,))(state.ema_params, 10)
np.save("{path}", samples)
print(jax.device_count())
"""


def draw(tmp_path, devices, batch):
  path = tmp_path / f"samples_{devices}_{batch}.npy"
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  result = subprocess.run([sys.executable, "-c", textwrap.dedent(DRAW.format(batch=batch, path=path))], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split()[-1] == str(devices)
  return np.load(path)


def test_a_last_batch_is_padded_with_copies_of_its_last_row():
  np.testing.assert_array_equal(multihost.pad_to_multiple(np.arange(5), 4), [0, 1, 2, 3, 4, 4, 4, 4])
  np.testing.assert_array_equal(multihost.pad_to_multiple(np.arange(4), 4), [0, 1, 2, 3])
  images = np.arange(2 * 3 * 3).reshape(2, 3, 3)
  padded = multihost.pad_to_multiple(images, 5)
  assert padded.shape == (5, 3, 3) and (padded[2:] == images[1]).all()
  assert multihost.process_share(5).tolist() == [0, 1, 2, 3, 4]  # one process holds every index
  assert multihost.all_processes(np.array([1, 2])).tolist() == [[1, 2]] and multihost.on_every_process(True)
  assert [list(ids) for ids in data_parallel.id_batches(3, 10, 3)] == [[3, 4, 5], [6, 7, 8], [9]]


@pytest.mark.slow
def test_samples_do_not_depend_on_batch_size_or_device_count(tmp_path):
  one_device = draw(tmp_path, 1, 10)
  four_devices = draw(tmp_path, 4, 6)  # batches of 6 and 4 ids, each padded to a multiple of 4 devices
  assert one_device.shape == (10, 2) and np.isfinite(one_device).all()
  assert len(np.unique(one_device[:, 0])) == 10  # ten different samples
  # In float32, as users sample: XLA sums the network's matmuls in an order that depends on the batch shape, so
  # a sample moves by round-off (1.2e-6 measured; a few 2^-24 per layer over 8 steps, on samples of order 1).
  # A sample that depended on its batch position or on the device count would be O(1) off.
  assert one_device.dtype == np.float32
  np.testing.assert_allclose(four_devices, one_device, rtol=0, atol=1e-5 * max(1.0, np.abs(one_device).max()))

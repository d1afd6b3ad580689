"""Inputs whose size or shape cannot hold are refused before any compute, in one line naming the field or file
and the fix: batches and sample counts that cannot fit in memory (hold_jax/memory_budget.py), .npy point
clouds whose header claims other data than the file holds (input_pipeline.load_point_cloud), and FID
statistics whose sigma is not a covariance (statistics.check_covariance)."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hold_jax import fid
from hold_jax import memory_budget
from hold_jax.configs import toy2d
from hold_jax.data import input_pipeline
from hold_jax.evaluation import reference_stats
from hold_jax.evaluation import statistics
from hold_jax.sampling import sample_job
from hold_jax.training import train

GIB = 2**30
MESSAGE = re.compile(r"(?P<subject>.+) needs about (?P<need>[\d.]+) (?P<unit>GiB|MiB)(?P<what>.*) on (?P<where>.+), "
                     r"which has (?P<free>[\d.]+) (GiB|MiB) available: at most ~(?P<fits>[\d,]+) fits; "
                     r"lower (?P<field>[\w.]+)\.$")


def refusal(call, *args, **kwargs) -> re.Match:
  """The parsed one-line ValueError of call(*args, **kwargs)."""
  with pytest.raises(ValueError) as info:
    call(*args, **kwargs)
  match = MESSAGE.match(str(info.value))
  assert match and "\n" not in str(info.value), str(info.value)
  return match


def fits(match: re.Match) -> int:
  return int(match["fits"].replace(",", ""))


# ----------------------------------------------------------------------------------------------------------
# Memory: the estimate from shapes, XLA's count, and a failed allocation.


HOST_CPU = memory_budget.Pool("cpu:0 (host memory)", int(3.1 * GIB), on_host=True)  # batches in host memory
HOST = memory_budget.Pool("the host", int(3.1 * GIB), on_host=True)


def test_a_batch_that_cannot_fit_is_refused_with_the_count_that_fits():
  # u (batch, 3, 2) float32 held three times and the output x: (3 * 3 + 1) * 2 * 4 = 80 bytes a sample.
  match = refusal(memory_budget.sampling_check, 10**8, 10**8, 3, (2,), HOST_CPU, HOST)
  assert match["subject"] == "sampling.batch_size = 100000000" and match["field"] == "sampling.batch_size"
  assert match["what"] == " per batch" and match["where"] == "cpu:0 (host memory)" and match["free"] == "3.1"
  assert float(match["need"]) == pytest.approx(10**8 * 80 / GIB, abs=0.05)
  assert 10**8 * 80 > HOST_CPU.free >= fits(match) * 80 > 0.95 * HOST_CPU.free  # two digits, rounded down
  memory_budget.sampling_check(fits(match), fits(match), 3, (2,), HOST_CPU, None)  # what it says fits, fits
  # A batch never holds more than num_samples: the same batch_size passes for a few samples.
  memory_budget.sampling_check(1000, 10**8, 3, (2,), HOST_CPU, HOST)
  # The samples, 3 copies of 8 bytes each, share the host's memory with the batch (80 MB) on CPU devices.
  match = refusal(memory_budget.sampling_check, 2 * 10**8, 10**6, 3, (2,), HOST_CPU, HOST)
  assert match["subject"] == "sampling.num_samples = 200000000" and match["field"] == "sampling.num_samples"
  assert match["what"] == " for the samples and one batch" and match["where"] == "the host"
  assert fits(match) == 130_000_000  # (3.1 GiB - 80 MB) / 24 = 135,358,319


def test_the_samples_are_checked_on_the_host_and_a_batch_on_its_device():
  gpu = memory_budget.Pool("cuda:0", 1 * GIB, share=1 / 8)  # one of 8 accelerators holds 1/8 of a batch
  memory_budget.sampling_check(10**7, 10**7, 3, (2,), gpu, HOST)  # 800 MB a batch, 100 MB on each device
  match = refusal(memory_budget.sampling_check, 10**9, 2 * 10**8, 3, (2,), gpu, HOST)
  assert match["field"] == "sampling.batch_size" and match["where"] == "cuda:0"
  assert fits(match) == 100_000_000  # per device 80 / 8 bytes a sample: 1 GiB / 10 = 107,374,182
  # The samples: 3 copies of (N, 32, 32, 3) float32 on the host, 36 KiB a sample.
  match = refusal(memory_budget.sampling_check, 10**5, 100, 3, (32, 32, 3), gpu, HOST)
  assert match["subject"] == "sampling.num_samples = 100000" and match["where"] == "the host"
  assert match["what"] == " for the samples" and fits(match) == 90_000  # 3.1 GiB / 36 KiB = 90,294


def test_xla_counts_what_shapes_alone_cannot():
  # The toy sampler's XLA count: 544 bytes a sample (the score MLP's activations), 54.4 GB for 10^8.
  match = refusal(memory_budget.compiled_check, 54_400_001_232, "sampling.batch_size", 10**8, 10**8, HOST_CPU,
                  subject="sampling.batch_size: a batch of 100,000,000 samples")
  assert match["subject"] == "sampling.batch_size: a batch of 100,000,000 samples"
  assert match["need"] == "50.7" and fits(match) == 6_100_000 and "XLA's count" in match["what"]
  # Two of 8 CPU devices in this process (share 2/8) hold two per-device programs in the host's memory.
  two_cpus = memory_budget.Pool("cpu:0 (host memory)", int(3.1 * GIB), share=2 / jax.device_count(), on_host=True)
  match = refusal(memory_budget.compiled_check, 2 * GIB, "training.batch_size", 1000, 1000, two_cpus)
  assert match["need"] == "4.0" and fits(match) == 770


def test_a_compiled_program_that_cannot_fit_is_refused_and_its_compilation_reused(monkeypatch):
  double = jax.jit(lambda x: jnp.sin(x) * 2.0)
  x = jnp.ones((1000, 256), jnp.float32)  # 1 MB: its output and temporaries, about 1 MB
  monkeypatch.setattr(memory_budget, "host_available_bytes", lambda: 64 * 2**10)
  if memory_budget.device_pool() is None or memory_budget.device_pool().free != 64 * 2**10:
    pytest.skip("the devices here have memory of their own")
  match = refusal(memory_budget.check_compiled, double, (x,), "sampling.batch_size", 1000)
  assert match["field"] == "sampling.batch_size" and fits(match) == 64  # 1 KiB a row
  monkeypatch.setattr(memory_budget, "host_available_bytes", lambda: 64 * 2**20)
  compiles = []

  def listener(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(duration)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    memory_budget.check_compiled(double, (x,), "sampling.batch_size", 1000)
    double(x).block_until_ready()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert not compiles  # the refused check compiled it once; neither the check nor the call compiles again


def test_a_failed_allocation_becomes_one_line_naming_the_field():
  subject = "sampling.batch_size: a batch of 100,000,000 samples"
  with pytest.raises(ValueError) as info:
    with memory_budget.out_of_memory_named("sampling.batch_size", subject):
      raise jax.errors.JaxRuntimeError("INTERNAL: Error dispatching computation: Out of memory allocating "
                                       "54400001232 bytes.\nmore lines")
  assert str(info.value) == (f"{subject} ran out of memory (Out of memory allocating 54400001232 bytes.); lower "
                             "sampling.batch_size.")
  with pytest.raises(jax.errors.JaxRuntimeError, match="INVALID_ARGUMENT"):  # other runtime errors pass through
    with memory_budget.out_of_memory_named("sampling.batch_size", subject):
      raise jax.errors.JaxRuntimeError("INVALID_ARGUMENT: something else")


def test_impossible_counts_are_refused_by_the_jobs_before_any_compute(tmp_path, monkeypatch):
  config = toy2d.get_config("local")
  config.sampling.num_samples = config.sampling.batch_size = 10**12  # 80 TB a batch: refused before reading
  match = refusal(sample_job.sample_to_disk, config, str(tmp_path / "no_checkpoint_here"))
  assert match["field"] == "sampling.batch_size"
  # Training: XLA's count of the compiled step against (pretended) 1 MiB, before the first step.
  monkeypatch.setattr(memory_budget, "host_available_bytes", lambda: 2**20)
  if memory_budget.device_pool().free != 2**20:
    pytest.skip("the devices here have memory of their own")
  config = toy2d.get_config("local")
  config.training.batch_size = 4096
  match = refusal(train.train, config, str(tmp_path / "run"))
  assert match["subject"] == "training.batch_size = 4096" and "train step" in match["what"]
  assert 0 < fits(match) < 4096
  assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


def test_real_memory_lets_ordinary_counts_through():
  assert memory_budget.host_available_bytes() > 0
  memory_budget.check_sampling(10_000, 10_000, 3, (2,))
  memory_budget.check_sampling(1024, 256, 3, (32, 32, 3))


# ----------------------------------------------------------------------------------------------------------
# .npy point clouds: the header against the file.


def edit_rows(path, rows):
  """Rewrites the shape in the header of the (100, 2) .npy at `path` to (rows, 2), keeping its length."""
  data = path.read_bytes()
  length = int.from_bytes(data[8:10], "little")
  header = data[10:10 + length].decode("latin1").replace("(100, 2)", f"({rows}, 2)").rstrip()
  path.write_bytes(data[:10] + (header.ljust(length - 1) + "\n").encode("latin1") + data[10 + length:])


@pytest.fixture
def no_np_load(monkeypatch):
  """np.load fails the test: every refusal below happens from the header, before the data is read."""
  def refuse(*args, **kwargs):
    raise AssertionError("load_point_cloud read the data of a file it should have refused from its header")
  monkeypatch.setattr(np, "load", refuse)


@pytest.mark.parametrize("rows", [1000, 10**12])
def test_a_header_that_claims_more_rows_than_the_file_holds_is_named(tmp_path, no_np_load, rows):
  path = tmp_path / "cloud.npy"
  np.save(path, np.zeros((100, 2)))
  edit_rows(path, rows)
  with pytest.raises(ValueError) as info:
    input_pipeline.load_point_cloud(str(path))
  message = str(info.value)  # today: np.load's reshape error, or a MemoryError for 15 TiB
  assert message.startswith(f"data.dataset = 'npy:{path}' could not be read as a .npy array: its header claims "
                            f"shape ({rows}, 2) of float64, {rows * 16:,} bytes, but the file holds 1,600 bytes "
                            "after its 128-byte header"), message
  assert "numpy.save" in message and "\n" not in message


def test_data_past_the_array_and_unloadable_layouts_are_named_from_the_header(tmp_path, no_np_load):
  doubled = tmp_path / "two_arrays.npy"
  with open(doubled, "wb") as file:  # two arrays saved into one file: numpy would read the first alone
    np.save(file, np.zeros((100, 2)))
    np.save(file, np.ones((100, 2)))
  with pytest.raises(ValueError, match=r"holds 1,728 bytes more than the array of shape \(100, 2\)"):
    input_pipeline.load_point_cloud(str(doubled))
  strings = tmp_path / "strings.npy"
  np.save(strings, np.array([["a", "b"], ["c", "d"]]))
  with pytest.raises(ValueError, match="holds dtype <U1; it must be numeric"):
    input_pipeline.load_point_cloud(str(strings))
  flat = tmp_path / "flat.npy"
  np.save(flat, np.zeros(10))
  with pytest.raises(ValueError, match=r"shape \(10,\); it must be \(N, D\)"):
    input_pipeline.load_point_cloud(str(flat))
  version3 = tmp_path / "version3.npy"
  with open(version3, "wb") as file:
    np.lib.format.write_array(file, np.zeros((100, 2)), version=(3, 0))
  with pytest.raises(ValueError, match="format version 3.0"):
    input_pipeline.load_point_cloud(str(version3))


def test_a_good_point_cloud_still_loads(tmp_path):
  path = tmp_path / "cloud.npy"
  np.save(path, np.arange(200, dtype=np.float64).reshape(100, 2))
  points = input_pipeline.load_point_cloud(str(path))
  assert points.dtype == np.float32 and points.shape == (100, 2) and points[99, 1] == 199


# ----------------------------------------------------------------------------------------------------------
# FID statistics: sigma must be a covariance.


def features(n, d=64, seed=0):
  """Inception-like features (n, d): non-negative, correlated, with a mean of the size of their spread."""
  rng = np.random.default_rng(seed)
  return np.maximum(rng.standard_normal((n, 8)) @ rng.standard_normal((8, d)) + 0.3, 0.0)


def not_psd(d=64):
  """A symmetric (d, d) matrix that is a real covariance with its smallest direction flipped to -1% of the
  largest eigenvalue: FID of it is a number today."""
  w, v = np.linalg.eigh(np.cov(features(500, d), rowvar=False))
  w[0] = -0.01 * w[-1]
  return (v * w) @ v.T


def test_covariances_of_fewer_samples_than_dimensions_pass():
  few = features(20, 64)  # rank 8 at most: 56 eigenvalues are 0 up to rounding, some of them negative
  stats = statistics.FeatureStats().add(few)
  for sigma in (np.cov(few, rowvar=False), stats.covariance(),
                np.cov(few, rowvar=False).astype(np.float32).astype(np.float64)):  # stored in float32
    assert np.linalg.eigvalsh(sigma)[0] <= 0
    statistics.check_gaussian(few.mean(0), sigma, "rank-deficient statistics")
  assert np.isfinite(statistics.frechet_distance(stats.mean(), stats.covariance(), few.mean(0) + 1,
                                                 np.cov(few, rowvar=False)))
  statistics.check_covariance(np.zeros((4, 4)), "features that never vary")


def test_a_sigma_that_is_not_a_covariance_is_refused_everywhere_it_enters(tmp_path, capsys):
  sigma, mu = not_psd(), np.zeros(64)
  good = np.cov(features(500), rowvar=False)
  for first, second, what in ((sigma, good, "first statistics"), (good, sigma, "second statistics")):
    with pytest.raises(ValueError, match=rf"^{what}: sigma is not a covariance: it has the eigenvalue -"):
      statistics.frechet_distance(mu, first, mu, second)
  path = tmp_path / "reference.npz"
  np.savez(path, mu=mu, sigma=sigma)
  with pytest.raises(ValueError) as info:
    reference_stats.load_user_stats(path)
  message = str(info.value)
  assert message.startswith(f"{path}: sigma is not a covariance") and "numpy.cov(features, rowvar=False)" in message
  np.savez(tmp_path / "ours.npz", mu=mu, sigma=sigma, n=np.asarray(500))
  with pytest.raises(ValueError, match="ours.npz: sigma is not a covariance"):
    statistics.FeatureStats.from_npz(tmp_path / "ours.npz")
  pixels = np.random.default_rng(0).integers(0, 256, size=(20, 8, 8, 3), dtype=np.uint8)
  np.savez(tmp_path / "samples.npz", pixels=pixels)
  assert fid.main([str(tmp_path / "samples.npz"), str(path)], network=object()) == 1  # before any network work
  err = capsys.readouterr().err
  assert err.startswith(f"hold_jax.fid: error: {path}: sigma is not a covariance") and err.count("\n") == 1, err


def test_a_sigma_that_is_not_symmetric_is_refused_and_rounding_is_not():
  sigma = np.cov(features(500), rowvar=False)
  lopsided = sigma.copy()
  lopsided[3, 5] += 0.1 * np.abs(sigma).max()
  with pytest.raises(ValueError, match=r"sigma is not symmetric \(sigma\[3, 5\] = .* but sigma\[5, 3\] = "):
    statistics.check_gaussian(np.zeros(64), lopsided, "statistics.npz")
  nearly = sigma.copy()
  nearly[3, 5] *= 1 + 1e-9
  w, v = np.linalg.eigh(sigma)
  rounded = (v * np.maximum(w, 0.0)) @ v.T - 1e-9 * w[-1] * np.outer(v[:, 0], v[:, 0])  # -1e-9 of the largest
  for ok in (nearly, rounded):
    statistics.check_gaussian(np.zeros(64), ok, "statistics.npz")

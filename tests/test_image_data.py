"""Image input pipelines: pixel scaling, resizing, the seeded digits / tfds streams, and prefetching."""
import importlib
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hold_jax.configs import celebahq256
from hold_jax.configs import cifar10
from hold_jax.configs import digits
from hold_jax.data import image_data
from hold_jax.data import image_sources
from hold_jax.data import input_pipeline
from hold_jax.training import prefetch

DIGIT_LEVELS = 17


@pytest.fixture(scope="module")
def original_digits():
  """All 1,797 digits as stored: (1797, 8, 8, 1) uint8 levels 0..16."""
  return image_sources.digits_part("train", 0, 1)


def digits_data(**overrides):
  data = digits.get_config().data
  for name, value in overrides.items():
    data[name] = value
  return data


def as_levels(batch: np.ndarray, num_levels: int) -> np.ndarray:
  """Undoes to_model_space without noise: float batch -> integer levels (asserting it is on the grid)."""
  levels = (batch.astype(np.float64) + 1) / 2 * (num_levels - 1)
  np.testing.assert_allclose(levels, np.rint(levels), atol=1e-4)
  return np.rint(levels).astype(np.uint8)


def sorted_rows(images: np.ndarray) -> np.ndarray:
  """Images as rows of a matrix in lexicographic order: equal results <=> equal multisets of images."""
  rows = images.reshape(len(images), -1)
  return rows[np.lexsort(rows.T[::-1])]


def test_pixels_round_trip_is_exact_for_every_uint8_level():
  levels = np.arange(256, dtype=np.uint8).reshape(4, 8, 8, 1)
  model = image_data.to_model_space(levels)
  assert model.dtype == np.float32 and model.min() == -1.0 and model.max() == 1.0
  np.testing.assert_array_equal(image_data.to_pixels(model), levels)
  np.testing.assert_array_equal(image_data.to_pixels(jnp.asarray(model)), levels)
  np.testing.assert_array_equal(image_data.to_pixels(np.array([-1.7, -1.0, 1.0, 3.0])), [0, 0, 255, 255])


def test_resize_keeps_constants_and_matches_jax_linear_antialiased():
  constant = np.full((2, 8, 8, 1), 7, np.uint8)
  for size in (16, 5, 8):
    resized = image_data.resize_levels(constant, size, DIGIT_LEVELS)
    assert resized.shape == (2, size, size, 1) and resized.dtype == np.uint8
    np.testing.assert_array_equal(resized, 7)
  images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype(np.float32)
  for size in (64, 12):
    expected = jax.image.resize(jnp.asarray(images), (3, size, size, 3), "linear", antialias=True)
    np.testing.assert_allclose(image_data.resize(images, size), np.asarray(expected), atol=1e-3)


def smooth_1_6_1(images: np.ndarray, axis: int) -> np.ndarray:
  """images convolved with (1/8, 3/4, 1/8) along axis, edges repeated."""
  padded = np.concatenate([np.take(images, [0], axis), images, np.take(images, [-1], axis)], axis)
  size = images.shape[axis]
  neighbour = lambda shift: np.take(padded, np.arange(shift, shift + size), axis)
  return neighbour(0) / 8 + 0.75 * neighbour(1) + neighbour(2) / 8


def test_digits_at_16x16_average_back_to_the_originals(original_digits):
  upsampled = input_pipeline.create_stream(digits_data(image_size=16), 64, 0).images
  assert upsampled.shape == (1797, 16, 16, 1) and upsampled.dtype == np.uint8 and upsampled.max() <= 16
  pooled = upsampled.astype(np.float64).reshape(1797, 8, 2, 8, 2, 1).mean(axis=(2, 4))
  # Linear 2x upsampling samples at i/2 - 1/4, so 2x2 pooling gives back the original smoothed by
  # (1/8, 3/4, 1/8) along each axis; rounding to the 17 levels moves each value by at most 1/2.
  originals = original_digits.astype(np.float64)
  np.testing.assert_array_less(np.abs(pooled - smooth_1_6_1(smooth_1_6_1(originals, 1), 2)), 0.5 + 1e-9)
  assert np.abs(pooled - originals).mean() < 1.25  # of 16: the strokes stay where they were
  kept = input_pipeline.create_stream(digits_data(image_size=8), 64, 0).images
  np.testing.assert_array_equal(kept, original_digits)


def test_digits_batches_are_functions_of_seed_step_and_process():
  random = digits_data(image_size=16, random_flip=True, dequantize=True)  # the per-step draws matter too
  first = input_pipeline.create_stream(random, 64, 3)
  again = input_pipeline.create_stream(random, 64, 3)  # as after a restart
  assert first.data_shape == (16, 16, 1)
  batch = first.local_batch(5)
  assert batch.shape == (64, 16, 16, 1) and batch.dtype == np.float32
  assert batch.min() >= -1.0 and batch.max() <= 1.0 and batch.min() < 0 < batch.max()
  np.testing.assert_array_equal(batch, again.local_batch(5))
  assert not np.array_equal(batch, first.local_batch(6))
  other_seed = input_pipeline.create_stream(random, 64, 4)
  assert not np.array_equal(batch, other_seed.local_batch(5))


def test_each_epoch_visits_every_image_exactly_once():
  stream = input_pipeline.create_stream(digits_data(), 64, 0)
  size = len(stream.images)
  steps = -(-2 * size // 64)  # the second epoch starts inside a batch (1797 = 28 * 64 + 5)
  seen = as_levels(np.concatenate([stream.local_batch(step) for step in range(steps)]), DIGIT_LEVELS)
  for epoch in (seen[:size], seen[size:2 * size]):
    np.testing.assert_array_equal(sorted_rows(epoch), sorted_rows(stream.images))
  assert not np.array_equal(seen[:size], seen[size:2 * size])  # reshuffled every epoch


def test_two_processes_read_disjoint_parts(original_digits):
  data = digits_data(image_size=8)
  parts = [image_data.create_image_stream(data, 64, 0, process_index=index, process_count=2) for index in (0, 1)]
  assert [len(part.images) for part in parts] == [899, 898] and parts[0].local_batch_size == 32
  np.testing.assert_array_equal(np.concatenate([part.images for part in parts]), original_digits)
  for part in parts:
    own = {image.tobytes() for image in part.images}
    batch = as_levels(part.local_batch(0), DIGIT_LEVELS)
    assert batch.shape == (32, 8, 8, 1) and all(image.tobytes() in own for image in batch)
  assert not np.array_equal(parts[0].local_batch(0), parts[1].local_batch(0))


def test_dequantisation_is_uniform_on_each_level_bin():
  plain = input_pipeline.create_stream(digits_data(), 64, 1)
  noisy = input_pipeline.create_stream(digits_data(dequantize=True), 64, 1)
  levels = np.concatenate([as_levels(plain.local_batch(step), DIGIT_LEVELS) for step in range(30)]).ravel()
  values = np.concatenate([noisy.local_batch(step) for step in range(30)]).ravel().astype(np.float64)
  assert values.min() >= -1.0 and values.max() <= 1.0
  lower, width = 2 * levels / DIGIT_LEVELS - 1, 2 / DIGIT_LEVELS
  assert np.all(values >= lower - 1e-6) and np.all(values <= lower + width + 1e-6)  # inside the level's bin
  noise = ((values + 1) / width - levels).reshape(30, -1)  # the U[0, 1) draw of each pixel
  assert not np.allclose(noise[0], noise[1], atol=1e-4)  # fresh noise every step
  for level in range(DIGIT_LEVELS):
    in_level = values[levels == level]
    assert len(in_level) > 500, level
    np.testing.assert_allclose(in_level.mean(), 2 * (level + 0.5) / DIGIT_LEVELS - 1, atol=0.01)
  # 8-bit images: (pixel + U) / 256 averages to the bin centre (pixel + 1/2) / 256, in [-1, 1].
  pixels = np.repeat(np.array([0, 100, 255], np.uint8), 20000).reshape(3, -1)
  noise = np.random.default_rng(0).random(pixels.shape)
  dequantised = image_data.to_model_space(pixels, 256, noise)
  assert dequantised.min() >= -1.0 and dequantised.max() <= 1.0
  np.testing.assert_allclose(dequantised.mean(axis=1), 2 * (np.array([0, 100, 255]) + 0.5) / 256 - 1, atol=2e-4)


def test_random_flip_mirrors_about_half_and_off_mirrors_none():
  plain = input_pipeline.create_stream(digits_data(), 64, 2)
  flipping = input_pipeline.create_stream(digits_data(random_flip=True), 64, 2)
  flipped = symmetric = 0
  for step in range(10):
    original = plain.local_batch(step)
    indices = image_data.example_indices(2, 0, len(plain.images), step * 64, 64)
    np.testing.assert_array_equal(original, image_data.to_model_space(plain.images[indices], DIGIT_LEVELS))
    for image, reference in zip(flipping.local_batch(step), original):
      mirrored = reference[:, ::-1]
      symmetric += np.array_equal(reference, mirrored)
      is_mirrored = np.array_equal(image, mirrored) and not np.array_equal(reference, mirrored)
      assert is_mirrored or np.array_equal(image, reference)
      flipped += is_mirrored
  assert 0.4 < flipped / (640 - symmetric) < 0.6, flipped


def test_cifar10_local_config_streams_mocked_tfds(prepared_mock_tfds):
  data = cifar10.get_config("local").data
  stream = input_pipeline.create_stream(data, 8, 0)
  assert stream.images.shape == (20, 32, 32, 3) and stream.data_shape == (32, 32, 3)
  batch = stream.local_batch(3)
  assert batch.shape == (8, 32, 32, 3) and batch.dtype == np.float32
  assert batch.min() >= -1.0 and batch.max() <= 1.0 and batch.std() > 0.3
  as_levels(batch, 256)  # on the 8-bit grid: not dequantised by default
  assert len({image.tobytes() for image in batch}) == 8  # 8 different mock examples
  data.image_size = 16
  small = input_pipeline.create_stream(data, 8, 0)
  assert small.local_batch(0).shape == (8, 16, 16, 3)


def test_missing_tfds_data_fails_fast_naming_the_folder_and_the_fix(tmp_path, no_network):
  importlib.import_module("tensorflow_datasets")  # loaded beforehand: time the check, not the import
  data = cifar10.get_config("local").data
  data.data_dir = str(tmp_path)
  start = time.perf_counter()
  with pytest.raises(FileNotFoundError) as raised:
    input_pipeline.create_stream(data, 8, 0)
  assert time.perf_counter() - start < 5.0
  message = str(raised.value)
  for part in ("config.data.data_dir", str(tmp_path), "config.data.dataset = 'cifar10'", "download_and_prepare()",
               "tfds build cifar10 --data_dir DIR"):
    assert part in message, part
  data = celebahq256.get_config("local").data
  data.data_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match="manual download"):
    input_pipeline.create_stream(data, 8, 0)


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match="data.num_channels = 3.*1 channel"):
    input_pipeline.create_stream(digits_data(num_channels=3), 64, 0)
  with pytest.raises(ValueError, match="'digits'"):
    input_pipeline.create_stream(digits_data(dataset="mnist"), 64, 0)
  with pytest.raises(ValueError, match="data.split = 'test'"):
    input_pipeline.create_stream(digits_data(split="test"), 64, 0)


def one_device_batch_sharding() -> NamedSharding:
  return NamedSharding(Mesh(np.array(jax.devices()[:1]), ("data",)), PartitionSpec("data"))


def prefetch_threads() -> list:
  return [thread for thread in threading.enumerate() if thread.name.startswith("prefetch_local_batches")]


def test_prefetch_yields_the_direct_batches_in_order():
  sharding = one_device_batch_sharding()
  streams = [input_pipeline.PointStream("checkerboard", 16, 0),
             input_pipeline.create_stream(digits_data(random_flip=True, dequantize=True), 16, 0)]
  for stream in streams:
    global_shape = (16,) + stream.data_shape
    yielded = list(prefetch.prefetch_global_batches(stream, 5, 12, sharding, global_shape, buffer_size=2))
    assert [step for step, _ in yielded] == list(range(5, 12))
    for step, array in yielded:
      assert array.shape == global_shape and array.sharding == sharding and array.dtype == np.float32
      np.testing.assert_array_equal(np.asarray(array), stream.local_batch(step))
  assert not prefetch_threads()


class _FailingStream:
  """Steps below 3 give zeros; step 3 raises."""

  def local_batch(self, step):
    if step == 3:
      raise RuntimeError("broken batch 3")
    return np.zeros((4, 2), np.float32)


def test_prefetch_thread_stops_on_early_exit_and_errors_reach_the_loop():
  sharding = one_device_batch_sharding()
  stream = input_pipeline.PointStream("gaussian_mixture", 4, 0)
  batches = prefetch.prefetch_global_batches(stream, 0, 10**9, sharding, (4, 2), buffer_size=1)
  for step, _ in batches:
    if step == 2:
      break
  time.sleep(0.2)  # the producer is now blocked on the full queue
  start = time.perf_counter()
  batches.close()
  assert time.perf_counter() - start < 2.0 and not prefetch_threads()
  steps = []
  with pytest.raises(RuntimeError, match="broken batch 3"):
    for step, _ in prefetch.prefetch_global_batches(_FailingStream(), 0, 10, sharding, (4, 2)):
      steps.append(step)
  assert steps == [0, 1, 2] and not prefetch_threads()

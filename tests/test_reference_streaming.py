"""Reference statistics (hold_jax/evaluation/image_features.py): the cache key is counted from the split's metadata, a
cached entry is read without the split, and a computed one streams the split chunk by chunk and batch by batch."""
from __future__ import annotations

import os
import tracemalloc

import jax
import numpy as np
import pytest

from hold_jax.configs import cifar10
from hold_jax.configs import digits
from hold_jax.data import image_data
from hold_jax.data import image_sources
from hold_jax.evaluation import image_features
from hold_jax.evaluation import reference_stats
from hold_jax.evaluation import statistics


def stand_in_network(batch_sizes: list[int] | None = None) -> image_features.Network:
  """A feature network of plain numpy: the first 12 pixels and the mean pixel (N, 13), logits (N, 3); it records
  the size of every batch it is given."""
  def features(images):
    if batch_sizes is not None:
      batch_sizes.append(len(images))
    flat = images.reshape(len(images), -1).astype(np.float32)
    return np.concatenate([flat[:, :12], flat.mean(axis=1, keepdims=True)], axis=1), flat[:, :3]

  return image_features.Network("stand-in", "0" * 64, "tf1", features, "")


def digits_config(cache_dir, feature_batch_size: int = 100):
  config = digits.get_config("local")
  config.eval.stats_cache_dir = str(cache_dir)
  config.eval.feature_batch_size = feature_batch_size  # 100 does not divide the read chunk of 256
  return config


def all_at_once(config, network: image_features.Network):
  """The computation before streaming: the whole split in memory, features of it, one FeatureStats.add."""
  source = image_sources.SOURCES[config.data.dataset]
  size = config.data.image_size

  def fit(chunk):
    return chunk if chunk.shape[1:3] == (size, size) else image_data.resize_levels(chunk, size, source.num_levels)

  levels = image_sources.load_part(config.data.dataset, config.eval.reference_split, config.data.data_dir, 0, 1, fit)
  images = image_data.to_pixels(image_data.to_model_space(levels, source.num_levels))
  features, _ = image_features.features_in_batches(network, images, config.eval.feature_batch_size)
  accumulator = statistics.FeatureStats(features.shape[1]).add(features)
  key = reference_stats.reference_key(config.data.dataset, config.eval.reference_split, len(images),
                                      network.weights_sha256, network.resize)
  return accumulator.mean(), accumulator.covariance(), features, key


def assert_close(got: np.ndarray, want: np.ndarray, relative: float = 1e-10) -> None:
  """Equal to `relative` times the largest entry (an entry near zero has no relative error of its own)."""
  assert np.abs(got - want).max() <= relative * np.abs(want).max()


def refuse(*args, **kwargs):
  raise AssertionError("the reference split was read")


# ----------------------------------------------------------------------------------------------------------
# The key, from metadata.


def test_the_count_of_the_key_is_the_loaded_count_without_loading(monkeypatch):
  for count in (1, 3):
    for index in range(count):
      want = len(image_sources.digits_part("train", index, count))
      assert image_sources.part_size("digits", "train", None, index, count) == want
  assert image_sources.part_size("digits", "train", None, 0, 1) == image_sources.DIGITS_NUM_IMAGES == 1797
  with pytest.raises(ValueError, match=r"data.split = 'test': the digits set has one split, 'train'"):
    image_sources.part_size("digits", "test", None, 0, 1)
  monkeypatch.setattr(image_sources, "digits_part", refuse)
  assert image_features.reference_count(digits.get_config("local")) == 1797


def test_tfds_is_counted_unread_and_streamed_as_load_part_loads(prepared_mock_tfds, monkeypatch):
  data = cifar10.get_config("local").data
  monkeypatch.setattr(image_sources, "READ_CHUNK", 8)
  loaded = image_sources.load_part(data.dataset, "train", data.data_dir, 0, 1, lambda chunk: chunk)
  chunks = list(image_sources.part_chunks(data.dataset, "train", data.data_dir, 0, 1, lambda chunk: chunk))
  assert [len(chunk) for chunk in chunks] == [8, 8, 4]
  np.testing.assert_array_equal(np.concatenate(chunks), loaded)
  tfds = image_sources.import_tfds_without_gpus()
  monkeypatch.setattr(tfds, "as_numpy", refuse)  # how tfds_part and part_chunks read examples
  assert image_sources.part_size(data.dataset, "train", data.data_dir, 0, 1) == len(loaded) == 20


# ----------------------------------------------------------------------------------------------------------
# A cached reference: nothing of the split is read.


def test_a_cached_reference_is_returned_without_reading_the_split(tmp_path, monkeypatch):
  config, network = digits_config(tmp_path), stand_in_network()
  first = image_features.reference_statistics(config, network)
  mu, sigma, features, old_key = all_at_once(config, network)
  assert first["key"] == old_key  # the key of caches written before streaming
  assert os.listdir(tmp_path) == [f"{old_key}.npz"]

  for name in ("load_part", "part_chunks", "digits_part", "tfds_part"):
    monkeypatch.setattr(image_sources, name, refuse)
  calls = []
  cached = image_features.reference_statistics(config, stand_in_network(calls))
  assert cached["key"] == old_key and calls == []
  np.testing.assert_array_equal(cached["mu"], first["mu"])
  np.testing.assert_array_equal(cached["sigma"], first["sigma"])
  np.testing.assert_array_equal(cached["features"], features)
  assert_close(cached["mu"], mu)
  assert_close(cached["sigma"], sigma)


# ----------------------------------------------------------------------------------------------------------
# A computed reference: streamed, equal to the all-at-once computation.


def test_streamed_reference_equals_the_all_at_once_computation(tmp_path, monkeypatch):
  config, calls = digits_config(tmp_path), []
  network = stand_in_network(calls)
  monkeypatch.setattr(jax, "process_index", lambda: 1)  # not the writing process: computed, not cached
  streamed = image_features.reference_statistics(config, network)
  assert os.listdir(tmp_path) == []
  assert set(calls) == {100} and len(calls) == 18  # 1,797 images: 17 full batches and one of 97, padded
  mu, sigma, features, key = all_at_once(config, network)
  assert streamed["key"] == key
  np.testing.assert_array_equal(streamed["features"], features)
  assert_close(streamed["mu"], mu)
  assert_close(streamed["sigma"], sigma)
  assert streamed["metadata"]["num_images"] == "1797"


@pytest.mark.parametrize("chunk_sizes", [(7, 1, 30, 13), (8, 8, 8), (3,), (25, 5, 2)])
def test_batches_of_regroups_any_chunks_into_the_batches_of_the_joined_images(chunk_sizes):
  images = np.random.default_rng(0).integers(0, 256, (sum(chunk_sizes), 4, 4, 3), dtype=np.uint8)
  chunks = np.split(images, np.cumsum(chunk_sizes)[:-1])
  batches = list(image_features.batches_of(iter(chunks), 8))
  assert [len(batch) for batch in batches] == [min(8, len(images) - start) for start in range(0, len(images), 8)]
  np.testing.assert_array_equal(np.concatenate(batches), images)

  network = stand_in_network()
  want_features, _ = image_features.features_in_batches(network, images, 8)
  want = statistics.FeatureStats().add(want_features)
  got, got_features = image_features.streamed_features(network, iter(chunks), 8, len(images), "the test split")
  np.testing.assert_array_equal(got_features, want_features)
  assert got.n == len(images)
  assert_close(got.mean(), want.mean())
  assert_close(got.covariance(), want.covariance())


def test_a_split_of_another_size_than_its_metadata_is_named():
  chunks = [np.zeros((5, 4, 4, 3), np.uint8)] * 2
  network = stand_in_network()
  with pytest.raises(ValueError, match=r"the test split holds 10 images, but its metadata counts 11: .*prepare "
                     r"it again under data.data_dir"):
    image_features.streamed_features(network, iter(chunks), 4, 11, "the test split")
  with pytest.raises(ValueError, match=r"holds more than 9 images, but its metadata counts 9"):
    image_features.streamed_features(network, iter(chunks), 4, 9, "the test split")


def test_the_split_is_streamed_in_chunks_and_batches(tmp_path, monkeypatch):
  """A 4,000-image split of 32x32x3 (12 MB of uint8, 49 MB as float32) read in chunks of 25: the computation's
  peak memory stays below a quarter of the split's uint8 pixels (a chunk and its float32 copies while its pixels
  are made, a feature batch, the features), and no network batch exceeds the feature batch."""
  num_images, chunk_size, shape = 4000, 25, (32, 32, 3)

  def part_chunks(dataset, split, data_dir, process_index, process_count, transform):
    for start in range(0, num_images, chunk_size):
      yield transform(np.random.default_rng(start).integers(0, 256, (chunk_size,) + shape, dtype=np.uint8))

  def load_part(*args):
    return np.concatenate(list(part_chunks(*args)))

  monkeypatch.setattr(image_sources, "part_chunks", part_chunks)
  monkeypatch.setattr(image_sources, "load_part", load_part)
  monkeypatch.setattr(image_sources, "part_size", lambda *args: num_images)
  config = cifar10.get_config("local")
  config.eval.stats_cache_dir, config.eval.feature_batch_size = str(tmp_path), 32
  calls = []
  tracemalloc.start()
  try:
    stats = image_features.reference_statistics(config, stand_in_network(calls))
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert len(stats["features"]) == num_images and max(calls) <= 32
  assert peak < num_images * np.prod(shape) / 4, peak

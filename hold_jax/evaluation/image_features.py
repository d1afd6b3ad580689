"""What the sample-quality metrics see, for `--mode=eval` (hold_jax/evaluation/image_quality.py) and `python -m
hold_jax.fid` alike: a feature network (the FID Inception-v3 or the bundled digits classifier, both in
hold_jax/evaluation/feature_networks/), features of uint8 images in fixed-size batches, and the statistics of the
reference images, cached on disk.

The reference cache is looked up by a key whose image count comes from the split's metadata, so a cached
evaluation reads none of the split; a missing entry is computed in one pass over the split, a read chunk and a
feature batch at a time, with the moments accumulated in float64 as the batches go.

Features are computed in batches of one size (a short batch padded and cut back), so the network compiles
once; images arriving from the sampler in batches of another size wait in a `FeatureStream` until a full
feature batch is there.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterable, Iterator

import jax
import numpy as np
from etils import epath

from hold_jax import field_checks
from hold_jax.data import image_data
from hold_jax.data import image_sources
from hold_jax.evaluation import statistics
from hold_jax.evaluation.feature_networks import inception_network

FEATURE_NETWORKS = ("inception", "digits")
RESIZE_MODES = inception_network.PREPROCESS_MODES


@dataclasses.dataclass(frozen=True)
class Network:
  """A feature network as the metrics use it: features(uint8 images) -> (features (N, D), logits (N, K))."""

  name: str
  weights_sha256: str
  resize: str
  features: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
  metric_suffix: str  # '' for Inception (the published metrics), '_digits' otherwise
  logits_key: str = "logits"  # which output of the network the logits are (IS reads them)

  def metric_name(self, metric: str) -> str:
    """What a metric of these features is called: 'fid', 'kid', 'is' on Inception, the numbers papers
    report; 'fd_digits', 'kid_digits', 'is_digits' on another network, so they are never mistaken for them."""
    if not self.metric_suffix:
      return metric
    return ("fd" if metric == "fid" else metric) + self.metric_suffix


def from_outputs(network: Any, feature_key: str, logits_key: str, metric_suffix: str) -> Network:
  """The Network of a loaded one whose apply(uint8 images (N, H, W, C)) returns a dict of outputs, with
  name, weights_sha256 and resize attributes: its features are outputs[feature_key], its logits
  outputs[logits_key]."""
  def features(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    outputs = network.apply(images)
    return np.asarray(outputs[feature_key], np.float32), np.asarray(outputs[logits_key], np.float32)

  return Network(network.name, network.weights_sha256, network.resize, features, metric_suffix, logits_key)


def load_inception(weights: str | None, sha256: str | None, resize: str, field: str = "eval.inception_weights",
                   flag: str = "--config.eval.inception_weights") -> Network:
  """The FID Inception-v3 with the published weights of a local or gs:// file (`field` names the setting that
  gives it, `flag` how to set it): pool3 features and, for IS, the logits without the fc bias, as the TF graph's
  softmax input and torch-fidelity use them."""
  if not weights:
    raise ValueError(f"{field} is not set: FID, KID and IS need the FID Inception weights "
                     "pt_inception-2015-12-05-6726825d.pth (pytorch-fid's and torch-fidelity's GitHub releases) "
                     f"as a local or gs:// path: {flag}=PATH.")
  if not epath.Path(weights).exists():
    raise ValueError(f"The Inception weights file {weights} does not exist ({field}).")
  from hold_jax.evaluation.feature_networks import inception  # pylint: disable=g-import-not-at-top
  return from_outputs(inception.load_inception(weights, sha256 or None, resize), "pool3", "logits_unbiased", "")


def load_digits() -> Network:
  """The bundled digits classifier (hold_jax/evaluation/feature_networks/digits_features.py): its penultimate
  features and its logits; its metrics are named with '_digits' (fd_digits, ...) since they are not FID."""
  from hold_jax.evaluation.feature_networks import digits_features  # pylint: disable=g-import-not-at-top
  return from_outputs(digits_features.load_digits_features(), "features", "logits", "_digits")


def load_network(eval_config) -> Network:
  """The feature network of eval.feature_network (loaded from local files only)."""
  kind = eval_config.feature_network
  if kind == "inception":
    return load_inception(eval_config.inception_weights, eval_config.inception_sha256, eval_config.resize)
  if kind == "digits":
    return load_digits()
  field_checks.require(False, "eval.feature_network", kind, f"one of {FEATURE_NETWORKS}")


def features_in_batches(network: Network, images: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Features and logits of uint8 images (N, H, W, C), batch_size images at a time; a short last batch is
  padded with copies of its last image and cut back (one shape, one compile of the network)."""
  features, logits = [], []
  for start in range(0, len(images), batch_size):
    batch = images[start:start + batch_size]
    padded = np.concatenate([batch, np.repeat(batch[-1:], batch_size - len(batch), axis=0)])
    batch_features, batch_logits = network.features(padded)
    features.append(batch_features[:len(batch)])
    logits.append(batch_logits[:len(batch)])
  return np.concatenate(features), np.concatenate(logits)


# ----------------------------------------------------------------------------------------------------------
# Reference statistics.


def reference_pixel_chunks(config) -> Iterator[np.ndarray]:
  """uint8 pixels (n, H, W, C) of eval.reference_split of the training data, as a sample's pixels are made,
  in order, one read chunk (n <= image_sources.READ_CHUNK) at a time: the split is never held whole."""
  data = config.data
  size, _, _ = image_data.image_shape(data)
  source = image_sources.SOURCES[data.dataset]

  def pixels(chunk: np.ndarray) -> np.ndarray:
    levels = chunk if chunk.shape[1:3] == (size, size) else image_data.resize_levels(chunk, size, source.num_levels)
    return image_data.to_pixels(image_data.to_model_space(levels, source.num_levels))

  return image_sources.part_chunks(data.dataset, config.eval.reference_split, data.data_dir, 0, 1, pixels)


def reference_count(config) -> int:
  """The number of images of eval.reference_split, from the data's metadata (image_sources.part_size): the
  count of the cache key, known without reading an image."""
  image_data.image_shape(config.data)  # an unusable data config fails here, before any cache is looked at
  return image_sources.part_size(config.data.dataset, config.eval.reference_split, config.data.data_dir, 0, 1)


def batches_of(chunks: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
  """The images of `chunks` (n_i, H, W, C), in order, regrouped into batches of batch_size and a shorter last
  one: the batches features_in_batches cuts the joined images into, so the features come out the same.

  Holds the current chunk and at most batch_size - 1 images waiting for the next one; full batches inside a
  chunk are views of it, not copies.
  """
  waiting = None
  for chunk in chunks:
    start = 0
    if waiting is not None:
      start = batch_size - len(waiting)
      waiting = np.concatenate([waiting, chunk[:start]])
      if len(waiting) < batch_size:
        continue
      yield waiting
      waiting = None
    stop = start + (len(chunk) - start) // batch_size * batch_size
    for first in range(start, stop, batch_size):
      yield chunk[first:first + batch_size]
    if stop < len(chunk):
      waiting = chunk[stop:]
  if waiting is not None:
    yield waiting


def streamed_features(network: Network, chunks: Iterable[np.ndarray], batch_size: int, num_images: int,
                      what: str) -> tuple[statistics.FeatureStats, np.ndarray]:
  """(FeatureStats of the features, features (num_images, D) float32) of the uint8 images of `chunks`, computed
  batch by batch (batches_of, features_in_batches) with the moments added to float64 sums per batch.

  The features equal features_in_batches' of the joined images, and the mean and covariance equal those of
  one FeatureStats.add of them to float64 rounding. Memory: a chunk, one feature batch, the features and the
  (D, D) sums; never the images of more than one chunk. A count other than num_images (the metadata's, which
  named the cache entry) is a ValueError naming `what`.
  """
  accumulator, features, count = statistics.FeatureStats(), None, 0
  for batch in batches_of(chunks, batch_size):
    if count + len(batch) > num_images:
      raise ValueError(_count_error(what, f"more than {num_images}", num_images))
    batch_features, _ = features_in_batches(network, batch, batch_size)
    if features is None:
      features = np.empty((num_images, batch_features.shape[1]), np.float32)
    features[count:count + len(batch)] = batch_features
    accumulator.add(batch_features)
    count += len(batch)
  if count != num_images:
    raise ValueError(_count_error(what, str(count), num_images))
  return accumulator, features


def _count_error(what: str, found: str, num_images: int) -> str:
  return (f"{what} holds {found} images, but its metadata counts {num_images}: the prepared data is incomplete "
          "or was changed after it was prepared; prepare it again under data.data_dir.")


def reference_cache_dir(config) -> epath.Path:
  """eval.stats_cache_dir, else beside the data: <data_dir>/hold_jax_reference_stats (tfds), or
  ~/.cache/hold_jax/reference_stats for data that has no folder (the digits)."""
  if config.eval.stats_cache_dir:
    return epath.Path(config.eval.stats_cache_dir)
  if config.data.dataset in image_sources.SOURCES and image_sources.SOURCES[config.data.dataset].tfds_name:
    data_dir = config.data.data_dir or os.path.expanduser("~/tensorflow_datasets")
    return epath.Path(data_dir) / "hold_jax_reference_stats"
  return epath.Path(os.path.expanduser("~/.cache/hold_jax/reference_stats"))


def reference_statistics(config, network: Network) -> dict[str, Any]:
  """{'mu', 'sigma', 'features' (may be None), 'key'} of the reference images, cached by reference_stats.

  The key's count comes from the split's metadata, so a cached entry is returned without reading the split.
  On a miss every process streams the whole split (streamed_features) and process 0 writes the entry.
  """
  from hold_jax.evaluation import reference_stats  # pylint: disable=g-import-not-at-top
  if config.eval.reference_stats:
    stats = reference_stats.load_user_stats(config.eval.reference_stats)
    reference_stats.check_compatible(stats.get("metadata", {}), network.weights_sha256, network.resize)
    return {**stats, "key": str(config.eval.reference_stats)}
  count = reference_count(config)
  key = reference_stats.reference_key(config.data.dataset, config.eval.reference_split, count,
                                      network.weights_sha256, network.resize)

  def compute():
    what = f"eval.reference_split = {config.eval.reference_split!r} of data.dataset = {config.data.dataset!r}"
    accumulator, features = streamed_features(network, reference_pixel_chunks(config),
                                              config.eval.feature_batch_size, count, what)
    return {"mu": accumulator.mean(), "sigma": accumulator.covariance(), "features": features,
            "metadata": {"dataset": config.data.dataset, "split": config.eval.reference_split,
                         "num_images": count, "weights_sha256": network.weights_sha256,
                         "resize": network.resize, "network": network.name}}

  stats = reference_stats.load_or_compute(reference_cache_dir(config), key, compute, write=jax.process_index() == 0)
  return {**stats, "key": key}


class FeatureStream:
  """Features of images that arrive in batches of any size, computed in full batches of batch_size.

  Images wait until batch_size of them are there (at most batch_size - 1 wait), so sampling batches smaller
  than or not divisible by the feature batch cost no padded network work; finish() computes the rest, padded
  once.
  """

  def __init__(self, network: Network, batch_size: int):
    self.network, self.batch_size = network, batch_size
    self.waiting = np.zeros((0,), np.uint8)
    self.features, self.logits = [], []

  def add(self, images: np.ndarray) -> None:
    """images: uint8 (N, H, W, C)."""
    images = np.concatenate([self.waiting, images]) if len(self.waiting) else images
    full = len(images) - len(images) % self.batch_size
    if full:
      self._compute(images[:full])
    self.waiting = images[full:]

  def finish(self) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, D), logits (N, K)) of every image added, in order."""
    if len(self.waiting):
      self._compute(self.waiting)
      self.waiting = self.waiting[:0]
    return np.concatenate(self.features), np.concatenate(self.logits)

  def _compute(self, images: np.ndarray) -> None:
    features, logits = features_in_batches(self.network, images, self.batch_size)
    self.features.append(features)
    self.logits.append(logits)

"""What the sample-quality metrics see (hold_jax/quality.py): the feature network of eval.feature_network
(the FID Inception-v3, hold_jax/metrics/inception.py, or the digits classifier, metrics/digits_features.py),
features of uint8 images in fixed-size batches, and the statistics of the reference images, cached on disk.

Features are computed in batches of one size (a short batch padded and cut back), so the network compiles
once; images arriving from the sampler in batches of another size wait in a `FeatureStream` until a full
feature batch is there.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import numpy as np
from etils import epath

from hold_jax import field_checks
from hold_jax import image_data
from hold_jax import image_sources
from hold_jax.metrics import inception_network

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


def load_network(eval_config) -> Network:
  """The feature network of eval.feature_network (loaded from local files only)."""
  kind = eval_config.feature_network
  if kind == "inception":
    from hold_jax.metrics import inception  # pylint: disable=g-import-not-at-top
    if not eval_config.inception_weights:
      raise ValueError("eval.inception_weights is not set: FID, KID and IS need the FID Inception weights "
                       "pt_inception-2015-12-05-6726825d.pth (pytorch-fid's and torch-fidelity's GitHub releases) "
                       "as a local or gs:// path: --config.eval.inception_weights=PATH.")
    network = inception.load_inception(eval_config.inception_weights, eval_config.inception_sha256 or None,
                                       eval_config.resize)
    # IS from the logits without the fc bias, as the TF graph's softmax input and torch-fidelity use them.
    return Network(network.name, network.weights_sha256, network.resize,
                   lambda images: _two(network.apply(images), "pool3", "logits_unbiased"), "")
  if kind == "digits":
    from hold_jax.metrics import digits_features  # pylint: disable=g-import-not-at-top
    network = digits_features.load_digits_features()
    return Network(network.name, network.weights_sha256, network.resize,
                   lambda images: _two(network.apply(images), "features"), "_digits")
  field_checks.require(False, "eval.feature_network", kind, f"one of {FEATURE_NETWORKS}")


def _two(outputs: dict, feature_key: str, logits_key: str = "logits") -> tuple[np.ndarray, np.ndarray]:
  return np.asarray(outputs[feature_key], np.float32), np.asarray(outputs[logits_key], np.float32)


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


def reference_images(config) -> np.ndarray:
  """uint8 pixels (N, H, W, C) of eval.reference_split of the training data, as a sample's pixels are made."""
  data = config.data
  size, _, _ = image_data.image_shape(data)
  source = image_sources.SOURCES[data.dataset]

  def fit(chunk: np.ndarray) -> np.ndarray:
    return chunk if chunk.shape[1:3] == (size, size) else image_data.resize_levels(chunk, size, source.num_levels)

  levels = image_sources.load_part(data.dataset, config.eval.reference_split, data.data_dir, 0, 1, fit)
  return image_data.to_pixels(image_data.to_model_space(levels, source.num_levels))


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
  """{'mu', 'sigma', 'features' (may be None), 'key'} of the reference images, cached by reference_stats."""
  from hold_jax.metrics import reference_stats  # pylint: disable=g-import-not-at-top
  from hold_jax.metrics import statistics  # pylint: disable=g-import-not-at-top
  if config.eval.reference_stats:
    stats = reference_stats.load_user_stats(config.eval.reference_stats)
    reference_stats.check_compatible(stats.get("metadata", {}), network.weights_sha256, network.resize)
    return {**stats, "key": str(config.eval.reference_stats)}
  images = reference_images(config)
  key = reference_stats.reference_key(config.data.dataset, config.eval.reference_split, len(images),
                                      network.weights_sha256, network.resize)

  def compute():
    features, _ = features_in_batches(network, images, config.eval.feature_batch_size)
    accumulator = statistics.FeatureStats(features.shape[1])
    accumulator.add(features)
    return {"mu": accumulator.mean(), "sigma": accumulator.covariance(), "features": features,
            "metadata": {"dataset": config.data.dataset, "split": config.eval.reference_split,
                         "num_images": len(images), "weights_sha256": network.weights_sha256,
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

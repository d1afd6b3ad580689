"""Image batches for training: pixel levels <-> model space, resizing, and a seeded stream (docs/training.md).

Each process keeps its part of the split in memory as uint8 pixel levels, already resized to
data.image_size at load time (image_sources has the datasets and their memory). Batch k is then a pure
function of (seed, k, process index): its examples are positions [k B, (k + 1) B) of a sequence of epoch
permutations, each drawn from (seed, epoch, process index), and its random flips and dequantisation noise
are drawn from np.random.default_rng([seed, k, process index]). A resumed run therefore sees exactly the
batches an uninterrupted one would, with no iterator state to checkpoint.

Resizing is linear (tent-kernel) interpolation, antialiased when shrinking, rounded back to the dataset's
pixel levels so the images stay uint8 and dequantisation keeps its meaning. For the 8x8 digits at 16x16
this is a smooth 2x upsampling rather than padding: padding would spend three quarters of every image on
constant background and shrink the digits relative to the network's receptive fields, and a nearest
(blocky) upsampling would make the model learn 2x2 squares. data.image_size = 8 keeps the originals.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

from hold_jax.data import image_sources

# SeedSequence([a, b, c]) equals SeedSequence([a, b, c, 0]), so the permutation draws get a distinct nonzero
# last entropy word ('perm') to stay independent of the per-step flip and noise draws [seed, step, process].
PERMUTATION_STREAM = 0x7065726D


def to_model_space(pixels: np.ndarray, num_levels: int = 256, noise: np.ndarray | None = None) -> np.ndarray:
  """Integer pixel levels in [0, num_levels), any shape, -> float32 in [-1, 1] of the same shape.

  Without noise level k goes to 2 k / (num_levels - 1) - 1, so 0 -> -1 and the top level -> 1 (pixel / 255
  for 8-bit images). With noise ~ U[0, 1) of the same shape (uniform dequantisation) level k goes to
  2 (k + noise) / num_levels - 1, uniform on the k-th of num_levels equal bins of [-1, 1], whose centre is
  2 (k + 1/2) / num_levels - 1 ((pixel + U) / 256 for 8-bit images). For the digits num_levels = 17.
  """
  levels = np.asarray(pixels).astype(np.float32)
  if noise is None:
    return levels * np.float32(2.0 / (num_levels - 1)) - np.float32(1.0)
  return (levels + noise.astype(np.float32)) * np.float32(2.0 / num_levels) - np.float32(1.0)


def to_pixels(images) -> np.ndarray:
  """Model-space images (..., H, W, C) in [-1, 1] (numpy or jax) -> uint8 in [0, 255], for image files and grids.

  The inverse of to_model_space for 8-bit images: exact on every level 0..255. Values outside [-1, 1] clip.
  """
  scaled = (np.asarray(images, np.float32) + np.float32(1.0)) * np.float32(127.5)
  return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def resize_weights(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) linear-interpolation weights; every row is non-negative and sums to one.

  Output pixel i samples the input at x_i = (i + 1/2) in_size / out_size - 1/2 (pixel centres aligned) with a
  tent kernel, widened by in_size / out_size when shrinking so that every input pixel is averaged in
  (antialiasing): jax.image.resize(method='linear', antialias=True), in numpy, on the host.
  """
  stretch = in_size / out_size
  samples = (np.arange(out_size) + 0.5) * stretch - 0.5
  width = max(stretch, 1.0)
  weights = np.maximum(0.0, 1.0 - np.abs(samples[:, None] - np.arange(in_size)[None, :]) / width)
  return weights / weights.sum(axis=1, keepdims=True)


def resize(images: np.ndarray, size: int) -> np.ndarray:
  """(N, H, W, C) -> (N, size, size, C) float32 by separable linear resampling (resize_weights)."""
  rows = resize_weights(images.shape[1], size).astype(np.float32)
  columns = resize_weights(images.shape[2], size).astype(np.float32)
  return np.einsum("oh,nhwc,pw->nopc", rows, images.astype(np.float32), columns, optimize=True)


def resize_levels(images: np.ndarray, size: int, num_levels: int) -> np.ndarray:
  """(N, H, W, C) pixel levels -> (N, size, size, C) uint8 levels, resized and rounded to the nearest level.

  The weights are convex, so the result stays in [0, num_levels - 1]; rounding moves a pixel by at most half
  a level. A constant image stays exactly constant.
  """
  return np.clip(np.rint(resize(images, size)), 0, num_levels - 1).astype(np.uint8)


@functools.lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, process_index: int, num_examples: int) -> np.ndarray:
  """The order (num_examples,) in which this process visits its examples in `epoch`; read-only, cached."""
  order = np.random.default_rng([seed, epoch, process_index, PERMUTATION_STREAM]).permutation(num_examples)
  order.setflags(write=False)
  return order


def example_indices(seed: int, process_index: int, num_examples: int, start: int, size: int) -> np.ndarray:
  """Indices (size,) of positions [start, start + size) of the concatenated epoch permutations.

  A slice that crosses an epoch boundary takes the end of one permutation and the start of the next, so
  every example is seen exactly once per epoch.
  """
  epochs, offsets = np.divmod(np.arange(start, start + size, dtype=np.int64), num_examples)
  indices = np.empty(size, np.int64)
  for epoch in np.unique(epochs):
    in_epoch = epochs == epoch
    indices[in_epoch] = epoch_permutation(seed, int(epoch), process_index, num_examples)[offsets[in_epoch]]
  return indices


@dataclasses.dataclass(frozen=True, eq=False)
class ImageStream:
  """Batches of images, each a pure function of (seed, step, process index).

  images: this process's part of the split, (N, H, W, C) uint8 levels in [0, num_levels).
  local_batch(step) returns this process's (global_batch / process_count, H, W, C) float32 share in [-1, 1].
  """

  images: np.ndarray
  num_levels: int
  global_batch: int
  seed: int = 0
  process_index: int = 0
  process_count: int = 1
  random_flip: bool = False
  dequantize: bool = False

  @property
  def local_batch_size(self) -> int:
    return self.global_batch // self.process_count

  @property
  def data_shape(self) -> tuple[int, int, int]:
    return tuple(self.images.shape[1:])

  def local_batch(self, step: int) -> np.ndarray:
    size = self.local_batch_size
    pixels = self.images[example_indices(self.seed, self.process_index, len(self.images), step * size, size)]
    rng = np.random.default_rng([self.seed, step, self.process_index])
    if self.random_flip:
      flipped = rng.random(size) < 0.5
      pixels[flipped] = pixels[flipped, :, ::-1]  # pixels is a fresh copy (fancy indexing)
    noise = rng.random(pixels.shape, dtype=np.float32) if self.dequantize else None
    return to_model_space(pixels, self.num_levels, noise)


def image_shape(data_config) -> tuple[int, int, int]:
  """(image_size, image_size, num_channels) of an image dataset config, checked; reads no data. num_channels
  None is the data set's own."""
  dataset = data_config.dataset
  if dataset not in image_sources.SOURCES:
    raise ValueError(f"data.dataset = {dataset!r} is not an image dataset: one of {sorted(image_sources.SOURCES)}.")
  stored = image_sources.SOURCES[dataset].image_shape
  if data_config.num_channels is not None and data_config.num_channels != stored[2]:
    raise ValueError(f"data.num_channels = {data_config.num_channels}, but {dataset!r} images have "
                     f"{stored[2]} channel(s); set --config.data.num_channels={stored[2]}.")
  size = data_config.image_size
  if not isinstance(size, int) or size < 1:
    raise ValueError(f"data.image_size = {size!r} must be a positive integer (images are size x size).")
  return (size, size, stored[2])


def create_image_stream(data_config, global_batch: int, seed: int, process_index: int = 0,
                        process_count: int = 1) -> ImageStream:
  """The image stream of `config.data` for process `process_index` of `process_count`.

  Loads this process's part of data.split once (resized to data.image_size while loading); no network.
  """
  size, _, _ = image_shape(data_config)
  source = image_sources.SOURCES[data_config.dataset]

  def fit(chunk: np.ndarray) -> np.ndarray:
    return chunk if chunk.shape[1:3] == (size, size) else resize_levels(chunk, size, source.num_levels)

  images = image_sources.load_part(data_config.dataset, data_config.split, data_config.data_dir, process_index,
                                   process_count, fit)
  return ImageStream(images, source.num_levels, global_batch, seed, process_index, process_count,
                     bool(data_config.random_flip), bool(data_config.dequantize))

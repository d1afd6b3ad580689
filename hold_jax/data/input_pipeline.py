"""Training data streams (docs/training.md): generated 2-D sets and a user's own point cloud here, images
(CIFAR-10, CelebA-HQ, digits) in image_data; `create_stream` picks by config.data.dataset. config.data is
checked once into `Settings`, which the functions here take (or the config group itself, made into one).

Every batch is a pure function of (seed, step, process index), so a resumed run sees exactly the batches
an uninterrupted one would have, and each process draws only its own share of the global batch.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Callable

import jax
import numpy as np

from hold_jax import field_checks
from hold_jax.data import image_data
from hold_jax.data import image_sources

SWISS_ROLL_CENTRES = np.array([(0.0, 0.0), (0.8, 0.8), (0.8, -0.8), (-0.8, -0.8), (-0.8, 0.8)])
SWISS_ROLL_ANGLES = (1.5 * np.pi, 4.5 * np.pi)
SWISS_ROLL_SCALE, SWISS_ROLL_NOISE = 0.01, 0.002


def multimodal_swiss_roll(rng: np.random.Generator, num: int) -> np.ndarray:
  """Five equally likely centres, each with a spiral arm centre + 0.01 (t cos t, t sin t) + N(0, 0.002^2)."""
  centres = SWISS_ROLL_CENTRES[rng.integers(0, len(SWISS_ROLL_CENTRES), num)]
  angle = rng.uniform(*SWISS_ROLL_ANGLES, num)
  arm = SWISS_ROLL_SCALE * np.stack([angle * np.cos(angle), angle * np.sin(angle)], axis=-1)
  return centres + arm + SWISS_ROLL_NOISE * rng.standard_normal((num, 2))


def gaussian_mixture(rng: np.random.Generator, num: int) -> np.ndarray:
  """Eight equally likely N(mu_k, 0.05^2 I) with mu_k evenly spaced on the unit circle."""
  angles = 2 * np.pi * rng.integers(0, 8, num) / 8
  return np.stack([np.cos(angles), np.sin(angles)], axis=-1) + 0.05 * rng.standard_normal((num, 2))


def checkerboard(rng: np.random.Generator, num: int) -> np.ndarray:
  """Uniform on the 8 black squares of a 4 x 4 board covering [-1, 1]^2."""
  cells = rng.integers(0, 8, num)
  row = cells // 2
  column = 2 * (cells % 2) + (row % 2)
  corner = np.stack([column, row], axis=-1) * 0.5 - 1.0
  return corner + 0.5 * rng.uniform(size=(num, 2))


GENERATORS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "multimodal_swiss_roll": multimodal_swiss_roll,
    "gaussian_mixture": gaussian_mixture,
    "checkerboard": checkerboard,
}


NPY_FIX = "Save an (N, D) numeric array with numpy.save(PATH, array)."


def describe_non_npy(head: bytes, size: int) -> str | None:
  """What a file that starts with `head` (and is `size` bytes long) holds and what to do, or None for a .npy
  file: the user learns they gave a CSV, an .npz or a pickle, not numpy's bare 'pickled data' message."""
  if head.startswith(np.lib.format.MAGIC_PREFIX):
    return None
  if not size:
    return f"an empty file (0 bytes). {NPY_FIX}"
  if head.startswith(b"PK\x03\x04"):
    return ("a zip archive: an .npz from numpy.savez holds named arrays, not one. Save the one you mean with "
            "numpy.save(PATH, numpy.load(NPZ)[NAME]).")
  if head.startswith(b"\x80"):
    return f"a Python pickle, and pickles are never loaded (unpickling runs code). {NPY_FIX}"
  if all(32 <= byte < 127 or byte in b"\t\n\r" for byte in head):
    return (f"text (it starts with {head[:40].decode()!r}). Convert it to an (N, D) array with "
            "numpy.save(PATH, numpy.loadtxt(TEXT, delimiter=',')).")
  return f"{size} bytes of something else (it starts with {head[:16]!r}). {NPY_FIX}"


NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def read_npy_header(path: str) -> tuple[tuple[int, int], tuple[int, ...] | None, np.dtype | None, int]:
  """(format version, shape, dtype, bytes before the data) of the .npy file `path`, from its header alone:
  its data is neither read nor unpickled. Shape and dtype are None for a version without a public header
  reader (3.0, which numpy writes only for structured arrays whose field names are not Latin-1); ValueError
  for a damaged header."""
  with open(path, "rb") as file:
    version = np.lib.format.read_magic(file)
    read = NPY_HEADER_READERS.get(version)
    if read is None:
      return version, None, None, file.tell()
    shape, _, dtype = read(file)
    return version, shape, dtype, file.tell()


def check_point_layout(name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
  """ValueError unless an array of `shape` and `dtype` is a point cloud: (N, D), N >= 2, D >= 1, real numbers."""
  if len(shape) != 2 or shape[0] < 2 or shape[1] < 1:
    raise ValueError(f"{name} holds an array of shape {tuple(shape)}; it must be (N, D) "
                     "with N >= 2 points of D >= 1 coordinates.")
  if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
    raise ValueError(f"{name} holds dtype {dtype}; it must be numeric (real integers or floats). {NPY_FIX}")


def load_point_cloud(path: str) -> np.ndarray:
  """An (N, D) float array from a .npy file, checked: config.data.dataset = 'npy:PATH'.

  Pickles are never loaded (allow_pickle=False): a file that is not a numeric .npy array gets a ValueError
  that says what it holds and how to save the right thing, instead of numpy's own message. Everything is
  checked from the header before the data is read: the dtype, the shape, and that the file holds exactly
  prod(shape) * itemsize bytes after the header. np.load would allocate what the header claims before
  finding the data short (a header that claims 10^12 rows is a MemoryError for 15 TiB), and would read the
  first array of a file with more bytes and ignore the rest.
  """
  name = f"data.dataset = 'npy:{path}'"
  if not os.path.isfile(path):
    raise ValueError(f"{name}: no such file. Point it at an (N, D) array saved with numpy.save.")
  size = os.path.getsize(path)
  with open(path, "rb") as file:
    found = describe_non_npy(file.read(64), size)
  if found:
    raise ValueError(f"{name} is not a .npy array file: it is {found}")
  try:
    version, shape, dtype, offset = read_npy_header(path)
  except (ValueError, OSError, EOFError) as error:
    raise ValueError(f"{name} has a damaged .npy header ({error}). {NPY_FIX}") from None
  if shape is None:
    raise ValueError(f"{name} is a .npy file of format version {version[0]}.{version[1]}, which numpy writes only "
                     f"for structured arrays (named fields), never for an (N, D) numeric array. {NPY_FIX}")
  if dtype.hasobject:
    raise ValueError(f"{name} holds an array of Python objects (dtype {dtype}, shape {shape}), which "
                     "numpy can only unpickle, and pickles are never loaded (e.g. a list of arrays of different "
                     "lengths). "
                     "Stack it into one numeric array first: numpy.save(PATH, numpy.asarray(points, "
                     "dtype=numpy.float32)).")
  check_point_layout(name, shape, dtype)
  claimed, held = math.prod(shape) * dtype.itemsize, size - offset
  if held < claimed:
    raise ValueError(f"{name} could not be read as a .npy array: its header claims shape {shape} of {dtype}, "
                     f"{claimed:,} bytes, but the file holds {held:,} bytes after its {offset}-byte header (a copy "
                     f"or a save that did not finish, or an edited header). {NPY_FIX}")
  if held > claimed:
    raise ValueError(f"{name} holds {held - claimed:,} bytes more than the array of shape {shape} of {dtype} "
                     f"({claimed:,} bytes) that its header describes, and numpy would read that array alone "
                     f"(several arrays saved into one file?). {NPY_FIX}")
  try:
    points = np.load(path, allow_pickle=False)
  except (ValueError, OSError, EOFError) as error:  # e.g. a file changed since its header was read
    raise ValueError(f"{name} could not be read as a .npy array ({error}). {NPY_FIX}") from None
  check_point_layout(name, points.shape, points.dtype)
  points = points.astype(np.float32)
  bad = ~np.isfinite(points).all(axis=1)
  if bad.any():
    raise ValueError(f"{name}: {bad.sum()} rows hold NaN or inf (first at row {np.argmax(bad)}); remove them.")
  return points


@dataclasses.dataclass(frozen=True)
class PointStream:
  """Batches of points, each a pure function of (seed, step, process index).

  local_batch(step) returns this process's (global_batch / process_count, D) float32 share.
  """

  dataset: str
  global_batch: int
  seed: int = 0
  process_index: int = 0
  process_count: int = 1
  points: np.ndarray | None = None  # the point cloud of an 'npy:' dataset

  @property
  def local_batch_size(self) -> int:
    return self.global_batch // self.process_count

  @property
  def data_shape(self) -> tuple[int, ...]:
    return (self.points.shape[1],) if self.points is not None else (2,)

  def local_batch(self, step: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, step, self.process_index])
    if self.points is not None:
      return self.points[rng.integers(0, len(self.points), self.local_batch_size)]
    return GENERATORS[self.dataset](rng, self.local_batch_size).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Settings:
  """config.data, checked when made: data.dataset names a generated set, an image data set or 'npy:PATH' (the
  file itself is read, and checked, when the data are); the image fields are checked for image data and unused
  otherwise (configs/images.py says what each means)."""

  dataset: str
  data_dir: str | None = None
  split: str = "train"
  image_size: int = 32
  num_channels: int | None = None  # None: the data set's own (3 for CIFAR-10 and CelebA-HQ, 1 for the digits)
  random_flip: bool = True
  dequantize: bool = False

  def __post_init__(self):
    field_checks.require(isinstance(self.dataset, str), "data.dataset", self.dataset,
                         f"a string: one of {sorted(GENERATORS) + sorted(image_sources.SOURCES)} or 'npy:PATH'")
    if self.dataset not in image_sources.SOURCES:
      if not self.dataset.startswith("npy:"):
        _check_generated(self.dataset)
      return
    image_data.image_shape(self)
    field_checks.require(isinstance(self.split, str) and bool(self.split), "data.split", self.split,
                         "the name of a split of the data set, e.g. 'train'")
    field_checks.require(self.data_dir is None or isinstance(self.data_dir, str), "data.data_dir", self.data_dir,
                         "a folder, or None for tfds' default ~/tensorflow_datasets")
    for field in ("random_flip", "dequantize"):
      field_checks.require(isinstance(getattr(self, field), bool), f"data.{field}", getattr(self, field),
                           "true or false")


def settings_from_config(data_config) -> Settings:
  """config.data checked once into Settings; a field the config lacks keeps its default (data.dataset has
  none)."""
  if not isinstance(data_config, Settings) and "dataset" not in data_config:
    raise ValueError("config.data has no dataset: set data.dataset to one of "
                     f"{sorted(GENERATORS) + sorted(image_sources.SOURCES)} or 'npy:PATH'.")
  return field_checks.settings_of(Settings, data_config)


def check_global_batch(global_batch: int) -> None:
  """The global batch must split evenly over processes (data shares) and devices (the mesh's data axis)."""
  if global_batch % jax.process_count() or global_batch % jax.device_count():
    raise ValueError(f"training.batch_size = {global_batch} must be divisible by the number of processes "
                     f"({jax.process_count()}) and of devices ({jax.device_count()}).")


def data_shape(settings: Settings) -> tuple[int, ...]:
  """The shape of one example of `settings` (or config.data; no batch), without loading a data set (a point
  cloud's file is read)."""
  settings = settings_from_config(settings)
  if settings.dataset in image_sources.SOURCES:
    return image_data.image_shape(settings)
  if settings.dataset.startswith("npy:"):
    return load_point_cloud(settings.dataset[len("npy:"):]).shape[1:]
  return (2,)


def _check_generated(dataset: str) -> None:
  """Raises the ValueError of an unknown data.dataset, given one that is neither images nor 'npy:PATH'."""
  if dataset not in GENERATORS:
    raise ValueError(f"data.dataset = {dataset!r} is not allowed: it must be one of "
                     f"{sorted(GENERATORS) + sorted(image_sources.SOURCES)} or 'npy:PATH' for an (N, D) array.")


RANGE_DRAWS = 100_000  # points drawn (seed 0) to find the range of a generated data set


def data_range(settings: Settings) -> tuple[np.ndarray | float, np.ndarray | float]:
  """(low, high) of the data of `settings` (or config.data) in model space: (-1, 1) for images; per coordinate
  (D,) for point data, the minimum and maximum of a user's cloud or of RANGE_DRAWS points of a generated set.
  What sampling.clip_x0 = 'auto' clips the posterior mean to."""
  dataset = settings_from_config(settings).dataset
  if dataset in image_sources.SOURCES:
    return -1.0, 1.0
  if dataset.startswith("npy:"):
    points = load_point_cloud(dataset[len("npy:"):])
  else:
    points = GENERATORS[dataset](np.random.default_rng(0), RANGE_DRAWS)
  points = np.asarray(points, np.float32)
  return points.min(axis=0), points.max(axis=0)


PLOT_STREAM = 0x706C6F74  # 'plot': the last entropy word of the draws under a plot (reference_points)
NUM_REFERENCE_POINTS = 4096


def reference_points(settings: Settings, num: int = NUM_REFERENCE_POINTS) -> np.ndarray | None:
  """(min(num, N), D) float32 points of `settings` (or config.data) to draw faintly under samples
  (hold_jax/plots.py), the same on every call: `num` fresh points of a generated set, or a random subset of a
  user's cloud of N points (all of them when N <= num). None for images.

  The draws come from default_rng([0, 0, 0, PLOT_STREAM]): training's batches use [seed, step, process]
  (equal to the same four words ending in 0) and data_range seed 0, so a plot never shows the very points a
  model was trained on at step 0, nor depends on the training seed.
  """
  dataset = settings_from_config(settings).dataset
  if dataset in image_sources.SOURCES:
    return None
  rng = np.random.default_rng([0, 0, 0, PLOT_STREAM])
  if dataset.startswith("npy:"):
    points = load_point_cloud(dataset[len("npy:"):])
    return points[np.sort(rng.choice(len(points), num, replace=False))] if len(points) > num else points
  return GENERATORS[dataset](rng, num).astype(np.float32)


def create_stream(settings: Settings, global_batch: int, seed: int) -> PointStream | image_data.ImageStream:
  """The stream of `settings` (or config.data) for this process: `.data_shape` and `.local_batch(step)`."""
  settings = settings_from_config(settings)
  dataset = settings.dataset
  check_global_batch(global_batch)
  process_count = jax.process_count()
  if dataset in image_sources.SOURCES:
    return image_data.create_image_stream(settings, global_batch, seed, jax.process_index(), process_count)
  points = None
  if dataset.startswith("npy:"):
    points = load_point_cloud(dataset[len("npy:"):])
  return PointStream(dataset, global_batch, seed, jax.process_index(), process_count, points)

"""Where the training images come from: this process's part of a split, as integer pixel levels in memory.

Three sources (config.data.dataset):
  'cifar10'      tfds 'cifar10', 32x32x3, 256 levels; 50,000 train images = 154 MB of uint8.
  'celebahq256'  tfds 'celeb_a_hq/256', 256x256x3, 256 levels; 30,000 images = 5.9 GB of uint8 at 256x256
                 (each of P hosts holds 5.9 / P GB; resized to 32x32 it is 92 MB). tfds can only build it from
                 a manual download.
  'digits'       scikit-learn's load_digits, 1,797 8x8x1 images with 17 levels (0..16); ships in the wheel.

part_size counts a part from the split's metadata without reading an image, and part_chunks yields it chunk by
chunk: the reference statistics (hold_jax/evaluation/image_features.py) use these, so they never hold a whole split.

tfds data is read from a prepared `data_dir` only: nothing is downloaded at training time (docs/training.md),
and tensorflow is imported only here, only for the tfds sources, so the 2-D path stays light.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import numpy as np

from hold_jax import console


class NotPrepared(FileNotFoundError):
  """The tfds data of a source is not under config.data.data_dir; the message says how to prepare it."""


@dataclasses.dataclass(frozen=True)
class ImageSource:
  """A dataset as stored: its tfds name (None: not tfds), image shape (H, W, C) and pixel levels."""

  tfds_name: str | None
  image_shape: tuple[int, int, int]
  num_levels: int
  manual_download: bool = False


SOURCES = {
    "cifar10": ImageSource("cifar10", (32, 32, 3), 256),
    "celebahq256": ImageSource("celeb_a_hq/256", (256, 256, 3), 256, manual_download=True),
    "digits": ImageSource(None, (8, 8, 1), 17),
}

# tf.data batch size while reading a split into memory: bounds the transient memory of one read chunk.
READ_CHUNK = 256

# Maps a chunk of stored images (n, H, W, C) uint8 to what is kept in memory (n, h, w, C) uint8.
ChunkTransform = Callable[[np.ndarray], np.ndarray]


def load_part(dataset: str, split: str, data_dir: str | None, process_index: int, process_count: int,
              transform: ChunkTransform) -> np.ndarray:
  """This process's part of `split`, transformed chunk by chunk: (n, h, w, C) uint8.

  The split is cut into process_count contiguous parts whose sizes differ by at most one (tfds.even_splits),
  so the hosts of a multi-host job read disjoint data and together the whole split.
  """
  if dataset == "digits":
    return transform(digits_part(split, process_index, process_count))
  return tfds_part(dataset, split, data_dir, process_index, process_count, transform)


def part_chunks(dataset: str, split: str, data_dir: str | None, process_index: int, process_count: int,
                transform: ChunkTransform) -> Iterator[np.ndarray]:
  """The part of load_part, in order, as transformed chunks (n <= READ_CHUNK, h, w, C) uint8: one pass over the
  split that holds one chunk at a time instead of the whole part (the reference statistics stream with it)."""
  if dataset == "digits":
    images = digits_part(split, process_index, process_count)
    for start in range(0, len(images), READ_CHUNK):
      yield transform(images[start:start + READ_CHUNK])
    return
  tfds, examples = tfds_examples(dataset, split, data_dir, process_index, process_count)
  for chunk in tfds.as_numpy(examples.map(image_of).batch(READ_CHUNK).prefetch(1)):
    yield transform(chunk)


def part_size(dataset: str, split: str, data_dir: str | None, process_index: int, process_count: int) -> int:
  """The number of images load_part would return, from the split's metadata: no image is read.

  Digits: their fixed count (the split is checked as digits_part checks it). tfds: the cardinality of the
  unread tf.data pipeline, which tfds takes from the prepared split's recorded example counts (the number
  tfds_part checks its read against), else the split's `num_examples` in the dataset info.
  """
  if dataset == "digits":
    check_digits_split(split)
    return len(np.array_split(np.arange(DIGITS_NUM_IMAGES), process_count)[process_index])
  _, examples = tfds_examples(dataset, split, data_dir, process_index, process_count)
  num_examples = int(examples.cardinality())
  if num_examples < 0:  # unknown to tf.data: the info's record of the split
    num_examples = int(examples_info(dataset, split, data_dir, process_index, process_count).num_examples)
  return num_examples


DIGITS_NUM_IMAGES = 1797  # scikit-learn's load_digits: all of its one split, 'train'


def check_digits_split(split: str) -> None:
  """ValueError naming data.split unless it is the digits' one split."""
  if split != "train":
    raise ValueError(f"data.split = {split!r}: the digits set has one split, 'train' (all 1,797 images).")


def digits_part(split: str, process_index: int, process_count: int) -> np.ndarray:
  """This process's contiguous part of scikit-learn's digits: (n, 8, 8, 1) uint8 levels 0..16."""
  check_digits_split(split)
  from sklearn import datasets  # pylint: disable=g-import-not-at-top  (only the digits experiment needs it)
  images = datasets.load_digits().images.astype(np.uint8)[..., None]
  return np.array_split(images, process_count)[process_index]


def not_prepared_message(dataset: str, data_dir: str | None, searched: str) -> str:
  """What to do when the tfds data of `dataset` is not under data_dir: prepare it elsewhere and copy it."""
  name = SOURCES[dataset].tfds_name
  where = repr(data_dir) if data_dir else "unset (tfds' default, $TFDS_DATA_DIR or ~/tensorflow_datasets)"
  message = (f"config.data.dataset = {dataset!r}: the tfds dataset {name!r} is not prepared under "
             f"config.data.data_dir = {where} (looked for {searched}). Training never downloads. ")
  if SOURCES[dataset].manual_download:
    return message + (
        f"{name!r} needs a manual download: make data256x256.tar with the dataset tool of "
        "https://github.com/tkarras/progressive_growing_of_gans, put it in MANUAL_DIR, and on any machine run "
        f"`python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', data_dir='DIR')"
        ".download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir='MANUAL_DIR'))\"`; "
        "then copy DIR to the machine that trains and pass --config.data.data_dir=DIR.")
  return message + (
      "On a machine with internet run "
      f"`python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', data_dir='DIR')"
      f".download_and_prepare()\"` (or `tfds build {name} --data_dir DIR`), then copy DIR to the machine "
      "that trains and pass --config.data.data_dir=DIR.")


def import_tfds_without_gpus():
  """tensorflow_datasets, with tensorflow kept off the GPUs so that it does not reserve their memory."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # tensorflow already initialised its devices (e.g. by a summary writer) - nothing to do
    pass
  return tfds


def image_of(example: dict):
  """The image of a tfds example (a named function: autograph cannot read a lambda's source)."""
  return example["image"]


def tfds_builder(dataset: str, data_dir: str | None):
  """(tfds, the builder of `dataset` under data_dir), checked to be prepared: NotPrepared (a
  FileNotFoundError) otherwise. tfds' own warnings about the folder it searched (a version folder without
  dataset_info.json) go to the log file only: the message raised here says more, and alone."""
  tfds = import_tfds_without_gpus()
  with console.library_warnings_in_log():
    builder = tfds.builder(SOURCES[dataset].tfds_name, data_dir=data_dir)
    prepared = builder.is_prepared()
  if not prepared:
    raise NotPrepared(not_prepared_message(dataset, data_dir, str(builder.data_path)))
  return tfds, builder


def tfds_examples(dataset: str, split: str, data_dir: str | None, process_index: int, process_count: int):
  """(tfds, the unread tf.data examples of this process's part of a prepared split, in file order)."""
  tfds, builder = tfds_builder(dataset, data_dir)
  part = tfds.even_splits(split, n=process_count)[process_index]
  return tfds, builder.as_dataset(split=part, shuffle_files=False)


def examples_info(dataset: str, split: str, data_dir: str | None, process_index: int, process_count: int):
  """The dataset info's record (`.num_examples`) of this process's part of a prepared split."""
  tfds, builder = tfds_builder(dataset, data_dir)
  return builder.info.splits[tfds.even_splits(split, n=process_count)[process_index]]


def tfds_part(dataset: str, split: str, data_dir: str | None, process_index: int, process_count: int,
              transform: ChunkTransform) -> np.ndarray:
  """This process's part of a prepared tfds split, read in file order: (n, h, w, C) uint8."""
  tfds, examples = tfds_examples(dataset, split, data_dir, process_index, process_count)
  chunks = examples.map(image_of).batch(READ_CHUNK).prefetch(1)
  num_examples = int(examples.cardinality())
  if num_examples < 0:  # unknown size: collect the chunks, then join them
    return np.concatenate([transform(chunk) for chunk in tfds.as_numpy(chunks)])
  # Known size: fill one preallocated array, so peak memory is the kept images plus one chunk.
  kept = None
  start = 0
  for chunk in tfds.as_numpy(chunks):
    chunk = transform(chunk)
    if kept is None:
      kept = np.empty((num_examples,) + chunk.shape[1:], np.uint8)
    kept[start:start + len(chunk)] = chunk
    start += len(chunk)
  if kept is None or start != num_examples:
    raise ValueError(f"config.data.split = {split!r} of {dataset!r} gave {start} images to process "
                     f"{process_index} of {process_count}, expected {num_examples} (> 0).")
  return kept

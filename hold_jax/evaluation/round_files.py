"""Resumable rounds: the one driver of the evaluations that take hours, and their round files.

The NLL bound (hold_jax/evaluation/nll_rounds.py) and the image metrics (hold_jax/evaluation/image_quality.py)
both run `in_rounds`: items 0..N-1 in rounds of R consecutive indices, each finished round written to the
workdir atomically with a SHA-256 of its arrays, so a job killed at any moment resumes at the first round without
a valid file and ends with the numbers of an uninterrupted one. A file is used only if it exists, holds the
expected names with the expected number of rows, and its checksum matches; anything else is computed again,
never silently used.
"""
from __future__ import annotations

import hashlib
import io
import math
from typing import Callable

import jax
import numpy as np
from absl import logging
from etils import epath

from hold_jax import multihost
from hold_jax.data import npz_files

_CHECKSUM = "sha256"


def digest(arrays: dict[str, np.ndarray]) -> str:
  """SHA-256 over the names, dtypes, shapes and bytes of `arrays`, in name order."""
  hasher = hashlib.sha256()
  for name in sorted(arrays):
    array = np.ascontiguousarray(arrays[name])
    hasher.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
    hasher.update(array.tobytes())
  return hasher.hexdigest()


def write(path, arrays: dict[str, np.ndarray]) -> None:
  """Writes `arrays` (a temporary file renamed into place) with their checksum."""
  arrays = {name: np.asarray(value) for name, value in arrays.items()}
  if _CHECKSUM in arrays:
    raise ValueError(f"A round file cannot hold an array named {_CHECKSUM!r}: the checksum uses that name.")
  npz_files.write_npz_atomic(path, {**arrays, _CHECKSUM: np.asarray(digest(arrays))})


def read(path, names: tuple[str, ...], num_rows: int) -> dict[str, np.ndarray] | None:
  """The arrays `names` of a valid round file: it exists, holds exactly those names, each array with ndim >= 1
  has num_rows rows, and the checksum matches. None otherwise (with a warning when a file is there but bad)."""
  path = epath.Path(path)
  if not path.exists():
    return None
  try:
    with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as archive:
      stored = {name: archive[name] for name in archive.files}
  except Exception as error:  # pylint: disable=broad-except  (any unreadable file is computed again)
    logging.warning("Round file %s cannot be read (%s); it is computed again.", path, error)
    return None
  checksum = str(stored.pop(_CHECKSUM, ""))
  problem = None
  if set(stored) != set(names):
    problem = f"it holds {sorted(stored)}, not {sorted(names)}"
  elif any(value.ndim >= 1 and len(value) != num_rows for value in stored.values()):
    problem = f"its arrays do not all have {num_rows} rows"
  elif checksum != digest(stored):
    problem = "its checksum does not match its contents"
  if problem is not None:
    logging.warning("Round file %s is not used (%s); it is computed again.", path, problem)
    return None
  return stored


Arrays = dict[str, np.ndarray]


def in_rounds(directory: epath.Path, stem: str, num_items: int, round_size: int, names: tuple[str, ...],
              compute: Callable[[int, int], Arrays],
              after_round: Callable[[Arrays, int, int, int, int], None] | None = None) -> list[Arrays]:
  """The arrays of every round, in order: round r covers items [r R, min((r + 1) R, N)), R = round_size.

  A round whose file directory/<stem><r>.npz is valid on every process is read; otherwise every process calls
  compute(first, last) (it may be collective: every process computes the round or none does), process 0
  writes the result, and all wait for it. When `names` include 'indices' the file must hold first..last-1.
  after_round(arrays, r, num_rounds, last, computed) runs after each round with its arrays (`computed`: rounds
  computed so far, not read), for progress lines.
  """
  num_rounds = math.ceil(num_items / round_size)
  found_rounds, computed = [], 0
  for round_index in range(num_rounds):
    first, last = round_index * round_size, min((round_index + 1) * round_size, num_items)
    path = directory / f"{stem}{round_index}.npz"
    found = read(path, names, last - first)
    if found is not None and "indices" in names and not np.array_equal(found["indices"], np.arange(first, last)):
      logging.warning("Round file %s holds other items than %d..%d; it is computed again.", path, first, last - 1)
      found = None
    if not multihost.on_every_process(found is not None):
      found = compute(first, last)
      if jax.process_index() == 0:
        write(path, found)
      multihost.barrier(f"round_{stem}{round_index}")
      computed += 1
    found_rounds.append(found)
    if after_round is not None:
      after_round(found, round_index, num_rounds, last, computed)
  return found_rounds

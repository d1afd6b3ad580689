"""Statistics and feature files as .npz: written atomically, read with a check of what they hold, and metadata
strings beside the arrays (hold_jax/evaluation/statistics.py, reference_stats.py, fid.py and the jobs' sample and
round files use them)."""
from __future__ import annotations

import io
import zipfile
from typing import Callable

import numpy as np
from etils import epath

from hold_jax import report_files

ARRAY_KEYS = ("mu", "sigma", "n", "features")  # every other key of a statistics .npz is a metadata string



def write_npz_atomic(path, arrays: dict[str, np.ndarray]) -> epath.Path:
  """Writes `arrays` as an uncompressed .npz at `path` (local or gs://) so that readers never see half a file.

  The bytes go to a uniquely named temporary file next to `path`, which is then renamed onto it: a rename is
  atomic on a POSIX file system, and on GCS (copy + delete) the object appears only once complete. A failed
  write removes its temporary file. Returns the path.
  """
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  return report_files.write_bytes_atomic(path, buffer.getvalue())


def read_npz(path, select: Callable[[list[str]], list[str]] | None = None) -> dict[str, np.ndarray]:
  """The arrays of the .npz at `path` (local or gs://), read without pickles; ValueError when it is not one.

  select(names) -> the names to read (default all): members are read one by one from the open file, so a
  large unwanted array (the float samples `x` next to `pixels`) is never loaded.
  """
  path = epath.Path(path)
  try:
    with path.open("rb") as file, np.load(file, allow_pickle=False) as data:
      return {key: data[key] for key in (data.files if select is None else select(list(data.files)))}
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:  # missing, damaged, pickled, not an npz
    raise ValueError(f"{path} is not a readable .npz file ({type(error).__name__}: {error}).") from None


def metadata_arrays(metadata: dict) -> dict[str, np.ndarray]:
  """{key: 0-d unicode array}: metadata values stored as strings, readable without allow_pickle."""
  clashes = sorted(set(metadata) & set(ARRAY_KEYS))
  if clashes:
    raise ValueError(f"Metadata keys {clashes} clash with the statistics arrays {list(ARRAY_KEYS)}.")
  return {key: np.asarray(str(value)) for key, value in metadata.items()}


def metadata_of(arrays: dict[str, np.ndarray]) -> dict[str, str]:
  """The metadata strings of a statistics .npz: its 0-d string entries other than the statistics arrays."""
  return {key: str(value[()]) for key, value in arrays.items()
          if key not in ARRAY_KEYS and value.ndim == 0 and value.dtype.kind == "U"}

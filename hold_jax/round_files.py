"""Round files of resumable evaluations: one round's results, written atomically with a SHA-256 of their bytes.

Both evaluations (the NLL bound in hold_jax/evaluate.py, sample quality in hold_jax/quality.py) work in rounds
and write each finished round to the workdir, so a job killed at any moment resumes at the first round
without a valid file. A file is used only if it exists, holds the expected names with the expected number of
rows, and its checksum matches; anything else is recomputed, never silently used.
"""
from __future__ import annotations

import hashlib
import io

import numpy as np
from absl import logging
from etils import epath

from hold_jax.metrics import npz_files

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

"""Kinds of damage to one orbax checkpoint step directory, for benchmarks/fault_injection.py and the tests.

Each kind is a function damage(step_dir) that changes files in place: a file deleted, truncated to half,
overwritten with random bytes of the same length, or a few bytes flipped inside the array data (the silent
kind: the files still decode), or the checksum record rewritten without its checksums or with a shape that
disagrees with the array metadata.
"""
from __future__ import annotations

import json
import os
import pathlib

import numpy as np


def _largest(step_dir: pathlib.Path, pattern: str) -> pathlib.Path:
  files = [path for path in step_dir.glob(pattern) if path.is_file()]
  if not files:
    raise FileNotFoundError(f"no file matches {pattern} in {step_dir}")
  return max(files, key=lambda path: path.stat().st_size)


def _delete(path: pathlib.Path) -> None:
  path.unlink()


def _truncate(path: pathlib.Path) -> None:
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])


def _garbage(path: pathlib.Path) -> None:
  size = max(path.stat().st_size, 16)
  path.write_bytes(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())


def _flip(path: pathlib.Path, count: int = 4) -> None:
  """Flips one bit in each of `count` bytes spread over the file's second half (past any header)."""
  data = bytearray(path.read_bytes())
  positions = np.linspace(len(data) // 2, len(data) - 1, count).astype(int)
  for position in positions:
    data[position] ^= 0x10
  path.write_bytes(bytes(data))


def _edit_record(step_dir, change) -> None:
  """Rewrites the step's checksum record (JSON) after change(record) edits it in place."""
  path = pathlib.Path(step_dir) / FILES["checksum record"]
  record = json.loads(path.read_text())
  change(record)
  path.write_text(json.dumps(record))


def _drop_arrays(record: dict) -> None:
  del record["arrays"]


def _change_a_shape(record: dict) -> None:
  """The first recorded shape with one more row: the record and the array metadata now disagree."""
  path = next(name for name, shape in record["shapes"].items() if shape)
  record["shapes"][path] = [record["shapes"][path][0] + 1] + record["shapes"][path][1:]


# name -> (glob of the file inside the step directory, what to do to the largest match)
FILES = {
    "array data": "default/**/d/*",
    "array metadata": "default/_METADATA",
    "ocdbt manifest": "default/manifest.ocdbt",
    "step metadata": "_CHECKPOINT_METADATA",
    "checksum record": "checksums/metadata",
}
ACTIONS = {"deleted": _delete, "truncated": _truncate, "garbage": _garbage}


def kinds() -> dict[str, callable]:
  """{'array data truncated': damage(step_dir), ...}: every file x action, plus flipped bytes in the data."""
  result = {}
  for file_name, pattern in FILES.items():
    for action_name, action in ACTIONS.items():
      result[f"{file_name} {action_name}"] = (
          lambda step_dir, pattern=pattern, action=action: action(_largest(pathlib.Path(step_dir), pattern)))
  result["array data bytes flipped"] = lambda step_dir: _flip(_largest(pathlib.Path(step_dir), FILES["array data"]))
  result["checksum record without arrays"] = lambda step_dir: _edit_record(step_dir, _drop_arrays)
  result["checksum record shape changed"] = lambda step_dir: _edit_record(step_dir, _change_a_shape)
  result["step directory emptied"] = lambda step_dir: [os.remove(path) for path in pathlib.Path(step_dir).rglob("*")
                                                      if path.is_file()]
  return result

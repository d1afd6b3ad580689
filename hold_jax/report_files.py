"""The files a job leaves in a workdir's samples/ and eval/: names that carry a hash of the settings that made
them, and JSON reports written whole or not at all.

A file is named `<readable part>_<canonical_hash of its settings>`, so a run with any other setting that changes
the contents writes a new file instead of replacing an earlier one, and the same settings write the same name
again (hold_jax/sampling/sample_job.py, nll_rounds.py and image_quality.py say which settings each of their files
hashes).
"""
from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import numpy as np
from etils import epath


def canonical_hash(value: Any) -> str:
  """8 hex digits of SHA-256 over the canonical JSON of `value` (sorted keys, no spaces), so that the same
  settings give the same digits in any field order and on any machine."""
  text = json.dumps(value, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode()).hexdigest()[:8]


def write_bytes_atomic(path, data: bytes) -> epath.Path:
  """Writes `data` at `path` (local or gs://) so that readers never see half a file: the bytes go to a uniquely
  named temporary file next to `path`, which is then renamed onto it (atomic on a POSIX file system; on GCS the
  object appears only once complete). A failed write removes its temporary file. Returns the path."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  temporary = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
  try:
    temporary.write_bytes(data)
    temporary.replace(path)
  except BaseException:
    if temporary.exists():
      temporary.unlink()
    raise
  return path


def write_json_atomic(path, report: dict[str, Any]) -> epath.Path:
  """Writes `report` as indented JSON at `path` with write_bytes_atomic; the text is made first, so an
  unserialisable value writes nothing. Returns the path."""
  return write_bytes_atomic(path, json.dumps(report, indent=2, default=json_default).encode())


def json_default(value: Any):
  if isinstance(value, (np.integer, np.floating)):
    return value.item()
  if isinstance(value, tuple):
    return list(value)
  raise TypeError(f"{type(value).__name__} is not JSON serialisable")

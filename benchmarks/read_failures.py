"""Failures of a checkpoint read that are not damage, injected where orbax raises them, for
benchmarks/fault_injection.py and tests/test_shared_workdir.py.

ERRORS maps a name to (make_error, the kind checkpoint_integrity.classify must give it). Each error is made the
way the library raises it (tensorstore's status codes inside orbax's generic Exception, XLA's
RESOURCE_EXHAUSTED, OSError subclasses). Run as a script, this module patches CheckpointManager.restore to raise
one of them and then runs hold_jax.main with the remaining arguments:

  python benchmarks/read_failures.py 'storage timeout' --config configs/toy2d.py:local --workdir W
"""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _wrapped(status: str) -> Exception:
  """As orbax raises a failed array read: tensorstore's status, the cause of a generic Exception."""
  wrapper = Exception("Encountered error while reading array index: (slice(0, 32, 1),).")
  wrapper.__cause__ = ValueError(status)
  return wrapper


def _errors():
  from hold_jax.workdir import checkpoint_integrity as integrity  # pylint: disable=g-import-not-at-top
  return {
      "host out of memory": (MemoryError, integrity.OUT_OF_MEMORY),
      "device out of memory": (lambda: ValueError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate "
                                                  "7516192768 bytes."), integrity.OUT_OF_MEMORY),
      "permission denied": (lambda: PermissionError(13, "Permission denied", "/run/checkpoints/40/default/d/x"),
                            integrity.PERMISSION),
      "bucket permission denied": (lambda: _wrapped("PERMISSION_DENIED: HTTP response code: 403"),
                                   integrity.PERMISSION),
      "storage timeout": (lambda: _wrapped('DEADLINE_EXCEEDED: Error reading "params.Dense_0.kernel/0.0" in OCDBT '
                                           'database at "gs://bucket/run/checkpoints/40/default/"'),
                          integrity.TRANSIENT),
      "connection reset": (lambda: ConnectionResetError(104, "Connection reset by peer"), integrity.TRANSIENT),
      "changed orbax API": (lambda: AttributeError("'PyTreeRestore' object has no attribute 'restore_args'"),
                            integrity.LIBRARY),
      "unknown error": (lambda: RuntimeError("something nobody foresaw"), integrity.UNKNOWN),
  }


def names() -> list[str]:
  return sorted(_errors())


def error(name: str) -> tuple:
  """(make_error, kind) of the failure `name`."""
  return _errors()[name]


def inject(name: str) -> None:
  """From now on, every CheckpointManager.restore in this process raises the failure `name`."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  make_error, _ = error(name)

  def restore(self, step, *args, **kwargs):
    del self, step, args, kwargs
    raise make_error()

  ocp.CheckpointManager.restore = restore


if __name__ == "__main__":
  sys.path.insert(0, ROOT)
  inject(sys.argv[1])
  sys.argv = ["hold_jax.main"] + sys.argv[2:]
  from hold_jax import main  # pylint: disable=g-import-not-at-top
  main.entry_point()

"""Stop requests: SIGTERM (what spot VMs, SLURM and Kubernetes send before a preemption), SIGINT (Ctrl-C) and
SIGUSR1 (SLURM's --signal warning, forwarded by launch/slurm_gpu.sbatch) make training save the step it has
reached and exit cleanly.

Every process must save the same step. In a multi-process job that step is agreed by jax's preemption sync
point, the library's mechanism that orbax's CheckpointManager.reached_preemption reads: jax.distributed
installs its own SIGTERM notifier, which tells the coordination service, which picks the step after the
furthest any process has reached. SIGINT and SIGUSR1 are turned into SIGTERM to this process so they take
the same path. A single process has no one to agree with, with or without jax.distributed; there the signal
handler's flag is the request. (Through the library a single fast-stepping process could miss the sync step:
it is set in the background to the furthest step reported plus one, which the training loop may already
have passed.) A second SIGINT in a single process stops at once (KeyboardInterrupt), after
the saves already started have finished.
"""
from __future__ import annotations

import os
import signal
from typing import Callable

from absl import logging

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def library_sync_available() -> bool:
  """True when several processes run jax.distributed with a preemption sync manager (the coordination
  service's agreement)."""
  try:
    import jax  # pylint: disable=g-import-not-at-top
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  return (getattr(distributed.global_state, "preemption_sync_manager", None) is not None
          and jax.process_count() > 1)


class StopRequests:
  """Installs the handlers on entry and restores the previous ones on exit (use as a context manager).

  should_stop(step) is called once after every train step, with the number of steps done, on every process;
  it is True on every process at the same step once any of them received a signal.
  """

  def __init__(self, reached_sync_point: Callable[[int], bool]):
    self._reached_sync_point = reached_sync_point
    self._use_library = library_sync_available()
    self._previous = {}
    self.received: str | None = None

  def _record(self, signum, frame) -> None:
    del frame
    name = signal.Signals(signum).name
    if self.received is not None and not self._use_library and signum == signal.SIGINT:
      raise KeyboardInterrupt(f"second {name}: stopping without a final save")
    self.received = self.received or name
    logging.warning("Received %s: training will save the current step and stop.", name)
    if self._use_library and signum != signal.SIGTERM:
      os.kill(os.getpid(), signal.SIGTERM)  # jax's notifier listens for SIGTERM only

  def __enter__(self) -> "StopRequests":
    for signum in SIGNALS:
      if self._use_library and signum == signal.SIGTERM:
        continue  # left to jax.distributed's notifier
      self._previous[signum] = signal.signal(signum, self._record)
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def should_stop(self, step: int) -> bool:
    if self._use_library:
      if self._reached_sync_point(step):
        self.received = self.received or "SIGTERM"
        return True
      return False
    return self.received is not None

"""Stop requests: SIGTERM (what spot VMs, SLURM and Kubernetes send before a preemption), SIGINT (Ctrl-C) and
SIGUSR1 (SLURM's --signal warning, forwarded by launch/slurm_gpu.sbatch) make training save the step it has
reached and exit cleanly.

Every process must save the same step. In a multi-process job that step is agreed by jax's preemption sync
point, the library's mechanism that orbax's CheckpointManager.reached_preemption reads: jax.distributed
installs its own SIGTERM notifier, which tells the coordination service, which picks the step after the
furthest any process has reached. SIGINT and SIGUSR1 are turned into SIGTERM to this process so they take
the same path. A multi-process job where that agreement cannot work is refused at the start
(PreemptionSyncUnavailable), never left to per-process flags. A single process has no one to agree with,
with or without jax.distributed; there the signal handler's flag is the request. (Through the library a
single fast-stepping process could miss the sync step: it is set in the background to the furthest step
reported plus one, which the training loop may already have passed.) A second SIGINT in a single process
stops at once (SecondInterrupt), after the saves already started have finished.

Outside the training loop (imports, start-up, restoring, sampling, evaluation) the same signals end the
command at once with one line and status 0 (exit_on_signals): there is nothing to save there, and evaluation
rounds already on disk resume.
"""
from __future__ import annotations

import os
import signal
from typing import Callable

from absl import logging

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class SecondInterrupt(KeyboardInterrupt):
  """A second SIGINT while training saves and stops: stop at once (hold_jax.main says so in one line)."""


def exit_on_signals(what_is_kept: str) -> None:
  """Until training's StopRequests takes over (and after it hands back): SIGTERM, SIGINT and SIGUSR1 end the
  command at once with one line on stdout, `hold_jax: stopped by SIGTERM; <what_is_kept>`, and exit status 0,
  the status of training's clean stop. For the phases with nothing to save (imports, start-up, restoring,
  sampling, evaluation, whose rounds are written atomically and resume), where the default handlers would print
  a KeyboardInterrupt traceback or end the process with status -15. SystemExit unwinds the stack, so open
  managers are closed and saves already started complete. Several processes leave SIGTERM to jax.distributed's
  preemption notifier, which must see it."""
  import jax  # pylint: disable=g-import-not-at-top  (jax is imported by now wherever this is called)

  stopping = []

  def stop(signum, frame) -> None:
    del frame
    if stopping:  # a second signal while the first unwinds (closing managers, finishing saves): already stopping
      return
    stopping.append(signum)
    print(f"hold_jax: stopped by {signal.Signals(signum).name}; {what_is_kept}", flush=True)
    raise SystemExit(0)

  multi_process = jax.process_count() > 1
  for signum in SIGNALS:
    if not (multi_process and signum == signal.SIGTERM):
      signal.signal(signum, stop)


class PreemptionSyncUnavailable(ValueError):
  """A multi-process job without jax's preemption agreement: its processes could save different steps."""


def library_sync_available() -> bool:
  """True when several processes must agree on the stop step through jax's preemption sync point.

  Only public JAX APIs are read (jax.process_count, jax.distributed.is_initialized, the
  jax_enable_preemption_service option). With several processes there is no safe fallback: per-process
  signal flags would let processes stop, and save, at different steps. So a multi-process job where the
  agreement cannot work is refused here, naming the JAX version and the fix, instead of degrading silently.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return False
  try:
    initialized = jax.distributed.is_initialized()
    service = bool(jax.config.jax_enable_preemption_service)
  except AttributeError as error:
    raise PreemptionSyncUnavailable(
        f"jax {jax.__version__} lacks a public API that multi-process preemption needs ({error}): install the "
        "jax version of requirements.txt.") from None
  if not initialized or not service:
    raise PreemptionSyncUnavailable(
        f"{jax.process_count()} processes run without jax's preemption sync (jax {jax.__version__}: "
        f"jax.distributed initialized = {initialized}, jax_enable_preemption_service = {service}), so a stop "
        "signal could make them save different steps: pass --distributed to hold_jax.main (it calls "
        "jax.distributed.initialize(); docs/multihost.md) and leave JAX_ENABLE_PREEMPTION_SERVICE on.")
  return True


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
      raise SecondInterrupt(f"second {name}: stopping without a final save")
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

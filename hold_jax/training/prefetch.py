"""Overlapping input with compute: local batches built ahead on a host thread, placed while a step runs.

Works with any stream whose `local_batch(step)` is a pure function of the step (points or images), so
prefetching changes when a batch is built, never what it holds.
"""
from __future__ import annotations

import queue
import threading
from typing import Iterator, Protocol

import jax
import numpy as np

# How often a blocked producer looks up to see whether the consumer has gone.
_POLL_SECONDS = 0.05


class LocalBatches(Protocol):

  def local_batch(self, step: int) -> np.ndarray:
    """This process's share of the global batch of `step`."""


def prefetch_global_batches(stream: LocalBatches, start_step: int, stop_step: int, sharding: jax.sharding.Sharding,
                            global_shape: tuple[int, ...], buffer_size: int = 2) -> Iterator[tuple[int, jax.Array]]:
  """Yields (step, global batch) for step in range(start_step, stop_step), in order.

  A daemon thread computes stream.local_batch for up to buffer_size steps ahead into a bounded queue; the
  global array (global_shape, sharded by `sharding`) is assembled with
  jax.make_array_from_process_local_data when the consumer asks for it, which in a loop of asynchronously
  dispatched train steps is while the previous step still runs. Breaking out of the loop, or closing the
  generator, stops and joins the thread; an exception in local_batch is raised here, at its step.
  """
  if buffer_size < 1:
    raise ValueError(f"buffer_size = {buffer_size} must be at least 1.")
  ready: queue.Queue = queue.Queue(maxsize=buffer_size)
  stop = threading.Event()

  def offer(item) -> bool:
    """Puts item unless the consumer has gone; False when it has."""
    while not stop.is_set():
      try:
        ready.put(item, timeout=_POLL_SECONDS)
        return True
      except queue.Full:
        pass
    return False

  def produce():
    for step in range(start_step, stop_step):
      try:
        item = (step, stream.local_batch(step), None)
      except BaseException as error:  # pylint: disable=broad-except  (re-raised in the consumer)
        offer((step, None, error))
        return
      if not offer(item):
        return

  worker = threading.Thread(target=produce, name=f"prefetch_local_batches[{start_step}:{stop_step}]", daemon=True)
  worker.start()
  try:
    for _ in range(start_step, stop_step):
      step, local, error = ready.get()
      if error is not None:
        raise error
      yield step, jax.make_array_from_process_local_data(sharding, local, global_shape)
  finally:
    stop.set()
    worker.join()

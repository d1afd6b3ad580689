"""Whether a job's batches and samples fit in memory, checked before they are computed: a count that cannot fit
is a ValueError naming the field, what it needs, what is free and the count that fits, never XLA's
'Out of memory allocating 54400001232 bytes' after the job has compiled and started.

Three checks, from the cheapest:

1. From shapes and counts alone (`check_sampling`, before the checkpoint is read; `sampling_check`, the pure
   part): the samples (num_samples, *data_shape) float32 are held RESULT_COPIES times on the host at the peak,
   and a batch's state u (batch, order, *data_shape) float32 STATE_COPIES times on its device (see the
   constants). The network's activations are left out: they are most of a batch's memory (XLA's count for the
   toy's score MLP: 544 bytes per sample at width 32 and 3,124 at width 128, against 24 for u of order 3) but
   shapes alone do not give them. So this check is a lower bound: it refuses only counts that cannot fit with
   any network, and costs nothing.
2. XLA's own count (`check_compiled`, before a compiled program runs: every batch of data_parallel.generate, the
   first train step): the bytes of the program's temporaries and outputs (memory_analysis), network included.
   jax caches the compilation, so the call that follows reuses it: the check costs no second compile.
3. An allocation that fails all the same (another process took the memory meanwhile; an allocator's
   fragmentation): `out_of_memory_named` turns XLA's RESOURCE_EXHAUSTED into the same one-line ValueError.

Free memory: an accelerator's own (jax's memory_stats(): bytes_limit - bytes_in_use); a CPU device has none
(memory_stats() is None) and its buffers are the host's, whose free memory is /proc/meminfo's MemAvailable
(what can be allocated without swapping), bounded by a cgroup v2 limit where one is set (containers), else the
physical memory (os.sysconf). Every CPU device of a process shares it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any, Iterator

import jax
import numpy as np

BYTES_PER_VALUE = 4  # float32: the samplers' and the training step's dtype (jax_enable_x64 off, as users run)

# The samples (N, *data_shape) on the host, at the peak: while drawing, every batch's result and their
# concatenation (2); while writing, the array, np.savez's in-memory file and its bytes (statistics.
# write_npz_atomic) (3).
RESULT_COPIES = 3

# The state u (batch, order, *data_shape) of one batch on its device: the scan's carry in and out, and a step's
# noise of the same shape (fixed_step_samplers); every sampler holds at least these three.
STATE_COPIES = 3

# The messages name a memory: 'cuda:0', 'cpu:0 (host memory)', 'the host'.
HOST = "host memory"
HOST_POOL = "the host"


@dataclasses.dataclass(frozen=True)
class Pool:
  """A memory that batches are checked against: `free` bytes at `name`; `share` is the part of a global batch
  (all devices of all processes) held there: 1 / device_count on an accelerator, local_device_count /
  device_count on the host of CPU devices; on_host: the host's memory, which the gathered samples share."""

  name: str
  free: int
  share: float = 1.0
  on_host: bool = False


def gib(num_bytes: float) -> str:
  """'7.2 GiB' (or MiB below 1 GiB, so that a small machine's numbers still differ)."""
  if num_bytes >= 2**30:
    return f"{num_bytes / 2**30:.1f} GiB"
  return f"{num_bytes / 2**20:.1f} MiB"


def about(count: float) -> str:
  """count rounded down to two significant digits, with thousands separators: 4,300,000."""
  count = int(count)
  if count < 100:
    return str(count)
  unit = 10 ** (len(str(count)) - 2)
  return f"{count // unit * unit:,}"


def require_fits(field: str, value: int, bytes_each: float, available: int, where: str, fixed: float = 0,
                 count: int | None = None, what: str = "", subject: str | None = None) -> None:
  """Raises the ValueError of a count that does not fit, unless fixed + count * bytes_each <= available.

  field = value is the setting to lower; count (default value) the examples it makes (the samples of a batch
  are min(batch_size, num_samples)); fixed the bytes needed whatever the count. The message says what fits,
  (available - fixed) / bytes_each, rounded down to two digits; `what` qualifies the need (' per batch') and
  `subject` replaces 'field = value' at the start.
  """
  need = fixed + (value if count is None else count) * bytes_each
  if need <= available:
    return
  fits = (available - fixed) // bytes_each if bytes_each > 0 else 0
  advice = f"at most ~{about(fits)} fits" if fits >= 1 else "not even one fits"
  raise ValueError(f"{subject or f'{field} = {value}'} needs about {gib(need)}{what} on {where}, which has "
                   f"{gib(max(available, 0))} available: {advice}; lower {field}.")


# ----------------------------------------------------------------------------------------------------------
# Free memory.


def _read_int(path: str) -> int | None:
  try:
    with open(path) as file:
      return int(file.read().split()[0])
  except (OSError, ValueError, IndexError):  # absent, 'max' (no limit), unreadable
    return None


def host_available_bytes() -> int | None:
  """What the host can still allocate: MemAvailable, within the cgroup's memory.max; None when unknown."""
  available = None
  try:
    with open("/proc/meminfo") as file:
      for line in file:
        if line.startswith("MemAvailable:"):
          available = int(line.split()[1]) * 1024
          break
  except (OSError, ValueError, IndexError):
    pass
  if available is None:
    try:
      available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
      return None
  limit, used = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
  if limit is not None and used is not None:
    available = min(available, max(limit - used, 0))
  return available


def host_pool() -> Pool | None:
  """The host's free memory (for the samples every process gathers), or None when unknown."""
  free = host_available_bytes()
  return None if free is None else Pool(HOST_POOL, free, on_host=True)


def device_pool(device: jax.Device | None = None) -> Pool | None:
  """The memory that a batch sharded over every device fills, seen from `device` (default this process's
  first): its own on an accelerator, the host's for CPU devices; None when unknown."""
  device = device or jax.local_devices()[0]
  name = f"{device.platform}:{device.id}"
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except  (a backend without the call: then the host's rules)
    stats = None
  if stats and "bytes_limit" in stats:
    return Pool(name, int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), 1 / jax.device_count())
  free = host_available_bytes()
  if free is None:
    return None
  return Pool(f"{name} ({HOST})", free, jax.local_device_count() / jax.device_count(), on_host=True)


# ----------------------------------------------------------------------------------------------------------
# 1. From shapes and counts.


def sampling_check(num_samples: int | None, batch_size: int, order: int, data_shape: tuple[int, ...],
                   batch_pool: Pool | None, result_pool: Pool | None) -> None:
  """The lower-bound check of drawing num_samples (None: one batch only) in batches of batch_size, each
  sample's state (order, *data_shape), against the free memory of batch_pool (where a batch is computed) and
  result_pool (the host, where the samples are gathered); a pool that is None is not checked.

  A batch of b = min(batch_size, num_samples) samples needs b * share * (STATE_COPIES * order + 1) *
  prod(data_shape) * 4 bytes in batch_pool (its share of u three times, and the output x); the samples need
  num_samples * RESULT_COPIES * prod(data_shape) * 4 bytes on the host, plus the batch's when the batches are
  computed in host memory (CPU devices).
  """
  values = int(np.prod(data_shape, dtype=np.int64))
  batch = batch_size if num_samples is None else min(batch_size, num_samples)
  batch_each = (STATE_COPIES * order + 1) * values * BYTES_PER_VALUE
  if batch_pool is not None:
    require_fits("sampling.batch_size", batch_size, batch_pool.share * batch_each, batch_pool.free, batch_pool.name,
                 count=batch, what=" per batch")
  if num_samples is None or result_pool is None:
    return
  on_host = batch_pool is not None and batch_pool.on_host
  require_fits("sampling.num_samples", num_samples, RESULT_COPIES * values * BYTES_PER_VALUE, result_pool.free,
               result_pool.name, fixed=batch * batch_pool.share * batch_each if on_host else 0,
               what=" for the samples and one batch" if on_host else " for the samples")


def check_sampling(num_samples: int | None, batch_size: int, order: int, data_shape: tuple[int, ...]) -> None:
  """sampling_check against this machine's free memory (device_pool, host_pool)."""
  sampling_check(num_samples, batch_size, order, data_shape, device_pool(), host_pool())


# ----------------------------------------------------------------------------------------------------------
# 2. XLA's count.


def compiled_bytes(compiled: Any, arguments_resident: bool = True) -> int | None:
  """The bytes one device allocates to run `compiled` (a jax Compiled): its temporaries and its outputs, less
  the outputs that reuse donated inputs, plus its inputs unless they are already on the device; None when
  the backend does not say (memory_analysis() is None or fails)."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  (not every backend implements it)
    return None
  if stats is None:
    return None
  need = stats.temp_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
  return int(need + (0 if arguments_resident else stats.argument_size_in_bytes))


COMPILED = " (XLA's count of the compiled program's buffers)"


def compiled_check(need_per_device: int, field: str, value: int, count: int, pool: Pool,
                   subject: str | None = None, what: str = COMPILED) -> None:
  """Refuses a program whose global batch of `count` examples (padded to the devices; the value of `field` or
  the part of it one call makes) needs need_per_device bytes on each device, when pool cannot hold its share.
  The count that fits is extrapolated linearly, which is close whenever the batch is what is too large."""
  need = need_per_device * pool.share * jax.device_count()  # devices sharing the pool: 1, or all local CPUs
  require_fits(field, value, need / count, pool.free, pool.name, count=count, subject=subject, what=what)


def check_compiled(jitted: Any, args: tuple, field: str, value: int, count: int | None = None,
                   arguments_resident: bool = True, subject: str | None = None, what: str = COMPILED) -> None:
  """Compiles jitted(*args) (abstract jax.ShapeDtypeStructs with their shardings, or the real arrays: jax
  keeps the compilation for the call that follows) and refuses it, naming field = value, when its buffers do
  not fit in device_pool(). count: the examples of the global batch (default value); arguments_resident:
  whether args are on the devices already (else their bytes count too). Nothing happens where the memory is
  unknown."""
  pool = device_pool()
  if pool is None:
    return
  need = compiled_bytes(jitted.lower(*args).compile(), arguments_resident)
  if need is not None:
    compiled_check(need, field, value, value if count is None else count, pool, subject, what)


def check_train_step(train_step: Any, abstract_state: Any, batch_shape: tuple[int, ...], batch_sharding: Any,
                     field: str = "training.batch_size") -> None:
  """check_compiled of the jitted train_step(state, batch) before the first step: abstract_state (jax.
  ShapeDtypeStructs with the state's sharding, as train.abstract_state gives) and a float32 batch of
  batch_shape (global_batch, *data_shape) laid out by batch_sharding, neither on the devices yet."""
  batch = jax.ShapeDtypeStruct(batch_shape, np.float32, sharding=batch_sharding)
  check_compiled(train_step, (abstract_state, batch), field, batch_shape[0], arguments_resident=False,
                 what=" per step (XLA's count of the compiled train step's buffers)")


# ----------------------------------------------------------------------------------------------------------
# 3. An allocation that fails all the same.


OUT_OF_MEMORY_TEXTS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory")


def is_out_of_memory(error: BaseException) -> bool:
  """XLA's failed allocation: RESOURCE_EXHAUSTED (GPU, TPU) or 'Out of memory allocating N bytes' (CPU, where
  the status may read INTERNAL once the error has crossed the dispatch)."""
  return isinstance(error, (jax.errors.JaxRuntimeError, MemoryError)) and (
      isinstance(error, MemoryError) or any(text in str(error) for text in OUT_OF_MEMORY_TEXTS))


@contextlib.contextmanager
def out_of_memory_named(field: str, subject: str) -> Iterator[None]:
  """Re-raises an out-of-memory error inside as a ValueError naming `field` (subject: what was too large)."""
  try:
    yield
  except (jax.errors.JaxRuntimeError, MemoryError) as error:
    if not is_out_of_memory(error):
      raise
    text = str(error)
    start = min([text.find(mark) for mark in OUT_OF_MEMORY_TEXTS if mark in text] or [0])
    detail = text[start:].strip().splitlines()[0][:160] if text.strip() else type(error).__name__
    raise ValueError(f"{subject} ran out of memory ({detail}); lower {field}.") from None


"""Multi-host plumbing in one place: the data-parallel mesh, gathering to every process, agreeing on a flag,
barriers, a process's share of indices, and padding a last batch.

Training, sampling and evaluation are data-parallel over one mesh axis, DATA_AXIS: a batch is split over every
device of every process. On one process every function here is a plain numpy operation, so the library runs
unchanged on a laptop; jax.experimental.multihost_utils is imported only where there are several processes.
"""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh, axis DATA_AXIS, over `devices` (default: every device of every process). jax.make_mesh orders
  the devices by the physical topology (on TPU slices, neighbours on the interconnect) rather than by id; the
  axis is 'Auto', so jit propagates the batch sharding itself."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading axis split over DATA_AXIS: how a batch is laid out."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """The same array on every device of `mesh`: how parameters are laid out."""
  return NamedSharding(mesh, PartitionSpec())


def process_share(num: int) -> np.ndarray:
  """The indices of this process's contiguous share of range(num); the shares' sizes differ by at most one."""
  return np.array_split(np.arange(num), jax.process_count())[jax.process_index()]


def all_processes(values: np.ndarray) -> np.ndarray:
  """(P, *shape): `values` of every process, stacked in process order (values[None] on one process). Every
  process must call it with the same shape: it is collective."""
  if jax.process_count() == 1:
    return np.asarray(values)[None]
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(values))


def to_host(array: jax.Array) -> np.ndarray:
  """A global array sharded over the mesh as one numpy array on every process (collective)."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(array))
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def on_every_process(flag: bool) -> bool:
  """True when `flag` holds on every process (collective): a file one host sees and another does not yet, on a
  shared file system with a delay, is then computed again by all rather than by some while the others wait."""
  return bool(np.all(all_processes(np.array(flag))))


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (nothing on one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f"hold_jax_{name}")


def pad_to_multiple(values: np.ndarray, multiple: int) -> np.ndarray:
  """values (n, ...) followed by copies of its last row up to a multiple of `multiple` rows (n >= 1): a last
  batch of the same shape as the others (one compile), its copies cut off again by the caller."""
  size = -(-len(values) // multiple) * multiple
  return np.concatenate([values, np.repeat(values[-1:], size - len(values), axis=0)])

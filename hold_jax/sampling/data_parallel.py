"""Data-parallel generation: a batch of sample ids sharded over every device of every process.

Sample k is drawn from the per-sample key fold_in(PRNGKey(seed), k) (hold_jax/sampling/samplers.py), so it depends
only on (seed, k): not on the batch it falls in, the device count or the number of hosts. A batch of ids is
padded to a multiple of the global device count with copies of its last id (one shape, one compile; the
copies are cut off again), laid out on the mesh's 'data' axis like the training batch, and the jitted sampler
runs on all devices at once. The samples come back to every process (an all-gather across hosts) so that
process 0 can write them and every process can compute features of its choice.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh

from hold_jax import memory_budget
from hold_jax import multihost


def shard_ids(ids: np.ndarray, mesh: Mesh) -> jax.Array:
  """The global id array (n,), identical on every process, as a jax.Array sharded over mesh axis 'data'."""
  sharding = multihost.batch_sharding(mesh)
  return jax.make_array_from_callback(ids.shape, sharding, lambda index: ids[index])


def generate(sampler: Callable, params: Any, rng: jax.Array, ids: np.ndarray, mesh: Mesh,
             batch_field: str = "sampling.batch_size") -> tuple[np.ndarray, int]:
  """(samples (len(ids), *data_shape), nfe) of sampler(params, rng, ids) run on every device of `mesh`.

  sampler is `samplers.make_sampler(..., return_nfe=True)`; nfe is the largest over the batch (it differs
  between samples only for the adaptive ODE solver). A batch too large for the devices' memory is a ValueError
  that names batch_field, the setting that made the batch: before it runs, from XLA's count of the compiled
  sampler's buffers (jax keeps that compilation for the call), or when an allocation fails all the same.
  """
  ids = np.asarray(ids, np.int32)
  global_ids = shard_ids(multihost.pad_to_multiple(ids, mesh.size), mesh)
  subject = f"{batch_field}: a batch of {len(ids):,} samples"
  if hasattr(sampler, "lower"):  # a jitted sampler; a plain function has nothing compiled to count
    memory_budget.check_compiled(sampler, (params, rng, global_ids), batch_field, len(ids), len(global_ids),
                                 subject=subject, what=" (XLA's count of the compiled sampler's buffers)")
  with memory_budget.out_of_memory_named(batch_field, subject):
    result = sampler(params, rng, global_ids)
    return multihost.to_host(result.x)[:len(ids)], int(jax.device_get(result.nfe))


def id_batches(start: int, stop: int, batch_size: int) -> Iterator[np.ndarray]:
  """Consecutive id ranges [start, stop) of at most batch_size ids."""
  for first in range(start, stop, batch_size):
    yield np.arange(first, min(first + batch_size, stop))

"""The price of HOLD on images: train-step time of order 3 against order 1 (VP) with the same
network and batch, plus steps/s and memory, for the digits and the local CIFAR-10 configs.

Each step is built as train.train builds it (one jit over a mesh of all devices, batch sharded, dropout on).
Order 1 and order 3 are timed in alternating rounds and compared by their medians, so a noisy, shared
machine moves both alike. Memory is XLA's plan for one compiled step (arguments + outputs + temporaries,
from `compiled.memory_analysis()`), and the device's peak bytes in use where the backend reports it (GPU).
Writes benchmarks/results/image_train_speed.json.

  python benchmarks/image_train_speed.py [--configs digits cifar10:local] [--orders 1 3] [--rounds 5] [--seconds 2]
      [--output F]
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from hold_jax import models, multihost  # noqa: E402
from hold_jax.data import input_pipeline  # noqa: E402
from hold_jax.process import sde as sde_lib  # noqa: E402
from hold_jax.training import optimization  # noqa: E402
from hold_jax.training import train  # noqa: E402
from hold_jax.workdir import trained_model  # noqa: E402

import common  # noqa: E402  (benchmarks/common.py)


def build_step(config, order):
  """(compiled step, state, batch) for config with sde.order = order; the batch is random data in [-1, 1]."""
  config = config.copy_and_resolve_references()
  config.sde.order = order
  shape = input_pipeline.data_shape(config.data)
  mesh = multihost.make_mesh()
  replicated, batch_sharding = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
  sde = sde_lib.from_config(config.sde)
  model = models.create_model(config.model, shape)
  optimizer = optimization.make_optimizer(config.optim, config.training.num_steps)
  blocks = trained_model.input_blocks(order, config.loss.parametrization)
  state = jax.device_put(train.init_state(model, shape, blocks, optimizer, config.seed), replicated)
  batch_size = config.training.batch_size
  batch = np.random.default_rng(0).uniform(-1, 1, (batch_size,) + shape).astype(np.float32)
  batch = jax.device_put(batch, batch_sharding)
  step = jax.jit(train.make_train_step(train.make_training_loss_fn(sde, model, config.loss), optimizer, config.ema),
                 in_shardings=(replicated, batch_sharding), out_shardings=(replicated, replicated))
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  print(f"{config.data.dataset} order {order}: compiled in {time.perf_counter() - start:.1f} s", flush=True)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  return compiled, state, batch, num_params


def seconds_per_step(compiled, state, batch, seconds):
  """Mean time of back-to-back steps over about `seconds` (the state is threaded through, as in training)."""
  state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds or count < 3:
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)  # else asynchronous dispatch queues steps for `seconds` of dispatching
    count += 1
  return (time.perf_counter() - start) / count, state


def memory_bytes(compiled):
  analysis = compiled.memory_analysis()
  if analysis is None:
    return None
  return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes)


def measure(name, orders, rounds, seconds):
  """One row of the table for config `name`; order 1 is the VP baseline of the ratio (when both are timed)."""
  config = common.load_config(name)
  built = {order: build_step(config, order) for order in orders}
  states = {order: built[order][1] for order in orders}
  times = {order: [] for order in orders}
  for _ in range(rounds):
    for order in orders:
      step_seconds, states[order] = seconds_per_step(built[order][0], states[order], built[order][2], seconds)
      times[order].append(step_seconds)
  median = {order: float(np.median(times[order])) for order in orders}
  stats = jax.devices()[0].memory_stats() or {}
  row = dict(config=name, batch=config.training.batch_size, params=int(built[orders[-1]][3]),
             device_peak_mb=stats.get("peak_bytes_in_use", 0) / 2**20 or None)
  for order in orders:
    row[f"order{order}_ms"] = 1e3 * median[order]
    row[f"order{order}_steps_per_s"] = 1.0 / median[order]
    row[f"order{order}_step_memory_mb"] = memory_bytes(built[order][0]) / 2**20
  if 1 in orders and 3 in orders:
    row["ratio"] = median[3] / median[1]
  print(json.dumps(row), flush=True)
  return row


def _cell(row, key, form):
  return format(row[key], form) if row.get(key) is not None else "n/a"


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--configs", nargs="+", default=["digits", "cifar10:local"])
  parser.add_argument("--orders", type=int, nargs="+", default=[1, 3], help="1 (VP) and/or 3 (HOLD)")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--seconds", type=float, default=2.0)
  parser.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                       "image_train_speed.json"))
  args = parser.parse_args()
  device = jax.devices()[0]
  rows = [measure(name, sorted(args.orders), args.rounds, args.seconds) for name in args.configs]
  print(f"device: {device.device_kind} ({jax.device_count()} x {device.platform})")
  print("| config | batch | params | VP step (ms) | HOLD step (ms) | HOLD / VP | HOLD steps/s | step memory VP / HOLD (MB) "
        "| device peak (MB) |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['config']} | {r['batch']} | {r['params']:,} | {_cell(r, 'order1_ms', '.1f')} | "
          f"{_cell(r, 'order3_ms', '.1f')} | {_cell(r, 'ratio', '.3f')} | {_cell(r, 'order3_steps_per_s', '.1f')} | "
          f"{_cell(r, 'order1_step_memory_mb', '.0f')} / {_cell(r, 'order3_step_memory_mb', '.0f')} | "
          f"{_cell(r, 'device_peak_mb', '.0f')} |")
  common.write_results(args.output, rows)


if __name__ == "__main__":
  main()

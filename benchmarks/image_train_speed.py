"""The price of HOLD on images (issue 4): train-step time of order 3 against order 1 (VP) with the same
network and batch, plus steps/s and memory, for the digits and the local CIFAR-10 configs.

Each step is built as train.train builds it (one jit over a mesh of all devices, batch sharded, dropout on).
Order 1 and order 3 are timed in alternating rounds and compared by their medians, so a noisy, shared
machine moves both alike. Memory is XLA's plan for one compiled step (arguments + outputs + temporaries,
from `compiled.memory_analysis()`), and the device's peak bytes in use where the backend reports it (GPU).
Writes benchmarks/results/image_train_speed.json.

  python benchmarks/image_train_speed.py [--configs digits cifar10:local] [--rounds 5] [--seconds 2]
"""
import argparse
import importlib
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from hold_jax import input_pipeline, models, sde as sde_lib, train  # noqa: E402


def load_config(name):
  module, _, variant = name.partition(":")
  return importlib.import_module(f"configs.{module}").get_config(variant)


def build_step(config, order):
  """(compiled step, state, batch) for config with sde.order = order; the batch is random data in [-1, 1]."""
  config = config.copy_and_resolve_references()
  config.sde.order = order
  shape = input_pipeline.data_shape(config.data)
  mesh = train.make_mesh()
  replicated, batch_sharding = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
  sde = sde_lib.from_config(config.sde)
  model = models.create_model(config.model, shape)
  optimizer = train.make_optimizer(config.optim, config.training.num_steps)
  state = jax.device_put(train.init_state(model, shape, order, optimizer, config.seed), replicated)
  batch_size = config.training.batch_size
  batch = np.random.default_rng(0).uniform(-1, 1, (batch_size,) + shape).astype(np.float32)
  batch = jax.device_put(batch, batch_sharding)
  step = jax.jit(train.make_train_step(train.make_training_loss_fn(sde, model, config.loss), optimizer, config.ema),
                 in_shardings=(replicated, batch_sharding), out_shardings=(replicated, replicated))
  compiled = step.lower(state, batch).compile()
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  return compiled, state, batch, num_params


def seconds_per_step(compiled, state, batch, seconds):
  """Mean time of back-to-back steps over about `seconds` (the state is threaded through, as in training)."""
  state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds or count < 3:
    state, metrics = compiled(state, batch)
    count += 1
  jax.block_until_ready(metrics)
  return (time.perf_counter() - start) / count, state


def memory_bytes(compiled):
  analysis = compiled.memory_analysis()
  if analysis is None:
    return None
  return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--configs", nargs="+", default=["digits", "cifar10:local"])
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--seconds", type=float, default=2.0)
  args = parser.parse_args()
  device = jax.devices()[0]
  rows = []
  for name in args.configs:
    config = load_config(name)
    built = {order: build_step(config, order) for order in (1, 3)}
    states = {order: built[order][1] for order in (1, 3)}
    times = {1: [], 3: []}
    for _ in range(args.rounds):
      for order in (1, 3):
        seconds, states[order] = seconds_per_step(built[order][0], states[order], built[order][2], args.seconds)
        times[order].append(seconds)
    median = {order: float(np.median(times[order])) for order in (1, 3)}
    stats = device.memory_stats() or {}
    rows.append(dict(config=name, batch=config.training.batch_size, params=int(built[3][3]),
                     order1_ms=1e3 * median[1], order3_ms=1e3 * median[3], ratio=median[3] / median[1],
                     order3_steps_per_s=1.0 / median[3], order1_step_memory_mb=memory_bytes(built[1][0]) / 2**20,
                     order3_step_memory_mb=memory_bytes(built[3][0]) / 2**20,
                     device_peak_mb=stats.get("peak_bytes_in_use", 0) / 2**20 or None))
  print(f"device: {device.device_kind} ({jax.device_count()} x {device.platform})")
  print("| config | batch | params | VP step (ms) | HOLD step (ms) | HOLD / VP | HOLD steps/s | step memory VP / HOLD (MB) "
        "| device peak (MB) |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    peak = f"{r['device_peak_mb']:.0f}" if r["device_peak_mb"] else "n/a"
    print(f"| {r['config']} | {r['batch']} | {r['params']:,} | {r['order1_ms']:.1f} | {r['order3_ms']:.1f} | "
          f"{r['ratio']:.3f} | {r['order3_steps_per_s']:.1f} | {r['order1_step_memory_mb']:.0f} / "
          f"{r['order3_step_memory_mb']:.0f} | {peak} |")
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "image_train_speed.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(dict(machine=platform.platform(), jax=jax.__version__, device=device.device_kind,
                   platform=device.platform, devices=jax.device_count(), rows=rows), f, indent=2)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()

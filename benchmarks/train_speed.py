"""Training-step time on the toy problem, against the network alone.

Times the full jitted train step (kernel, BCSM loss, backward, Adam, EMA) of the score MLP at ~50k
parameters and batch 512, and the network's forward+backward alone at the same batch, on whatever devices
JAX sees. The reference to halve: CLD-SGM's toy step, 3.7 ms (batch 512, 50k-parameter MLP, PyTorch, one CPU
thread on the project's machine). Writes benchmarks/results/train_speed.json.

  python benchmarks/train_speed.py [--width 88 --depth 2 --batch 512 --iters 300]
"""
import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from hold_jax import models, multihost  # noqa: E402
from hold_jax.configs import toy2d  # noqa: E402
from hold_jax.data import input_pipeline  # noqa: E402
from hold_jax.process import sde as sde_lib  # noqa: E402
from hold_jax.training import losses, optimization  # noqa: E402
from hold_jax.training import train  # noqa: E402
from hold_jax.workdir import trained_model  # noqa: E402

CLD_SGM_MS = 3.7


def seconds_per_call(fn, args, iters):
  result = fn(*args)
  jax.block_until_ready(result)
  start = time.perf_counter()
  for _ in range(iters):
    result = fn(*args)
  jax.block_until_ready(result)
  return (time.perf_counter() - start) / iters


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--width", type=int, default=88)
  parser.add_argument("--depth", type=int, default=2)
  parser.add_argument("--batch", type=int, default=512)
  parser.add_argument("--iters", type=int, default=300)
  args = parser.parse_args()
  config = toy2d.get_config()
  config.model.width, config.model.depth = args.width, args.depth
  sde = sde_lib.from_config(config.sde)
  model = models.create_model(config.model, (2,))
  optimizer = optimization.make_optimizer(config.optim, 1000)
  blocks = trained_model.input_blocks(sde.order, config.loss.parametrization)
  state = train.init_state(model, (2,), blocks, optimizer, 0)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  loss_fn = train.make_training_loss_fn(sde, model, config.loss)
  # The step as train.train builds it: one jit over a mesh of all devices, batch sharded on its data axis.
  mesh = multihost.make_mesh()
  replicated, batch_sharding = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
  step = jax.jit(train.make_train_step(loss_fn, optimizer, config.ema), in_shardings=(replicated, batch_sharding),
                 out_shardings=(replicated, replicated))
  state = jax.device_put(state, replicated)
  batch = jax.device_put(input_pipeline.create_stream(config.data, args.batch, 0).local_batch(0), batch_sharding)
  step_s = seconds_per_call(lambda s, b: step(s, b)[1]["loss"], (state, batch), args.iters)

  u = jax.random.normal(jax.random.PRNGKey(0), (args.batch, sde.order, 2))
  t = jax.random.uniform(jax.random.PRNGKey(1), (args.batch,), minval=sde.eps, maxval=sde.T)
  network = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, u, t) ** 2)))
  network_s = seconds_per_call(network, (state.params,), args.iters)
  perturb = jax.jit(lambda x, t: losses.perturb(sde, "bcsm", x, t, jax.random.PRNGKey(2))[0])
  perturb_s = seconds_per_call(perturb, (batch, t), args.iters)

  row = dict(params=int(num_params), batch=args.batch, train_step_ms=1e3 * step_s,
             network_fwd_bwd_ms=1e3 * network_s, kernel_and_perturb_ms=1e3 * perturb_s,
             step_over_network=step_s / network_s, step_over_cld_sgm=1e3 * step_s / CLD_SGM_MS)
  print(f"devices: {jax.devices()}")
  print("| params | batch | train step (ms) | network fwd+bwd (ms) | kernel + perturb (ms) | step / network | "
        "step / CLD-SGM 3.7 ms |")
  print("|---|---|---|---|---|---|---|")
  print(f"| {row['params']} | {row['batch']} | {row['train_step_ms']:.2f} | {row['network_fwd_bwd_ms']:.2f} | "
        f"{row['kernel_and_perturb_ms']:.2f} | {row['step_over_network']:.2f} | {row['step_over_cld_sgm']:.2f} |")
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "train_speed.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(dict(machine=platform.platform(), jax=jax.__version__, devices=[str(d) for d in jax.devices()],
                   **row), f, indent=2)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()

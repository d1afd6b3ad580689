"""Sample quality on the multimodal swiss roll from trained workdirs (issue 3 targets).

For each workdir (trained with configs/toy2d.py, any sde.order; its process is read from the workdir's
config.json), draws 10,000 samples from the latest EMA
parameters with each sampler at a given number of network evaluations (NFE = steps + 1 denoising step) and
reports the share within 0.01 of the noiseless spirals and the sliced Wasserstein-1 distance (256 random
directions) to 10,000 fresh data points. Writes benchmarks/results/toy2d_quality.json.

  python benchmarks/toy2d_quality.py --workdirs runs/toy2d_order3 [runs/toy2d_order2 ...] --nfe 50
"""
import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import toy2d  # noqa: E402
from hold_jax import input_pipeline, sample, train  # noqa: E402


def trained_config(workdir):
  """configs/toy2d.py with the `sde` section the workdir was trained with (its config.json)."""
  config = toy2d.get_config()
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise SystemExit(f"{path} not found: train the workdir with hold_jax.main, which writes it.")
  with open(path) as f:
    trained_sde = json.load(f)["sde"]
  for key, value in trained_sde.items():
    config.sde[key] = tuple(value) if isinstance(value, list) else value
  return config


def evaluate(workdir, method, grid, nfe, num_samples=10000):
  config = trained_config(workdir)
  order = config.sde.order
  config.sampling.method, config.sampling.grid = method, grid
  config.sampling.num_steps, config.sampling.denoise = nfe - 1, True
  config.sampling.num_samples = config.sampling.batch_size = num_samples
  params, step = train.load_ema_params(config, workdir, (2,))
  start = time.perf_counter()
  samples = sample.draw(config, params, (2,))
  seconds = time.perf_counter() - start
  data = input_pipeline.multimodal_swiss_roll(np.random.default_rng(12345), num_samples)
  finite = np.isfinite(samples).all(axis=1)
  within = float(np.mean(finite & (input_pipeline.spiral_distance(np.nan_to_num(samples, nan=1e3)) < 0.01)))
  sw1 = input_pipeline.sliced_wasserstein(samples, data) if finite.all() else float("inf")
  return dict(workdir=workdir, order=order, method=method, grid=grid, nfe=nfe, checkpoint_step=step,
              within_0_01=within, sliced_w1=sw1, finite_fraction=float(finite.mean()), seconds=seconds)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdirs", nargs="+", required=True)
  parser.add_argument("--nfe", nargs="+", type=int, default=[50])
  parser.add_argument("--methods", nargs="+", default=["lie_trotter", "euler_maruyama"])
  parser.add_argument("--grids", nargs="+", default=["quadratic", "uniform"])
  args = parser.parse_args()
  rows = [evaluate(w, m, g, n) for w in args.workdirs for n in args.nfe for m in args.methods for g in args.grids]
  print("| workdir | order | sampler | grid | NFE | within 0.01 | SW1 | finite | seconds |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['workdir']} | {r['order']} | {r['method']} | {r['grid']} | {r['nfe']} | {r['within_0_01']:.3f} | "
          f"{r['sliced_w1']:.4f} | {r['finite_fraction']:.3f} | {r['seconds']:.1f} |")
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "toy2d_quality.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(dict(machine=platform.platform(), jax=jax.__version__, rows=rows), f, indent=2)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()

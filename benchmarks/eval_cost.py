"""Where the time of a sample-quality evaluation goes: the sampler, the feature network, and everything else.

  python benchmarks/eval_cost.py [--workdir W] [--num_samples 1000] [--inception_samples 200] [--output FILE]

1. Throughput of the FID Inception port on 32x32 uint8 inputs (resized to 299 inside), per batch size:
   images/s, median of rounds after a compile. Seeded random weights (the published file is not needed for a
   speed measurement: the computation is the same).
2. A whole `--mode=eval` quality evaluation (hold_jax.evaluation.image_quality.evaluate_quality) of the digits
   workdir W (by default a 20-step digits:local run trained here), timed from outside: the seconds inside the sampler
   (data_parallel.generate, compiles included), inside the feature network (samples, reference images and
   baselines), and the rest (loading the checkpoint, metrics, round files, bookkeeping), each as a fraction of
   the evaluation's wall time. Twice per feature network: cold (reference statistics computed) and warm (read
   from the cache; fresh round files). Target: the rest under 5% of the evaluation.
"""
import argparse
import dataclasses
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from hold_jax.evaluation import image_features  # noqa: E402
from hold_jax.evaluation import image_quality  # noqa: E402
from hold_jax.evaluation.feature_networks import inception  # noqa: E402
from hold_jax.sampling import data_parallel  # noqa: E402
from hold_jax.training import train  # noqa: E402
from hold_jax.workdir import run_record  # noqa: E402


def random_weights_file(folder: str) -> tuple[str, str]:
  """An .npz of seeded random Inception weights in the published names and layouts, and its SHA-256."""
  path = os.path.join(folder, "random_inception.npz")
  np.savez(path, **inception.random_state_dict(0))
  with open(path, "rb") as file:
    return path, hashlib.sha256(file.read()).hexdigest()


def inception_throughput(weights: str, sha256: str, batch_sizes, rounds: int) -> list[dict]:
  network = inception.load_inception(weights, sha256)
  rows = []
  for batch_size in batch_sizes:
    images = np.random.default_rng(0).integers(0, 256, (batch_size, 32, 32, 3), dtype=np.uint8)
    started = time.perf_counter()
    jax.block_until_ready(network.apply(images))
    compile_s = time.perf_counter() - started
    times = []
    for _ in range(rounds):
      started = time.perf_counter()
      jax.block_until_ready(network.apply(images))
      times.append(time.perf_counter() - started)
    median = statistics.median(times)
    rows.append(dict(batch_size=batch_size, seconds_per_batch=round(median, 3),
                     images_per_s=round(batch_size / median, 1), first_call_s=round(compile_s, 2)))
    print(f"inception 32x32 | batch {batch_size} | {median:.3f} s | {batch_size / median:.1f} images/s | "
          f"first call {compile_s:.1f} s")
  return rows


class Timers:
  """Seconds spent inside data_parallel.generate and inside feature networks, installed by wrapping both."""

  def __init__(self):
    self.sampler = self.features = 0.0
    self._generate, self._load_network = data_parallel.generate, image_features.load_network

  def install(self):
    def generate(*args, **kwargs):
      started = time.perf_counter()
      try:
        return self._generate(*args, **kwargs)
      finally:
        self.sampler += time.perf_counter() - started

    def load_network(*args, **kwargs):
      network = self._load_network(*args, **kwargs)

      def features(images):
        started = time.perf_counter()
        try:
          return network.features(images)
        finally:
          self.features += time.perf_counter() - started

      return dataclasses.replace(network, features=features)

    data_parallel.generate, image_features.load_network = generate, load_network

  def remove(self):
    data_parallel.generate, image_features.load_network = self._generate, self._load_network


def timed_evaluation(config, workdir: str) -> dict:
  shutil.rmtree(os.path.join(workdir, "eval"), ignore_errors=True)  # fresh round files every time
  timers = Timers()
  timers.install()
  try:
    started = time.perf_counter()
    image_quality.evaluate_quality(config, workdir)
    total = time.perf_counter() - started
  finally:
    timers.remove()
  rest = total - timers.sampler - timers.features
  return dict(total_s=round(total, 2), sampler_s=round(timers.sampler, 2), features_s=round(timers.features, 2),
              rest_s=round(rest, 2), sampler_fraction=round(timers.sampler / total, 4),
              features_fraction=round(timers.features / total, 4), rest_fraction=round(rest / total, 4))


def evaluation_rows(workdir: str, num_samples: int, inception_samples: int, weights: str, sha256: str,
                    scratch: str) -> list[dict]:
  config = run_record.load_config(workdir)
  rows = []
  for network, count in (("digits", num_samples), ("inception", inception_samples)):
    evaluated = config.copy_and_resolve_references()
    evaluated.eval.metrics = ("fid", "kid", "is")
    evaluated.eval.feature_network = network
    evaluated.eval.inception_weights, evaluated.eval.inception_sha256 = weights, sha256
    evaluated.eval.num_samples, evaluated.eval.round_size = count, max(count // 4, 1)
    evaluated.eval.sampler_sweep = ()
    evaluated.eval.stats_cache_dir = os.path.join(scratch, f"stats_{network}")
    for cache in ("cold", "warm"):
      row = dict(feature_network=network, reference=cache, num_samples=count,
                 sampler=f"{config.sampling.method}:{config.sampling.grid}:{config.sampling.num_steps}",
                 **timed_evaluation(evaluated, workdir))
      rows.append(row)
      print(" | ".join(str(row[key]) for key in ("feature_network", "reference", "num_samples", "sampler", "total_s",
                                                 "sampler_s", "features_s", "rest_s", "rest_fraction")))
  return rows


def trained_digits_workdir(scratch: str) -> str:
  config = common.load_config("digits:local")
  config.training.num_steps = 20
  config.training.sample_every = 0
  workdir = os.path.join(scratch, "digits")
  train.train(config, workdir)
  return workdir


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", help="a trained digits workdir (copied; default: 20 steps of digits:local)")
  parser.add_argument("--num_samples", type=int, default=1000, help="samples of the digits-network evaluation")
  parser.add_argument("--inception_samples", type=int, default=200, help="samples of the Inception evaluation")
  parser.add_argument("--batch_sizes", type=int, nargs="+", default=[25, 100])
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "eval_cost.json"))
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as scratch:
    weights, sha256 = random_weights_file(scratch)
    throughput = inception_throughput(weights, sha256, args.batch_sizes, args.rounds)
    if args.workdir:  # a copy, so that the user's eval folder is left alone
      workdir = os.path.join(scratch, "workdir")
      shutil.copytree(args.workdir, workdir, ignore=shutil.ignore_patterns("eval", "samples"))
    else:
      workdir = trained_digits_workdir(scratch)
    print("network | reference | samples | sampler | total s | sampler s | features s | rest s | rest fraction")
    rows = evaluation_rows(workdir, args.num_samples, args.inception_samples, weights, sha256, scratch)
  common.write_results(args.output, rows, inception_throughput=throughput, workdir=args.workdir or "digits:local")


if __name__ == "__main__":
  main()

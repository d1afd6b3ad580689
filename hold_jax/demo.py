"""Sampling demo that needs no data and no training: a 2-D Gaussian mixture with its exact score.

  python -m hold_jax.demo --config configs/mixture_demo.py --workdir runs/exact_demo [--config.a.b=value]

The mixture's score under the forward process is known in closed form (`exact_scores.mixture_score`), so
the sampler can be run and judged before any network is trained: the share of samples within three
component standard deviations of a mode measures the sampler alone.
"""
from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from hold_jax import cli
from hold_jax import exact_scores
from hold_jax import plots
from hold_jax import sampling
from hold_jax import sde as sde_lib


def ring_means(num_components: int, radius: float) -> np.ndarray:
  """(num_components, 2) centres evenly spaced on a circle."""
  angles = 2 * np.pi * np.arange(num_components) / num_components
  return radius * np.stack([np.cos(angles), np.sin(angles)], axis=-1)


def sample_mixture(config, rng: jax.Array) -> tuple[np.ndarray, np.ndarray]:
  """Draws config.sampling.num_samples points; returns (samples (N, 2), means (K, 2))."""
  sde = sde_lib.from_config(config.sde)
  means = ring_means(config.data.num_components, config.data.radius)
  variance = config.data.component_std**2
  score_fn = lambda params, u, t: exact_scores.mixture_score(sde, u, t, jnp.asarray(means, u.dtype), variance)
  sampler = sampling.make_sampler(sde, score_fn, (2,), config.sampling)
  num, batch = config.sampling.num_samples, config.sampling.batch_size
  batches = [sampler(None, rng, jnp.arange(start, min(start + batch, num))) for start in range(0, num, batch)]
  return np.concatenate([np.asarray(b) for b in batches]), means


def mode_statistics(samples: np.ndarray, means: np.ndarray, component_std: float) -> dict[str, float]:
  """Share of samples within 3 std of their nearest centre, and how evenly the modes are covered."""
  distances = np.linalg.norm(samples[:, None, :] - means[None], axis=-1)
  nearest = distances.argmin(axis=1)
  on_mode = distances.min(axis=1) < 3 * component_std
  counts = np.bincount(nearest[on_mode], minlength=len(means))
  return {
      "on_mode_fraction": float(on_mode.mean()),
      "mode_share_min": float(counts.min() / max(counts.sum(), 1)),
      "mode_share_max": float(counts.max() / max(counts.sum(), 1)),
      "finite_fraction": float(np.isfinite(samples).all(axis=1).mean()),
  }


def run(config, workdir: str) -> dict[str, float]:
  """Samples the mixture, writes samples.npz, samples.png and metrics.json to workdir."""
  os.makedirs(workdir, exist_ok=True)
  samples, means = sample_mixture(config, jax.random.PRNGKey(config.seed))
  metrics = mode_statistics(samples, means, config.data.component_std)
  np.savez(os.path.join(workdir, "samples.npz"), samples=samples, means=means)
  title = (f"order {config.sde.order}, {config.sampling.method}, {config.sampling.num_steps} steps: "
           f"{100 * metrics['on_mode_fraction']:.1f}% on a mode")
  plots.scatter(os.path.join(workdir, "samples.png"), samples, title, markers=means,
                limit=1.6 * np.abs(means).max())
  with open(os.path.join(workdir, "metrics.json"), "w") as f:
    json.dump(metrics, f, indent=2)
  return metrics


def main(argv, config, workdir: str) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    sampling.check_settings(sde_lib.from_config(config.sde), config.sampling)
  except ValueError as error:
    print(f"{cli.PROGRAM}: error: {error}", file=sys.stderr)
    sys.exit(cli.USAGE_ERROR_STATUS)
  print(f"exact-score demo finished; outputs in {workdir}: {run(config, workdir)}")


def entry_point() -> None:
  """Its own flags, defined here rather than at import so that hold_jax.main's never meet them."""
  config = config_flags.DEFINE_config_file("config", None, "configs/mixture_demo.py or a config like it.",
                                           lock_config=True)
  workdir = flags.DEFINE_string("workdir", None, "Directory for samples.npz, samples.png and metrics.json.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(lambda argv: main(argv, config.value, workdir.value), flags_parser=cli.parse_flags)


if __name__ == "__main__":
  entry_point()

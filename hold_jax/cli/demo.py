"""Sampling demo that needs no data and no training: a 2-D Gaussian mixture with its exact score.

  python -m hold_jax.cli.demo --config configs/mixture_demo.py --workdir runs/exact_demo [--config.a.b=value]

The mixture's score under the forward process is known in closed form (`exact_scores.mixture_score`), so
the sampler can be run and judged before any network is trained: the share of samples within three
component standard deviations of a mode measures the sampler alone.

Every run writes <stem>.npz, <stem>.png and <stem>.json to the workdir, <stem> (`output_stem`) naming the
sampler, the order and a hash of everything that can change the samples, so that runs with other settings
(an order, a stochasticity, a seed, a mixture) sit side by side instead of replacing each other.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from hold_jax import plots
from hold_jax.cli import command_errors
from hold_jax.data import npz_files
from hold_jax.process import exact_scores
from hold_jax.process import sde as sde_lib
from hold_jax.sampling import samplers


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
  sampler = samplers.make_sampler(sde, score_fn, (2,), config.sampling)
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


def output_settings(config) -> dict[str, Any]:
  """What the demo's samples are a function of, as JSON values: the whole 'sampling', 'sde' and 'data' groups
  and the seed (with no checkpoint, the process and the mixture are settings of the run too)."""
  groups = {group: json.loads(config[group].to_json_best_effort()) for group in ("sampling", "sde", "data")}
  return {**groups, "seed": int(config.seed)}


def output_stem(settings: dict[str, Any]) -> str:
  """<method>_<grid>_<N>steps_order<n>_<hash> (ode_adaptive: ode_adaptive_<solver>_order<n>_<hash>) of
  `output_settings`; <hash> is 8 hex digits of SHA-256 over their canonical JSON without sampling.batch_size,
  which cannot change the samples (sample k's draws come from fold_in(PRNGKey(seed), k) in any batch)."""
  hashed = dict(settings, sampling={field: value for field, value in settings["sampling"].items()
                                    if field != "batch_size"})
  digest = hashlib.sha256(json.dumps(hashed, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:8]
  sampler = settings["sampling"]
  adaptive = sampler["method"] == "ode_adaptive"
  steps = sampler.get("ode_solver", "tsit5") if adaptive else f"{sampler['grid']}_{sampler['num_steps']}steps"
  return f"{sampler['method']}_{steps}_order{settings['sde']['order']}_{digest}"


def run(config, workdir: str) -> dict[str, float]:
  """Samples the mixture; writes <stem>.npz (samples, means, settings_json, config_json), <stem>.png (the
  settings as a text entry) and <stem>.json (metrics and settings) to workdir, each atomically."""
  os.makedirs(workdir, exist_ok=True)
  samples, means = sample_mixture(config, jax.random.PRNGKey(config.seed))
  metrics = mode_statistics(samples, means, config.data.component_std)
  settings = output_settings(config)
  path = os.path.join(workdir, output_stem(settings))
  settings_json = json.dumps(settings, sort_keys=True)
  npz_files.write_npz_atomic(path + ".npz", {"samples": samples, "means": means, "settings_json": settings_json,
                                              "config_json": config.to_json_best_effort()})
  title = (f"order {config.sde.order}, {config.sampling.method}, {config.sampling.num_steps} steps: "
           f"{100 * metrics['on_mode_fraction']:.1f}% on a mode")
  plots.scatter(path + ".png", samples, title, markers=means, limit=1.6 * np.abs(means).max(),
                metadata={"settings": settings_json})
  temporary = f"{path}.json.tmp-{os.getpid()}"
  with open(temporary, "w") as f:
    json.dump({"metrics": metrics, "settings": settings}, f, indent=2)
  os.replace(temporary, path + ".json")
  return metrics


def main(argv, config, workdir: str) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    samplers.settings_from_config(sde_lib.from_config(config.sde), config.sampling)
  except ValueError as error:
    print(f"{command_errors.PROGRAM}: error: {error}", file=sys.stderr)
    sys.exit(command_errors.USAGE_ERROR_STATUS)
  metrics = run(config, workdir)
  stem = os.path.join(workdir, output_stem(output_settings(config)))
  print(f"exact-score demo finished; {stem}.npz, .png and .json: {metrics}")


def entry_point() -> None:
  """Its own flags, defined here rather than at import so that hold_jax.main's never meet them."""
  config = config_flags.DEFINE_config_file("config", None, "configs/mixture_demo.py or a config like it.",
                                           lock_config=True)
  workdir = flags.DEFINE_string("workdir", None, "Directory for the samples (.npz), their plot (.png) and "
                                "metrics (.json), named by the settings.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(lambda argv: main(argv, config.value, workdir.value), flags_parser=command_errors.parse_flags)


if __name__ == "__main__":
  entry_point()

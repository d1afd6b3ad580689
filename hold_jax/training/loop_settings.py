"""config.training checked once: how long the loop runs, how big its global batch is, and how often it logs,
saves and draws a sample grid (the loop itself: hold_jax/training/train.py).

Kept apart from the loop so that the command line's config checks (hold_jax/cli/config_checks.py), which the
sampling and evaluation jobs run too, can check these fields without importing the training loop.
"""
from __future__ import annotations

import dataclasses

from hold_jax import field_checks


@dataclasses.dataclass(frozen=True)
class Settings:
  """config.training (configs/default.py), each count checked when made. The batch is global: split over every
  device of every host. For image data a grid of num_grid_samples images is drawn every sample_every steps (0:
none; hold_jax/sampling/sample_job.py)."""

  num_steps: int
  batch_size: int
  log_every: int = 100
  checkpoint_every: int = 10_000
  sample_every: int = 0
  num_grid_samples: int = 64

  def __post_init__(self):
    for field in ("num_steps", "batch_size", "log_every", "checkpoint_every"):
      field_checks.require_int(f"training.{field}", getattr(self, field), 1)
    field_checks.require_int("training.sample_every", self.sample_every, 0)
    field_checks.require_int("training.num_grid_samples", self.num_grid_samples, 1)


def settings_from_config(training_config) -> Settings:
  """config.training checked once into Settings; a field the config lacks keeps its default."""
  return field_checks.settings_of(Settings, training_config)

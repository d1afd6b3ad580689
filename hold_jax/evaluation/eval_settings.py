"""config.eval checked once into a frozen record, the `Settings` every metric of `--mode=eval` takes.

One record for the whole group, because the group is one: the NLL bound (nll_rounds.py) and the sample-quality
metrics (image_quality.py, point_quality.py) share its checkpoint, its seed and its rounds. The reports still
record config.eval itself and hash its fields as they are written there (quality_files.py), so that a report's
name depends on the configuration alone, never on this record's layout.
"""
from __future__ import annotations

import dataclasses

from hold_jax import field_checks
from hold_jax.evaluation import image_features
from hold_jax.evaluation import likelihood
from hold_jax.evaluation import quality_files
from hold_jax.evaluation import sampler_sweep

IMAGE_METRICS = quality_files.IMAGE_METRICS  # ('fid', 'kid', 'is')
POINT_METRICS = ("sw1",)  # point data's: the sliced Wasserstein-1 distance (hold_jax/evaluation/point_quality.py)
# What eval.metrics may name: the NLL bound, the image metrics and the point-set metrics.
METRICS = ("nll",) + IMAGE_METRICS + POINT_METRICS


@dataclasses.dataclass(frozen=True)
class Settings:
  """The fields of config.eval (configs/default.py says what each means), checked when made: a bad one is a
  ValueError naming it before any work. What needs the data or the devices (a generated set's count, the batch
  against the device count, images for FID) is checked by the metric once the data are known."""

  # What to measure, on which checkpoint (-1: the newest readable one), from which seed.
  metrics: tuple[str, ...] = ("nll",)
  checkpoint_step: int = -1
  seed: int = 0
  # Sample quality.
  num_samples: int = 50_000
  round_size: int = 5_000
  num_repeats: int = 1
  feature_network: str = "inception"
  inception_weights: str = ""
  inception_sha256: str = ""
  resize: str = "tf1"
  reference_split: str = "train"
  reference_stats: str = ""
  stats_cache_dir: str = ""
  feature_batch_size: int = 100
  kid_subset_size: int = 1000
  is_splits: int = 10
  sampler_sweep: tuple[str, ...] = ()
  # The NLL bound.
  split: str = "test"
  num_examples: int = 10_000
  batch_size: int = 500
  divergence: str = "auto"
  num_probes: int = 1
  aux_distribution: str = "kernel"
  solver: str = "tsit5"
  ode_rtol: float = 1e-5
  ode_atol: float = 1e-5
  max_steps: int = 4096

  def __post_init__(self):
    for field in ("metrics", "sampler_sweep"):  # a JSON record holds lists; a frozen record holds tuples
      if isinstance(getattr(self, field), list):
        object.__setattr__(self, field, tuple(getattr(self, field)))
    metrics = self.metrics
    field_checks.require(isinstance(metrics, tuple) and len(metrics) > 0 and all(name in METRICS for name in metrics),
                         "eval.metrics", metrics,
                         f"a non-empty tuple of names from {METRICS}, e.g. --config.eval.metrics=\"('fid', 'kid')\"")
    # -1 is the newest readable checkpoint; whether a chosen step exists is known only once the workdir is read.
    field_checks.require_int("eval.checkpoint_step", self.checkpoint_step, -1)
    field_checks.require_seed("eval.seed", self.seed)
    for field, minimum in (("num_samples", 1), ("round_size", 1), ("num_repeats", 1), ("feature_batch_size", 1),
                           ("kid_subset_size", 2), ("is_splits", 1), ("batch_size", 1)):
      field_checks.require_int(f"eval.{field}", getattr(self, field), minimum)
    field_checks.require(self.feature_network in image_features.FEATURE_NETWORKS, "eval.feature_network",
                         self.feature_network, f"one of {image_features.FEATURE_NETWORKS}")
    field_checks.require(self.resize in image_features.RESIZE_MODES, "eval.resize", self.resize,
                         f"one of {image_features.RESIZE_MODES}")
    self.sweep_entries()
    num_examples = self.num_examples
    field_checks.require(field_checks.is_int(num_examples) and (num_examples >= 1 or num_examples == -1),
                         "eval.num_examples", num_examples, "an integer >= 1, or -1 for a whole split")
    likelihood.check_aux_distribution(self.aux_distribution)
    self.ode_settings((1,))

  def sweep_entries(self) -> tuple[sampler_sweep.SweepEntry, ...]:
    """eval.sampler_sweep parsed; a ValueError naming the first bad or repeated entry."""
    return sampler_sweep.parse_sampler_sweep(self.sampler_sweep)

  def ode_settings(self, data_shape: tuple[int, ...]) -> likelihood.ODESettings:
    """How the bound integrates for data of data_shape: divergence 'auto' is exact for point data (D,) and
    Hutchinson for images (likelihood.settings_from_config)."""
    return likelihood.settings_from_config(self, data_shape)

  @property
  def chosen_step(self) -> int | None:
    """eval.checkpoint_step as trained_model.load_ema_params's `step`: None for -1 (the newest readable one)."""
    return None if self.checkpoint_step == -1 else self.checkpoint_step


def settings_from_config(eval_config) -> Settings:
  """config.eval checked once into Settings; a field the config lacks (a record older than it) keeps its
  default, and one this record does not know is left to the reports, which record the group whole."""
  return field_checks.settings_of(Settings, eval_config)

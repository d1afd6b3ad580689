"""Sample quality of 2-D point clouds (benchmarks/toy2d_quality.py): the distance of each sample to the
multimodal swiss roll's noiseless spirals, and the sliced Wasserstein-1 distance between two clouds.

The spiral distance asks whether samples lie on the data's thin arms (their noise is N(0, 0.002^2 I), so a
fraction within 0.01 near 1 means sharp arms); the sliced Wasserstein distance compares the two laws as a
whole, arm weights and spread included, which the first cannot see.
"""
from __future__ import annotations

import functools

import numpy as np

from hold_jax.data import input_pipeline


def spiral_distance(points: np.ndarray, num_curve_points: int = 20000) -> np.ndarray:
  """Distance of each 2-D point (N, 2) to the nearest noiseless spiral arm of the multimodal swiss roll
  (input_pipeline.multimodal_swiss_roll without its noise), to the nearest of num_curve_points points per arm,
  found with a k-d tree; returns (N,)."""
  return _spiral_tree(num_curve_points).query(np.asarray(points, np.float64), k=1)[0][:, 0]


@functools.lru_cache(maxsize=2)
def _spiral_tree(num_curve_points: int):
  from sklearn import neighbors  # pylint: disable=g-import-not-at-top  (only these metrics need it)
  angle = np.linspace(*input_pipeline.SWISS_ROLL_ANGLES, num_curve_points)
  arm = input_pipeline.SWISS_ROLL_SCALE * np.stack([angle * np.cos(angle), angle * np.sin(angle)], axis=-1)
  return neighbors.KDTree((input_pipeline.SWISS_ROLL_CENTRES[:, None, :] + arm[None]).reshape(-1, 2))


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, num_directions: int = 256, seed: int = 0) -> float:
  """Sliced Wasserstein-1 distance between equal-size point clouds (N, D): the mean over random unit
  directions theta of W1(a theta, b theta), each the mean gap between the sorted projections."""
  if a.shape != b.shape:
    raise ValueError(f"sliced_wasserstein needs equal shapes, got {a.shape} and {b.shape}.")
  directions = np.random.default_rng(seed).standard_normal((a.shape[1], num_directions))
  directions /= np.linalg.norm(directions, axis=0, keepdims=True)
  projected_a, projected_b = np.sort(a @ directions, axis=0), np.sort(b @ directions, axis=0)
  return float(np.mean(np.abs(projected_a - projected_b)))

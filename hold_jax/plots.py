"""Scatter plots of 2-D samples, written with matplotlib's Agg backend (no display needed)."""
from __future__ import annotations

import numpy as np


def scatter(path: str, samples: np.ndarray, title: str, markers: np.ndarray | None = None,
            limit: float | None = None) -> None:
  """Saves a PNG of samples (N, 2), with optional markers (K, 2) drawn as black crosses."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  finite = samples[np.isfinite(samples).all(axis=1)]
  figure, axis = plt.subplots(figsize=(5, 5))
  axis.scatter(finite[:, 0], finite[:, 1], s=1, alpha=0.4, label="samples")
  if markers is not None:
    axis.scatter(markers[:, 0], markers[:, 1], s=40, marker="x", color="black", label="component means")
    axis.legend(loc="upper right", fontsize=8)
  if limit is None and len(finite):
    limit = 1.1 * np.abs(np.percentile(finite, [0.5, 99.5], axis=0)).max()
  if limit:
    axis.set(xlim=(-limit, limit), ylim=(-limit, limit))
  axis.set(aspect="equal", title=title)
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)

"""Pictures of samples: scatter plots of 2-D points and grids of images, written with matplotlib's Agg backend.

Files are written through etils.epath, so a gs:// workdir keeps its pictures, and atomically (a temporary file
renamed into place), so a killed job never leaves half a picture under its name. `metadata` becomes PNG text
entries: a picture can carry the settings that drew it (hold_jax/sample.py writes them).
"""
from __future__ import annotations

import io

import numpy as np

from hold_jax import report_files


def _write_png(path: str, draw) -> None:
  """draw(file) writes a PNG into an in-memory file, which then goes to `path` (local or gs://) in one atomic
  write (report_files.write_bytes_atomic)."""
  buffer = io.BytesIO()
  draw(buffer)
  report_files.write_bytes_atomic(path, buffer.getvalue())


def scatter(path: str, samples: np.ndarray, title: str, markers: np.ndarray | None = None,
            limit: float | None = None, metadata: dict[str, str] | None = None) -> None:
  """Saves a PNG of samples (N, 2), with optional markers (K, 2) drawn as black crosses and PNG text entries
  `metadata`."""
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
  _write_png(path, lambda file: figure.savefig(file, dpi=120, format="png", metadata=metadata))
  plt.close(figure)


def tile(images: np.ndarray, columns: int | None = None) -> np.ndarray:
  """uint8 images (N, H, W, C) -> one grid image (rows H + rows - 1, columns W + columns - 1, C), 1-pixel gaps.

  columns defaults to ceil(sqrt(N)); empty cells and gaps are black.
  """
  num, height, width, channels = images.shape
  columns = columns or int(np.ceil(np.sqrt(num)))
  rows = int(np.ceil(num / columns))
  grid = np.zeros((rows * (height + 1) - 1, columns * (width + 1) - 1, channels), np.uint8)
  for index, image in enumerate(images):
    row, column = divmod(index, columns)
    grid[row * (height + 1):row * (height + 1) + height, column * (width + 1):column * (width + 1) + width] = image
  return grid


def save_image(path: str, image: np.ndarray, min_size: int = 512, metadata: dict[str, str] | None = None) -> None:
  """Saves a uint8 image (H, W, C) with C in {1, 3} as a PNG (gray when C = 1), its pixels repeated an
  integer number of times so that the longer side is at least min_size (a grid of 16x16 digits is legible),
  with PNG text entries `metadata`."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  repeat = max(1, min_size // max(image.shape[:2]))
  image = np.repeat(np.repeat(image, repeat, axis=0), repeat, axis=1)
  if image.shape[-1] == 1:
    _write_png(path, lambda file: matplotlib.image.imsave(file, image[..., 0], cmap="gray", vmin=0, vmax=255,
                                                          format="png", metadata=metadata))
  else:
    _write_png(path, lambda file: matplotlib.image.imsave(file, image, format="png", metadata=metadata))

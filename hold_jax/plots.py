"""Pictures of samples, for every kind of data: a grid of images, a scatter of 2-D points, a corner plot of
points in more dimensions, a histogram of 1-D points; the points drawn over a faint sample of the data.

`samples_figure` builds the matplotlib Figure that the notebooks show and the file writers save
(`save_samples`), so a picture on disk and one in a notebook are the same picture. Figures for files are bare
`matplotlib.figure.Figure`s drawn by Agg: no pyplot, no global figure registry to close, and no
`matplotlib.use`, which would switch a notebook's backend under its feet. `pyplot=True` makes a pyplot figure
instead, which `plt.show()` shows.

Files are written through etils.epath, so a gs:// workdir keeps its pictures, and atomically (a temporary file
renamed into place), so a killed job never leaves half a picture under its name. `metadata` becomes PNG text
entries: a picture can carry the settings that drew it (hold_jax/sampling/sample_job.py writes them).
"""
from __future__ import annotations

import io
import textwrap

import numpy as np

from hold_jax import report_files
from hold_jax.data import image_data

CORNER_MAX_DIMS = 6  # a corner plot of more coordinates is too small to read; the title says what was left out
MAX_IMAGES = 64  # images in a grid: 8 x 8 digits stay legible in a 512-pixel PNG
GAP_VALUE = 255  # the gaps of an image grid are white, the page they are shown on: the digits' black
                 # backgrounds would swallow black gaps
SAMPLE_STYLE = {"color": "C0", "alpha": 0.5}
DATA_STYLE = {"color": "0.55", "alpha": 0.15}  # faint gray: what the samples should cover, drawn underneath
DPI = 120


def _write_png(path: str, draw) -> None:
  """draw(file) writes a PNG into an in-memory file, which then goes to `path` (local or gs://) in one atomic
  write (report_files.write_bytes_atomic)."""
  buffer = io.BytesIO()
  draw(buffer)
  report_files.write_bytes_atomic(path, buffer.getvalue())


def new_figure(figsize: tuple[float, float], pyplot: bool = False):
  """An empty Figure of `figsize` inches with constrained layout (which makes room for a wrapped title).

  pyplot=False: a bare Figure on an Agg canvas, for files (and for notebooks as a cell's value); pyplot=True:
  one that pyplot tracks, so that `plt.show()` shows it (the caller closes it when it is done with it).
  """
  if pyplot:
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    return plt.figure(figsize=figsize, layout="constrained")
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  figure = Figure(figsize=figsize, layout="constrained")
  FigureCanvasAgg(figure)  # the canvas that measures the title and draws the file
  return figure


def fit_title(figure, title: str, fontsize: float = 11.0, min_fontsize: float = 7.0, margin: float = 0.96):
  """Sets `title` as the figure's suptitle, wrapped and if need be shrunk so that its rendered width is at
  most `margin` of the figure's; returns the Text. Explicit newlines in `title` are kept.

  Lines are first wrapped at the characters an average glyph (0.6 em) leaves room for; a line of wide glyphs
  can still overflow, so the font shrinks one point at a time to min_fontsize, and then the lines shorten.
  """
  available = margin * figure.bbox.width
  size, artist = fontsize, None
  while True:
    characters = max(8, int(available / (0.6 * size * figure.dpi / 72)))
    while True:
      text = "\n".join(textwrap.fill(line, characters) or line for line in title.splitlines() or [""])
      artist = figure.suptitle(text, fontsize=size)
      if artist.get_window_extent().width <= available or (size <= min_fontsize and characters <= 8):
        return artist
      if size > min_fontsize:
        break  # try a smaller font at its own wrap width first
      characters = max(8, int(characters * 0.85))
    size = max(min_fontsize, size - 1)


def finite_rows(points: np.ndarray) -> np.ndarray:
  """The rows (N, D) of `points` whose coordinates are all finite: a diverged sample is left out of a plot
  rather than stretching its axes to infinity."""
  points = np.asarray(points, np.float64)
  return points[np.isfinite(points).all(axis=1)]


def axis_limits(*point_sets: np.ndarray) -> np.ndarray:
  """(D, 2) lows and highs per coordinate: the 0.5th and 99.5th percentiles of every point of `point_sets`
  (each (N_i, D)) together, widened by 5% each side, so that a few stray samples do not shrink the rest."""
  points = np.concatenate([points for points in point_sets if len(points)])
  low, high = np.percentile(points, [0.5, 99.5], axis=0)
  pad = np.where(high > low, 0.05 * (high - low), 0.5)
  return np.stack([low - pad, high + pad], axis=-1)


def samples_figure(samples: np.ndarray, data: np.ndarray | None = None, title: str = "",
                   markers: np.ndarray | None = None, limit: float | None = None,
                   max_dims: int = CORNER_MAX_DIMS, max_images: int = MAX_IMAGES, pyplot: bool = False):
  """A matplotlib Figure of `samples`, by their shape:

  - images (N, H, W, C), uint8 pixels or model-space floats in [-1, 1]: the first max_images as one grid with
    gaps (`tile`), no axes;
  - 2-D points (N, 2): a scatter, over a faint scatter of `data` (M, 2) when given; `markers` (K, 2) as black
    crosses; `limit` makes the axes [-limit, limit]^2 (else they span the points' 0.5..99.5 percentiles);
  - points (N, D), D > 2: a corner plot of the first min(D, max_dims) coordinates, histograms on the diagonal
    and pairwise scatters below it, samples over faint `data`; the title says when coordinates were left out;
  - 1-D points (N, 1): a histogram over that of `data`.

  Non-finite rows are left out of point plots. The title is wrapped (or its font shrunk) to fit the figure.
  pyplot: see `new_figure`.
  """
  samples = np.asarray(samples)
  if samples.ndim == 4:
    return _image_figure(samples[:max_images], title, pyplot)
  if samples.ndim != 2:
    raise ValueError(f"samples of shape {samples.shape} are neither images (N, H, W, C) nor points (N, D).")
  points = finite_rows(samples)
  reference = finite_rows(data) if data is not None else np.zeros((0, samples.shape[1]))
  if reference.shape[1] != samples.shape[1]:
    raise ValueError(f"data of shape {np.shape(data)} does not match samples of shape {samples.shape}.")
  if len(points) < len(samples):
    title = f"{title}\n({len(samples) - len(points)} of {len(samples)} samples not finite, not drawn)".lstrip()
  if samples.shape[1] == 1:
    return _histogram_figure(points[:, 0], reference[:, 0], title, pyplot)
  if samples.shape[1] == 2:
    return _scatter_figure(points, reference, title, markers, limit, pyplot)
  return _corner_figure(points, reference, title, max_dims, pyplot)


def _image_figure(images: np.ndarray, title: str, pyplot: bool):
  """One axis-less panel of `tile(images)`, 6 inches on its longer side."""
  pixels = images if images.dtype == np.uint8 else image_data.to_pixels(images)
  grid = tile(pixels)
  height, width = grid.shape[:2]
  scale = 6.0 / max(height, width)
  figure = new_figure((max(width * scale, 3.0), height * scale + (0.5 if title else 0.0)), pyplot)
  axis = figure.subplots()
  if grid.shape[-1] == 1:
    axis.imshow(grid[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
  else:
    axis.imshow(grid, interpolation="nearest")
  axis.set_axis_off()
  if title:
    fit_title(figure, title)
  return figure


def _opaque(legend) -> None:
  """Legend entries drawn opaque: the faint data's own alpha would make its entry invisible."""
  for handle in legend.legend_handles:
    handle.set_alpha(1.0)


def _scatter_figure(points: np.ndarray, reference: np.ndarray, title: str, markers: np.ndarray | None,
                    limit: float | None, pyplot: bool):
  figure = new_figure((5.0, 5.3), pyplot)
  axis = figure.subplots()
  if len(reference):
    axis.scatter(reference[:, 0], reference[:, 1], s=1, label="data", **DATA_STYLE)
  axis.scatter(points[:, 0], points[:, 1], s=1.5, label="samples", **SAMPLE_STYLE)
  if markers is not None:
    axis.scatter(markers[:, 0], markers[:, 1], s=40, marker="x", color="black", label="component means")
  if len(reference) or markers is not None:
    _opaque(axis.legend(loc="upper right", fontsize=8, markerscale=4))
  if limit:
    axis.set(xlim=(-limit, limit), ylim=(-limit, limit))
  elif len(points) or len(reference):
    (x_low, x_high), (y_low, y_high) = axis_limits(points, reference)
    axis.set(xlim=(x_low, x_high), ylim=(y_low, y_high))
  axis.set_aspect("equal")
  fit_title(figure, title)
  return figure


def _histogram_bins(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
  """Common bin edges for samples and data (one shared scale makes the two histograms comparable)."""
  (low, high), = axis_limits(values[:, None], reference[:, None])
  count = int(np.clip(np.sqrt(len(values)), 10, 50))  # the samples, often fewer than the data, set the noise
  return np.linspace(low, high, count + 1)


def _draw_histograms(axis, values: np.ndarray, reference: np.ndarray) -> None:
  """Densities of `reference` (filled, faint) and of `values` (an outline over it) on common bins."""
  bins = _histogram_bins(values, reference)
  if len(reference):
    axis.hist(np.clip(reference, bins[0], bins[-1]), bins=bins, density=True, histtype="stepfilled",
              color=DATA_STYLE["color"], alpha=0.4, label="data")
  if len(values):
    axis.hist(np.clip(values, bins[0], bins[-1]), bins=bins, density=True, histtype="step",
              color=SAMPLE_STYLE["color"], linewidth=1.5, label="samples")
  axis.set_xlim(bins[0], bins[-1])


def _histogram_figure(values: np.ndarray, reference: np.ndarray, title: str, pyplot: bool):
  figure = new_figure((5.5, 3.8), pyplot)
  axis = figure.subplots()
  if len(values) or len(reference):
    _draw_histograms(axis, values, reference)
  axis.set(xlabel="x", ylabel="density")
  if len(reference):
    _opaque(axis.legend(loc="upper right", fontsize=8))
  fit_title(figure, title)
  return figure


def _corner_figure(points: np.ndarray, reference: np.ndarray, title: str, max_dims: int, pyplot: bool):
  """k x k panels for the first k = min(D, max_dims) coordinates; those above the diagonal are removed, so the
  figure holds k (k + 1) / 2 panels: k histograms and k (k - 1) / 2 scatters (row i, column j: x_j, x_i).
  With data, the legend sits in an axis-less extra axes in the top-right cell (k > 1)."""
  dims = points.shape[1]
  shown = min(dims, max_dims)
  if shown < dims:
    title = f"{title} (the first {shown} of {dims} coordinates)".lstrip()
  figure = new_figure((1.8 * shown + 0.6, 1.8 * shown + 0.9), pyplot)
  axes = figure.subplots(shown, shown, squeeze=False)
  limits = axis_limits(points[:, :shown], reference[:, :shown]) if len(points) or len(reference) else None
  for row in range(shown):
    for column in range(shown):
      axis = axes[row, column]
      if column > row:
        axis.remove()
        continue
      if row == column:
        if limits is not None:
          _draw_histograms(axis, points[:, row], reference[:, row])
        axis.set_yticks([])
      else:
        if len(reference):
          axis.scatter(reference[:, column], reference[:, row], s=0.5, label="data", **DATA_STYLE)
        axis.scatter(points[:, column], points[:, row], s=0.8, label="samples", **SAMPLE_STYLE)
        if limits is not None:
          axis.set(xlim=limits[column], ylim=limits[row])
      axis.tick_params(labelsize=7)
      if row == shown - 1:
        axis.set_xlabel(f"x{column}", fontsize=8)
      else:
        axis.tick_params(labelbottom=False)
      if column == 0 and row > 0:
        axis.set_ylabel(f"x{row}", fontsize=8)
      elif row != column:
        axis.tick_params(labelleft=False)
  if len(reference):  # one legend for every panel, in the top-right cell, empty above the diagonal
    legend_axis = axes[0, shown - 1]
    if shown > 1:
      legend_axis = figure.add_subplot(axes[0, 0].get_gridspec()[0, shown - 1])
      legend_axis.set_axis_off()
    _opaque(legend_axis.legend(*axes[shown - 1, 0].get_legend_handles_labels(), loc="upper right", fontsize=8,
                               markerscale=5))
  fit_title(figure, title)
  return figure


def save_figure(path: str, figure, metadata: dict[str, str] | None = None, dpi: int = DPI) -> None:
  """Writes `figure` as a PNG to `path` (local or gs://, atomically) with PNG text entries `metadata`."""
  _write_png(path, lambda file: figure.savefig(file, dpi=dpi, format="png", metadata=metadata))


def save_samples(path: str, samples: np.ndarray, data: np.ndarray | None = None, title: str = "",
                 metadata: dict[str, str] | None = None, max_images: int = MAX_IMAGES) -> None:
  """The PNG of `samples` of any kind (see samples_figure), with PNG text entries `metadata`. Images are saved
  pixel for pixel (`save_image` of their `tile`, no title: the settings are in the metadata and the file's
  name); points as `samples_figure` draws them over `data`."""
  samples = np.asarray(samples)
  if samples.ndim == 4:
    pixels = samples[:max_images]
    save_image(path, tile(pixels if pixels.dtype == np.uint8 else image_data.to_pixels(pixels)), metadata=metadata)
  else:
    save_figure(path, samples_figure(samples, data, title), metadata)


def scatter(path: str, samples: np.ndarray, title: str, markers: np.ndarray | None = None,
            limit: float | None = None, metadata: dict[str, str] | None = None,
            data: np.ndarray | None = None) -> None:
  """Saves a PNG of samples (N, 2) over optional faint `data` (M, 2), with optional markers (K, 2) drawn as
  black crosses and PNG text entries `metadata` (samples_figure)."""
  save_figure(path, samples_figure(samples, data, title, markers=markers, limit=limit), metadata)


def tile(images: np.ndarray, columns: int | None = None, gap: int = 1, gap_value: int = GAP_VALUE) -> np.ndarray:
  """uint8 images (N, H, W, C) -> one uint8 grid image (rows H + (rows - 1) gap, columns W + (columns - 1) gap,
  C), the images separated by `gap` pixels of `gap_value`.

  columns defaults to ceil(sqrt(N)); cells after the N-th are gap_value too. The gap is in native pixels:
  save_image repeats every pixel, so a 1-pixel gap between 8x8 digits becomes as wide as one of their pixels.
  """
  num, height, width, channels = images.shape
  columns = columns or int(np.ceil(np.sqrt(num)))
  rows = int(np.ceil(num / columns))
  grid = np.full((rows * (height + gap) - gap, columns * (width + gap) - gap, channels), gap_value, np.uint8)
  for index, image in enumerate(images):
    row, column = divmod(index, columns)
    top, left = row * (height + gap), column * (width + gap)
    grid[top:top + height, left:left + width] = image
  return grid


def save_image(path: str, image: np.ndarray, min_size: int = 512, metadata: dict[str, str] | None = None) -> None:
  """Saves a uint8 image (H, W, C) with C in {1, 3} as a PNG (gray when C = 1), its pixels repeated an
  integer number of times so that the longer side is at least min_size (a grid of 16x16 digits is legible),
  with PNG text entries `metadata`. matplotlib.image.imsave needs no backend (it writes through Pillow)."""
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  repeat = max(1, min_size // max(image.shape[:2]))
  image = np.repeat(np.repeat(image, repeat, axis=0), repeat, axis=1)
  if image.shape[-1] == 1:
    _write_png(path, lambda file: matplotlib.image.imsave(file, image[..., 0], cmap="gray", vmin=0, vmax=255,
                                                          format="png", metadata=metadata))
  else:
    _write_png(path, lambda file: matplotlib.image.imsave(file, image, format="png", metadata=metadata))

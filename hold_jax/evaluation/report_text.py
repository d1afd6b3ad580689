"""What the console shows of an evaluation report: numbers to a few significant digits, each metric beside its
baselines, and tables with aligned columns (the JSON keeps every digit; these are for a reader).

Pure functions of numbers and dicts, shared by the NLL bound (nll_rounds.py), the image metrics (image_quality.py) and
the point-set metrics (point_quality.py), so that the three say their results the same way.
"""
from __future__ import annotations

import math
from typing import Any

# How a report's baselines (image_quality.digits_baselines, point_quality.data_baselines) are named on the console.
BASELINE_LABELS = {"heldout_digits": "held-out digits", "uniform_noise": "noise",
                   "heldout_points": "held-out points", "gaussian_noise": "noise"}


def significant(value: Any, digits: int = 3) -> str:
  """`value` to `digits` significant digits, as a reader would write it: 1.31, 0.0123, 871; a number of more
  integer digits than that keeps them (12345, not 1.23e+04); integers and strings as they are."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return str(value)
  if isinstance(value, int):
    return str(value)
  if not math.isfinite(value):
    return str(value)
  if abs(value) >= 10**digits:
    return f"{value:.0f}"
  return f"{value:.{digits}g}"


def baseline_label(name: str) -> str:
  """The console's name of a baseline: BASELINE_LABELS, or the report's key with its underscores as spaces."""
  return BASELINE_LABELS.get(name, name.replace("_", " "))


def metric_names(summary: dict[str, float]) -> list[str]:
  """The metrics of a report's summary ({'<metric>_mean': ..., '<metric>_min': ...}), in its order."""
  return [name[:-len("_mean")] for name in summary if name.endswith("_mean")]


def metric_line(name: str, summary: dict[str, float], num_repeats: int,
                baselines: dict[str, dict[str, float]] | None = None) -> str:
  """'fd_digits 1.31 (held-out digits 6.14, noise 871)': the repeats' mean of `name`, with their minimum when
  there are several ('1.31 mean, 1.2 min of 3 repeats'), then each baseline that has the metric."""
  line = f"{name} {significant(summary[f'{name}_mean'])}"
  if num_repeats > 1 and f"{name}_min" in summary:
    line += f" mean, {significant(summary[f'{name}_min'])} min of {num_repeats} repeats"
  known = [(baseline_label(label), values[name]) for label, values in (baselines or {}).items() if name in values]
  if known:
    line += " (" + ", ".join(f"{label} {significant(value)}" for label, value in known) + ")"
  return line


def means_line(summary: dict[str, float]) -> str:
  """'fd_digits 1.31, kid_digits 0.0123': each metric's mean, for a progress line."""
  return ", ".join(f"{name} {significant(summary[f'{name}_mean'])}" for name in metric_names(summary))


def format_table(rows: list[dict[str, Any]], baselines: dict[str, dict[str, float]] | None = None) -> str:
  """The rows of a quality-versus-NFE table as text with aligned columns (the log's and the console's view;
  the JSON holds the numbers), the report names left out. Each baseline follows once, as a row of its own
  whose method is its label and whose '<metric>_mean' cells hold its value of the metric."""
  names = [name for name in rows[0] if name != "report"]
  cells = [[significant(row[name], 4) if name in row else "" for name in names] for row in rows]
  for label, values in (baselines or {}).items():
    row = {f"{metric}_mean": value for metric, value in values.items()}
    cells.append([f"{baseline_label(label)}:" if name == names[0] else
                  significant(row[name], 4) if name in row else "" for name in names])
  widths = [max(len(name), *(len(line[column]) for line in cells)) for column, name in enumerate(names)]
  lines = [names] + cells
  return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)

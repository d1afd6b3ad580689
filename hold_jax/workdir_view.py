"""Looking at a workdir (local or gs://) from a notebook: its training curves and its quality-versus-NFE tables.

notebooks/evaluate.ipynb is built on these and on the jobs' own functions (run_record.load_config,
train.load_ema_params, sample.draw, quality.evaluate_quality), so the notebook holds no logic of its own.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
from etils import epath

EVENT_FILE_PATTERN = "events.out.tfevents.*"


def read_scalars(directory) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{tag: (steps (n,) int64, values (n,) float64)} of the TensorBoard scalars in the event files directly in
  `directory` (training writes to the workdir, the evaluation to workdir/eval), sorted by step; a step
  written twice (a resumed run repeats the steps after its last checkpoint) keeps its last value."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (clu's writers need it already)
  points: dict[str, dict[int, float]] = {}
  for path in sorted(tf.io.gfile.glob(str(epath.Path(directory) / EVENT_FILE_PATTERN))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        kind = value.WhichOneof("value")
        if kind == "simple_value":
          number = value.simple_value
        elif kind == "tensor" and not value.tensor.tensor_shape.dim and value.tensor.dtype != tf.string.as_datatype_enum:
          number = float(tf.make_ndarray(value.tensor))
        else:  # images, text and hyperparameters are not curves
          continue
        points.setdefault(value.tag, {})[int(event.step)] = number
  return {tag: (np.array(sorted(values), np.int64), np.array([values[step] for step in sorted(values)], np.float64))
          for tag, values in points.items()}


def quality_tables(workdir) -> list[epath.Path]:
  """workdir/eval/quality_vs_nfe_ckpt<step>_<network>_<hash>.json (written by --mode=eval with
  eval.sampler_sweep, one per step, network and settings: quality_files.table_stem), newest first. Tables being
  written are hidden temporary files until renamed, so each one found is whole."""
  directory = epath.Path(workdir) / "eval"
  if not directory.exists():
    return []
  return sorted(directory.glob("quality_vs_nfe_*.json"), key=lambda path: path.stat().mtime, reverse=True)


def load_table(path) -> dict[str, Any]:
  return json.loads(epath.Path(path).read_text())


def table_metrics(table: dict[str, Any]) -> list[str]:
  """The '<metric>_mean' columns of a quality-versus-NFE table, e.g. ['fid_mean', 'kid_mean']."""
  return [name for name in table["rows"][0] if name.endswith("_mean")]


def plot_training_curves(scalars: dict[str, tuple[np.ndarray, np.ndarray]], tags=("loss", "grad_norm",
                                                                                    "steps_per_sec")):
  """A matplotlib figure with one panel per tag that `scalars` holds (see read_scalars)."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  present = [tag for tag in tags if tag in scalars]
  if not present:
    raise ValueError(f"None of the curves {tuple(tags)} is in the event files; they hold {sorted(scalars)}.")
  figure, axes = plt.subplots(1, len(present), figsize=(4.5 * len(present), 3.2), squeeze=False)
  for axis, tag in zip(axes[0], present):
    steps, values = scalars[tag]
    axis.plot(steps, values)
    axis.set_xlabel("step")
    axis.set_title(tag)
    if tag == "loss" and np.all(values > 0):
      axis.set_yscale("log")
  figure.tight_layout()
  return figure


def plot_quality_vs_nfe(table: dict[str, Any], metric: str | None = None):
  """A matplotlib figure of `metric` (default: the table's first '<metric>_mean' column) against NFE, one line
  per sampler (method and grid), on log-log axes as such tables are usually read."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  metric = metric or table_metrics(table)[0]
  figure, axis = plt.subplots(figsize=(5.5, 3.8))
  samplers = sorted({(row["method"], row["grid"]) for row in table["rows"]})
  for method, grid in samplers:
    rows = sorted((row for row in table["rows"] if (row["method"], row["grid"]) == (method, grid)),
                  key=lambda row: row["nfe"])
    axis.plot([row["nfe"] for row in rows], [row[metric] for row in rows], "o-", label=f"{method} ({grid})")
  axis.set_xscale("log")
  if all(row[metric] > 0 for row in table["rows"]):
    axis.set_yscale("log")
  axis.set_xlabel("network evaluations (NFE)")
  axis.set_ylabel(metric)
  axis.set_title(f"checkpoint step {table['checkpoint_step']}, {table['num_samples']} samples")
  axis.legend(fontsize="small")
  figure.tight_layout()
  return figure

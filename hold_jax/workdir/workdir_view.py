"""Looking at a workdir (local or gs://) from a notebook: its training curves and its quality-versus-NFE tables.

notebooks/evaluate.ipynb is built on these and on the Python API (hold_jax/api.py), which calls the jobs' own
functions, so the notebook holds no logic of its own.
"""
from __future__ import annotations

import json
from typing import Any, Sequence

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


BASELINE_STYLES = {"heldout_digits": {"color": "black", "linestyle": "--"},
                   "uniform_noise": {"color": "0.5", "linestyle": ":"}}  # others: gray dash-dot


def plot_quality_vs_nfe(table: dict[str, Any], metric: str | Sequence[str] | None = None, pyplot: bool = True):
  """A matplotlib figure of `metric` against NFE, one line per sampler (method and grid), on log-x axes (log-y
  too when every value is positive), as such tables are usually read. `metric`: a '<metric>_mean' column, or
  several (one panel each); default the table's first (table_metrics).

  A table that holds 'baselines' (the digits network's: real held-out digits and uniform noise, which bracket
  what a model can reach; a point table's) gets each as a horizontal line labelled with its name. The figure's
  title (the checkpoint step, samples, repeats, data set or feature network and reference) is wrapped to fit
  it (plots.fit_title).
  pyplot=True: a pyplot figure, shown by plt.show() in a notebook; False: a bare Agg figure, for files
  (hold_jax/plots.py new_figure).
  """
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top  (matplotlib only when a figure is drawn)
  from hold_jax import plots  # pylint: disable=g-import-not-at-top
  metrics = [metric] if isinstance(metric, str) else list(metric or table_metrics(table)[:1])
  figure = plots.new_figure((5.5 * len(metrics), 4.0), pyplot)
  axes = figure.subplots(1, len(metrics), squeeze=False)[0]
  samplers = sorted({(row["method"], row["grid"]) for row in table["rows"]})
  for axis, name in zip(axes, metrics):
    for method, grid in samplers:
      rows = sorted((row for row in table["rows"] if (row["method"], row["grid"]) == (method, grid)),
                    key=lambda row: row["nfe"])
      axis.plot([row["nfe"] for row in rows], [row[name] for row in rows], "o-", label=f"{method} ({grid})")
    baselines = table_baselines(table, name)
    for baseline, value in baselines.items():
      axis.axhline(value, linewidth=1, label=f"{baseline} (baseline)",
                   **BASELINE_STYLES.get(baseline, {"color": "0.4", "linestyle": "-."}))
    axis.set_xscale("log")
    nfes = sorted({row["nfe"] for row in table["rows"]})
    if len(nfes) <= 8:  # the NFEs measured as the ticks, plain numbers (log axes would write 2 x 10^0)
      axis.set_xticks(nfes, labels=[str(nfe) for nfe in nfes])
      axis.xaxis.set_minor_locator(ticker.NullLocator())
    else:
      axis.xaxis.set_major_formatter(ticker.ScalarFormatter())
    if all(row[name] > 0 for row in table["rows"]) and all(value > 0 for value in baselines.values()):
      axis.set_yscale("log")
    axis.set_xlabel("network evaluations (NFE)")
    axis.set_ylabel(name)
    axis.legend(fontsize="small")
  network = table.get("feature_network", {}).get("name")
  plots.fit_title(figure, f"checkpoint step {table['checkpoint_step']}, {table['num_samples']} samples"
                  + (f" x {table['num_repeats']} repeats" if table.get("num_repeats", 1) > 1 else "")
                  + (f", {table['dataset']}" if table.get("dataset") else "")  # point tables name their data
                  + (f", {network}" if network else "")
                  + (f", against {table['reference']}" if table.get("reference") else ""))
  return figure


def table_baselines(table: dict[str, Any], metric: str) -> dict[str, float]:
  """{baseline name: value} of '<metric>_mean' `metric` for the baselines a table holds (none: {})."""
  name = metric[:-len("_mean")] if metric.endswith("_mean") else metric
  return {baseline: float(values[name]) for baseline, values in (table.get("baselines") or {}).items()
          if isinstance(values.get(name), (int, float)) and np.isfinite(values[name])}


def write_quality_plot(table: dict[str, Any], table_path, metadata: dict[str, str] | None = None) -> epath.Path:
  """Writes plot_quality_vs_nfe of every metric of `table` (one panel each) beside its JSON file: the same path
  with .png for .json, atomically, with PNG text entries `metadata`; returns the PNG's path. What --mode=eval
  with eval.sampler_sweep writes after its table (image_quality.write_table)."""
  from hold_jax import plots  # pylint: disable=g-import-not-at-top
  table_path = epath.Path(table_path)
  picture = table_path.parent / f"{table_path.stem}.png"
  plots.save_figure(str(picture), plot_quality_vs_nfe(table, table_metrics(table), pyplot=False), metadata)
  return picture

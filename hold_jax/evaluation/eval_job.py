"""`--mode=eval`: every metric config.eval.metrics names, one report per kind of metric, for the command line
and the Python API alike (hold_jax/api.py), so the two never disagree.

The NLL bound ('nll', hold_jax/evaluation/nll_rounds.py), the image-quality metrics (FID, KID, IS:
hold_jax/evaluation/image_quality.py) and the point-set metrics (SW1: hold_jax/evaluation/point_quality.py) each write
their own report into workdir/eval; `run` returns their paths in that order, and `summary` says what they hold for a
reader: each metric to a few significant digits beside its baselines, in its one unit (the NLL bound in nats per point
for point sets, in bits/dim for images), then the report's path.
"""
from __future__ import annotations

import json
from typing import Any

from etils import epath

from hold_jax.evaluation import eval_settings
from hold_jax.evaluation import image_quality
from hold_jax.evaluation import nll_rounds
from hold_jax.evaluation import point_quality


def run(config, workdir: str) -> list[str]:
  """Evaluates workdir's EMA parameters with `config` (the inference config: run_record.for_inference) and
  returns the paths of the reports written."""
  settings = eval_settings.settings_from_config(config.eval)  # checked once, for every metric
  metrics = set(settings.metrics)
  reports = [nll_rounds.evaluate(config, workdir, settings)] if "nll" in metrics else []
  if metrics & set(eval_settings.IMAGE_METRICS):
    reports.append(image_quality.evaluate_quality(config, workdir, settings))
  if metrics & set(eval_settings.POINT_METRICS):
    reports.append(point_quality.evaluate_points(config, workdir, settings))
  return reports


def format_report(report: dict[str, Any], path: str, baselines: dict[str, dict[str, float]] | None = None) -> str:
  """The console's view of any report or table `run` writes (a report dict as read from `path`), by its kind;
  `baselines`: an image table's, which its rows' reports hold (see `summary`)."""
  if report.get("kind") == point_quality.KIND:
    return point_quality.format_report(report, path)
  if report.get("kind") == point_quality.TABLE_KIND:
    return point_quality.format_table_report(report, path)
  if "nll_bound_nats" in report:
    return nll_rounds.format_report(report, path)
  if "rows" in report:
    return image_quality.format_table_report(report, path, baselines)
  return image_quality.format_report(report, path)


def summary(paths: list[str]) -> str:
  """What `run`'s reports hold, for the console: format_report of each, in order. A report this process cannot
  read (on a multi-host job only process 0 writes, and another host's disk may not hold it) is its path alone."""
  parts = []
  for path in paths:
    try:
      report = json.loads(epath.Path(path).read_text())
    except (OSError, ValueError):
      parts.append(path)
      continue
    baselines = None
    if "rows" in report and "baselines" not in report and report["rows"]:  # an image table: its rows' reports
      row_report = epath.Path(path).parent / report["rows"][0]["report"]
      try:
        baselines = json.loads(row_report.read_text()).get("baselines")
      except (OSError, ValueError):
        pass
    parts.append(format_report(report, path, baselines))
  return "\n".join(parts)

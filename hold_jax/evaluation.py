"""`--mode=eval`: every metric config.eval.metrics names, one report per kind of metric, for the command line
and the Python API alike (hold_jax/api.py), so the two never disagree.

The NLL bound ('nll', hold_jax/evaluate.py) and the image-quality metrics (FID, KID, IS: hold_jax/quality.py)
each write their own report into workdir/eval; `run` returns their paths in that order.
"""
from __future__ import annotations

from hold_jax import evaluate
from hold_jax import quality


def run(config, workdir: str) -> list[str]:
  """Evaluates workdir's EMA parameters with `config` (the inference config: run_record.for_inference) and
  returns the paths of the reports written."""
  metrics = set(config.eval.get("metrics", ("nll",)))
  reports = [evaluate.evaluate(config, workdir)] if "nll" in metrics else []
  if metrics & set(quality.IMAGE_METRICS):
    reports.append(quality.evaluate_quality(config, workdir))
  return reports

"""Measures the figures of the pretrained models (hold_jax/pretrained) through the Python API, records them in
each folder's model.json (what `hold_jax.pretrained_models()` and tests/test_pretrained.py read) and prints a
table; the JSON goes to benchmarks/results/pretrained_figures.json.

The digits: fd_digits, kid_digits and is_digits of 1,000 samples (seed 0, the model's sampler), beside their
baselines (held-out real digits and noise). The swiss roll: the sliced Wasserstein-1 distance of 10,000 samples
to held-out points (with the data set's own floor), and the NLL bound of 1,000 fresh points in nats per point.

  .venv/bin/python benchmarks/pretrained_figures.py [--names digits digits-vp ...]
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # pylint: disable=g-import-not-at-top,wrong-import-position

import hold_jax  # pylint: disable=wrong-import-position
from hold_jax import pretrained  # pylint: disable=wrong-import-position

# The settings each data set's figures are measured with (config.eval fields); the test repeats the digits'.
SETTINGS = {
    "digits": dict(metrics=("fid", "kid", "is"), num_samples=1000, round_size=500, num_repeats=1),
    "swiss_roll": dict(metrics=("sw1", "nll"), num_samples=10000, round_size=10000, num_repeats=1,
                       num_examples=1000),
}
# Report keys kept as figures (the rest of a report stays in workdir/eval).
KEPT = ("summary", "repeats", "baselines", "nll_bound_nats", "nll_bound_nats_stderr", "bits_per_dim",
        "nfe_mean", "num_examples", "num_samples")


def measure(name):
  folder, process = pretrained.resolve(name)
  started = time.time()
  model = hold_jax.load(name)
  settings = SETTINGS[folder]
  reports = model.evaluate(**settings)
  figures = {"settings": {**settings, "metrics": list(settings["metrics"]), "seed": int(model.config.seed),
                          "sampling": model.config.sampling.to_dict()}, "step": model.step,
             "date": time.strftime("%Y-%m-%d")}
  for report in reports:
    figures.update({key: report[key] for key in KEPT if key in report})
  figures["seconds"] = round(time.time() - started, 1)
  return folder, process, figures


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--names", nargs="+", default=pretrained.names(), choices=pretrained.names())
  parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results",
                                                       "pretrained_figures.json"))
  args = parser.parse_args()
  rows = []
  for name in args.names:
    folder, process, figures = measure(name)
    path = pretrained.FOLDER / folder / pretrained.MODEL_FILE
    record = json.loads(path.read_text())
    record.setdefault("figures", {})[process] = figures
    path.write_text(json.dumps(record, indent=2) + "\n")
    rows.append({"name": name, **figures})
    print(name, json.dumps({key: figures[key] for key in figures if key not in ("settings",)}), flush=True)
  common.write_results(args.output, rows)


if __name__ == "__main__":
  main()

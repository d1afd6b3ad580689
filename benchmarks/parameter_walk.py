"""How far a config travels through the package: the modules a job hands it to, and how often it climbs back.

A small toy2d:local job runs in this process (the config check, then 2 training steps; or the config check and
--mode=sample of that run) with a profiler that records, in call order, every call of a hold_jax function
that is given one of the walked objects as an argument:

- `config`: the whole config (a ConfigDict with the groups sde, training, sampling, ...);
- `training`: config.training, or the record it is checked into (hold_jax.training.loop_settings.Settings);
- `sampling`: config.sampling, or its record (hold_jax.sampling.samplers.Settings).

For each walk it reports `modules`, how many modules receive the object, and `climbs`, how many times the walk
enters a module it has already left (the module sequence with repeats collapsed: A B A counts one): a
parameter that bounces between two modules costs a reader one climb per bounce. A record's own methods (its
checks as it is made) are not counted as a module it is handed to.

The job is the public entry point (`hold_jax.main.run` after the config check), so the same script measures
any checkout of the package: PYTHONPATH=/path/to/checkout python benchmarks/parameter_walk.py.

  python benchmarks/parameter_walk.py [--out benchmarks/results/parameter_walk.json]
"""
import argparse
import dataclasses
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import jax
from ml_collections import config_dict


def kind_of(value) -> str | None:
  """Which walked object `value` is, by its shape (a config copied by the sampling job is still the config)."""
  if isinstance(value, config_dict.ConfigDict):
    keys = set(value.keys())
    if {"sde", "training", "sampling"} <= keys:
      return "config"
    if {"checkpoint_every", "batch_size", "num_steps"} <= keys:
      return "training"
    if {"method", "grid", "num_steps", "ode_solver"} <= keys:
      return "sampling"
    return None
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    module = type(value).__module__
    if module.endswith("loop_settings"):
      return "training"
    if module.endswith("samplers") and type(value).__name__ == "Settings":
      return "sampling"
  return None


class Walks:
  """A sys.setprofile hook: per walked kind, the modules (in call order) of the hold_jax functions given it."""

  def __init__(self, package_dir: str):
    self.package_dir = package_dir
    self.calls = {"config": [], "training": [], "sampling": []}

  def __call__(self, frame, event, arg):
    if event != "call" or not frame.f_code.co_filename.startswith(self.package_dir):
      return
    code = frame.f_code
    # A record's own methods (its checks, when it is made) are the record, not a module it was handed to.
    names = [name for name in code.co_varnames[:code.co_argcount + code.co_kwonlyargcount] if name != "self"]
    kinds = {kind_of(frame.f_locals.get(name)) for name in names}
    for kind in kinds - {None}:
      module = os.path.relpath(code.co_filename, os.path.dirname(self.package_dir))[:-len(".py")]
      self.calls[kind].append(module.replace(os.sep, "."))


def summarize(modules: list[str]) -> dict:
  """modules: the distinct modules; climbs: re-entries of a module already left (repeats collapsed)."""
  collapsed = [m for i, m in enumerate(modules) if i == 0 or modules[i - 1] != m]
  seen, climbs = set(), 0
  for module in collapsed:
    climbs += module in seen
    seen.add(module)
  return {"modules": len(seen), "climbs": climbs, "path": collapsed}


def config_for_walk():
  config = importlib.import_module("hold_jax.configs.toy2d").get_config("local")
  config.training.num_steps, config.training.checkpoint_every, config.training.log_every = 2, 2, 1
  config.sampling.num_samples, config.sampling.batch_size, config.sampling.num_steps = 16, 16, 4
  return config


def check_function():
  for name in ("hold_jax.cli.config_checks", "hold_jax.config_checks"):  # the layout with folders, and before
    try:
      return importlib.import_module(name).check
    except ImportError:
      continue
  raise SystemExit("no config_checks module in this hold_jax")


def walk(mode: str, workdir: str) -> dict:
  import hold_jax  # pylint: disable=import-outside-toplevel
  from hold_jax import main  # pylint: disable=import-outside-toplevel
  check = check_function()
  config = config_for_walk()
  walks = Walks(os.path.dirname(hold_jax.__file__))
  sys.setprofile(walks)
  try:
    check(config)
    main.run(config, workdir, mode, {})
  finally:
    sys.setprofile(None)
  return {kind: summarize(calls) for kind, calls in walks.calls.items()}


def commit_of(directory: str) -> str | None:
  """The git commit of the checkout that holds `directory`, or None outside one."""
  result = subprocess.run(["git", "-C", directory, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
  return result.stdout.strip() or None


def main_():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "parameter_walk.json"))
  args = parser.parse_args()
  import hold_jax  # pylint: disable=import-outside-toplevel
  rows = []
  with tempfile.TemporaryDirectory() as workdir:
    for mode in ("train", "sample"):
      for kind, result in walk(mode, workdir).items():
        rows.append({"job": mode, "walked": kind, **result})
  print(f"hold_jax at {os.path.dirname(hold_jax.__file__)} (commit {commit_of(os.path.dirname(hold_jax.__file__))})")
  print(f"{'job':<7} {'walked':<9} {'modules':>7} {'climbs':>6}")
  for row in rows:
    print(f"{row['job']:<7} {row['walked']:<9} {row['modules']:>7} {row['climbs']:>6}")
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"date": time.strftime("%Y-%m-%d"), "machine": platform.platform(), "jax": jax.__version__,
               "commit": commit_of(os.path.dirname(hold_jax.__file__)), "rows": rows}, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main_()

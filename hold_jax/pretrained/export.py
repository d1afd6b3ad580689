"""Makes a folder of hold_jax/pretrained from a trained workdir: the EMA parameters of its newest checkpoint,
the config (the stock config file's, whose trained fields must equal the workdir's record) and model.json.

  python -m hold_jax.pretrained.export --workdir runs/digits --config digits --folder digits \\
      --made "python -m hold_jax.main --config configs/digits.py --workdir runs/digits"

The figures in model.json are kept when the parameters are unchanged and emptied otherwise;
benchmarks/pretrained_figures.py measures them.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import importlib
import json
import time

import jax
from flax import serialization
from etils import epath

from hold_jax import pretrained
from hold_jax.data import input_pipeline
from hold_jax.workdir import run_record
from hold_jax.workdir import trained_model


def export(workdir: str, config_name: str, folder: str, made: str, settings: dict[str, str] | None = None
           ) -> epath.Path:
  """Writes hold_jax/pretrained/<folder>/{config.json, ema_params.msgpack, model.json}; returns the folder.

  settings: run settings (sampling.*, eval.*: run_record.RUN_SETTINGS) that replace the config file's, e.g.
  {'sampling.method': 'gddim'} for the best measured sampler; values are Python literals as strings.
  """
  recorded = run_record.read(epath.Path(workdir))
  if recorded is None:
    raise SystemExit(f"{workdir} has no config.json: not a hold_jax workdir.")
  config = importlib.import_module(f"hold_jax.configs.{config_name}").get_config()
  for field, value in (settings or {}).items():
    if not run_record.is_run_setting(field):
      raise SystemExit(f"--set {field}: only run settings ({', '.join(run_record.RUN_SETTINGS)}) may differ from "
                       "the config file; the trained fields are the workdir's.")
    run_record.set_field(config, field, ast.literal_eval(value))
  config = run_record.with_schedule_horizon(config, epath.Path(workdir))
  differences = run_record.trained_differences(recorded, run_record.config_fields(config))
  if differences:
    raise SystemExit(f"{workdir} was not trained with configs/{config_name}.py: " + "; ".join(
        f"{field} = {trained!r} there, {given!r} here" for field, trained, given in differences))
  params, step = trained_model.load_ema_params(config, workdir, input_pipeline.data_shape(config.data))
  target = pretrained.FOLDER / folder
  target.mkdir(parents=True, exist_ok=True)
  blob = serialization.to_bytes(params)
  sha256 = hashlib.sha256(blob).hexdigest()
  old = json.loads((target / pretrained.MODEL_FILE).read_text()) if (target / pretrained.MODEL_FILE).exists() else {}
  (target / pretrained.PARAMS_FILE).write_bytes(blob)
  run_record.write(target, config)
  trained = (epath.Path(workdir) / run_record.CHECKPOINTS_DIR / str(step)).stat().mtime
  record = {"step": step, "sha256": sha256, "num_parameters": sum(x.size for x in jax.tree.leaves(params)),
            "made": {"command": made, "steps": step, "trained": time.strftime("%Y-%m-%d", time.gmtime(trained)),
                     "exported": time.strftime("%Y-%m-%d"),
                     "config": f"configs/{config_name}.py"},
            "settings": settings or {}, "figures": old.get("figures", {}) if old.get("sha256") == sha256 else {}}
  (target / pretrained.MODEL_FILE).write_text(json.dumps(record, indent=2) + "\n")
  return target


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--config", required=True, help="a stock config module: toy2d, digits, ...")
  parser.add_argument("--folder", required=True, help="the folder under hold_jax/pretrained: swiss_roll, digits")
  parser.add_argument("--made", required=True, help="the command that trained the workdir")
  parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                      help="run settings that replace the config file's, e.g. sampling.method=\"'gddim'\"")
  args = parser.parse_args()
  settings = dict(item.split("=", 1) for item in args.set)
  print(f"wrote {export(args.workdir, args.config, args.folder, args.made, settings)}")


if __name__ == "__main__":
  main()

"""Entry point: python -m hold_jax.main --config configs/NAME.py --workdir DIR [--config.a.b=value ...].

Thin on purpose: it parses flags and hands the config to the job named by `config.job`; everything else
is importable from a notebook.
"""
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from hold_jax import demo
from hold_jax import sde as sde_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for outputs (and, for training, checkpoints).")
flags.mark_flags_as_required(["config", "workdir"])

JOBS = {"exact_score_demo": demo.run}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if config.get("job") not in JOBS:
    raise app.UsageError(f"config.job = {config.get('job')!r} is not allowed: it must be one of {sorted(JOBS)}.")
  try:  # config errors end here with the field and the fix, not as a traceback from inside a job
    sde_lib.from_config(config.sde)
  except ValueError as error:
    raise app.UsageError(str(error)) from None
  logging.info("Config:\n%s", config)
  result = JOBS[config.job](config, _WORKDIR.value)
  print(f"{config.job} finished; outputs in {_WORKDIR.value}: {result}")


if __name__ == "__main__":
  app.run(main)

"""Entry point: python -m hold_jax.main --config configs/NAME.py --workdir DIR [--mode=...] [--config.a.b=value].

Thin on purpose: it parses flags, checks the config, and hands it to train, sample, evaluate or the demo;
everything else is importable from a notebook.
"""
import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from hold_jax import config_checks
from hold_jax import demo
from hold_jax import evaluate
from hold_jax import input_pipeline
from hold_jax import sample
from hold_jax import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples; a run resumes "
                               "from the latest checkpoint found here.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "sample", "eval"], "train (and resume), sample from the "
                          "latest EMA parameters, or eval: their NLL bound (config.eval) as workdir/eval/*.json.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first: set it on every "
                                  "host of a multi-host job. TPU pod slices, SLURM and Open MPI jobs detect their "
                                  "peers themselves; elsewhere give the three flags below.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (or $JAX_COORDINATOR_ADDRESS), "
                                   "for --distributed outside TPU/SLURM/MPI.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes, for --distributed outside "
                                      "TPU/SLURM/MPI.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _DISTRIBUTED.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  config = _CONFIG.value
  try:  # config errors end here with the field and the fix, not as a traceback from inside a job
    config_checks.check(config)
  except ValueError as error:
    raise app.UsageError(str(error)) from None
  logging.info("Config:\n%s", config)
  if config.job == "exact_score_demo":
    print(f"exact_score_demo finished; outputs in {_WORKDIR.value}: {demo.run(config, _WORKDIR.value)}")
  elif _MODE.value == "train":
    grids = sample.grid_callback(config, _WORKDIR.value, input_pipeline.data_shape(config.data))
    state = train.train(config, _WORKDIR.value, callbacks=[grids] if grids else [])
    print(f"trained to step {int(state.step)}; checkpoints in {_WORKDIR.value}/checkpoints")
  elif _MODE.value == "eval":
    print(evaluate.evaluate(config, _WORKDIR.value))
  else:
    print(sample.sample_to_disk(config, _WORKDIR.value))


if __name__ == "__main__":
  app.run(main)

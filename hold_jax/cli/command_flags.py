"""The flags of `hold-jax` / `python -m hold_jax.main`, defined apart from the jobs so that `--help`
(hold_jax/cli/command_help.py) lists them, and a bad command line is reported, before JAX and TensorFlow are
imported. Every other setting is a config field, `--config.GROUP.FIELD=VALUE` (hold_jax/configs/default.py)."""
from absl import flags
from ml_collections import config_flags


def define(flag_values: flags.FlagValues) -> tuple[flags.FlagHolder, ...]:
  """Defines the command's flags on flag_values; returns their holders (config, workdir, mode, distributed,
  coordinator_address, num_processes, process_id)."""
  holders = (
      config_flags.DEFINE_config_file(
          "config", None, "The config file: a stock one (configs/toy2d.py, configs/digits.py, configs/cifar10.py, "
          "configs/celebahq256.py; the name works from any directory) or your own, with :VARIANT for a variant it "
          "knows (configs/toy2d.py:local is the CPU smoke size).", flag_values=flag_values, lock_config=True),
      flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples; a run resumes from the "
                          "latest checkpoint found here.", flag_values=flag_values),
      flags.DEFINE_enum("mode", "train", ["train", "sample", "eval"], "train (and resume), sample from the latest "
                        "EMA parameters, or eval: config.eval.metrics (the NLL bound; FID, KID and IS of images) as "
                        "workdir/eval/*.json.", flag_values=flag_values),
      flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first: set it on every host of a "
                        "multi-host job. TPU pod slices, SLURM and Open MPI jobs detect their peers themselves; "
                        "elsewhere give the three flags below.", flag_values=flag_values),
      flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (or $JAX_COORDINATOR_ADDRESS), for "
                          "--distributed outside TPU/SLURM/MPI.", flag_values=flag_values),
      flags.DEFINE_integer("num_processes", None, "Number of processes, for --distributed outside TPU/SLURM/MPI.",
                           flag_values=flag_values),
      flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).",
                           flag_values=flag_values),
  )
  flags.mark_flags_as_required(["config", "workdir"], flag_values=flag_values)
  return holders


def scratch() -> flags.FlagValues:
  """A new FlagValues with the command's flags alone, on which hold_jax/main.py checks a command line before
  its imports: absl parses a config flag's overrides once per FlagValues, and app.run parses flags.FLAGS."""
  flag_values = flags.FlagValues()
  define(flag_values)
  return flag_values


CONFIG, WORKDIR, MODE, DISTRIBUTED, COORDINATOR, NUM_PROCESSES, PROCESS_ID = define(flags.FLAGS)

"""The flags of `hold-jax` / `python -m hold_jax.main`, defined apart from the jobs so that `--help`
(hold_jax/command_help.py) lists them before JAX and TensorFlow are imported. Every other setting is a config
field, `--config.GROUP.FIELD=VALUE` (hold_jax/configs/default.py)."""
from absl import flags
from ml_collections import config_flags

CONFIG = config_flags.DEFINE_config_file(
    "config", None, "The config file: a stock one (configs/toy2d.py, configs/digits.py, configs/cifar10.py, "
    "configs/celebahq256.py; the name works from any directory) or your own, with :VARIANT for a variant it "
    "knows (configs/toy2d.py:local is the CPU smoke size).", lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples; a run resumes "
                              "from the latest checkpoint found here.")
MODE = flags.DEFINE_enum("mode", "train", ["train", "sample", "eval"], "train (and resume), sample from the "
                         "latest EMA parameters, or eval: config.eval.metrics (the NLL bound; FID, KID and IS of "
                         "images) as workdir/eval/*.json.")
DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first: set it on every "
                                "host of a multi-host job. TPU pod slices, SLURM and Open MPI jobs detect their "
                                "peers themselves; elsewhere give the three flags below.")
COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (or "
                                  "$JAX_COORDINATOR_ADDRESS), for --distributed outside TPU/SLURM/MPI.")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes, for --distributed outside "
                                     "TPU/SLURM/MPI.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")
flags.mark_flags_as_required(["config", "workdir"])

"""Entry point: python -m hold_jax.main --config configs/NAME.py --workdir DIR [--mode=...] [--config.a.b=value].

Thin on purpose: it parses flags, checks the config, and hands it to train, sample or evaluate;
everything else is importable from a notebook. The console shows the run's progress; the config and the
libraries' log lines go to <workdir>/log.txt (hold_jax/console.py).
"""
import errno
import importlib
import os
import signal
import sys
from typing import NoReturn

from hold_jax import console
from hold_jax.cli import command_errors
from hold_jax.cli import command_flags
from hold_jax.cli import command_help
from hold_jax.training import preemption


def _stopped_while_starting(signum, frame) -> None:
  """A stop signal during the imports (10-15 s) ends the command with one line, not a traceback or -15; a
  second one while it unwinds is ignored."""
  del frame
  for other in preemption.SIGNALS:
    signal.signal(other, signal.SIG_IGN)
  print(f"hold_jax: stopped by {signal.Signals(signum).name} while starting; nothing was written.", flush=True)
  raise SystemExit(0)


if __name__ == "__main__" or os.path.basename(sys.argv[0]) == "hold-jax":  # the command, not an import of it
  for _signal in preemption.SIGNALS:
    signal.signal(_signal, _stopped_while_starting)
  command_help.print_help_and_exit(sys.argv)  # at once, before the imports below
  # A bad command line: one line, too.
  command_errors.parse_flags(sys.argv, command_flags.scratch(), before_imports=True)

with console.native_stderr_captured() as _IMPORT_NOTICES:
  importlib.import_module("tensorflow")  # first, so the C++ notices it prints on import are kept for the log

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from hold_jax.cli import config_checks
from hold_jax.data import image_sources
from hold_jax.data import input_pipeline
from hold_jax.evaluation import eval_job
from hold_jax.sampling import sample_job
from hold_jax.training import train
from hold_jax.workdir import checkpoints
from hold_jax.workdir import run_record
from hold_jax.workdir import trained_model

_CONFIG = command_flags.CONFIG
_WORKDIR = command_flags.WORKDIR
_MODE = command_flags.MODE
_DISTRIBUTED = command_flags.DISTRIBUTED
_COORDINATOR = command_flags.COORDINATOR
_NUM_PROCESSES = command_flags.NUM_PROCESSES
_PROCESS_ID = command_flags.PROCESS_ID


def initialize_distributed(config) -> None:
  """jax.distributed with the config's timeouts (configs/default.py, 'distributed')."""
  timeouts = config.get("distributed") or {}
  jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                             initialization_timeout=int(timeouts.get("initialization_timeout", 300)),
                             heartbeat_timeout_seconds=int(timeouts.get("heartbeat_timeout", 100)),
                             shutdown_timeout_seconds=int(timeouts.get("shutdown_timeout", 300)))


def run(config, workdir: str, mode: str, overrides: dict) -> str:
  """Runs the job and returns what to print: for eval, each report's results (every metric to a few
  significant digits beside its baselines, the NLL bound in one unit) and then its path
  (eval_job.summary); for sample, the samples' path; for train, where the run stopped."""
  if mode == "train":
    grids = sample_job.grid_callback(config, workdir, input_pipeline.data_shape(config.data))
    state = train.train(config, workdir, callbacks=[grids] if grids else [])
    if int(state.step) < config.training.num_steps:
      return (f"stopped at step {int(state.step)} of {config.training.num_steps} (checkpoint saved); the same "
              "command resumes")
    return f"trained to step {int(state.step)}; checkpoints in {workdir}/checkpoints"
  # The workdir's config.json decides what was trained; the command line chooses the sampler and the metrics.
  config = run_record.for_inference(trained_model.workdir_path(workdir), config, overrides)
  config_checks.check(config)
  if mode == "eval":
    return eval_job.summary(eval_job.run(config, workdir))
  return sample_job.sample_to_disk(config, workdir)


# What a stop signal outside the training loop leaves (preemption.exit_on_signals; in the loop, training saves
# the step reached and stops).
WHAT_A_STOP_KEEPS = {
    "train": "the checkpoints in {workdir} are as they were, and the same command resumes from the newest.",
    "sample": "no samples were written; the same command starts again.",
    "eval": "the finished evaluation rounds in {workdir}/eval are kept, and the same command resumes from them.",
}


def fail(message, status: int = 1) -> NoReturn:
  """Ends the command with `hold_jax: error: <message>` on stderr: bad input is that one line, no traceback."""
  print(f"{command_errors.ERROR_PREFIX}{message}", file=sys.stderr)
  sys.exit(status)


# Room a run needs in its workdir before any checkpoint: the log file and config.json (checked with the
# workdir's writability at the start; train checks the room for a checkpoint itself).
START_BYTES = 2**20


def check_workdir(workdir: str) -> None:
  """CheckpointError unless a local workdir has room for START_BYTES and can be created and written, so that
  an unusable one is one line before the log file opens (a bucket's is checked by the job that writes there).
  The room comes first: on a full disk the writability probe fails too, with a fix that would not help."""
  if "://" in workdir:
    return
  path = trained_model.workdir_path(workdir)
  existing = str(path)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if os.statvfs(existing).f_flag & os.ST_RDONLY:  # said as it is, before its room (none to take) or a probe
    raise checkpoints.CheckpointError(f"{path} is on a read-only file system ({existing}): choose a --workdir on a "
                                      "writable disk.")
  free = checkpoints.free_bytes(path)
  if free is not None and free < START_BYTES:
    raise checkpoints.CheckpointError(
        f"{path} is on a disk with {free / 2**20:.1f} MiB free, and a run needs about {START_BYTES / 2**20:.0f} MiB "
        "there to start (its log file and config.json): free space or choose a --workdir on a larger disk.")
  checkpoints.check_workdir(path, 0)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.hold_library_logs()
  # command_errors.parse_flags says it first; another flags parser may not.
  problem = command_errors.workdir_problem(_WORKDIR.value)
  if problem:
    fail(problem, command_errors.USAGE_ERROR_STATUS)
  config = _CONFIG.value
  if _DISTRIBUTED.value:
    initialize_distributed(config)
  # After jax.distributed (which installs its SIGTERM notifier, and must come before any other jax call).
  preemption.exit_on_signals(WHAT_A_STOP_KEEPS[_MODE.value].format(workdir=_WORKDIR.value))
  try:  # config errors end here with the field and the fix, not as a traceback from inside a job
    config_checks.check(config)
  except ValueError as error:
    fail(error, command_errors.USAGE_ERROR_STATUS)
  checkpoints.shorten_library_tracebacks()
  try:  # before anything is logged or written: a workdir or log file that cannot be written is one line
    check_workdir(_WORKDIR.value)
    log_file = console.log_to_file(_WORKDIR.value, jax.process_index())
  except (checkpoints.CheckpointError, console.LogFileError) as error:
    fail(error)
  console.say(f"hold_jax {_MODE.value}: workdir {_WORKDIR.value}" + (f", log {log_file}" if log_file else ""))
  logging.info("TensorFlow's notices on import:\n%s", "".join(_IMPORT_NOTICES))
  logging.info("Config:\n%s", config)
  overrides = config_flags.get_override_values(flags.FLAGS["config"])
  try:
    print(run(config, _WORKDIR.value, _MODE.value, overrides))
  except preemption.SecondInterrupt:
    print(f"hold_jax: stopped at once by a second SIGINT, without a final save; the newest complete checkpoint in "
          f"{_WORKDIR.value}/checkpoints resumes.", flush=True)
    sys.exit(130)
  except USER_ERRORS as error:
    # What the user can fix is said in one message; the traceback stays in the log (--verbosity=1 shows it).
    logging.debug("Traceback of the error below:", exc_info=True)
    is_lookup = isinstance(error, (AttributeError, KeyError))
    message = command_errors.config_field_error(error, config) if is_lookup else None
    if is_lookup and message is None:
      raise
    fail(message or error)
  except OSError as error:  # after USER_ERRORS: a FileNotFoundError there (NotPrepared) is one already
    if error.errno not in DISK_ERRNOS:
      raise
    logging.debug("Traceback of the error below:", exc_info=True)
    fail(f"writing {error.filename or 'to ' + str(_WORKDIR.value)} failed: {error.strerror}. Nothing was written "
         "under its final name (files are written under a temporary name and renamed); free space or choose a "
         "--workdir on another disk, and rerun.")


# A disk that fills, turns read-only or exceeds a quota while a job writes (samples, reports, rounds).
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


# Errors whose message is the whole story (bad input, damaged or missing checkpoints, a changed config, a
# failed save, non-finite training, tfds data that is not prepared); a config field lookup that fails is named
# by command_errors.config_field_error.
USER_ERRORS = (ValueError, FloatingPointError, checkpoints.CheckpointError, image_sources.NotPrepared,
               AttributeError, KeyError)


def entry_point() -> None:
  """The `hold-jax` console command (pyproject.toml): the same as `python -m hold_jax.main`."""
  app.run(main, flags_parser=command_errors.parse_flags)


if __name__ == "__main__":
  entry_point()

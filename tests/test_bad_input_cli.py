"""Bad input met before a job starts is one line on stderr, `hold_jax: error: ...`, naming the file or field and
the fix, before the log file opens or the config is logged: a config file that gives no config, an empty
--workdir, a workdir or log file that cannot be written, a damaged workdir/config.json, a seed or an sde.order
the code cannot take. A log file that fills up mid-run is one warning, not a traceback per log line; tfds'
warnings do not come before the message that says how to prepare its data (hold_jax/cli/command_errors.py, main.py,
console.py, run_record.py)."""
import errno
import io
import json
import logging as std_logging
import math
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from absl import logging
from etils import epath
from ml_collections import config_flags

from hold_jax import console
from hold_jax.cli import command_errors
from hold_jax.cli import config_checks
from hold_jax.configs import cifar10
from hold_jax.configs import toy2d
from hold_jax.data import image_sources
from hold_jax.process import perturbation_kernel
from hold_jax.process import sde as sde_lib
from hold_jax.workdir import checkpoints
from hold_jax.workdir import run_record

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY2D = os.path.join(ROOT, "configs", "toy2d.py")
PROGRAM_ERROR = "hold_jax: error: "


def assert_one_line(stderr, *parts):
  """stderr is one `hold_jax: error:` line holding every part, and no traceback."""
  assert stderr.startswith(PROGRAM_ERROR) and stderr.count("\n") == 1, stderr
  assert "Traceback" not in stderr
  for part in parts:
    assert part in stderr, (part, stderr)


# ------------------------------------------------------------------------------------------------------------
# The command line: config files that give no config, and an empty --workdir (command_errors.parse_flags).


def parse(argv, capsys):
  """command_errors.parse_flags on a fresh FlagValues with a config file flag and --workdir: (exit status or the config,
  stderr)."""
  flag_values = flags.FlagValues()
  config = config_flags.DEFINE_config_file("config", None, "config", flag_values=flag_values, lock_config=True,
                                           sys_argv=argv)
  flags.DEFINE_string("workdir", None, "workdir", flag_values=flag_values)
  try:
    command_errors.parse_flags(argv, flag_values)
  except SystemExit as exit_:
    return exit_.code, capsys.readouterr().err
  return config.value, capsys.readouterr().err


CONFIG_FILES = {  # name -> (its text, words the message must hold)
    "config.json": ('{"sde": {"order": 3}, "seed": 0}', ["is not a Python config file", "a workdir's config.json"]),
    "notes.txt": ("train the toy model at order three\n", ["is not a Python config file", "configs/toy2d.py"]),
    "broken.py": ("def get_config(:\n  return None\n", ["is not valid Python (", "line 1", "fix the file"]),
    "imports.py": ("import no_such_module_here\n", ["ModuleNotFoundError: No module named 'no_such_module_here'"]),
    "nothing.py": ("SEED = 0\n", ["defines no get_config()"]),
    "returns_none.py": ("def get_config():\n  pass\n", ["returned NoneType, not an ml_collections.ConfigDict"]),
    "returns_dict.py": ("def get_config():\n  return {'seed': 0}\n", ["returned dict, not an ml_collections"]),
}


@pytest.mark.parametrize("name", sorted(CONFIG_FILES))
def test_a_config_file_that_gives_no_config_is_one_line(tmp_path, capsys, name):
  text, parts = CONFIG_FILES[name]
  path = tmp_path / name
  path.write_text(text)
  status, stderr = parse(["prog", "--config", str(path), "--workdir", str(tmp_path / "run")], capsys)
  assert status == 2
  assert_one_line(stderr, f"--config={path}: ", *parts)


def test_a_variant_the_config_does_not_know_is_its_own_message(tmp_path, capsys):
  status, stderr = parse(["prog", "--config", "configs/toy2d.py:locale", "--workdir", str(tmp_path)], capsys)
  assert status == 2
  assert stderr == (f"{PROGRAM_ERROR}--config=configs/toy2d.py:locale: configs/toy2d.py knows the variant 'local' "
                    "only, got 'locale'.\n")
  (tmp_path / "plain.py").write_text("from hold_jax.configs import toy2d\ndef get_config():\n"
                                     "  return toy2d.get_config('local')\n")
  status, stderr = parse(["prog", f"--config={tmp_path / 'plain.py'}:local", "--workdir", str(tmp_path)], capsys)
  assert status == 2
  assert_one_line(stderr, f"get_config() of {tmp_path / 'plain.py'} takes no variant: give --config="
                  f"{tmp_path / 'plain.py'} without ':local'.")
  config, stderr = parse(["prog", "--config", f"{tmp_path / 'plain.py'}", "--workdir", str(tmp_path)], capsys)
  assert config.training.num_steps == 40 and stderr == ""


@pytest.mark.parametrize("workdir, word", [("", "empty"), ("  ", "blank ('  ')")])
def test_an_empty_workdir_is_refused(capsys, workdir, word):
  status, stderr = parse(["prog", "--config", f"{TOY2D}:local", f"--workdir={workdir}"], capsys)
  assert status == 2
  assert_one_line(stderr, f"--workdir is {word}: give a directory")


# ------------------------------------------------------------------------------------------------------------
# Seeds and the order of the process (config_checks, sde.from_config).


def toy2d_with(**fields):
  """toy2d:local with fields ('a__b' for a.b) set, types unchecked as a user's config file may set them."""
  config = toy2d.get_config("local")
  with config.ignore_type():
    for name, value in fields.items():
      *groups, leaf = name.split("__")
      node = config
      for group in groups:
        node = node[group]
      node[leaf] = value
  return config


@pytest.mark.parametrize("field, value", [
    ("seed", -1), ("seed", 1.5), ("seed", 2**63), ("seed", math.nan), ("seed", "0"), ("seed", True),
    ("eval.seed", -3),
])
def test_a_seed_numpy_or_jax_cannot_take_is_named(field, value):
  with pytest.raises(ValueError) as info:
    config_checks.check(toy2d_with(**{field.replace(".", "__"): value}))
  assert str(info.value).startswith(f"{field} = {value!r} is not allowed: it must be an integer in [0, 2**63)")
  config_checks.check(toy2d_with(seed=2**63 - 1))


@pytest.mark.parametrize("order", [5, 50, 0, 2.5])
def test_an_order_past_the_kernels_reach_is_named_with_the_bound_and_why(order):
  with pytest.raises(ValueError) as info:
    config_checks.check(toy2d_with(sde__order=order))
  message = str(info.value)
  assert message.startswith(f"sde.order = {order!r} is not allowed: it must be an integer in [1, 4] "
                            "(sde.MAX_ORDER): from order 5 on, the float32 perturbation kernel"), message
  assert sde_lib.from_config(toy2d_with(sde__order=sde_lib.MAX_ORDER).sde).order == sde_lib.MAX_ORDER


@pytest.mark.float64
def test_past_the_order_bound_the_float32_kernel_is_no_longer_accurate():
  """sde.MAX_ORDER's reason: one order past it, the float32 factor L_t at t = sde.eps is off by more than 1e-3
  (row-normalised) from the float64 one; up to it, tests/test_sde.py and test_losses.py hold the float32 kernel
  to 1e-3 (sde.py's comment has the numbers)."""
  order = sde_lib.MAX_ORDER + 1
  couplings, friction, _ = sde_lib.critical_parameters(order, 1.0)
  sde = sde_lib.LangevinSDE(couplings, friction, init_aux_var=(0.04,) * (order - 1))
  _, factor64 = perturbation_kernel.marginal_factor(sde, jnp.asarray([sde.eps], jnp.float64))
  _, factor32 = perturbation_kernel.marginal_factor(sde, jnp.asarray([sde.eps], jnp.float32))
  factor64, factor32 = np.asarray(factor64), np.asarray(factor32, np.float64)
  error = np.max(np.abs(factor32 - factor64) / np.linalg.norm(factor64, axis=-1, keepdims=True))
  assert error > 1e-3, error


# ------------------------------------------------------------------------------------------------------------
# A damaged workdir/config.json (run_record).


DAMAGED_RECORDS = {  # the file's text -> words the message must hold
    "[]": "holds a JSON list, not an object of config fields",
    "null": "holds null, not an object of config fields",
    "7": "holds the number 7, not an object of config fields",
    '{"sde": 5}': "records sde = 5, but sde is a group of fields in the config (sde.T, ",
    '{"sde": {"order": "three"}}': "records sde.order = 'three', but sde.order takes an integer (the given config "
                                   "has 3)",
    '{"sde": {"order": {"value": 3}}}': "records sde.order as a group of fields (sde.order.value = 3), but "
                                        "sde.order is a single value in the config (3)",
    '{"seed": true}': "records seed = True, but seed takes an integer",
    '{"model": {"width": 32.5}}': "records model.width = 32.5, but model.width takes an integer",
}


@pytest.mark.parametrize("text", sorted(DAMAGED_RECORDS))
def test_a_damaged_record_is_named_with_the_fix(tmp_path, text):
  workdir = epath.Path(tmp_path)
  (workdir / "checkpoints" / "20").mkdir(parents=True)  # a run to resume, so the record is read
  (workdir / run_record.RECORD_NAME).write_text(text)
  config = toy2d.get_config("local")
  for read_record in (lambda: run_record.check_resume(workdir, config),
                      lambda: run_record.for_inference(workdir, config, {}),
                      lambda: run_record.with_schedule_horizon(config, workdir)):
    with pytest.raises(run_record.RecordMismatch) as info:
      read_record()
    message = str(info.value)
    assert message.startswith(f"{workdir / run_record.RECORD_NAME} {DAMAGED_RECORDS[text]}"), message
    assert message.endswith("restore it from a copy, or remove it to accept the given config."), message
    assert "\n" not in message


def test_a_record_written_by_a_run_still_passes(tmp_path):
  workdir = epath.Path(tmp_path)
  config = run_record.with_schedule_horizon(toy2d.get_config("local"), workdir)
  run_record.write(workdir, config)
  run_record.check_resume(workdir, config)
  sampled = toy2d.get_config("local")
  with sampled.ignore_type():
    sampled.sde.init_aux_var = None  # a field the command leaves unset takes the record's value
  assert run_record.for_inference(workdir, sampled, {}).sde.init_aux_var == config.sde.init_aux_var
  record = json.loads((workdir / run_record.RECORD_NAME).read_text())
  record["model"]["width"] = 64  # another trained value, of the right type: the usual mismatch, not damage
  (workdir / run_record.RECORD_NAME).write_text(json.dumps(record))
  with pytest.raises(run_record.RecordMismatch, match="model.width: trained with 64, given 32"):
    run_record.check_resume(workdir, config)


# ------------------------------------------------------------------------------------------------------------
# The workdir and the log file at the start, and the log file mid-run (main.main, console).


@pytest.fixture
def absl_flags(monkeypatch):
  """absl's flags parsed (as app.run leaves them) while the test runs; its handler's stream and the flags are
  restored afterwards."""
  handler = logging.get_absl_handler().python_handler
  original = handler.stream
  monkeypatch.setattr(handler, "stream", original)
  was_parsed = flags.FLAGS.is_parsed()
  if not was_parsed:
    flags.FLAGS.mark_as_parsed()
  threshold = flags.FLAGS.stderrthreshold
  yield handler
  if handler.stream not in (original, sys.stderr, sys.__stderr__) and not isinstance(handler.stream, io.StringIO):
    handler.stream.close()  # a log file the test opened
  flags.FLAGS.stderrthreshold = threshold
  if not was_parsed:
    flags.FLAGS.unparse_flags()


@pytest.fixture
def run_main(absl_flags, monkeypatch, capsys):
  """Runs hold_jax.main.main in this process on a command line (without the training itself):
  (exit status, stdout, stderr)."""
  from hold_jax import main as main_lib  # pylint: disable=import-outside-toplevel  (imports tensorflow)
  monkeypatch.setattr(checkpoints, "shorten_library_tracebacks", lambda: None)  # process-wide hooks
  monkeypatch.setattr(main_lib, "run", lambda *args: "the job ran")

  def run(*args, config=f"{TOY2D}:local"):
    capsys.readouterr()
    remaining = command_errors.parse_flags(["prog", "--config", config, *args], flags.FLAGS)
    try:
      main_lib.main(remaining)
      status = 0
    except SystemExit as exit_:
      status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err

  return run


@pytest.mark.parametrize("field, value, message", [
    ("data.dataset", "'moons'", "data.dataset = 'moons' is not allowed"),
    ("training.batch_size", "0", "training.batch_size = 0 is not allowed"),
    ("checkpoint.keep", "0", "checkpoint.keep = 0 is not allowed"),
    ("optim.beta2", "1.0", "optim.beta2 = 1.0 is not allowed"),
    ("eval.is_splits", "0", "eval.is_splits = 0 is not allowed"),
])
def test_a_bad_field_value_is_one_line_before_the_job(tmp_path, run_main, field, value, message):
  # A config file that sets the field (a command-line override of it is parsed the same way: test_bad_input.py).
  config_file = tmp_path / "bad.py"
  config_file.write_text("from hold_jax.configs import toy2d\n\n\ndef get_config():\n"
                         f"  config = toy2d.get_config('local')\n  config.{field} = {value}\n  return config\n")
  status, out, err = run_main("--workdir", str(tmp_path / "run"), config=str(config_file))
  assert status == 2 and out == ""
  assert_one_line(err, message)
  assert not (tmp_path / "run").exists()


def test_a_workdir_that_cannot_be_written_is_one_line_before_the_log(tmp_path, run_main, monkeypatch):
  (tmp_path / "file").write_text("x")
  status, out, err = run_main("--workdir", str(tmp_path / "file" / "run"))
  assert status == 1 and out == ""
  assert_one_line(err, f"{tmp_path / 'file' / 'run'} is not writable (", "choose a --workdir")
  monkeypatch.setattr(checkpoints, "free_bytes", lambda path: 300_000)  # a full disk
  status, out, err = run_main("--workdir", str(tmp_path / "run"))
  assert status == 1 and out == ""
  assert_one_line(err, f"{tmp_path / 'run'} is on a disk with 0.3 MiB free, and a run needs about 1 MiB there to "
                  "start (its log file and config.json): free space or choose a --workdir on a larger disk.")
  assert not (tmp_path / "run" / "log.txt").exists()


def test_a_log_file_that_cannot_be_opened_is_one_line(tmp_path, run_main):
  (tmp_path / "run" / "log.txt").mkdir(parents=True)
  status, out, err = run_main("--workdir", str(tmp_path / "run"))
  assert status == 1 and out == ""
  assert_one_line(err, f"the log file {tmp_path / 'run' / 'log.txt'} cannot be written (Is a directory): free "
                  "space on its disk, fix its permissions or choose another --workdir")
  status, out, err = run_main("--workdir", str(tmp_path / "good"))
  assert status == 0 and err == "" and out.splitlines() == [
      f"hold_jax train: workdir {tmp_path / 'good'}, log {tmp_path / 'good' / 'log.txt'}", "the job ran"]


class FillingFile(io.StringIO):
  """A log file on a disk with `room` characters left: writes past it fail as a full disk's do."""

  def __init__(self, room):
    super().__init__()
    self.room = room

  def write(self, text):
    if self.tell() + len(text) > self.room:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return super().write(text)


def test_a_full_disk_at_the_start_is_one_error(tmp_path, absl_flags, monkeypatch):
  absl_flags.stream = io.StringIO("what was logged before the workdir was known\n")
  monkeypatch.setattr(console, "open", lambda *args, **kwargs: FillingFile(room=10), raising=False)
  with pytest.raises(Exception) as info:  # pylint: disable=broad-exception-caught  (today: an OSError traceback)
    console.log_to_file(str(tmp_path))
  assert str(info.value).startswith(f"the log file {tmp_path / 'log.txt'} cannot be written (No space left on "
                                    "device): free space on its disk"), info.value
  assert isinstance(info.value, console.LogFileError)  # what main says in one line


def test_a_log_file_that_fills_up_mid_run_is_one_warning(tmp_path, absl_flags, monkeypatch, capfd):
  absl_flags.stream = io.StringIO("held\n")
  monkeypatch.setattr(console, "open", lambda *args, **kwargs: FillingFile(room=2000), raising=False)
  path = console.log_to_file(str(tmp_path))
  for k in range(200):  # orbax and jax log lines, to a disk that is full from the 20th on or so
    absl_flags.emit(std_logging.LogRecord("absl", std_logging.INFO, __file__, 1, "line %d of a busy run", (k,),
                                          None))
  err = capfd.readouterr().err
  assert "Logging error" not in err and "Traceback" not in err, err[:2000]
  assert err == (f"hold_jax: warning: the log file {path} cannot be written (No space left on device); its later "
                 "lines are dropped, warnings and errors still show here.\n")


def test_tfds_warnings_do_not_come_before_the_not_prepared_message(tmp_path, absl_flags, capfd, monkeypatch,
                                                                    no_network):
  # main's console (app.run puts absl's handler on the root logger): INFO to the log, WARNING and up on stderr.
  monkeypatch.setattr(std_logging.root, "handlers", [*std_logging.root.handlers, logging.get_absl_handler()])
  absl_flags.stream = io.StringIO()
  flags.FLAGS.stderrthreshold = "warning"
  data = cifar10.get_config("local").data
  with pytest.raises(FileNotFoundError, match="the tfds dataset 'cifar10' is not prepared") as info:
    image_sources.tfds_builder(data.dataset, str(tmp_path / "nodata"))
  assert capfd.readouterr().err == ""
  assert "dataset_info.json" in absl_flags.stream.getvalue()  # kept in the log file
  from hold_jax import main as main_lib  # pylint: disable=import-outside-toplevel
  assert isinstance(info.value, main_lib.USER_ERRORS)  # said as one line, not a traceback


def test_the_command_line_says_an_unusable_workdir_in_one_line_and_nothing_else(tmp_path):
  (tmp_path / "file").write_text("x")
  command = [sys.executable, "-m", "hold_jax.main", "--config", "configs/toy2d.py:local", "--workdir",
             str(tmp_path / "file" / "run")]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT))
  assert result.returncode == 1 and result.stdout == "", result.stdout[-2000:]
  assert_one_line(result.stderr, f"{tmp_path / 'file' / 'run'} is not writable (")


def test_a_workdir_on_a_read_only_file_system_is_named_as_such(tmp_path):
  import run_helpers  # pylint: disable=g-import-not-at-top  (tests/run_helpers.py)
  from hold_jax import main  # pylint: disable=g-import-not-at-top
  with run_helpers.tmpfs(tmp_path / "ro", "ro,size=8m") as mount:
    with pytest.raises(checkpoints.CheckpointError, match=r"run is on a read-only file system .*writable disk"):
      main.check_workdir(str(mount / "run"))


def test_a_disk_that_fills_while_a_job_writes_is_one_line(tmp_path, run_main, monkeypatch):
  from hold_jax import main as main_lib  # pylint: disable=import-outside-toplevel

  def fills(*args):
    raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "samples" / ".x.npz.tmp-1"))

  monkeypatch.setattr(main_lib, "run", fills)
  status, out, err = run_main("--workdir", str(tmp_path / "run"), "--mode=sample")
  assert status == 1
  assert_one_line(err, f"writing {tmp_path / 'run' / 'samples' / '.x.npz.tmp-1'} failed: No space left on device. "
                  "Nothing was written under its final name")


def test_data_that_is_not_prepared_is_one_line_through_main(tmp_path, run_main, monkeypatch):
  from hold_jax import main as main_lib  # pylint: disable=import-outside-toplevel

  def not_prepared(*args):
    raise image_sources.NotPrepared("config.data.dataset = 'cifar10': the tfds dataset 'cifar10' is not prepared")

  monkeypatch.setattr(main_lib, "run", not_prepared)
  status, out, err = run_main("--workdir", str(tmp_path / "run"))
  assert status == 1
  assert_one_line(err, "the tfds dataset 'cifar10' is not prepared")

"""The console shows the run's progress; the config and library log lines go to <workdir>/log.txt."""
import os
import re
import subprocess
import sys

import pytest
from ml_collections import config_dict

from hold_jax import console
from hold_jax.configs import images
from hold_jax.training import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# An absl/glog log line: level letter, date, time, thread id, file:line]
LIBRARY_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d")


def test_duration():
  assert [console.duration(s) for s in (0, 42.4, 185, 3720, -3)] == ["0s", "42s", "3m05s", "1h02m", "0s"]


def test_progress_line_rate_and_eta_over_the_last_interval():
  times = iter([100.0, 110.0, 111.0])
  progress = console.Progress(start_step=1000, num_steps=5000, clock=lambda: next(times))
  assert progress.line(1500, {"loss": 0.123456}) == "step 1500/5000  loss 0.1235  50.0 steps/s  ETA 1m10s"
  assert progress.line(2000, {"loss": 2.0}) == "step 2000/5000  loss 2  500.0 steps/s  ETA 6s"


def test_log_path_per_process_and_for_buckets(tmp_path):
  assert console.log_path(str(tmp_path)) == str(tmp_path / "log.txt")
  assert console.log_path(str(tmp_path), 3) == str(tmp_path / "log.process3.txt")
  remote = console.log_path("gs://bucket/runs/a", 0)
  assert "gs___bucket_runs_a" in remote and remote.endswith("log.txt") and not remote.startswith("gs:")


def test_native_stderr_is_captured_and_restored(capfd):
  with console.native_stderr_captured() as captured:
    os.write(2, b"a notice from C++\n")
  os.write(2, b"after\n")
  assert captured == ["a notice from C++\n"]
  assert capfd.readouterr().err == "after\n"
  with pytest.raises(ImportError), console.native_stderr_captured():
    os.write(2, b"why it failed\n")
    raise ImportError("no such module")
  assert "why it failed" in capfd.readouterr().err


def test_hparams_hold_the_whole_flattened_config():
  config = images.get_config()
  flat = train.hparams(config)
  assert flat["sde.order"] == 3 and flat["optim.learning_rate"] == 2e-4 and flat["model.ch_mult"] == "(1, 2, 2, 2)"
  assert flat["data.data_dir"] == "None" and flat["sampling.denoise"] is True
  assert sorted(flat) == sorted(_leaf_names(config))
  assert all(isinstance(value, (bool, int, float, str)) for value in flat.values())


def _leaf_names(config, prefix=""):
  for key, value in config.items():
    if isinstance(value, config_dict.ConfigDict):
      yield from _leaf_names(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}"


@pytest.mark.slow
def test_training_console_is_progress_and_the_rest_goes_to_the_log(tmp_path):
  workdir = tmp_path / "run"
  command = [sys.executable, "-m", "hold_jax.main", "--config", "configs/toy2d.py:local", "--workdir", str(workdir),
             "--config.training.num_steps=20", "--config.training.log_every=10",
             "--config.training.checkpoint_every=20"]
  first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert first.returncode == 0, first.stderr[-3000:]
  lines = first.stdout.splitlines()
  assert lines[0] == f"hold_jax train: workdir {workdir}, log {workdir / 'log.txt'}"
  assert lines[1].startswith("Starting at step 0")
  assert re.fullmatch(r"step 10/20  loss [0-9.e+-]+  [0-9.]+ steps/s  ETA \S+", lines[2]), lines
  assert lines[-2:] == ["saving the checkpoint of step 20", f"trained to step 20; checkpoints in {workdir}/checkpoints"]
  assert len(lines) == 6, lines
  assert not [line for line in first.stderr.splitlines() if LIBRARY_LINE.match(line) or "oneDNN" in line], first.stderr
  log = (workdir / "log.txt").read_text()
  assert "Config:" in log and "oneDNN" in log and "orbax" in log.lower() and "step 10/20" in log

  # Resumed with absl's flag, the library lines come back to the console (once each, not on stdout as well).
  resumed = subprocess.run(command[:-3] + ["--config.training.num_steps=30", "--alsologtostderr"], cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Config:" in resumed.stderr and "Resuming from the checkpoint of step 20" in resumed.stderr
  assert resumed.stdout.splitlines() == ["trained to step 30; checkpoints in " + str(workdir / "checkpoints")]
  assert "Resuming from the checkpoint of step 20" in (workdir / "log.txt").read_text()  # appended to

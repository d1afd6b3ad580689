"""Stop signals outside the training loop (imports, start-up, restoring, sampling, evaluation) end the command
with one line and status 0, changing nothing; a second SIGINT while training stops says so in one line."""
import os
import signal
import subprocess
import sys
import time

import pytest

from hold_jax.training import preemption
from hold_jax.workdir import checkpoint_restore
from hold_jax.workdir import checkpoints
from hold_jax.workdir import trained_model


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def restored_handlers():
  saved = {signum: signal.getsignal(signum) for signum in preemption.SIGNALS}
  yield
  for signum, handler in saved.items():
    signal.signal(signum, handler)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_while_the_command_starts_is_one_line_and_status_0(tmp_path, signum):
  process = subprocess.Popen([sys.executable, "-m", "hold_jax.main", "--config", "configs/toy2d.py:local",
                              "--workdir", str(tmp_path / "run")], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
  time.sleep(1.0)  # inside the imports of TensorFlow and jax
  process.send_signal(signum)
  stdout, stderr = process.communicate(timeout=120)
  assert process.returncode == 0, stderr[-2000:]
  assert f"hold_jax: stopped by {signal.Signals(signum).name}" in stdout
  assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
  assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("signum", preemption.SIGNALS)
def test_a_stop_signal_while_a_reader_restores_changes_nothing(trained_workdir, monkeypatch, capsys, signum,
                                                               restored_handlers):
  workdir, config, _ = trained_workdir
  before = sorted(os.listdir(workdir / "checkpoints"))
  read = checkpoint_restore._read_or_failure  # pylint: disable=protected-access

  def signalled(*args, **kwargs):
    os.kill(os.getpid(), signum)  # delivered on return to the interpreter: in the middle of the read
    return read(*args, **kwargs)

  monkeypatch.setattr(checkpoint_restore, "_read_or_failure", signalled)
  preemption.exit_on_signals("the finished evaluation rounds are kept.")
  with pytest.raises(SystemExit) as stopped:
    trained_model.load_ema_params(config, str(workdir), (2,))
  assert stopped.value.code == 0
  assert capsys.readouterr().out == (f"hold_jax: stopped by {signal.Signals(signum).name}; the finished evaluation "
                                     "rounds are kept.\n")
  assert sorted(os.listdir(workdir / "checkpoints")) == before
  assert not (workdir / checkpoints.DAMAGED_DIR).exists()


def test_training_takes_over_the_signals_and_hands_them_back(restored_handlers):
  preemption.exit_on_signals("kept.")
  outside = signal.getsignal(signal.SIGTERM)
  with preemption.StopRequests(lambda step: False) as stop:
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.should_stop(1) and stop.received == "SIGTERM"  # saved and stopped by the loop, not exited
    with pytest.raises(preemption.SecondInterrupt):  # a second SIGINT: at once, said in one line by main
      os.kill(os.getpid(), signal.SIGINT)
      os.kill(os.getpid(), signal.SIGINT)
  assert signal.getsignal(signal.SIGTERM) is outside

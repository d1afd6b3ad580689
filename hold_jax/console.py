"""What a run shows on the console, and where everything else it logs goes.

The console shows what a researcher watches: where the run writes, whether it resumed and from which step,
one progress line per `training.log_every` steps (step, loss, steps/s, ETA), saves, warnings and the result.
Everything logged through absl or Python's logging (the config, orbax's INFO lines, jax's backend probes)
goes to `<workdir>/log.txt` instead, appended to, so a resumed run continues the same file. absl's own flags
keep their meaning: `--alsologtostderr` (or `--logtostderr`, or `--stderrthreshold=info`) brings those lines
back to the console.

How: absl's handler writes INFO and above to its stream and copies records at or above `--stderrthreshold`
to stderr when that stream is not stderr. Pointing the stream at the log file and the threshold (unless given
on the command line) at WARNING gives the split above with absl's semantics intact.

The log file must not drown the console either: a log file that cannot be opened or written at the start is
one error (LogFileError), and one that fails later (its disk filled up) is one warning on the console, after
which its lines are dropped (LogStream); Python's logging would print a traceback for every record instead.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import time

from absl import flags
from absl import logging

LOG_NAME = "log.txt"
PROGRAM = "hold_jax"


class LogFileError(Exception):
  """The log file cannot be opened or written at the start of a run; the message names it and the fix."""


@contextlib.contextmanager
def native_stderr_captured():
  """Sends file descriptor 2 to a temporary file while the block runs and yields a list that then holds what
  was written there. TensorFlow (imported by tfds and clu) prints C++ notices on import straight to fd 2,
  below Python's sys.stderr and regardless of TF_CPP_MIN_LOG_LEVEL; importing it in this block keeps them
  for the log file. If the block fails, the captured text is written to stderr before the error propagates."""
  sys.stderr.flush()
  saved = os.dup(2)
  captured = []
  with tempfile.TemporaryFile() as capture:
    os.dup2(capture.fileno(), 2)
    try:
      yield captured
    except BaseException:
      _restore_stderr(saved, capture, captured)
      sys.stderr.write("".join(captured))
      raise
    _restore_stderr(saved, capture, captured)


def _restore_stderr(saved: int, capture, captured: list[str]) -> None:
  sys.stderr.flush()
  os.dup2(saved, 2)
  os.close(saved)
  capture.seek(0)
  captured.append(capture.read().decode("utf-8", errors="replace"))


def log_path(workdir: str, process_index: int = 0) -> str:
  """<workdir>/log.txt for process 0 and <workdir>/log.process<k>.txt for the others. A bucket workdir
  (gs://...) cannot be appended to, so its log goes to the temporary directory of the host."""
  name = LOG_NAME if process_index == 0 else f"log.process{process_index}.txt"
  if "://" in workdir:
    local = "".join(c if c.isalnum() or c in "-_." else "_" for c in workdir)
    return os.path.join(tempfile.gettempdir(), "hold_jax_logs", local, name)
  return os.path.join(workdir, name)


def _only_console() -> bool:
  """Whether the user asked absl for the console only (--logtostderr): then there is no log file."""
  return flags.FLAGS.is_parsed() and flags.FLAGS["logtostderr"].value


def _libraries_to_console() -> bool:
  """Whether the user asked absl to show every log line on the console (--logtostderr, --alsologtostderr)."""
  return _only_console() or (flags.FLAGS.is_parsed() and flags.FLAGS["alsologtostderr"].value)


def hold_library_logs() -> None:
  """Keeps what is logged from now on in memory until `log_to_file` is called (the workdir's log file
  cannot be named before jax.distributed has said which process this is). Needs parsed absl flags."""
  if _only_console():
    return
  handler = logging.get_absl_handler().python_handler
  if not isinstance(handler.stream, io.StringIO):
    handler.stream = io.StringIO()
  if not flags.FLAGS["stderrthreshold"].present:
    flags.FLAGS.stderrthreshold = "warning"


def log_to_file(workdir: str, process_index: int = 0) -> str | None:
  """Sends absl's log lines (and what `hold_library_logs` held) to log_path(workdir); returns that path, or
  None when the user asked for the console only (--logtostderr). Raises LogFileError naming the file and the
  fix when it cannot be opened or written (a read-only or full disk): falling back to the console would
  print a hundred lines of log before the job's own error."""
  if _only_console():
    return None
  handler = logging.get_absl_handler().python_handler
  held = handler.stream.getvalue() if isinstance(handler.stream, io.StringIO) else ""
  path = log_path(workdir, process_index)
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    file = open(path, "a", encoding="utf-8", buffering=1)  # pylint: disable=consider-using-with
    try:
      file.write(held)
      file.flush()
    except OSError:
      _close_quietly(file)
      raise
  except OSError as error:
    raise LogFileError(f"the log file {path} cannot be written ({_reason(error)}): free space on its disk, fix "
                       "its permissions or choose another --workdir (or keep the log on the console with "
                       "--logtostderr).") from None
  handler.stream = LogStream(file, path)
  if not flags.FLAGS["stderrthreshold"].present:
    flags.FLAGS.stderrthreshold = "warning"
  return path


def _reason(error: OSError) -> str:
  """'No space left on device' (the OS's words), else the error's own message."""
  return error.strerror or str(error) or type(error).__name__


def _close_quietly(file) -> None:
  try:
    file.close()
  except OSError:  # its buffer could not be flushed either
    pass


class LogStream:
  """The log file as the stream of absl's handler. A write or flush that fails (the disk filled up, a network
  file system went away) is said once on the console, and the file is given up: later lines are dropped, while
  warnings and errors still reach the console (absl copies them to stderr). Python's logging would otherwise
  print '--- Logging error ---' and a traceback for every record, thousands of lines around the one message
  that says what failed (such as a checkpoint save on the same full disk)."""

  def __init__(self, file, path: str):
    self._file = file
    self.name = path

  @property
  def closed(self) -> bool:
    return self._file is None or self._file.closed

  def write(self, text: str) -> int:
    if self._file is not None:
      try:
        return self._file.write(text)
      except OSError as error:
        self._give_up(error)
    return len(text)

  def flush(self) -> None:
    if self._file is not None:
      try:
        self._file.flush()
      except OSError as error:
        self._give_up(error)

  def isatty(self) -> bool:
    return False

  def close(self) -> None:
    if self._file is not None:
      _close_quietly(self._file)

  def _give_up(self, error: OSError) -> None:
    file, self._file = self._file, None
    _close_quietly(file)
    sys.stderr.write(f"{PROGRAM}: warning: the log file {self.name} cannot be written ({_reason(error)}); its "
                     "later lines are dropped, warnings and errors still show here.\n")
    sys.stderr.flush()


@contextlib.contextmanager
def library_warnings_in_log():
  """While the block runs, absl's warnings go to the log file only (errors still reach the console): for a
  library call whose warnings say less than the error its caller raises, such as tfds' 'Variant folder ... has
  no dataset_info.json' before image_sources says how to prepare the data. Changes nothing when absl's flags
  are not parsed or the user chose what reaches the console (--stderrthreshold, --alsologtostderr,
  --logtostderr)."""
  if not flags.FLAGS.is_parsed() or flags.FLAGS["stderrthreshold"].present or _libraries_to_console():
    yield
    return
  saved = flags.FLAGS.stderrthreshold
  flags.FLAGS.stderrthreshold = "error"
  try:
    yield
  finally:
    flags.FLAGS.stderrthreshold = saved


def say(message: str) -> None:
  """One line for the console (stdout), also kept in the log file; shown once when the log lines already go
  to the console."""
  logging.info("%s", message)
  if not _libraries_to_console():
    print(message, flush=True)


def duration(seconds: float) -> str:
  """'1h02m', '3m05s', '42s'."""
  seconds = max(int(round(seconds)), 0)
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  if hours:
    return f"{hours}h{minutes:02d}m"
  return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class Progress:
  """The training progress line: steps/s over the last log interval and the time left at that rate."""

  def __init__(self, start_step: int, num_steps: int, clock=time.monotonic):
    self._clock = clock
    self._num_steps = num_steps
    self._last_step = start_step
    self._last_time = clock()

  def line(self, step: int, scalars: dict[str, float]) -> str:
    """`step 500/40000  loss 0.0412  212.4 steps/s  ETA 3m05s`, then the interval starts again at `step`."""
    now = self._clock()
    rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    width = len(str(self._num_steps))
    eta = duration((self._num_steps - step) / rate) if rate > 0 else "?"
    return (f"step {step:>{width}}/{self._num_steps}  loss {scalars['loss']:.4g}  {rate:.1f} steps/s  "
            f"ETA {eta}")

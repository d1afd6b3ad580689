"""Fault injection: what a run survives, measured the way a user meets it (the command line, real signals,
real damage to checkpoint files, a real full disk, real processes sharing a workdir).

  python benchmarks/fault_injection.py [--config toy2d:local] [--kill_trials 6] [--groups a,b] [--output FILE]

For every case one row: whether the run came back (resumed), whether its final parameters equal an
uninterrupted run's bit for bit, how many steps it lost, the seconds until the process ended (for errors:
until the clear message), and the message's first words. The groups and their targets:
- interrupt: kill -9 at random moments (often inside a save) and SIGTERM/SIGINT/SIGUSR1; every run resumes
  bit-identically, 0 steps lost on a signal, fewer than 2 x checkpoint_every on a kill -9 (docs/training.md).
- damage: every kind of benchmarks/damage.py on the newest step; each falls back, 0 silent corrupt loads.
- errors: changed trained fields on resume, bad inputs, a full disk; each a named error in seconds, no traceback.
- shared: sampling started while training's save is in flight (training frozen there with SIGSTOP): the save
  intact, the sampling done, training bit-identical.
- read_failures: each failure of a read that is not damage (benchmarks/read_failures.py), in training and in
  sampling: named, not one step moved.
- crafted: crafted weight files (benchmarks/crafted_weights.py) through `python -m hold_jax.fid`: every one
  refused, peak memory no higher than a small genuine file's.
- schedule: a cosine run resumed with a longer training.num_steps: refused by name, record kept.
- samples: two --mode=sample runs differing in sampling.stochasticity only: both files kept.
- bad_inputs: damaged records, bad config files and fields, impossible batch sizes, lying .npy headers, data
  that is not there, full and read-only disks, signals during start-up, evaluation and a training stop: per
  class, how many end in one named line within the time the imports take (target: all), and how many are
  silent or wrong (target 0).
"""
import argparse
import contextlib
import hashlib
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import common  # noqa: E402
from benchmarks import crafted_weights  # noqa: E402
from benchmarks import damage  # noqa: E402
from benchmarks import read_failures  # noqa: E402

# About 4 s of training at ~1000 steps/s on 2 CPU cores (toy2d:local), a save every 0.1 s: kills at random
# moments often land inside a save.
NUM_STEPS = 4000
CHECKPOINT_EVERY = 100
KILL_LOG_EVERY = 10  # progress lines this often in the kill trials: the step reached at a kill, to 10 steps


def command(config_name, workdir, *flags):
  return [sys.executable, "-m", "hold_jax.main", "--config", f"configs/{config_name.replace(':', '.py:', 1)}"
          if ":" in config_name else f"configs/{config_name}.py", "--workdir", str(workdir),
          f"--config.training.num_steps={NUM_STEPS}", f"--config.training.checkpoint_every={CHECKPOINT_EVERY}",
          "--config.training.log_every=100", *flags]


def run(args, timeout=900):
  """(returncode, stdout, stderr, seconds) of a finished command."""
  started = time.time()
  result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=ROOT))
  return result.returncode, result.stdout, result.stderr, time.time() - started


def steps(workdir):
  directory = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit()) if directory.exists() else []


def final_params(config_name, workdir):
  """(step, flat EMA parameters) of the newest checkpoint, read as sampling reads it."""
  from hold_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  from hold_jax.workdir import run_record  # pylint: disable=g-import-not-at-top
  from hold_jax.workdir import trained_model  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top
  config = run_record.for_inference(epath.Path(workdir), common.load_config(config_name), {})
  params, step = trained_model.load_ema_params(config, str(workdir), input_pipeline.data_shape(config.data))
  import jax  # pylint: disable=g-import-not-at-top
  return step, np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(params)])


def message_of(stderr):
  """The one-line error the user reads ('hold_jax: ...'), else the last line."""
  lines = [line for line in stderr.splitlines() if line.startswith("hold_jax")]
  return (lines[-1] if lines else stderr.strip().splitlines()[-1] if stderr.strip() else "")[:160]


def row(case, kind, **values):
  values = dict(case=case, kind=kind, **values)
  print(" | ".join(f"{values.get(key, '')}" for key in COLUMNS))
  return values


COLUMNS = ("kind", "case", "resumed", "bit_identical", "steps_lost", "named", "seconds", "traceback", "message")


def start(config_name, workdir, *flags):
  return subprocess.Popen(command(config_name, workdir, *flags), cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=ROOT))


def wait_for_step(workdir, process, timeout=300):
  started = time.time()
  while time.time() - started < timeout and process.poll() is None:
    if steps(workdir):
      return True
    time.sleep(0.05)
  return False


def interrupted_cases(config_name, scratch, reference, kill_trials, seed):
  rows = []
  rng = random.Random(seed)
  for trial in range(kill_trials + 3):
    kind = "kill -9" if trial < kill_trials else ["SIGTERM", "SIGINT", "SIGUSR1"][trial - kill_trials]
    workdir = scratch / f"interrupted_{trial}"
    process = start(config_name, workdir, f"--config.training.log_every={KILL_LOG_EVERY}")
    if not wait_for_step(workdir, process):
      process.kill()
      rows.append(row(f"{kind} #{trial}", "interrupt", message="finished before the first checkpoint"))
      continue
    time.sleep(rng.uniform(0.0, 3.0))  # anywhere in the run, including inside saves
    sent = time.time()
    process.send_signal(signal.SIGKILL if kind == "kill -9" else getattr(signal, kind))
    during_save = any(".orbax-checkpoint-tmp" in name for name in os.listdir(workdir / "checkpoints"))
    stdout, stderr = process.communicate(timeout=300)
    seconds = time.time() - sent
    saved = steps(workdir)
    lost = ""
    if kind == "kill -9":  # the last progress line is within KILL_LOG_EVERY steps of the step reached
      logged = [int(line.split()[1].split("/")[0]) for line in stdout.splitlines() if line.startswith("step ")]
      lost = (max(logged) - max(saved)) if logged and saved else ""
    else:
      stopped = [line for line in stdout.splitlines() if line.startswith("stopped at step")]
      reached = int(stopped[0].split()[3]) if stopped else None
      lost = (reached - max(saved)) if reached is not None and saved else "no stop message"
    code, _, rerun_err, _ = run(command(config_name, workdir))
    step, params = final_params(config_name, workdir) if code == 0 else (None, None)
    rows.append(row(f"{kind} #{trial}", "interrupt", resumed=code == 0 and step == NUM_STEPS,
                    bit_identical=bool(params is not None and np.array_equal(params, reference)),
                    steps_lost=lost, seconds=round(seconds, 2), exit_code=process.returncode,
                    traceback="Traceback" in stderr + rerun_err,
                    message=f"exit {process.returncode}; newest checkpoint {saved[-1] if saved else None}"
                            f"{'; killed during a save' if during_save else ''}"))
  return rows


def damage_cases(config_name, scratch, trained, reference):
  rows = []
  for kind, apply in damage.kinds().items():
    workdir = scratch / f"damage_{kind.replace(' ', '_')}"
    shutil.copytree(trained, workdir)
    newest = steps(workdir)[-1]
    apply(workdir / "checkpoints" / str(newest))
    code, _, stderr, seconds = run(command(config_name, workdir, f"--config.training.num_steps={NUM_STEPS + 100}"))
    set_aside = sorted(os.listdir(workdir / "damaged_checkpoints")) if (workdir / "damaged_checkpoints").exists() else []
    fell_back = set_aside == [str(newest)]
    step, params = final_params(config_name, workdir) if code == 0 else (None, None)
    rows.append(row(kind, "damage", resumed=code == 0 and step == NUM_STEPS + 100, fell_back=fell_back,
                    bit_identical=bool(params is not None and np.array_equal(params, reference)),
                    steps_lost=newest - steps(trained)[-2] if fell_back else 0, seconds=round(seconds, 2),
                    traceback="Traceback" in stderr,
                    message=next((line.split("] ", 1)[-1] for line in stderr.splitlines()
                                  if "cannot be used" in line), "no fallback: data verified intact")[:160]))
  return rows


def error_cases(config_name, scratch, trained):
  """Config changes on resume, a full disk, bad inputs: each must be a named error within seconds."""
  rows = []
  resume = [("sde.beta_0", "5.0"), ("seed", "3"), ("model.width", "16"), ("optim.learning_rate", "0.002"),
            ("loss.weighting", "none")]
  for field, value in resume:
    workdir = scratch / f"changed_{field}"
    shutil.copytree(trained, workdir)
    before = (workdir / "config.json").read_text()
    code, _, stderr, seconds = run(command(config_name, workdir, f"--config.{field}={value}",
                                           f"--config.training.num_steps={NUM_STEPS + 100}"))
    rows.append(row(f"resume with {field}={value}", "changed config", named=field in stderr and code != 0,
                    record_kept=(workdir / "config.json").read_text() == before, seconds=round(seconds, 2),
                    traceback="Traceback" in stderr, message=message_of(stderr)))
  bad_npy = scratch / "pickled.npy"
  np.save(bad_npy, np.array([{"a": 1}], dtype=object), allow_pickle=True)
  (scratch / "text.npy").write_text("not an array\n")
  (scratch / "a_file").write_text("x")
  bad = [("model.width=0", ["--config.model.width=0"], "model.width"),
         ("model.depth=-1", ["--config.model.depth=-1"], "model.depth"),
         ("optim.learning_rate=nan", ["--config.optim.learning_rate=nan"], "optim.learning_rate"),
         ("unknown field", ["--config.training.num_stepz=5"], "num_steps"),
         ("pickled npy", [f"--config.data.dataset=npy:{bad_npy}"], "data.dataset"),
         ("text as npy", [f"--config.data.dataset=npy:{scratch / 'text.npy'}"], "data.dataset"),
         ("workdir is a file", [], "is a file")]
  for case, flags, expected in bad:
    workdir = scratch / "a_file" if case == "workdir is a file" else scratch / f"bad_{case.replace(' ', '_')}"
    code, _, stderr, seconds = run(command(config_name, workdir, *flags))
    rows.append(row(case, "bad input", named=expected in stderr and code != 0, seconds=round(seconds, 2),
                    traceback="Traceback" in stderr, message=message_of(stderr)))
  rows.extend(disk_full_case(config_name, scratch))
  return rows


def disk_full_case(config_name, scratch):
  mount = scratch / "small_disk"
  mount.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mount)], capture_output=True)
  if mounted.returncode != 0:
    return [row("disk full", "disk", message=f"not measured: cannot mount a tmpfs ({mounted.stderr.strip()})")]
  try:
    code, _, stderr, seconds = run(command(config_name, mount / "run", "--config.checkpoint.keep=10"))
    saved = steps(mount / "run")
    checkpoint_dir = mount / "run" / "checkpoints"
    leftovers = [name for name in os.listdir(checkpoint_dir) if not name.isdigit()] if checkpoint_dir.exists() else []
    return [row("disk full during a save", "disk", named="disk is full" in stderr and code != 0,
                previous_intact=bool(saved), temp_removed=not leftovers, seconds=round(seconds, 2),
                traceback="Traceback" in stderr, message=message_of(stderr))]
  finally:
    subprocess.run(["umount", "-l", str(mount)], check=False)


# ---------------------------------------------------------------------------------------------------------
# A workdir that live jobs share; failed reads that are not damage; crafted weight files.


def held_save(workdir, process, timeout=300):
  """Stops (SIGSTOP) the training `process` while a save of it is in flight; the temporary directory's name,
  or None when the run ended first. Saves take a few ms, so it polls and retries."""
  started = time.time()
  directory = pathlib.Path(workdir) / "checkpoints"
  while time.time() - started < timeout and process.poll() is None:
    if directory.exists() and any(".orbax-checkpoint-tmp" in name for name in os.listdir(directory)):
      process.send_signal(signal.SIGSTOP)
      in_flight = [name for name in os.listdir(directory) if ".orbax-checkpoint-tmp" in name]
      if in_flight:
        return in_flight[0]
      process.send_signal(signal.SIGCONT)  # it finished between the look and the stop
    time.sleep(0.002)
  return None


def shared_workdir_case(config_name, scratch, reference):
  """Sampling started while training's save is in flight (training frozen there): the sampling reads the
  newest complete step, the save's temporary directory is left alone, and training then finishes
  bit-identically to an uninterrupted run."""
  workdir = scratch / "shared"
  process = start(config_name, workdir)
  if not wait_for_step(workdir, process):
    process.kill()
    return [row("eval during an in-flight save", "shared workdir", message="finished before the first checkpoint")]
  in_flight = held_save(workdir, process)
  if in_flight is None:
    process.kill()
    return [row("eval during an in-flight save", "shared workdir", message="no save caught in flight")]
  code, _, stderr, seconds = run(command(config_name, workdir, "--mode=sample",
                                         "--config.sampling.num_samples=64"))
  intact = (workdir / "checkpoints" / in_flight).exists()
  process.send_signal(signal.SIGCONT)
  _, train_err = process.communicate(timeout=600)
  step, params = final_params(config_name, workdir) if process.returncode == 0 else (None, None)
  return [row("eval during an in-flight save", "shared workdir", resumed=process.returncode == 0 and step == NUM_STEPS,
              bit_identical=bool(params is not None and np.array_equal(params, reference)), save_intact=intact,
              reader_ok=code == 0, seconds=round(seconds, 2), traceback="Traceback" in stderr + train_err,
              message=f"save {in_flight} held; sampling exit {code}; training exit {process.returncode}")]


def read_failure_cases(config_name, scratch, trained):
  """Each failure of a read that is not damage (benchmarks/read_failures.py), injected into a resumed run and
  into a sampling run: one message naming the step, and not one step moved."""
  rows = []
  for name in read_failures.names():
    _, kind = read_failures.error(name)
    for mode in ("train", "sample"):
      workdir = scratch / f"read_failure_{name.replace(' ', '_')}_{mode}"
      shutil.copytree(trained, workdir)
      before = steps(workdir)
      args = command(config_name, workdir, f"--mode={mode}", f"--config.training.num_steps={NUM_STEPS}")
      started = time.time()
      result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "read_failures.py"), name,
                               *args[3:]], cwd=ROOT, capture_output=True, text=True, timeout=900,
                              env=dict(os.environ, PYTHONPATH=ROOT))
      moved = steps(workdir) != before or (workdir / "damaged_checkpoints").exists()
      rows.append(row(f"{name} ({mode})", "not damage", named=f"failed ({kind})" in result.stderr
                      and result.returncode != 0, steps_moved=moved, seconds=round(time.time() - started, 2),
                      traceback="Traceback" in result.stderr, message=message_of(result.stderr)))
  return rows


def max_rss_mb(args):
  """(returncode, stderr without the measurement, peak resident MB) of a command under /usr/bin/time."""
  result = subprocess.run(["/usr/bin/time", "-f", "MAXRSS %M", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, PYTHONPATH=ROOT))
  lines = result.stderr.splitlines()
  peak = next((int(line.split()[1]) / 1024 for line in reversed(lines) if line.startswith("MAXRSS ")), None)
  return result.returncode, "\n".join(line for line in lines if not line.startswith("MAXRSS ")), peak


def crafted_weight_cases(scratch):
  """`python -m hold_jax.fid` given each crafted weights file (benchmarks/crafted_weights.py) with its own
  SHA-256 (as a user who trusts the file would): refused by name, at a peak memory no higher than reading a
  small genuine file costs."""
  images = scratch / "images.npz"
  np.savez(images, pixels=np.zeros((4, 8, 8, 3), np.uint8))
  files = {"small genuine file (baseline)": pathlib.Path(ROOT, "tests", "fixtures", "torch_reader_zip.pth").read_bytes()}
  files.update(crafted_weights.cases())
  rows, baseline = [], None
  for name, data in files.items():
    path = scratch / "weights.pth"
    path.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    started = time.time()
    code, stderr, peak = max_rss_mb([sys.executable, "-m", "hold_jax.fid", str(images), str(images),
                                     f"--inception_weights={path}", f"--inception_sha256={sha}"])
    baseline = peak if baseline is None else baseline
    rows.append(row(name, "crafted weights", named=code == 1 and "hold_jax.fid: error" in stderr,
                    file_bytes=len(data), peak_mb=round(peak, 1) if peak else None,
                    above_baseline_mb=round(peak - baseline, 1) if peak and baseline else None,
                    seconds=round(time.time() - started, 2), traceback="Traceback" in stderr,
                    message=message_of(stderr)[len("hold_jax.fid: error: "):][:120]))
  return rows


def cosine_resume_case(config_name, scratch):
  """A cosine run resumed with a longer training.num_steps: refused by name before any compute, its record and
  checkpoints untouched (the learning rate of steps already planned must not change)."""
  workdir = scratch / "cosine"
  code, _, stderr, _ = run(command(config_name, workdir, "--config.optim.schedule=cosine"))
  if code != 0:
    return [row("resume with a longer cosine schedule", "schedule", message=f"training failed: {message_of(stderr)}")]
  before = (steps(workdir), (workdir / "config.json").read_text())
  code, _, stderr, seconds = run(command(config_name, workdir, "--config.optim.schedule=cosine",
                                         f"--config.training.num_steps={2 * NUM_STEPS}"))
  unchanged = (steps(workdir), (workdir / "config.json").read_text()) == before
  return [row("resume with a longer cosine schedule", "schedule", named=code != 0 and "schedule's horizon" in stderr,
              record_kept=unchanged, seconds=round(seconds, 2), traceback="Traceback" in stderr,
              message=message_of(stderr))]


def sample_files_case(config_name, scratch, trained):
  """Two --mode=sample runs that differ in one setting that is not in the readable part of the file name
  (sampling.stochasticity of gddim): both files kept, each recording its own value."""
  workdir = scratch / "sampled"
  shutil.copytree(trained, workdir)
  started, outcomes = time.time(), []
  for stochasticity in ("0.0", "1.0"):
    outcomes.append(run(command(config_name, workdir, "--mode=sample", "--config.sampling.method=gddim",
                                "--config.sampling.num_samples=64", f"--config.sampling.stochasticity={stochasticity}")))
  files = sorted((workdir / "samples").glob("*.npz")) if (workdir / "samples").exists() else []
  recorded = sorted(json.loads(str(np.load(path)["settings_json"]))["sampling"]["stochasticity"] for path in files
                    if "settings_json" in np.load(path).files)
  return [row("two sampling runs differing in stochasticity", "sample files",
              named=all(code == 0 for code, *_ in outcomes) and len(files) == 2 and recorded == [0.0, 1.0],
              files_kept=len(files), seconds=round(time.time() - started, 2),
              traceback=any("Traceback" in err for _, _, err, _ in outcomes),
              message=", ".join(path.name for path in files))]


@contextlib.contextmanager
def mounted(path, options):
  """A tmpfs at `path` (None when mounting is refused here)."""
  path.mkdir(parents=True, exist_ok=True)
  if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode:
    yield None
    return
  try:
    yield path
  finally:
    subprocess.run(["umount", "-l", str(path)], check=False)


def error_lines(stderr):
  """The lines a user reads on stderr, less the notices every Python process may print before absl starts."""
  return [line for line in stderr.splitlines() if line.strip() and not line.startswith(
      ("WARNING: All log messages before absl::InitializeLog()", "I0000 ", "W0000 "))]


def one_line_case(name, cls, args, expected, baseline, succeed=False, cwd=ROOT, signal_after=None, ready=None):
  """Runs `args`; the outcome is right when it ends in the one line naming `expected` (on stdout for a clean
  stop, `succeed`; on stderr otherwise) within the seconds the imports take plus 50% (`baseline`)."""
  started = time.time()
  process = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=ROOT))
  while ready is not None and not ready() and process.poll() is None:
    time.sleep(0.05)
  for delay, signum in signal_after or ():
    time.sleep(delay)
    process.send_signal(signum)
  stdout, stderr = process.communicate(timeout=900)
  seconds = time.time() - started
  lines = error_lines(stderr)
  if succeed:  # the first signal of a training stop is announced as a warning; nothing else may show
    named = (process.returncode in (0, 130) and expected in stdout
             and all("Received SIG" in line for line in lines))
  else:  # one error, named; a changed trained field lists each field on a line of its own
    named = (process.returncode != 0 and bool(lines) and lines[0].startswith("hold_jax") and expected in stderr
             and "Traceback" not in stderr)
  return row(name, "bad input 2", cls=cls, named=named, one_line=len(lines) <= 1, exit_code=process.returncode,
             in_import_time=(seconds <= 1.5 * baseline) if baseline and ready is None else None,
             seconds=round(seconds, 2),
             traceback="Traceback" in stderr, silent=process.returncode == 0 and not succeed,
             message=(lines[-1] if lines else stdout.strip().splitlines()[-1] if stdout.strip() else "")[:150])


def bad_input_cases(config_name, scratch, trained):
  """The classes of bad input and interruption outside training that must end in one named line, within the
  time the imports take (the baseline: a config error, which is found right after them)."""
  hold = [sys.executable, "-m", "hold_jax.main"]
  config = ["--config", f"configs/{config_name.replace(':', '.py:', 1)}" if ":" in config_name else
            f"configs/{config_name}.py"]
  started = time.time()
  run(hold + config + ["--workdir", str(scratch / "baseline"), "--config.model.width=0"])
  baseline = time.time() - started
  rows = [row("baseline: model.width=0", "bad input 2", seconds=round(baseline, 2))]

  def copy(name, change=None):
    workdir = scratch / f"bad2_{name}"
    shutil.copytree(trained, workdir)
    if change:
      change(workdir)
    return workdir

  def record(value):
    return lambda workdir: (workdir / "config.json").write_text(value)

  def record_field(field, value):
    def change(workdir):
      tree = json.loads((workdir / "config.json").read_text())
      tree[field] = value
      (workdir / "config.json").write_text(json.dumps(tree))
    return change

  for name, change in [("[]", record("[]")), ("null", record("null")), ("sde = 5", record_field("sde", 5))]:
    workdir = copy(f"record_{len(rows)}", change)
    rows.append(one_line_case(f"config.json holds {name}", "records", command(config_name, workdir),
                              "config.json", baseline))
  workdir = copy("deleted_record", lambda workdir: (workdir / "config.json").unlink())
  rows.append(one_line_case("config.json deleted, resumed with another sde.beta_0", "records",
                            command(config_name, workdir, "--config.sde.beta_0=2.0",
                                    f"--config.training.num_steps={NUM_STEPS + 100}"), "sde.beta_0", baseline))
  (scratch / "config.json").write_text("{}")
  (scratch / "broken.py").write_text("def get_config(:\n")
  for name, argument, expected in [("a variant that does not exist", "configs/toy2d.py:locale", "variant"),
                                   ("a .json given as --config", str(scratch / "config.json"), "not a Python"),
                                   ("a config with a syntax error", str(scratch / "broken.py"), "not valid Python")]:
    rows.append(one_line_case(name, "config files", hold + ["--config", argument, "--workdir",
                                                            str(scratch / "bad2_cfg")], expected, baseline))
  for name, flags, expected in [("--workdir= (empty)", None, "--workdir is empty"),
                                ("seed = -1", ["--config.seed=-1"], "seed"),
                                ("sde.order = 50", ["--config.sde.order=50"], "sde.order"),
                                ("sampling.batch_size = 10^9 (sampling)", ["--mode=sample",
                                                                           "--config.sampling.batch_size=1000000000",
                                                                           "--config.sampling.num_samples=1000000000"],
                                 "sampling"),
                                ("training.batch_size = 10^9", ["--config.training.batch_size=1000000000"],
                                 "batch_size")]:
    if flags is None:
      args = hold + config + ["--workdir="]
    else:
      args = command(config_name, copy(f"flags_{len(rows)}") if "--mode=sample" in flags else
                     scratch / f"bad2_flags_{len(rows)}", *flags)
    rows.append(one_line_case(name, "fields", args, expected, baseline))
  big = scratch / "claims_more.npy"
  header = {"descr": "<f4", "fortran_order": False, "shape": (10**9, 2)}
  with open(big, "wb") as file:
    np.lib.format.write_array_header_1_0(file, header)
    file.write(np.zeros((8, 2), np.float32).tobytes())
  rows.append(one_line_case("an .npy whose header claims 10^9 rows", "data files",
                            command(config_name, scratch / "bad2_npy", f"--config.data.dataset=npy:{big}"),
                            "claims_more.npy", baseline))
  rows.append(one_line_case("CIFAR-10 without prepared data", "data files",
                            hold + ["--config", "configs/cifar10.py", "--workdir", str(scratch / "bad2_cifar"),
                                    f"--config.data.data_dir={scratch / 'no_data'}"], "prepare", baseline))
  mu, sigma = np.zeros(4), np.diag([1.0, 1.0, 1.0, -1.0])
  np.savez(scratch / "not_psd.npz", mu=mu, sigma=sigma)
  np.savez(scratch / "psd.npz", mu=mu, sigma=np.eye(4))
  rows.append(one_line_case("FID statistics whose covariance is not PSD", "data files",
                            [sys.executable, "-m", "hold_jax.fid", str(scratch / "psd.npz"), str(scratch / "not_psd.npz"),
                             "--inception_weights=unused"], "not_psd.npz", baseline))
  with mounted(scratch / "tiny_disk", "size=64k") as disk:
    if disk is not None:
      rows.append(one_line_case("a workdir on a full disk", "disks", command(config_name, disk / "run"), "free",
                                baseline))
  with mounted(scratch / "ro_disk", "ro,size=8m") as disk:
    if disk is not None:
      rows.append(one_line_case("a read-only workdir", "disks", command(config_name, disk / "run"), "read-only",
                                baseline))
  with mounted(scratch / "small_disk2", "size=1200k") as disk:
    if disk is not None:
      result = one_line_case("the disk fills during training", "disks",
                             command(config_name, disk / "run", "--config.checkpoint.keep=10"), "disk is full",
                             baseline)
      result["named"] = result["traceback"] is False and "disk is full" in result["message"]
      rows.append(result)
  rows.append(one_line_case("SIGTERM during start-up", "signals", command(config_name, scratch / "bad2_sig1"),
                            "stopped by SIGTERM", baseline, succeed=True, signal_after=[(1.0, signal.SIGTERM)]))
  rows.append(one_line_case("SIGINT during start-up", "signals", command(config_name, scratch / "bad2_sig2"),
                            "stopped by SIGINT", baseline, succeed=True, signal_after=[(1.0, signal.SIGINT)]))
  workdir = copy("eval_signal")
  rows.append(one_line_case("SIGINT during evaluation", "signals",
                            command(config_name, workdir, "--mode=eval", "--config.eval.num_examples=4096",
                                    "--config.eval.batch_size=256"), "stopped by SIGINT", baseline,
                            succeed=True, signal_after=[(baseline + 3.0, signal.SIGINT)]))
  twice = scratch / "bad2_sigint2"
  rows.append(one_line_case("SIGINT twice during training", "signals",
                            command(config_name, twice, "--config.training.num_steps=400000"),
                            "second SIGINT", baseline, succeed=True, ready=lambda: bool(steps(twice)),
                            signal_after=[(0.0, signal.SIGINT), (0.01, signal.SIGINT)]))
  return rows


GROUPS = ("interrupt", "damage", "errors", "shared", "read_failures", "crafted", "schedule", "samples",
          "bad_inputs")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="toy2d:local")
  parser.add_argument("--kill_trials", type=int, default=6)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--groups", default=",".join(GROUPS), help=f"comma-separated subset of {GROUPS}")
  parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "fault_injection.json"))
  args = parser.parse_args()
  groups = args.groups.split(",")
  unknown = sorted(set(groups) - set(GROUPS))
  if unknown:
    parser.error(f"unknown --groups {unknown}; choose from {GROUPS}")
  print(" | ".join(COLUMNS))
  rows = []
  with tempfile.TemporaryDirectory() as scratch:
    scratch = pathlib.Path(scratch)
    code, _, stderr, seconds = run(command(args.config, scratch / "uninterrupted"))
    assert code == 0, stderr[-3000:]
    _, reference = final_params(args.config, scratch / "uninterrupted")
    if "interrupt" in groups:
      rows += interrupted_cases(args.config, scratch, reference, args.kill_trials, args.seed)
    if "damage" in groups:
      code, _, stderr, _ = run(command(args.config, scratch / "extended",
                                       f"--config.training.num_steps={NUM_STEPS + 100}"))
      assert code == 0, stderr[-3000:]
      _, extended_reference = final_params(args.config, scratch / "extended")
      rows += damage_cases(args.config, scratch, scratch / "uninterrupted", extended_reference)
    if "errors" in groups:
      rows += error_cases(args.config, scratch, scratch / "uninterrupted")
    if "shared" in groups:
      rows += shared_workdir_case(args.config, scratch, reference)
    if "read_failures" in groups:
      rows += read_failure_cases(args.config, scratch, scratch / "uninterrupted")
    if "crafted" in groups:
      rows += crafted_weight_cases(scratch)
    if "schedule" in groups:
      rows += cosine_resume_case(args.config, scratch)
    if "samples" in groups:
      rows += sample_files_case(args.config, scratch, scratch / "uninterrupted")
    if "bad_inputs" in groups:
      rows += bad_input_cases(args.config, scratch, scratch / "uninterrupted")
  summary = summarize(rows)
  print(summary)
  common.write_results(args.output, rows, config=args.config, num_steps=NUM_STEPS, groups=groups, summary=summary)


def summarize(rows):
  of = lambda *kinds: [r for r in rows if r["kind"] in kinds]
  signalled = [r for r in of("interrupt") if not r["case"].startswith("kill")]
  damaged, errors = of("damage"), of("changed config", "bad input", "disk")
  killed = [r for r in of("interrupt") if r["case"].startswith("kill") and isinstance(r.get("steps_lost"), int)]
  return {
      "signals_steps_lost": [r.get("steps_lost") for r in signalled],
      # at least this many (the step reached is known to KILL_LOG_EVERY); the documented bound is
      # 2 x checkpoint_every with asynchronous saves
      "kill_steps_lost_at_least": [r.get("steps_lost") for r in killed],
      "kill_steps_lost_bound": 2 * CHECKPOINT_EVERY,
      "interrupted_runs_resumed_bit_identical": sum(bool(r.get("bit_identical")) for r in of("interrupt")),
      "interrupted_runs": len(of("interrupt")),
      "damage_kinds_recovered": sum(bool(r.get("resumed")) and bool(r.get("bit_identical")) for r in damaged),
      "damage_kinds": len(damaged),
      "silent_corrupt_loads": sum(bool(r.get("resumed")) and not r.get("bit_identical") for r in damaged),
      "errors_named_without_traceback": sum(bool(r.get("named")) and not r.get("traceback") for r in errors),
      "errors": len(errors),
      "slowest_error_seconds": max((r.get("seconds") or 0) for r in errors) if errors else None,
      "shared_workdir_saves_intact_and_bit_identical": sum(
          bool(r.get("save_intact")) and bool(r.get("bit_identical")) and bool(r.get("reader_ok"))
          for r in of("shared workdir")),
      "shared_workdir_cases": len(of("shared workdir")),
      "not_damage_named_nothing_moved": sum(bool(r.get("named")) and not r.get("steps_moved")
                                            for r in of("not damage")),
      "not_damage_cases": len(of("not damage")),
      # less the baseline row (a small genuine file)
      "crafted_weights_refused": max(sum(bool(r.get("named")) for r in of("crafted weights")) - 1, 0),
      "crafted_weights": max(len(of("crafted weights")) - 1, 0),
      "cosine_extensions_refused_record_kept": sum(bool(r.get("named")) and bool(r.get("record_kept"))
                                                   for r in of("schedule")),
      "sample_runs_both_files_kept": sum(bool(r.get("named")) for r in of("sample files")),
      # per class: named in one line within the imports' time / cases / silent or wrong outcomes (target 0)
      "bad_inputs_by_class": {cls: [sum(bool(r.get("named")) and r.get("in_import_time") is not False
                                        for r in group),
                                    len(group), sum(bool(r.get("silent")) or not r.get("named") for r in group)]
                              for cls in sorted({r.get("cls") for r in of("bad input 2") if r.get("cls")})
                              for group in [[r for r in of("bad input 2") if r.get("cls") == cls]]},
      "crafted_weights_max_mb_above_baseline": max((r.get("above_baseline_mb") or 0)
                                                   for r in of("crafted weights")) if of("crafted weights") else None,
  }


if __name__ == "__main__":
  main()

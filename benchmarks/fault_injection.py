"""Fault injection: what a run survives, measured the way a user meets it (the command line, real signals,
real damage to checkpoint files, a real full disk).

  python benchmarks/fault_injection.py [--config toy2d:local] [--kill_trials 6] [--output FILE]

For every case one row: whether the run came back (resumed), whether its final parameters equal an
uninterrupted run's bit for bit, how many steps it lost, the seconds until the process ended (for errors:
until the clear message), and the message's first words. Targets: 0 steps lost on SIGTERM and SIGINT; every
damage kind falls back; 0 silent loads of corrupted data; every bad input a named error in seconds without a
traceback.
"""
import argparse
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
from benchmarks import damage  # noqa: E402

# About 4 s of training at ~1000 steps/s on 2 CPU cores (toy2d:local), a save every 0.1 s: kills at random
# moments often land inside a save.
NUM_STEPS = 4000
CHECKPOINT_EVERY = 100


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
  from hold_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from hold_jax import run_record  # pylint: disable=g-import-not-at-top
  from hold_jax import train  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top
  config = run_record.for_inference(epath.Path(workdir), common.load_config(config_name), {})
  params, step = train.load_ema_params(config, str(workdir), input_pipeline.data_shape(config.data))
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
    process = start(config_name, workdir)
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
    if kind != "kill -9":
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
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], capture_output=True)
  if mounted.returncode != 0:
    return [row("disk full", "disk", message=f"not measured: cannot mount a tmpfs ({mounted.stderr.strip()})")]
  try:
    code, _, stderr, seconds = run(command(config_name, mount / "run", "--config.checkpoint.keep=10"))
    saved = steps(mount / "run")
    leftovers = [name for name in os.listdir(mount / "run" / "checkpoints") if not name.isdigit()]
    return [row("disk full during a save", "disk", named="disk is full" in stderr and code != 0,
                previous_intact=bool(saved), temp_removed=not leftovers, seconds=round(seconds, 2),
                traceback="Traceback" in stderr, message=message_of(stderr))]
  finally:
    subprocess.run(["umount", "-l", str(mount)], check=False)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="toy2d:local")
  parser.add_argument("--kill_trials", type=int, default=6)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "fault_injection.json"))
  args = parser.parse_args()
  print(" | ".join(COLUMNS))
  with tempfile.TemporaryDirectory() as scratch:
    scratch = pathlib.Path(scratch)
    code, _, stderr, seconds = run(command(args.config, scratch / "uninterrupted"))
    assert code == 0, stderr[-3000:]
    _, reference = final_params(args.config, scratch / "uninterrupted")
    code, _, stderr, _ = run(command(args.config, scratch / "extended",
                                     f"--config.training.num_steps={NUM_STEPS + 100}"))
    assert code == 0, stderr[-3000:]
    _, extended_reference = final_params(args.config, scratch / "extended")
    rows = interrupted_cases(args.config, scratch, reference, args.kill_trials, args.seed)
    rows += damage_cases(args.config, scratch, scratch / "uninterrupted", extended_reference)
    rows += error_cases(args.config, scratch, scratch / "uninterrupted")
  signalled = [r for r in rows if r["kind"] == "interrupt" and not r["case"].startswith("kill")]
  damaged = [r for r in rows if r["kind"] == "damage"]
  errors = [r for r in rows if r["kind"] in ("changed config", "bad input", "disk")]
  summary = {
      "signals_steps_lost": [r.get("steps_lost") for r in signalled],
      "interrupted_runs_resumed_bit_identical": sum(bool(r.get("bit_identical")) for r in rows
                                                    if r["kind"] == "interrupt"),
      "interrupted_runs": sum(r["kind"] == "interrupt" for r in rows),
      "damage_kinds_recovered": sum(bool(r.get("resumed")) and bool(r.get("bit_identical")) for r in damaged),
      "damage_kinds": len(damaged),
      "silent_corrupt_loads": sum(bool(r.get("resumed")) and not r.get("bit_identical") for r in damaged),
      "errors_named_without_traceback": sum(bool(r.get("named")) and not r.get("traceback") for r in errors),
      "errors": len(errors),
      "slowest_error_seconds": max((r.get("seconds") or 0) for r in errors) if errors else None,
  }
  print(summary)
  common.write_results(args.output, rows, config=args.config, num_steps=NUM_STEPS, summary=summary)


if __name__ == "__main__":
  main()

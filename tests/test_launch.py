"""launch/: a real two-process job on one machine (the multi-host path), and the TPU script's commands."""
import glob
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from hold_jax.configs import toy2d
from hold_jax.workdir import trained_model

import run_helpers  # tests/run_helpers.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PYTHON = (os.path.join(ROOT, ".venv", "bin", "python") if os.path.exists(os.path.join(ROOT, ".venv", "bin", "python"))
               else sys.executable)


def launch(script, *args, env=None, timeout=600):
  result = subprocess.run([os.path.join(ROOT, "launch", script), *args], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), timeout=timeout)
  return result


@pytest.mark.slow
def test_two_processes_train_resume_and_write_from_process_0_only(tmp_path):
  env = dict(NUM_PROCESSES="2", DEVICES_PER_PROCESS="2", PYTHON=os.path.join(ROOT, ".venv", "bin", "python")
             if os.path.exists(os.path.join(ROOT, ".venv", "bin", "python")) else "python3")
  flags = ["--config.training.batch_size=16", "--config.training.checkpoint_every=10"]
  first = launch("local_processes.sh", "configs/toy2d.py:local", str(tmp_path), "--config.training.num_steps=10",
                 *flags, env=env)
  assert first.returncode == 0, first.stderr[-3000:]
  resumed = launch("local_processes.sh", "configs/toy2d.py:local", str(tmp_path), "--config.training.num_steps=20",
                   *flags, env=env)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  for process in (0, 1):
    log = (tmp_path / f"process_{process}.log").read_text()
    assert "Resuming from the checkpoint of step 10" in log and "trained to step 20" in log, log[-3000:]
  assert len(glob.glob(str(tmp_path / "events.out.tfevents.*"))) == 2  # one per run, both from process 0
  config = toy2d.get_config("local")
  params, step = trained_model.load_ema_params(config, str(tmp_path), (2,))  # a 2-process checkpoint, read by one process
  assert step == 20 and all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def test_tpu_script_queues_current_runtimes_and_trains_on_every_worker():
  env = dict(DRY_RUN="1", PROJECT="p", ZONE="z", TPU_NAME="hold", WORKDIR="gs://bucket/run", SPOT="1")
  expected_runtimes = {"v6e-8": "v2-alpha-tpuv6e", "v5litepod-32": "v2-alpha-tpuv5-lite", "v5p-16": "v2-alpha-tpuv5",
                       "v4-32": "tpu-ubuntu2204-base"}
  for accelerator, runtime in expected_runtimes.items():
    created = launch("tpu_vm.sh", "create", env=dict(env, ACCELERATOR=accelerator))
    assert created.returncode == 0, created.stderr
    assert f"--runtime-version={runtime}" in created.stdout and "--spot" in created.stdout
    assert f"--accelerator-type={accelerator}" in created.stdout
  trained = launch("tpu_vm.sh", "train", env=dict(env, ARGS="--config.training.batch_size=256"))
  assert trained.returncode == 0, trained.stderr
  assert "--worker=all" in trained.stdout and "--distributed" in trained.stdout
  assert "gs://bucket/run" in trained.stdout and "batch_size=256" in trained.stdout
  unknown = launch("tpu_vm.sh", "create", env=dict(env, ACCELERATOR="v9-8"))
  assert unknown.returncode != 0 and "RUNTIME" in unknown.stderr


def child_pid(pattern):
  found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
  assert found, pattern
  return int(found[0])


LONG_RUN = ["--config.training.num_steps=1000000", "--config.training.batch_size=16",
            "--config.training.checkpoint_every=50", "--config.training.log_every=50"]


def start_two_processes(workdir, *flags):
  env = dict(os.environ, NUM_PROCESSES="2", DEVICES_PER_PROCESS="2", PYTHON=VENV_PYTHON)
  return subprocess.Popen([os.path.join(ROOT, "launch", "local_processes.sh"), "configs/toy2d.py:local",
                           str(workdir), *LONG_RUN, *flags], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigterm_to_one_process_saves_the_same_step_on_every_process(tmp_path):
  job = start_two_processes(tmp_path)
  run_helpers.wait_for_checkpoint(tmp_path, [job])
  os.kill(child_pid(f"workdir {tmp_path} .*process_id=1"), signal.SIGTERM)
  job.communicate(timeout=120)
  assert job.returncode == 0
  stopped = max(int(name) for name in os.listdir(tmp_path / "checkpoints") if name.isdigit())
  for process in (0, 1):
    log = (tmp_path / f"process_{process}.log").read_text()
    assert f"stopped at step {stopped} of 1000000" in log, log[-3000:]


@pytest.mark.slow
def test_a_dead_process_stops_the_others_within_a_minute(tmp_path):
  job = start_two_processes(tmp_path, "--config.distributed.heartbeat_timeout=10")
  run_helpers.wait_for_checkpoint(tmp_path, [job])
  killed = time.time()
  os.kill(child_pid(f"workdir {tmp_path} .*process_id=1"), signal.SIGKILL)
  job.communicate(timeout=120)
  assert job.returncode != 0 and time.time() - killed < 60
  assert "another task died" in (tmp_path / "process_0.log").read_text()


def test_slurm_script_forwards_usr1_saves_and_requeues(tmp_path):
  stand_ins = tmp_path / "bin"
  stand_ins.mkdir()
  (stand_ins / "srun").write_text('#!/usr/bin/env bash\nshift\nexec "$@"\n')  # drops --kill-on-bad-exit
  (stand_ins / "scontrol").write_text(f'#!/usr/bin/env bash\necho "$@" >> {tmp_path}/scontrol.txt\n')
  for name in ("srun", "scontrol"):
    os.chmod(stand_ins / name, 0o755)
  workdir = tmp_path / "run"
  env = dict(os.environ, SRUN=str(stand_ins / "srun"), SCONTROL=str(stand_ins / "scontrol"), PYTHON=VENV_PYTHON,
             SLURM_JOB_ID="4242", JAX_PLATFORMS="cpu")
  port = 20000 + os.getpid() % 20000
  job = subprocess.Popen(["bash", os.path.join(ROOT, "launch", "slurm_gpu.sbatch"), "configs/toy2d.py:local",
                          str(workdir), f"--coordinator_address=localhost:{port}", "--num_processes=1",
                          "--process_id=0", *LONG_RUN], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
  run_helpers.wait_for_checkpoint(workdir, [job])
  job.send_signal(signal.SIGUSR1)
  stdout, stderr = job.communicate(timeout=120)
  assert job.returncode == 0, stderr[-3000:]
  stopped = max(int(name) for name in os.listdir(workdir / "checkpoints") if name.isdigit())
  assert f"stopped at step {stopped} of 1000000" in stdout
  assert (tmp_path / "scontrol.txt").read_text().split() == ["requeue", "4242"]

"""launch/: a real two-process job on this machine (the multi-host path), and the TPU script's commands."""
import glob
import os
import subprocess

import jax
import numpy as np

from configs import toy2d
from hold_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(script, *args, env=None, timeout=600):
  result = subprocess.run([os.path.join(ROOT, "launch", script), *args], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), timeout=timeout)
  return result


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
  params, step = train.load_ema_params(config, str(tmp_path), (2,))  # a 2-process checkpoint, read by one process
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

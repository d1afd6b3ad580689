"""Helpers for tests that run real jobs: waiting for a first checkpoint, and small file systems."""
import contextlib
import os
import subprocess
import time

import pytest


def wait_for_checkpoint(workdir, processes, timeout=180):
  """Returns once workdir/checkpoints holds a finished step; fails if a process ends first."""
  started = time.time()
  while time.time() - started < timeout:
    directory = workdir / "checkpoints"
    if directory.exists() and any(name.isdigit() for name in os.listdir(directory)):
      return
    for process in processes:
      assert process.poll() is None, f"a process ended before its first checkpoint: {process.communicate()[1][-3000:]}"
    time.sleep(0.2)
  raise AssertionError("no checkpoint appeared")


@contextlib.contextmanager
def tmpfs(mount, options):
  """A tmpfs mounted at `mount` (e.g. options 'size=600k' or 'ro,size=64k'); skips where mounting is refused."""
  mount.mkdir(exist_ok=True)
  result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True)
  if result.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
  try:
    yield mount
  finally:
    subprocess.run(["umount", "-l", str(mount)], check=False)

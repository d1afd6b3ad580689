"""The README's main job, run the way users run it, and the configs it reads."""
import glob
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from hold_jax.cli import demo
from hold_jax.process import sde as sde_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(path):
  spec = importlib.util.spec_from_file_location("config_module", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize("path", sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                                         if not p.endswith("__init__.py")))
def test_every_config_builds_its_process(path):
  config = load_config(path)
  sde = sde_lib.from_config(config.sde)
  assert sde.order == config.sde.order


def test_exact_score_demo_from_the_command_line(tmp_path):
  command = [sys.executable, "-m", "hold_jax.cli.demo", "--config", "configs/mixture_demo.py",
             "--workdir", str(tmp_path), "--config.sampling.num_samples=400", "--config.sampling.num_steps=50",
             "--config.sde.order=2"]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  config = load_config(os.path.join(ROOT, "configs", "mixture_demo.py"))
  config.sampling.update(num_samples=400, num_steps=50)
  config.sde.order = 2
  stem = demo.output_stem(demo.output_settings(config))  # the files are named by the command's settings
  assert set(os.listdir(tmp_path)) == {f"{stem}.npz", f"{stem}.png", f"{stem}.json"}
  metrics = json.load(open(tmp_path / f"{stem}.json"))["metrics"]
  assert metrics["finite_fraction"] == 1.0
  assert metrics["on_mode_fraction"] > 0.95  # 98.9% of an exact 2-D Gaussian lies within 3 std


def test_bad_override_names_the_field(tmp_path):
  for entry in ("hold_jax.main", "hold_jax.cli.demo"):
    config = "configs/toy2d.py" if entry == "hold_jax.main" else "configs/mixture_demo.py"
    command = [sys.executable, "-m", entry, "--config", config, "--workdir", str(tmp_path), "--config.sde.eps=2.0"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2
    assert result.stderr.startswith("hold_jax: error: sde.eps = 2.0 is not allowed"), result.stderr[-3000:]


def test_training_entry_points_the_demo_config_to_its_own_entry(tmp_path):
  command = [sys.executable, "-m", "hold_jax.main", "--config", "configs/mixture_demo.py", "--workdir", str(tmp_path)]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 2 and "python -m hold_jax.cli.demo --config configs/mixture_demo.py" in result.stderr

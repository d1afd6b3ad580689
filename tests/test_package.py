"""The package: a wheel with the stock configs, the bundled classifier, the pretrained models and the `hold-jax`
command, which runs from any directory."""
import glob
import os
import subprocess
import sys
import zipfile

import pytest

from hold_jax.cli import command_errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  out = tmp_path_factory.mktemp("wheel")
  built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                          str(out), ROOT], capture_output=True, text=True, timeout=300)
  assert built.returncode == 0, built.stderr[-3000:]
  (path,) = glob.glob(str(out / "hold_jax-*.whl"))
  return path


def test_wheel_holds_configs_data_license_and_the_command(wheel):
  with zipfile.ZipFile(wheel) as archive:
    names = set(archive.namelist())
    entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
  for config in ("default", "images", "toy2d", "digits", "cifar10", "celebahq256", "mixture_demo"):
    assert f"hold_jax/configs/{config}.py" in names
  assert "hold_jax/evaluation/feature_networks/digits_classifier.npz" in names
  for folder in ("swiss_roll", "digits"):  # the pretrained models (hold_jax/pretrained)
    files = ("config.json", "model.json", "ema_params.msgpack")
    assert {f"hold_jax/pretrained/{folder}/{name}" for name in files} <= names
  assert any(n.endswith("licenses/LICENSE") for n in names)
  assert not any(n.startswith(("tests/", "benchmarks/", "configs/")) for n in names)
  assert "hold-jax = hold_jax.main:entry_point" in entry_points


@pytest.mark.slow
def test_installed_command_runs_a_stock_config_from_any_directory(wheel, tmp_path):
  target, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
  elsewhere.mkdir()
  installed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                              wheel], capture_output=True, text=True, timeout=300)
  assert installed.returncode == 0, installed.stderr[-3000:]
  # Only the installed copy is importable: the checkout is not on the path and the directory is empty.
  env = dict(os.environ, PYTHONPATH=str(target))
  command = [str(target / "bin" / "hold-jax"), "--config", "configs/toy2d.py:local", "--workdir",
             str(tmp_path / "run"), "--config.training.num_steps=2", "--config.training.log_every=1",
             "--config.training.checkpoint_every=2"]
  result = subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.splitlines()[-1] == f"trained to step 2; checkpoints in {tmp_path / 'run'}/checkpoints"
  where = subprocess.run([sys.executable, "-c", "import hold_jax; print(hold_jax.__file__)"], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=120)
  assert where.stdout.startswith(str(target)), where.stdout


def test_stock_config_path(tmp_path, monkeypatch):
  packaged = os.path.join(command_errors.PACKAGED_CONFIGS, "toy2d.py")
  monkeypatch.chdir(tmp_path)
  assert command_errors.stock_config_path("configs/toy2d.py") == packaged
  assert command_errors.stock_config_path("configs/no_such.py") == "configs/no_such.py"  # reported as missing later
  assert command_errors.stock_config_path("other/toy2d.py") == "other/toy2d.py"
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "toy2d.py").write_text("# a user's own copy\n")
  assert command_errors.stock_config_path("configs/toy2d.py") == "configs/toy2d.py"  # a file here always wins
  flag_values = _config_flag_values()
  argv = command_errors.with_stock_configs(["prog", "--config", "configs/digits.py:local", "--workdir", "w"],
                                           flag_values)
  assert argv[2] == os.path.join(command_errors.PACKAGED_CONFIGS, "digits.py") + ":local"
  argv = command_errors.with_stock_configs(["prog", "--config=configs/cifar10.py"], flag_values)
  assert argv[1] == "--config=" + os.path.join(command_errors.PACKAGED_CONFIGS, "cifar10.py")


def _config_flag_values():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "config", flag_values=flag_values)
  return flag_values

"""`hold-jax --help` answers from the command's own flags and the common config fields, before JAX and
TensorFlow are imported (hold_jax/cli/command_help.py)."""
import os
import subprocess
import sys

import pytest

from hold_jax.cli import command_help

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs the command as `python -m hold_jax.main ARGS` does, then says which heavy modules were imported.
_PROBE = """
import runpy, sys
sys.argv = ["hold_jax/main.py"] + sys.argv[1:]
try:
  runpy.run_module("hold_jax.main", run_name="__main__")
finally:
  print("IMPORTED:", sorted(name for name in ("jax", "tensorflow", "flax", "orbax") if name in sys.modules))
"""


@pytest.mark.parametrize("argument", ["--help", "-h"])
def test_help_lists_the_commands_flags_and_fields_without_importing_jax(argument):
  result = subprocess.run([sys.executable, "-c", _PROBE, argument], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr
  for flag in command_help.OWN_FLAGS:
    assert f"--{flag}\n" in result.stdout
  for field, _ in command_help.COMMON_FIELDS:
    assert f"  {field}  " in result.stdout
  assert "hold_jax/configs/default.py" in result.stdout and "--helpfull" in result.stdout
  assert "IMPORTED: []" in result.stdout


def test_the_common_fields_are_fields_of_the_stock_configs():
  from hold_jax.configs import images, toy2d  # pylint: disable=import-outside-toplevel
  configs = (toy2d.get_config(), images.get_config())
  for field, _ in command_help.COMMON_FIELDS:
    group, name = field.split(".")
    assert any(name in config[group] for config in configs), field


def test_help_is_asked_only_before_a_double_dash():
  assert command_help.asks_for_help(["--config", "c.py", "--help"])
  assert not command_help.asks_for_help(["--config", "c.py", "--", "--help"])
  assert not command_help.asks_for_help(["--config", "c.py", "--helpfull"])


@pytest.mark.parametrize("arguments, message", [
    (["--config", "configs/toy2d.py", "--workdir", "unused", "--config.training.num_stepz=3"],
     "hold_jax: error: --config.training.num_stepz=3: config has no field training.num_stepz"),
    (["--config", "configs/toy2d.py"], "--workdir"),
    (["--config", "configs/no_such_config.py", "--workdir", "unused"], "no_such_config.py"),
])
def test_a_bad_command_line_is_one_line_before_jax_is_imported(arguments, message):
  result = subprocess.run([sys.executable, "-c", _PROBE, *arguments], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode != 0 and message in result.stderr, result.stderr
  assert "Traceback" not in result.stderr
  assert "IMPORTED: []" in result.stdout

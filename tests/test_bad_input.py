"""Bad input ends in one clear error that names the field, the value and the fix: never a traceback from deep
inside a job, never a run that goes on with the bad value (hold_jax/cli/command_errors.py, config_checks.py, models,
input_pipeline.load_point_cloud)."""
import math
import os
import pickle
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from hold_jax import models
from hold_jax.cli import command_errors
from hold_jax.cli import config_checks
from hold_jax.configs import digits
from hold_jax.configs import toy2d
from hold_jax.data import input_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAN, INF = math.nan, math.inf


def config_with(get_config, field, value, **also):
  """get_config('local') with field (dotted) = value and the fields of `also` ('a__b' for a.b), types unchecked
  so that 1.5 or NaN can reach an int field as it can from a user's config file."""
  config = get_config("local")
  with config.ignore_type():
    for name, new in [(field, value)] + [(key.replace("__", "."), new) for key, new in also.items()]:
      group, leaf = name.rsplit(".", 1)
      config[group][leaf] = new
  return config


def assert_rejected(config, field, value):
  """check(config) raises ValueError whose message says `field = value` (or `field[k] = value` per element)."""
  with pytest.raises(ValueError) as info:
    config_checks.check(config)
  assert re.search(rf"{re.escape(field)}(\[\d+\])? = {re.escape(repr(value))}", str(info.value)), str(info.value)


@pytest.mark.parametrize("get_config", [toy2d.get_config, digits.get_config], ids=["toy2d", "digits"])
def test_the_shipped_local_configs_pass(get_config):
  config_checks.check(get_config("local"))  # so every rejection below is the bad value's


@pytest.mark.parametrize("field, value, also", [
    ("model.width", 0, {}), ("model.width", -1, {}), ("model.width", 1.5, {}),
    ("model.depth", 0, {}), ("model.depth", -1, {}), ("model.depth", NAN, {}),
    ("model.embedding_dim", 0, {}), ("model.embedding_dim", -2, {}), ("model.embedding_dim", 3, {}),
    ("model.fourier_scale", NAN, {}), ("model.fourier_scale", INF, {}), ("model.fourier_scale", 0.0, {}),
    ("model.embedding", "learned", {}),
    ("optim.learning_rate", NAN, {}), ("optim.learning_rate", INF, {}), ("optim.learning_rate", 0.0, {}),
    ("optim.learning_rate", -1e-3, {}),
    ("optim.beta1", NAN, {}), ("optim.beta1", 1.0, {}), ("optim.beta1", -0.1, {}),
    ("optim.beta2", NAN, {}), ("optim.beta2", 1.0, {}), ("optim.beta2", INF, {}),
    ("optim.eps", NAN, {}), ("optim.eps", 0.0, {}), ("optim.eps", INF, {}),
    ("optim.grad_clip", NAN, {}), ("optim.grad_clip", INF, {}),
    ("optim.warmup_steps", -1, {}), ("optim.warmup_steps", NAN, {}),
    ("ema.decay", NAN, {}), ("ema.decay", 1.0, {}), ("ema.decay", -0.1, {}), ("ema.decay", INF, {}),
    ("training.num_steps", NAN, {}), ("training.batch_size", 0, {}), ("checkpoint.keep", NAN, {}),
    ("sde.coupling_scale", NAN, {}), ("sde.coupling_scale", INF, {}),
    ("sde.beta_0", NAN, {}), ("sde.beta_0", INF, {}), ("sde.beta_1", INF, {}), ("sde.T", INF, {}),
    ("sde.eps", NAN, {}), ("sde.friction", NAN, {}), ("sde.friction", "high", {}),
    ("sde.init_aux_var", INF, {}), ("sde.init_aux_var", NAN, {}),
    ("sampling.rho", NAN, {"sampling__grid": "edm"}), ("sampling.rho", INF, {"sampling__grid": "edm"}),
    ("sampling.ode_rtol", INF, {}), ("sampling.ode_rtol", NAN, {}), ("sampling.ode_atol", INF, {}),
    ("sampling.num_samples", NAN, {}),
    ("eval.ode_rtol", NAN, {}), ("eval.ode_rtol", INF, {}), ("eval.ode_atol", INF, {}),
    ("eval.num_examples", NAN, {}), ("eval.batch_size", NAN, {}),
])
def test_toy2d_bad_numbers_are_named(field, value, also):
  assert_rejected(config_with(toy2d.get_config, field, value, **also), field, value)


@pytest.mark.parametrize("field, value", [
    ("model.nf", 0), ("model.nf", -4), ("model.nf", 16.0),
    ("model.ch_mult", ()), ("model.ch_mult", (0,)), ("model.ch_mult", (1, -2)), ("model.ch_mult", (1, 2.5)),
    ("model.ch_mult", 2), ("model.ch_mult", ("abc",)),
    ("model.num_res_blocks", 0), ("model.num_res_blocks", -1), ("model.num_res_blocks", 1.5),
    ("model.dropout", NAN), ("model.dropout", 1.0), ("model.dropout", -0.1), ("model.dropout", INF),
    ("model.fourier_scale", NAN), ("model.fourier_scale", -1.0),
    ("model.init_scale", NAN), ("model.init_scale", -1.0), ("model.init_scale", INF),
    ("model.attn_resolutions", 4),
    ("optim.learning_rate", NAN), ("ema.decay", NAN),
    ("eval.checkpoint_step", -2), ("eval.checkpoint_step", 1.5), ("eval.checkpoint_step", NAN),
    ("eval.checkpoint_step", "4"), ("eval.sampler_sweep", "strang:edm:20"),
])
def test_image_model_bad_sizes_are_named(field, value):
  assert_rejected(config_with(digits.get_config, field, value), field, value)


@pytest.mark.parametrize("entry, problem", [
    ("strang:edm", "2 part(s) separated by ':', not 3"), ("heun:edm:20", "unknown method 'heun'"),
    ("strang:cosine:20", "unknown grid 'cosine'"), ("strang:edm:0", "num_steps '0' is not an integer >= 1"),
    ("strang:edm:2.5", "num_steps '2.5' is not an integer >= 1"), (20, "of type int, not a string"),
])
def test_a_bad_sampler_sweep_entry_is_named_with_the_allowed_methods_and_grids(entry, problem):
  config = config_with(digits.get_config, "eval.sampler_sweep", ("lie_trotter:quadratic:10", entry))
  with pytest.raises(ValueError) as info:
    config_checks.check(config)
  message = str(info.value)
  assert message.startswith(f"eval.sampler_sweep[1] = {entry!r} is not allowed ({problem})"), message
  assert "'ode_adaptive')" in message and "('uniform', 'quadratic', 'edm')" in message, message


def test_a_repeated_sampler_sweep_entry_is_named():
  config = config_with(digits.get_config, "eval.sampler_sweep", ("strang:edm:20", "ddim:uniform:5", "strang:edm:020"))
  with pytest.raises(ValueError, match=r"eval.sampler_sweep\[2\] = 'strang:edm:020' is not allowed: it repeats "
                     r"entry 0"):
    config_checks.check(config)


@pytest.mark.parametrize("get_config, field, value, shape", [
    (toy2d.get_config, "model.width", 0, (2,)), (toy2d.get_config, "model.depth", -1, (2,)),
    (digits.get_config, "model.nf", 0, (8, 8, 1)), (digits.get_config, "model.num_res_blocks", 0, (8, 8, 1)),
])
def test_create_model_checks_wherever_a_network_is_built(get_config, field, value, shape):
  config = config_with(get_config, field, value)
  with pytest.raises(ValueError, match=f"{field} = {value!r}"):
    models.create_model(config.model, shape)


def _write_bad_files(directory):
  """name -> (path, words the message must hold) for every kind of file that is not a numeric .npy array."""
  cut = directory / "cut.npy"
  np.save(cut, np.ones((50, 2)))
  cut.write_bytes(cut.read_bytes()[:200])
  np.save(directory / "objects.npy", np.array([np.zeros(2), np.zeros(3)], dtype=object), allow_pickle=True)
  (directory / "points.csv").write_text("x,y\n0.1,0.2\n0.3,0.4\n")
  (directory / "random.npy").write_bytes(bytes(range(7, 71)))
  (directory / "empty.npy").write_bytes(b"")
  np.savez(directory / "archive.npz", points=np.ones((4, 2)))
  (directory / "list.pkl").write_bytes(pickle.dumps([[0.0, 1.0], [2.0, 3.0]]))
  np.save(directory / "complex.npy", np.ones((4, 2), complex))
  return {"objects": ("objects.npy", "Python objects"), "text": ("points.csv", "text"),
          "random": ("random.npy", "64 bytes"), "empty": ("empty.npy", "empty file"),
          "npz": ("archive.npz", "zip archive"), "pickle": ("list.pkl", "pickle"),
          "cut": ("cut.npy", "could not be read"), "complex": ("complex.npy", "complex128")}


@pytest.mark.parametrize("kind", ["objects", "text", "random", "empty", "npz", "pickle", "cut", "complex"])
def test_files_that_are_not_numeric_npy_arrays_are_named(tmp_path, monkeypatch, kind):
  name, found = _write_bad_files(tmp_path)[kind]
  load = np.load

  def load_without_pickles(*args, **kwargs):
    assert not kwargs.get("allow_pickle", False), "load_point_cloud must never unpickle"
    return load(*args, **kwargs)

  monkeypatch.setattr(np, "load", load_without_pickles)
  path = str(tmp_path / name)
  with pytest.raises(ValueError) as info:
    input_pipeline.load_point_cloud(path)
  message = str(info.value)
  assert f"data.dataset = 'npy:{path}'" in message and found in message, message
  assert "numpy.save" in message, message


# ------------------------------------------------------------------------------------------------------------
# The command line: --config.a.b=value overrides, through ml_collections' own config flag.


def parse(argv, capsys):
  """command_errors.parse_flags on a fresh FlagValues holding a real config file flag: (exit status or None, stderr)."""
  flag_values = flags.FlagValues()
  config = config_flags.DEFINE_config_file("config", None, "config", flag_values=flag_values, lock_config=True,
                                           sys_argv=argv)
  flags.DEFINE_string("workdir", None, "workdir", flag_values=flag_values)
  try:
    command_errors.parse_flags(argv, flag_values)
  except SystemExit as exit_:
    return exit_.code, capsys.readouterr().err
  return config.value, capsys.readouterr().err


def toy2d_argv(*overrides):
  return ["prog", "--config", os.path.join(ROOT, "configs", "toy2d.py") + ":local", "--workdir", "/tmp/x",
          *overrides]


@pytest.mark.parametrize("override, message", [
    ("--config.training.num_stepz=5",
     "--config.training.num_stepz=5: config has no field training.num_stepz; the nearest valid name is "
     "training.num_steps."),
    ("--config.trainingz.num_steps=5", "config has no field trainingz.num_steps; the nearest valid name is "
     "training.num_steps."),
    ("--config.training.num_steps.deeper=5", "config has no field training.num_steps.deeper"),
    ("--config.optim.zzzzzzzzzz=1", "config has no field optim.zzzzzzzzzz; the fields of optim are beta1, beta2"),
    ("--noconfig.ema.warmupp", "config has no field ema.warmupp; the nearest valid name is ema.warmup."),
    ("--config.training.num_steps=abc", "training.num_steps takes an integer (it is 40 in the config), not 'abc'."),
    ("--config.model.width=1.5", "model.width takes an integer (it is 32 in the config), not '1.5'."),
    ("--config.optim.learning_rate=fast", "optim.learning_rate takes a number (it is 0.001 in the config), not "
     "'fast'."),
    ("--config.ema.warmup=maybe", "ema.warmup takes true or false (it is True in the config), not 'maybe'."),
    ("--config.training=5", "training is a group of fields"),
])
def test_bad_overrides_end_in_one_line_and_status_2(capsys, override, message):
  status, stderr = parse(toy2d_argv(override), capsys)
  assert status == 2 and stderr.startswith("hold_jax: ") and message in stderr, stderr
  assert stderr.count("\n") == 1 and "Traceback" not in stderr


def test_good_overrides_apply_and_other_flag_errors_keep_absl_behaviour(capsys):
  config, _ = parse(toy2d_argv("--config.training.num_steps=7", "--config.optim.learning_rate=0.01"), capsys)
  assert config.training.num_steps == 7 and config.optim.learning_rate == 0.01
  status, stderr = parse(toy2d_argv("--workdirr=/tmp/y"), capsys)
  assert status == 1 and stderr.startswith("FATAL Flags parsing error: Unknown command line flag 'workdirr'")
  status, stderr = parse(["prog", "--config", "configs/no_such_config.py", "--config.training.num_steps=5"], capsys)
  assert status == 2 and "there is no config file 'configs/no_such_config.py'" in stderr, stderr
  config, _ = parse(toy2d_argv("--config.eval.checkpoint_step=20",
                               "--config.eval.sampler_sweep=('strang:edm:20', 'ddim:uniform:5')"), capsys)
  config_checks.check(config)
  assert config.eval.checkpoint_step == 20 and config.eval.sampler_sweep == ("strang:edm:20", "ddim:uniform:5")


def test_absl_app_run_with_parse_flags_prints_no_traceback():
  code = textwrap.dedent("""
    from absl import app
    from ml_collections import config_flags
    from hold_jax.cli import command_errors
    config_flags.DEFINE_config_file("config", None, "config", lock_config=True)
    app.run(lambda argv: print("main ran"), flags_parser=command_errors.parse_flags)
  """)
  result = subprocess.run([sys.executable, "-c", code, "--config", "configs/toy2d.py:local",
                           "--config.training.num_stepz=5"], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 2 and "main ran" not in result.stdout
  assert result.stderr == ("hold_jax: error: --config.training.num_stepz=5: config has no field training.num_stepz; "
                           "the nearest valid name is training.num_steps.\n"), result.stderr


# ------------------------------------------------------------------------------------------------------------
# A field that a user's own config file lacks, met by any code that reads it.


def test_a_missing_field_is_named_with_its_group_and_nearest_name():
  config = toy2d.get_config("local")
  del config.model["depth"]
  config.lock()
  with pytest.raises((AttributeError, KeyError)) as info:
    config_checks.check(config)
  message = command_errors.config_field_error(info.value, config)
  assert message is not None and message.startswith("config has no field model.depth;"), message
  with pytest.raises(AttributeError) as info:
    config.training.num_stepz  # pylint: disable=pointless-statement
  assert "the nearest valid name is training.num_steps" in command_errors.config_field_error(info.value, config)
  with pytest.raises(KeyError) as info:
    config["optim.learning_rat"]  # pylint: disable=pointless-statement
  assert "has no field optim.learning_rat; the nearest valid name is optim.learning_rate" in (
      command_errors.config_field_error(info.value, config))


def test_errors_that_are_not_config_lookups_are_left_alone():
  config = toy2d.get_config("local")
  for error_raiser in (lambda: {}["x"], lambda: config.model.width.real_part, lambda: int("x")):
    with pytest.raises(Exception) as info:
      error_raiser()
    assert command_errors.config_field_error(info.value, config) is None

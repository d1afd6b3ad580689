"""The Python API (hold_jax/api.py) gives what the command line gives: the same samples, the same NLL bound,
the same reports, from a workdir or a pretrained model (hold_jax/pretrained)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from flax import serialization

import hold_jax
from hold_jax import pretrained
from hold_jax.evaluation import nll_rounds
from hold_jax.sampling import sample_job
from hold_jax.workdir import run_record
from hold_jax.workdir import trained_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def toy(trained_workdir, tmp_path_factory):
  """A copy of the shared toy run (configs/toy2d.py:local, a denoiser, checkpoints at steps 20 and 40)."""
  workdir = tmp_path_factory.mktemp("api") / "run"
  shutil.copytree(trained_workdir[0], workdir)
  return workdir


def test_import_hold_jax_is_light_and_exports_the_api():
  code = ("import sys, hold_jax; light = not any(m in sys.modules for m in ('jax', 'tensorflow', 'flax'));"
          "names = sorted(hold_jax.__all__); load = hold_jax.load; "
          "print(light, names, load.__module__, 'jax' in sys.modules)")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
  assert result.stdout.split() == ["True", "['Model',", "'load',", "'pretrained_models',", "'summary',", "'to_pixels']",
                                   "hold_jax.api", "True"]
  with pytest.raises(AttributeError, match="no attribute 'sampel'"):
    hold_jax.sampel  # pylint: disable=pointless-statement


def test_samples_are_those_of_the_sample_command(toy):
  config = run_record.load_config(toy)
  config.sampling.update(method="gddim", grid="edm", num_steps=6, num_samples=40, batch_size=40)
  from_command = np.load(sample_job.sample_to_disk(config, str(toy)))["x"]
  model = hold_jax.load(str(toy))
  assert model.step == 40 and model.data_shape == (2,)
  drawn = model.sample(40, method="gddim", grid="edm", num_steps=6)
  np.testing.assert_array_equal(drawn, from_command)
  # Sample i depends on (seed, i) alone: fewer samples in smaller batches are the first ones (up to XLA's
  # rounding, which depends on the batch's shape).
  np.testing.assert_allclose(model.sample(7, method="gddim", grid="edm", num_steps=6, batch_size=3),
                             from_command[:7], atol=1e-5)
  other = model.sample(40, method="gddim", grid="edm", num_steps=6, seed=1)
  assert not np.allclose(other, from_command)


def test_an_earlier_step_and_another_process_can_be_chosen(toy):
  early = hold_jax.load(str(toy), step=20)
  assert early.step == 20
  vp = hold_jax.load(str(toy), process="vp")
  assert vp.config.sde.order == 1 and vp.config.sde.beta_schedule == "linear"
  hold = hold_jax.load(str(toy))
  assert not np.allclose(vp.sample(8, num_steps=4), hold.sample(8, num_steps=4))


def test_bad_settings_are_one_error_naming_the_field(toy):
  model = hold_jax.load(str(toy))
  with pytest.raises(ValueError, match="sampling.num_stesp is not a config field; sampling has .*num_steps"):
    model.sample(4, num_stesp=3)
  with pytest.raises(ValueError, match="sampling.method"):
    model.sample(4, method="euler_maruyama_typo")
  with pytest.raises(ValueError, match="num_samples = 0"):
    model.sample(0)
  with pytest.raises(run_record.RecordMismatch, match="model.width"):
    hold_jax.load(str(toy), overrides={"model.width": 64})
  with pytest.raises(ValueError, match="process"):
    hold_jax.load(str(toy), process="ddpm")
  with pytest.raises(ValueError, match="not a pretrained model of hold_jax: the names are swiss_roll, "):
    hold_jax.load("no_such_model_or_workdir")
  with pytest.raises(ValueError, match=r"this model's examples are \(2,\)"):
    model.nll(np.zeros((3, 3)))


def test_the_nll_bound_is_the_evaluation_jobs(toy):
  model = hold_jax.load(str(toy))
  settings = dict(num_examples=6, batch_size=4, round_size=6, ode_rtol=1e-3, ode_atol=1e-3)
  report, = model.evaluate(metrics=("nll",), **settings)
  points = nll_rounds.generated_points(model.config.data.dataset, 0, np.arange(6))
  bound = model.nll(points, batch_size=4, ode_rtol=1e-3, ode_atol=1e-3)
  assert bound["nll_bound_nats_per_example"].shape == (6,)
  np.testing.assert_allclose(bound["nll_bound_nats"], report["nll_bound_nats"], rtol=1e-5)
  assert report["checkpoint_step"] == 40 and report["path"].startswith(str(toy))


def test_a_pretrained_workdir_holds_the_packaged_parameters(tmp_path, monkeypatch):
  monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))
  path = pretrained.workdir("swiss_roll-vp")
  assert path.startswith(str(tmp_path / "cache")) and pretrained.workdir("swiss_roll") == path  # one per data set
  checkpoint = os.path.join(path, "checkpoints", str(pretrained.info("swiss_roll")["step"]))
  built = os.stat(checkpoint).st_mtime_ns
  assert pretrained.workdir("swiss_roll-cld") == path and os.stat(checkpoint).st_mtime_ns == built  # made once
  config = run_record.load_config(path)
  params, step = trained_model.load_ema_params(config, path, (2,))
  packaged = serialization.msgpack_restore((pretrained.FOLDER / "swiss_roll" / pretrained.PARAMS_FILE).read_bytes())
  for got, expected in zip(*(jax_leaves(tree) for tree in (params, packaged))):
    np.testing.assert_array_equal(np.asarray(got), expected)
  assert step == pretrained.info("swiss_roll")["step"]
  model = hold_jax.load("swiss_roll-cld")
  assert model.workdir == path and model.config.sde.order == 2


def jax_leaves(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.leaves(tree)


def test_damaged_packaged_parameters_are_refused(tmp_path, monkeypatch):
  copy = tmp_path / "pretrained"
  shutil.copytree(pretrained.FOLDER / "swiss_roll", copy / "swiss_roll")
  blob = bytearray((copy / "swiss_roll" / pretrained.PARAMS_FILE).read_bytes())
  blob[-1] ^= 1
  (copy / "swiss_roll" / pretrained.PARAMS_FILE).write_bytes(bytes(blob))
  monkeypatch.setattr(pretrained, "FOLDER", copy)
  with pytest.raises(ValueError, match="damaged; reinstall hold_jax"):
    pretrained.workdir("swiss_roll", str(tmp_path / "cache"))


def test_every_pretrained_model_records_how_it_was_made():
  for name in pretrained.names():
    info = pretrained.info(name)
    assert info["made"]["command"].startswith("python -m hold_jax.main --config configs/")
    assert info["made"]["steps"] == info["step"] and info["made"]["trained"]
    record = json.loads((pretrained.FOLDER / pretrained.resolve(name)[0] / "config.json").read_text())
    assert record["loss"]["parametrization"] == "denoiser"  # one network serves the three processes

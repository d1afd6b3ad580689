"""Sample files are named from every setting that can change them and record those settings: a run with other
settings writes a new file next to the earlier ones, never over them (hold_jax/sampling/sample_job.py,
hold_jax/cli/demo.py)."""
from __future__ import annotations

import json
import os
import re
import shutil
from types import SimpleNamespace

import ml_collections
import numpy as np
import pytest
from etils import epath
from PIL import Image

from hold_jax import plots
from hold_jax.cli import demo
from hold_jax.configs import digits
from hold_jax.configs import mixture_demo
from hold_jax.configs import toy2d
from hold_jax.data import input_pipeline
from hold_jax.sampling import sample_job
from hold_jax.workdir import trained_model


def sampling_config(config, **changes):
  """A copy of `config` sampling 64 points with 10 gddim steps, then `changes` ('seed' or sampling fields)."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.sampling.update(method="gddim", grid="edm", num_steps=10, num_samples=64, batch_size=64)
  for field, value in changes.items():
    if field == "seed":
      config.seed = value
    else:
      config.sampling[field] = value
  return config


def read(path) -> dict:
  with np.load(path, allow_pickle=False) as archive:
    return {name: archive[name] for name in archive.files}


@pytest.fixture(scope="module")
def trained(trained_workdir, tmp_path_factory):
  """A copy of the shared toy run (configs/toy2d.py:local, checkpoints at steps 20 and 40), and the sample file
  of `sampling_config` (path, its arrays)."""
  workdir = tmp_path_factory.mktemp("sampled") / "run"
  shutil.copytree(trained_workdir[0], workdir)
  config = trained_workdir[1]
  path = sample_job.sample_to_disk(sampling_config(config), str(workdir))
  return workdir, config, path, read(path)


@pytest.mark.parametrize("field, value", [("stochasticity", 0.5), ("clip_x0", "none"), ("seed", 1)])
def test_a_run_with_another_setting_keeps_the_earlier_file(trained, field, value):
  workdir, config, first, first_arrays = trained
  second = sample_job.sample_to_disk(sampling_config(config, **{field: value}), str(workdir))
  assert second != first and os.path.isfile(second) and os.path.isfile(first[:-len(".npz")] + ".png")
  assert os.path.isfile(second[:-len(".npz")] + ".png")
  kept, written = read(first), read(second)
  for name, array in first_arrays.items():
    np.testing.assert_array_equal(kept[name], array)
  before = sampling_config(config)
  for path, arrays, expected in ((first, kept, before.seed if field == "seed" else before.sampling[field]),
                                 (second, written, value)):
    settings = json.loads(str(arrays["settings_json"]))
    assert (settings["seed"] if field == "seed" else settings["sampling"][field]) == expected
    assert settings["checkpoint_step"] == int(arrays["checkpoint_step"]) == 40
    assert sample_job.settings_stem(settings) + ".npz" == os.path.basename(path)  # the record gives the name again
    whole = ml_collections.ConfigDict(json.loads(str(arrays["config_json"])))
    assert sample_job.sample_file_stem(whole, 40) + ".npz" == os.path.basename(path)
  if field != "clip_x0":  # clipping changes the samples only where x0_hat leaves the data's range
    assert not np.allclose(kept["x"], written["x"])


def test_the_same_settings_rewrite_the_same_file_whatever_the_batch_size(trained):
  workdir, config, first, first_arrays = trained
  assert sample_job.sample_to_disk(sampling_config(config), str(workdir)) == first
  np.testing.assert_array_equal(read(first)["x"], first_arrays["x"])
  assert sample_job.sample_to_disk(sampling_config(config, batch_size=32), str(workdir)) == first
  rewritten = read(first)
  np.testing.assert_allclose(rewritten["x"], first_arrays["x"], atol=1e-5)  # float rounding of other batch shapes
  assert json.loads(str(rewritten["settings_json"]))["sampling"]["batch_size"] == 32  # what the file came from


def test_the_png_records_the_settings(trained):
  first = trained[2]
  with Image.open(first[:-len(".npz")] + ".png") as image:
    assert json.loads(image.text["settings"]) == json.loads(str(read(first)["settings_json"]))


def changed(value):
  """Another value of a sampling field's type (the name needs no valid setting)."""
  if isinstance(value, bool):
    return not value
  if isinstance(value, (int, float)):
    return value + 1
  return value + "_other"


def test_the_name_covers_every_sampling_field_but_the_batch_size():
  config = toy2d.get_config("local")
  base = sample_job.sample_file_stem(config, 40)
  assert re.fullmatch(r"lie_trotter_quadratic_50steps_ckpt40_[0-9a-f]{8}", base)
  for field in config.sampling:
    other = ml_collections.ConfigDict(config.to_dict())
    other.sampling[field] = changed(config.sampling[field])
    stem = sample_job.sample_file_stem(other, 40)
    assert (stem == base) == (field in sample_job.UNHASHED_SAMPLING_FIELDS), field
  assert sample_job.UNHASHED_SAMPLING_FIELDS == ("batch_size",)
  other = ml_collections.ConfigDict(config.to_dict())
  other.seed = 1
  assert len({base, sample_job.sample_file_stem(other, 40), sample_job.sample_file_stem(config, 20)}) == 3
  config.sampling.update(method="ode_adaptive", ode_variable="state")
  assert re.fullmatch(r"ode_adaptive_tsit5_rtol1e-05_atol1e-05_state_ckpt40_[0-9a-f]{8}",
                      sample_job.sample_file_stem(config, 40))


@pytest.mark.parametrize("suffix", [".npz", ".png"])
def test_a_write_cut_short_leaves_nothing_under_the_final_name(tmp_path, monkeypatch, suffix):
  config = toy2d.get_config("local")
  samples = np.random.default_rng(0).normal(size=(config.sampling.num_samples, 2)).astype(np.float32)
  monkeypatch.setattr(trained_model, "load_ema_params", lambda config, workdir, shape: (None, 7))
  monkeypatch.setattr(sample_job, "draw", lambda config, params, shape, return_nfe=False: (samples, 50))
  write_bytes = epath.Path.write_bytes

  def killed(path, data):  # half of the file reaches the disk, then the job is killed
    if suffix not in os.path.basename(str(path)):
      return write_bytes(path, data)
    with open(path, "wb") as file:
      file.write(data[:len(data) // 2])
    raise KeyboardInterrupt

  monkeypatch.setattr(epath.Path, "write_bytes", killed)
  with pytest.raises(KeyboardInterrupt):
    sample_job.sample_to_disk(config, str(tmp_path))
  assert not [name for name in os.listdir(tmp_path / "samples") if name.endswith(suffix)]


@pytest.mark.parametrize("dims", [1, 2, 3, 8])
def test_sample_to_disk_draws_every_kind_of_points_over_the_data_and_names_its_files(tmp_path, monkeypatch, capsys,
                                                                                      dims):
  """2-D: the swiss roll over fresh points of it; other dimensions: a user's cloud, under a histogram (1-D) or a
  corner plot; the console line names the .npz and the .png."""
  config = toy2d.get_config("local")
  if dims != 2:
    cloud = np.random.default_rng(1).normal(size=(500, dims)).astype(np.float32)
    np.save(tmp_path / "cloud.npy", cloud)
    config.data.dataset = f"npy:{tmp_path / 'cloud.npy'}"
  samples = np.random.default_rng(0).normal(size=(config.sampling.num_samples, dims)).astype(np.float32)
  monkeypatch.setattr(trained_model, "load_ema_params", lambda config, workdir, shape: (None, 7))
  monkeypatch.setattr(sample_job, "draw", lambda config, params, shape, return_nfe=False: (samples, 50))
  drawn, figure_of = [], plots.samples_figure
  monkeypatch.setattr(plots, "samples_figure", lambda *args, **kwargs: drawn.append(args) or figure_of(*args, **kwargs))
  path = sample_job.sample_to_disk(config, str(tmp_path / "run"))
  picture = path[:-len(".npz")] + ".png"
  with Image.open(picture) as image:
    assert json.loads(image.text["settings"]) == json.loads(str(read(path)["settings_json"]))
  out = capsys.readouterr().out
  assert f"wrote {path} and {picture}" in out
  (drawn_samples, data, title), = drawn
  np.testing.assert_array_equal(drawn_samples, samples)
  np.testing.assert_array_equal(data, input_pipeline.reference_points(config.data))
  assert data.shape == ((input_pipeline.NUM_REFERENCE_POINTS, 2) if dims == 2 else (500, dims))
  assert title.startswith(config.data.dataset) and "NFE 50, step 7" in title


def test_training_grids_of_one_step_with_other_sampling_settings_are_both_kept(tmp_path, monkeypatch):
  config = digits.get_config("local")
  config.training.update(sample_every=2, num_grid_samples=4)
  monkeypatch.setattr(sample_job, "make_drawer",
                      lambda config, shape: lambda params, num, seed=None: np.zeros((num,) + shape))
  # absl's handler (and so pytest's caplog) depends on what earlier tests of the process set up: the call is
  # recorded instead.
  logged = []
  monkeypatch.setattr(sample_job.logging, "info", lambda message, *args: logged.append(message % args))
  writer = SimpleNamespace(write_images=lambda step, images: None)
  for stochasticity in (0.0, 0.5, 0.5):  # a resumed run with another setting, then one with the same
    config.sampling.stochasticity = stochasticity
    sample_job.grid_callback(config, str(tmp_path), (8, 8, 1))(2, SimpleNamespace(ema_params=None), writer)
    assert logged[-1].endswith(f"grid written to {tmp_path / 'samples' / sample_job.grid_file_name(config, 2)}")
  names = sorted(os.listdir(tmp_path / "samples"))
  assert len(names) == 2 and all(re.fullmatch(r"grid_step2_[0-9a-f]{8}\.png", name) for name in names), names
  by_setting = {}
  for name in names:
    with Image.open(tmp_path / "samples" / name) as image:
      settings = json.loads(image.text["settings"])
    assert settings["checkpoint_step"] == 2 and settings["sampling"]["num_samples"] == 4  # what was drawn
    by_setting[settings["sampling"]["stochasticity"]] = name
  assert sorted(by_setting) == [0.0, 0.5] and sample_job.grid_file_name(config, 2) == by_setting[0.5]
  config.sampling.batch_size = 1
  assert sample_job.grid_file_name(config, 2) == by_setting[0.5]


def test_demo_runs_with_other_settings_keep_their_own_files(tmp_path, monkeypatch):
  def sample_mixture(config, rng):  # the names and records are under test here; test_main.py runs the sampler
    points = np.random.default_rng(int(config.sampling.stochasticity * 10)).normal(size=(100, 2))
    return points.astype(np.float32), demo.ring_means(config.data.num_components, config.data.radius)

  monkeypatch.setattr(demo, "sample_mixture", sample_mixture)
  config = mixture_demo.get_config()
  config.sampling.method = "gddim"
  metrics = {}
  for stochasticity in (0.0, 0.5):
    config.sampling.stochasticity = stochasticity
    metrics[stochasticity] = demo.run(config, str(tmp_path))
  names = sorted(os.listdir(tmp_path))
  assert len(names) == 6, names
  stems = sorted({name.rsplit(".", 1)[0] for name in names})
  assert names == sorted(f"{stem}{suffix}" for stem in stems for suffix in (".json", ".npz", ".png"))
  for stem in stems:
    with open(tmp_path / f"{stem}.json") as file:
      record = json.load(file)
    stochasticity = record["settings"]["sampling"]["stochasticity"]
    assert record["metrics"] == metrics[stochasticity]
    assert demo.output_stem(json.loads(str(read(tmp_path / f"{stem}.npz")["settings_json"]))) == stem
    config.sampling.stochasticity = stochasticity
    assert demo.output_stem(demo.output_settings(config)) == stem
  config.sampling.batch_size = 7
  assert demo.output_stem(demo.output_settings(config)) in stems
  config.sde.order = 2
  assert demo.output_stem(demo.output_settings(config)) not in stems

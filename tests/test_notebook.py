"""notebooks/evaluate.ipynb, executed headless (nbclient) on a tiny digits run trained here, and the workdir
views it is built on (hold_jax/workdir/workdir_view.py)."""
import json
import os
import subprocess

import nbclient
import nbformat
import numpy as np
import pytest

from hold_jax.configs import digits
from hold_jax.evaluation import image_quality
from hold_jax.training import train
from hold_jax.workdir import run_record
from hold_jax.workdir import workdir_view

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "evaluate.ipynb")
TRAINING_NOTEBOOK = os.path.join(ROOT, "notebooks", "train_digits.ipynb")


def tiny_digits_config():
  config = digits.get_config("local")
  config.training.num_steps = 6
  config.training.log_every = 2
  config.training.checkpoint_every = 6
  config.training.sample_every = 0
  config.sampling.num_steps = 2
  config.eval.num_samples = 16
  config.eval.round_size = 16
  return config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A digits run of 6 steps with a saved quality-versus-NFE table of two samplers."""
  folder = tmp_path_factory.mktemp("run")
  config = tiny_digits_config()
  config.eval.stats_cache_dir = str(folder / "stats")
  train.train(config, str(folder))
  config.eval.sampler_sweep = ("lie_trotter:quadratic:2", "lie_trotter:quadratic:4")
  image_quality.evaluate_quality(config, str(folder))
  return folder


@pytest.mark.slow
def test_training_curves_are_read_back_from_the_event_files(workdir):
  scalars = workdir_view.read_scalars(workdir)
  steps, loss = scalars["loss"]
  assert list(steps) == [2, 4, 6] and np.all(np.isfinite(loss)) and np.all(loss > 0)
  assert "learning_rate" in scalars and "samples" not in scalars
  assert workdir_view.read_scalars(workdir / "absent") == {}


def test_the_record_gives_back_the_trained_config(workdir):
  config = run_record.load_config(workdir)
  expected = tiny_digits_config()
  assert config.model.ch_mult == expected.model.ch_mult and config.sde.order == expected.sde.order
  assert config.data.dataset == "digits" and isinstance(config.eval.metrics, tuple)
  with pytest.raises(ValueError, match="config.json does not exist"):
    run_record.load_config(workdir / "absent")


def test_quality_tables_are_found_and_plotted(workdir):
  tables = workdir_view.quality_tables(workdir)
  assert len(tables) == 1
  table = workdir_view.load_table(tables[0])
  assert [row["nfe"] for row in table["rows"]] == [2, 4]
  assert workdir_view.table_metrics(table) == ["fd_digits_mean", "kid_digits_mean", "is_digits_mean"]
  assert os.path.isfile(str(tables[0])[:-len(".json")] + ".png")  # the sweep's plot, beside its table
  figure = workdir_view.plot_quality_vs_nfe(table)
  lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
  assert list(lines["lie_trotter (quadratic)"].get_xdata()) == [2, 4]
  assert sorted(lines) == ["heldout_digits (baseline)", "lie_trotter (quadratic)", "uniform_noise (baseline)"]


def outputs_of(notebook, tag):
  cell, = [cell for cell in notebook.cells if tag in cell.metadata.get("tags", [])]
  return cell.outputs


def has_figure(outputs) -> bool:
  return any("image/png" in output.get("data", {}) for output in outputs)


def text_of(outputs) -> str:
  return "".join(output.get("text", "") for output in outputs)


def execute(path, **environment):
  """Runs a notebook headless from notebooks/ with HOLD_JAX_* parameters set; returns it with its outputs."""
  notebook = nbformat.read(path, as_version=4)
  with pytest.MonkeyPatch.context() as patch:
    for name, value in {"MPLBACKEND": "module://matplotlib_inline.backend_inline", **environment}.items():
      patch.setenv(name, value)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}}).execute()
  return notebook


@pytest.mark.slow
def test_the_notebook_runs_headless_on_a_workdir(workdir):
  notebook = execute(NOTEBOOK, HOLD_JAX_SOURCE=str(workdir), HOLD_JAX_NUM_SAMPLES="20", HOLD_JAX_SWEEP_STEPS="2,3")
  assert f"hold_jax from {ROOT}" in text_of(outputs_of(notebook, "setup"))
  assert "EMA parameters of step 6" in text_of(outputs_of(notebook, "load"))
  assert has_figure(outputs_of(notebook, "grid")) and has_figure(outputs_of(notebook, "curves"))
  metrics = text_of(outputs_of(notebook, "metrics"))
  assert "fd_digits" in metrics and "held-out" in metrics and str(workdir) in metrics
  assert has_figure(outputs_of(notebook, "quality_vs_nfe"))
  assert "gddim" in text_of(outputs_of(notebook, "quality_vs_nfe"))  # the run's sampler, swept
  tables = workdir_view.quality_tables(workdir)
  assert sorted(row["nfe"] for row in workdir_view.load_table(tables[0])["rows"]) == [2, 3]


@pytest.mark.slow
def test_the_notebook_runs_headless_on_a_pretrained_model():
  notebook = execute(NOTEBOOK, HOLD_JAX_SOURCE="swiss_roll-vp", HOLD_JAX_NUM_SAMPLES="200",
                     HOLD_JAX_SWEEP_STEPS="4,8")
  assert "order 1" in text_of(outputs_of(notebook, "load"))
  assert has_figure(outputs_of(notebook, "grid")) and "No training curves" in text_of(outputs_of(notebook, "curves"))
  assert "sw1" in text_of(outputs_of(notebook, "metrics")) and has_figure(outputs_of(notebook, "quality_vs_nfe"))


@pytest.mark.slow
def test_the_training_notebook_trains_samples_and_evaluates(tmp_path):
  workdir = tmp_path / "digits"
  notebook = execute(TRAINING_NOTEBOOK, HOLD_JAX_WORKDIR=str(workdir), HOLD_JAX_TRAIN_STEPS="4",
                     HOLD_JAX_VARIANT="local", HOLD_JAX_NUM_SAMPLES="20")
  assert "trained to step 4" in text_of(outputs_of(notebook, "train"))
  assert (workdir / "checkpoints" / "4").is_dir() and run_record.load_config(workdir).data.dataset == "digits"
  assert has_figure(outputs_of(notebook, "curves")) and has_figure(outputs_of(notebook, "grid"))
  assert "fd_digits" in text_of(outputs_of(notebook, "metrics"))


def test_the_setup_cell_clones_and_installs_outside_a_checkout(tmp_path, monkeypatch):
  """In a folder without hold_jax (as in Colab) the first cell clones REPOSITORY and installs requirements.txt
  (already satisfied here, so pip needs no network); the package then imports."""
  if subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True).returncode:
    pytest.skip("the repository is not a git checkout, so there is nothing to clone")
  monkeypatch.setenv("HOLD_JAX_REPOSITORY", ROOT)
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  setup = [cell for cell in notebook.cells if "setup" in cell.metadata.get("tags", [])]
  check = nbformat.v4.new_code_cell("import hold_jax.workdir.run_record, os; print('cwd', os.getcwd())")
  notebook.cells = setup + [check]
  nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}}).execute()
  checkout = tmp_path / "hold_jax_checkout"
  assert (checkout / "hold_jax" / "__init__.py").exists()
  assert f"cwd {checkout}" in text_of(notebook.cells[1].outputs)


@pytest.mark.parametrize("path", [NOTEBOOK, TRAINING_NOTEBOOK])
def test_the_notebooks_are_committed_without_outputs(path):
  notebook = nbformat.read(path, as_version=4)
  nbformat.validate(notebook)
  assert all(not cell.get("outputs") and not cell.get("execution_count")
             for cell in notebook.cells if cell.cell_type == "code")
  assert json.load(open(path))["metadata"]["kernelspec"]["name"] == "python3"


def test_the_notebooks_share_one_setup_cell():
  setups = [outputs_source(path, "setup") for path in (NOTEBOOK, TRAINING_NOTEBOOK)]
  assert setups[0] == setups[1] and "jax[cuda13]" in setups[0]


def outputs_source(path, tag):
  cell, = [cell for cell in nbformat.read(path, as_version=4).cells if tag in cell.metadata.get("tags", [])]
  return cell.source

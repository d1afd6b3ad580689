"""Pictures of samples and of quality tables (hold_jax/plots.py, hold_jax/workdir/workdir_view.py): each kind of data
gets its own figure, with the data drawn faintly underneath; image grids have gaps; titles fit their figures;
PNGs carry their metadata; a sweep's table gets its plot beside it (hold_jax/evaluation/image_quality.py
write_table)."""
from __future__ import annotations

import json
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from hold_jax import plots
from hold_jax.configs import digits
from hold_jax.data import input_pipeline
from hold_jax.evaluation import image_features
from hold_jax.evaluation import image_quality
from hold_jax.workdir import workdir_view

RNG = np.random.default_rng(0)
DATA_4D = RNG.standard_normal((200, 4))
SAMPLES_4D = RNG.standard_normal((50, 4))


def panels(figure):
  """The axes that show something (a corner plot's legend sits in an axis-less extra axes)."""
  return [axis for axis in figure.axes if axis.axison]


def scatters(axis):
  """(number of points, alpha) of each scatter drawn on `axis`, in drawing order."""
  return [(len(collection.get_offsets()), collection.get_alpha()) for collection in axis.collections]


def title_fits(figure) -> bool:
  """Whether the figure's title (plots.fit_title sets it as the suptitle) lies within the figure, drawn."""
  figure.canvas.draw()
  title, = [text for text in figure.texts if text.get_text() == figure.get_suptitle()]
  box = title.get_window_extent()
  return 0 <= box.x0 and box.x1 <= figure.bbox.width


def test_corner_plot_has_histograms_on_the_diagonal_and_samples_over_faint_data_below_it():
  figure = plots.samples_figure(SAMPLES_4D, DATA_4D, title="four coordinates")
  shown = panels(figure)
  assert len(shown) == 4 * 5 // 2  # the upper triangle is removed
  diagonal = [axis for axis in shown if not axis.collections]
  below = [axis for axis in shown if axis.collections]
  assert len(diagonal) == 4 and all(len(axis.patches) == 2 for axis in diagonal)  # data, then samples
  assert len(below) == 6
  for axis in below:
    (data_count, data_alpha), (sample_count, sample_alpha) = scatters(axis)
    assert (data_count, sample_count) == (200, 50) and data_alpha <= 0.2 < sample_alpha
  assert len(figure.legends) + sum(bool(axis.get_legend()) for axis in figure.axes) == 1
  assert "of 4" not in figure.get_suptitle()  # nothing left out


def test_corner_plot_shows_the_first_coordinates_and_says_so():
  figure = plots.samples_figure(RNG.standard_normal((30, 9)), title="nine")
  assert len(panels(figure)) == plots.CORNER_MAX_DIMS * (plots.CORNER_MAX_DIMS + 1) // 2
  assert f"first {plots.CORNER_MAX_DIMS} of 9 coordinates" in figure.get_suptitle()
  assert all(len(scatters(axis)) == 1 for axis in panels(figure) if axis.collections)  # no data: samples alone
  assert len(panels(plots.samples_figure(RNG.standard_normal((30, 9)), max_dims=3))) == 6


def test_2d_samples_are_a_scatter_over_faint_data_and_diverged_samples_are_left_out():
  samples = RNG.standard_normal((50, 2))
  samples[7] = np.nan
  figure = plots.samples_figure(samples, RNG.standard_normal((300, 2)), title="points")
  axis, = figure.axes
  (data_count, data_alpha), (sample_count, sample_alpha) = scatters(axis)
  assert (data_count, sample_count) == (300, 49) and data_alpha <= 0.2 < sample_alpha
  assert "1 of 50 samples not finite" in figure.get_suptitle()
  alone, = plots.samples_figure(samples).axes
  assert len(scatters(alone)) == 1 and alone.get_legend() is None


def test_1d_samples_are_a_histogram_over_the_data():
  figure = plots.samples_figure(RNG.standard_normal((80, 1)), RNG.standard_normal((400, 1)) + 1)
  axis, = figure.axes
  data, samples = axis.patches  # one filled outline per histogram, on common bins
  assert data.get_alpha() < 1 and samples.get_fill() is False and axis.get_xlabel() == "x"


def test_images_are_one_grid_with_gaps():
  images = RNG.uniform(-1, 1, (5, 4, 4, 1))
  figure = plots.samples_figure(images, title="five images")
  axis, = figure.axes
  picture, = axis.get_images()
  np.testing.assert_array_equal(picture.get_array(), plots.tile(plots.image_data.to_pixels(images))[..., 0])
  assert picture.get_array().shape == (2 * 4 + 1, 3 * 4 + 2) and not axis.axison


def test_tile_puts_background_gaps_between_images_at_native_resolution():
  images = np.stack([np.full((2, 3, 1), 10 * (index + 1), np.uint8) for index in range(5)])
  grid = plots.tile(images)  # 3 columns, 2 rows
  assert grid.dtype == np.uint8 and grid.shape == (2 * 2 + 1, 3 * 3 + 2, 1)
  background = plots.GAP_VALUE
  assert background not in images and (grid[2] == background).all()  # the gap between the rows
  assert (grid[:, 3] == background).all() and (grid[:, 7] == background).all()  # between the columns
  for index in range(5):
    row, column = divmod(index, 3)
    np.testing.assert_array_equal(grid[3 * row:3 * row + 2, 4 * column:4 * column + 3], images[index])
  assert (grid[3:, 8:] == background).all()  # the sixth cell is empty
  rgb = plots.tile(np.zeros((4, 2, 2, 3), np.uint8), columns=4, gap=2, gap_value=7)
  assert rgb.shape == (2, 4 * 2 + 3 * 2, 3) and (rgb[:, 2:4] == 7).all()
  assert plots.tile(images, gap=0).shape == (4, 9, 1)


@pytest.mark.parametrize("samples", [RNG.standard_normal((40, 2)), RNG.standard_normal((40, 3)),
                                     RNG.standard_normal((40, 1)), RNG.uniform(-1, 1, (3, 4, 4, 1))],
                         ids=["2d", "3d", "1d", "images"])
def test_long_titles_fit_the_figure(samples):
  title = ("npy:/a/very/long/path/to/a/point/cloud/that/somebody/saved/somewhere_deep.npy: 40 samples, "
           "ode_adaptive_tsit5_rtol1e-05_atol1e-05_state, NFE 1234, step 100000 " * 2)
  figure = plots.samples_figure(samples, title=title)
  assert title_fits(figure)
  assert figure.get_suptitle().replace("\n", "").replace(" ", "") == title.replace(" ", "")  # wrapped, all kept


def test_fit_title_shrinks_a_line_of_wide_glyphs_that_wrapping_alone_cannot_fit():
  figure = plots.new_figure((2.0, 2.0))
  text = plots.fit_title(figure, "W" * 200)
  assert title_fits(figure) and text.get_fontsize() < 11


def test_save_samples_writes_a_png_with_its_metadata(tmp_path):
  path = str(tmp_path / "points.png")
  plots.save_samples(path, RNG.standard_normal((30, 2)), RNG.standard_normal((100, 2)), "points",
                     metadata={"settings": '{"seed": 3}'})
  with Image.open(path) as image:
    assert image.format == "PNG" and image.text["settings"] == '{"seed": 3}'
  path = str(tmp_path / "images.png")
  plots.save_samples(path, RNG.uniform(-1, 1, (4, 8, 8, 1)), metadata={"settings": "{}"})
  with Image.open(path) as image:  # 2 x 2 digits of 8 pixels and a 1-pixel gap, each pixel repeated 30 times
    assert image.size == (17 * 30, 17 * 30) and image.text["settings"] == "{}"
  assert sorted(os.listdir(tmp_path)) == ["images.png", "points.png"]  # no temporary file left


def test_reference_points_are_fixed_fresh_draws_or_a_subset_of_the_cloud(tmp_path):
  generated = ml_collections.ConfigDict({"dataset": "multimodal_swiss_roll"})
  points = input_pipeline.reference_points(generated, 500)
  assert points.shape == (500, 2) and points.dtype == np.float32
  np.testing.assert_array_equal(points, input_pipeline.reference_points(generated, 500))  # same every call
  trained_on = input_pipeline.PointStream("multimodal_swiss_roll", 500).local_batch(0)
  assert not np.isin(points, trained_on).any()  # not training's seed stream
  cloud = RNG.standard_normal((300, 3)).astype(np.float32)
  np.save(tmp_path / "cloud.npy", cloud)
  user = ml_collections.ConfigDict({"dataset": f"npy:{tmp_path / 'cloud.npy'}"})
  subset = input_pipeline.reference_points(user, 100)
  assert subset.shape == (100, 3) and len(np.unique(subset, axis=0)) == 100
  assert all((cloud == row).all(axis=1).any() for row in subset)
  np.testing.assert_array_equal(input_pipeline.reference_points(user, 1000), cloud)  # fewer than asked: all
  assert input_pipeline.reference_points(digits.get_config("local").data) is None


def quality_table(**fields):
  rows = [{"method": "lie_trotter", "grid": "quadratic", "num_steps": n, "nfe": n, "fd_digits_mean": 10.0 / n,
           "kid_digits_mean": 0.1 / n, "report": f"quality_{n}.json"} for n in (2, 4, 8)]
  rows += [{"method": "strang", "grid": "edm", "num_steps": 2, "nfe": 4, "fd_digits_mean": 2.0,
            "kid_digits_mean": -0.01, "report": "quality_strang.json"}]
  return {"checkpoint_step": 4, "num_samples": 16, "num_repeats": 1, "rows": rows,
          "feature_network": {"name": "digits-classifier-v1"}, "reference": "digits-reference", **fields}


BASELINES = {"heldout_digits": {"fd_digits": 0.3, "kid_digits": 0.001, "nfe": 0},
             "uniform_noise": {"fd_digits": 800.0, "kid_digits": 3.0, "nfe": 0}}


def test_quality_plot_marks_the_baselines_and_draws_a_panel_per_metric():
  figure = workdir_view.plot_quality_vs_nfe(quality_table(baselines=BASELINES), ["fd_digits_mean", "kid_digits_mean"],
                                            pyplot=False)
  fd, kid = figure.axes
  lines = {line.get_label(): line for line in fd.get_lines()}
  assert list(lines["lie_trotter (quadratic)"].get_xdata()) == [2, 4, 8]
  assert list(lines["heldout_digits (baseline)"].get_ydata()) == [0.3, 0.3]
  assert list(lines["uniform_noise (baseline)"].get_ydata()) == [800.0, 800.0]
  assert fd.get_yscale() == "log" and kid.get_yscale() == "linear"  # a negative KID cannot go on log axes
  assert [line.get_label() for line in workdir_view.plot_quality_vs_nfe(quality_table(), pyplot=False).axes[0]
          .get_lines()] == ["lie_trotter (quadratic)", "strang (edm)"]  # no baselines in the table: none drawn


def test_quality_plot_title_fits_whatever_the_reference():
  table = quality_table(reference="/a/long/path/" * 12 + "reference_statistics.npz", num_repeats=3)
  figure = workdir_view.plot_quality_vs_nfe(table, pyplot=False)
  assert title_fits(figure) and "3 repeats" in figure.get_suptitle()


def test_a_sweep_table_gets_its_plot_beside_it_and_the_console_names_both(tmp_path, capsys):
  (tmp_path / "eval").mkdir()
  config = digits.get_config("local")
  config.eval.sampler_sweep = ("lie_trotter:quadratic:2", "strang:edm:4")
  network = image_features.Network("digits-classifier-v1", "ab" * 32, "tf1", None, "_digits")
  loaded = image_quality.Loaded((8, 8, 1), network, None, 4, {"key": "digits-reference"}, BASELINES)
  rows = quality_table()["rows"]
  path = image_quality.write_table(config, str(tmp_path), loaded, rows, 1.0)
  picture = path[:-len(".json")] + ".png"
  assert sorted(os.listdir(tmp_path / "eval")) == sorted([os.path.basename(path), os.path.basename(picture)])
  with open(path) as file:
    table = json.load(file)
  assert table["baselines"]["heldout_digits"]["fd_digits"] == 0.3
  with Image.open(picture) as image:
    assert json.loads(image.text["settings"]) == table["hashed_settings"]
  out = capsys.readouterr().out
  assert path in out and picture in out

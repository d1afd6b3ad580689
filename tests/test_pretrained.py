"""A pretrained model sampled from the package gives the figures recorded for it (hold_jax/pretrained,
benchmarks/pretrained_figures.py)."""
from __future__ import annotations

import pytest

import hold_jax
from hold_jax import pretrained


@pytest.mark.slow
def test_the_pretrained_digits_give_their_recorded_fd(tmp_path, monkeypatch):
  monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))
  recorded = pretrained.figures("digits")
  settings = recorded["settings"]
  model = hold_jax.load("digits")
  assert model.config.sampling.to_dict() == settings["sampling"]  # the sampler the figure was measured with
  report, = model.evaluate(metrics=tuple(settings["metrics"]), num_samples=settings["num_samples"],
                           round_size=settings["round_size"], num_repeats=settings["num_repeats"],
                           stats_cache_dir=str(tmp_path / "stats"))
  fd = report["summary"]["fd_digits_mean"]
  # The same samples on the same code: equal up to the rounding of another CPU. Far below the real-data baseline.
  assert fd == pytest.approx(recorded["summary"]["fd_digits_mean"], rel=0.05)
  assert fd < report["baselines"]["heldout_digits"]["fd_digits"] / 2

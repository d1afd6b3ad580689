"""The optimizer's learning-rate schedules and settings checks."""
import dataclasses
import math

import numpy as np
import pytest
from ml_collections import config_dict

from hold_jax.training import optimization


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_learning_rate_schedule_against_its_formula(schedule):
  optim = config_dict.ConfigDict(dict(learning_rate=2e-4, warmup_steps=100, schedule=schedule))
  rate = optimization.learning_rate_schedule(optim, num_steps=1100)
  steps = np.array([0, 50, 100, 600, 1100])
  expected = {"constant": [0, 1e-4, 2e-4, 2e-4, 2e-4],
              # cosine from the end of warm-up to 0 at num_steps: half way (step 600) is half the peak
              "cosine": [0, 1e-4, 2e-4, 1e-4, 0]}[schedule]
  np.testing.assert_allclose([float(rate(s)) for s in steps], expected, atol=1e-10)


def test_cosine_schedule_follows_the_half_cosine_after_warm_up():
  optim = config_dict.ConfigDict(dict(learning_rate=1.0, warmup_steps=10, schedule="cosine"))
  rate = optimization.learning_rate_schedule(optim, num_steps=110)
  for step in (10, 35, 60, 85, 110):
    expected = 0.5 * (1 + math.cos(math.pi * (step - 10) / 100))
    assert float(rate(step)) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("field,value", [("learning_rate", float("nan")), ("beta2", 1.0), ("grad_clip", float("nan")),
                                         ("schedule", "linear"), ("warmup_steps", -1), ("schedule_horizon", 0),
                                         ("schedule_horizon", 2.5), ("schedule_horizon", True)])
def test_bad_optimizer_settings_name_the_field(field, value):
  optim = config_dict.ConfigDict(dict(learning_rate=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, grad_clip=1.0,
                                      warmup_steps=10, schedule="constant"))
  optim[field] = value
  with pytest.raises(ValueError, match=f"optim.{field}"):
    optimization.settings_from_config(optim)
  with pytest.raises(ValueError, match=f"optim.{field}"):  # a notebook's direct use is checked the same way
    optimization.learning_rate_schedule(optim, 100)


@pytest.mark.parametrize("field,value", [("decay", 1.0), ("decay", float("nan")), ("warmup", "yes")])
def test_bad_ema_settings_name_the_field(field, value):
  ema = dict(decay=0.999, warmup=True)  # a plain dict: a ConfigDict refuses a str for a bool itself
  ema[field] = value
  with pytest.raises(ValueError, match=f"ema.{field}"):
    optimization.ema_settings_from_config(ema)


def test_settings_are_checked_once_and_frozen():
  settings = optimization.settings_from_config(config_dict.ConfigDict(dict(learning_rate=1e-3, schedule="cosine")))
  assert optimization.settings_from_config(settings) is settings  # passed on as it is, not checked again
  assert (settings.learning_rate, settings.schedule, settings.warmup_steps) == (1e-3, "cosine", 5000)
  with pytest.raises(dataclasses.FrozenInstanceError):
    settings.learning_rate = 1.0


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_the_recorded_horizon_not_the_training_length_shapes_the_schedule(schedule):
  optim = config_dict.ConfigDict(dict(learning_rate=1.0, warmup_steps=10, schedule=schedule, schedule_horizon=110))
  unset = config_dict.ConfigDict(dict(learning_rate=1.0, warmup_steps=10, schedule=schedule))
  for num_steps in (50, 110, 300):  # whatever a command's training.num_steps, the run's horizon decides
    rate = optimization.learning_rate_schedule(optim, num_steps)
    reference = optimization.learning_rate_schedule(unset, num_steps=110)
    assert [float(rate(s)) for s in range(0, 130, 5)] == [float(reference(s)) for s in range(0, 130, 5)]
  assert optimization.schedule_horizon(unset, 70) == 70 and optimization.schedule_horizon(optim, 70) == 110


def test_the_cosine_stays_at_0_past_its_horizon():
  # Why a cosine run may not train past its horizon: optax holds the end value after decay_steps.
  optim = config_dict.ConfigDict(dict(learning_rate=1.0, warmup_steps=10, schedule="cosine", schedule_horizon=110))
  rate = optimization.learning_rate_schedule(optim, num_steps=110)
  assert float(rate(109)) > 0
  assert [float(rate(s)) for s in (110, 111, 200, 10_000)] == [0.0] * 4


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_a_training_length_other_than_the_horizon_is_said_or_refused(schedule):
  optim = config_dict.ConfigDict(dict(learning_rate=1e-3, warmup_steps=10, schedule=schedule, schedule_horizon=100))
  assert optimization.check_training_length(optim, 100, "W/config.json") is None
  assert optimization.check_training_length(optim, 100) is None
  fewer = optimization.check_training_length(optim, 60, "W/config.json")
  if schedule == "constant":
    assert fewer.startswith("training.num_steps = 60 differs from the 100 steps this run started with "
                            "(recorded in W/config.json): training stops at step 60")
    assert optimization.check_training_length(optim, 200, "W/config.json").startswith(
        "training.num_steps = 200 differs from the 100 steps this run started with (recorded in W/config.json): "
        "training extends to step 200, at the same constant learning rate 0.001")
    assert optimization.check_training_length(optim, 200) is None  # a fresh run: the horizon is irrelevant
    return
  assert fewer.startswith("training.num_steps = 60 stops the cosine schedule early: the learning rate keeps the "
                          "horizon of 100 steps (recorded in W/config.json) and is 0.000")
  with pytest.raises(ValueError, match=r"^training.num_steps = 200 is past the cosine schedule's horizon of 100 steps "
                     r"\(recorded in W/config.json\): the learning rate is 0 from step 100 on.* start a new run"):
    optimization.check_training_length(optim, 200, "W/config.json")
  with pytest.raises(ValueError, match=r"horizon of 100 steps \(optim.schedule_horizon\).* leave "
                     r"optim.schedule_horizon unset"):
    optimization.check_training_length(optim, 200)

"""The optimizer's learning-rate schedules and settings checks."""
import math

import numpy as np
import pytest
from ml_collections import config_dict

from hold_jax import optimization


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
                                         ("schedule", "linear"), ("warmup_steps", -1)])
def test_bad_optimizer_settings_name_the_field(field, value):
  optim = config_dict.ConfigDict(dict(learning_rate=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, grad_clip=1.0,
                                      warmup_steps=10, schedule="constant"))
  optim[field] = value
  with pytest.raises(ValueError, match=f"optim.{field}"):
    optimization.check_settings(optim, config_dict.ConfigDict(dict(decay=0.999)))

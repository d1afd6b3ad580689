"""The frozen settings records that config groups are checked into: their defaults are configs/default.py's,
every field of a group is read under its own name, a bad field is named when a record is made, and a record
passes through the library unchanged."""
import dataclasses

import pytest

from hold_jax import field_checks
from hold_jax.configs import default
from hold_jax.evaluation import eval_settings
from hold_jax.training import loop_settings
from hold_jax.training import optimization
from hold_jax.workdir import checkpoints

RECORDS = [(optimization.Settings, "optim"), (optimization.EMASettings, "ema"), (loop_settings.Settings, "training"),
           (checkpoints.Settings, "checkpoint"), (eval_settings.Settings, "eval")]


@pytest.mark.parametrize("kind,group", RECORDS)
def test_defaults_are_the_default_configs_and_every_field_is_read(kind, group):
  config = default.get_config()[group]
  names = {field.name for field in dataclasses.fields(kind)}
  assert set(config.keys()) <= names, f"fields of config.{group} that {kind.__qualname__} does not read"
  for field in dataclasses.fields(kind):
    if field.default is not dataclasses.MISSING and field.name in config:
      assert config[field.name] == field.default, f"{group}.{field.name}"
  made = dataclasses.asdict(field_checks.settings_of(kind, config))
  assert {name: made[name] for name in config.keys()} == config.to_dict()


@pytest.mark.parametrize("kind,group", RECORDS)
def test_a_record_passes_through_unchanged_and_stays_frozen(kind, group):
  made = field_checks.settings_of(kind, default.get_config()[group])
  assert field_checks.settings_of(kind, made) is made
  with pytest.raises(dataclasses.FrozenInstanceError):
    setattr(made, dataclasses.fields(kind)[0].name, None)


@pytest.mark.parametrize("group,field,value", [
    ("training", "num_steps", 0), ("training", "batch_size", 2.0), ("training", "log_every", float("nan")),
    ("training", "checkpoint_every", -1), ("training", "sample_every", -1), ("training", "num_grid_samples", 0),
    ("checkpoint", "keep", 0), ("checkpoint", "asynchronous", "no")])
def test_a_bad_loop_field_is_named(group, field, value):
  config = default.get_config()[group].to_dict()
  config[field] = value
  make = {"training": loop_settings.settings_from_config, "checkpoint": checkpoints.settings_from_config}[group]
  with pytest.raises(ValueError, match=rf"^{group}\.{field} = "):
    make(config)

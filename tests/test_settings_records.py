"""The frozen settings records that config groups are checked into: their defaults are configs/default.py's,
every field of a group is read under its own name, a bad field is named when a record is made, and a record
passes through the library unchanged."""
import dataclasses

import pytest

from hold_jax import field_checks
from hold_jax.configs import default
from hold_jax.configs import images
from hold_jax.data import input_pipeline
from hold_jax.evaluation import eval_settings
from hold_jax.training import loop_settings
from hold_jax.training import optimization
from hold_jax.workdir import checkpoints

RECORDS = [(optimization.Settings, "optim"), (optimization.EMASettings, "ema"), (loop_settings.Settings, "training"),
           (checkpoints.Settings, "checkpoint"), (eval_settings.Settings, "eval"), (input_pipeline.Settings, "data")]


def group_of(kind, group):
  """The config group whose defaults the record's are: configs/default.py's, or the image recipe's data."""
  return (images.get_config() if kind is input_pipeline.Settings else default.get_config())[group]


@pytest.mark.parametrize("kind,group", RECORDS)
def test_defaults_are_the_default_configs_and_every_field_is_read(kind, group):
  config = group_of(kind, group)
  names = {field.name for field in dataclasses.fields(kind)}
  assert set(config.keys()) <= names, f"fields of config.{group} that {kind.__qualname__} does not read"
  for field in dataclasses.fields(kind):
    if field.default not in (dataclasses.MISSING, None) and field.name in config:
      assert config[field.name] == field.default, f"{group}.{field.name}"
  made = dataclasses.asdict(field_checks.settings_of(kind, config))
  assert {name: made[name] for name in config.keys()} == config.to_dict()


@pytest.mark.parametrize("kind,group", RECORDS)
def test_a_record_passes_through_unchanged_and_stays_frozen(kind, group):
  made = field_checks.settings_of(kind, group_of(kind, group))
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


@pytest.mark.parametrize("field,value,expected", [
    ("dataset", "mnist", "data.dataset = 'mnist' is not allowed"), ("dataset", 3, "data.dataset = 3 is not allowed"),
    ("image_size", 0, "data.image_size = 0 must be"), ("num_channels", 1, "data.num_channels = 1, but 'cifar10'"),
    ("random_flip", "no", "data.random_flip = 'no' is not allowed"), ("split", "", "data.split = '' is not allowed")])
def test_a_bad_data_field_is_named(field, value, expected):
  data = images.get_config().data.to_dict()
  data[field] = value
  with pytest.raises(ValueError, match="^" + expected):
    input_pipeline.settings_from_config(data)


def test_point_data_take_only_a_dataset():
  settings = input_pipeline.settings_from_config({"dataset": "checkerboard"})
  assert input_pipeline.data_shape(settings) == (2,) and input_pipeline.reference_points(settings, 5).shape == (5, 2)
  with pytest.raises(ValueError, match="config.data has no dataset"):
    input_pipeline.settings_from_config({"radius": 2.0})

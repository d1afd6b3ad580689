"""benchmarks/parameter_walk.py's counting: which objects it walks, and its modules and climbs."""
import importlib.util
import os

from hold_jax.configs import toy2d
from hold_jax.process import sde as sde_lib
from hold_jax.sampling import samplers
from hold_jax.training import loop_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = importlib.util.spec_from_file_location("parameter_walk", os.path.join(ROOT, "benchmarks", "parameter_walk.py"))
parameter_walk = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(parameter_walk)


def test_modules_count_once_and_climbs_count_each_return_to_a_module_left():
  walk = parameter_walk.summarize(["a", "b", "b", "a", "c", "b", "b"])
  assert walk == {"modules": 3, "climbs": 2, "path": ["a", "b", "a", "c", "b"]}
  assert parameter_walk.summarize([]) == {"modules": 0, "climbs": 0, "path": []}


def test_the_walked_objects_are_known_by_their_shape():
  config = toy2d.get_config("local")
  kinds = {name: parameter_walk.kind_of(value) for name, value in [
      ("config", config), ("copy", config.copy_and_resolve_references()), ("training", config.training),
      ("sampling", config.sampling), ("model", config.model), ("number", 3),
      ("training record", loop_settings.settings_from_config(config.training)),
      ("sampling record", samplers.settings_from_config(sde_lib.from_config(config.sde), config.sampling))]}
  assert kinds == {"config": "config", "copy": "config", "training": "training", "sampling": "sampling",
                   "model": None, "number": None, "training record": "training", "sampling record": "sampling"}

"""What the benchmark scripts share: loading a config by name and writing a results JSON."""
import importlib
import json
import os
import platform
import time

import jax


def load_config(name):
  """configs/<module>.py's get_config(variant) for a name 'module' or 'module:variant'."""
  module, _, variant = name.partition(":")
  return importlib.import_module(f"hold_jax.configs.{module}").get_config(variant)


def write_results(path, rows, **extra):
  """Writes {date, machine, jax, device, platform, devices, **extra, rows} to path (folders made) and says so."""
  device = jax.devices()[0]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(dict(date=time.strftime("%Y-%m-%d"), machine=platform.platform(), jax=jax.__version__,
                   device=device.device_kind, platform=device.platform, devices=jax.device_count(), **extra,
                   rows=rows), f, indent=2)
  print(f"wrote {path}")

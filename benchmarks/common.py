"""What the benchmark scripts share: loading a config by name and writing a results JSON."""
import importlib
import json
import os
import platform
import time

import jax

from hold_jax.process import sde


def load_config(name):
  """configs/<module>.py's get_config(variant) for a name 'module' or 'module:variant'."""
  module, _, variant = name.partition(":")
  return importlib.import_module(f"hold_jax.configs.{module}").get_config(variant)


STOCK_PROCESSES = sde.STOCK_PROCESSES  # the processes the benchmarks compare


def with_process(config, process):
  """A copy of config whose sde is STOCK_PROCESSES[process] (critical damping); for a denoiser workdir, whose
  network serves every process (docs/denoiser.md). None keeps the config's process."""
  if process is None:
    return config
  if config.loss.parametrization != "denoiser":
    raise SystemExit(f"--processes {process}: the workdir's network is '{config.loss.parametrization}', a network of "
                     "its own process; only a denoiser (loss.parametrization = 'denoiser') samples with another.")
  config = config.copy_and_resolve_references()
  for field, value in sde.stock_process_fields(process).items():
    config.sde[field.split(".")[1]] = value
  return config


def write_results(path, rows, **extra):
  """Writes {date, machine, jax, device, platform, devices, **extra, rows} to path (folders made) and says so."""
  device = jax.devices()[0]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(dict(date=time.strftime("%Y-%m-%d"), machine=platform.platform(), jax=jax.__version__,
                   device=device.device_kind, platform=device.platform, devices=jax.device_count(), **extra,
                   rows=rows), f, indent=2)
  print(f"wrote {path}")

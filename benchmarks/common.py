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


# The processes the benchmarks compare, each as the workdirs of RESULTS.md were trained: VP on the linear schedule
# of score_sde, CLD at the beta its order needs (docs/process.md), HOLD as configs/default.py.
STOCK_PROCESSES = {
    "vp": dict(order=1, beta_schedule="linear", beta_0=0.1, beta_1=20.0, eps=1e-5),
    "cld": dict(order=2, beta_schedule="constant", beta_0=9.2, beta_1=9.2, eps=1e-3),
    "hold": dict(order=3, beta_schedule="constant", beta_0=6.5, beta_1=6.5, eps=1e-3),
}


def with_process(config, process):
  """A copy of config whose sde is STOCK_PROCESSES[process] (critical damping); for a denoiser workdir, whose
  network serves every process (docs/denoiser.md). None keeps the config's process."""
  if process is None:
    return config
  if config.loss.parametrization != "denoiser":
    raise SystemExit(f"--processes {process}: the workdir's network is '{config.loss.parametrization}', a network of "
                     "its own process; only a denoiser (loss.parametrization = 'denoiser') samples with another.")
  config = config.copy_and_resolve_references()
  config.sde.couplings, config.sde.friction = None, None
  for field, value in STOCK_PROCESSES[process].items():
    config.sde[field] = value
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

"""eval.sampler_sweep: "method:grid:num_steps" entries, each one evaluation of sample quality with those three
sampling fields replaced (hold_jax/evaluation/image_quality.py tabulates them against NFE). Every entry is parsed and
its sampler checked against config.sde before anything is loaded or generated, so a typo costs seconds.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

from hold_jax.process import sde as sde_lib
from hold_jax.sampling import samplers


@dataclasses.dataclass(frozen=True)
class SweepEntry:
  """One "method:grid:num_steps" entry of eval.sampler_sweep (ode_adaptive ignores the grid and num_steps)."""

  method: str
  grid: str
  num_steps: int


SWEEP_FORMAT = (f"'method:grid:num_steps' with a method from {samplers.METHODS}, a grid from {samplers.GRIDS} "
                "and num_steps an integer >= 1")


def _sweep_entry_problem(entry: Any) -> str | None:
  """What is wrong with one entry of eval.sampler_sweep, or None."""
  if not isinstance(entry, str):
    return f"of type {type(entry).__name__}, not a string"
  parts = entry.split(":")
  if len(parts) != 3:
    return f"{len(parts)} part(s) separated by ':', not 3"
  method, grid, num_steps = parts
  if method not in samplers.METHODS:
    return f"unknown method {method!r}"
  if grid not in samplers.GRIDS:
    return f"unknown grid {grid!r}"
  if not (re.fullmatch(r"[0-9]+", num_steps) and int(num_steps) >= 1):
    return f"num_steps {num_steps!r} is not an integer >= 1"
  return None


def parse_sampler_sweep(entries: Any) -> tuple[SweepEntry, ...]:
  """eval.sampler_sweep as SweepEntry's; a ValueError naming the first bad entry (its index, its text, what is
  wrong and what is allowed), or a repeated one (it would only evaluate the same sampler twice)."""
  if not isinstance(entries, (tuple, list)):
    raise ValueError(f"eval.sampler_sweep = {entries!r} is not allowed: it must be a tuple of strings "
                     f"{SWEEP_FORMAT}, e.g. --config.eval.sampler_sweep=\"('lie_trotter:quadratic:50', "
                     "'strang:edm:20')\".")
  parsed = []
  for index, entry in enumerate(entries):
    problem = _sweep_entry_problem(entry)
    if problem is not None:
      raise ValueError(f"eval.sampler_sweep[{index}] = {entry!r} is not allowed ({problem}): it must be "
                       f"{SWEEP_FORMAT}, e.g. 'strang:edm:20'.")
    method, grid, num_steps = entry.split(":")
    parsed.append(SweepEntry(method, grid, int(num_steps)))
    if parsed[-1] in parsed[:-1]:
      raise ValueError(f"eval.sampler_sweep[{index}] = {entry!r} is not allowed: it repeats entry "
                       f"{parsed.index(parsed[-1])}; list each sampler once.")
  return tuple(parsed)


def entry_config(config, entry: SweepEntry):
  """A copy of config whose sampling.method, grid and num_steps are the entry's."""
  result = config.copy_and_resolve_references()
  result.sampling.method, result.sampling.grid, result.sampling.num_steps = entry.method, entry.grid, entry.num_steps
  return result


def sweep_configs(config) -> list[tuple[SweepEntry, Any]]:
  """(entry, its config) for every entry of eval.sampler_sweep, each sampler checked against config.sde now,
  before anything is loaded or generated; empty when the sweep is."""
  sde = sde_lib.from_config(config.sde)
  result = []
  for entry in parse_sampler_sweep(config.eval.get("sampler_sweep", ())):
    result.append((entry, entry_config(config, entry)))
    samplers.settings_from_config(sde, result[-1][1].sampling)
  return result

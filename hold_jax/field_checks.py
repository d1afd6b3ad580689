"""Tests of single config values that name the field, the value and what it must be, and `settings_of`, which
makes a config group into the frozen settings record that checks them (each part's `Settings`).

Every test is written in the positive form (`ok = low <= x < high`), because NaN fails every comparison: a
negative test (`if x <= 0: raise`) lets NaN through. A string or None where a number belongs fails the test
instead of raising a TypeError that names no field.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any


def is_number(value: Any) -> bool:
  """A real number (Python or NumPy), not a bool: True would pass for 1 and hide a wrong field."""
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_finite(value: Any) -> bool:
  """A real number that is neither NaN nor +-inf."""
  return is_number(value) and math.isfinite(value)


def is_int(value: Any) -> bool:
  """An integer (Python or NumPy), not a bool and not an integral float such as 3.0."""
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def require(ok: bool, field: str, value: Any, allowed: str) -> None:
  """Raises ValueError `field = value is not allowed: it must be allowed.` unless ok (sde.py's wording)."""
  if not ok:
    raise ValueError(f"{field} = {value!r} is not allowed: it must be {allowed}.")


def require_int(field: str, value: Any, minimum: int) -> None:
  """value is an integer >= minimum."""
  require(is_int(value) and value >= minimum, field, value, f"an integer >= {minimum}")


def require_positive(field: str, value: Any) -> None:
  """value is a finite number > 0 (NaN and inf fail)."""
  require(is_finite(value) and value > 0, field, value, "a finite number > 0")


def require_unit_interval(field: str, value: Any) -> None:
  """value is a finite number in [0, 1): a decay, a dropout rate or an Adam beta (1 never forgets)."""
  require(is_finite(value) and 0 <= value < 1, field, value, "a finite number in [0, 1)")


SEED_LIMIT = 2**63  # jax.random.PRNGKey takes a C long; numpy's SeedSequence takes integers >= 0


def require_seed(field: str, value: Any) -> None:
  """value is a seed that both numpy (np.random.default_rng([seed, ...]): >= 0) and jax (PRNGKey: a C long)
  take: an integer in [0, 2**63). Either library's own error names no field."""
  require(is_int(value) and 0 <= value < SEED_LIMIT, field, value, "an integer in [0, 2**63) (numpy's and jax's "
          "random generators take no negative or larger seed)")


def settings_of(kind: type, group: Any) -> Any:
  """`group` itself if it is already a `kind` (a frozen, checked settings dataclass), else a `kind` made from
  the fields the config group has (the others keep their defaults), checked as it is made. Library functions
  take either, so a notebook may pass a ConfigDict while a job checks its config once and passes the result."""
  if isinstance(group, kind):
    return group
  return kind(**{field.name: group[field.name] for field in dataclasses.fields(kind) if field.name in group})

"""The workdir as the record of a run: workdir/config.json says what its checkpoints were trained with.

The record is written when a run starts with no checkpoint yet, and never rewritten once one exists. Its
fields are of two kinds:
- trained fields: the process, model, loss, data, optimizer, EMA, seed, batch size... anything that changes
  what the checkpoints are. Resuming with a different value is an error naming the field, the trained value
  and the given one; sampling and evaluation take them from the record, so no training override needs
  repeating there.
- run settings (RUN_SETTINGS): the training length, logging, checkpoint cadence, sampling, evaluation, where
  the prepared data lives and the multi-host timeouts. They may change on every command.
- the process (sde.*) of a denoiser (loss.parametrization = 'denoiser'): its network is a denoiser of the
  sufficient statistic, the same for every process (docs/denoiser.md), so sampling and evaluation take the
  recorded process unless the command line gives another (`--config.sde.order=3` samples an order-1 denoiser
  with HOLD). For training it stays a trained field.
Every checkpoint also keeps a copy of the record (in its checksum item), so a deleted config.json is read from
the newest checkpoint's copy instead of being replaced by whatever config is given next. Fields that the
record lacks (a field added to the code since the run started) take the given value, except
the learning-rate schedule's horizon (optim.schedule_horizon, `with_schedule_horizon`): a record without it
was written by a run whose schedule ended at its recorded training.num_steps, the length it started with.
"""
from __future__ import annotations

import json
from typing import Any

import jax
import ml_collections
from absl import logging
from etils import epath

RECORD_NAME = "config.json"
CHECKPOINTS_DIR = "checkpoints"
CONFIG_COPY = "checksums/metadata"  # in a step folder: orbax's JSON item 'checksums', which holds 'config'
HORIZON = "optim.schedule_horizon"

# Dotted prefixes of the fields that may differ from the record.
RUN_SETTINGS = ("training.num_steps", "training.log_every", "training.checkpoint_every", "training.sample_every",
                "training.num_grid_samples", "checkpoint", "sampling", "eval", "data.data_dir", "distributed")


class RecordMismatch(ValueError):
  """The given config would change a trained field of the workdir's run, or the record cannot say what they
  were (damaged)."""


def damaged(path: epath.Path, what: str) -> RecordMismatch:
  """The error for a record that cannot be used: `path what; it records ...: restore it ... or remove it`."""
  return RecordMismatch(f"{path} {what}; it records how this workdir's checkpoints were trained: restore it from "
                        "a copy, or remove it to accept the given config.")


def _describe_json(value: Any) -> str:
  """'a JSON list', 'null', 'the number 5', ...: what a record holds where an object was expected."""
  if value is None:
    return "null"
  if isinstance(value, bool):
    return f"the value {json.dumps(value)}"
  if isinstance(value, (int, float)):
    return f"the number {value!r}"
  if isinstance(value, str):
    return "a string"
  return "a JSON list" if isinstance(value, list) else f"a {type(value).__name__}"


def is_run_setting(field: str) -> bool:
  return any(field == prefix or field.startswith(prefix + ".") for prefix in RUN_SETTINGS)


def process_is_a_sampling_setting(fields: dict[str, Any]) -> bool:
  """Whether flattened config fields (a record or `config_fields`) describe a denoiser, whose process may change
  at sampling and evaluation."""
  return fields.get("loss.parametrization") == "denoiser"


def sampling_process(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{'sde': the process's fields} for a denoiser, whose samples depend on the process chosen at sampling, {} for
  the others (their process is fixed by the record): what the names of sample files and reports add."""
  if config.loss.get("parametrization") != "denoiser":
    return {}
  return {"sde": json.loads(config.sde.to_json_best_effort())}


def _plain(value: Any) -> Any:
  """JSON's view of a value (tuples become lists), so a recorded and a given value compare equal."""
  return json.loads(json.dumps(value))


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  """{'sde.beta_0': 6.5, ...} of a nested dict."""
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      flat.update(flatten(value, name + "."))
    else:
      flat[name] = value
  return flat


def config_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The flattened fields of a config as JSON values."""
  return flatten(json.loads(config.to_json_best_effort()))


def read(workdir: epath.Path) -> dict[str, Any] | None:
  """The flattened record of workdir, or None when it has none. A record written before the schedule's horizon
  was recorded gets it from its training.num_steps: the length that run started with, and so the horizon its
  schedule had (until a first resume with another length, which then changed the schedule)."""
  path = workdir / RECORD_NAME
  if not path.exists():
    copy = copy_in_checkpoints(workdir)
    if copy is None:
      return None
    tree, step = copy
    logging.info("%s is missing: the trained fields come from its copy in the checkpoint of step %d.", path, step)
    return _with_horizon(flatten(tree))
  try:
    tree = json.loads(path.read_text())
  except (ValueError, OSError) as error:
    raise damaged(path, f"cannot be read ({error})") from None
  if not isinstance(tree, dict):  # a list, null or a number: no field to compare or take
    raise damaged(path, f"holds {_describe_json(tree)}, not an object of config fields")
  return _with_horizon(flatten(tree))


def _with_horizon(recorded: dict[str, Any]) -> dict[str, Any]:
  if recorded.get(HORIZON) is None and "training.num_steps" in recorded:
    recorded[HORIZON] = recorded["training.num_steps"]
  return recorded


def copy_in_checkpoints(workdir: epath.Path) -> tuple[dict[str, Any], int] | None:
  """(config, step) of the newest checkpoint whose checksum record holds the run's config (each save stores
  one, hold_jax/workdir/checkpoints.py), or None: so a deleted config.json never lets a resumed run, or a sampling
  command, take another process for the one the checkpoints were trained with. Read as plain JSON: the file
  is orbax's JSON item, and readers must not need a manager."""
  directory = workdir / CHECKPOINTS_DIR
  if not directory.exists():
    return None
  for step in sorted((int(path.name) for path in directory.iterdir() if path.name.isdigit()), reverse=True):
    try:
      config = json.loads((directory / str(step) / CONFIG_COPY).read_text()).get("config")
    except (ValueError, OSError, AttributeError):
      continue
    if isinstance(config, dict):
      return config, step
  return None


def has_checkpoints(workdir: epath.Path) -> bool:
  """Whether workdir holds a checkpoint (a step directory), so that a run there resumes and its record holds."""
  directory = workdir / CHECKPOINTS_DIR
  return directory.exists() and any(name.name.isdigit() for name in directory.iterdir())


def with_schedule_horizon(config: ml_collections.ConfigDict, workdir: epath.Path) -> ml_collections.ConfigDict:
  """A copy of config whose optim.schedule_horizon is a number.

  The horizon is a trained field, so it must be a number before the record is written and when a resumed run
  is compared with it:
  - given (--config.optim.schedule_horizon=N): kept; on resume, check_resume then refuses it unless it is the
    recorded one (a different horizon changes the learning rate of steps already planned);
  - unset, resuming (checkpoints and a record): the record's (an older record's training.num_steps, `read`);
  - unset, otherwise: training.num_steps, the length the run starts with.
  """
  resolved = config.copy_and_resolve_references()
  recorded = read(workdir) if has_checkpoints(workdir) else None
  if recorded is not None:
    check_fields(workdir, recorded, config_fields(resolved))
  given = resolved.optim.get("schedule_horizon")
  if given is not None:
    horizon = given
  elif recorded is not None and recorded.get(HORIZON) is not None:
    horizon = recorded[HORIZON]
  else:
    horizon = resolved.training.num_steps
  with resolved.unlocked():
    resolved.optim.schedule_horizon = horizon
  return resolved


def write(workdir: epath.Path, config: ml_collections.ConfigDict) -> None:
  """Writes workdir/config.json (process 0 only), atomically."""
  if jax.process_index() != 0:
    return
  workdir.mkdir(parents=True, exist_ok=True)
  temporary = workdir / (RECORD_NAME + ".tmp")
  temporary.write_text(config.to_json_best_effort(indent=2))
  temporary.replace(workdir / RECORD_NAME)


def load_config(workdir) -> ml_collections.ConfigDict:
  """The whole config a workdir's run was trained with (its record; lists become tuples), e.g. for a notebook
  that samples or evaluates the workdir: its run settings may then be changed, its trained fields not."""
  workdir = epath.Path(workdir)
  if read(workdir) is None:
    raise ValueError(f"{workdir / RECORD_NAME} does not exist: {workdir} is not a hold_jax workdir, or training "
                     "never started there (a run writes config.json when it starts).")
  return ml_collections.ConfigDict(_tuples(json.loads((workdir / RECORD_NAME).read_text())))


def _tuples(value: Any) -> Any:
  if isinstance(value, dict):
    return {key: _tuples(item) for key, item in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(item) for item in value)
  return value


def trained_differences(recorded: dict[str, Any], given: dict[str, Any]) -> list[tuple[str, Any, Any]]:
  """(field, trained value, given value) of every trained field present in both that differs."""
  return [(field, recorded[field], value) for field, value in given.items()
          if field in recorded and not is_run_setting(field) and _plain(recorded[field]) != _plain(value)]


_KINDS = ((bool, "true or false"), (int, "an integer"), (float, "a number"), (str, "a string"),
          ((list, tuple), "a list"))


def _kind(value: Any) -> str:
  """How a message names the values a field takes, from its value in the given config."""
  return next((phrase for types, phrase in _KINDS if isinstance(value, types)), f"a {type(value).__name__}")


def check_fields(workdir: epath.Path, recorded: dict[str, Any], given: dict[str, Any]) -> None:
  """Raises RecordMismatch when a field of workdir's record cannot stand for the given config's field of that
  name: a single value where the config has a group of fields (`"sde": 5`), a group where it has a single
  value, or a value of another type (`"sde": {"order": "three"}`, refused as ConfigDict refuses it). Such a
  record was damaged, or written with another config file; unchecked, its fields are silently skipped (a
  group) or fail deep inside a job (a type).

  recorded: `read(workdir)`; given: `config_fields(config)`. Fields that only one of them has are fine (a
  field added to, or removed from, the code since the run started).
  """
  groups = {field.rsplit(".", k)[0] for field in given for k in range(1, field.count(".") + 1)}
  path = workdir / RECORD_NAME
  for field, value in recorded.items():
    if field in groups:
      raise damaged(path, f"records {field} = {value!r}, but {field} is a group of fields in the config "
                    f"({', '.join(sorted(name for name in given if name.startswith(field + '.'))[:3])}, ...)")
    parents = [field.rsplit(".", k)[0] for k in range(field.count("."), 0, -1)]
    leaf = next((parent for parent in parents if parent in given), None)
    if leaf is not None:
      raise damaged(path, f"records {leaf} as a group of fields ({field} = {value!r}), but {leaf} is a single "
                    f"value in the config ({given[leaf]!r})")
    if field not in given or value is None or given[field] is None:
      continue
    probe = ml_collections.ConfigDict({"value": _tuples(given[field])})
    try:
      if isinstance(value, bool) != isinstance(given[field], bool):  # ConfigDict takes True for an integer
        raise TypeError(field)
      probe.value = _tuples(value)
    except TypeError:
      raise damaged(path, f"records {field} = {value!r}, but {field} takes {_kind(given[field])} (the given config "
                    f"has {given[field]!r}): the record is damaged, or was written with another config "
                    "file") from None


def _describe(differences: list[tuple[str, Any, Any]], workdir: epath.Path, what: str) -> str:
  lines = [f"  {field}: trained with {trained!r}, given {given!r}" for field, trained, given in differences]
  return (f"{what} {workdir} with a config that changes how its checkpoints were trained "
          f"({workdir / RECORD_NAME}):\n" + "\n".join(lines) +
          "\nDrop these overrides (or use the config the run was trained with), or choose a new --workdir for "
          "a new run. Only the training length, logging, checkpoint cadence, sampling and eval settings may "
          "change (and, when sampling a denoiser, loss.parametrization = 'denoiser', the process sde.*).")


def check_resume(workdir: epath.Path, config: ml_collections.ConfigDict) -> None:
  """Raises RecordMismatch when `config` changes a trained field of workdir's record."""
  recorded = read(workdir)
  if recorded is None:
    return
  given = config_fields(config)
  check_fields(workdir, recorded, given)
  differences = trained_differences(recorded, given)
  if differences:
    raise RecordMismatch(_describe(differences, workdir, "Resuming"))


def set_field(config: ml_collections.ConfigDict, field: str, value: Any) -> None:
  """config.<field> = value for a dotted field ('sampling.num_steps'), lists as tuples (as config files write
  them); a ValueError naming a group or field the config does not have, with the ones it has."""
  *parents, name = field.split(".")
  node = config
  for depth, part in enumerate(parents):
    if part not in node:
      raise ValueError(f"{'.'.join(parents[:depth + 1])} is not a config group; the groups are {sorted(config)}.")
    node = node[part]
  if name not in node:
    raise ValueError(f"{field} is not a config field; {'.'.join(parents) or 'the config'} has "
                     f"{', '.join(sorted(node))}.")
  node[name] = _tuples(value)


def for_inference(workdir: epath.Path, config: ml_collections.ConfigDict,
                  overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  """The config that samples or evaluates workdir's checkpoints: its trained fields from the record, the run
  settings from `config` (the command's config file and overrides).

  overrides: the command line's --config.* values (flattened names). An override of a trained field that
  differs from the record is a RecordMismatch; one that agrees is accepted.
  """
  recorded = read(workdir)
  if recorded is None:
    return config
  given = config_fields(config)
  check_fields(workdir, recorded, given)
  chosen_process = process_is_a_sampling_setting(recorded)
  is_setting = lambda field: is_run_setting(field) or (chosen_process and field.startswith("sde."))
  conflicts = [(field, recorded[field], value) for field, value in overrides.items()
               if field in recorded and not is_setting(field) and _plain(recorded[field]) != _plain(value)]
  if conflicts:
    raise RecordMismatch(_describe(conflicts, workdir, "Sampling or evaluating"))
  merged = ml_collections.ConfigDict(config.to_dict())
  taken = []
  for field, trained in recorded.items():
    overridden_process = chosen_process and field.startswith("sde.") and field in overrides
    if (is_run_setting(field) or overridden_process or field not in given
        or _plain(given[field]) == _plain(trained)):
      continue
    set_field(merged, field, trained)
    taken.append(field)
  if taken:
    logging.info("Trained fields taken from %s: %s", workdir / RECORD_NAME, ", ".join(taken))
  return merged

"""Command-line errors of hold_jax.main as one line that names the config field, the value given and the fix.

ml_collections applies `--config.a.b=value` overrides while absl parses flags, so a mistyped field name dies
there with a long traceback that ends in `AttributeError: '\\'num_stepz\\'\\nDid you mean ...'`, and a value of
the wrong type gets absl's 'FATAL Flags parsing error' without the type the field takes. `parse_flags`
(for `app.run(main, flags_parser=command_errors.parse_flags)`) turns both into one line on stderr and exit status 2, as
it does for a --config file that gives no config (a variant it does not know, a file that is not Python: a
traceback from ml_collections' loader otherwise) and an empty --workdir; `config_field_error` does the same
for a field a user's own config file lacks, met later by any job.
"""
from __future__ import annotations

import contextlib
import difflib
import logging as logging_lib
import os
import re
import sys
import textwrap
from typing import Any

from absl import flags
from ml_collections import config_dict
from ml_collections.config_flags import config_flags  # the module: is_config_flag is not re-exported
from ml_collections.config_flags import config_path

from hold_jax.cli import config_file

PROGRAM = "hold_jax"
ERROR_PREFIX = f"{PROGRAM}: error: "  # every one-line error of the command line and of main starts so
# The stock configs ship inside the package, so `--config configs/toy2d.py` works from any directory.
PACKAGED_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
USAGE_ERROR_STATUS = 2  # the shell's convention for a bad command line; absl's own flag errors exit with 1
_LOOKUP_METHODS = ("__getitem__", "__getattr__", "__setitem__", "__setattr__")


def field_names(config: Any, prefix: str = "") -> list[str]:
  """Dotted names of every field of a ConfigDict, groups included: 'training', 'training.num_steps', ..."""
  names = []
  for key, value in config.items():
    names.append(f"{prefix}{key}")
    if isinstance(value, config_dict.ConfigDict):
      names.extend(field_names(value, f"{prefix}{key}."))
  return names


def _deepest_group(config: Any, path: str) -> tuple[str, Any]:
  """(dotted name, ConfigDict) of the longest prefix of `path` that names a group of fields ('' for config)."""
  name, node = "", config
  for key in path.split(".")[:-1]:
    if not (isinstance(node, config_dict.ConfigDict) and key in node
            and isinstance(node[key], config_dict.ConfigDict)):
      break
    name, node = f"{name}.{key}" if name else key, node[key]
  return name, node


def unknown_field_message(config: Any, path: str, config_name: str = "config") -> str:
  """`config has no field PATH; the nearest valid name is NAME.` (difflib over the dotted field names), or
  the fields of the group it was looked up in when no name is near."""
  group, node = _deepest_group(config, path)
  candidates = [name for name in field_names(config) if not f"{group}.".startswith(f"{name}.")]  # not its groups
  nearest = difflib.get_close_matches(path, candidates, n=1, cutoff=0.6)
  if nearest:
    return f"{config_name} has no field {path}; the nearest valid name is {nearest[0]}."
  where = f"the fields of {group} are" if group else "its top-level fields are"
  return f"{config_name} has no field {path}; {where} {', '.join(sorted(node.keys()))}."


def _failed_lookup(error: BaseException) -> tuple[config_dict.ConfigDict, str] | None:
  """(ConfigDict, missing key) of the ConfigDict method that raised `error`, read off its innermost traceback
  frame; None when the error was not raised by a ConfigDict looking up (or adding to a locked one) a key."""
  frames = []
  traceback = error.__traceback__
  while traceback is not None:
    frames.append(traceback.tb_frame)
    traceback = traceback.tb_next
  for frame in reversed(frames):
    owner = frame.f_locals.get("self")
    if frame.f_code.co_name in _LOOKUP_METHODS and isinstance(owner, config_dict.ConfigDict):
      key = frame.f_locals.get("key", frame.f_locals.get("attribute"))
      return (owner, key) if isinstance(key, str) and key not in owner else None
  return None


def _path_of(config: Any, target: Any, name: str = "") -> str | None:
  """Dotted name of the ConfigDict `target` inside `config` (whose own name is `name`, '' at the top), found by
  identity; None when it is not inside."""
  if config is target:
    return name
  for key, value in config.items():
    if isinstance(value, config_dict.ConfigDict):
      found = _path_of(value, target, f"{name}.{key}" if name else key)
      if found is not None:
        return found
  return None


def config_field_error(error: Exception, config: Any) -> str | None:
  """The message for an AttributeError or KeyError that a ConfigDict raised looking up a field `config` lacks
  (e.g. `model.depth` in a user's own config file): the full dotted field and the nearest valid name. None
  when `error` is anything else, so the caller re-raises it: a bug must keep its traceback."""
  if not isinstance(error, (AttributeError, KeyError)):
    return None
  lookup = _failed_lookup(error)
  if lookup is None:
    return None
  owner, key = lookup
  fix = " Add it to the config file or fix its name (configs/default.py and the config it builds on list them all)."
  group = _path_of(config, owner)
  if group is None:  # a ConfigDict outside `config`: only the key is known
    return f"a ConfigDict has no field {key!r} (its fields are {', '.join(sorted(owner.keys()))}).{fix}"
  return unknown_field_message(config, f"{group}.{key}" if group else key) + fix


def overrides(argv: list[str], flag_name: str) -> list[tuple[str, str | None, str]]:
  """(dotted path, value or None, the argument as given) of every --FLAG.a.b=value, -FLAG.a.b value, --FLAG.a.b
  or --noFLAG.a.b in argv, in order (ml_collections' override syntax)."""
  pattern = re.compile(rf"^--?(no)?{re.escape(flag_name)}\.([^=]+)(=(.*))?$", re.DOTALL)
  found = []
  for index, arg in enumerate(argv[1:], 1):
    match = pattern.match(arg)
    if not match:
      continue
    value = match.group(4)
    given = arg
    if value is None and index + 1 < len(argv) and not argv[index + 1].startswith("-"):
      value, given = argv[index + 1], f"{arg} {argv[index + 1]}"
    found.append((match.group(2), value, given))
  return found


def _flag_argument(argv: list[str], flag_name: str) -> str | None:
  """The value given to --FLAG (as --FLAG=value, --FLAG value or with one dash), or None."""
  for index, arg in enumerate(argv[1:], 1):
    for dashes in ("--", "-"):
      if arg.startswith(f"{dashes}{flag_name}="):
        return arg[len(dashes) + len(flag_name) + 1:]
      if arg == f"{dashes}{flag_name}" and index + 1 < len(argv):
        return argv[index + 1]
  return None


def _type_phrase(field_type: Any) -> str:
  """How a message names the values of a field type: 'an integer', 'a number', ..."""
  phrases = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
             tuple: "a tuple, e.g. '(1, 2)'"}
  if isinstance(field_type, type) and issubclass(field_type, config_dict.ConfigDict):
    return "a group of fields, each set on its own (--config.GROUP.FIELD=value)"
  return phrases.get(field_type, f"a value of type {getattr(field_type, '__name__', field_type)}")


def _wrong_type_message(config: Any, path: str, value: str | None) -> str:
  """`PATH takes an integer (it is 40 in the config), not 'abc'.`"""
  try:
    field_type = config_path.get_type(path, config)
    current = config_path.get_value(path, config)
  except (AttributeError, KeyError, IndexError, TypeError, ValueError):
    return f"{path} does not take {value!r}."
  if isinstance(current, config_dict.ConfigDict):
    return f"{path} is {_type_phrase(field_type)}, not a single value like {value!r}."
  return f"{path} takes {_type_phrase(field_type)} (it is {current!r} in the config), not {value!r}."


def _load_config(flag: flags.Flag, argv: list[str]) -> Any:
  """The config of a config flag as the file gives it, before overrides, loaded again from argv (config
  files are pure get_config() functions), or None when it cannot be loaded."""
  argument = _flag_argument(argv, flag.name)
  try:
    return flag.parser.parse(argument) if argument is not None else flag.value
  except Exception:  # pylint: disable=broad-except  (then absl's own report stands)
    return None


def _config_flags(flag_values: flags.FlagValues) -> dict[str, flags.Flag]:
  """The config flags (DEFINE_config_file and friends) of flag_values, by name."""
  return {flag.name: flag for flag in (flag_values[name] for name in flag_values)
          if config_flags.is_config_flag(flag)}


def stock_config_path(path: str) -> str:
  """`path` itself when it is a file; else, for `configs/NAME.py` (the repository's layout), the packaged
  copy hold_jax/configs/NAME.py when there is one, so an installed package runs its stock configs from any
  directory. A file of that name in the working directory always wins."""
  folder, name = os.path.split(path)
  packaged = os.path.join(PACKAGED_CONFIGS, name)
  if os.path.isfile(path) or os.path.normpath(folder) != "configs" or not os.path.isfile(packaged):
    return path
  return packaged


def with_stock_configs(argv: list[str], flag_values: flags.FlagValues) -> list[str]:
  """argv with every config-file argument (`--config PATH[:VARIANT]` or `--config=PATH[:VARIANT]`) passed
  through stock_config_path."""
  argv = list(argv)
  names = [name for name, flag in _config_flags(flag_values).items()
           if isinstance(flag.parser, config_flags.ConfigFileFlagParser)]
  for index in range(1, len(argv)):
    for name in names:
      for flag in (f"--{name}", f"-{name}"):
        if argv[index].startswith(f"{flag}="):
          position, prefix = index, f"{flag}="
        elif argv[index] == flag and index + 1 < len(argv):
          position, prefix = index + 1, ""
        else:
          continue
        path, colon, variant = argv[position][len(prefix):].partition(":")
        argv[position] = prefix + stock_config_path(path) + colon + variant
  return argv


def missing_config_file(argv: list[str], flag_values: flags.FlagValues) -> str | None:
  """The message for a --config file that does not exist, which ml_collections reports only when the config is
  first read, as an OSError traceback from inside main; None when every config file given exists."""
  for name, flag in _config_flags(flag_values).items():
    argument = _flag_argument(argv, name)
    if argument is None or not isinstance(flag.parser, config_flags.ConfigFileFlagParser):
      continue
    path = argument.split(":", 1)[0]
    if not os.path.isfile(path):
      return (f"--{name}={argument}: there is no config file {path!r} (relative paths start at {os.getcwd()}); "
              f"give one such as configs/toy2d.py, optionally with its variant: configs/toy2d.py:local.")
  return None


def config_file_error(argv: list[str], flag_values: flags.FlagValues, given_argv: list[str] | None = None
                      ) -> str | None:
  """The message for a --config file that exists but gives no config (config_file.problem), which
  ml_collections reports as a traceback (from inside absl's parser, or later from main); None when every
  config file given gives one. argv holds the paths that are loaded (with_stock_configs); given_argv, the
  command line as typed, names the flag in the message."""
  for name, flag in _config_flags(flag_values).items():
    argument = _flag_argument(argv, name)
    if argument is None or not isinstance(flag.parser, config_flags.ConfigFileFlagParser):
      continue
    path, colon, variant = argument.partition(":")
    if not os.path.isfile(path):
      continue  # missing_config_file's case
    problem = config_file.problem(path, variant if colon else None)
    if problem is not None:
      shown = _flag_argument(given_argv, name) if given_argv else None
      shown_path = (shown or argument).partition(":")[0]
      problem = problem.replace(path, shown_path)
      return f"--{name}={shown or argument}: {problem}" + ("" if problem.endswith(".") else ".")
  return None


def _gives_configs(flag_values: flags.FlagValues) -> bool:
  """Whether every config-file flag that was given holds a ConfigDict (not None, a dict, or ml_collections'
  stand-in for a file it could not read)."""
  return all(isinstance(flag.value, config_dict.ConfigDict) for flag in _config_flags(flag_values).values()
             if isinstance(flag.parser, config_flags.ConfigFileFlagParser) and flag.present)


def _forget_loaded_configs(flag_values: flags.FlagValues) -> None:
  """Drops the modules ml_collections loaded config files into (sys.modules['<flag>_config']): it runs a file
  again in the namespace of the module of that name, so a second parse in one process (a notebook, a test)
  would keep the names of the file read first, e.g. its get_config for a file that has none."""
  for name in _config_flags(flag_values):
    sys.modules.pop(f"{name}_config", None)


class _LoaderWarnings(logging_lib.Filter):
  """Drops ml_collections' warning that get_config() returned None: config_file_error says it as the error, and
  absl, not yet parsed, would print it on stderr with a line about logging before flag parsing."""

  def filter(self, record: logging_lib.LogRecord) -> bool:
    return "get_config() returned None" not in str(record.msg)


@contextlib.contextmanager
def _without_loader_warnings():
  logger = logging_lib.getLogger("absl")
  loader_warnings = _LoaderWarnings()
  logger.addFilter(loader_warnings)
  try:
    yield
  finally:
    logger.removeFilter(loader_warnings)


def workdir_problem(workdir: str | None) -> str | None:
  """What is wrong with the --workdir value itself: an empty or blank one would put checkpoints, logs and
  samples in the current directory, unasked. None when it names a directory (whether it is usable is checked
  on the disk, checkpoints.check_workdir)."""
  if workdir is None or workdir.strip():
    return None
  return (f"--workdir is {'empty' if not workdir else f'blank ({workdir!r})'}: give a directory for the "
          "run's checkpoints, log and samples, e.g. --workdir runs/toy2d (use --workdir . for the current one).")


def override_error(error: Exception, argv: list[str], flag_values: flags.FlagValues) -> str | None:
  """The one-line message for `error`, raised while `flag_values` parsed argv, when it comes from a
  --config.a.b=value override: an unknown field (AttributeError or KeyError from ml_collections) or a value of
  the wrong type (absl's IllegalFlagValueError naming that flag). None for every other error."""
  for name, flag in _config_flags(flag_values).items():
    given = overrides(argv, name)
    if not given:
      continue
    config = _load_config(flag, argv)
    if not isinstance(config, config_dict.ConfigDict):
      continue
    for path, value, text in given:
      if isinstance(error, (AttributeError, KeyError)):
        try:
          config_path.get_value(path, config)
        except (AttributeError, KeyError, IndexError, TypeError, ValueError):
          return f"{text}: {unknown_field_message(config, path, name)}"
      elif isinstance(error, flags.Error) and str(error).startswith(f"flag --{name}.{path}="):
        return f"{text}: {_wrong_type_message(config, path, value)}"
  return None


def _exit_with_absl_usage(error: flags.Error) -> None:
  """absl's app.parse_flags_with_usage report, kept for every flag error that is not a config override's."""
  message = str(error)
  if "\n" in message:
    sys.stderr.write(f"FATAL Flags parsing error:\n{textwrap.indent(message, '  ')}\n")
  else:
    sys.stderr.write(f"FATAL Flags parsing error: {message}\n")
  sys.stderr.write("Pass --helpshort or --helpfull to see help on flags.\n")
  sys.exit(1)


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS, before_imports: bool = False
                ) -> list[str]:
  """absl.app.run's flags_parser: flag_values(argv), with a bad --config.a.b=value override reported as
  `hold_jax: error: --config.a.b=value: <what is wrong and the fix>` on stderr and exit status 2, no
  traceback. A missing --config file, one that gives no config (not Python, a variant its get_config()
  refuses: config_file_error) and an empty --workdir are reported the same way. Returns the arguments left
  after the flags, as absl's own parser does. `configs/NAME.py` falls back to the packaged stock config
  (stock_config_path). before_imports: the early parse of hold_jax/main.py, before JAX, TensorFlow and orbax
  have defined their flags; one of theirs is left to the full parse after the imports."""
  given_argv = argv
  argv = with_stock_configs(argv, flag_values)
  message = missing_config_file(argv, flag_values)
  if message is None:
    _forget_loaded_configs(flag_values)
    try:
      with _without_loader_warnings():
        remaining = flag_values(argv)
    except Exception as error:  # pylint: disable=broad-except  (a config file can raise anything)
      if (before_imports and isinstance(error, flags.UnrecognizedFlagError)
          and error.flagname.split(".")[0] not in _config_flags(flag_values)):
        return argv
      message = config_file_error(argv, flag_values, given_argv)
      if message is None and isinstance(error, (AttributeError, KeyError, flags.Error)):
        message = override_error(error, argv, flag_values)
      if message is None and isinstance(error, flags.Error):
        _exit_with_absl_usage(error)
      if message is None:
        raise
    else:
      if not _gives_configs(flag_values):
        message = config_file_error(argv, flag_values, given_argv)
      if message is None and "workdir" in flag_values:
        message = workdir_problem(flag_values["workdir"].value)
      if message is None:
        return remaining
  sys.stderr.write(f"{ERROR_PREFIX}{message}\n")
  sys.exit(USAGE_ERROR_STATUS)


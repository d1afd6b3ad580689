"""Why a --config file gives no config: not Python (a .json or text file, a syntax error), an error while it
loads, no get_config(), a variant its get_config() refuses, or a result that is not a ConfigDict. ml_collections
reports each as a traceback from inside its loader; hold_jax/cli/command_errors.py turns `problem`'s answer into one
line.
"""
from __future__ import annotations

import inspect
import types

from ml_collections import config_dict


def _one_line(error: BaseException) -> str:
  """`error`'s message on one line (its type when it has none)."""
  return " ".join(str(error).split()) or type(error).__name__


def problem(path: str, variant: str | None = None) -> str | None:
  """What keeps the config file at `path` (an existing file) from giving a config with get_config(variant):
  not Python (a .json or text file, a syntax error), an error while it loads, no get_config(), a variant its
  get_config() refuses (the stock configs name the variants they know in a ValueError, surfaced as it is) or a
  result that is not a ConfigDict. None when it gives a ConfigDict.

  The file is run in a module of its own, as ml_collections runs it (config files are pure get_config()
  functions), so this is only called once the flag's own parse failed or gave no ConfigDict.
  """
  python = path.endswith(".py")
  not_python = (f"{path} is not a Python config file: --config takes a .py file whose get_config() returns the "
                "config, such as configs/toy2d.py")
  if path.endswith(".json"):
    not_python += (" (a workdir's config.json is read from the workdir itself: --mode=sample and --mode=eval "
                   "take the trained fields from it)")
  try:
    with open(path, "rb") as file:
      code = compile(file.read(), path, "exec")
  except OSError as error:
    return f"{path} cannot be read ({_one_line(error)}): fix its permissions or give another config file"
  except (SyntaxError, ValueError) as error:  # ValueError: null bytes, i.e. a binary file
    if not python:
      return not_python
    where = f" at line {error.lineno}" if getattr(error, "lineno", None) else ""
    return (f"{path} is not valid Python ({getattr(error, 'msg', None) or _one_line(error)}{where}): fix the "
            "file, or start again from a stock config such as configs/toy2d.py")
  module = types.ModuleType("hold_jax_config_check")
  module.__file__ = path
  try:
    exec(code, module.__dict__)  # pylint: disable=exec-used  (what ml_collections does to load it)
  except Exception as error:  # pylint: disable=broad-except
    if not python:
      return not_python
    return (f"loading {path} failed ({type(error).__name__}: {_one_line(error)}): fix the file, or start again "
            "from a stock config such as configs/toy2d.py")
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    return not_python if not python else (f"{path} defines no get_config(): a config file returns its "
                                          "ml_collections.ConfigDict from get_config(), as configs/toy2d.py does")
  arguments = () if variant is None else (variant,)
  try:
    inspect.signature(get_config).bind(*arguments)
  except TypeError:
    return (f"get_config() of {path} takes no variant: give --config={path} without ':{variant}'"
            if arguments else f"get_config() of {path} needs a variant: give --config={path}:VARIANT")
  except ValueError:  # no signature to read: calling it tells
    pass
  try:
    config = get_config(*arguments)
  except ValueError as error:  # the stock configs: "configs/toy2d.py knows the variant 'local' only, got ..."
    return _one_line(error)
  except Exception as error:  # pylint: disable=broad-except
    return (f"get_config({', '.join(map(repr, arguments))}) of {path} failed ({type(error).__name__}: "
            f"{_one_line(error)}): fix the file")
  if not isinstance(config, config_dict.ConfigDict):
    return (f"get_config() of {path} returned {type(config).__name__}, not an ml_collections.ConfigDict: make it "
            "return the config, as configs/toy2d.py does")
  return None

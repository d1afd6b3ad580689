"""`hold-jax --help`: the command's own flags and the config fields most runs change, answered before JAX and
TensorFlow are imported (they take 10-15 s; absl's own --help would list only "Try --helpfull", and --helpfull
lists every absl and orbax flag around the few that matter).

Imports absl flags and ml_collections only: hold_jax/main.py calls `print_help_and_exit` before its heavy imports.
"""
from __future__ import annotations

import sys
import textwrap

from absl import flags

HELP_ARGUMENTS = ("-h", "-help", "--help", "-?", "--helpshort")

# The config fields a first run changes, as `--config.GROUP.FIELD=VALUE`; every field is documented in
# hold_jax/configs/default.py (the data's in configs/toy2d.py and hold_jax/configs/images.py).
COMMON_FIELDS = (
    ("sde.order", "1 VP, 2 CLD, 3 HOLD (any n)"),
    ("sde.beta_0", "the process's beta (with sde.beta_1 for a linear schedule)"),
    ("loss.parametrization", "'denoiser' (one network for every order) or a network of the whole state"),
    ("training.num_steps", "training steps; a rerun resumes and may lengthen the run"),
    ("training.batch_size", "global batch size"),
    ("data.dataset", "'multimodal_swiss_roll', 'checkerboard', 'npy:PATH', 'digits', 'cifar10', ..."),
    ("data.data_dir", "where prepared tfds data lies (never downloaded)"),
    ("sampling.method", "'lie_trotter', 'gddim', 'strang', 'ode_adaptive', ... (docs/samplers.md)"),
    ("sampling.num_steps", "steps of a fixed-step sampler"),
    ("eval.metrics", "('nll',) or ('fid', 'kid', 'is') for --mode=eval"),
)

# The command's own flags, in the order a reader needs them; defined in hold_jax/cli/command_flags.py.
OWN_FLAGS = ("config", "workdir", "mode", "distributed", "coordinator_address", "num_processes", "process_id")


def asks_for_help(argv: list[str]) -> bool:
  """Whether the arguments after the program name ask for help (before any `--`)."""
  arguments = argv[:argv.index("--")] if "--" in argv else argv
  return any(argument in HELP_ARGUMENTS for argument in arguments)


def help_text(flag_values: flags.FlagValues = flags.FLAGS) -> str:
  """The help: usage, OWN_FLAGS with their help strings, COMMON_FIELDS, and where the rest is."""
  lines = ["Train, sample and evaluate HOLD / CLD / VP diffusion models (hold_jax).", "",
           "usage: hold-jax --config CONFIG.py[:VARIANT] --workdir DIR [--mode=train|sample|eval] "
           "[--config.GROUP.FIELD=VALUE ...]", "       (the same as python -m hold_jax.main ...)", "", "flags:"]
  for name in OWN_FLAGS:
    flag = flag_values[name]
    lines.append(f"  --{name}")
    lines.extend(textwrap.wrap(flag.help, 100, initial_indent="      ", subsequent_indent="      "))
  lines += ["", "config fields most runs change (--config.GROUP.FIELD=VALUE):"]
  width = max(len(name) for name, _ in COMMON_FIELDS)
  lines += [f"  {name:<{width}}  {meaning}" for name, meaning in COMMON_FIELDS]
  lines += ["", "Every field and its meaning: hold_jax/configs/default.py (the data's: configs/toy2d.py and",
            "hold_jax/configs/images.py); stock configs: configs/ (toy2d.py, digits.py, cifar10.py, celebahq256.py).",
            "A workdir's config.json decides how it is sampled and evaluated.",
            "absl's and the libraries' own flags: --helpfull."]
  return "\n".join(lines)


def print_help_and_exit(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Prints help_text and exits 0 when argv (sys.argv) asks for help; returns otherwise."""
  if asks_for_help(argv[1:]):
    print(help_text(flag_values))
    sys.exit(0)

"""The package's layout (docs/layout.md): its parts import only the parts below them, the top level stays
small, nothing that samples or evaluates imports the training loop, and a workdir written before the folders
existed still loads, samples and resumes."""
import ast
import pathlib
import shutil

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hold_jax"
FIXTURE = pathlib.Path(__file__).resolve().parent / "fixtures" / "workdir_before_folders"

# docs/layout.md, "Which way imports flow": a part may import its own part and the parts of lower rank.
RANKS = {
    "multihost": 1, "console": 1, "field_checks": 1, "memory_budget": 1, "report_files": 1, "configs": 1,
    "process": 2, "models": 3, "data": 4, "plots": 5, "workdir": 6, "training": 7, "sampling": 7,
    "evaluation": 8, "cli": 9, "pretrained": 9, "api": 10, "main": 10, "fid": 10,
}
MAX_TOP_LEVEL_MODULES = 12


def modules() -> dict[str, pathlib.Path]:
  """hold_jax's modules by dotted name (a package by its name, not NAME.__init__)."""
  found = {}
  for path in PACKAGE.rglob("*.py"):
    parts = path.relative_to(ROOT).with_suffix("").parts
    found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return found


def imported_modules(path: pathlib.Path, known: dict[str, pathlib.Path]) -> set[str]:
  """The hold_jax modules `path` imports anywhere in it (in functions too): `from hold_jax.a import b` is
  hold_jax.a.b when that is a module, else hold_jax.a."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("hold_jax"):
      for alias in node.names:
        name = f"{node.module}.{alias.name}"
        found.add(name if name in known else node.module)
    elif isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names if alias.name.startswith("hold_jax"))
  return found


def part(module: str) -> str | None:
  """The part of hold_jax a module belongs to: its folder, or its own name at the top level."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else None


def test_every_part_has_a_rank():
  parts = {part(name) for name in modules()} - {None}
  assert parts == set(RANKS), f"parts without a rank: {parts - set(RANKS)}; ranks of no part: {set(RANKS) - parts}"


def test_imports_flow_downwards():
  known = modules()
  climbs = []
  for name, path in known.items():
    here = part(name)
    if here is None:
      continue  # hold_jax/__init__.py: the lazy API
    for imported in imported_modules(path, known):
      there = part(imported)
      if there is None or there == here:
        continue
      if RANKS[there] >= RANKS[here]:
        climbs.append(f"{name} -> {imported}")
  assert not climbs, "imports of a part of the same or a higher rank (docs/layout.md):\n" + "\n".join(climbs)


def test_sampling_and_evaluation_never_import_training():
  known = modules()
  for name, path in known.items():
    if part(name) in ("sampling", "evaluation", "workdir", "api"):
      training = {m for m in imported_modules(path, known) if part(m) == "training"}
      assert not training, f"{name} imports {training}: read a workdir through hold_jax.workdir instead"


def test_the_top_level_stays_small():
  top = sorted(p.name for p in PACKAGE.glob("*.py"))
  assert len(top) <= MAX_TOP_LEVEL_MODULES, f"{len(top)} modules directly under hold_jax/: {top}"


def test_no_private_jax_module_is_used():
  # jax._src moves between releases without notice; the public API is what a pinned version promises.
  used = [str(path.relative_to(ROOT)) for path in modules().values() if "jax._src" in path.read_text()]
  assert not used, f"{used} use jax._src: use jax's public API, failing loudly with the version where it lacks one"


def test_the_check_sees_a_climb(tmp_path):
  """imported_modules reads function-level imports and submodule imports (a test of the test)."""
  source = tmp_path / "example.py"
  source.write_text("def f():\n  from hold_jax.training import train\n  from hold_jax import multihost\n")
  assert imported_modules(source, modules()) == {"hold_jax.training.train", "hold_jax.multihost"}


@pytest.fixture
def old_workdir(tmp_path):
  """A copy of a toy2d workdir (20 steps, config.json and one checkpoint) written by hold_jax before its modules
  moved into folders."""
  workdir = tmp_path / "before_folders"
  shutil.copytree(FIXTURE, workdir)
  return workdir


def test_a_workdir_from_before_the_folders_samples_and_resumes(old_workdir, monkeypatch):
  import hold_jax
  from hold_jax.configs import toy2d
  from hold_jax.training import train

  model = hold_jax.load(str(old_workdir))
  assert model.step == 20
  samples = model.sample(16, seed=0, num_steps=4)
  assert samples.shape == (16, 2) and np.all(np.isfinite(samples))

  # The command that wrote it, with one more step: `--config configs/toy2d.py:local --config.model.width=16
  # --config.model.embedding_dim=8 --config.training.num_steps=21`.
  config = toy2d.get_config("local")
  config.model.width, config.model.embedding_dim = 16, 8
  config.training.num_steps, config.training.checkpoint_every = 21, 20
  started = []  # the step of each state restore_or_init returns (read at once: the train step donates it)
  restore_or_init = train.restore_or_init

  def recording(*args):
    state = restore_or_init(*args)
    started.append(int(state.step))
    return state

  monkeypatch.setattr(train, "restore_or_init", recording)
  state = train.train(config, str(old_workdir))
  assert started == [20]  # its checkpoint restored, not a fresh state
  assert int(state.step) == 21

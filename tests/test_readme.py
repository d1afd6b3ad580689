"""Every Python snippet and every command line of README.md runs.

- ```python blocks of README.md and docs/*.md are executed, in a scratch working directory;
- `python -m hold_jax.main` and `hold-jax` lines of README.md's ```bash blocks are run (as
  [sys.executable, "-m", "hold_jax.main", ...]) with smoke overrides, in a scratch working directory, so
  `--config configs/NAME.py` must resolve to the packaged configs as README says it does;
- `python -m hold_jax.fid` lines must parse, and run on small generated images with a stand-in feature
  network (the Inception weights file is not available to the tests).
"""
import glob
import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from hold_jax import fid
from hold_jax.evaluation import image_features

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()
DOCS = {path: open(path).read() for path in sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))}


def python_blocks(text: str) -> list[str]:
  return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def command_lines(text: str) -> list[list[str]]:
  """The words of every command line of the ```bash blocks, continuation lines joined, comments dropped."""
  blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
  lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
  return [words for words in (shlex.split(line, comments=True) for line in lines) if words]


def is_python(word: str) -> bool:
  return os.path.basename(word) in ("python", "python3")


def main_argv(words: list[str]) -> list[str] | None:
  """The argv that runs a README line of hold_jax.main here, or None for other lines."""
  if words[0] == "hold-jax":
    return [sys.executable, "-m", "hold_jax.main", *words[1:]]
  if is_python(words[0]) and words[1:3] == ["-m", "hold_jax.main"]:
    return [sys.executable, *words[1:]]
  return None


def test_python_snippets_run(monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)  # snippets may write files (a point cloud, a copied config) where they run
  snippets = [("README.md", s) for s in python_blocks(README)]
  snippets += [(os.path.relpath(path, ROOT), s) for path, text in DOCS.items() for s in python_blocks(text)]
  assert snippets
  for name, snippet in snippets:
    exec(compile(snippet, name, "exec"), {})  # pylint: disable=exec-used


# Appended to README commands so that they run in seconds here: later overrides win. The model size is
# part of every toy2d command so that a sampling command can load what its training command wrote. A config
# whose file name ends with a stock config's (my_toy2d.py) is a copy of it and gets its overrides.
SMOKE = {
    "configs/toy2d.py": ["--config.model.width=32", "--config.model.depth=1", "--config.training.batch_size=64",
                         "--config.training.num_steps=30", "--config.training.checkpoint_every=30",
                         "--config.training.log_every=10", "--config.sampling.num_samples=128",
                         "--config.sampling.batch_size=128", "--config.eval.num_samples=128",
                         "--config.eval.num_examples=64", "--config.eval.batch_size=64"],
    "configs/mixture_demo.py": ["--config.sampling.num_samples=200"],
    "configs/digits.py": ["--config.model.nf=16", "--config.training.batch_size=8",
                          "--config.training.num_steps=4", "--config.training.checkpoint_every=4",
                          "--config.training.log_every=2", "--config.training.sample_every=0",
                          "--config.sampling.num_steps=4", "--config.sampling.num_samples=8",
                          "--config.sampling.batch_size=8", "--config.eval.num_samples=16",
                          "--config.eval.round_size=8"],
}
# tfds data cannot be prepared here (no internet): these commands must stop at once and say how to prepare it.
NEEDS_PREPARED_DATA = ("configs/cifar10.py", "configs/celebahq256.py")
# README snippets that write the files its commands read (the point cloud, the copied config).
MAKES_FILES = ("np.save(", "shutil.copy(")


def smoke_overrides(config: str) -> list[str]:
  name = os.path.basename(config.split(":")[0])
  for stock, overrides in SMOKE.items():
    if name.endswith(os.path.basename(stock)):
      return overrides
  return []


@pytest.mark.slow
def test_main_commands_run(monkeypatch, tmp_path):
  cwd = tmp_path / "cwd"  # no configs/ folder here: configs/NAME.py must name the packaged configs
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  for snippet in python_blocks(README):
    if any(marker in snippet for marker in MAKES_FILES):
      exec(compile(snippet, "README.md", "exec"), {})  # pylint: disable=exec-used
  commands = [(words, argv) for words in command_lines(README) if (argv := main_argv(words))]
  assert len(commands) >= 3
  assert any(words[0] == "hold-jax" for words, _ in commands)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
  workdirs = {}
  for words, argv in commands:
    workdir = argv[argv.index("--workdir") + 1]
    argv[argv.index("--workdir") + 1] = workdirs.setdefault(workdir, str(tmp_path / f"run{len(workdirs)}"))
    config = argv[argv.index("--config") + 1]
    argv += smoke_overrides(config)
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    command = " ".join(words)
    if config.split(":")[0] in NEEDS_PREPARED_DATA:
      assert result.returncode != 0 and "download_and_prepare" in result.stderr, (command, result.stderr[-3000:])
      assert "data.data_dir" in result.stderr
    else:
      assert result.returncode == 0, (command, result.stderr[-3000:])


class StandInNetwork:
  """A fixed random projection of the pixels in place of the Inception network: pool3 (B, 16), logits (B, 10)."""
  name = "stand-in"
  weights_sha256 = "0" * 64
  resize = "tf1"

  def apply(self, images):
    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    rng = np.random.default_rng(x.shape[1])
    features = np.tanh(x @ rng.normal(size=(x.shape[1], 16)) / np.sqrt(x.shape[1]))
    return {"pool3": features.astype(np.float32), "logits": (features @ rng.normal(size=(16, 10))).astype(np.float32)}


def test_fid_commands_run(tmp_path, capsys):
  commands = [words for words in command_lines(README) if is_python(words[0]) and words[1:3] == ["-m", "hold_jax.fid"]]
  assert commands
  rng = np.random.default_rng(0)
  samples = tmp_path / "samples.npz"
  np.savez(samples, pixels=rng.integers(0, 256, size=(40, 8, 8, 1), dtype=np.uint8))
  reference = tmp_path / "reference"
  reference.mkdir()
  for i, image in enumerate(rng.integers(0, 256, size=(30, 8, 8), dtype=np.uint8)):
    Image.fromarray(image).save(reference / f"{i:06d}.png")
  for words in commands:
    args = fid.parse_args(words[3:])  # the line as written is a valid command line
    argv = [str(samples) if w == args.a else str(reference) if w == args.b else w for w in words[3:]]
    if args.feature_network == "digits":  # the bundled classifier: the command runs as written
      assert fid.main(argv) == 0, capsys.readouterr().err
      names = {"fd_digits", "kid_digits", "is_digits"}
    else:  # the same command on generated images, with a stand-in for the Inception weights the tests lack
      assert args.inception_weights
      network = image_features.from_outputs(StandInNetwork(), "pool3", "logits", "")
      assert fid.main(argv, network=network) == 0, capsys.readouterr().err
      names = {"fid", "kid", "is"}
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert names <= set(result) and all(np.isfinite(result[name]) for name in names), result

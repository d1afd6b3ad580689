"""Every Python snippet and every `python -m hold_jax.main` command in README.md runs."""
import os
import re
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()


def test_python_snippets_run(monkeypatch):
  monkeypatch.chdir(ROOT)
  snippets = re.findall(r"```python\n(.*?)```", README, flags=re.S)
  assert snippets
  for snippet in snippets:
    exec(compile(snippet, "README.md", "exec"), {})


# Appended to README commands so that they run in seconds here: later overrides win. The model size is
# part of every toy2d command so that a sampling command can load what its training command wrote.
SMOKE = {
    "configs/toy2d.py": ["--config.model.width=32", "--config.model.depth=1", "--config.training.batch_size=64",
                         "--config.training.num_steps=30", "--config.training.checkpoint_every=30",
                         "--config.training.log_every=10", "--config.sampling.num_samples=128",
                         "--config.sampling.batch_size=128"],
    "configs/mixture_demo.py": ["--config.sampling.num_samples=200"],
    "configs/digits.py": ["--config.training.num_steps=4", "--config.training.checkpoint_every=4",
                          "--config.training.log_every=2", "--config.training.sample_every=0",
                          "--config.sampling.num_steps=4", "--config.sampling.num_samples=8",
                          "--config.sampling.batch_size=8", "--config.eval.num_samples=16",
                          "--config.eval.round_size=8"],
}
# tfds data cannot be prepared here (no internet): these commands must stop at once and say how to prepare it.
NEEDS_PREPARED_DATA = ("configs/cifar10.py", "configs/celebahq256.py")


def test_main_commands_run(tmp_path):
  blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
  commands = [c for b in blocks for c in b.replace("\\\n", " ").splitlines() if "hold_jax.main" in c]
  assert len(commands) >= 3
  workdirs = {}
  for command in commands:
    words = shlex.split(command, comments=True)
    words[0] = sys.executable
    workdir = words[words.index("--workdir") + 1]
    words[words.index("--workdir") + 1] = workdirs.setdefault(workdir, str(tmp_path / f"run{len(workdirs)}"))
    config = words[words.index("--config") + 1]
    words += SMOKE.get(config, [])
    result = subprocess.run(words, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if config.split(":")[0] in NEEDS_PREPARED_DATA:
      assert result.returncode != 0 and "download_and_prepare" in result.stderr, (command, result.stderr[-3000:])
      assert "data.data_dir" in result.stderr
    else:
      assert result.returncode == 0, (command, result.stderr[-3000:])

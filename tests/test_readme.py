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


def test_main_commands_run(tmp_path):
  blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
  commands = [c for b in blocks for c in b.replace("\\\n", " ").splitlines() if "hold_jax.main" in c]
  assert commands
  for command in commands:
    words = shlex.split(command)
    words[0] = sys.executable
    words[words.index("--workdir") + 1] = str(tmp_path / "run")
    result = subprocess.run(words, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]

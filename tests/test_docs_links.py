"""Every pointer to a page of docs/ (docs/NAME.md), to one of its sections (docs/NAME.md#anchor or
docs/NAME.md, "Section") and every relative .md#anchor link of the README resolves."""
import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
POINTER = re.compile(r'(?<![\w/.])((?:docs|benchmarks)/[\w-]+\.md)(?:#([\w-]+)|,? "([^"]+)")?')


def tracked_text_files() -> list[pathlib.Path]:
  names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
  return [ROOT / name for name in names
          if name.endswith((".py", ".md", ".ipynb", ".sh", ".sbatch")) and (ROOT / name).is_file()
          and ROOT / name != pathlib.Path(__file__).resolve()]  # this file's examples are not pointers


def github_anchor(heading: str) -> str:
  """The id GitHub gives a heading: lower case, punctuation other than - and _ dropped, spaces as -."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(page: pathlib.Path) -> list[str]:
  return [line.lstrip("#").strip() for line in page.read_text().splitlines() if line.startswith("#")]


MARKDOWN_LINK = re.compile(r"\]\(([\w./-]+\.md)(?:#([\w-]+))?\)")


def pointers() -> list[tuple[str, str, str | None, str | None]]:
  """(file, page relative to the repository, anchor, section) of every pointer: docs/NAME.md anywhere, and
  a markdown link [text](PAGE.md#anchor) of a .md file relative to that file."""
  found = []
  for path in tracked_text_files():
    text = path.read_text(errors="replace")
    source = str(path.relative_to(ROOT))
    for match in POINTER.finditer(text):
      section = " ".join(match.group(3).split()) if match.group(3) else None  # a section name may wrap
      found.append((source, match.group(1), match.group(2), section))
    if path.suffix == ".md":
      for match in MARKDOWN_LINK.finditer(text):
        page = (path.parent / match.group(1)).resolve()
        if ROOT in page.parents:
          found.append((source, str(page.relative_to(ROOT)), match.group(2), None))
  return sorted(set(found), key=str)


def test_the_repository_points_at_its_docs():
  """The pattern finds pointers at all (a test of the test: a broken pattern would pass everything)."""
  cited = {(page, anchor, section) for _, page, anchor, section in pointers()}
  assert any(page == "docs/process.md" and anchor for page, anchor, _ in cited)
  assert any(section for _, _, section in cited)


@pytest.mark.parametrize("source,page,anchor,section", pointers())
def test_pointer_resolves(source, page, anchor, section):
  target = ROOT / page
  assert target.is_file(), f"{source} points at {page}, which does not exist"
  names = headings(target)
  if anchor:
    assert anchor in {github_anchor(name) for name in names}, (
        f"{source} points at {page}#{anchor}; its sections are {names}")
  if section:
    assert any(name == section or name.startswith(section) for name in names), (
        f'{source} points at {page}, "{section}"; its sections are {names}')


def test_github_anchor():
  assert github_anchor("The library from Python") == "the-library-from-python"
  heading = "train_speed.py: training step time (2026-11-24)"
  assert github_anchor(heading) == "train_speedpy-training-step-time-2026-11-24"

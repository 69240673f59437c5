"""The README's "Working on imagend" map: every folder of the package has a line of its own saying
what question it answers, every file the map names exists, and every module opens with a docstring
(the map names folders and the few files a newcomer needs first; a module's docstring says the rest).
Every test folder and every test helper is on the map too."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "imagend"

# A file named in an entry's description: `db.py`, `test_tiny_extras.py`, `docs/gpu_speed.md`.
NAMED_FILE = re.compile(r"[\w./-]*\w\.(?:py|sql|md|png)\b")


def the_map() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Working on imagend") :]
    start = section.index("```") + 3
    return section[start : section.index("```", start)]


@dataclass
class Entry:
    """One entry of the map: its paths (the first column, relative to `base`) and its description
    (the rest of its line and the lines that go on from it, indented past the names column)."""

    base: Path
    paths: list[str]
    description: str


def entries(block: str) -> list[Entry]:
    found: list[Entry] = []
    top = ROOT
    for line in block.strip("\n").splitlines():
        indent = len(line) - len(line.lstrip(" "))
        if indent >= 10:  # the description goes on
            found[-1].description += " " + line.strip()
            continue
        assert indent in (0, 2), f"a map line indented neither as a top entry nor as one inside it: {line!r}"
        column, _, description = line.strip().partition("  ")
        paths = [path.strip() for path in column.split(",")]
        found.append(Entry(ROOT if indent == 0 else top, paths, description.strip()))
        if indent == 0:
            top = ROOT / paths[0]
    return found


def test_every_folder_of_the_package_has_a_line_of_its_own():
    on_the_map = {
        (entry.base / path).resolve() for entry in entries(the_map()) for path in entry.paths if path.endswith("/")
    }
    folders = {init.parent for init in PACKAGE.rglob("__init__.py") if "__pycache__" not in init.parts}
    folders.add(PACKAGE / "db" / "sql")
    missing = sorted(str(folder.relative_to(ROOT)) + "/" for folder in folders if folder not in on_the_map)
    assert not missing, f"a folder without a line of its own on the README's map: {missing}"


def test_every_file_the_map_names_exists():
    missing = []
    for entry in entries(the_map()):
        for path in entry.paths:
            if not (entry.base / path).exists():
                missing.append(str((entry.base / path).relative_to(ROOT)))
        # A name in the description lies in the entry's folder (a file's: its parent); a path from the root.
        first = entry.base / entry.paths[0]
        folder = first if entry.paths[0].endswith("/") else first.parent
        for name in NAMED_FILE.findall(entry.description):
            if "/" in name:
                if not (ROOT / name).exists():
                    missing.append(name)
            elif not any(folder.rglob(name)):
                missing.append(f"{folder.relative_to(ROOT)}/…/{name}")
    assert not missing, f"named on the README's map but not there: {missing}"


def test_every_module_of_the_package_opens_with_a_docstring():
    modules = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
    bare = [str(m.relative_to(ROOT)) for m in modules if not ast.get_docstring(ast.parse(m.read_text()))]
    assert not bare, f"modules that do not open with a docstring saying what they hold: {bare}"


def test_every_test_folder_and_helper_is_on_the_map():
    block = the_map()
    tests = ROOT / "tests"
    folders = [p.name for p in tests.iterdir() if p.is_dir() and p.name != "__pycache__"]
    assert not [f for f in folders if f"  {f}/" not in block], "a tests/ folder is not on the map"
    helpers = [p.name for p in (tests / "support").glob("*.py") if p.name != "__init__.py"]
    assert not [h for h in helpers if h not in block], "a tests/support helper is not on the map"

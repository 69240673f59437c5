"""The README's "Working on imagend" map names every module of the package, every test folder and
every test helper: a newcomer finds each file there."""

from __future__ import annotations

from itertools import takewhile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def the_map() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Working on imagend") :]
    start = section.index("```") + 3
    return section[start : section.index("```", start)]


def mentioned(relative: Path, block: str) -> bool:
    """`relative` (a path under imagend/ or tests/) is in the map: by its path, or by its name on
    the line of its folder (`backends/local/     the local SDXL backend: backend.py, sdxl.py, …`)."""
    if str(relative) in block:
        return True
    folder = f"{relative.parent}/"
    lines = block.splitlines()
    for index, line in enumerate(lines):
        if line.strip().startswith(folder):
            # The folder's line, and the lines that go on from it (indented past the names column).
            entry = [line, *takewhile(lambda following: following.startswith(" " * 10), lines[index + 1 :])]
            return any(relative.name in part for part in entry)
    return False


def test_every_module_of_the_package_is_on_the_map():
    block = the_map()
    package = ROOT / "imagend"
    modules = [p.relative_to(package) for p in package.rglob("*.py") if "__pycache__" not in p.parts]
    modules += [p.relative_to(package) for p in (package / "sql").glob("*.sql")]
    exempt = {Path("__init__.py"), Path("__main__.py"), Path("testing/__init__.py"), Path("backends/local/__init__.py")}
    missing = [str(m) for m in modules if m not in exempt and not mentioned(m, block)]
    assert not missing, f"not on the README's map: {missing}"


def test_every_test_folder_and_helper_is_on_the_map():
    block = the_map()
    tests = ROOT / "tests"
    folders = [p.name for p in tests.iterdir() if p.is_dir() and p.name != "__pycache__"]
    assert not [f for f in folders if f"  {f}/" not in block], "a tests/ folder is not on the map"
    helpers = [p.name for p in (tests / "support").glob("*.py") if p.name != "__init__.py"]
    assert not [h for h in helpers if h not in block], "a tests/support helper is not on the map"

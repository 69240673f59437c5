"""The settings lines the docs hand out can be pasted as they are (issue 25, item 11): no inline comment
after a value, which .env.example forbids and systemd's EnvironmentFile would keep in the value; and
the docs name nothing a reader cannot place (docs/storage.md named another project's "NexusAI module")."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from imagend.config.env import INLINE_COMMENT

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", ROOT / ".env.example", *(ROOT / "docs").glob("*.md")])
# A setting line, live or commented out: `NAME=value` or `# NAME=value`.
SETTING = re.compile(r"^(?:# )?([A-Z][A-Z0-9_]*)=(.*)$")


def setting_lines(path: Path) -> list[tuple[int, str, str]]:
    """(line number, name, value) of the setting lines of the file's ```sh / ```bash / ```ini blocks
    (all of .env.example)."""
    found, inside = [], path.suffix != ".md"
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.startswith("```"):
            inside = path.suffix != ".md" or (not inside and line.strip() in ("```sh", "```ini", "```dotenv"))
            continue
        match = SETTING.match(line) if inside else None
        if match:
            found.append((number, match.group(1), match.group(2)))
    return found


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_setting_line_carries_an_inline_comment(path):
    bad = [f"{path.name}:{n}: {name}={value}" for n, name, value in setting_lines(path) if INLINE_COMMENT.search(value)]
    assert not bad, "inline comments (systemd keeps them in the value): " + "; ".join(bad)


def test_the_local_backends_env_block_is_read_at_all():
    """The check above reads docs/local.md's block (it is not vacuous)."""
    assert len(setting_lines(ROOT / "docs" / "local.md")) >= 25


def test_the_docs_name_no_outside_module():
    named = [str(path.relative_to(ROOT)) for path in DOCS if "NexusAI" in path.read_text()]
    assert not named, f"a module of another project named where a reader cannot place it: {named}"

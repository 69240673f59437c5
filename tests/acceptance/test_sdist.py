"""What a source release carries: the licence pyproject.toml declares, and everything the README sends
an operator to in the unpacked source (docs, the systemd unit, .env.example). The sdist is built
from a copy of this checkout with `python -m build --sdist --no-isolation`, as a release would be."""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "*.egg-info", "__pycache__", ".*_cache", "build", "dist",
                                    ".imagend-demo", "demo-output", ".env")


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> tarfile.TarFile:
    work = tmp_path_factory.mktemp("sdist")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    result = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(work / "dist"),
                             str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    [archive] = (work / "dist").glob("imagend-*.tar.gz")
    with tarfile.open(archive) as tar:
        yield tar


def members(tar: tarfile.TarFile) -> set[str]:
    return {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}


def test_the_licence_file_matches_what_pyproject_declares():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    text = (ROOT / "LICENSE").read_text()
    assert declared == "MIT"
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 the imagend authors" in text
    assert "Permission is hereby granted, free of charge" in text


def test_the_sdist_carries_the_licence_docs_unit_and_env_example(sdist):
    inside = members(sdist)
    wanted = {"LICENSE", ".env.example", "README.md", "pyproject.toml", "imagend/db/sql/schema.sql",
              "imagend/db/sql/queries.sql"}
    wanted |= {str(path.relative_to(ROOT)) for folder in ("docs", "systemd") for path in (ROOT / folder).iterdir()}
    assert wanted <= inside, sorted(wanted - inside)
    assert not [name for name in inside if "__pycache__" in name or name.endswith(".pyc")]


def test_the_sdist_metadata_names_the_licence(sdist):
    [pkg_info] = [m for m in sdist.getmembers() if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO")]
    stream = sdist.extractfile(pkg_info)
    assert stream is not None
    metadata = email.message_from_bytes(stream.read())
    assert metadata["License-Expression"] == "MIT"
    assert metadata["License-File"] == "LICENSE"

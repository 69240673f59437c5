"""imagend installed without the `local` extra: the CLI in a subprocess whose `import torch` fails as
it does where torch is not installed (a `torch` package first on PYTHONPATH that raises
ModuleNotFoundError). The local backend, -make-tiny-model and the demo say what to install and exit 2;
everything else works."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support.daemons import process_env, run_imagend
from support.db import base_env, fetch_image, insert_image


@pytest.fixture
def no_torch(tmp_path) -> dict[str, str]:
    shadow = tmp_path / "no-torch"
    (shadow / "torch").mkdir(parents=True)
    (shadow / "torch" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    return {"PYTHONPATH": str(shadow)}


def test_the_shadow_really_hides_torch(no_torch):
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=process_env(no_torch), capture_output=True,
                           text=True, timeout=30)
    assert probe.returncode == 1 and "No module named 'torch'" in probe.stderr


def test_the_default_local_backend_without_torch_exits_2_saying_what_to_install(db_url, conn, no_torch):
    image_id = insert_image(conn, "must wait for a host with torch")
    env = base_env(db_url, **no_torch)
    del env["IMAGEND_BACKEND"]  # the default: local
    for flags in (["-generator"], ["-cron"]):
        result = run_imagend(flags, env, timeout=60)
        assert result.returncode == 2, result.stderr
        assert "install imagend[local] or set IMAGEND_BACKEND" in result.stderr
        assert "torch" in result.stderr
        assert "Traceback" not in result.stderr
    assert fetch_image(conn, image_id)["status"] == "ReadyToGenerate"


def test_local_listed_in_imagend_backends_names_that_variable(db_url, no_torch):
    result = run_imagend(["-generator"], base_env(db_url, IMAGEND_BACKENDS="placeholder,local", **no_torch))
    assert result.returncode == 2, result.stderr
    assert "install imagend[local] or set IMAGEND_BACKENDS" in result.stderr


def test_make_tiny_model_without_torch_exits_2_saying_what_to_install(tmp_path, no_torch):
    target = tmp_path / "tiny"
    result = run_imagend(["-make-tiny-model", str(target)], no_torch)
    assert result.returncode == 2, result.stderr
    assert "install imagend[local]" in result.stderr
    assert "Traceback" not in result.stderr
    assert not target.exists()


def test_the_demo_without_torch_exits_2_saying_what_to_install(tmp_path, no_torch):
    result = subprocess.run([sys.executable, "-m", "imagend.demo"], env=process_env(no_torch), capture_output=True,
                            text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "install imagend[local]" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (Path(tmp_path) / ".imagend-demo").exists()  # stopped before starting anything


def test_other_backends_and_status_need_no_torch(db_url, conn, no_torch):
    image_id = insert_image(conn, "the placeholder needs no torch")
    result = run_imagend(["-generator"], base_env(db_url, **no_torch))
    assert result.returncode == 0, result.stderr
    assert fetch_image(conn, image_id)["status"] == "ReadyToPublish"
    status = run_imagend(["-status"], base_env(db_url, **no_torch))
    assert status.returncode == 0, status.stderr

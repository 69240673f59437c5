"""The Go service's `.env`, as it is, starts imagend (issue 25, items 1 and 7): with only Fusion Brain
configured the default backend is fusionbrain, and a start that cannot succeed says what to set at once,
before the table is touched; a default that would fail every row (an inline comment systemd keeps) stops
the start instead."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg

from imagend.testing.fusionbrain_fake import FusionBrainFake

from support.daemons import run_imagend
from support.db import fetch_image, insert_image
from support.fusionbrain import fake_server


def go_env_file(folder: Path, db_url: str, fake: FusionBrainFake) -> None:
    """What a Go-service user's `.env` holds: the database, the Fusion Brain keys and defaults; no IMAGEND_*."""
    env = {"DATABASE_URL": db_url, **fake.client_env(), "DEFAULT_IMAGE_WIDTH": "1024", "DEFAULT_IMAGE_HEIGHT": "1024"}
    env = {k: v for k, v in env.items() if not k.startswith("IMAGEND_")}
    (folder / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))


def test_the_go_services_env_alone_generates_on_fusion_brain(db_url, conn, tmp_path):
    image_id = insert_image(conn, "a lighthouse at dusk")
    with fake_server(generation_seconds=0.0, status_time=0) as fake:
        go_env_file(tmp_path, db_url, fake)
        started = time.monotonic()
        generator = run_imagend(["-generator"], {}, cwd=tmp_path)
        elapsed = time.monotonic() - started
        assert generator.returncode == 0, generator.stderr
        assert "IMAGEND_MODEL" not in generator.stderr  # no local model was looked for
        assert len(fake.submitted) == 1
        processor = run_imagend(["-processor"], {}, cwd=tmp_path)
        assert processor.returncode == 0, processor.stderr
    row = fetch_image(conn, image_id)
    assert (row["status"], row["backend"]) == ("ReadyToPublish", "fusionbrain")
    assert elapsed < 30, f"the start took {elapsed:.0f} s"


def test_an_unset_local_model_stops_the_start_at_once_naming_imagend_backend(bare_db_url, tmp_path):
    """No Fusion Brain keys, no IMAGEND_BACKEND, no IMAGEND_MODEL, an empty Hugging Face cache: no hub
    retries, no download, a message naming both settings, and the database left as it was."""
    env = {"DATABASE_URL": bare_db_url, "HF_HOME": str(tmp_path / "hf"), "IMAGEND_DATA_DIR": str(tmp_path / "data")}
    started = time.monotonic()
    result = run_imagend(["-generator"], env, cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    message = result.stderr.splitlines()[-1]
    assert "IMAGEND_MODEL is not set" in message and "IMAGEND_BACKEND=fusionbrain" in message
    assert "Retrying" not in result.stderr  # huggingface_hub's retries: the hub was never asked
    assert elapsed < 20, f"the refusal took {elapsed:.0f} s"
    with psycopg.connect(bare_db_url) as conn:
        assert conn.execute("SELECT to_regclass('images')").fetchone() == (None,)  # nothing upgraded


def test_a_named_hub_model_the_hub_cannot_give_fails_fast(db_url, tmp_path):
    env = {"DATABASE_URL": db_url, "HF_HOME": str(tmp_path / "hf"), "IMAGEND_MODEL": "someone/some-sdxl-model",
           "HF_ENDPOINT": "http://127.0.0.1:9", "IMAGEND_DATA_DIR": str(tmp_path / "data")}
    started = time.monotonic()
    result = run_imagend(["-generator"], env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "IMAGEND_MODEL=someone/some-sdxl-model: not in the Hugging Face cache" in result.stderr
    assert "cannot be reached" in result.stderr and "Retrying" not in result.stderr
    assert time.monotonic() - started < 20


def test_a_default_style_with_an_inline_comment_stops_the_start(db_url, conn, tmp_path):
    """systemd's EnvironmentFile hands `ANIME # the look we liked` over whole (godotenv drops the comment)."""
    image_id = insert_image(conn, "a fox")
    env = {"DATABASE_URL": db_url, "IMAGEND_BACKEND": "placeholder", "DEFAULT_STYLE": "ANIME # the look we liked"}
    result = run_imagend(["-generator"], env, cwd=tmp_path)
    assert result.returncode == 2
    assert "DEFAULT_STYLE='ANIME # the look we liked' holds an inline comment" in result.stderr
    assert fetch_image(conn, image_id)["status"] == "ReadyToGenerate"  # no row failed for it
    typo = run_imagend(["-generator"], {**env, "DEFAULT_STYLE": "ANIMEE"}, cwd=tmp_path)
    assert typo.returncode == 2 and "DEFAULT_STYLE='ANIMEE' is not a style" in typo.stderr
    assert run_imagend(["-generator"], {**env, "DEFAULT_STYLE": "anime"}, cwd=tmp_path).returncode == 0
    row = fetch_image(conn, image_id)
    assert (row["status"], row["style"]) == ("ReadyToPublish", None)

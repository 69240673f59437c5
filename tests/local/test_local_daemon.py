"""The local backend through the daemon, against a real Postgres, on the miniature model (noise).

The CLI as a user runs it (subprocesses) for the end-to-end path, the start-up failure and two
daemons sharing one device; the generator in process where a test reaches into the pipeline
(progress, cancel, timeout)."""

from __future__ import annotations

import base64
import io
import itertools
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from PIL import Image as PILImage

from imagend.backends.local.png_metadata import read_parameters

from support.daemons import process_env, run_imagend
from support.db import base_env, fetch_image, insert_image
from support.local import TORCH_NUMPY_COPY_WARNING, in_process_generator

pytestmark = TORCH_NUMPY_COPY_WARNING

LONG_PROMPT = "a lighthouse on a rocky cliff at dusk with waves crashing below, " * 3
SMALL = {"width": 64, "height": 64, "steps": 3}


def test_rows_end_to_end_through_imagend_generator(
    conn: psycopg.Connection[Any], db_url: str, local_env: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    long_id = insert_image(conn, LONG_PROMPT, **SMALL)
    negative_id = insert_image(conn, "a (red)++ fox", negative_prompt="blurry, lowres", **SMALL)
    seeded_id = insert_image(conn, "a bowl of ramen", seed=42, scheduler="dpmpp_2m_karras", **SMALL)
    default_size_id = insert_image(conn, "defaults from the environment")  # NULL width/height/steps
    bad_id = insert_image(conn, "bad size", width=100, height=64)
    bad_scheduler_id = insert_image(conn, "bad scheduler", scheduler="k_lms", **SMALL)
    env = base_env(db_url, **local_env(IMAGEND_OUTPUT_DIR=str(out), IMAGEND_MAX_BATCH="4"))

    result = run_imagend(["-generator"], env, timeout=90)

    assert result.returncode == 0, result.stderr[-3000:]
    for image_id in (long_id, negative_id, seeded_id, default_size_id):
        row = fetch_image(conn, image_id)
        assert (row["status"], row["error"], row["progress"]) == ("ReadyToPublish", None, 1.0)
        png = base64.b64decode(row["base64"])
        with PILImage.open(io.BytesIO(png)) as image:
            assert image.format == "PNG" and image.size == (64, 64)
        assert Path(row["output_path"]) == (out / f"{image_id}.png").resolve()
        assert Path(row["output_path"]).read_bytes() == png
        assert row["seed"] is not None and row["generation_seconds"] > 0
        parameters = read_parameters(png)
        assert parameters is not None and f"Seed: {row['seed']}," in parameters
    assert fetch_image(conn, seeded_id)["seed"] == 42
    assert "Sampler: DPM++ 2M Karras" in (
        read_parameters(base64.b64decode(fetch_image(conn, seeded_id)["base64"])) or ""
    )
    assert (read_parameters(base64.b64decode(fetch_image(conn, long_id)["base64"])) or "").startswith(LONG_PROMPT)
    negative_text = read_parameters(base64.b64decode(fetch_image(conn, negative_id)["base64"])) or ""
    assert "Negative prompt: blurry, lowres" in negative_text
    bad = fetch_image(conn, bad_id)
    assert (bad["status"], bad["error"]) == ("Failed", "width must be a multiple of 8 for SDXL, got 100 (try 96)")
    bad_scheduler = fetch_image(conn, bad_scheduler_id)
    assert bad_scheduler["status"] == "Failed" and bad_scheduler["error"].startswith("unknown scheduler 'k_lms'")
    assert "miniature_model" in result.stderr  # the log says the model makes noise


def test_a_missing_model_stops_the_start_and_leaves_rows_waiting(
    conn: psycopg.Connection[Any], db_url: str, local_env: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    image_id = insert_image(conn, "a cat", **SMALL)
    env = base_env(db_url, **local_env(IMAGEND_MODEL=str(tmp_path / "no-such-model")))

    result = run_imagend(["-generator"], env, timeout=60)

    assert result.returncode == 2
    missing = tmp_path / "no-such-model"
    assert f"IMAGEND_MODEL={missing}: no diffusers pipeline there (no model_index.json)" in result.stderr
    assert "imagend -make-tiny-model DIR" in result.stderr
    row = fetch_image(conn, image_id)
    assert (row["status"], row["attempts"], row["error"]) == ("ReadyToGenerate", 0, None)


def test_an_unreadable_model_folder_names_the_setting(
    db_url: str, local_env: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{not json")
    result = run_imagend(["-generator"], base_env(db_url, **local_env(IMAGEND_MODEL=str(broken))), timeout=60)
    assert result.returncode == 2
    assert f"IMAGEND_MODEL={broken}: cannot read its model_index.json" in result.stderr


def test_importing_imagend_and_other_backends_never_imports_torch() -> None:
    code = (
        "import sys, imagend.cli, imagend.backends, imagend.backends.local, imagend.backends.local.options, "
        "imagend.backends.local.gpu_lock, imagend.backends.local.png_metadata, imagend.backends.local.families, "
        "imagend.backends.local.speed.settings; "
        "from imagend.backends import create_backend; "
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def _counting_forward(backend: Any, each_call: Callable[[int], None]) -> list[int]:
    calls: list[int] = []
    original = backend.pipe.unet.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(calls))
        each_call(len(calls))
        return original(*args, **kwargs)

    backend.pipe.unet.forward = forward
    return calls


def test_progress_rises_in_the_row_while_the_image_runs(
    conn: psycopg.Connection[Any], make_settings: Any, make_repo: Any, local_env: Callable[..., dict[str, str]]
) -> None:
    from imagend.backends.local import LocalBackend

    settings = make_settings(**local_env())
    backend = LocalBackend.from_settings(settings)
    image_id = insert_image(conn, "a slow image", width=64, height=64, steps=60)
    seen: list[float | None] = []

    def watch(_call: int) -> None:
        seen.append(fetch_image(conn, image_id)["progress"])
        time.sleep(0.03)  # ~2 s in all: several of the heartbeat's twice-a-second writes

    _counting_forward(backend, watch)
    counts = in_process_generator(make_repo(settings), backend, settings).run_once()

    assert counts.done == 1
    written = [p for p in seen if p is not None]
    assert all(0 <= p < 1 for p in written)  # 0 from the claim, then the steps' fractions
    assert len({p for p in written if 0 < p < 1}) >= 2
    assert written == sorted(written)
    assert fetch_image(conn, image_id)["progress"] == 1.0


def test_cancel_mid_run_fails_the_row_and_frees_the_device(
    conn: psycopg.Connection[Any], make_settings: Any, make_repo: Any, local_env: Callable[..., dict[str, str]]
) -> None:
    from imagend.backends.local import LocalBackend

    settings = make_settings(**local_env())
    backend = LocalBackend.from_settings(settings)
    doomed = insert_image(conn, "cancel me", width=64, height=64, steps=100)
    after = insert_image(conn, "the next row still runs", width=64, height=64, steps=3)

    def cancel_at_third_step(call: int) -> None:
        if call == 3:
            conn.execute("UPDATE images SET cancel_requested = true WHERE id = %s", [doomed])
        time.sleep(0.02)

    calls = _counting_forward(backend, cancel_at_third_step)
    counts = in_process_generator(make_repo(settings), backend, settings).run_once()

    row = fetch_image(conn, doomed)
    assert (row["status"], row["error"]) == ("Failed", "cancelled")
    assert len(calls) < 100 + 3  # aborted well before its 100 steps
    assert not backend.lock.is_held_elsewhere()
    assert fetch_image(conn, after)["status"] == "ReadyToPublish"
    assert (counts.failed, counts.done) == (1, 1)


def test_timeout_puts_the_row_back_for_another_attempt(
    conn: psycopg.Connection[Any], make_settings: Any, make_repo: Any, local_env: Callable[..., dict[str, str]]
) -> None:
    from imagend.backends.local import LocalBackend

    settings = make_settings(**local_env(IMAGEND_IMAGE_TIMEOUT="5"))
    backend = LocalBackend.from_settings(settings)
    readings = iter(range(0, 10**6, 4))  # each clock reading 4 s later than the last
    backend.clock = lambda: float(next(readings))
    image_id = insert_image(conn, "too slow", width=64, height=64, steps=50)

    counts = in_process_generator(make_repo(settings), backend, settings).run_once()

    row = fetch_image(conn, image_id)
    assert counts.retried == 1
    assert (row["status"], row["attempts"]) == ("ReadyToGenerate", 1)
    assert row["error"] == "image timed out after 5 s per image (IMAGEND_IMAGE_TIMEOUT)"


def _start_daemon(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "imagend", "-cron"],
            env=process_env(env),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=log_path.parent,
        )


def _events(log_path: Path, event: str) -> list[dict[str, Any]]:
    found = []
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == event:
                found.append(record)
    return found


def _wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_two_daemons_on_one_device_never_generate_at_the_same_time(
    conn: psycopg.Connection[Any], db_url: str, local_env: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    env = base_env(db_url, **local_env(IMAGEND_LEASE_SECONDS="30"))
    logs = [tmp_path / "daemon-a.log", tmp_path / "daemon-b.log"]
    daemons = [_start_daemon(env, path) for path in logs]
    try:
        _wait_for(lambda: all(_events(p, "daemon_started") for p in logs), 60, "both daemons to start")
        ids = [insert_image(conn, f"contended image {i}", width=64, height=64, steps=12) for i in range(10)]
        _wait_for(lambda: all(fetch_image(conn, i)["status"] == "ReadyToPublish" for i in ids), 90, "all rows done")
    finally:
        for daemon in daemons:
            daemon.send_signal(signal.SIGTERM)
        for daemon in daemons:
            daemon.wait(30)
    intervals = []
    for path in logs:
        batches = _events(path, "batch_generated")
        assert batches, f"{path.name} generated nothing: the test did not exercise the lock"
        intervals += [(b["device_started"], b["device_finished"], path.name) for b in batches]
    intervals.sort()
    for (_, end, first), (start, _, second) in itertools.pairwise(intervals):
        assert start >= end, f"{first} and {second} held the device at the same time"

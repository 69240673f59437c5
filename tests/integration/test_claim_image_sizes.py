"""Hardening III, item 12: the claim never pulls image texts into memory. It returns each image
column's length; a text over the limit fails its row on that length alone, and a text within it is
read per row when it is decoded."""

from __future__ import annotations

import base64
import io
import tracemalloc

from PIL import Image

from support.daemons import InProcess
from support.db import fetch_image, insert_image

HUGE_CHARS = 60_000_000  # past twice the base64 of a 20 MiB image


def png_base64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_a_huge_image_text_fails_without_being_read(conn, make_settings, make_repo):
    huge = insert_image(conn, "huge init image")
    conn.execute("UPDATE images SET init_image = repeat('A', %s) WHERE id = %s", [HUGE_CHARS, huge])
    small = insert_image(conn, "a small one", init_image=png_base64())
    broken = insert_image(conn, "broken base64", mask_image="not*base64", init_image=png_base64())
    settings = make_settings()
    repo = make_repo(settings)
    rows = repo.claim_batch("placeholder", 10)
    claimed = next(row for row in rows if row.id == huge)
    assert claimed.init_image is None and claimed.init_image_chars == HUGE_CHARS
    repo.release([row.id for row in rows])
    run = InProcess(repo, settings)
    tracemalloc.start()
    try:
        run.generator.run_once()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        run.close()
    assert peak < HUGE_CHARS // 3, f"{peak / 1e6:.0f} MB allocated at the peak"
    error = fetch_image(conn, huge)["error"]
    assert error.startswith("init_image: 57 MiB of text, more than an image of at most 20 MiB")
    # Read and decoded per row: the placeholder refuses image inputs only after they decoded.
    assert "does not take init_image" in fetch_image(conn, small)["error"]
    assert "mask_image: not valid base64" in fetch_image(conn, broken)["error"]

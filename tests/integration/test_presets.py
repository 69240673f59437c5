"""Presets (issue 26, item 5) against a real Postgres: made with the CLI (`imagend -preset`, `-presets`,
`-preset-delete`, run as a user runs it) or with SQL; a row naming one gets the preset's values where it
left NULL (its own win), the template applied to its prompt and written back, and the token's round
RGBA PNG; an unknown preset, or a token asked as JPEG, fails the row readably while the others go on.
The placeholder backend makes the images (the local one is tested end to end in tests/local)."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import psycopg
from PIL import Image as PILImage

from imagend.images.formats import read_parameters

from support.daemons import InProcess, run_imagend
from support.db import base_env, fetch_image, insert_image

TOKEN = ["-preset", "token", "prompt=a round token portrait of {prompt}, fantasy art",
         "negative_prompt=text, watermark", "style=ANIME", "n=1", "post=token", "guidance=6.5"]


def run_generator(make_settings: Any, make_repo: Any, **env: str) -> None:
    settings = make_settings(**env)
    run = InProcess(make_repo(settings), settings)
    try:
        run.generator.run_once()
    finally:
        run.close()


def picture(text: str) -> PILImage.Image:
    image = PILImage.open(io.BytesIO(base64.b64decode(text)))
    image.load()
    return image


def test_the_cli_makes_changes_lists_and_deletes_presets(db_url: str) -> None:
    env = base_env(db_url)
    made = run_imagend(TOKEN, env)
    assert made.returncode == 0, made.stderr[-2000:]
    (preset,) = json.loads(made.stdout)["presets"]
    assert preset["name"] == "token" and preset["prompt"] == "a round token portrait of {prompt}, fantasy art"
    assert (preset["n"], preset["style"], preset["guidance"]) == (1, "ANIME", 6.5)
    assert preset["post"] == [{"step": "token", "color": "#3b2a1a"}]

    changed = run_imagend(["-preset", "token", "style=none", "width=512"], env)  # only what is named changes
    assert changed.returncode == 0, changed.stderr[-2000:]
    (preset,) = json.loads(changed.stdout)["presets"]
    assert (preset["style"], preset["width"], preset["negative_prompt"]) == (None, 512, "text, watermark")

    listed = run_imagend(["-presets"], env)
    assert [p["name"] for p in json.loads(listed.stdout)["presets"]] == ["token"]

    for args, message in (
        (["-preset", "bad", "prompt=no placeholder"], "prompt is a template with {prompt}"),
        (["-preset", "bad", "n=9"], "n must be between 1 and 8, got 9"),
        (["-preset", "bad", "post=crop"], "unknown post step 'crop'; use one of: token"),
        (["-preset", "bad", "colour=red"], "preset values are key=value with a key among"),
        (["-preset", "bad name"], "preset name 'bad name'"),
        (["-preset-delete", "nope"], "no preset named 'nope'"),
    ):
        refused = run_imagend(args, env)
        assert refused.returncode == 2 and message in refused.stderr, (args, refused.stderr[-1000:])

    deleted = run_imagend(["-preset-delete", "token"], env)
    assert deleted.returncode == 0 and json.loads(deleted.stdout)["presets"] == []


def test_a_row_takes_its_preset_and_says_so_and_its_own_values_win(
    conn: psycopg.Connection[Any], db_url: str, make_settings: Any, make_repo: Any
) -> None:
    assert run_imagend(TOKEN, base_env(db_url)).returncode == 0
    plain = insert_image(conn, "an elf ranger", preset="token")
    own = insert_image(conn, "a dwarf cleric", preset="token", negative_prompt="blurry", n=2, style="UHD")

    run_generator(make_settings, make_repo)

    row = fetch_image(conn, plain)
    assert (row["status"], row["error"]) == ("ReadyToPublish", None)
    assert row["prompt"] == "an elf ranger"  # the producer's words stay
    assert row["effective_prompt"] == "a round token portrait of an elf ranger, fantasy art"
    assert (row["negative_prompt"], row["style"], row["n"], row["guidance"]) == (
        "text, watermark", "ANIME", 1, 6.5)  # written back from the preset
    assert row["preset"] == "token"
    token = picture(row["base64"])
    assert token.format == "PNG" and token.mode == "RGBA"
    side = token.size[0]
    assert token.size == (side, side)
    assert token.getpixel((0, 0))[3] == 0 and token.getpixel((side - 1, side - 1))[3] == 0  # corners: transparent
    assert token.getpixel((side // 2, side // 2))[3] == 255  # the middle: the picture, opaque
    assert "Postprocessing: token" in (read_parameters(base64.b64decode(row["base64"])) or "")

    mine = fetch_image(conn, own)
    assert mine["status"] == "ReadyToPublish", mine["error"]
    assert (mine["negative_prompt"], mine["n"], mine["style"]) == ("blurry", 2, "UHD")  # the row's own win
    assert mine["effective_prompt"] == "a round token portrait of a dwarf cleric, fantasy art"
    assert [picture(entry["base64"]).mode for entry in mine["images"]] == ["RGBA", "RGBA"]  # every image a token


def test_a_preset_made_with_sql_and_a_larger_token(
    conn: psycopg.Connection[Any], make_settings: Any, make_repo: Any, tmp_path: Any
) -> None:
    conn.execute("""INSERT INTO imagend_presets (name, prompt, post)
                    VALUES ('coin', 'a coin showing {prompt}',
                            '[{"step": "token", "border": 3, "color": "#c9a227"}]')""")
    image_id = insert_image(conn, "a dragon", preset="coin", format="webp")
    run_generator(make_settings, make_repo, IMAGEND_OUTPUT_DIR=str(tmp_path / "out"))
    row = fetch_image(conn, image_id)
    assert row["status"] == "ReadyToPublish", row["error"]
    assert row["format"] == "webp"
    coin = picture(row["base64"])
    assert coin.format == "WEBP" and coin.mode == "RGBA"  # WebP keeps the transparency
    side = coin.size[0]
    assert coin.getpixel((0, 0))[3] == 0
    red, green, blue, alpha = coin.getpixel((side // 2, 1))  # inside the 3-pixel ring, at the top
    assert alpha > 200 and abs(red - 0xC9) < 24 and abs(green - 0xA2) < 24 and abs(blue - 0x27) < 24


def test_an_unknown_preset_or_a_transparent_jpeg_fails_the_row_readably(
    conn: psycopg.Connection[Any], db_url: str, make_settings: Any, make_repo: Any
) -> None:
    assert run_imagend(TOKEN, base_env(db_url)).returncode == 0
    unknown = insert_image(conn, "a cat", preset="nope")
    jpeg = insert_image(conn, "a cat", preset="token", format="jpeg")
    fine = insert_image(conn, "a cat", preset="token")

    run_generator(make_settings, make_repo)

    row = fetch_image(conn, unknown)
    assert (row["status"], row["error"]) == (
        "Failed", "unknown preset 'nope': imagend -presets lists the presets (an operator makes one with "
        "imagend -preset NAME key=value …)")
    row = fetch_image(conn, jpeg)
    assert row["status"] == "Failed" and row["error"] == (
        "preset 'token' makes a transparent image (token); format jpeg has no transparency: use png or webp (or NULL)")
    assert fetch_image(conn, fine)["status"] == "ReadyToPublish"

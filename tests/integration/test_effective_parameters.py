"""What made an image is written back to the columns its row left NULL (issue 25, item 9): the size
(a default, or the source image's), and the local backend's steps, guidance and scheduler, so that an
application lays out thumbnails without decoding images. What a producer wrote stays as written."""

from __future__ import annotations

import base64
import io

from PIL import Image as PILImage

from imagend.backends.placeholder import PLACEHOLDER_SIDE_PX

from support.daemons import InProcess
from support.db import fetch_image, insert_image
from support.fusionbrain import drive, fake_server, rig


def image_size(row: dict) -> tuple[int, int]:
    with PILImage.open(io.BytesIO(base64.b64decode(row["base64"]))) as image:
        return image.size


def test_the_size_of_the_image_made_is_written_where_the_row_left_it_null(conn, make_settings, make_repo):
    defaulted = insert_image(conn, "sizes left to the daemon")
    asked = insert_image(conn, "asked for its size", width=32, height=24, steps=7)
    as_webp = insert_image(conn, "another format", format="webp")
    settings = make_settings()
    run = InProcess(make_repo(settings), settings)
    run.generator.run_once()
    run.close()
    for image_id in (defaulted, as_webp):
        row = fetch_image(conn, image_id)
        assert row["status"] == "ReadyToPublish"
        assert (row["width"], row["height"]) == image_size(row) == (PLACEHOLDER_SIDE_PX, PLACEHOLDER_SIDE_PX)
        assert (row["steps"], row["guidance"], row["scheduler"]) == (None, None, None)  # the placeholder has none
    row = fetch_image(conn, asked)
    assert (row["width"], row["height"], row["steps"]) == (32, 24, 7)  # the producer's, as written


def test_a_fusion_brain_image_writes_its_size_back(conn, make_settings, make_repo):
    image_id = insert_image(conn, "a lighthouse at dusk")
    with fake_server() as fake, rig(make_settings, make_repo, fake) as r:
        drive(r, conn, fake, [image_id])
    row = fetch_image(conn, image_id)
    assert row["status"] == "ReadyToPublish"
    assert (row["width"], row["height"]) == image_size(row)
    assert (row["steps"], row["guidance"], row["scheduler"]) == (None, None, None)  # Fusion Brain takes none

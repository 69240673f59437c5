from support.daemons import run_imagend
from support.db import base_env, fetch_image, insert_image


def test_generator_flag_finishes_a_plain_ancestor_insert(db_url, conn):
    image_id = insert_image(conn, "a beautiful sunset over mountains")
    result = run_imagend(["-generator"], base_env(db_url))
    assert result.returncode == 0, result.stderr
    row = fetch_image(conn, image_id)
    assert row["status"] == "ReadyToPublish"
    assert row["base64"].startswith("iVBORw0KGgo")  # PNG signature, base64

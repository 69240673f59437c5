"""Issue 23, the HTTP API a web app needs, against real daemons (`imagend -cron`, placeholder backend):
uploads (raw, multipart, inline in POST /v1/images; too big, not images, bombs), links a browser
opens without the token (signed on this listener; presigned on S3, fetched from the moto server with
no credentials), Idempotency-Key (a retry after a dropped connection makes one row), webhooks to a
local receiver (signed, retried after the receiver was down, delivered again with the same id after a
SIGKILL mid-delivery), and the live stream (SSE) to the row's end, bounded per client."""

from __future__ import annotations

import io
import json
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from PIL import Image
from psycopg.rows import dict_row

from support.db import fetch_image, wait_until
from support.http_daemon import TOKEN, HttpDaemon, own_database
from support.s3 import MotoServer
from support.webhook_receiver import Receiver

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WEBHOOK_ENV = {
    "IMAGEND_WEBHOOK_SECRET": SECRET,
    "IMAGEND_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
    "IMAGEND_WEBHOOK_BACKOFF": "0.2",
    "IMAGEND_WEBHOOK_TIMEOUT": "1",
}


def png(side: int = 24, color: tuple[int, int, int] = (200, 30, 30), fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), color).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def module_db(server_url: str, template_db: str) -> Iterator[str]:
    with own_database(server_url, template_db) as url:
        yield url


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver(SECRET) as running:
        yield running


@pytest.fixture(scope="module")
def daemon(module_db: str, receiver: Receiver) -> Iterator[HttpDaemon]:
    # Reads need the token here too, so a link that opens without it is really signed.
    with HttpDaemon(module_db, IMAGEND_HTTP_READ_TOKEN="required", IMAGEND_UPLOAD_MAX_BYTES=str(256 * 1024),
                    IMAGEND_SSE_MAX_PER_CLIENT="3", IMAGEND_PLACEHOLDER_DELAY="0.3", **WEBHOOK_ENV) as running:
        yield running


@pytest.fixture
def db(module_db: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with psycopg.connect(module_db, autocommit=True, row_factory=dict_row) as connection:
        yield connection


def rows(db: Any) -> int:
    return int(db.execute("SELECT count(*) AS n FROM images").fetchone()["n"])


def wait_ended(daemon: HttpDaemon, image_id: int, timeout: float = 20.0) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        body: dict[str, Any] = daemon.get(f"/v1/images/{image_id}", headers=AUTH).json()
        return body if body["status"] in ("ReadyToPublish", "Failed") else None

    found: dict[str, Any] = wait_until(ended, timeout, what=f"image {image_id} ended")
    return found


# -- uploads ------------------------------------------------------------------------------------------


def test_an_upload_is_an_input_row_and_opens_by_its_signed_link(daemon, db):
    photo = png(40, fmt="JPEG")
    answer = daemon.post("/v1/uploads", content=photo, headers={"Content-Type": "image/jpeg"})
    assert answer.status_code == 201, answer.text
    upload = answer.json()
    assert (upload["width"], upload["height"], upload["format"], upload["bytes"]) == (40, 40, "jpeg", len(photo))
    row = fetch_image(db, upload["id"])
    assert (row["status"], row["task"]) == ("ReadyToPublish", "upload")
    # The signed link needs no token where reads do; a tampered one is refused.
    assert daemon.get(f"/v1/images/{upload['id']}/image").status_code == 401
    opened = daemon.get(upload["image_url"])
    assert opened.status_code == 200 and opened.content == photo
    assert daemon.get(upload["image_url"][:-4] + "0000").status_code == 401
    # Its id is taken where a row id is: the API accepts it as init_image_id (the placeholder then
    # fails the row by name, image-to-image being the local backend's; tests/local runs it).
    chained = daemon.post("/v1/images", json={"prompt": "as a watercolour", "init_image_id": upload["id"],
                                              "strength": 0.5})
    assert chained.status_code == 201, chained.text


def test_multipart_upload_and_inline_images_in_a_submit(daemon, db):
    answer = daemon.post("/v1/uploads", files={"file": ("me.png", png(), "image/png")})
    assert answer.status_code == 201, answer.text
    assert fetch_image(db, answer.json()["id"])["params"] == {"upload": {"filename": "me.png", "bytes": len(png())}}
    big_mask = Image.effect_noise((300, 300), 90).convert("L")  # a PNG far over the 64 KiB of a JSON body
    buffer = io.BytesIO()
    big_mask.save(buffer, format="PNG")
    assert len(buffer.getvalue()) > 64 * 1024
    submitted = daemon.post("/v1/images", data={"prompt": "paint it", "strength": "0.7", "params": '{"user": 7}'},
                            files={"init_image": ("in.png", png(300), "image/png"),
                                   "mask_image": ("mask.png", buffer.getvalue(), "image/png")})
    assert submitted.status_code == 201, submitted.text
    row = fetch_image(db, submitted.json()["id"])
    assert row["init_image_id"] is not None and row["mask_image"] and row["strength"] == pytest.approx(0.7)
    assert row["params"] == {"user": 7}
    assert fetch_image(db, row["init_image_id"])["task"] == "upload"


def test_bad_uploads_are_refused_and_store_nothing(daemon, db):
    before = rows(db)
    declared = daemon.post("/v1/uploads", content=b"x" * (300 * 1024))
    assert declared.status_code == 413
    # No Content-Length (chunked): cut while it streams in.
    streamed = daemon.post("/v1/uploads", content=iter([b"\x89PNG" + b"\0" * 65536] * 8))
    assert streamed.status_code == 413, streamed.text
    assert daemon.post("/v1/uploads", content=b"GIF89a not really").status_code == 422
    assert daemon.post("/v1/uploads", content=b"<svg/>").status_code == 422
    assert daemon.post("/v1/uploads", content=b"").status_code == 422
    # A decompression bomb: a tiny PNG that declares 20,000 x 20,000 pixels.
    bomb = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(bomb, format="PNG")
    assert len(bomb.getvalue()) < 256 * 1024
    refused = daemon.post("/v1/uploads", content=bomb.getvalue())
    assert refused.status_code == 422 and "pixels" in refused.json()["error"]
    assert daemon.post("/v1/uploads", content=png(), auth=False).status_code == 401
    assert rows(db) == before


def test_uploads_at_once_are_bounded(daemon):
    """Four uploads trickling in hold the listener's upload places; a fifth is told 'busy' (503,
    Retry-After) at once, never queued in memory; places come back when those clients go."""
    head = (f"POST /v1/uploads HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: image/png\r\nContent-Length: 100000\r\n\r\n").encode()
    slow = [socket.create_connection(("127.0.0.1", daemon.port)) for _ in range(4)]
    try:
        for sock in slow:
            sock.sendall(head + b"\x89PNG")
        def refused() -> httpx.Response | None:
            answer = httpx.post(f"{daemon.url}/v1/uploads", content=png(), headers=AUTH, timeout=5)
            return answer if answer.status_code == 503 else None

        busy = wait_until(refused, 5, what="a 503")
        assert busy.headers["retry-after"] == "1" and "uploads" in busy.json()["error"]
    finally:
        for sock in slow:
            sock.close()
    wait_until(lambda: daemon.post("/v1/uploads", content=png()).status_code == 201, 5)


# -- idempotency ------------------------------------------------------------------------------------


def test_the_same_key_and_body_make_one_row(daemon, db):
    key = str(uuid.uuid4())
    body = {"prompt": "once only", "params": {"order": 1}}
    first = daemon.post("/v1/images", json=body, headers={"Idempotency-Key": key})
    again = daemon.post("/v1/images", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json() and again.headers["idempotent-replayed"] == "true"
    other = daemon.post("/v1/images", json={**body, "prompt": "another"}, headers={"Idempotency-Key": key})
    assert other.status_code == 422 and "another body" in other.json()["error"]
    too_long = daemon.post("/v1/images", json=body, headers={"Idempotency-Key": "k" * 10_000})
    assert too_long.status_code == 400
    assert db.execute("SELECT count(*) AS n FROM images WHERE prompt = 'once only'").fetchone()["n"] == 1
    upload_key = {"Idempotency-Key": str(uuid.uuid4())}
    up1 = daemon.post("/v1/uploads", content=png(), headers=upload_key)
    up2 = daemon.post("/v1/uploads", content=png(), headers=upload_key)
    assert up1.json()["id"] == up2.json()["id"]


def test_a_retry_after_a_dropped_connection_makes_one_row(daemon, db):
    key = str(uuid.uuid4())
    body = json.dumps({"prompt": "dropped connection"}).encode()
    head = (f"POST /v1/images HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nIdempotency-Key: {key}\r\nContent-Length: {len(body)}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
        sock.sendall(head.encode() + body)  # and the client goes before reading the answer
    wait_until(lambda: db.execute("SELECT 1 FROM images WHERE prompt = 'dropped connection'").fetchone(), 5)
    retried = daemon.post("/v1/images", content=body, headers={"Idempotency-Key": key,
                                                               "Content-Type": "application/json"})
    assert retried.status_code == 201
    assert db.execute("SELECT count(*) AS n FROM images WHERE prompt = 'dropped connection'").fetchone()["n"] == 1


# -- webhooks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://10.0.0.7/hook", "http://169.254.169.254/latest", "http://[::1]/x",
                                 "http://localhost:9/x", "ftp://example.com/x", "http://u:p@example.com/"])
def test_callback_urls_into_the_private_network_are_refused(daemon, url):
    answer = daemon.post("/v1/images", json={"prompt": "x", "callback_url": url})
    assert answer.status_code == 422, answer.text


def test_a_webhook_is_signed_and_says_how_the_row_ended(daemon, receiver, db):
    seen = len(receiver.received)
    image_id = daemon.post("/v1/images", json={"prompt": "hook me", "callback_url": receiver.url,
                                               "params": {"order": 9}}).json()["id"]
    got = receiver.wait_for(seen + 1)[seen]
    assert got.signed and got.headers["webhook-id"].startswith("msg_")
    event = got.event
    assert event["type"] == "image.ready" and event["data"]["id"] == image_id
    assert event["data"]["params"] == {"order": 9} and event["data"]["timings"]["finished_at"]
    # Its link opens without the token.
    assert daemon.get(event["data"]["image_url"]).status_code == 200
    outbox = db.execute("SELECT * FROM imagend_webhooks WHERE image_id = %s", [image_id]).fetchone()
    assert outbox["delivered_at"] is not None and outbox["attempts"] == 1


def test_a_webhook_is_retried_after_the_receiver_was_down(daemon, receiver, db):
    receiver.status = 500
    seen = len(receiver.received)
    image_id = daemon.post("/v1/images", json={"prompt": "down then up", "callback_url": receiver.url}).json()["id"]
    receiver.wait_for(seen + 2)  # answered 500 twice (backoff 0.2 s, 0.4 s)
    receiver.down()
    wait_until(lambda: "Connect" in (db.execute("SELECT last_error FROM imagend_webhooks WHERE image_id = %s",
                                                [image_id]).fetchone()["last_error"] or ""), 10)
    receiver.status = 200
    receiver.up()
    final = wait_until(lambda: db.execute("SELECT * FROM imagend_webhooks WHERE image_id = %s AND delivered_at "
                                          "IS NOT NULL", [image_id]).fetchone(), 15)
    assert final["attempts"] >= 3
    ids = {r.event_id for r in receiver.received[seen:] if r.event["data"]["id"] == image_id}
    assert len(ids) == 1  # every attempt carried the same id: the receiver deduplicates on it


def test_a_receiver_that_hangs_holds_up_no_other_delivery(daemon, receiver, db):
    seen = len(receiver.received)
    receiver.released.clear()
    receiver.hang_seconds = 10.0  # the next request gets no answer (the daemon gives up after its 1 s timeout)
    try:
        hanging = daemon.post("/v1/images", json={"prompt": "hangs", "callback_url": receiver.url}).json()["id"]
        receiver.wait_for(seen + 1)
        started = time.monotonic()
        other = daemon.post("/v1/images", json={"prompt": "meanwhile", "callback_url": receiver.url}).json()["id"]
        got = receiver.wait_for(seen + 2, timeout=5)[seen + 1]
        assert got.event["data"]["id"] == other and time.monotonic() - started < 2.0
    finally:
        receiver.released.set()
    row = wait_until(lambda: db.execute("SELECT * FROM imagend_webhooks WHERE image_id = %s AND delivered_at "
                                        "IS NOT NULL", [hanging]).fetchone(), 15)
    assert row["last_error"] is None  # answered once released (or retried after its timeout)


def test_a_redirect_is_not_followed_and_an_old_event_is_abandoned(daemon, receiver, db):
    """A receiver that redirects is retried (the redirect never followed); an event past
    IMAGEND_WEBHOOK_EXPIRE (24 h) is abandoned after its attempt, with the reason."""
    receiver.status = 302
    try:
        seen = len(receiver.received)
        image_id = daemon.post("/v1/images", json={"prompt": "redirected", "callback_url": receiver.url}).json()["id"]
        receiver.wait_for(seen + 1)
        row = wait_until(lambda: db.execute("SELECT * FROM imagend_webhooks WHERE image_id = %s AND last_error "
                                            "IS NOT NULL", [image_id]).fetchone(), 10)
        assert "redirect" in row["last_error"] and row["delivered_at"] is None
        got = [r for r in receiver.received[seen:] if r.event["data"]["id"] == image_id]
        assert all(r.headers.get("webhook-id") == got[0].event_id for r in got)  # retries, never the Location
        receiver.status = 500
        db.execute("INSERT INTO imagend_webhooks (image_id, url, status, created_at) "
                   "VALUES (%s, %s, 'ReadyToPublish', now() - interval '25 hours')", [image_id, receiver.url])
        old = wait_until(lambda: db.execute("SELECT * FROM imagend_webhooks WHERE image_id = %s AND gave_up_at "
                                            "IS NOT NULL", [image_id]).fetchone(), 10)
        assert old["attempts"] == 1 and "500" in old["last_error"]
    finally:
        receiver.status = 200
    # The redirected event is delivered once the receiver answers 200 (and leaves the receiver to the next test).
    wait_until(lambda: db.execute("SELECT 1 FROM imagend_webhooks WHERE image_id = %s AND delivered_at IS NOT NULL",
                                  [image_id]).fetchone(), 15)


def test_a_webhook_interrupted_by_sigkill_is_delivered_again_with_the_same_id(server_url, template_db, receiver):
    """A daemon killed mid-delivery: the event's lease passes and another daemon delivers it (at least
    once; the receiver sees the same webhook-id twice)."""
    seen = len(receiver.received)
    receiver.hang_seconds = 30.0  # the first delivery waits for an answer that never comes
    receiver.released.clear()
    with own_database(server_url, template_db) as url:
        with HttpDaemon(url, **WEBHOOK_ENV) as doomed:
            image_id = doomed.post("/v1/images", json={"prompt": "killed mid-delivery",
                                                       "callback_url": receiver.url}).json()["id"]
            first = receiver.wait_for(seen + 1)[seen]
            doomed.process.kill()
        receiver.released.set()
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            # An Idempotency-Key past its window: the webhook thread's upkeep drops it.
            conn.execute("INSERT INTO imagend_api_requests (key, image_ids, created_at) "
                         "VALUES ('v1/images:old', '{1}', now() - interval '2 hours')")
            with HttpDaemon(url, **WEBHOOK_ENV):
                second = receiver.wait_for(seen + 2, timeout=20)[seen + 1]
                outbox = wait_until(lambda: conn.execute(
                    "SELECT * FROM imagend_webhooks WHERE image_id = %s AND delivered_at IS NOT NULL",
                    [image_id]).fetchone(), 5)
                wait_until(lambda: not conn.execute("SELECT 1 FROM imagend_api_requests WHERE key = 'v1/images:old'"
                                                    ).fetchone(), 5)
    assert first.event_id == second.event_id and first.signed and second.signed
    assert second.event["data"]["id"] == image_id
    assert outbox["attempts"] == 2


# -- the live stream ----------------------------------------------------------------------------------


def read_events(url: str, timeout: float = 20.0) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    with httpx.stream("GET", url, headers=AUTH, timeout=timeout) as answer:
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in answer.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: ") and name is not None:
                events.append((name, json.loads(line[6:])))
                if name in ("end", "gone"):
                    return events
    return events


def test_the_stream_shows_the_row_forming_to_its_end(daemon):
    image_id = daemon.post("/v1/images", json={"prompt": "watch me"}).json()["id"]
    events = read_events(f"{daemon.url}/v1/images/{image_id}/events")
    statuses = [data["status"] for name, data in events if name == "status"]
    assert statuses[-1] == "ReadyToPublish" and len(statuses) >= 2  # waiting or generating first, then done
    name, end = events[-1]
    assert name == "end" and end["status"] == "ReadyToPublish"
    assert daemon.get(end["image_url"]).status_code == 200  # signed: no token
    assert daemon.get("/v1/images/999999/events", headers=AUTH).status_code == 404


def test_streams_are_bounded_per_client(daemon):
    image_id = daemon.post("/v1/images", json={"prompt": "many watchers", "run_after": "2999-01-01T00:00:00Z"}
                           ).json()["id"]
    url = f"{daemon.url}/v1/images/{image_id}/events"
    with httpx.Client(headers=AUTH, timeout=5) as client:
        streams = [client.stream("GET", url) for _ in range(3)]
        opened = [stream.__enter__() for stream in streams]
        try:
            assert all(answer.status_code == 200 for answer in opened)
            refused = client.get(url)
            assert refused.status_code == 429 and "IMAGEND_SSE_MAX_PER_CLIENT" in refused.json()["error"]
        finally:
            for stream in streams:
                stream.__exit__(None, None, None)
    # Closed streams free their places (once the listener notices the client went).
    def reopened() -> bool:
        with httpx.stream("GET", url, headers=AUTH, timeout=5) as answer:
            return answer.status_code == 200
    wait_until(reopened, 10)


# -- S3: presigned links --------------------------------------------------------------------------


def test_s3_links_are_presigned_and_open_without_credentials(server_url, template_db, s3_server: MotoServer,
                                                               s3_bucket):
    with own_database(server_url, template_db) as url, \
            HttpDaemon(url, **s3_server.env(s3_bucket), IMAGEND_LINK_SECONDS="120") as running:
        image_id = running.post("/v1/images", json={"prompt": "in the bucket"}).json()["id"]
        body = wait_ended(running, image_id)
        assert body["output_url"].startswith(f"s3://{s3_bucket}/")
        link = body["image_url"]
        assert link.startswith(s3_server.url) and "X-Amz-Signature=" in link
        assert "X-Amz-Expires=150" in link  # 120 s and a step
        fetched = httpx.get(link)  # no credentials, no token
        assert fetched.status_code == 200 and fetched.content[:4] == b"\x89PNG"
        assert httpx.get(body["thumbnail_url"]).status_code == 200
        # The dashboard shows the same links, its Content-Security-Policy allowing the bucket's origin for images.
        page = running.get("/")
        assert f"img-src 'self' data: {s3_server.url}" in page.headers["content-security-policy"]
        assert f'<img src="{s3_server.url}/{s3_bucket}/' in page.text
        # An upload goes to the bucket too, and its id opens the same way.
        upload = running.post("/v1/uploads", content=png()).json()
        with psycopg.connect(url, row_factory=dict_row) as conn:
            row = fetch_image(conn, upload["id"])
        assert row["base64"] is None and row["output_url"].startswith(f"s3://{s3_bucket}/")
        described = running.get(f"/v1/images/{upload['id']}").json()
        assert httpx.get(described["image_url"]).content == png()
    time.sleep(0)  # the daemon and its database are gone

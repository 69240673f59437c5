"""Issue 21 over HTTP: per-owner API keys. Two owners' keys against one daemon (its listener on, images
in moto's S3): each key submits for its own owner and reaches only its own rows on every route (404 for
the other's), lists them newest first, deletes them with their stored image and thumbnail; max_waiting
answers 429 with Retry-After; a revoked key is refused from the next request on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from imagend.db.connect import open_pool
from imagend.db.owners import OwnersRepository

from support.db import wait_until
from support.http_daemon import HttpDaemon, own_database


@pytest.fixture(scope="module")
def module_db(server_url: str, template_db: str) -> Iterator[str]:
    with own_database(server_url, template_db) as url:
        yield url


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    return s3_server.create_bucket("imagend-owners-api")


@pytest.fixture(scope="module")
def daemon(module_db: str, s3_server, bucket: str) -> Iterator[HttpDaemon]:
    with HttpDaemon(module_db, IMAGEND_BACKEND="placeholder", IMAGEND_THUMBNAIL="32",
                    **s3_server.env(bucket, "owned")) as running:
        yield running


@pytest.fixture(scope="module")
def keys(module_db: str, daemon: HttpDaemon) -> dict[str, str]:
    from imagend.config.settings import load_settings

    from support.db import base_env

    settings = load_settings(environ=base_env(module_db), env_file=None)
    with open_pool(module_db, settings) as pool:
        owners = OwnersRepository(pool)
        owners.set_plan("SMALL", {"max_waiting": 2})
        owners.assign("carol", "SMALL")
        return {"alice": owners.create_key("alice"), "bob": owners.create_key("bob"),
                "carol": owners.create_key("carol"), "reader": owners.create_key("alice", ["read"]),
                "doomed": owners.create_key("alice")}


@pytest.fixture
def db(module_db: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with psycopg.connect(module_db, autocommit=True, row_factory=dict_row) as conn:
        yield conn


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def submit(daemon: HttpDaemon, key: str, **body: Any) -> int:
    answer = daemon.client.post("/v1/images", json={"prompt": "owned", **body}, headers=bearer(key))
    assert answer.status_code == 201, (answer.text, daemon.process.output())
    return int(answer.json()["id"])


def done(daemon: HttpDaemon, key: str, image_id: int) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        row: dict[str, Any] = daemon.client.get(f"/v1/images/{image_id}", headers=bearer(key)).json()
        return row if row["status"] in ("ReadyToPublish", "Failed") else None

    return wait_until(finished, 20, 0.05, f"row {image_id}")


def test_each_key_reaches_its_own_rows_only_on_every_route(daemon, keys, db):
    mine = submit(daemon, keys["alice"])
    assert db.execute("SELECT owner FROM images WHERE id = %s", [mine]).fetchone()["owner"] == "alice"
    assert done(daemon, keys["alice"], mine)["status"] == "ReadyToPublish"
    other = bearer(keys["bob"])
    routes = [("GET", f"/v1/images/{mine}"), ("GET", f"/v1/images/{mine}/image"),
              ("GET", f"/v1/images/{mine}/preview"), ("GET", f"/v1/images/{mine}/thumbnail"),
              ("GET", f"/v1/images/{mine}/events"), ("POST", f"/v1/images/{mine}/cancel"),
              ("POST", f"/v1/images/{mine}/retry"), ("DELETE", f"/v1/images/{mine}")]
    for method, path in routes:
        answer = daemon.client.request(method, path, headers=other)
        assert answer.status_code == 404, (method, path, answer.status_code, answer.text)
    assert daemon.client.get(f"/v1/images/{mine}/image", headers=bearer(keys["alice"])).status_code == 200
    # Bob's list has none of Alice's rows; a body naming another owner is refused.
    assert daemon.client.get("/v1/images", headers=other).json()["images"] == []
    refused = daemon.client.post("/v1/images", json={"prompt": "x", "owner": "alice"}, headers=other)
    assert refused.status_code == 403


def test_an_owner_lists_its_rows_newest_first_by_cursor(daemon, keys):
    ids = [submit(daemon, keys["bob"], run_after="2999-01-01T00:00:00Z") for _ in range(5)]
    first = daemon.client.get("/v1/images?limit=3&status=ReadyToGenerate", headers=bearer(keys["bob"])).json()
    assert [row["id"] for row in first["images"]] == ids[::-1][:3]
    rest = daemon.client.get(f"/v1/images?limit=3&cursor={first['next_cursor']}", headers=bearer(keys["bob"])).json()
    assert [row["id"] for row in rest["images"]] == ids[::-1][3:] and rest["next_cursor"] is None
    usage = daemon.client.get("/v1/usage", headers=bearer(keys["bob"]))
    assert usage.status_code == 200 and usage.json()["owner"] == "bob"


def test_delete_removes_the_row_and_its_stored_objects(daemon, keys, db, s3_server, bucket):
    image_id = submit(daemon, keys["alice"])
    row = done(daemon, keys["alice"], image_id)
    stored = db.execute("SELECT output_url, thumbnail_url FROM images WHERE id = %s", [image_id]).fetchone()
    assert stored["output_url"] and stored["thumbnail_url"], row
    objects = {url.split("/", 3)[3] for url in stored.values()}
    assert objects <= s3_server.keys(bucket)
    answer = daemon.client.delete(f"/v1/images/{image_id}", headers=bearer(keys["alice"]))
    assert answer.status_code == 200 and answer.json()["objects_left"] == 0
    assert not objects & s3_server.keys(bucket)
    assert db.execute("SELECT count(*) AS n FROM images WHERE id = %s", [image_id]).fetchone()["n"] == 0


def test_past_max_waiting_the_api_answers_429_with_retry_after(daemon, keys, db):
    for _ in range(2):
        submit(daemon, keys["carol"], run_after="2999-01-01T00:00:00Z")
    answer = daemon.client.post("/v1/images", json={"prompt": "one too many", "run_after": "2999-01-01T00:00:00Z"},
                                headers=bearer(keys["carol"]))
    assert answer.status_code == 429 and int(answer.headers["Retry-After"]) > 0
    assert "max_waiting" in answer.json()["error"]
    assert db.execute("SELECT count(*) AS n FROM images WHERE owner = 'carol'").fetchone()["n"] == 2  # none left


def test_scopes_and_revoked_keys(daemon, keys, module_db):
    assert daemon.client.post("/v1/images", json={"prompt": "x"}, headers=bearer(keys["reader"])).status_code == 403
    assert daemon.client.get("/v1/images", headers=bearer(keys["reader"])).status_code == 200
    assert daemon.client.get("/v1/images", headers=bearer(keys["doomed"])).status_code == 200
    with psycopg.connect(module_db, autocommit=True) as conn:
        conn.execute("UPDATE imagend_api_keys SET revoked_at = now() WHERE prefix = %s", [keys["doomed"][:12]])
    assert daemon.client.get("/v1/images", headers=bearer(keys["doomed"])).status_code == 401
    assert daemon.client.get("/v1/images", headers=bearer("imk_00000000_guessed")).status_code == 401


def test_the_dashboard_shows_owners_and_metrics_count_per_plan(daemon, keys):
    submit(daemon, keys["bob"], run_after="2999-01-01T00:00:00Z")
    page = daemon.client.get("/fragments/live")
    assert page.status_code == 200 and 'id="owners"' in page.text and "bob" in page.text
    metrics = daemon.client.get("/metrics").text
    assert 'imagend_plan_waiting{plan="SMALL"}' in metrics
    assert "alice" not in metrics and "bob" not in metrics  # per plan, never per owner


def test_the_openai_api_takes_an_owner_key_and_queues_for_that_owner(daemon, keys, db):
    answer = daemon.client.post("/v1/images/generations", json={"prompt": "owned through openai", "n": 1},
                                headers=bearer(keys["alice"]), timeout=30)
    assert answer.status_code == 200, answer.text
    row = db.execute("SELECT owner FROM images WHERE prompt = 'owned through openai'").fetchone()
    assert row["owner"] == "alice"
    refused = daemon.client.post("/v1/images/generations", json={"prompt": "x"}, headers=bearer(keys["reader"]))
    assert refused.status_code == 403


def test_the_operator_manages_plans_over_http_and_owner_keys_cannot(daemon, keys, db):
    answer = daemon.client.put("/v1/plans/HTTP_PLAN", json={"max_running": 2, "weight": 2, "is_default": False},
                               headers=daemon.auth)
    assert answer.status_code == 200 and any(p["name"] == "HTTP_PLAN" for p in answer.json()["plans"])
    assert daemon.client.put("/v1/plans/HTTP_PLAN", json={"max_running": 0}, headers=daemon.auth).status_code == 422
    assert daemon.client.put("/v1/owners/dave/plan", json={"plan": "HTTP_PLAN"}, headers=daemon.auth).status_code == 200
    assert daemon.client.put("/v1/owners/dave/plan", json={"plan": "NOPE"}, headers=daemon.auth).status_code == 422
    assert db.execute("SELECT plan FROM imagend_owners WHERE owner = 'dave'").fetchone()["plan"] == "HTTP_PLAN"
    assert daemon.client.get("/v1/plans", headers=bearer(keys["alice"])).status_code == 403
    assert daemon.client.delete("/v1/plans/HTTP_PLAN", headers=bearer(keys["alice"])).status_code == 403
    assert daemon.client.delete("/v1/plans/HTTP_PLAN", headers=daemon.auth).status_code == 200
    assert db.execute("SELECT plan FROM imagend_owners WHERE owner = 'dave'").fetchone()["plan"] is None

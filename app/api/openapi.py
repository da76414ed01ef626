"""The OpenAPI 3.1 document: FastAPI's, with every error response as problem+json."""

from __future__ import annotations

import copy
import json
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.errors import PROBLEM_CONTENT_TYPE

TITLE = "callctl"
# Version of the API document (info.version): bump it when the contract changes.
API_VERSION = "0.1.0"
SUMMARY = "REST-controlled SIP call control"
DESCRIPTION = (
    "callctl places and answers SIP calls on behalf of REST clients and reports "
    "every state change as a signed webhook. Calls follow the SIP.js Session model: "
    "state is one of initial, establishing, established, terminating, terminated.\n\n"
    "Errors are RFC 9457 problem details (`application/problem+json`). When the service "
    "runs with `CALLCTL_API_KEYS`, every `/v1` request needs `Authorization: Bearer <key>`."
)
TAGS: list[dict[str, Any]] = [
    {"name": "calls", "description": "Calls and their events."},
    {"name": "events", "description": "Webhook events: redelivery."},
    {"name": "operations", "description": "Health, readiness and metrics (no auth)."},
    {"name": "webhooks", "description": "Events POSTed to your webhook URL."},
]
LICENSE = {"name": "Apache-2.0", "identifier": "Apache-2.0"}
# FastAPI's own 422 schemas, replaced by ValidationProblem.
_FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")


def _is_error(status: str) -> bool:
    return status[:1] in ("4", "5")


def _fix_operation(operation: dict[str, Any], *, webhook: bool) -> None:
    responses: dict[str, Any] = operation.get("responses", {})
    if webhook:
        # A validation error is not something a webhook receiver answers.
        responses.pop("422", None)
    for status, response in responses.items():
        content = response.get("content")
        if not _is_error(status) or not content or "application/json" not in content:
            continue
        media = content.pop("application/json")
        ref = media.get("schema", {}).get("$ref", "")
        if ref.endswith("/HTTPValidationError"):
            media["schema"] = {"$ref": "#/components/schemas/ValidationProblem"}
        content[PROBLEM_CONTENT_TYPE] = media


def _drop_unused_schemas(document: dict[str, Any]) -> None:
    schemas: dict[str, Any] = document.get("components", {}).get("schemas", {})
    for name in _FASTAPI_VALIDATION_SCHEMAS:
        text = json.dumps({k: v for k, v in document.items() if k != "components"})
        others = json.dumps({k: v for k, v in schemas.items() if k != name})
        if name in schemas and f'/{name}"' not in text + others:
            del schemas[name]


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """The document served at /openapi.json and written to openapi.yaml."""
    document = get_openapi(
        title=TITLE,
        version=app.version,
        openapi_version=app.openapi_version,
        summary=SUMMARY,
        description=DESCRIPTION,
        routes=app.routes,
        webhooks=app.webhooks.routes,
        tags=TAGS,
        license_info=LICENSE,
    )
    for path_item in document.get("paths", {}).values():
        for operation in path_item.values():
            _fix_operation(operation, webhook=False)
    for path_item in document.get("webhooks", {}).values():
        for operation in path_item.values():
            _fix_operation(operation, webhook=True)
    _drop_unused_schemas(document)
    return document


def openapi_yaml(document: dict[str, Any]) -> str:
    """The text of openapi.yaml (``callctl openapi`` prints it; a test compares it)."""
    import yaml

    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)


def install_openapi(app: FastAPI) -> None:
    cache: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if "document" not in cache:
            cache["document"] = build_openapi(app)
        return copy.deepcopy(cache["document"])

    app.openapi = openapi  # type: ignore[method-assign]

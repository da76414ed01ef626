"""Error responses declared in the OpenAPI document (all application/problem+json)."""

from __future__ import annotations

from typing import Any

from app.api.schemas import NotReadyProblem, Problem, ValidationProblem

ResponseSpec = dict[int | str, dict[str, Any]]

UNAUTHORIZED: ResponseSpec = {
    401: {
        "model": Problem,
        "description": "No API key, or not a valid one (only when CALLCTL_API_KEYS is set).",
        "headers": {
            "WWW-Authenticate": {
                "description": "Bearer challenge (RFC 6750).",
                "schema": {"type": "string"},
            }
        },
    }
}
NOT_FOUND: ResponseSpec = {404: {"model": Problem, "description": "No call with this id."}}
INVALID: ResponseSpec = {
    422: {"model": ValidationProblem, "description": "A parameter is invalid."}
}
NOT_READY: ResponseSpec = {
    503: {"model": NotReadyProblem, "description": "A readiness check failed."}
}
EVENT_NOT_FOUND: ResponseSpec = {404: {"model": Problem, "description": "No event with this id."}}
UNAVAILABLE: ResponseSpec = {
    503: {"model": Problem, "description": "The service is starting or stopping."}
}

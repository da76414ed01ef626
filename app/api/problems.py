"""Every error as RFC 9457 ``application/problem+json`` (unknown routes, 405, 422, 500...)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import (
    ABOUT_BLANK,
    PROBLEM_CONTENT_TYPE,
    AppError,
    InvalidRequestError,
    problem,
)


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_CONTENT_TYPE


def problem_response(
    body: Mapping[str, Any], *, headers: Mapping[str, str] | None = None
) -> ProblemResponse:
    return ProblemResponse(dict(body), status_code=int(body["status"]), headers=headers)


def validation_issues(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Pydantic's error list, reduced to {loc, msg, type} with JSON-safe locations."""
    issues: list[dict[str, Any]] = []
    for error in errors:
        loc = [part if isinstance(part, int) else str(part) for part in error.get("loc", ())]
        issues.append({"loc": loc, "msg": str(error.get("msg", "")), "type": error.get("type")})
    return issues


def _summary(issues: Sequence[Mapping[str, Any]]) -> str:
    parts = []
    for issue in issues:
        where = ".".join(str(part) for part in issue["loc"]) or "request"
        parts.append(f"{where}: {issue['msg']}")
    return "; ".join(parts) or "invalid request"


async def _app_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, AppError)
    return problem_response(exc.to_problem(), headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, RequestValidationError)
    issues = validation_issues(exc.errors())
    error = InvalidRequestError(_summary(issues), errors=issues)
    return problem_response(error.to_problem())


async def _http_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        detail = f"no route for {request.method} {request.url.path}"
    elif exc.status_code == 405:
        detail = f"method {request.method} is not allowed on {request.url.path}"
    else:
        detail = str(exc.detail)
    body = problem(exc.status_code, detail, type=ABOUT_BLANK)
    return problem_response(body, headers=exc.headers)


async def _unexpected_error(request: Request, exc: Exception) -> ProblemResponse:
    # Starlette re-raises the exception after this response, so the server logs it once.
    return problem_response(problem(500, "an unexpected error occurred; it has been logged"))


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)

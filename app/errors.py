"""Application errors and their RFC 9457 problem details.

Any layer may raise an :class:`AppError`; the HTTP layer turns it into an
``application/problem+json`` response with the error's status. This module knows
nothing of HTTP frameworks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any, ClassVar

PROBLEM_CONTENT_TYPE = "application/problem+json"
# RFC 9457 §4.2.1: "about:blank" means the problem is just what its HTTP status says.
ABOUT_BLANK = "about:blank"
# Problem types with more meaning than their status; stable identifiers, not links.
PROBLEM_TYPE_PREFIX = "urn:callctl:problem:"


def problem_type(slug: str) -> str:
    return PROBLEM_TYPE_PREFIX + slug


# RFC 9110 names where Python's http module still has the older ones.
_TITLES = {413: "Content Too Large", 422: "Unprocessable Content"}


def status_title(status: int) -> str:
    if status in _TITLES:
        return _TITLES[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem(
    status: int,
    detail: str,
    *,
    type: str = ABOUT_BLANK,
    title: str | None = None,
    extensions: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An RFC 9457 problem object: ``{type, title, status, detail}`` plus extensions."""
    body: dict[str, Any] = {
        "type": type,
        "title": title or status_title(status),
        "status": status,
        "detail": detail,
    }
    for key, value in (extensions or {}).items():
        if key not in body:
            body[key] = value
    return body


class AppError(Exception):
    """Base of the application's errors: an HTTP status, a problem type and a detail."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = ABOUT_BLANK
    title: ClassVar[str | None] = None

    def __init__(
        self,
        detail: str,
        *,
        extensions: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extensions: dict[str, Any] = dict(extensions or {})
        self.headers: dict[str, str] = dict(headers or {})

    def to_problem(self) -> dict[str, Any]:
        return problem(
            self.status,
            self.detail,
            type=self.type,
            title=self.title,
            extensions=self.extensions,
        )


class UnauthorizedError(AppError):
    """401: no API key, or not one of ``CALLCTL_API_KEYS``."""

    status = 401

    def __init__(self, detail: str, *, invalid_token: bool = False) -> None:
        # RFC 6750 §3: the challenge; error="invalid_token" when a key was given but is wrong.
        challenge = 'Bearer realm="callctl"'
        if invalid_token:
            challenge += ', error="invalid_token"'
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


class NotFoundError(AppError):
    status = 404
    type = problem_type("not-found")


class CallNotFoundError(NotFoundError):
    type = problem_type("call-not-found")

    def __init__(self, call_id: str) -> None:
        super().__init__(f"no call with id {call_id!r}", extensions={"call_id": call_id})
        self.call_id = call_id


class InvalidRequestError(AppError):
    """422: the request is well-formed HTTP but its content is not acceptable."""

    status = 422
    type = problem_type("invalid-request")

    def __init__(self, detail: str, *, errors: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(detail, extensions={"errors": [dict(error) for error in errors]})


class InvalidStateError(AppError):
    """409: the action is not allowed in the call's current state or direction."""

    status = 409
    type = problem_type("invalid-state")

    def __init__(self, detail: str, *, state: str, allowed_actions: Sequence[str]) -> None:
        super().__init__(
            detail, extensions={"state": state, "allowed_actions": list(allowed_actions)}
        )


class ServiceUnavailableError(AppError):
    status = 503
    type = problem_type("unavailable")

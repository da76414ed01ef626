"""``POST /v1/calls`` without FastAPI's per-request machinery, for the plain request.

The FastAPI route in :mod:`app.api.actions` stays the definition of dialing: its
OpenAPI operation, its validation and every error it gives. This ASGI middleware sits
in front of it and answers only the request that route would accept without any
question asked: a JSON body that parses and validates as a
:class:`~app.api.action_schemas.DialRequest`, the right API key (when keys are set),
no ``Idempotency-Key``. For that request it does what the route does (the same
``dial_response``), skipping what costs most when the service dials hundreds of calls a
second: routing through every router, FastAPI's dependency solving (``Depends``,
``Header``, the security scheme) and its generic body handling. Measured in isolation
(5,000 requests, uvloop, hot caches) that machinery was ~155 us of CPU per request
against ~14 us for a plain ASGI handler; py-spy put it at ~12 % of the service's CPU at
200 outbound calls per second.

Anything else goes to the app unchanged, with the body it read handed on: another
route or method, a body that is not JSON or does not validate, a missing or wrong key,
an ``Idempotency-Key`` header, a service not running yet. The responses to those are
therefore the generic route's own, by construction.
"""

from __future__ import annotations

import json

from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.datastructures import State
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.action_schemas import DialRequest
from app.api.actions import dial_response, router
from app.api.auth import key_matches
from app.api.problems import problem_response
from app.errors import AppError

PATH = "/v1/calls"
_JSON = b"application/json"


def _create_call_route() -> APIRoute:
    for route in router.routes:
        if isinstance(route, APIRoute) and route.operation_id == "createCall":
            return route
    raise LookupError("the createCall route is not defined")  # pragma: no cover


class DialFastPath:
    """ASGI middleware: plain ``POST /v1/calls`` requests answered directly (see module)."""

    def __init__(self, app: ASGIApp, *, state: State) -> None:
        self.app = app
        self.state = state
        self.route = _create_call_route()
        #: Requests answered here (the others went to the app), for tests.
        self.answered = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        service = getattr(self.state, "call_service", None)
        if service is None or not self._plain_headers(scope["headers"]):
            await self.app(scope, receive, send)
            return
        body, message = await _read_body(receive)
        if message is not None:  # the client went away, or the body was cut short
            await self.app(scope, _replay(body, message, receive), send)
            return
        command = _dial_request(body)
        if command is None:
            await self.app(scope, _replay(body, None, receive), send)
            return
        scope["route"] = self.route  # what the router would set (metrics read it)
        self.answered += 1
        try:
            response = await dial_response(service, self.state.settings, command, None)
        except AppError as exc:  # what the app's AppError handler sends
            response = problem_response(exc.to_problem(), headers=exc.headers)
        await response(scope, receive, send)

    def _plain_headers(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """A JSON body, no Idempotency-Key, and the API key when keys are set."""
        keys: tuple[str, ...] = self.state.api_keys
        content_type = authorization = None
        for name, value in headers:
            if name == b"content-type":
                content_type = value
            elif name == b"authorization":
                authorization = value
            elif name == b"idempotency-key":
                return False
        if content_type != _JSON:
            return False
        if not keys:
            return True
        if authorization is None:
            return False
        scheme, _, credentials = authorization.decode("latin-1").partition(" ")
        return scheme.lower() == "bearer" and bool(credentials) and key_matches(credentials, keys)


async def _read_body(receive: Receive) -> tuple[bytes, Message | None]:
    """The whole request body; with the message that ended it early, if any."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), message
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), None


def _dial_request(body: bytes) -> DialRequest | None:
    """The body as FastAPI would read it (``json.loads``, then the model in Python mode),
    or None when it would not."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    try:
        return DialRequest.model_validate(data)
    except ValidationError:
        return None


def _replay(body: bytes, last: Message | None, receive: Receive) -> Receive:
    """A ``receive`` that gives the body already read, then what came after it."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": last is not None}]
    if last is not None:
        pending.append(last)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay

"""Every error is RFC 9457 application/problem+json: {type, title, status, detail}."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import httpx
import pytest
from fastapi import FastAPI

PROBLEM_KEYS = {"type", "title", "status", "detail"}


def assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = response.json()
    assert PROBLEM_KEYS <= set(body)
    assert body["status"] == status
    assert isinstance(body["detail"], str) and body["detail"]
    return body


@pytest.mark.parametrize("path", ["/nope", "/v1/nope", "/v1/calls/x/y/z", "/v2/calls"])
async def test_unknown_routes_are_404_problems(client: httpx.AsyncClient, path: str) -> None:
    body = assert_problem(await client.get(path), 404)
    assert body["type"] == "about:blank"
    assert body["title"] == "Not Found"
    assert path in str(body["detail"])


async def test_unknown_call_is_a_404_problem_naming_it(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get("/v1/calls/call_missing"), 404)
    assert body["type"] == "urn:callctl:problem:call-not-found"
    assert body["call_id"] == "call_missing"


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/healthz"), ("DELETE", "/v1/calls"), ("PUT", "/v1/calls/call_x")],
)
async def test_wrong_method_is_a_405_problem_with_allow(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    body = assert_problem(await client.request(method, path), 405)
    assert body["title"] == "Method Not Allowed"
    assert method in str(body["detail"])


async def test_405_keeps_the_allow_header(client: httpx.AsyncClient) -> None:
    response = await client.post("/healthz")
    assert "GET" in response.headers["allow"]


@pytest.mark.parametrize(
    ("query", "loc"),
    [
        ("limit=0", ["query", "limit"]),
        ("limit=201", ["query", "limit"]),
        ("limit=ten", ["query", "limit"]),
        ("state=ringing", ["query", "state"]),
        ("direction=sideways", ["query", "direction"]),
    ],
)
async def test_invalid_parameters_are_422_problems_naming_the_field(
    client: httpx.AsyncClient, query: str, loc: list[str]
) -> None:
    body = assert_problem(await client.get(f"/v1/calls?{query}"), 422)
    assert body["type"] == "urn:callctl:problem:invalid-request"
    assert body["title"] == "Unprocessable Content"
    errors = body["errors"]
    assert isinstance(errors, list)
    assert [error["loc"] for error in errors] == [loc]
    assert all(error["msg"] and error["type"] for error in errors)
    assert ".".join(loc) in str(body["detail"])


async def test_two_invalid_parameters_are_both_named(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get("/v1/calls?limit=0&state=x"), 422)
    errors = body["errors"]
    assert isinstance(errors, list)
    assert sorted(tuple(error["loc"]) for error in errors) == [
        ("query", "limit"),
        ("query", "state"),
    ]


async def test_bad_cursor_is_a_422_problem(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get("/v1/calls?cursor=garbage"), 422)
    assert body["errors"] == [
        {
            "loc": ["query", "cursor"],
            "msg": "not a cursor returned by this API",
            "type": "invalid_cursor",
        }
    ]


async def test_negative_after_is_a_422_problem(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get("/v1/calls/call_x/events?after=-1"), 422)
    errors = body["errors"]
    assert isinstance(errors, list)
    assert errors[0]["loc"] == ["query", "after"]


@pytest.fixture
async def crashing_client(
    app: FastAPI, make_client: Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]
) -> AsyncIterator[httpx.AsyncClient]:
    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    async with make_client(app, raise_app_exceptions=False) as client:
        yield client


async def test_unexpected_errors_are_500_problems_without_internals(
    crashing_client: httpx.AsyncClient,
) -> None:
    body = assert_problem(await crashing_client.get("/boom"), 500)
    assert body["title"] == "Internal Server Error"
    assert "secret internals" not in str(body)

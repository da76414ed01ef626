"""Bearer API keys on /v1 only, compared in constant time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import httpx
import pytest
from fastapi import FastAPI

from app.api.auth import key_matches

AppRunner = Callable[..., AbstractAsyncContextManager[FastAPI]]
ClientMaker = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
async def keyed_client(
    run_app: AppRunner, make_client: ClientMaker
) -> AsyncIterator[httpx.AsyncClient]:
    async with run_app(api_keys="alpha-key,beta-key") as app, make_client(app) as client:
        yield client


async def test_open_api_without_keys(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/calls")
    assert response.status_code == 200
    assert response.json() == {"data": [], "next_cursor": None}


async def test_missing_key_is_a_401_problem_with_a_bearer_challenge(
    keyed_client: httpx.AsyncClient,
) -> None:
    response = await keyed_client.get("/v1/calls")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == 'Bearer realm="callctl"'
    body = response.json()
    assert body == {
        "type": "about:blank",
        "title": "Unauthorized",
        "status": 401,
        "detail": "an 'Authorization: Bearer <API key>' header is required",
    }


@pytest.mark.parametrize(
    "header",
    ["Bearer wrong", "Bearer alpha-ke", "Bearer alpha-key2", "Basic YWxwaGEta2V5", "alpha-key"],
)
async def test_wrong_key_or_scheme_is_refused(
    keyed_client: httpx.AsyncClient, header: str
) -> None:
    response = await keyed_client.get("/v1/calls", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["status"] == 401


@pytest.mark.parametrize("key", ["alpha-key", "beta-key"])
async def test_any_configured_key_is_accepted(keyed_client: httpx.AsyncClient, key: str) -> None:
    response = await keyed_client.get("/v1/calls", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200
    assert response.json() == {"data": [], "next_cursor": None}


async def test_wrong_key_says_invalid_token(keyed_client: httpx.AsyncClient) -> None:
    response = await keyed_client.get("/v1/calls", headers={"Authorization": "Bearer nope"})
    assert response.headers["www-authenticate"] == 'Bearer realm="callctl", error="invalid_token"'


async def test_every_v1_route_needs_the_key(keyed_client: httpx.AsyncClient) -> None:
    for path in ("/v1/calls/call_x", "/v1/calls/call_x/events"):
        response = await keyed_client.get(path)
        assert response.status_code == 401, path


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_operational_endpoints_stay_open(keyed_client: httpx.AsyncClient, path: str) -> None:
    response = await keyed_client.get(path)
    assert response.status_code == 200


def test_key_matching() -> None:
    keys = ("alpha", "beta")
    assert key_matches("alpha", keys)
    assert key_matches("beta", keys)
    assert not key_matches("alph", keys)
    assert not key_matches("", keys)
    assert not key_matches("gamma", ())
    assert key_matches("ключ", ("ключ",))

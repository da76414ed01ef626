"""/healthz, /readyz and /metrics: open endpoints, readiness as a list of checks."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import generate_latest

from app.api.readiness import ReadinessChecks
from app.main import create_app
from app.settings import Settings
from app.store.db import Database

AppRunner = Callable[..., AbstractAsyncContextManager[FastAPI]]
ClientMaker = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


async def test_healthz_is_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_checks_the_database(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert {"name": "database", "ok": True, "detail": None} in body["checks"]
    assert all(check["ok"] for check in body["checks"])


async def test_a_failing_check_makes_readyz_a_503_problem(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    async def dependency_down() -> None:
        raise RuntimeError("dependency at 127.0.0.1:1 refused\nsecond line")

    app.state.readiness.add("example", dependency_down)
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 503
    assert body["detail"] == "not ready: example"
    assert {"name": "database", "ok": True, "detail": None} in body["checks"]
    assert body["checks"][-1] == {
        "name": "example",
        "ok": False,
        "detail": "dependency at 127.0.0.1:1 refused",
    }


async def test_the_database_check_fails_when_the_database_is_unreachable() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    # A closed loopback port: refused at once (see tests/store/test_store_db.py).
    database = Database.from_url(f"postgresql+asyncpg://u@127.0.0.1:{closed_port}/db")
    checks = ReadinessChecks()
    checks.add("database", database.ping)
    try:
        [outcome] = await checks.run()
    finally:
        await database.dispose()
    assert (outcome.name, outcome.ok) == ("database", False)
    assert outcome.detail is not None
    assert "Connect call failed" in outcome.detail


async def test_slow_checks_time_out() -> None:
    checks = ReadinessChecks(timeout=0.01)
    never = asyncio.Event()

    async def hangs() -> None:
        await never.wait()

    checks.add("hangs", hangs)
    [outcome] = await checks.run()
    assert outcome.ok is False
    assert outcome.detail == "no answer within 0.01s"


async def test_no_checks_means_not_ready() -> None:
    [outcome] = await ReadinessChecks().run()
    assert (outcome.name, outcome.ok) == ("startup", False)


def test_a_check_name_is_registered_once() -> None:
    checks = ReadinessChecks()

    async def fine() -> None:
        return None

    checks.add("database", fine)
    with pytest.raises(ValueError, match="already registered"):
        checks.add("database", fine)
    checks.remove("database")
    assert checks.names == ()


async def test_checks_are_removed_when_the_app_stops(run_app: AppRunner) -> None:
    async with run_app() as app:
        assert "database" in app.state.readiness.names
        assert app.state.database is not None
    assert app.state.readiness.names == ()
    assert app.state.database is None


async def test_metrics_are_prometheus_text_by_route_template(
    client: httpx.AsyncClient,
) -> None:
    await client.get("/healthz")
    await client.get("/v1/calls/call_does_not_exist")
    await client.get("/no/such/path/123")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'callctl_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text
    assert (
        'callctl_http_requests_total{method="GET",route="/v1/calls/{call_id}",status="404"} 1.0'
        in text
    )
    assert 'route="<unmatched>",status="404"} 1.0' in text
    assert "/no/such/path" not in text
    assert "callctl_http_request_duration_seconds_bucket" in text


async def test_each_app_has_its_own_registry(
    settings: Settings, run_app: AppRunner, make_client: ClientMaker
) -> None:
    idle = create_app(settings)
    async with run_app() as app, make_client(app) as client:
        await client.get("/healthz")
    assert idle.state.metrics_registry is not app.state.metrics_registry
    assert b'route="/healthz"' in generate_latest(app.state.metrics_registry)
    assert b'route="/healthz"' not in generate_latest(idle.state.metrics_registry)


async def test_sip_trace_setting_turns_the_trace_on(run_app: Any) -> None:
    async with run_app() as app:
        assert app.state.sip_trace is None
    async with run_app(sip_trace=True) as app:
        assert app.state.sip_trace is not None and app.state.sip_trace.log_messages

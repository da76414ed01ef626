"""HTTP metrics on the app's own CollectorRegistry, and the ASGI middleware feeding them."""

from __future__ import annotations

import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Requests that matched no route share one label value: unknown paths must not create
# one time series each.
UNMATCHED_ROUTE = "<unmatched>"


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpMetrics:
    requests: Counter
    duration: Histogram

    @classmethod
    def register(cls, registry: CollectorRegistry) -> HttpMetrics:
        return cls(
            requests=Counter(
                "callctl_http_requests",
                "HTTP requests answered, by method, route template and status.",
                ("method", "route", "status"),
                registry=registry,
            ),
            duration=Histogram(
                "callctl_http_request_duration_seconds",
                "Time to answer an HTTP request, by method and route template.",
                ("method", "route"),
                registry=registry,
            ),
        )


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template (``/v1/calls/{call_id}``)."""

    def __init__(self, app: ASGIApp, *, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED_ROUTE
            method = str(scope.get("method", "GET"))
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.duration.labels(method, template).observe(time.perf_counter() - started)

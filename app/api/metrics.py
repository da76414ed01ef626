"""HTTP metrics on the app's own CollectorRegistry, the ASGI middleware feeding them, and
the admission control's figures (read when scraped)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.calls.admission import AdmissionControl

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


class AdmissionCollector(Collector):
    """Sheds, overload signals and admitted fraction of an :class:`AdmissionControl`.

    Read from its plain counters at scrape time, so that refusing a call costs no more
    than an integer increment.
    """

    def __init__(self, admission: AdmissionControl) -> None:
        self.admission = admission

    def collect(self) -> Iterable[Metric]:
        admission = self.admission
        shed = CounterMetricFamily(
            "callctl_calls_shed",
            "New calls refused with 503 (INVITE) or a 503 problem (POST /v1/calls), "
            "by source (sip, api) and reason (overload, max_calls).",
            labels=("source", "reason"),
        )
        for (source, reason), count in sorted(admission.shed.items()):
            shed.add_metric((source, reason), count)
        yield shed
        yield GaugeMetricFamily(
            "callctl_event_loop_lag_seconds",
            "How late the event loop runs a timer, smoothed (an overload signal).",
            value=admission.lag,
        )
        yield GaugeMetricFamily(
            "callctl_write_backlog",
            "Call changes queued for the database at the last sample (an overload signal).",
            value=admission.writes_queued,
        )
        yield GaugeMetricFamily(
            "callctl_webhook_backlog",
            "Webhook events not yet delivered, deliveries under way and outcomes not yet "
            "recorded, at the last sample (an overload signal).",
            value=admission.webhooks_queued,
        )
        yield GaugeMetricFamily(
            "callctl_dials_in_progress",
            "POST /v1/calls requests being placed, at the last sample (an overload signal).",
            value=admission.dialing,
        )
        yield GaugeMetricFamily(
            "callctl_admitted_fraction",
            "Share of new calls admitted now (1: no load shedding).",
            value=admission.admitted_fraction,
        )

    def describe(self) -> Iterable[Metric]:
        return self.collect()

"""Operational endpoints: liveness, readiness, Prometheus metrics (no auth)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from app.api.problems import ProblemResponse, problem_response
from app.api.readiness import ReadinessChecks
from app.api.responses import NOT_READY
from app.api.schemas import CheckResult, Health, Readiness
from app.errors import problem, problem_type

router = APIRouter(tags=["operations"])


@router.get(
    "/healthz",
    operation_id="getHealth",
    summary="Liveness",
    description="200 while the process runs and serves HTTP.",
    response_model=Health,
)
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    operation_id="getReadiness",
    summary="Readiness",
    description="200 when every readiness check passes (database reachable, ...), else 503.",
    response_model=Readiness,
    responses=NOT_READY,
)
async def readyz(request: Request) -> Readiness | ProblemResponse:
    checks: ReadinessChecks = request.app.state.readiness
    outcomes = [
        CheckResult(name=item.name, ok=item.ok, detail=item.detail) for item in await checks.run()
    ]
    if all(item.ok for item in outcomes):
        return Readiness(status="ready", checks=outcomes)
    failing = ", ".join(item.name for item in outcomes if not item.ok)
    body = problem(
        503,
        f"not ready: {failing}",
        type=problem_type("not-ready"),
        extensions={"checks": [item.model_dump() for item in outcomes]},
    )
    return problem_response(body)


@router.get(
    "/metrics",
    operation_id="getMetrics",
    summary="Prometheus metrics",
    description="Metrics in the Prometheus text exposition format.",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

"""Readiness: a list of named checks that the lifespan extends as it starts parts.

The database adds its check when it opens; the SIP endpoint adds "sip" once its
transports are bound; ``GET /readyz`` runs them all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

# A check returns when fine and raises when not; its message becomes the detail.
Check = Callable[[], Awaitable[None]]
# Longer than this and the check counts as failed: a hung dependency is not ready.
CHECK_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckOutcome:
    name: str
    ok: bool
    detail: str | None = None


class ReadinessChecks:
    def __init__(self, *, timeout: float = CHECK_TIMEOUT_S) -> None:
        self._checks: dict[str, Check] = {}
        self._timeout = timeout

    def add(self, name: str, check: Check) -> None:
        if name in self._checks:
            raise ValueError(f"readiness check {name!r} is already registered")
        self._checks[name] = check

    def remove(self, name: str) -> None:
        self._checks.pop(name, None)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._checks)

    async def _run_one(self, name: str, check: Check) -> CheckOutcome:
        try:
            await asyncio.wait_for(check(), timeout=self._timeout)
        except TimeoutError:
            return CheckOutcome(name=name, ok=False, detail=f"no answer within {self._timeout}s")
        except Exception as exc:  # any failure means "not ready", never a 500
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return CheckOutcome(name=name, ok=False, detail=text[:300])
        return CheckOutcome(name=name, ok=True)

    async def run(self) -> list[CheckOutcome]:
        """Every check, concurrently; no checks at all means not ready (nothing started)."""
        if not self._checks:
            return [CheckOutcome(name="startup", ok=False, detail="the service has not started")]
        return list(
            await asyncio.gather(
                *(self._run_one(name, check) for name, check in self._checks.items())
            )
        )

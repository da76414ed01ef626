"""Graceful shutdown (SIGTERM): stop taking calls, let live ones finish, end the rest.

The order, each step bounded:

1. new INVITEs get 503 with Retry-After (RFC 3261 §21.5.4) from the gate in front of the
   UA, ``POST /v1/calls`` gets a 503 problem, ``/readyz`` fails (load balancers move on);
   in-dialog requests and actions on live calls (bye, hangup, ...) go on;
2. live calls get ``drain_seconds`` to end by themselves (either side hangs up);
3. the rest are ended by the UA (BYE, CANCEL, 503: cause ``shutdown``, by ``system``) and
   their ends are written with their ``call.ended``;
4. then the lifespan stops the parts in reverse order: the SIP sockets close, the webhook
   dispatcher flushes the outbox as far as the receivers allow, the database closes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Protocol

from app.calls.service import CallService

log = logging.getLogger(__name__)

#: Seconds given to the writers to commit the ends the UA reported at step 3.
END_WRITE_GRACE = 10.0


class InviteGate(Protocol):
    """Refuses new INVITEs (``app.ua.recovery.RecoveryAgent``)."""

    def refuse_new_invites(self, retry_after: int) -> None: ...


class Closable(Protocol):
    """Ends every live session (``app.ua.UserAgent``)."""

    async def close(self) -> None: ...


def retry_after_for(drain_seconds: float) -> int:
    """What new callers are told to wait: about the drain plus a restart."""
    return max(1, math.ceil(drain_seconds))


@dataclass(slots=True, kw_only=True)
class GracefulShutdown:
    service: CallService
    drain_seconds: float
    gate: InviteGate | None = None
    user_agent: Closable | None = None
    draining: bool = False
    done: bool = False

    async def run(self) -> None:
        """Steps 1-3 above; step 4 is the lifespan's exit."""
        if self.draining:
            return
        self.draining = True
        log.info("draining: no new calls; live calls get %gs to finish", self.drain_seconds)
        if self.gate is not None:
            self.gate.refuse_new_invites(retry_after_for(self.drain_seconds))
        left = await self.service.drain(within=self.drain_seconds)
        if left and self.user_agent is not None:
            log.info("drain over: ending %d call(s) still live", left)
        if self.user_agent is not None:
            await self.user_agent.close()
        await self.service.drain(within=END_WRITE_GRACE)
        self.done = True
        log.info("drained")

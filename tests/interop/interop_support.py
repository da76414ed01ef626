"""Shared pieces of the interop tests (a module, because test files cannot import conftest)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from app.sip.endpoint import EndpointConfig
from app.sip.events import Event

#: Upper bound for waiting on one event (a failure bound, not a timing assertion).
EVENT_WAIT = 10.0

#: What our endpoint advertises in these tests (checked by the scenarios and the tests).
ENDPOINT_CONFIG = EndpointConfig(
    allowed_methods=("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO", "UPDATE"),
    supported=("replaces", "timer"),
    accept=("application/sdp",),
    user_agent="callctl-interop",
)


@dataclass
class RecordingTU:
    """Keeps every event; the interop cases are all answered by the endpoint itself."""

    events: list[Event] = field(default_factory=list)
    queue: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)

    def handle_event(self, event: Event) -> None:
        self.events.append(event)
        self.queue.put_nowait(event)

    async def next(self, kind: type[Event]) -> Event:
        while True:
            event = await asyncio.wait_for(self.queue.get(), EVENT_WAIT)
            if isinstance(event, kind):
                return event

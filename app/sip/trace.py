"""SIP trace: a bounded, sans-IO record of the messages an endpoint received and sent.

Each record keeps time (the ``now`` the endpoint was given), direction, peer, transport,
Call-ID, top Via branch, the start line and the raw bytes.  Records are kept per Call-ID
in a ring buffer; the number of Call-IDs is bounded too (least recently touched goes
first), so a flood of garbage cannot grow memory without limit.  The call API shows
``for_call(call_id)``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeAlias

from app.sip.errors import SipParseError
from app.sip.message import Request, Response

trace_log = logging.getLogger("app.sip.trace")

Addr: TypeAlias = tuple[str, int]

# Defaults: a call rarely has more than ~50 messages (INVITE, provisionals, retransmits,
# re-INVITEs, BYE); 10,000 Call-IDs at a few KiB each stays in the tens of MiB.
DEFAULT_PER_CALL = 100
DEFAULT_MAX_CALLS = 10_000
# Records of messages without a usable Call-ID (garbage) go under this key.
NO_CALL_ID = ""


class Direction(StrEnum):
    IN = "in"
    OUT = "out"


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceRecord:
    time: float
    direction: Direction
    peer: Addr
    transport: str
    call_id: str | None
    branch: str | None
    start_line: str
    data: bytes


def _first_line(data: bytes) -> str:
    line = data.split(b"\r\n", 1)[0]
    return line[:200].decode("utf-8", "replace")


def describe(message: Request | Response | None) -> tuple[str | None, str | None]:
    """(Call-ID, top Via branch) of ``message``, None where missing or unparseable."""
    if message is None:
        return None, None
    try:
        call_id: str | None = message.call_id
    except SipParseError:
        call_id = None
    try:
        branch = message.top_via.branch
    except SipParseError:
        branch = None
    return call_id, branch


class SipTrace:
    """Ring buffers of ``TraceRecord`` per Call-ID."""

    def __init__(
        self,
        *,
        per_call: int = DEFAULT_PER_CALL,
        max_calls: int = DEFAULT_MAX_CALLS,
        log_messages: bool = False,
    ) -> None:
        if per_call < 1 or max_calls < 1:
            raise ValueError("per_call and max_calls must be positive")
        # CALLCTL_SIP_TRACE: also write every message, whole, to the "app.sip.trace" logger.
        self.log_messages = log_messages
        self.per_call = per_call
        self.max_calls = max_calls
        self._calls: OrderedDict[str, deque[TraceRecord]] = OrderedDict()

    def record(
        self,
        *,
        time: float,
        direction: Direction,
        peer: Addr,
        transport: str,
        data: bytes,
        message: Request | Response | None = None,
    ) -> TraceRecord:
        """Add one record; ``message`` (when parsed) supplies Call-ID and branch."""
        call_id, branch = describe(message)
        rec = TraceRecord(
            time=time,
            direction=direction,
            peer=peer,
            transport=transport,
            call_id=call_id,
            branch=branch,
            start_line=_first_line(data),
            data=data,
        )
        key = call_id if call_id is not None else NO_CALL_ID
        ring = self._calls.get(key)
        if ring is None:
            ring = deque(maxlen=self.per_call)
            self._calls[key] = ring
            while len(self._calls) > self.max_calls:
                self._calls.popitem(last=False)
        else:
            self._calls.move_to_end(key)
        ring.append(rec)
        if self.log_messages:
            trace_log.info(
                "%s %s %s:%d\n%s",
                "<<" if direction is Direction.IN else ">>",
                transport,
                peer[0],
                peer[1],
                data.decode("utf-8", "replace"),
                extra={"call_id": call_id, "branch": branch, "peer": f"{peer[0]}:{peer[1]}"},
            )
        return rec

    def for_call(self, call_id: str) -> list[TraceRecord]:
        """The records of ``call_id``, oldest first (empty when unknown or evicted)."""
        ring = self._calls.get(call_id)
        return list(ring) if ring is not None else []

    def forget(self, call_id: str) -> None:
        self._calls.pop(call_id, None)

    def call_ids(self) -> Iterator[str]:
        return iter(list(self._calls))

    def __len__(self) -> int:
        return len(self._calls)

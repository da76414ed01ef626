"""Test harness: two SipEndpoints wired by an in-memory link, and a fake clock.

``Link`` carries every ``Outgoing`` of one endpoint to the other at the current fake time,
records it on ``wire`` (time, sender, parsed message, dropped or not), and can lose chosen
messages: by their index on the wire, by a predicate, or the first ``n`` matching one.
``step()`` moves the clock to the earliest timer of either endpoint and fires it; nothing
ever sleeps.  Events each endpoint produces are collected in ``events[side]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from app.sip.endpoint import EndpointConfig, SipEndpoint
from app.sip.events import Event
from app.sip.headers import CSeq
from app.sip.message import Headers, Message, Request, Response
from app.sip.parser import parse_message
from app.sip.timers import TimerConfig

E = TypeVar("E")

UAC_ADDR = ("127.0.0.1", 5061)
UAS_ADDR = ("127.0.0.2", 5062)
SIDES = ("uac", "uas")


@dataclass
class Wire:
    """One message put on the link."""

    index: int
    time: float
    src: str  # "uac" or "uas"
    dst: str
    transport: str
    data: bytes
    message: Message
    dropped: bool = False

    @property
    def method(self) -> str | None:
        """Request method, or for a response the CSeq method."""
        if isinstance(self.message, Request):
            return self.message.method
        return self.message.cseq.method

    @property
    def status(self) -> int | None:
        return self.message.status if isinstance(self.message, Response) else None

    @property
    def is_request(self) -> bool:
        return isinstance(self.message, Request)


Predicate = Callable[[Wire], bool]


@dataclass
class _DropRule:
    predicate: Predicate
    remaining: int | None  # None: every match


@dataclass
class FakeClock:
    now: float = 0.0


def make_config(side: str, transport: str, **overrides: object) -> EndpointConfig:
    host, port = UAC_ADDR if side == "uac" else UAS_ADDR
    values: dict[str, object] = {
        "local_host": host,
        "local_port": port,
        "transports": ("udp", "tcp"),
        "timers": TimerConfig(t1=0.5, t2=4.0, t4=5.0),
        "user_agent": f"test-{side}",
    }
    values.update(overrides)
    return EndpointConfig(**values)  # type: ignore[arg-type]


@dataclass
class Link:
    transport: str = "UDP"
    uac_config: EndpointConfig | None = None
    uas_config: EndpointConfig | None = None
    clock: FakeClock = field(default_factory=FakeClock)
    wire: list[Wire] = field(default_factory=list)
    events: dict[str, list[Event]] = field(default_factory=lambda: {"uac": [], "uas": []})

    def __post_init__(self) -> None:
        self.uac = SipEndpoint(self.uac_config or make_config("uac", self.transport))
        self.uas = SipEndpoint(self.uas_config or make_config("uas", self.transport))
        self._rules: list[_DropRule] = []
        self._drop_indices: set[int] = set()

    # -- addressing ------------------------------------------------------------------------

    def endpoint(self, side: str) -> SipEndpoint:
        return self.uac if side == "uac" else self.uas

    @staticmethod
    def addr(side: str) -> tuple[str, int]:
        return UAC_ADDR if side == "uac" else UAS_ADDR

    @staticmethod
    def side_of(addr: tuple[str, int]) -> str:
        if addr == UAC_ADDR:
            return "uac"
        if addr == UAS_ADDR:
            return "uas"
        raise AssertionError(f"message sent to an address nobody listens on: {addr}")

    # -- loss --------------------------------------------------------------------------------

    def drop_index(self, *indices: int) -> None:
        """Lose the messages that will get these wire indices."""
        self._drop_indices.update(indices)

    def drop(self, predicate: Predicate, count: int | None = None) -> None:
        """Lose messages matching ``predicate``: the next ``count`` of them, or all."""
        self._rules.append(_DropRule(predicate, count))

    def _should_drop(self, w: Wire) -> bool:
        if w.index in self._drop_indices:
            return True
        for rule in self._rules:
            if rule.remaining == 0 or not rule.predicate(w):
                continue
            if rule.remaining is not None:
                rule.remaining -= 1
            return True
        return False

    # -- time and delivery ---------------------------------------------------------------------

    @property
    def now(self) -> float:
        return self.clock.now

    def inject(
        self, side: str, data: bytes, src: tuple[str, int], transport: str | None = None
    ) -> None:
        """Deliver raw bytes to ``side`` as if from ``src`` (then pump)."""
        self.endpoint(side).receive(data, src, transport or self.transport, self.now)
        self.pump()

    def pump(self) -> None:
        """Carry messages back and forth until both endpoints are quiet (no time passes)."""
        for _ in range(10_000):
            moved = False
            for side in SIDES:
                ep = self.endpoint(side)
                self._collect(side)
                for out in ep.outgoing():
                    moved = True
                    dst = self.side_of(out.addr)
                    w = Wire(
                        index=len(self.wire),
                        time=self.now,
                        src=side,
                        dst=dst,
                        transport=out.transport,
                        data=out.data,
                        message=parse_message(out.data),
                    )
                    w.dropped = self._should_drop(w)
                    self.wire.append(w)
                    if not w.dropped:
                        self.endpoint(dst).receive(
                            out.data, self.addr(side), out.transport, self.now
                        )
                self._collect(side)
            if not moved:
                return
        raise AssertionError("link did not settle")

    def _collect(self, side: str) -> None:
        ep = self.endpoint(side)
        while (ev := ep.next_event()) is not None:
            self.events[side].append(ev)

    def next_deadline(self) -> float | None:
        deadlines = [d for d in (self.uac.get_timer(), self.uas.get_timer()) if d is not None]
        return min(deadlines) if deadlines else None

    def step(self) -> bool:
        """Advance to the next timer, fire it, pump; False when no timer is armed."""
        deadline = self.next_deadline()
        if deadline is None:
            return False
        self.clock.now = max(self.clock.now, deadline)
        for side in SIDES:
            self.endpoint(side).handle_timer(self.now)
        self.pump()
        return True

    def run_until(self, t: float) -> None:
        """Fire every timer due up to ``t``, then set the clock to ``t``."""
        while (deadline := self.next_deadline()) is not None and deadline <= t:
            self.step()
        self.clock.now = max(self.clock.now, t)

    def run(self, limit: float = 1000.0) -> None:
        """Step until no timer is left (or the clock passes ``limit``)."""
        while (deadline := self.next_deadline()) is not None and deadline <= limit:
            self.step()

    # -- inspection ------------------------------------------------------------------------------

    def sent(self, src: str, predicate: Predicate | None = None) -> list[Wire]:
        return [w for w in self.wire if w.src == src and (predicate is None or predicate(w))]

    def times(self, src: str, predicate: Predicate) -> list[float]:
        return [w.time for w in self.sent(src, predicate)]

    def take(self, side: str, kind: type[E]) -> list[E]:
        """Remove and return the collected events of ``kind`` for ``side``."""
        found: list[E] = [e for e in self.events[side] if isinstance(e, kind)]
        self.events[side] = [e for e in self.events[side] if not isinstance(e, kind)]
        return found

    def kinds(self, side: str) -> list[str]:
        return [type(e).__name__ for e in self.events[side]]


def is_method(method: str, *, request: bool = True) -> Predicate:
    def pred(w: Wire) -> bool:
        return w.is_request == request and w.method == method

    return pred


def is_status(status: int, method: str | None = None) -> Predicate:
    def pred(w: Wire) -> bool:
        return w.status == status and (method is None or w.method == method)

    return pred


_COUNTER = [0]


def new_request(
    method: str,
    *,
    to_side: str = "uas",
    from_side: str = "uac",
    cseq: int = 1,
    call_id: str | None = None,
    from_tag: str = "fromtag1",
    to_tag: str | None = None,
    body: bytes = b"",
    extra: list[tuple[str, str]] | None = None,
) -> Request:
    """An out-of-dialog (or, with ``to_tag``, in-dialog) request without Via."""
    _COUNTER[0] += 1
    to_host, to_port = Link.addr(to_side)
    from_host, from_port = Link.addr(from_side)
    h = Headers()
    h.add("From", f"<sip:alice@{from_host}>;tag={from_tag}")
    to = f"<sip:bob@{to_host}:{to_port}>"
    if to_tag:
        to += f";tag={to_tag}"
    h.add("To", to)
    h.add("Call-ID", call_id or f"call-{_COUNTER[0]}@test")
    h.add("CSeq", str(CSeq(cseq, method)))
    h.add("Contact", f"<sip:alice@{from_host}:{from_port}>")
    for name, value in extra or ():
        h.add(name, value)
    if body:
        h.add("Content-Type", "application/sdp")
    return Request(method=method, uri=f"sip:bob@{to_host}:{to_port}", headers=h, body=body)

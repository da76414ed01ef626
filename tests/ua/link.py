"""Test harness: user agents over SipEndpoints wired by an in-memory link, with a fake clock.

Each side ("a", "b") has its own ``SipEndpoint`` and a ``LinkCore`` implementing the UA's
``SipCore`` on the shared fake clock. A side either has a ``UserAgent`` (events go to
``ua.handle_event``) or is *raw* (events are collected in ``link.events[side]`` and the
test answers through ``link.core(side)`` by hand, e.g. to play a forking proxy).

Sending never delivers at once: like a socket, it schedules a pump on the event loop.
``await link.settle()`` pumps and yields until no message is in flight and no UA has
queued work. ``await link.step()`` / ``advance(seconds)`` / ``run_until(t)`` move the
fake clock to the next deadline (endpoint timers and UA timers alike) and fire it.
Nothing ever sleeps.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from app.sip.aio.target import Target, select_target
from app.sip.endpoint import Addr, EndpointConfig, SipEndpoint
from app.sip.events import Event
from app.sip.message import Message, Request, Response
from app.sip.parser import parse_message
from app.sip.timers import TimerConfig
from app.sip.transactions.keys import ClientTransactionId, ServerTransactionId
from app.ua import (
    Session,
    SessionDelegate,
    SessionDescriptionHandlerFactory,
    SessionEnd,
    SessionState,
    UserAgent,
    UserAgentConfig,
    UserAgentDelegate,
)
from app.ua.invitation import Invitation

E = TypeVar("E")

ADDRS: dict[str, Addr] = {"a": ("127.0.0.1", 5070), "b": ("127.0.0.2", 5080)}
T1 = 0.5


@dataclass
class Wire:
    """One message put on the link."""

    index: int
    time: float
    src: str
    dst: str
    transport: str
    data: bytes
    message: Message
    dropped: bool = False

    @property
    def method(self) -> str:
        """Request method, or for a response its CSeq method."""
        if isinstance(self.message, Request):
            return self.message.method
        return self.message.cseq.method

    @property
    def status(self) -> int | None:
        return self.message.status if isinstance(self.message, Response) else None

    @property
    def is_request(self) -> bool:
        return isinstance(self.message, Request)

    def __repr__(self) -> str:
        what = self.method if self.is_request else f"{self.status} ({self.method})"
        drop = " DROPPED" if self.dropped else ""
        return f"<#{self.index} t={self.time:g} {self.src}->{self.dst} {what}{drop}>"


Predicate = Callable[[Wire], bool]


def request(method: str) -> Predicate:
    return lambda w: w.is_request and w.method == method


def response(status: int, method: str | None = None) -> Predicate:
    return lambda w: w.status == status and (method is None or w.method == method)


@dataclass
class _DropRule:
    predicate: Predicate
    remaining: int | None


@dataclass(order=True)
class FakeTimer:
    deadline: float
    seq: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class LinkCore:
    """``SipCore`` of one side of the link."""

    def __init__(self, link: Link, side: str) -> None:
        self.link = link
        self.side = side
        self._endpoint = SipEndpoint(
            EndpointConfig(
                local_host=ADDRS[side][0],
                local_port=ADDRS[side][1],
                transports=("udp", "tcp"),
                timers=TimerConfig(t1=T1, t2=4.0, t4=5.0),
                user_agent=f"test-{side}",
            )
        )

    @property
    def endpoint(self) -> SipEndpoint:
        return self._endpoint

    def send_request(
        self, request: Request, dest: Addr | None = None, transport: str | None = None
    ) -> ClientTransactionId:
        target = select_target(request)
        tx = self._endpoint.send_request(
            request, dest or target.addr, transport or target.transport, self.link.now
        )
        self.link.kick()
        return tx

    def send_cancel(
        self, invite_tx: ClientTransactionId, *, reason: str | None = None
    ) -> ClientTransactionId | None:
        tx = self._endpoint.send_cancel(invite_tx, self.link.now, reason=reason)
        self.link.kick()
        return tx

    def send_response(self, server_tx: ServerTransactionId, response: Response) -> None:
        self._endpoint.send_response(server_tx, response, self.link.now)
        self.link.kick()

    def send_stateless(self, msg: Message, dest: Addr, transport: str) -> None:
        self._endpoint.send_stateless(msg, dest, transport, self.link.now)
        self.link.kick()

    async def resolve(self, request: Request) -> Target:
        self.link.resolved.append(request)
        return select_target(request)

    def now(self) -> float:
        return self.link.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        return self.link.add_timer(self.link.now + delay, callback)


class Link:
    """Two sides, one wire, one fake clock."""

    def __init__(self) -> None:
        self.now = 0.0
        self.wire: list[Wire] = []
        self.cores = {side: LinkCore(self, side) for side in ADDRS}
        self.uas: dict[str, UserAgent] = {}
        self.events: dict[str, list[Event]] = {side: [] for side in ADDRS}
        self.resolved: list[Request] = []
        self._timers: list[FakeTimer] = []
        self._seq = itertools.count()
        self._rules: list[_DropRule] = []
        self._kicked = False

    # -- set-up ------------------------------------------------------------------------

    def core(self, side: str) -> LinkCore:
        return self.cores[side]

    def endpoint(self, side: str) -> SipEndpoint:
        return self.cores[side].endpoint

    def add_ua(
        self,
        side: str,
        sdh_factory: SessionDescriptionHandlerFactory,
        delegate: UserAgentDelegate | None = None,
        **config: Any,
    ) -> UserAgent:
        host, port = ADDRS[side]
        values: dict[str, Any] = {"contact_host": host, "contact_port": port, "t1": T1}
        values.update(config)
        ua = UserAgent(self.cores[side], UserAgentConfig(**values), sdh_factory, delegate)
        self.uas[side] = ua
        return ua

    # -- timers --------------------------------------------------------------------------

    def add_timer(self, deadline: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(deadline, next(self._seq), callback)
        heapq.heappush(self._timers, timer)
        return timer

    def _next_ua_timer(self) -> float | None:
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0].deadline if self._timers else None

    def next_deadline(self) -> float | None:
        found = [self.endpoint(side).get_timer() for side in ADDRS]
        found.append(self._next_ua_timer())
        deadlines = [d for d in found if d is not None]
        return min(deadlines) if deadlines else None

    def _fire_due(self) -> None:
        for side in ADDRS:
            self.endpoint(side).handle_timer(self.now)
        while self._timers and self._timers[0].deadline <= self.now:
            timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.callback()
        self.pump()

    async def step(self) -> bool:
        """Settle, move to the next deadline, fire everything due, settle again."""
        await self.settle()
        deadline = self.next_deadline()
        if deadline is None:
            return False
        self.now = max(self.now, deadline)
        self._fire_due()
        await self.settle()
        return True

    async def run_until(self, t: float) -> None:
        """Fire every deadline up to ``t`` (in order), then set the clock to ``t``."""
        await self.settle()
        while (deadline := self.next_deadline()) is not None and deadline <= t:
            await self.step()
        self.now = max(self.now, t)
        await self.settle()

    async def advance(self, seconds: float) -> None:
        await self.run_until(self.now + seconds)

    # -- the wire ------------------------------------------------------------------------

    def drop(self, predicate: Predicate, count: int | None = None) -> None:
        """Lose the next ``count`` messages matching ``predicate`` (all when None)."""
        self._rules.append(_DropRule(predicate, count))

    def _should_drop(self, w: Wire) -> bool:
        for rule in self._rules:
            if rule.remaining == 0 or not rule.predicate(w):
                continue
            if rule.remaining is not None:
                rule.remaining -= 1
            return True
        return False

    def kick(self) -> None:
        """Something was sent: pump soon (never inside the sender's call)."""
        if not self._kicked:
            self._kicked = True
            asyncio.get_running_loop().call_soon(self._kicked_pump)

    def _kicked_pump(self) -> None:
        self._kicked = False
        self.pump()

    @staticmethod
    def side_of(addr: Addr) -> str:
        for side, known in ADDRS.items():
            if known == addr:
                return side
        raise AssertionError(f"message to an address nobody listens on: {addr}")

    def pump(self) -> None:
        """Carry messages and hand events over until both endpoints are quiet."""
        for _ in range(10_000):
            moved = False
            for side in ADDRS:
                moved |= self._drain_events(side)
                for out in self.endpoint(side).outgoing():
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
                        self.endpoint(dst).receive(out.data, ADDRS[side], out.transport, self.now)
            if not moved:
                return
        raise AssertionError("link did not settle")

    def _drain_events(self, side: str) -> bool:
        ep = self.endpoint(side)
        moved = False
        while (event := ep.next_event()) is not None:
            moved = True
            ua = self.uas.get(side)
            if ua is not None:
                ua.handle_event(event)
            else:
                self.events[side].append(event)
        return moved

    def inject(self, side: str, msg: Message, src: Addr | None = None) -> None:
        """Deliver ``msg`` to ``side`` as if the other side had sent it."""
        other = "b" if side == "a" else "a"
        self.endpoint(side).receive(msg.to_bytes(), src or ADDRS[other], "UDP", self.now)
        self.pump()

    def _busy(self) -> bool:
        return self._kicked or any(ua.busy for ua in self.uas.values())

    async def settle(self) -> None:
        """Pump and let the UAs' tasks run until nothing moves any more."""
        quiet = 0
        for _ in range(50_000):
            self.pump()
            await asyncio.sleep(0)
            if self._busy():
                quiet = 0
                continue
            quiet += 1
            if quiet >= 3:
                return
        raise AssertionError("user agents did not settle")

    # -- inspection ----------------------------------------------------------------------

    def sent(self, src: str, predicate: Predicate | None = None) -> list[Wire]:
        return [w for w in self.wire if w.src == src and (predicate is None or predicate(w))]

    def delivered(self, src: str, predicate: Predicate | None = None) -> list[Wire]:
        return [w for w in self.sent(src, predicate) if not w.dropped]

    def times(self, src: str, predicate: Predicate) -> list[float]:
        return [w.time for w in self.sent(src, predicate)]

    def take(self, side: str, kind: type[E]) -> list[E]:
        """Remove and return the collected events of ``kind`` of a raw side."""
        found: list[E] = [e for e in self.events[side] if isinstance(e, kind)]
        self.events[side] = [e for e in self.events[side] if not isinstance(e, kind)]
        return found

    def summary(self, src: str | None = None) -> list[str]:
        """Compact wire log, e.g. ``['a INVITE', 'b 100', ...]`` (for assertions)."""
        out = []
        for w in self.wire:
            if src is not None and w.src != src:
                continue
            what = w.method if w.is_request else str(w.status)
            out.append(f"{w.src} {what}{' x' if w.dropped else ''}")
        return out


# -- recording delegates ------------------------------------------------------------------


class Recorder(SessionDelegate):
    """Records every callback of the sessions it is the delegate of."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.states: list[SessionState] = []
        self.ends: list[SessionEnd] = []
        self.dtmf: list[str] = []
        self.infos: list[Request] = []
        self.snapshots: list[Any] = []
        self.progress: list[tuple[int, str, bool]] = []
        self.media_changes = 0
        self.answered = 0
        self.early = 0
        self.trying = 0
        self.redirects: list[Response] = []

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def on_state_change(self, session: Session, state: SessionState) -> None:
        self.calls.append(("state", state))
        self.states.append(state)

    def on_trying(self, session: Session) -> None:
        self.calls.append(("trying",))
        self.trying += 1

    def on_progress(self, session: Session, code: int, reason: str, early_media: bool) -> None:
        self.calls.append(("progress", code, reason, early_media))
        self.progress.append((code, reason, early_media))

    def on_early_media(self, session: Session) -> None:
        self.calls.append(("early_media",))
        self.early += 1

    def on_redirect(self, session: Session, response: Response) -> None:
        self.calls.append(("redirect", response.status))
        self.redirects.append(response)

    def on_answered(self, session: Session) -> None:
        self.calls.append(("answered",))
        self.answered += 1

    def on_ended(self, session: Session, end: SessionEnd) -> None:
        self.calls.append(("ended", end))
        self.ends.append(end)

    def on_dialog_changed(self, session: Session) -> None:
        self.calls.append(("dialog",))
        self.snapshots.append(session.snapshot())

    def on_media_changed(self, session: Session) -> None:
        self.calls.append(("media",))
        self.media_changes += 1

    def on_info(self, session: Session, request: Request) -> None:
        self.calls.append(("info",))
        self.infos.append(request)

    def on_dtmf(self, session: Session, digit: str) -> None:
        self.calls.append(("dtmf", digit))
        self.dtmf.append(digit)


class Callee(UserAgentDelegate):
    """Collects invitations, giving each a Recorder as its delegate."""

    def __init__(self) -> None:
        self.invitations: list[Invitation] = []
        self.recorders: list[Recorder] = []

    def on_invite(self, invitation: Invitation) -> None:
        recorder = Recorder()
        invitation.delegate = recorder
        self.invitations.append(invitation)
        self.recorders.append(recorder)

    @property
    def last(self) -> Invitation:
        assert self.invitations, "no INVITE arrived"
        return self.invitations[-1]

    @property
    def rec(self) -> Recorder:
        return self.recorders[-1]

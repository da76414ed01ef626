"""``Session``: what an outbound ``Inviter`` and an inbound ``Invitation`` share (SIP.js
``session.ts``).

A session owns its session FSM (``app.ua.state``), its dialog (``app.sip.dialog``, a
separate FSM), its media handler, and one ordered queue: endpoint events and UA timers
for this session are handled one at a time, in arrival order, under the session lock;
the public actions (``bye``, ``accept``, ...) take the same lock. Delegate callbacks are
plain synchronous calls made under that lock; a delegate that needs to do I/O spawns a
task.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from app.media import Body, MediaError, is_sdp
from app.sip.dialog import Dialog
from app.sip.endpoint import Addr
from app.sip.errors import LocalProtocolError, SipError
from app.sip.events import AckReceived, RequestReceived, ResponseReceived
from app.sip.headers import NameAddr
from app.sip.ids import random_hex
from app.sip.message import Message, Request, Response, make_response
from app.sip.reasons import reason_phrase
from app.sip.transactions.keys import ClientTransactionId, ServerTransactionId
from app.ua.core import Cancellable, SipCore
from app.ua.errors import StateTransitionError
from app.ua.sdh import SessionDescriptionHandler
from app.ua.state import SessionState, check_transition

if TYPE_CHECKING:
    from app.ua.user_agent import UserAgent

__all__ = [
    "DialogSnapshot",
    "EndBy",
    "EndCause",
    "Session",
    "SessionDelegate",
    "SessionEnd",
]

log = logging.getLogger("app.ua")

# RFC 4733 §3.2 event codes 0-15 as they appear in SIP INFO application/dtmf-relay.
DTMF_DIGITS = "0123456789*#ABCD"
DTMF_RELAY = "application/dtmf-relay"
_DTMF_PLAIN = "application/dtmf"


class EndCause(StrEnum):
    LOCAL_BYE = "local_bye"
    REMOTE_BYE = "remote_bye"
    CANCELED = "canceled"
    REJECTED = "rejected"
    NO_ANSWER = "no_answer"
    FAILED = "failed"
    SHUTDOWN = "shutdown"


class EndBy(StrEnum):
    LOCAL = "local"
    REMOTE = "remote"
    SYSTEM = "system"


@dataclass(frozen=True, slots=True)
class SessionEnd:
    """Why a session ended (the call object's ``end``)."""

    cause: str  # an EndCause value
    by: str  # an EndBy value
    sip_code: int | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DialogSnapshot:
    """What the call service persists about the dialog (``Session.snapshot()``)."""

    call_id: str
    local_tag: str
    remote_tag: str | None
    local_cseq: int | None
    remote_cseq: int | None
    route_set: tuple[str, ...]
    remote_target: str | None
    transport: str
    peer: Addr | None
    invite_branch: str | None
    invite_cseq: int | None


class SessionDelegate:
    """Callbacks of one session (SIP.js ``SessionDelegate`` plus the Inviter request
    delegate). Every method is a no-op here: subclass and override what you need."""

    def on_state_change(self, session: Session, state: SessionState) -> None:
        """The session FSM moved to ``state``."""

    def on_trying(self, session: Session) -> None:
        """Outbound: 100 Trying received."""

    def on_progress(self, session: Session, code: int, reason: str, early_media: bool) -> None:
        """A provisional response (101-199) was received (outbound) or sent (inbound)."""

    def on_early_media(self, session: Session) -> None:
        """An early media session exists (``session.early_media`` became True)."""

    def on_redirect(self, session: Session, response: Response) -> None:
        """Outbound: a 3xx arrived (not followed; the session ends ``rejected``)."""

    def on_answered(self, session: Session) -> None:
        """The session is established."""

    def on_ended(self, session: Session, end: SessionEnd) -> None:
        """The session is terminated; ``end`` says why."""

    def on_dialog_changed(self, session: Session) -> None:
        """``session.snapshot()`` changed (persist it)."""

    def on_media_changed(self, session: Session) -> None:
        """A re-INVITE or UPDATE from the far end was answered (e.g. hold / resume)."""

    def on_info(self, session: Session, request: Request) -> None:
        """An INFO arrived in the dialog (already answered 200)."""

    def on_dtmf(self, session: Session, digit: str) -> None:
        """A DTMF digit arrived by SIP INFO."""


@dataclass(slots=True)
class _Pending2xx:
    """A 2xx to an INVITE we sent, retransmitted until its ACK (RFC 3261 §13.3.1.4)."""

    cseq: int
    server_tx: ServerTransactionId
    response: Response
    dest: Addr
    transport: str
    offer_in_2xx: bool  # the ACK must carry the answer
    initial: bool  # the dialog-creating INVITE (no ACK -> BYE, failed)
    interval: float


@dataclass(frozen=True, slots=True)
class _InfoSpec:
    content_type: str
    content: str
    headers: tuple[tuple[str, str], ...]


def body_of(message: Message) -> Body | None:
    """The message body as a ``Body`` (None when empty)."""
    if not message.body:
        return None
    content_type = message.headers.get("Content-Type") or "application/sdp"
    return Body(content_type, message.body.decode("utf-8", "replace"))


def sdp_of(message: Message) -> Body | None:
    """The body when it is a session description (RFC 3261 §20.15 / RFC 3264)."""
    body = body_of(message)
    if body is None or not is_sdp(body.content_type):
        return None
    return body


def parse_dtmf_relay(content: str) -> str | None:
    """The digit of an ``application/dtmf-relay`` body (``Signal=5``), else None."""
    for line in content.splitlines():
        name, sep, value = line.partition("=")
        if not sep or name.strip().lower() != "signal":
            continue
        value = value.strip().upper()
        if value.isdigit() and 10 <= int(value) <= 15:
            return DTMF_DIGITS[int(value)]  # some phones send the RFC 4733 event number
        if len(value) == 1 and value in DTMF_DIGITS:
            return value
    return None


class Session:
    """Base of ``Inviter`` and ``Invitation``. Not made directly."""

    direction: str = ""

    def __init__(
        self,
        ua: UserAgent,
        *,
        session_id: str | None,
        call_id: str,
        local_tag: str,
        local_identity: NameAddr,
        remote_identity: NameAddr,
    ) -> None:
        self.ua = ua
        self.id = session_id or ua.new_session_id()
        self.state = SessionState.INITIAL
        self.delegate: SessionDelegate | None = None
        self.end: SessionEnd | None = None
        self.early_media = False
        self.last_response: tuple[int, str] | None = None
        self.local_identity = local_identity
        self.remote_identity = remote_identity
        self.dialog: Dialog | None = None
        self.sdh: SessionDescriptionHandler | None = None
        self.call_id = call_id
        self.local_tag = local_tag
        self._transport = ua.config.transport.lower()
        self._peer: Addr | None = None
        self._lock = asyncio.Lock()
        self._queue: deque[Callable[[], Awaitable[None]]] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._timers: dict[str, Cancellable] = {}
        self._snapshot: DialogSnapshot | None = None
        self._client_txs: dict[ClientTransactionId, str] = {}
        # Server transactions the user agent routes to this session (forgotten with it).
        self._server_txs: list[ServerTransactionId] = []
        self._pending_2xx: dict[int, _Pending2xx] = {}
        self._bye_tx: ClientTransactionId | None = None
        self._bye_end: SessionEnd | None = None
        self._bye_after_ack = False
        self._infos: deque[_InfoSpec] = deque()
        self._info_tx: ClientTransactionId | None = None
        self._dialogs: list[Dialog] = []  # every dialog registered for this session
        self._ended = asyncio.Event()
        ua.add_session(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.state.value}>"

    # ================================================================================
    # public API

    @property
    def core(self) -> SipCore:
        return self.ua.core

    @property
    def is_terminated(self) -> bool:
        return self.state is SessionState.TERMINATED

    @property
    def local_hold(self) -> bool:
        """Our last session description put the far end on hold."""
        return self.sdh.local_hold if self.sdh is not None else False

    @property
    def remote_hold(self) -> bool:
        """The far end's last session description holds us."""
        return self.sdh.remote_hold if self.sdh is not None else False

    def allowed_actions(self) -> tuple[str, ...]:
        """The REST actions allowed now (the 409 body's ``allowed_actions``)."""
        raise NotImplementedError

    def snapshot(self) -> DialogSnapshot:
        dialog = self.dialog
        invite = self._invite_request()
        branch: str | None = None
        invite_cseq: int | None = None
        if invite is not None:
            try:
                branch = invite.top_via.branch if "Via" in invite.headers else None
                invite_cseq = invite.cseq.seq
            except SipError:
                branch = None
        if dialog is None:
            return DialogSnapshot(
                call_id=self.call_id,
                local_tag=self.local_tag,
                remote_tag=None,
                local_cseq=self._initial_local_cseq(),
                remote_cseq=self._initial_remote_cseq(),
                route_set=(),
                remote_target=None,
                transport=self._transport,
                peer=self._peer,
                invite_branch=branch,
                invite_cseq=invite_cseq,
            )
        return DialogSnapshot(
            call_id=dialog.call_id,
            local_tag=dialog.local_tag,
            remote_tag=dialog.remote_tag,
            local_cseq=dialog.local_seq,
            remote_cseq=dialog.remote_seq,
            route_set=tuple(str(r) for r in dialog.route_set),
            remote_target=str(dialog.remote_target),
            transport=self._transport,
            peer=self._peer,
            invite_branch=branch,
            invite_cseq=invite_cseq if dialog.invite_seq is None else dialog.invite_seq,
        )

    async def bye(self, headers: Sequence[tuple[str, str]] = ()) -> None:
        """End an established session with BYE (SIP.js ``Session.bye``).

        Returns once the BYE is on its way (state ``terminating``); the session ends
        ``local_bye`` at its final response (any) or its timeout. A callee whose 2xx is
        not yet ACKed sends the BYE when the ACK comes (RFC 3261 §15).
        """
        async with self._guard():
            if self.state is not SessionState.ESTABLISHED:
                raise self._not_allowed("bye")
            await self._local_bye(tuple(headers))

    async def dispose(self) -> None:
        """Whichever of cancel / reject / bye fits; nothing when already ending."""
        raise NotImplementedError

    async def wait_ended(self) -> SessionEnd:
        """Wait until the session is terminated; its ``end``."""
        await self._ended.wait()
        assert self.end is not None
        return self.end

    async def info(
        self, content_type: str, content: str, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        """Send an INFO in the dialog (established only). INFOs go one at a time."""
        async with self._guard():
            if self.state is not SessionState.ESTABLISHED:
                raise self._not_allowed("dtmf")
            self._infos.append(_InfoSpec(content_type, content, tuple(headers)))
            await self._next_info()

    async def dtmf(self, digits: str, duration_ms: int = 100) -> None:
        """Send DTMF by SIP INFO (``application/dtmf-relay``), one INFO per digit."""
        digits = digits.upper()
        bad = [d for d in digits if d not in DTMF_DIGITS]
        if not digits or bad:
            raise ValueError(f"DTMF digits must be 0-9 * # A-D, got {digits!r}")
        async with self._guard():
            if self.state is not SessionState.ESTABLISHED:
                raise self._not_allowed("dtmf")
            for digit in digits:
                content = f"Signal={digit}\r\nDuration={duration_ms}\r\n"
                self._infos.append(_InfoSpec(DTMF_RELAY, content, ()))
            await self._next_info()

    # ================================================================================
    # hooks for the subclasses

    def _invite_request(self) -> Request | None:
        return None

    def _initial_local_cseq(self) -> int | None:
        return None

    def _initial_remote_cseq(self) -> int | None:
        return None

    async def _handle_request(self, event: RequestReceived) -> None:
        await self._on_in_dialog_request(event)

    async def _handle_ack(self, event: AckReceived) -> None:
        await self._on_ack(event)

    async def _handle_response(self, event: ResponseReceived, kind: str) -> None:
        await self._on_aux_response(event, kind)

    async def _handle_tx_failure(self, kind: str, reason: str, tx: ClientTransactionId) -> None:
        await self._on_aux_failure(kind, reason, tx)

    async def _handle_cancel(self) -> None:
        return None

    async def _shutdown(self) -> None:
        raise NotImplementedError

    def _close_media(self) -> None:
        if self.sdh is not None:
            self.sdh.close()

    # ================================================================================
    # queue, lock, timers

    def enqueue(self, item: Callable[[], Awaitable[None]]) -> None:
        """Run ``item`` after everything queued before it, under the session lock."""
        self._queue.append(item)
        if self._worker is None or self._worker.done():
            self._worker = self.ua.spawn(self._run())

    @property
    def busy(self) -> bool:
        return bool(self._queue) or (self._worker is not None and not self._worker.done())

    async def _run(self) -> None:
        while self._queue:
            item = self._queue.popleft()
            try:
                async with self._guard():
                    await item()
            except Exception:
                log.exception("session %s: error handling an event", self.id)

    @asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        async with self._lock:
            try:
                yield
            finally:
                self._check_snapshot()

    def _arm(self, name: str, delay: float, handler: Callable[[], Awaitable[None]]) -> None:
        """(Re)arm the UA timer ``name``; when it fires, ``handler`` runs in the queue."""
        self._disarm(name)

        def fire() -> None:
            if self._timers.get(name) is handle:
                del self._timers[name]
                self.enqueue(handler)

        handle = self.core.call_later(delay, fire)
        self._timers[name] = handle

    def _disarm(self, name: str) -> None:
        handle = self._timers.pop(name, None)
        if handle is not None:
            handle.cancel()

    def _armed(self, name: str) -> bool:
        return name in self._timers

    # ================================================================================
    # state

    def _set_state(self, state: SessionState) -> None:
        if state is self.state:
            return
        check_transition(self.state, state)
        self.state = state
        log.debug("session %s -> %s", self.id, state.value)
        self._notify("on_state_change", state)

    def _not_allowed(self, action: str) -> StateTransitionError:
        return StateTransitionError(
            f"{action} is not allowed on this {self.direction} call in state {self.state.value}",
            state=self.state.value,
            allowed=self.allowed_actions(),
        )

    def _notify(self, name: str, *args: object) -> None:
        delegate = self.delegate
        if delegate is None:
            return
        method = getattr(delegate, name, None)  # duck-typed delegates may skip some
        if method is None:
            return
        try:
            method(self, *args)
        except Exception:
            log.exception("session %s: delegate %s failed", self.id, name)

    def _check_snapshot(self) -> None:
        snap = self.snapshot()
        if snap != self._snapshot:
            self._snapshot = snap
            self._notify("on_dialog_changed")

    def _terminate(self, end: SessionEnd) -> None:
        """End the session: timers off, media closed, dialogs gone, delegate told."""
        if self.state is SessionState.TERMINATED:
            return
        self.end = end
        for name in list(self._timers):
            self._disarm(name)
        self._pending_2xx.clear()
        self._infos.clear()
        try:
            self._close_media()
        except Exception:
            log.exception("session %s: closing media failed", self.id)
        for dialog in self._dialogs:
            self.ua.endpoint_dialogs_unregister(dialog)
            dialog.terminate()
        self._set_state(SessionState.TERMINATED)
        self.ua.session_ended(self)
        log.info(
            "session %s ended: %s by %s%s",
            self.id,
            end.cause,
            end.by,
            f" ({end.sip_code})" if end.sip_code else "",
            extra={"call_id": self.call_id},
        )
        self._ended.set()
        self._notify("on_ended", end)
        self._check_snapshot()

    # ================================================================================
    # sending

    def _register_dialog(self, dialog: Dialog) -> None:
        if dialog not in self._dialogs:
            self._dialogs.append(dialog)
        if not dialog.terminated:
            self.ua.endpoint_dialogs_register(dialog)

    def _drop_dialog(self, dialog: Dialog) -> None:
        self.ua.endpoint_dialogs_unregister(dialog)
        if not dialog.terminated:
            dialog.terminate()

    async def _send_request(self, request: Request, kind: str) -> ClientTransactionId:
        """Send a request (resolving its next hop) and route its responses here."""
        target = await self.core.resolve(request)
        tx = self.core.send_request(request, target.addr, target.transport)
        self._client_txs[tx] = kind
        self.ua.route_client_tx(tx, self)
        return tx

    async def _send_stateless(self, request: Request) -> tuple[Addr, str]:
        target = await self.core.resolve(request)
        self.core.send_stateless(request, target.addr, target.transport)
        return target.addr, target.transport

    def _respond(self, server_tx: ServerTransactionId, response: Response) -> bool:
        """Send a response; False when its transaction cannot take it any more."""
        try:
            self.core.send_response(server_tx, response)
        except LocalProtocolError as exc:
            log.info("session %s: could not send %s: %s", self.id, response.status, exc)
            return False
        return True

    def _answer(
        self,
        request: Request,
        server_tx: ServerTransactionId,
        status: int,
        *,
        reason: str | None = None,
        body: Body | None = None,
        headers: Sequence[tuple[str, str]] = (),
        contact: bool = False,
    ) -> Response:
        """Answer an in-dialog request (our local tag is already in its To)."""
        resp = make_response(request, status, reason)
        if contact:
            resp.headers.add("Contact", self.ua.contact)
        for name, value in headers:
            resp.headers.add(name, value)
        if body is not None:
            resp.headers.add("Content-Type", body.content_type)
            resp.body = body.content.encode()
        self._respond(server_tx, resp)
        return resp

    def _in_dialog_request(
        self,
        method: str,
        *,
        body: Body | None = None,
        headers: Sequence[tuple[str, str]] = (),
        dialog: Dialog | None = None,
    ) -> Request:
        dialog = dialog or self.dialog
        assert dialog is not None
        return dialog.create_request(
            method,
            body=body.content.encode() if body is not None else b"",
            content_type=body.content_type if body is not None else None,
            headers=list(headers),
        )

    async def _local_bye(self, headers: tuple[tuple[str, str], ...] = ()) -> None:
        end = SessionEnd(EndCause.LOCAL_BYE, EndBy.LOCAL)
        if self._waiting_initial_ack():
            # RFC 3261 §15: the callee sends no BYE before the ACK (or its timeout).
            self._bye_after_ack = True
            self._bye_end = end
            self._set_state(SessionState.TERMINATING)
            return
        await self._send_bye(end, headers)

    async def _send_bye(self, end: SessionEnd, headers: tuple[tuple[str, str], ...] = ()) -> None:
        """BYE on the dialog; the session ends with ``end`` at its final response."""
        if self.dialog is None or self.dialog.terminated:
            self._terminate(end)
            return
        bye = self._in_dialog_request("BYE", headers=headers)
        self._bye_end = end
        self._set_state(SessionState.TERMINATING)
        try:
            self._bye_tx = await self._send_request(bye, "bye")
        except (OSError, ValueError, SipError) as exc:
            log.info("session %s: BYE not sent: %s", self.id, exc)
            self._terminate(end)
            return
        # RFC 3261 §17.1.2.2: Timer F ends the BYE transaction at 64*T1; this is a guard.
        self._arm("bye", 64 * self.ua.config.t1 + self.ua.config.t4, self._on_bye_guard)

    async def _on_bye_guard(self) -> None:
        if self._bye_end is not None:
            self._terminate(self._bye_end)

    async def _bye_and_end(self, dialog: Dialog, end: SessionEnd) -> None:
        """BYE on ``dialog`` without waiting for its answer, then end with ``end``."""
        try:
            bye = self._in_dialog_request("BYE", dialog=dialog)
            await self._send_request(bye, "aux")
        except (OSError, ValueError, SipError) as exc:
            log.info("session %s: BYE not sent: %s", self.id, exc)
        self._terminate(end)

    # ================================================================================
    # in-dialog requests (both directions)

    async def _on_in_dialog_request(self, event: RequestReceived) -> None:
        request = event.request
        method = request.method
        if self.is_terminated:
            self._answer(request, event.server_tx, 481)
            return
        if method == "BYE":
            await self._on_bye(event)
        elif method == "INVITE":
            await self._on_reinvite(event)
        elif method == "UPDATE":
            await self._on_update(event)
        elif method == "OPTIONS":
            # RFC 3261 §11.2
            self._answer(
                request,
                event.server_tx,
                200,
                headers=[
                    ("Allow", ", ".join(self.ua.config.allow)),
                    ("Accept", "application/sdp"),
                    ("Supported", ", ".join(self.ua.config.supported)),
                ],
            )
        elif method == "INFO":
            self._on_info(event)
        elif method == "PRACK":
            await self._on_prack(event)
        else:
            self._answer(request, event.server_tx, 501)

    async def _on_bye(self, event: RequestReceived) -> None:
        # RFC 3261 §15.1.2
        self._answer(event.request, event.server_tx, 200)
        if self._bye_end is not None:
            self._terminate(self._bye_end)  # our BYE crossed theirs
        else:
            self._terminate(SessionEnd(EndCause.REMOTE_BYE, EndBy.REMOTE))

    async def _on_prack(self, event: RequestReceived) -> None:
        # RFC 3262 §3: no reliable provisional of ours is waiting for it.
        self._answer(event.request, event.server_tx, 481)

    def _on_info(self, event: RequestReceived) -> None:
        request = event.request
        self._answer(request, event.server_tx, 200)  # RFC 6086 §4.2.2
        body = body_of(request)
        if body is not None:
            kind = body.content_type.split(";", 1)[0].strip().lower()
            digit: str | None = None
            if kind == DTMF_RELAY:
                digit = parse_dtmf_relay(body.content)
            elif kind == _DTMF_PLAIN:
                text = body.content.strip().upper()
                digit = text if len(text) == 1 and text in DTMF_DIGITS else None
            if digit is not None:
                self._notify("on_dtmf", digit)
        self._notify("on_info", request)

    def _offer_pending(self) -> bool:
        """An offer/answer exchange is unfinished (RFC 3261 §14.1/§14.2: 491)."""
        return bool(self._pending_2xx)

    async def _on_reinvite(self, event: RequestReceived) -> None:
        """A re-INVITE (RFC 3261 §14.2): answered from the media handler."""
        request = event.request
        if self.state is not SessionState.ESTABLISHED or self.sdh is None or self._offer_pending():
            # §14.2: an offer/answer exchange of ours is not finished.
            self._answer(request, event.server_tx, 491)
            return
        offer = body_of(request)
        answer: Body
        if offer is not None:
            if not self.sdh.has_description(offer.content_type):
                self._answer(request, event.server_tx, 415, headers=[("Accept", "application/sdp")])
                return
            try:
                await self.sdh.set_description(offer)
                answer = await self.sdh.get_description()
            except MediaError as exc:
                self._rollback()
                # RFC 3261 §14.2: a refused re-offer leaves the session as it was.
                status = exc.status_hint if 400 <= exc.status_hint < 700 else 488
                self._answer(request, event.server_tx, status, reason=None)
                log.info("session %s: re-INVITE refused: %s", self.id, exc.cause)
                return
        else:
            try:
                answer = await self.sdh.get_description()  # our offer in the 2xx
            except MediaError as exc:
                self._rollback()
                self._answer(request, event.server_tx, 500)
                log.info("session %s: no offer for the re-INVITE: %s", self.id, exc.cause)
                return
        resp = self._answer(
            request,
            event.server_tx,
            200,
            body=answer,
            contact=True,
            headers=[("Allow", ", ".join(self.ua.config.allow))],
        )
        self._start_2xx(
            _Pending2xx(
                cseq=request.cseq.seq,
                server_tx=event.server_tx,
                response=resp,
                dest=event.source,
                transport=event.transport,
                offer_in_2xx=offer is None,
                initial=False,
                interval=self.ua.config.t1,
            )
        )
        if offer is not None:
            self._notify("on_media_changed")

    async def _on_update(self, event: RequestReceived) -> None:
        """UPDATE (RFC 3311): an offer is answered in its 2xx; without one just 200."""
        request = event.request
        offer = sdp_of(request)
        if offer is None:
            self._answer(request, event.server_tx, 200, contact=True)
            return
        if self.sdh is None or self._offer_pending() or self.state is not SessionState.ESTABLISHED:
            self._answer(request, event.server_tx, 491)
            return
        try:
            await self.sdh.set_description(offer)
            answer = await self.sdh.get_description()
        except MediaError as exc:
            self._rollback()
            self._answer(request, event.server_tx, 488)
            log.info("session %s: UPDATE refused: %s", self.id, exc.cause)
            return
        self._answer(request, event.server_tx, 200, body=answer, contact=True)
        self._notify("on_media_changed")

    def _rollback(self) -> None:
        if self.sdh is None:
            return
        try:
            self.sdh.rollback_description()
        except MediaError:
            log.debug("session %s: nothing to roll back", self.id)

    # ================================================================================
    # 2xx retransmission until ACK (UAS side of any INVITE)

    def _waiting_initial_ack(self) -> bool:
        return any(p.initial for p in self._pending_2xx.values())

    def _start_2xx(self, pending: _Pending2xx) -> None:
        """RFC 3261 §13.3.1.4: retransmit the 2xx (T1 doubling up to T2) until the ACK;
        give up after 64*T1."""
        cseq = pending.cseq
        self._pending_2xx[cseq] = pending
        self._arm(f"2xx:{cseq}", pending.interval, lambda: self._retransmit_2xx(cseq))
        self._arm(f"ack:{cseq}", 64 * self.ua.config.t1, lambda: self._ack_timeout(cseq))

    async def _retransmit_2xx(self, cseq: int) -> None:
        pending = self._pending_2xx.get(cseq)
        if pending is None or self.is_terminated:
            return
        try:
            # RFC 6026 §8.7: while the transaction is in Accepted it passes the 2xx on.
            self.core.send_response(pending.server_tx, pending.response)
        except LocalProtocolError:
            self.core.send_stateless(pending.response, pending.dest, pending.transport)
        pending.interval = min(2 * pending.interval, self.ua.config.t2)
        self._arm(f"2xx:{cseq}", pending.interval, lambda: self._retransmit_2xx(cseq))

    async def _ack_timeout(self, cseq: int) -> None:
        pending = self._pending_2xx.pop(cseq, None)
        self._disarm(f"2xx:{cseq}")
        if pending is None or self.is_terminated:
            return
        # RFC 3261 §13.3.1.4: no ACK -> the dialog ends with a BYE.
        log.info("session %s: no ACK for the 2xx to CSeq %s", self.id, cseq)
        self._bye_after_ack = False
        await self._send_bye_end(SessionEnd(EndCause.FAILED, EndBy.SYSTEM, reason="no ACK"))

    async def _send_bye_end(self, end: SessionEnd) -> None:
        if self.dialog is None:
            self._terminate(end)
            return
        await self._bye_and_end(self.dialog, end)

    async def _on_ack(self, event: AckReceived) -> None:
        request = event.request
        try:
            cseq = request.cseq.seq
        except SipError:
            return
        pending = self._pending_2xx.pop(cseq, None)
        if pending is None:
            return  # a retransmitted ACK, or one for a 2xx we no longer track
        self._disarm(f"2xx:{cseq}")
        self._disarm(f"ack:{cseq}")
        if self.is_terminated:
            return
        if pending.offer_in_2xx:
            answer = sdp_of(request)
            failure: str | None = None
            if answer is None or self.sdh is None:
                failure = "ACK without an answer"
            else:
                try:
                    await self.sdh.set_description(answer)
                except MediaError as exc:
                    failure = exc.cause
            if failure is not None:
                if pending.initial:
                    # RFC 3261 §13.3.1.4 / §14.2: the session cannot go on.
                    await self._send_bye_end(
                        SessionEnd(EndCause.FAILED, EndBy.SYSTEM, reason=failure)
                    )
                    return
                self._rollback()
                log.info("session %s: re-INVITE ACK unusable: %s", self.id, failure)
            elif not pending.initial:
                self._notify("on_media_changed")
        if pending.initial and self._bye_after_ack:
            self._bye_after_ack = False
            end = self._bye_end or SessionEnd(EndCause.LOCAL_BYE, EndBy.LOCAL)
            await self._send_bye(end)

    # ================================================================================
    # responses to our non-INVITE requests

    async def _on_aux_response(self, event: ResponseReceived, kind: str) -> None:
        status = event.response.status
        if status < 200:
            return
        if kind == "bye" and event.client_tx == self._bye_tx:
            end = self._bye_end or SessionEnd(EndCause.LOCAL_BYE, EndBy.LOCAL)
            self._terminate(end)
        elif kind == "info" and event.client_tx == self._info_tx:
            self._info_tx = None
            await self._next_info()

    async def _on_aux_failure(self, kind: str, reason: str, tx: ClientTransactionId) -> None:
        if kind == "bye" and tx == self._bye_tx:
            end = self._bye_end or SessionEnd(EndCause.LOCAL_BYE, EndBy.LOCAL)
            self._terminate(end)
        elif kind == "info" and tx == self._info_tx:
            self._info_tx = None
            await self._next_info()

    async def _next_info(self) -> None:
        if self._info_tx is not None or not self._infos or self.is_terminated:
            return
        if self.state is not SessionState.ESTABLISHED or self.dialog is None:
            self._infos.clear()
            return
        spec = self._infos.popleft()
        request = self._in_dialog_request(
            "INFO", body=Body(spec.content_type, spec.content), headers=spec.headers
        )
        try:
            self._info_tx = await self._send_request(request, "info")
        except (OSError, ValueError, SipError) as exc:
            log.info("session %s: INFO not sent: %s", self.id, exc)
            self._infos.clear()


def new_session_id() -> str:
    """An opaque, URL-safe session id."""
    return "ses_" + random_hex(9)


def reason_or_phrase(status: int, reason: str | None) -> str:
    return reason if reason is not None else reason_phrase(status)

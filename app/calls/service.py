"""CallService: REST (and webhook) actions <-> the user agent <-> the store.

The one layer that commits. Every call has a live entry while its UA session runs: the
session, and the :class:`~app.calls.writer.CallWriter` that turns each delegate callback
into one transaction (row update + outbox event, committed together, then the dispatcher
is woken). Actions check the 409 rules (:mod:`app.calls.rules`) against the session's
current state, hand the action to the UA, wait until the changes it caused so far are
committed, and return the call as it is then (API.md: "the call as it is after the action
was handed to the UA"); what waits for the far end arrives later as events.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.exc import IntegrityError

from app.calls import commands
from app.calls.admission import AdmissionControl, OverloadedError
from app.calls.recovery import CallEnder, recover_calls
from app.calls.rules import Action, allowed_actions, is_no_op
from app.calls.writer import (
    CallWriter,
    Change,
    DialogView,
    Ending,
    GroupWriter,
    Insert,
    Notifier,
    SessionView,
    apply_view,
    new_record,
)
from app.errors import (
    AppError,
    CallNotFoundError,
    InvalidRequestError,
    InvalidStateError,
    ServiceUnavailableError,
)
from app.sip.headers import NameAddr
from app.sip.message import Request
from app.store.db import Database
from app.store.ids import new_call_id
from app.store.models import (
    Call,
    CallRecord,
    CallState,
    Direction,
    EndCause,
    EndedBy,
    EventType,
)
from app.store.repositories import CallRepository, IdempotencyRepository
from app.store.resources import call_resource
from app.store.types import utcnow
from app.ua.errors import StateTransitionError
from app.ua.invitation import Invitation
from app.ua.inviter import Credentials, Inviter
from app.ua.session import DialogSnapshot, Session, SessionDelegate, SessionEnd
from app.ua.state import SessionState
from app.ua.user_agent import UserAgent, UserAgentDelegate

log = logging.getLogger(__name__)

CallResource = dict[str, Any]

# Request body bytes kept for GET (an inbound INVITE's SDP); more is cut, not refused.
MAX_STORED_BODY = 64 * 1024
# Flushes a dial tries for the committed call before it reads the row back (_dialed).
DIAL_FLUSHES = 3


class InviterFactory(Protocol):
    def __call__(
        self,
        ua: UserAgent,
        target: str,
        *,
        from_uri: str | None,
        display_name: str | None,
        extra_headers: Sequence[tuple[str, str]],
        early_media: bool,
        offer: bool,
        credentials: Credentials | None,
        timeout: float | None,
        session_id: str | None,
    ) -> Inviter: ...


class IdempotencyMismatchError(InvalidRequestError):
    """The Idempotency-Key was used before with another body (422)."""

    def __init__(self, key: str) -> None:
        issue = {
            "loc": ["header", "Idempotency-Key"],
            "msg": "this key was already used with a different request body",
            "type": "idempotency_key_reused",
        }
        super().__init__(
            f"header.Idempotency-Key: the key {key!r} was already used with another body",
            errors=[issue],
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class DialResult:
    call: CallResource
    created: bool  # False: an idempotent replay of an earlier request


def _uri_text(addr: NameAddr) -> str:
    return str(addr.uri)


def _dialog_view(snapshot: DialogSnapshot) -> DialogView:
    peer = snapshot.peer
    return DialogView(
        call_id=snapshot.call_id,
        local_tag=snapshot.local_tag,
        remote_tag=snapshot.remote_tag,
        local_cseq=snapshot.local_cseq,
        remote_cseq=snapshot.remote_cseq,
        route_set=tuple(snapshot.route_set),
        remote_target=snapshot.remote_target,
        transport=snapshot.transport,
        peer=(peer[0], int(peer[1])) if peer is not None else None,
        invite_branch=snapshot.invite_branch,
        invite_cseq=snapshot.invite_cseq,
    )


def _ending(end: SessionEnd) -> Ending:
    return Ending(cause=end.cause, by=end.by, sip_code=end.sip_code, reason=end.reason)


def view_of(
    session: Session, *, state: str | None = None, end: Ending | None = None
) -> SessionView:
    """What the session shows now (sync: called inside UA callbacks)."""
    session_end = end or (_ending(session.end) if session.end is not None else None)
    try:
        dialog = _dialog_view(session.snapshot())
    except Exception:  # a half-built session must not lose the event that reports it
        log.debug("no dialog snapshot for session %s", session.id, exc_info=True)
        dialog = None
    return SessionView(
        at=utcnow(),
        state=state or session.state.value,
        last_response=session.last_response,
        early_media=session.early_media,
        local_hold=session.local_hold if session.sdh is not None else None,
        remote_hold=session.remote_hold if session.sdh is not None else None,
        end=session_end,
        dialog=dialog,
        remote_display_name=session.remote_identity.display_name,
    )


class _KeyLocks:
    """One asyncio.Lock per Idempotency-Key while it is in use (same-key requests queue)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class LiveCall:
    """A call whose UA session runs: the session, its writer, and its delegate."""

    def __init__(
        self, service: CallService, call_id: str, direction: Direction, writer: CallWriter
    ) -> None:
        self.service = service
        self.call_id = call_id
        self.direction = direction
        self.writer = writer
        self.session: Session | None = None
        self.initiated = False
        self._early_media: SessionView | None = None
        # A dialed call's row, not yet written: it is inserted with call.initiated, in
        # the group commit after the INVITE left (see CallService._place).
        self.pending_row: CallRecord | None = None

    def bind(self, session: Session) -> None:
        self.session = session
        session.delegate = _CallDelegate(self)

    def emit(
        self, view: SessionView, event: str | None, data: dict[str, Any] | None = None
    ) -> None:
        if not self.initiated and (
            self.pending_row is not None or (event is not None and event != EventType.INITIATED)
        ):
            # Every call's first event is call.initiated, also when the INVITE never left
            # (and a row still to insert comes before any change to it).
            self.emit_initiated(view)
        if event is not None and event != EventType.PROGRESS:
            self.flush_early_media()
        self.writer.submit(Change(view=view, event=event, data=data or {}))
        if event == EventType.PROGRESS:
            self.flush_early_media()

    def hold_early_media(self, view: SessionView) -> None:
        """call.early_media follows the call.progress of the provisional that started it.

        The UA may report the media before the provisional (both inside one callback
        batch): the event is held until that provisional's progress, or until the loop
        runs again, whichever comes first.
        """
        self._early_media = view
        asyncio.get_running_loop().call_soon(self.flush_early_media)

    def flush_early_media(self) -> None:
        view, self._early_media = self._early_media, None
        if view is not None:
            self.emit(view, EventType.EARLY_MEDIA.value)

    def emit_initiated(self, view: SessionView) -> None:
        if self.initiated:
            return
        self.initiated = True
        shown = SessionView(
            at=view.at,
            state=view.state if view.end is None else CallState.INITIAL.value,
            last_response=view.last_response if view.end is None else None,
            early_media=view.early_media,
            dialog=view.dialog,
        )
        row, self.pending_row = self.pending_row, None
        if row is not None:
            apply_view(row, shown)
            row.updated_at = shown.at
            self.writer.submit(Insert(row=row, event=EventType.INITIATED.value))
            return
        self.writer.submit(Change(view=shown, event=EventType.INITIATED.value))


class _CallDelegate(SessionDelegate):
    """The SessionDelegate of one call: every callback becomes one queued change."""

    def __init__(self, live: LiveCall) -> None:
        self._live = live

    def on_state_change(self, session: Session, state: SessionState) -> None:
        view = view_of(session, state=state.value)
        if (
            self._live.direction is Direction.OUTBOUND
            and state is SessionState.ESTABLISHING
            and not self._live.initiated
        ):
            self._live.emit_initiated(view)  # Inviter.invite(): the INVITE is on its way
            return
        if state is SessionState.TERMINATED:
            return  # on_ended carries the end and writes call.ended
        self._live.emit(view, None)

    def on_progress(self, session: Session, code: int, reason: str, early_media: bool) -> None:
        view = view_of(session)
        if view.last_response is None:
            view = SessionView(
                at=view.at,
                state=view.state,
                last_response=(code, reason),
                early_media=view.early_media,
                dialog=view.dialog,
                remote_display_name=view.remote_display_name,
            )
        self._live.emit(view, EventType.PROGRESS.value, {"sip_code": code})

    def on_early_media(self, session: Session) -> None:
        self._live.hold_early_media(view_of(session))

    def on_answered(self, session: Session) -> None:
        self._live.emit(
            view_of(session, state=SessionState.ESTABLISHED.value), EventType.ANSWERED.value
        )

    def on_ended(self, session: Session, end: SessionEnd) -> None:
        view = view_of(session, state=CallState.TERMINATED.value, end=_ending(end))
        self._live.emit(view, EventType.ENDED.value)

    def on_dialog_changed(self, session: Session) -> None:
        self._live.emit(view_of(session), None)

    def on_media_changed(self, session: Session) -> None:
        self._live.emit(view_of(session), None)

    def on_info(self, session: Session, request: Request) -> None:
        return None

    def on_dtmf(self, session: Session, digit: str) -> None:
        self._live.emit(view_of(session), EventType.DTMF.value, {"digit": digit})


class CallService(UserAgentDelegate):
    """Dial, act on and follow calls; the UA's delegate for every session.

    ``bind(ua)`` attaches the user agent (made after the service, since the service is its
    ``UserAgentDelegate``). Without a UA, reads work and dialing answers 503.
    """

    def __init__(
        self,
        *,
        database: Database,
        notifier: Notifier | None = None,
        default_webhook_url: str | None = None,
        inviter_factory: InviterFactory | None = None,
    ) -> None:
        self._database = database
        self._notifier = notifier
        self._default_webhook_url = default_webhook_url
        self._inviter_factory: InviterFactory = inviter_factory or Inviter
        self._ua: UserAgent | None = None
        self._live: dict[str, LiveCall] = {}
        self._key_locks = _KeyLocks()
        self._closing = False
        self._admission: AdmissionControl | None = None
        self._dialing = 0  # dial requests being placed (row written, INVITE sent, ...)

    # -- wiring ----------------------------------------------------------------------

    def bind(self, ua: UserAgent) -> None:
        self._ua = ua

    def unbind(self) -> None:
        """No more new calls (shutdown): dialing answers 503 from now on."""
        self._ua = None

    def set_notifier(self, notifier: Notifier | None) -> None:
        self._notifier = notifier
        for live in self._live.values():
            live.writer.set_notifier(notifier)

    def set_admission(self, admission: AdmissionControl | None) -> None:
        """Ask ``admission`` before every dial (None: dial whenever SIP runs)."""
        self._admission = admission

    @property
    def live_calls(self) -> int:
        return len(self._live)

    @property
    def active_calls(self) -> int:
        """Calls with a SIP session now (what ``CALLCTL_MAX_CALLS`` caps)."""
        return len(self._ua.sessions) if self._ua is not None else 0

    @property
    def dials_in_progress(self) -> int:
        """Dial requests admitted and not yet answered (a load signal: they wait for the
        database when it is behind)."""
        return self._dialing

    @property
    def write_backlog(self) -> int:
        """Call changes queued for the database (a load signal; see app.calls.admission)."""
        return GroupWriter.of(self._database).backlog

    def session_of(self, call_id: str) -> Session | None:
        live = self._live.get(call_id)
        return live.session if live is not None else None

    def _new_live(self, call_id: str, direction: Direction) -> LiveCall:
        writer = CallWriter(
            call_id,
            database=self._database,
            notifier=self._notifier,
            default_webhook_url=self._default_webhook_url,
            on_finished=self._writer_finished,
        )
        live = LiveCall(self, call_id, direction, writer)
        self._live[call_id] = live
        writer.start()
        return live

    def _writer_finished(self, writer: CallWriter) -> None:
        live = self._live.get(writer.call_id)
        if live is not None and live.writer is writer:
            del self._live[writer.call_id]

    # -- lifecycle -------------------------------------------------------------------

    async def recover(self, ender: CallEnder | None = None) -> int:
        """End the calls a previous process left unfinished (cause ``shutdown``).

        Their transactions and media died with that process. With an ``ender`` (the
        :class:`~app.ua.recovery.RecoveryAgent` over the running SIP server) each is ended
        on the wire first from its persisted dialog state (BYE, CANCEL, 480); then its row
        and its ``call.ended`` are committed together (:mod:`app.calls.recovery`). Without
        one the calls are ended in the database only. Returns how many.
        """
        recovered = await recover_calls(
            database=self._database,
            notifier=self._notifier,
            default_webhook_url=self._default_webhook_url,
            ender=ender,
            skip=set(self._live),
        )
        return len(recovered)

    async def drain(self, within: float | None = None) -> int:
        """Take no new calls; wait until every live call has ended and written its end.

        Dialing answers 503 from now on. Waits at most ``within`` seconds (None: as long
        as it takes) and returns how many calls are still live then.
        """
        self._closing = True
        loop = asyncio.get_running_loop()
        deadline = None if within is None else loop.time() + within
        while self._live:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                break
            waits = [
                asyncio.ensure_future(live.writer.wait_finished())
                for live in list(self._live.values())
            ]
            try:
                done, _ = await asyncio.wait(
                    waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for waiting in waits:
                    waiting.cancel()
            if not done:
                break
        if self._live:
            log.warning("%d call(s) still live after the drain", len(self._live))
        return len(self._live)

    async def close(self, within: float = 5.0) -> None:
        """Flush what is queued (bounded), then stop every writer (after the UA closed)."""
        self._closing = True
        for live in list(self._live.values()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(live.writer.flush(), within)
            await live.writer.cancel()
        self._live.clear()

    # -- reads -----------------------------------------------------------------------

    async def get(self, call_id: str) -> CallResource:
        async with self._database.session() as session:
            row = await CallRepository(session).get(call_id)
            if row is None:
                raise CallNotFoundError(call_id)
            return call_resource(row)

    async def _row(self, call_id: str) -> Call:
        async with self._database.session() as session:
            row = await CallRepository(session).get(call_id)
        if row is None:
            raise CallNotFoundError(call_id)
        return row

    # -- dial ------------------------------------------------------------------------

    async def dial(
        self, command: commands.Dial, *, idempotency_key: str | None = None
    ) -> DialResult:
        """Place an outbound call; with a key, the same key and body return the first call."""
        if idempotency_key is None:
            return DialResult(call=await self._dial(command, None), created=True)
        fingerprint = command.fingerprint()
        async with self._key_locks.hold(idempotency_key):
            earlier = await self._replay(idempotency_key, fingerprint)
            if earlier is not None:
                return DialResult(call=earlier, created=False)
            return DialResult(
                call=await self._dial(command, (idempotency_key, fingerprint)), created=True
            )

    async def _replay(self, key: str, fingerprint: str) -> CallResource | None:
        async with self._database.session() as session:
            stored = await IdempotencyRepository(session).get(key)
            if stored is None:
                return None
            if stored.request_hash != fingerprint:
                raise IdempotencyMismatchError(key)
            row = await CallRepository(session).get(stored.call_id)
            if row is None:  # the call was deleted (retention): the key is free again
                await session.delete(stored)
                await session.commit()
                return None
            return call_resource(row)

    def _require_ua(self) -> UserAgent:
        if self._ua is None or self._closing:
            raise ServiceUnavailableError("SIP is not running: calls cannot be placed now")
        return self._ua

    async def _dial(
        self, command: commands.Dial, idempotency: tuple[str, str] | None
    ) -> CallResource:
        ua = self._require_ua()
        if self._admission is not None:
            # Before anything is written or sent; no await until the Inviter exists, so
            # concurrent dials cannot all pass a cap with one place left.
            refusal = self._admission.admit("api")
            if refusal is not None:
                raise OverloadedError(refusal)
        self._dialing += 1
        try:
            return await self._place(ua, command, idempotency)
        finally:
            self._dialing -= 1

    async def _place(
        self, ua: UserAgent, command: commands.Dial, idempotency: tuple[str, str] | None
    ) -> CallResource:
        call_id = new_call_id()
        try:
            inviter = self._new_inviter(ua, call_id, command)
        except ValueError as exc:  # the UA refused the URIs (the HTTP layer checks them too)
            issue = {"loc": ["body", "to"], "msg": str(exc), "type": "value_error"}
            raise InvalidRequestError(f"body: {exc}", errors=[issue]) from None
        row = self._outbound_row(call_id, inviter, command)
        if idempotency is not None:
            # The key is claimed with the row before anything is sent: a key that another
            # process took refuses the dial with no INVITE on the wire.
            try:
                await self._insert(row, idempotency)
            except BaseException:
                with contextlib.suppress(Exception):
                    await inviter.dispose()
                raise
            live = self._new_live(call_id, Direction.OUTBOUND)
        else:
            # The INVITE goes first; the row follows with its call.initiated in the writer's
            # next group commit, which the 201 waits for (one transaction for many dials,
            # not one per dial before its INVITE could leave).
            live = self._new_live(call_id, Direction.OUTBOUND)
            live.pending_row = row
        live.bind(inviter)
        try:
            await inviter.invite()  # a failure it knows (DNS, media) ends the session itself
        except Exception as exc:  # anything else: the call fails, the session is let go
            log.exception("call %s: INVITE failed", call_id)
            self._fail(live, f"INVITE not sent: {exc}")
            with contextlib.suppress(Exception):
                await inviter.dispose()
        if idempotency is not None:
            return await self._flushed(live, call_id)
        return await self._dialed(live, inviter, call_id)

    async def _dialed(self, live: LiveCall, inviter: Inviter, call_id: str) -> CallResource:
        """The dialed call once its row, written after the INVITE, is committed.

        The writer forgets the call it showed a flush when a new change of the call is
        queued before the flusher runs again, which the far end's first answers often
        are: then one more flush (no database read) shows the call as committed after
        them, as reading it back would. When the database did not take a change of this
        call (the writer gave up), the row is read back; a call without one cannot be
        followed, so it is ended (CANCEL) and the dial fails: 503 when the row is
        missing, the database's error when it cannot be read.
        """
        writer = live.writer
        try:
            for _ in range(DIAL_FLUSHES):
                await writer.flush()
                shown = writer.committed_call()
                if writer.dropped:
                    break
                if shown is not None:
                    return shown
                if writer.finished:
                    break
            return await self.get(call_id)
        except Exception as exc:
            with contextlib.suppress(Exception):
                await inviter.dispose()
            if isinstance(exc, CallNotFoundError):
                raise ServiceUnavailableError(
                    "the database did not take the call: it was ended"
                ) from None
            raise

    def _new_inviter(self, ua: UserAgent, call_id: str, command: commands.Dial) -> Inviter:
        credentials = (
            Credentials(username=command.auth.username, password=command.auth.password)
            if command.auth is not None
            else None
        )
        return self._inviter_factory(
            ua,
            command.to,
            from_uri=command.from_uri,
            display_name=command.display_name,
            extra_headers=command.headers,
            early_media=command.early_media,
            offer=command.offer == "sdp",
            credentials=credentials,
            timeout=command.timeout,
            session_id=call_id,
        )

    def _fail(self, live: LiveCall, reason: str) -> None:
        session = live.session
        if session is None or live.writer.ended:
            return
        end = Ending(cause=EndCause.FAILED.value, by=EndedBy.SYSTEM.value, reason=reason[:200])
        live.emit(
            view_of(session, state=CallState.TERMINATED.value, end=end), EventType.ENDED.value
        )

    def _outbound_row(
        self, call_id: str, inviter: Inviter, command: commands.Dial
    ) -> CallRecord:
        snapshot = inviter.snapshot()
        local, remote = inviter.local_identity, inviter.remote_identity
        now = utcnow()
        return new_record(
            id=call_id,
            direction=Direction.OUTBOUND.value,
            state=CallState.INITIAL.value,
            from_uri=_uri_text(local),
            to_uri=command.to,
            local_uri=_uri_text(local),
            local_display_name=local.display_name,
            remote_uri=_uri_text(remote),
            remote_display_name=remote.display_name,
            early_media=False,
            client_state=command.client_state,
            webhook_url=command.webhook_url,
            sip_call_id=snapshot.call_id,
            local_tag=snapshot.local_tag,
            remote_tag=None,
            local_cseq=snapshot.local_cseq or 0,
            route_set=list(snapshot.route_set),
            transport=(snapshot.transport or "udp").lower(),
            created_at=now,
            updated_at=now,
        )

    async def _insert(self, record: CallRecord, idempotency: tuple[str, str] | None) -> None:
        # The ORM sets the version (version_id_col) itself.
        row = Call(**{k: v for k, v in dataclasses.asdict(record).items() if k != "version"})
        async with self._database.session() as session:
            await CallRepository(session).add(row)
            if idempotency is not None:
                key, fingerprint = idempotency
                await IdempotencyRepository(session).add(
                    key=key, request_hash=fingerprint, call_id=row.id
                )
            try:
                await session.commit()
            except IntegrityError:
                # Another process took the key in the meantime (one process owns SIP, so
                # this is rare): answer as a replay would.
                await session.rollback()
                if idempotency is None:
                    raise
                raise InvalidRequestError(
                    "header.Idempotency-Key: a request with this key is in progress elsewhere",
                    errors=[
                        {
                            "loc": ["header", "Idempotency-Key"],
                            "msg": "a request with this key is in progress",
                            "type": "idempotency_key_in_use",
                        }
                    ],
                ) from None

    # -- inbound (UserAgentDelegate) -------------------------------------------------

    def on_invite(self, invitation: Invitation) -> None:
        """A new inbound INVITE: persist the call and its call.initiated, follow it."""
        if self._closing:
            return
        call_id = new_call_id()
        live = self._new_live(call_id, Direction.INBOUND)
        row = self._inbound_row(call_id, invitation)
        live.initiated = True
        live.writer.submit(Insert(row=row, event=EventType.INITIATED.value))
        live.bind(invitation)
        provisional = invitation.last_response
        if provisional is not None and 100 < provisional[0] < 200:
            # The automatic 180 went out before this delegate existed (rule 5).
            live.emit(view_of(invitation), EventType.PROGRESS.value, {"sip_code": provisional[0]})

    def _inbound_row(self, call_id: str, invitation: Invitation) -> CallRecord:
        request = invitation.request
        view = view_of(invitation)
        local, remote = invitation.local_identity, invitation.remote_identity
        headers: dict[str, list[str]] = {}
        for name, value in request.headers:
            headers.setdefault(name, []).append(value)
        content_type = request.headers.get("Content-Type")
        now = utcnow()
        row = new_record(
            id=call_id,
            direction=Direction.INBOUND.value,
            state=CallState.INITIAL.value,
            from_uri=_uri_text(remote),
            to_uri=_uri_text(local),
            local_uri=_uri_text(local),
            local_display_name=local.display_name,
            remote_uri=_uri_text(remote),
            remote_display_name=remote.display_name,
            early_media=False,
            request_uri=request.uri,
            request_headers=headers,
            request_body=(
                request.body[:MAX_STORED_BODY].decode("utf-8", "replace") if request.body else None
            ),
            request_content_type=content_type,
            auto_provisional=invitation.auto_provisional,
            sip_call_id=request.call_id,
            local_tag=(view.dialog.local_tag if view.dialog and view.dialog.local_tag else ""),
            remote_tag=request.from_.tag,
            local_cseq=0,
            route_set=[],
            created_at=now,
            updated_at=now,
        )
        if view.dialog is not None:
            apply_view(row, SessionView(at=now, state=row.state, dialog=view.dialog))
        if view.last_response is not None:
            row.last_response_code, row.last_response_reason = view.last_response
        return row

    # -- actions ---------------------------------------------------------------------

    async def cancel(self, call_id: str, command: commands.Hangup | None = None) -> CallResource:
        """Outbound, before a final response: CANCEL (SIP.js ``Inviter.cancel()``)."""
        return await self._act(call_id, Action.CANCEL, _call_cancel)

    async def bye(self, call_id: str, command: commands.Hangup | None = None) -> CallResource:
        """Established: BYE (SIP.js ``Session.bye()``)."""
        headers = command.headers if command is not None else ()
        return await self._act(call_id, Action.BYE, _bye_with(headers))

    async def hangup(self, call_id: str, command: commands.Hangup | None = None) -> CallResource:
        """Whichever of cancel/reject/bye fits; a no-op once terminating or terminated."""
        return await self._act(call_id, Action.HANGUP, _call_dispose)

    async def progress(self, call_id: str, command: commands.Progress) -> CallResource:
        """Inbound, before accept: a provisional response (SIP.js ``Invitation.progress()``)."""

        async def run(session: Session) -> None:
            await _invitation(session).progress(
                command.status_code,
                command.reason,
                headers=command.headers,
                reliable=command.reliable,
                early_media=command.early_media,
            )

        return await self._act(call_id, Action.PROGRESS, run)

    async def accept(self, call_id: str, command: commands.Accept) -> CallResource:
        """Inbound: 2xx with the answer (SIP.js ``Invitation.accept()``)."""

        async def run(session: Session) -> None:
            await _invitation(session).accept(headers=command.headers)

        return await self._act(call_id, Action.ACCEPT, run)

    async def reject(self, call_id: str, command: commands.Reject) -> CallResource:
        """Inbound, before the 2xx: a final non-2xx (SIP.js ``Invitation.reject()``)."""

        async def run(session: Session) -> None:
            await _invitation(session).reject(
                command.status_code, command.reason, headers=command.headers
            )

        return await self._act(call_id, Action.REJECT, run)

    async def _act(
        self, call_id: str, action: Action, run: Callable[[Session], Awaitable[None]]
    ) -> CallResource:
        live = self._live.get(call_id)
        if live is None or live.session is None:
            return await self._act_without_session(call_id, action)
        session = live.session
        state = session.state.value
        if is_no_op(action, state):
            return await self._flushed(live, call_id)
        # The UA knows finer states than the table (a final response already received,
        # a 2xx already sent, a PRACK awaited); its word decides for a live session.
        allowed = _rest_actions(session.allowed_actions())
        if action.value not in allowed:
            raise InvalidStateError(
                f"{action.value} is not allowed on an {live.direction.value} call in state {state}",
                state=state,
                allowed_actions=allowed,
            )
        try:
            await run(session)
        except StateTransitionError as exc:
            # Lost a race with the far end (e.g. the 2xx came first); nothing was sent.
            now = session.state.value
            raise InvalidStateError(
                f"{action.value} is not allowed now: {exc}",
                state=now,
                allowed_actions=_rest_actions(exc.allowed or session.allowed_actions()),
            ) from None
        return await self._flushed(live, call_id)

    async def _flushed(self, live: LiveCall, call_id: str) -> CallResource:
        """The call once its queued changes are committed (from the writer: no read back).

        The view of the flush itself: by the time this task runs again the far end may have
        moved the call on (an ACK right after the 2xx), which only makes the writer forget
        its latest view; reading the row back then cost a database session per answer.
        """
        shown = await live.writer.flush()
        if shown is None:
            shown = live.writer.committed_call()
        return shown if shown is not None else await self.get(call_id)

    async def _act_without_session(self, call_id: str, action: Action) -> CallResource:
        row = await self._row(call_id)
        if row.state != CallState.TERMINATED.value:
            # A call with no UA session left is an orphan (its process is gone): end it.
            await self._end_orphan(call_id, reason="the call's SIP session no longer exists")
            row = await self._row(call_id)
        if is_no_op(action, row.state):
            return call_resource(row)
        raise self._conflict(action, row.direction, row.state)

    @staticmethod
    def _conflict(action: Action, direction: str, state: str) -> AppError:
        allowed = allowed_actions(direction, state)
        return InvalidStateError(
            f"{action.value} is not allowed on an {direction} call in state {state}",
            state=state,
            allowed_actions=allowed,
        )

    async def _end_orphan(self, call_id: str, *, reason: str) -> None:
        writer = CallWriter(
            call_id,
            database=self._database,
            notifier=self._notifier,
            default_webhook_url=self._default_webhook_url,
        )
        end = Ending(cause=EndCause.SHUTDOWN.value, by=EndedBy.SYSTEM.value, reason=reason)
        writer.submit(
            Change(
                view=SessionView(at=utcnow(), state=CallState.TERMINATED.value, end=end),
                event=EventType.ENDED.value,
            )
        )
        writer.start()
        await writer.wait_finished()


_REST_ACTIONS = frozenset(action.value for action in Action)


def _rest_actions(actions: Sequence[str]) -> tuple[str, ...]:
    """The UA's allowed actions that this API offers (``dtmf``/``refer`` come later)."""
    return tuple(action for action in actions if action in _REST_ACTIONS)


def _invitation(session: Session) -> Invitation:
    if not isinstance(session, Invitation):  # the rules table refuses this earlier
        raise StateTransitionError(
            "only an inbound call has this action", state=session.state.value
        )
    return session


def _inviter(session: Session) -> Inviter:
    if not isinstance(session, Inviter):
        raise StateTransitionError(
            "only an outbound call can be cancelled", state=session.state.value
        )
    return session


async def _call_cancel(session: Session) -> None:
    await _inviter(session).cancel()


def _bye_with(headers: commands.HeaderFields) -> Callable[[Session], Awaitable[None]]:
    async def run(session: Session) -> None:
        await session.bye(headers)

    return run


async def _call_dispose(session: Session) -> None:
    await session.dispose()

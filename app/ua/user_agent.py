"""``UserAgent``: the transaction user above the SIP endpoint (SIP.js ``UserAgent`` +
``UserAgentCore``).

Every endpoint event comes in through :meth:`UserAgent.handle_event` (synchronously, from
the glue's pump) and is routed to its session's ordered queue: responses by client
transaction (or, for a 2xx that matched no transaction any more, by Call-ID and From tag),
in-dialog requests and ACKs by Call-ID and our tag, CANCELs by the INVITE's server
transaction. A new out-of-dialog INVITE becomes an :class:`Invitation` handed to
``delegate.on_invite``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any

from app.sip.dialog import Dialog
from app.sip.digest import build_challenge, parse_credentials, verify_credentials
from app.sip.errors import LocalProtocolError, SipError
from app.sip.events import (
    AckReceived,
    CancelReceived,
    Event,
    MessageDropped,
    RequestReceived,
    ResponseReceived,
    TransactionTimedOut,
    TransportErrorOccurred,
)
from app.sip.message import Request, make_response
from app.sip.transactions.keys import ClientTransactionId, ServerTransactionId
from app.ua.core import SipCore
from app.ua.invitation import Invitation
from app.ua.sdh import SessionDescriptionHandlerFactory
from app.ua.session import Session, new_session_id

__all__ = ["UserAgent", "UserAgentConfig", "UserAgentDelegate"]

log = logging.getLogger("app.ua")

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Requests that only make sense inside a dialog: out of one they get 481 (RFC 3261 §12.2.2,
# RFC 3262 §3, RFC 6086 §4.2.2, RFC 3311 §5.2, RFC 6665 §4.1.3).
_DIALOG_ONLY = frozenset({"BYE", "PRACK", "INFO", "UPDATE", "NOTIFY"})
# How long a nonce of our inbound challenges stays good (RFC 7616 §5.4: servers choose).
_NONCE_LIFETIME = 300.0


@dataclass(frozen=True, slots=True)
class UserAgentConfig:
    """What the UA needs to know about itself (see docs/ua-api.md)."""

    contact_host: str
    contact_port: int
    transport: str = "udp"
    user: str = "callctl"  # user part of our Contact and of the default From
    t1: float = 0.5  # RFC 3261 §17.1.1.1 (64*T1: ACK wait, PRACK wait, CANCEL guard)
    t2: float = 4.0  # cap of the 2xx retransmission interval (RFC 3261 §13.3.1.4)
    t4: float = 5.0
    auto_provisional: bool = True  # Invitation: 180 right after 100 unless 100rel
    inbound_timeout: float = 60.0  # Invitation: no final answer -> 480, no_answer
    outbound_proxy: str | None = None  # SIP URI, pre-loaded Route (;lr) of new INVITEs
    user_agent: str = "callctl/0.1"
    allow: tuple[str, ...] = (
        "INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO", "PRACK", "UPDATE"
    )  # fmt: skip
    supported: tuple[str, ...] = ("100rel",)
    # Inbound INVITEs only from these networks (None: from anywhere) -> else 403.
    inbound_allow: tuple[IpNetwork, ...] | None = None
    # Inbound INVITEs must authenticate (digest, 401) as one of these (user, password).
    inbound_auth: tuple[tuple[str, str], ...] = ()
    auth_realm: str = "callctl"


class UserAgentDelegate:
    """SIP.js ``UserAgentDelegate``: override :meth:`on_invite`."""

    def on_invite(self, invitation: Invitation) -> None:
        """A new inbound INVITE (after 100 Trying and, if automatic, 180 Ringing)."""


class UserAgent:
    """The UA: makes and tracks sessions, routes endpoint events to them."""

    def __init__(
        self,
        core: SipCore,
        config: UserAgentConfig,
        sdh_factory: SessionDescriptionHandlerFactory,
        delegate: UserAgentDelegate | None = None,
        *,
        id_factory: Callable[[], str] | None = None,
    ) -> None:
        self.core = core
        self.config = config
        self.sdh_factory = sdh_factory
        self.delegate = delegate
        self.sessions: dict[str, Session] = {}
        self._id_factory = id_factory or new_session_id
        self._by_client_tx: dict[ClientTransactionId, Session] = {}
        self._by_server_tx: dict[ServerTransactionId, Session] = {}
        self._by_dialog: dict[tuple[str, str], Session] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._nonce_key = secrets.token_bytes(32)
        self._users = dict(config.inbound_auth)

    # ================================================================================
    # public

    @property
    def contact(self) -> str:
        """Our Contact value (RFC 3261 §8.1.1.8)."""
        cfg = self.config
        host = f"[{cfg.contact_host}]" if ":" in cfg.contact_host else cfg.contact_host
        return f"<sip:{cfg.user}@{host}:{cfg.contact_port};transport={cfg.transport.lower()}>"

    @property
    def busy(self) -> bool:
        """Some session still has queued work (tests wait for this to turn False)."""
        return any(not task.done() for task in self._tasks)

    def new_session_id(self) -> str:
        return self._id_factory()

    async def close(self) -> None:
        """End every live session with cause ``shutdown``: BYE the established ones,
        CANCEL ringing outbound calls, answer unanswered inbound ones 503."""
        self._closing = True
        for session in list(self.sessions.values()):
            try:
                await session._shutdown()
            except Exception:
                log.exception("session %s: shutdown failed", session.id)

    # ================================================================================
    # what sessions call

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def add_session(self, session: Session) -> None:
        self.sessions[session.id] = session
        self._by_dialog[(session.call_id, session.local_tag)] = session

    def session_ended(self, session: Session) -> None:
        self.sessions.pop(session.id, None)
        # Keep routing to the ended session for 64*T1 (RFC 6026 Timer M's span): late 2xx
        # get their ACK (and BYE), late requests their 481.
        self.core.call_later(64 * self.config.t1, partial(self._forget, session))

    def route_client_tx(self, tx: ClientTransactionId, session: Session) -> None:
        self._by_client_tx[tx] = session

    def route_server_tx(self, tx: ServerTransactionId, session: Session) -> None:
        self._by_server_tx[tx] = session
        session._server_txs.append(tx)

    def endpoint_dialogs_register(self, dialog: Dialog) -> None:
        try:
            self.core.endpoint.dialogs.register(dialog)
        except LocalProtocolError:
            log.debug("dialog %r not registered (terminated)", dialog)

    def endpoint_dialogs_unregister(self, dialog: Dialog) -> None:
        self.core.endpoint.dialogs.unregister(dialog)

    def _forget(self, session: Session) -> None:
        for tx in session._client_txs:
            if self._by_client_tx.get(tx) is session:
                del self._by_client_tx[tx]
        # The session's own list, not a scan of every routed transaction: with 64*T1 of
        # ended sessions kept, a scan cost O(calls held) per call (4 % of the CPU at 250 cps).
        for stx in session._server_txs:
            if self._by_server_tx.get(stx) is session:
                del self._by_server_tx[stx]
        key = (session.call_id, session.local_tag)
        if self._by_dialog.get(key) is session:
            del self._by_dialog[key]

    # ================================================================================
    # the TU entry point

    def handle_event(self, event: Event) -> None:
        """Route one endpoint event (called synchronously by the glue)."""
        try:
            self._dispatch(event)
        except SipError as exc:
            log.info("event %s not handled: %s", type(event).__name__, exc)

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, RequestReceived):
            self._on_request(event)
        elif isinstance(event, AckReceived):
            session = self._by_server_tx.get(event.server_tx) if event.server_tx else None
            if session is None:
                tag = event.request.to.tag
                session = self._by_dialog.get((event.request.call_id, tag or ""))
            if session is not None:
                session.enqueue(partial(session._handle_ack, event))
        elif isinstance(event, CancelReceived):
            session = self._by_server_tx.get(event.server_tx)
            if session is not None:
                session.enqueue(session._handle_cancel)
        elif isinstance(event, ResponseReceived):
            self._on_response(event)
        elif isinstance(event, TransactionTimedOut | TransportErrorOccurred):
            tx = event.tx
            if not isinstance(tx, ClientTransactionId):
                return  # server side: Timer H, a lost response; nothing for the session
            session = self._by_client_tx.get(tx)
            if session is None:
                return
            kind = session._client_txs.get(tx, "aux")
            if isinstance(event, TransactionTimedOut):
                reason = f"no response (Timer {event.timer.value})"
            else:
                reason = f"transport error: {event.error}"
            session.enqueue(partial(session._handle_tx_failure, kind, reason, tx))
        elif isinstance(event, MessageDropped):
            return

    def _on_response(self, event: ResponseReceived) -> None:
        resp = event.response
        session: Session | None = None
        kind = "aux"
        if event.client_tx is not None:
            session = self._by_client_tx.get(event.client_tx)
            if session is not None:
                kind = session._client_txs.get(event.client_tx, "aux")
        if session is None and resp.cseq.method == "INVITE":
            # RFC 3261 §13.2.2.4: a 2xx of a fork after the transaction is gone still
            # belongs to the session of its Call-ID and From tag.
            session = self._by_dialog.get((resp.call_id, resp.from_.tag or ""))
            kind = "invite"
        if session is None:
            log.debug("response %s %s for no session", resp.status, resp.cseq.method)
            return
        session.enqueue(partial(session._handle_response, event, kind))

    def _on_request(self, event: RequestReceived) -> None:
        req = event.request
        to_tag = req.to.tag
        if to_tag:
            session = self._by_dialog.get((req.call_id, to_tag))
            if session is None:
                self._reply(event, 481)  # RFC 3261 §12.2.2
                return
            session.enqueue(partial(session._handle_request, event))
            return
        if req.method == "INVITE":
            self._on_new_invite(event)
        elif req.method in _DIALOG_ONLY:
            self._reply(event, 481)
        else:
            self._reply(event, 501)

    def _reply(
        self, event: RequestReceived, status: int, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        resp = make_response(event.request, status)
        for name, value in headers:
            resp.headers.add(name, value)
        try:
            self.core.send_response(event.server_tx, resp)
        except LocalProtocolError as exc:
            log.info("could not answer %s with %s: %s", event.request.method, status, exc)

    # ================================================================================
    # new inbound INVITEs

    def _on_new_invite(self, event: RequestReceived) -> None:
        req = event.request
        if self._closing:
            self._reply(event, 503)
            return
        if not self._allowed_source(event.source[0]):
            log.info("INVITE from %s refused (not in inbound_allow)", event.source[0])
            self._reply(event, 403)
            return
        if self._users and not self._authorized(req):
            # RFC 3261 §22.2: a UAS challenges with 401 and WWW-Authenticate.
            challenge = build_challenge(realm=self.config.auth_realm, nonce=self._new_nonce())
            self._reply(event, 401, (("WWW-Authenticate", challenge),))
            return
        invitation = Invitation(self, event)
        invitation.enqueue(invitation._start)

    def _allowed_source(self, host: str) -> bool:
        nets = self.config.inbound_allow
        if nets is None:
            return True
        try:
            addr = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return False
        return any(addr.version == net.version and addr in net for net in nets)

    def _new_nonce(self) -> str:
        stamp = f"{int(self.core.now() * 1000):x}"
        sig = hmac.new(self._nonce_key, stamp.encode(), hashlib.sha256).hexdigest()[:24]
        return f"{stamp}.{sig}"

    def _nonce_fresh(self, nonce: str) -> bool:
        stamp, _, sig = nonce.partition(".")
        want = hmac.new(self._nonce_key, stamp.encode(), hashlib.sha256).hexdigest()[:24]
        if not hmac.compare_digest(sig, want):
            return False
        try:
            issued = int(stamp, 16) / 1000
        except ValueError:
            return False
        return 0 <= self.core.now() - issued <= _NONCE_LIFETIME

    def _authorized(self, req: Request) -> bool:
        for value in req.headers.get_all("Authorization"):
            try:
                creds = parse_credentials(value)
            except SipError:
                continue
            password = self._users.get(creds.username)
            if (
                password is None
                or creds.realm != self.config.auth_realm
                or creds.userhash
                or not self._nonce_fresh(creds.nonce)
            ):
                continue
            if verify_credentials(creds, method=req.method, password=password, body=req.body):
                return True
        return False

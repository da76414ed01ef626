"""``SipEndpoint``: the one object the asyncio glue drives (sans-IO, RFC 3261 §17, §18).

Bytes in with ``receive(data, addr, transport, now)``; bytes out with ``outgoing()``;
events for the transaction user (TU) with ``next_event()``; one timer with ``get_timer()``
and ``handle_timer(now)``.  The endpoint owns the transactions, the dialog registry the
TU registers into, and answers by itself what a UA core must answer without the TU:
400 for broken requests (when they can be answered), the responses of
``validate.validate_request`` (405/416/420/501/505...), 481 for unknown dialogs and
unmatched CANCELs, 482 for merged requests, 500 for out-of-order in-dialog CSeqs,
200 + 487 for a CANCEL, and OPTIONS out of dialog (``EndpointConfig.answer_options``).
"""

from __future__ import annotations

import functools
import heapq
import ipaddress
import logging
from collections import Counter, deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeAlias

from app.sip.dialog import Dialog, DialogRegistry, build_cancel
from app.sip.errors import LocalProtocolError, RemoteProtocolError, SipError, SipParseError
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
from app.sip.ids import new_branch, new_tag
from app.sip.message import Message, Request, Response, make_response
from app.sip.parser import is_keepalive, parse_message
from app.sip.timers import TimerConfig, TimerName, is_reliable
from app.sip.trace import Direction, SipTrace, describe
from app.sip.transactions.base import (
    DeliverEffect,
    Effect,
    SendEffect,
    TimeoutEffect,
    TimerSetEffect,
    Transaction,
    TransportErrorEffect,
    TxInput,
    TxState,
    response_input,
    tu_input,
)
from app.sip.transactions.ict import InviteClientTransaction
from app.sip.transactions.ist import InviteServerTransaction
from app.sip.transactions.keys import (
    ClientTransactionId,
    ServerTransactionId,
    TransactionId,
    legacy_server_id,
    server_id,
)
from app.sip.transactions.nict import NonInviteClientTransaction
from app.sip.transactions.nist import NonInviteServerTransaction
from app.sip.validate import can_answer, salvage_request, validate_request

__all__ = [
    "Addr",
    "ClientTransactionId",
    "DropReason",
    "EndpointConfig",
    "Outgoing",
    "ServerTransactionId",
    "SipEndpoint",
    "TransactionId",
]

Addr: TypeAlias = tuple[str, int]

log = logging.getLogger("app.sip")

DEFAULT_ALLOWED_METHODS = (
    "INVITE",
    "ACK",
    "CANCEL",
    "BYE",
    "OPTIONS",
    "INFO",
    "PRACK",
    "UPDATE",
    "REFER",
    "NOTIFY",
)
# Transports whose messages come framed from a byte stream (RFC 3261 §18.3: there
# Content-Length is mandatory).  WebSocket frames carry one message each (RFC 7118).
_STREAM_TRANSPORTS = frozenset({"TCP", "TLS"})
# RFC 3261 §19.1.2 / §18.2.2 default ports.
_DEFAULT_PORT = 5060
_DEFAULT_TLS_PORT = 5061
# RFC 3261 §8.1.1.6
_MAX_FORWARDS = "70"


class DropReason(StrEnum):
    """Why the endpoint threw input away (``MessageDropped.reason``, ``stats`` keys)."""

    GARBAGE = "garbage"  # does not parse and cannot be answered
    STRAY_RESPONSE = "stray_response"  # matches no client transaction (§17.1.3, §18.1.2)
    INVALID_ACK = "invalid_ack"  # an ACK that fails validation (never answered, §17)
    UNKNOWN_TRANSPORT = "unknown_transport"
    INTERNAL_ERROR = "internal_error"  # handling it raised: a bug, logged with traceback


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointConfig:
    """What the endpoint needs to know about itself (field names are the doc's)."""

    local_host: str = "127.0.0.1"  # sent-by host of our Via
    local_port: int = 5060  # sent-by port of our Via
    transports: tuple[str, ...] = ("udp", "tcp")
    timers: TimerConfig = field(default_factory=TimerConfig)
    allowed_methods: tuple[str, ...] = DEFAULT_ALLOWED_METHODS
    supported: tuple[str, ...] = ("100rel", "replaces", "timer")
    user_agent: str | None = "callctl/0.1"  # User-Agent of requests, Server of responses
    # Answer OPTIONS outside a dialog with 200 + Allow/Accept/Supported (RFC 3261 §11.2).
    answer_options: bool = True
    # Bodies we accept (OPTIONS Accept; with check_content_type also 415, §8.2.3).
    accept: tuple[str, ...] = ("application/sdp",)
    check_content_type: bool = False
    # RFC 3261 §17.2.1: send 100 Trying for every new INVITE at once.
    send_trying: bool = True
    # RFC 3261 §12.2.2: 481 for requests with a To tag that match no registered dialog.
    reject_unknown_dialogs: bool = True


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to put on the wire.  ``tx`` names the transaction that sent it (None
    for stateless sends), to pass back to ``report_transport_error`` when sending fails."""

    data: bytes
    addr: Addr
    transport: str
    tx: TransactionId | None = None


@functools.lru_cache(maxsize=1024)
def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=1024)
def _same_ip(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a.strip("[]")) == ipaddress.ip_address(b.strip("[]"))
    except ValueError:
        return a.lower() == b.lower()


def _default_port(transport: str) -> int:
    return _DEFAULT_TLS_PORT if transport in ("TLS", "WSS") else _DEFAULT_PORT


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@dataclass(order=True, slots=True)
class _TimerEntry:
    deadline: float
    seq: int
    tx: Transaction = field(compare=False)
    timer: TimerName = field(compare=False)


class SipEndpoint:
    """The sans-IO SIP endpoint (transaction layer + UA core basics)."""

    def __init__(self, config: EndpointConfig | None = None, *, trace: SipTrace | None = None):
        self.config = config or EndpointConfig()
        self.trace = trace
        self.dialogs = DialogRegistry()
        # Counters for metrics: rx/tx messages, drops by reason, retransmissions, ...
        self.stats: Counter[str] = Counter()
        self._transports = frozenset(t.upper() for t in self.config.transports)
        self._client: dict[ClientTransactionId, Transaction] = {}
        self._server: dict[ServerTransactionId, Transaction] = {}
        self._ids: dict[int, TransactionId] = {}  # id(tx) -> its key
        # RFC 3261 §8.2.2.2 merged requests: (From tag, Call-ID, CSeq) -> server tx.
        self._merge: dict[tuple[str, str, int, str], ServerTransactionId] = {}
        # RFC 3261 §9.1: CANCELs waiting for a provisional response to their INVITE.
        self._pending_cancel: dict[ClientTransactionId, Request] = {}
        self._out: list[Outgoing] = []
        self._events: deque[Event] = deque()
        self._heap: list[_TimerEntry] = []
        self._seq = 0

    # ==================================================================================
    # public API

    def outgoing(self) -> list[Outgoing]:
        """Messages to send, oldest first; the list is drained."""
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        """The next event for the TU, or None."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """The earliest deadline (``now`` units) at which ``handle_timer`` must run."""
        heap = self._heap
        while heap:
            top = heap[0]
            if not top.tx.terminated and top.tx.timers.get(top.timer) == top.deadline:
                return top.deadline
            heapq.heappop(heap)  # stale: timer stopped, re-armed or transaction gone
        return None

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at ``now``."""
        heap = self._heap
        while heap and heap[0].deadline <= now:
            entry = heapq.heappop(heap)
            tx = entry.tx
            if tx.terminated or tx.timers.get(entry.timer) != entry.deadline:
                continue
            del tx.timers[entry.timer]
            self._fire(tx, TxInput("timer_" + entry.timer.value), now)

    def transaction(self, tx: TransactionId) -> Transaction | None:
        """The live transaction object (read-only use: ``.state``, ``.timers``), or None."""
        return self._lookup(tx)

    def transaction_ids(self) -> list[TransactionId]:
        """Ids of every live transaction, client ones first (for gauges and tests)."""
        return [*self._client, *self._server]

    def transaction_state(self, tx: TransactionId) -> TxState | None:
        """State of a live transaction, None once it is gone (terminated)."""
        found = self._lookup(tx)
        return found.state if found is not None else None

    def sent_request(self, tx: ClientTransactionId) -> Request | None:
        """The request of a live client transaction (with the Via the endpoint added)."""
        found = self._client.get(tx)
        return found.request if found is not None else None

    # -- sending --------------------------------------------------------------------------

    def send_request(
        self, req: Request, dest: Addr, transport: str, now: float
    ) -> ClientTransactionId:
        """Start a client transaction for ``req`` (RFC 3261 §17.1).

        Adds (in place) the top Via ``SIP/2.0/<T> host:port;branch=z9hG4bK...;rport``,
        Max-Forwards 70 when missing, User-Agent when configured and missing, and makes
        Content-Length right.  ``req`` must not have a Via yet: build a new request for an
        auth retry.  ACK (for a 2xx) goes through ``send_stateless``, CANCEL through
        ``send_cancel``.
        """
        transport = self._check_transport(transport)
        if req.method in ("ACK", "CANCEL"):
            raise LocalProtocolError(f"{req.method} is not sent with send_request")
        if "Via" in req.headers:
            raise LocalProtocolError("request already has a Via: build a new request")
        try:
            cseq_method = req.cseq.method
        except SipParseError as exc:
            raise LocalProtocolError(f"request without a valid CSeq: {exc.msg}") from exc
        if cseq_method != req.method:
            raise LocalProtocolError("CSeq method differs from the request method")
        branch = new_branch()
        self._prepare_request(req, transport, branch)
        key = ClientTransactionId(branch=branch, method=req.method)
        cls = InviteClientTransaction if req.method == "INVITE" else NonInviteClientTransaction
        tx = cls(request=req, transport=transport, peer=dest, timer_config=self.config.timers)
        self._client[key] = tx
        self._ids[id(tx)] = key
        self._fire(tx, TxInput.START, now)
        return key

    def send_cancel(
        self, invite_tx: ClientTransactionId, now: float, *, reason: str | None = None
    ) -> ClientTransactionId | None:
        """CANCEL the INVITE of ``invite_tx`` (RFC 3261 §9.1); returns the CANCEL's id.

        Before any provisional response the CANCEL waits and goes out with the first one
        (§9.1); it is dropped if a final response or a timeout comes first.  Returns None
        (and sends nothing) when the INVITE already has a final response or is gone.
        Calling it again returns the same id.
        """
        tx = self._client.get(invite_tx)
        if tx is None or not isinstance(tx, InviteClientTransaction):
            if invite_tx.method != "INVITE":
                raise LocalProtocolError("only an INVITE client transaction can be cancelled")
            return None
        key = ClientTransactionId(branch=invite_tx.branch, method="CANCEL")
        if key in self._client or invite_tx in self._pending_cancel:
            return key
        if tx.state is TxState.CALLING:
            self._pending_cancel[invite_tx] = build_cancel(tx.request, reason=reason)
            return key
        if tx.state is not TxState.PROCEEDING:
            return None
        self._start_cancel(invite_tx, tx, build_cancel(tx.request, reason=reason), now)
        return key

    def send_response(self, server_tx: ServerTransactionId, resp: Response, now: float) -> None:
        """Send ``resp`` through its server transaction (RFC 3261 §17.2).

        Raises LocalProtocolError for an unknown/terminated transaction or a response the
        transaction cannot send in its state (e.g. a second final response).  After an
        INVITE transaction ended (Timer L), 2xx retransmissions go via ``send_stateless``.
        """
        tx = self._server.get(server_tx)
        if tx is None:
            raise LocalProtocolError(f"no live server transaction {server_tx}")
        event = tu_input(resp.status)
        if not tx.allowed(event):
            raise LocalProtocolError(
                f"{tx.KIND}: cannot send a {resp.status} in state {tx.state.value}"
            )
        self._prepare_response(resp)
        self._fire(tx, event, now, resp)

    def send_stateless(self, msg: Message, dest: Addr, transport: str, now: float) -> None:
        """Send outside any transaction: the ACK for a 2xx, 2xx retransmissions by the TU.

        A request without Via gets one with a fresh branch (in place, so sending the same
        ACK again repeats it exactly); a request with a Via is sent as it is.
        """
        transport = self._check_transport(transport)
        if isinstance(msg, Request):
            if "Via" not in msg.headers:
                self._prepare_request(msg, transport, new_branch())
        else:
            self._prepare_response(msg)
        self._emit(msg, dest, transport, None, now)

    def report_transport_error(self, tx: TransactionId | None, error: str, now: float) -> None:
        """The glue failed to send an ``Outgoing`` (RFC 3261 §17.1.4 / §17.2.4).

        The transaction (if it is still alive) is told; the TU gets TransportErrorOccurred.
        """
        self.stats["transport_errors"] += 1
        found = self._lookup(tx) if tx is not None else None
        if found is None or not found.allowed(TxInput.TRANSPORT_ERROR):
            self._events.append(TransportErrorOccurred(tx=tx, error=error))
            return
        self._fire(found, TxInput.TRANSPORT_ERROR, now, error=error)

    # -- receiving ------------------------------------------------------------------------

    def receive(self, data: bytes, addr: Addr, transport: str, now: float) -> None:
        """One datagram, or one message framed from a stream (``StreamFramer``)."""
        transport = transport.upper()
        if is_keepalive(data):
            self.stats["keepalives"] += 1
            return
        self.stats["rx_messages"] += 1
        if transport not in self._transports:
            self._drop(DropReason.UNKNOWN_TRANSPORT, addr, transport, now, data, None)
            return
        try:
            msg = parse_message(data, stream=transport in _STREAM_TRANSPORTS)
        except SipParseError as exc:
            self._trace(Direction.IN, now, addr, transport, data, None)
            self._answer_garbage(data, exc, addr, transport, now)
            return
        self._trace(Direction.IN, now, addr, transport, data, msg)
        if isinstance(msg, Response):
            try:
                self._on_response(msg, addr, transport, now)
            except SipParseError as exc:
                self._drop(DropReason.GARBAGE, addr, transport, now, data, str(exc))
            return
        try:
            self._on_request(msg, addr, transport, now)
        except SipParseError as exc:
            # A structured view needed for matching did not parse.
            if can_answer(msg):
                self._answer_stateless(msg, exc.status_hint, addr, transport, now)
            else:
                self._drop(DropReason.GARBAGE, addr, transport, now, data, str(exc))
        except SipError as exc:
            # Peer input must never take the glue down; this is a bug of ours, say so loudly.
            log.exception("error handling a request from %s:%s", addr[0], addr[1])
            self._drop(DropReason.INTERNAL_ERROR, addr, transport, now, data, str(exc), msg)

    # ==================================================================================
    # internals: messages out

    def _check_transport(self, transport: str) -> str:
        upper = transport.upper()
        if upper not in self._transports:
            raise LocalProtocolError(f"transport {transport} is not enabled")
        return upper

    def _via_value(self, transport: str, branch: str) -> str:
        cfg = self.config
        # RFC 3261 §18.1.1 / §20.42; RFC 3581 §3: ask for rport.
        return (
            f"SIP/2.0/{transport} {_bracket(cfg.local_host)}:{cfg.local_port};branch={branch};rport"
        )

    def _prepare_request(self, req: Request, transport: str, branch: str) -> None:
        req.headers.prepend("Via", self._via_value(transport, branch))
        if "Max-Forwards" not in req.headers:
            req.headers.add("Max-Forwards", _MAX_FORWARDS)
        if self.config.user_agent and "User-Agent" not in req.headers:
            req.headers.add("User-Agent", self.config.user_agent)
        req.headers.set("Content-Length", str(len(req.body)))

    def _prepare_response(self, resp: Response) -> None:
        if self.config.user_agent and "Server" not in resp.headers:
            resp.headers.add("Server", self.config.user_agent)

    def _emit(
        self,
        msg: Message,
        dest: Addr,
        transport: str,
        tx: TransactionId | None,
        now: float,
    ) -> None:
        data = msg.to_bytes()
        self._out.append(Outgoing(data, dest, transport, tx))
        self.stats["tx_messages"] += 1
        self._trace(Direction.OUT, now, dest, transport, data, msg)

    def _trace(
        self,
        direction: Direction,
        now: float,
        peer: Addr,
        transport: str,
        data: bytes,
        msg: Message | None,
    ) -> None:
        if self.trace is not None:
            rec = self.trace.record(
                time=now,
                direction=direction,
                peer=peer,
                transport=transport,
                data=data,
                message=msg,
            )
            call_id, branch = rec.call_id, rec.branch
        elif log.isEnabledFor(logging.DEBUG):
            call_id, branch = describe(msg)
        else:
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s %s %s:%s %s",
                "recv" if direction is Direction.IN else "send",
                transport,
                peer[0],
                peer[1],
                data.split(b"\r\n", 1)[0][:120].decode("utf-8", "replace"),
                extra={"call_id": call_id, "branch": branch},
            )

    def _drop(
        self,
        reason: DropReason,
        addr: Addr,
        transport: str,
        now: float,
        data: bytes | None,
        detail: str | None,
        msg: Message | None = None,
    ) -> None:
        self.stats[f"dropped_{reason.value}"] += 1
        call_id = branch = None
        if msg is not None:
            call_id, branch = describe(msg)
        log.info(
            "dropped %s from %s:%s/%s: %s",
            reason.value,
            addr[0],
            addr[1],
            transport,
            detail or "",
            extra={"call_id": call_id, "branch": branch},
        )
        self._events.append(
            MessageDropped(
                reason=reason.value,
                source=addr,
                transport=transport,
                detail=detail or "",
                message=msg,
            )
        )

    # ==================================================================================
    # internals: transactions

    def _lookup(self, key: TransactionId) -> Transaction | None:
        if isinstance(key, ClientTransactionId):
            return self._client.get(key)
        return self._server.get(key)

    def _fire(
        self,
        tx: Transaction,
        event: TxInput,
        now: float,
        message: Request | Response | None = None,
        *,
        error: str | None = None,
        source: Addr | None = None,
    ) -> None:
        before = tx.retransmissions
        effects = tx.fire(event, now, message, error=error)
        self.stats["retransmissions_sent"] += tx.retransmissions - before
        self._apply(tx, effects, now, source)
        if tx.terminated:
            self._forget(tx)

    def _apply(
        self, tx: Transaction, effects: list[Effect], now: float, source: Addr | None
    ) -> None:
        key = self._ids[id(tx)]
        for effect in effects:
            if isinstance(effect, SendEffect):
                self._emit(effect.message, tx.peer, tx.transport, key, now)
            elif isinstance(effect, TimerSetEffect):
                self._seq += 1
                heapq.heappush(
                    self._heap, _TimerEntry(effect.deadline, self._seq, tx, effect.timer)
                )
            elif isinstance(effect, DeliverEffect):
                self._deliver(tx, key, effect.message, source)
            elif isinstance(effect, TimeoutEffect):
                self.stats["timeouts"] += 1
                log.info(
                    "transaction %s timed out (Timer %s)",
                    tx.KIND,
                    effect.timer.value,
                    extra=self._log_extra(tx),
                )
                self._events.append(TransactionTimedOut(tx=key, timer=effect.timer))
            elif isinstance(effect, TransportErrorEffect):
                self._events.append(TransportErrorOccurred(tx=key, error=effect.error))

    def _deliver(
        self, tx: Transaction, key: TransactionId, message: Request | Response, source: Addr | None
    ) -> None:
        src = source if source is not None else tx.peer
        if isinstance(message, Response):
            assert isinstance(key, ClientTransactionId)
            self._events.append(
                ResponseReceived(
                    response=message, client_tx=key, source=src, transport=tx.transport
                )
            )
            return
        assert isinstance(key, ServerTransactionId)
        self._events.append(
            AckReceived(
                request=message,
                source=src,
                transport=tx.transport,
                server_tx=key,
                dialog=self._find_dialog(message),
            )
        )

    def _forget(self, tx: Transaction) -> None:
        key = self._ids.pop(id(tx), None)
        if isinstance(key, ClientTransactionId):
            self._client.pop(key, None)
            self._pending_cancel.pop(key, None)
        elif isinstance(key, ServerTransactionId):
            self._server.pop(key, None)
            merge_key = self._merge_key(tx.request)
            if merge_key is not None and self._merge.get(merge_key) == key:
                del self._merge[merge_key]

    @staticmethod
    def _log_extra(tx: Transaction) -> dict[str, object]:
        try:
            return {"call_id": tx.request.call_id, "branch": tx.request.top_via.branch}
        except SipParseError:
            return {"call_id": None, "branch": None}

    def _start_cancel(
        self, invite_key: ClientTransactionId, invite: Transaction, cancel: Request, now: float
    ) -> None:
        key = ClientTransactionId(branch=invite_key.branch, method="CANCEL")
        if self.config.user_agent and "User-Agent" not in cancel.headers:
            cancel.headers.add("User-Agent", self.config.user_agent)
        tx = NonInviteClientTransaction(
            request=cancel,
            transport=invite.transport,
            peer=invite.peer,
            timer_config=self.config.timers,
        )
        self._client[key] = tx
        self._ids[id(tx)] = key
        self._fire(tx, TxInput.START, now)

    # ==================================================================================
    # internals: responses in

    def _on_response(self, resp: Response, addr: Addr, transport: str, now: float) -> None:
        # RFC 3261 §17.1.3: match on the top Via branch and the CSeq method.
        branch = resp.top_via.branch
        method = resp.cseq.method
        key = ClientTransactionId(branch=branch, method=method) if branch else None
        tx = self._client.get(key) if key is not None else None
        if tx is None or key is None:
            if method == "INVITE" and 200 <= resp.status < 300:
                # RFC 6026 §8.4 / RFC 3261 §13.2.2.4: a 2xx after the transaction ended
                # (or of another fork) still needs the TU's ACK.
                self._events.append(
                    ResponseReceived(
                        response=resp, client_tx=None, source=addr, transport=transport
                    )
                )
                return
            self._drop(
                DropReason.STRAY_RESPONSE,
                addr,
                transport,
                now,
                None,
                f"{resp.status} {method}",
                resp,
            )
            return
        event = response_input(resp.status)
        delivered_before = len(self._events)
        self._fire(tx, event, now, resp, source=addr)
        if len(self._events) == delivered_before:
            self.stats["retransmissions_received"] += 1
        if isinstance(tx, InviteClientTransaction):
            self._after_invite_response(key, tx, resp, now)

    def _after_invite_response(
        self, key: ClientTransactionId, tx: InviteClientTransaction, resp: Response, now: float
    ) -> None:
        pending = self._pending_cancel.pop(key, None)
        if pending is None:
            return
        if resp.status < 200 and not tx.terminated:
            # RFC 3261 §9.1: the provisional response allows the CANCEL out.
            self._start_cancel(key, tx, pending, now)

    # ==================================================================================
    # internals: requests in

    def _on_request(self, req: Request, addr: Addr, transport: str, now: float) -> None:
        self._rfc3581(req, addr)
        method = req.method
        # RFC 3261 §17.2.3: does it belong to a server transaction?
        tx, key = self._match_server(req)
        if tx is not None and key is not None:
            if method != "ACK" or tx.state is TxState.CONFIRMED:
                self.stats["retransmissions_received"] += 1
            event = TxInput.RECV_ACK if method == "ACK" else TxInput.RECV_REQUEST
            self._fire(tx, event, now, req, source=addr)
            return
        if method == "ACK":
            self._on_stray_ack(req, addr, transport, now)
            return
        dest = self._response_addr(req, addr, transport)
        # RFC 3261 §8.2: checks of a UAS core.
        rejection = validate_request(
            req,
            allowed_methods=self.config.allowed_methods,
            supported=self.config.supported,
            accepted_content_types=self.config.accept if self.config.check_content_type else None,
        )
        if rejection is not None:
            self._answer(req, rejection, addr, transport, dest, now)
            return
        if method == "CANCEL":
            self._on_cancel(req, addr, transport, dest, now)
            return
        to_tag = req.to.tag
        dialog: Dialog | None = None
        if to_tag:
            dialog = self.dialogs.find_for_request(req)
            if dialog is None:
                if self.config.reject_unknown_dialogs:
                    # RFC 3261 §12.2.2: no such dialog (and no transaction matched).
                    self._answer_status(req, 481, addr, transport, dest, now)
                    return
            else:
                try:
                    dialog.receive_request(req)
                except RemoteProtocolError as exc:
                    # §12.2.2: a lower CSeq is out of order -> 500.
                    self._answer_status(
                        req, exc.status_hint, addr, transport, dest, now, detail=exc.msg
                    )
                    return
        else:
            merged = self._merged(req)
            if merged:
                # RFC 3261 §8.2.2.2: the same request reached us along another path.
                self._answer_status(req, 482, addr, transport, dest, now)
                return
            if method == "OPTIONS" and self.config.answer_options:
                self._answer(req, self._options_response(req), addr, transport, dest, now)
                return
        tx, skey = self._new_server_tx(req, transport, dest, now)
        if method == "INVITE" and self.config.send_trying:
            # RFC 3261 §17.2.1: 100 Trying at once, so INVITE retransmissions stop.
            trying = make_response(req, 100)
            self._prepare_response(trying)
            self._fire(tx, TxInput.TU_1XX, now, trying)
        self._events.append(
            RequestReceived(
                request=req, server_tx=skey, source=addr, transport=transport, dialog=dialog
            )
        )

    def _rfc3581(self, req: Request, addr: Addr) -> None:
        """RFC 3261 §18.2.1 received=, RFC 3581 §4 rport=: record where it came from."""
        via = req.top_via
        host, port = addr
        add_received = not _same_ip(via.host, host)
        wants_rport = via.has_rport and via.rport is None
        if not add_received and not wants_rport:
            return
        new = via.copy()
        if add_received or wants_rport:
            # RFC 3581 §4: with rport, received is added even when it equals sent-by.
            new.received = host.strip("[]") if _is_ip(host) else host
        if wants_rport:
            new.rport = port
        req.top_via = new

    def _response_addr(self, req: Request, addr: Addr, transport: str) -> Addr:
        """Where responses to ``req`` go (RFC 3261 §18.2.2, RFC 3581 §4)."""
        if is_reliable(transport):
            return addr  # the same connection: the glue maps the address to it
        via = req.top_via
        port = via.port or _default_port(transport)
        if via.maddr:
            return via.maddr, port
        if via.received:
            rport = via.rport
            return via.received, rport if rport is not None else port
        return via.host.strip("[]"), port

    def _match_server(self, req: Request) -> tuple[Transaction | None, ServerTransactionId | None]:
        key = server_id(req)
        if key is not None:
            return self._server.get(key), key
        # RFC 3261 §17.2.3, RFC 2543 peers: match on Request-URI, tags, Call-ID, CSeq, Via.
        key = legacy_server_id(req)
        tx = self._server.get(key)
        if tx is None:
            return None, None
        if req.method == "ACK":
            last = tx.last_response
            wanted = last.to.tag if last is not None else None
        else:
            wanted = tx.request.to.tag
        if req.to.tag != wanted:
            return None, None
        return tx, key

    def _server_key(self, req: Request, method: str | None = None) -> ServerTransactionId:
        key = server_id(req, method=method)
        return key if key is not None else legacy_server_id(req, method=method)

    def _new_server_tx(
        self, req: Request, transport: str, dest: Addr, now: float
    ) -> tuple[Transaction, ServerTransactionId]:
        key = self._server_key(req)
        cls = InviteServerTransaction if req.method == "INVITE" else NonInviteServerTransaction
        tx = cls(request=req, transport=transport, peer=dest, timer_config=self.config.timers)
        self._server[key] = tx
        self._ids[id(tx)] = key
        merge_key = self._merge_key(req)
        if merge_key is not None:
            self._merge[merge_key] = key
        tx.fire(TxInput.START, now)  # no effects: server machines start silently
        return tx, key

    @staticmethod
    def _merge_key(req: Request) -> tuple[str, str, int, str] | None:
        try:
            if req.to.tag:
                return None
            return (req.from_.tag or "", req.call_id, req.cseq.seq, req.cseq.method)
        except SipParseError:
            return None

    def _merged(self, req: Request) -> bool:
        merge_key = self._merge_key(req)
        if merge_key is None:
            return False
        other = self._merge.get(merge_key)
        return other is not None and other in self._server

    def _find_dialog(self, req: Request) -> Dialog | None:
        try:
            return self.dialogs.find_for_request(req)
        except SipParseError:
            return None

    def _on_stray_ack(self, req: Request, addr: Addr, transport: str, now: float) -> None:
        """An ACK matching no transaction: the ACK for a 2xx (RFC 3261 §17.2.3, §13.3.1.4)."""
        problem = validate_request(
            req, allowed_methods=self.config.allowed_methods, supported=self.config.supported
        )
        if problem is not None:
            # §17: ACK is never answered.
            self._drop(
                DropReason.INVALID_ACK,
                addr,
                transport,
                now,
                None,
                f"{problem.status} {problem.reason}",
                req,
            )
            return
        dialog = self._find_dialog(req)
        if dialog is not None:
            dialog.receive_request(req)
        self._events.append(
            AckReceived(request=req, source=addr, transport=transport, dialog=dialog)
        )

    def _on_cancel(self, req: Request, addr: Addr, transport: str, dest: Addr, now: float) -> None:
        """RFC 3261 §9.2: find the INVITE the CANCEL is for, answer both."""
        invite_key = self._server_key(req, method="INVITE")
        invite = self._server.get(invite_key)
        if invite is not None and server_id(req) is None and req.to.tag != invite.request.to.tag:
            invite = None  # RFC 2543 rule: the To tag must match the INVITE's too
        if invite is None:
            self._answer_status(req, 481, addr, transport, dest, now)
            return
        last = invite.last_response
        # §9.2: the CANCEL's 200 and the 487 carry the To tag the INVITE's responses have.
        to_tag = (last.to.tag if last is not None else None) or new_tag()
        tx, _ = self._new_server_tx(req, transport, dest, now)
        ok = make_response(req, 200, to_tag=to_tag)
        self._prepare_response(ok)
        self._fire(tx, TxInput.TU_2XX, now, ok)
        answered = invite.state is not TxState.PROCEEDING
        if not answered:
            # §9.2: the INVITE gets 487 Request Terminated (same To tag as its 1xx).
            terminated = make_response(invite.request, 487, to_tag=to_tag)
            self._prepare_response(terminated)
            self.stats["answered_487"] += 1
            self._fire(invite, TxInput.TU_FINAL, now, terminated)
        self._events.append(
            CancelReceived(
                request=req,
                server_tx=invite_key,
                source=addr,
                transport=transport,
                invite_answered=answered,
            )
        )

    def _options_response(self, req: Request) -> Response:
        """RFC 3261 §11.2: 200 with what we allow, accept and support."""
        resp = make_response(req, 200)
        resp.headers.add("Allow", ", ".join(self.config.allowed_methods))
        resp.headers.add("Accept", ", ".join(self.config.accept))
        if self.config.supported:
            resp.headers.add("Supported", ", ".join(self.config.supported))
        return resp

    def _answer_status(
        self,
        req: Request,
        status: int,
        addr: Addr,
        transport: str,
        dest: Addr,
        now: float,
        *,
        detail: str | None = None,
    ) -> None:
        self._answer(req, make_response(req, status), addr, transport, dest, now, detail=detail)

    def _answer(
        self,
        req: Request,
        resp: Response,
        addr: Addr,
        transport: str,
        dest: Addr,
        now: float,
        *,
        detail: str | None = None,
    ) -> None:
        """Answer ``req`` without the TU, through a server transaction (so retransmissions
        of the request get the same response again)."""
        self.stats[f"answered_{resp.status}"] += 1
        call_id, branch = describe(req)
        log.info(
            "answered %s %s from %s:%s with %s %s%s",
            req.method,
            req.uri,
            addr[0],
            addr[1],
            resp.status,
            resp.reason,
            f" ({detail})" if detail else "",
            extra={"call_id": call_id, "branch": branch},
        )
        tx, _ = self._new_server_tx(req, transport, dest, now)
        self._prepare_response(resp)
        self._fire(tx, tu_input(resp.status), now, resp)

    def _answer_stateless(
        self, req: Request, status: int, addr: Addr, transport: str, now: float
    ) -> None:
        """Answer a request too broken for a transaction; straight back to its source."""
        resp = make_response(req, status if 300 <= status <= 699 else 400)
        self._prepare_response(resp)
        self.stats[f"answered_{resp.status}"] += 1
        log.info(
            "answered unparseable request from %s:%s with %s",
            addr[0],
            addr[1],
            resp.status,
            extra={"call_id": req.headers.get("Call-ID"), "branch": None},
        )
        self._emit(resp, addr, transport, None, now)

    def _answer_garbage(
        self, data: bytes, exc: SipParseError, addr: Addr, transport: str, now: float
    ) -> None:
        salvaged = salvage_request(data)
        if salvaged is None:
            self._drop(DropReason.GARBAGE, addr, transport, now, data, exc.msg)
            return
        self._answer_stateless(salvaged, exc.status_hint, addr, transport, now)

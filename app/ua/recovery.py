"""What outlives a user agent's sessions: ending calls of a dead process, refusing INVITEs
while the service drains.

After a crash the sessions and their transactions are gone; what survives is the
:class:`~app.ua.session.DialogSnapshot` the call service persisted with every change. The
:class:`RecoveryAgent` ends such a call from it, through the ``SipCore``:

* a confirmed dialog gets a BYE built from the snapshot (RFC 3261 §12.2.1.1: remote target,
  route set, Call-ID, tags, the next local CSeq) in a new client transaction;
* an outbound INVITE without a final response gets a CANCEL with the INVITE's branch and
  CSeq number (RFC 3261 §9.1). The INVITE client transaction died with the process, so
  the agent plays its part: it retransmits the CANCEL (Timer E style, §17.1.2.2), ACKs a
  final non-2xx to the INVITE with the INVITE's branch (§17.1.1.3), and ACKs and BYEs a
  2xx that crossed the CANCEL (§15, as ``Inviter`` does);
* an inbound INVITE that was never answered finally gets a 480 built from the INVITE as
  stored (§8.2.6, sent to the top Via's response address, §18.2.2), retransmitted until
  its ACK (Timer G style, §17.2.1); retransmissions of that INVITE get the same 480.
  Without the stored Via nothing can be sent: the caller's own timers end its side.

The agent is the transaction user (TU) the ``ServerCore`` talks to; it consumes the events
of what it ended and hands everything else to the UA behind it. While the service drains
(:meth:`RecoveryAgent.refuse_new_invites`), new out-of-dialog INVITEs get 503 with a
Retry-After (RFC 3261 §21.5.4) before they reach the UA; in-dialog requests go on. The
same happens to a new INVITE that admission control refuses (:meth:`RecoveryAgent.admit_with`:
overload, or the call cap), each asked once per INVITE: the 503 goes through the INVITE's
server transaction, so its retransmissions get the same 503 and its ACK is absorbed
(§17.2.1).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from app.sip.dialog import Dialog, DialogRole, DialogState, build_cancel
from app.sip.errors import LocalProtocolError, SipError
from app.sip.events import (
    AckReceived,
    Event,
    MessageDropped,
    RequestReceived,
    ResponseReceived,
    TransactionTimedOut,
    TransportErrorOccurred,
)
from app.sip.headers import NameAddr, parse_name_addr
from app.sip.message import Headers, Request, Response, make_response
from app.sip.transactions.keys import ClientTransactionId
from app.sip.uri import SipUri, parse_uri
from app.ua.core import Cancellable, SipCore, TransactionUser
from app.ua.session import DialogSnapshot

__all__ = [
    "InviteAdmission",
    "OrphanDialog",
    "RecoveryAction",
    "RecoveryAgent",
    "RecoveryOutcome",
]

log = logging.getLogger("app.ua.recovery")

Addr = tuple[str, int]

_MAX_FORWARDS = "70"
# RFC 3261 §18.2.2 / §19.1.2: the default port of a Via sent-by.
_DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061, "ws": 80, "wss": 443}
_UNRELIABLE = frozenset({"udp"})


class RecoveryAction(StrEnum):
    BYE = "bye"
    CANCEL = "cancel"
    REJECT = "reject"  # a 480 to the stored INVITE
    NONE = "none"  # nothing could be sent (the INVITE never left, no stored Via, ...)


class InviteAdmission(Protocol):
    """Decides whether a new INVITE may start a call (``app.calls.admission``)."""

    def admit_invite(self) -> int | None:
        """None: hand it to the UA; else refuse it with 503 and this Retry-After (s)."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class OrphanDialog:
    """A call left unfinished by a previous process, as the store keeps it."""

    label: str  # the call's id, for the log
    direction: str  # "outbound" | "inbound"
    answered: bool  # a 2xx was sent or received: the dialog is confirmed
    snapshot: DialogSnapshot
    local_uri: str
    remote_uri: str
    local_display_name: str | None = None
    remote_display_name: str | None = None
    # Inbound: the INVITE as received (Request-URI, header fields in order per name).
    request_uri: str | None = None
    request_headers: Sequence[tuple[str, str]] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryOutcome:
    """What :meth:`RecoveryAgent.end_call` sent."""

    action: RecoveryAction
    detail: str
    local_cseq: int | None = None  # the CSeq number a BYE used (persist it)


@dataclass(slots=True, kw_only=True)
class _Resend:
    """A message the agent retransmits itself (no transaction of the endpoint holds it)."""

    message: Request | Response
    dest: Addr
    transport: str
    interval: float
    handle: Cancellable | None = None
    done: bool = False


@dataclass(slots=True, kw_only=True)
class _Cancelled:
    """An INVITE of a dead process being cancelled (RFC 3261 §9.1)."""

    label: str
    invite: Request  # the INVITE's skeleton: Request-URI, top Via, Route, From, To, ...
    cancel: _Resend
    dest: Addr
    transport: str
    acked: dict[str, Request] = field(default_factory=dict)  # ACK per To tag


@dataclass(slots=True, kw_only=True)
class _Rejected:
    """An inbound INVITE of a dead process answered 480 here (RFC 3261 §17.2.1)."""

    label: str
    response: _Resend


class RecoveryAgent:
    """The TU in front of the UA: ends orphaned calls, refuses INVITEs while draining
    or when admission control says so.

    Wiring: ``agent = RecoveryAgent(core, t1=..., t2=...)``, ``core.attach(agent)``,
    ``agent.attach(ua)``, optionally ``agent.admit_with(admission)``.
    """

    def __init__(
        self,
        core: SipCore,
        *,
        t1: float = 0.5,
        t2: float = 4.0,
        outbound_proxy: str | None = None,
        next_tu: TransactionUser | None = None,
    ) -> None:
        self.core = core
        self.t1 = t1
        self.t2 = t2
        self.outbound_proxy = outbound_proxy
        self._next = next_tu
        self._byes: dict[ClientTransactionId, str] = {}
        self._cancelled: dict[tuple[str, str], _Cancelled] = {}  # (Call-ID, From tag)
        self._rejected: dict[str, _Rejected] = {}  # by Call-ID
        self._retry_after: int | None = None
        self._admission: InviteAdmission | None = None
        self.refused = 0  # INVITEs answered 503 while draining
        self.shed = 0  # INVITEs answered 503 because admission control refused them
        self.answers: list[tuple[str, int, str]] = []  # (label, status, method) seen

    # ================================================================================
    # wiring and draining

    def attach(self, tu: TransactionUser) -> None:
        self._next = tu

    def refuse_new_invites(self, retry_after: int) -> None:
        """From now on, new INVITEs get 503 with ``Retry-After: retry_after``."""
        self._retry_after = max(0, int(retry_after))

    def admit_with(self, admission: InviteAdmission | None) -> None:
        """Ask ``admission`` about every new out-of-dialog INVITE (None: admit all)."""
        self._admission = admission

    @property
    def refusing(self) -> bool:
        return self._retry_after is not None

    @property
    def pending(self) -> int:
        """Calls whose ending still waits for an answer (tests wait for 0)."""
        open_cancels = sum(1 for c in self._cancelled.values() if not c.cancel.done)
        open_rejects = sum(1 for r in self._rejected.values() if not r.response.done)
        return len(self._byes) + open_cancels + open_rejects

    # ================================================================================
    # ending one orphaned call

    async def end_call(self, orphan: OrphanDialog) -> RecoveryOutcome:
        """Send what ends this call on the far side; answers are handled as they come."""
        snap = orphan.snapshot
        try:
            if orphan.answered and snap.remote_tag and snap.remote_target:
                return await self._bye(orphan)
            if orphan.direction == "outbound" and not orphan.answered:
                return self._cancel(orphan)
            if orphan.direction == "inbound" and not orphan.answered:
                return self._reject(orphan)
        except (SipError, ValueError, OSError) as exc:
            log.warning("call %s: could not end it on the wire: %s", orphan.label, exc)
            return RecoveryOutcome(action=RecoveryAction.NONE, detail=f"nothing sent: {exc}")
        return RecoveryOutcome(
            action=RecoveryAction.NONE, detail="nothing sent: no dialog state to end"
        )

    async def _bye(self, orphan: OrphanDialog) -> RecoveryOutcome:
        dialog = _dialog_of(orphan)
        bye = dialog.create_request("BYE")  # RFC 3261 §15.1.1, CSeq = local + 1
        target = await self._destination(bye, orphan.snapshot)
        tx = self.core.send_request(bye, target[0], target[1])
        self._byes[tx] = orphan.label
        self.core.call_later(64 * self.t1 + 1, lambda: self._forget_bye(tx))
        log.info("call %s: BYE sent to %s:%d (recovery)", orphan.label, *target[0])
        return RecoveryOutcome(
            action=RecoveryAction.BYE,
            detail=f"BYE sent to {target[0][0]}:{target[0][1]}",
            local_cseq=dialog.local_seq,
        )

    async def _destination(self, request: Request, snap: DialogSnapshot) -> tuple[Addr, str]:
        # RFC 3261 §8.1.2 / §12.2.1.1: the next hop of an in-dialog request comes from its
        # route set and remote target, as for a live session; the stored peer is the fallback.
        try:
            target = await self.core.resolve(request)
            return target.addr, target.transport
        except (OSError, ValueError, SipError):
            if snap.peer is None:
                raise
            return (snap.peer[0], int(snap.peer[1])), snap.transport.lower()

    def _cancel(self, orphan: OrphanDialog) -> RecoveryOutcome:
        snap = orphan.snapshot
        if not snap.invite_branch or snap.invite_cseq is None or snap.peer is None:
            return RecoveryOutcome(
                action=RecoveryAction.NONE, detail="nothing sent: the INVITE never left"
            )
        transport = snap.transport.lower()
        invite = self._invite_skeleton(orphan, transport)
        cancel = build_cancel(invite)  # RFC 3261 §9.1: same branch, CSeq number, R-URI...
        dest = (snap.peer[0], int(snap.peer[1]))
        state = _Cancelled(
            label=orphan.label,
            invite=invite,
            cancel=_Resend(message=cancel, dest=dest, transport=transport, interval=self.t1),
            dest=dest,
            transport=transport,
        )
        key = (snap.call_id, snap.local_tag)
        self._cancelled[key] = state
        self._send_and_repeat(state.cancel, cap=self.t2)
        self.core.call_later(64 * self.t1, lambda: self._forget_cancel(key))
        log.info(
            "call %s: CANCEL sent to %s:%d, branch %s (recovery)",
            orphan.label, dest[0], dest[1], snap.invite_branch,
        )  # fmt: skip
        return RecoveryOutcome(
            action=RecoveryAction.CANCEL,
            detail=f"CANCEL sent to {dest[0]}:{dest[1]}",
        )

    def _invite_skeleton(self, orphan: OrphanDialog, transport: str) -> Request:
        """The INVITE as the dead process sent it, as far as a CANCEL and an ACK need it."""
        snap = orphan.snapshot
        cfg = self.core.endpoint.config
        host = f"[{cfg.local_host}]" if ":" in cfg.local_host else cfg.local_host
        h = Headers()
        # RFC 3261 §18.1.1: the sent-by is ours (the same advertised address after a
        # restart on the same settings), the branch the stored one.
        h.add(
            "Via",
            f"SIP/2.0/{transport.upper()} {host}:{cfg.local_port};"
            f"branch={snap.invite_branch};rport",
        )
        if self.outbound_proxy:
            # The INVITE's pre-loaded Route (RFC 3261 §8.1.2): a CANCEL repeats it (§9.1).
            proxy = parse_uri(self.outbound_proxy)
            if isinstance(proxy, SipUri):
                proxy.params.setdefault("lr", None)
            h.add("Route", f"<{proxy}>")
        local = NameAddr(display_name=orphan.local_display_name, uri=parse_uri(orphan.local_uri))
        local.tag = snap.local_tag
        h.add("From", str(local))
        target = parse_uri(orphan.remote_uri)
        h.add("To", str(NameAddr(uri=target.copy())))
        h.add("Call-ID", snap.call_id)
        h.add("CSeq", f"{snap.invite_cseq} INVITE")
        ruri = target.copy()
        if isinstance(ruri, SipUri):
            ruri.headers = {}  # RFC 3261 §19.1.5
        return Request(method="INVITE", uri=str(ruri), headers=h)

    def _reject(self, orphan: OrphanDialog) -> RecoveryOutcome:
        if not orphan.request_headers:
            return RecoveryOutcome(
                action=RecoveryAction.NONE, detail="nothing sent: the INVITE is not stored"
            )
        headers = Headers()
        for name, value in orphan.request_headers:
            headers.add(name, value)
        if not headers.get_list("Via"):
            return RecoveryOutcome(
                action=RecoveryAction.NONE, detail="nothing sent: the INVITE has no Via"
            )
        invite = Request(
            method="INVITE", uri=orphan.request_uri or orphan.local_uri, headers=headers
        )
        # RFC 3261 §8.2.6.2: the To tag we gave in our provisionals, so the caller's ACK and
        # its dialog state match.
        tag = orphan.snapshot.local_tag or None
        response = make_response(invite, 480, to_tag=tag)
        transport = orphan.snapshot.transport.lower()
        dest = _response_address(invite, transport, orphan.snapshot.peer)
        state = _Rejected(
            label=orphan.label,
            response=_Resend(message=response, dest=dest, transport=transport, interval=self.t1),
        )
        call_id = orphan.snapshot.call_id
        self._rejected[call_id] = state
        self._send_and_repeat(state.response, cap=self.t2)
        self.core.call_later(64 * self.t1, lambda: self._forget_reject(call_id))
        log.info("call %s: 480 sent to %s:%d (recovery)", orphan.label, *dest)
        return RecoveryOutcome(
            action=RecoveryAction.REJECT, detail=f"480 sent to {dest[0]}:{dest[1]}"
        )

    # ================================================================================
    # retransmissions (the dead transactions' part)

    def _send_and_repeat(self, item: _Resend, *, cap: float) -> None:
        if item.done:
            return
        self.core.send_stateless(item.message, item.dest, item.transport)
        if item.transport not in _UNRELIABLE:
            return  # RFC 3261 §17.1.2.2 / §17.2.1: reliable transports do not retransmit
        delay = item.interval
        item.interval = min(item.interval * 2, cap)
        item.handle = self.core.call_later(delay, lambda: self._send_and_repeat(item, cap=cap))

    @staticmethod
    def _stop(item: _Resend) -> None:
        item.done = True
        if item.handle is not None:
            item.handle.cancel()
            item.handle = None

    def _forget_bye(self, tx: ClientTransactionId) -> None:
        self._byes.pop(tx, None)

    def _forget_cancel(self, key: tuple[str, str]) -> None:
        state = self._cancelled.pop(key, None)
        if state is not None:
            self._stop(state.cancel)

    def _forget_reject(self, call_id: str) -> None:
        state = self._rejected.pop(call_id, None)
        if state is not None:
            self._stop(state.response)

    # ================================================================================
    # the TU entry point

    def handle_event(self, event: Event) -> None:
        try:
            consumed = self._consume(event)
        except SipError as exc:
            log.info("recovery: event %s not handled: %s", type(event).__name__, exc)
            consumed = False
        if not consumed and self._next is not None:
            self._next.handle_event(event)

    def _consume(self, event: Event) -> bool:
        if isinstance(event, ResponseReceived):
            return self._on_response(event.response, event.client_tx)
        if isinstance(event, MessageDropped):
            message = event.message
            if isinstance(message, Response):
                return self._on_response(message, None)
            return False
        if isinstance(event, TransactionTimedOut | TransportErrorOccurred):
            tx = event.tx
            if isinstance(tx, ClientTransactionId) and tx in self._byes:
                label = self._byes.pop(tx)
                log.info("call %s: recovery BYE got no answer", label)
                return True
            return False
        if isinstance(event, AckReceived):
            state = self._rejected.get(event.request.call_id)
            if state is not None:
                self._stop(state.response)  # RFC 3261 §17.2.1: the ACK ends Timer G
                return True
            return False
        if isinstance(event, RequestReceived):
            return self._on_request(event)
        return False

    def _on_request(self, event: RequestReceived) -> bool:
        req = event.request
        if req.method != "INVITE" or req.to.tag:
            return False
        rejected = self._rejected.get(req.call_id)
        if rejected is not None:
            # A retransmission of the dead process's INVITE: the same final answer, now
            # through a server transaction, which also takes over Timer G and the ACK.
            self._stop(rejected.response)
            self._respond(event, 480, to_tag=_to_tag(rejected))
            return True
        if self._retry_after is not None:
            self.refused += 1
            self._respond(event, 503, headers=(("Retry-After", str(self._retry_after)),))
            return True
        if self._admission is not None:
            retry_after = self._admission.admit_invite()
            if retry_after is not None:
                self.shed += 1
                self._respond(event, 503, headers=(("Retry-After", str(retry_after)),))
                return True
        return False

    def _respond(
        self,
        event: RequestReceived,
        status: int,
        *,
        to_tag: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        response = make_response(event.request, status, to_tag=to_tag)
        for name, value in headers:
            response.headers.add(name, value)
        try:
            self.core.send_response(event.server_tx, response)
        except LocalProtocolError as exc:
            log.info("could not answer an INVITE with %d: %s", status, exc)

    def _on_response(self, resp: Response, client_tx: ClientTransactionId | None) -> bool:
        if client_tx is not None and client_tx in self._byes:
            label = self._byes.pop(client_tx) if resp.status >= 200 else self._byes[client_tx]
            if resp.status >= 200:
                self.answers.append((label, resp.status, "BYE"))
                log.info("call %s: recovery BYE answered %d", label, resp.status)
            return True
        if client_tx is not None:
            return False
        key = (resp.call_id, resp.from_.tag or "")
        state = self._cancelled.get(key)
        if state is None:
            return False
        method = resp.cseq.method
        if method == "CANCEL":
            if resp.status >= 200:
                self._stop(state.cancel)  # RFC 3261 §17.1.2.2: the final response ends it
                self.answers.append((state.label, resp.status, "CANCEL"))
            return True
        if method != "INVITE" or resp.status < 200:
            return method == "INVITE"  # provisionals of the cancelled INVITE: nothing to do
        # A final response to the INVITE also ends the CANCEL's wait for its own answer.
        self._stop(state.cancel)
        self.answers.append((state.label, resp.status, "INVITE"))
        if resp.status >= 300:
            self._ack_failure(state, resp)
        else:
            self._ack_and_bye(state, resp)
        return True

    def _ack_failure(self, state: _Cancelled, resp: Response) -> None:
        """RFC 3261 §17.1.1.3: the ACK of a non-2xx, in the INVITE's transaction."""
        tag = resp.to.tag or ""
        ack = state.acked.get(tag)
        if ack is None:
            invite = state.invite
            h = Headers()
            h.add("Via", invite.headers.get_list("Via")[0])
            for route in invite.headers.get_list("Route"):
                h.add("Route", route)
            h.add("Max-Forwards", _MAX_FORWARDS)
            for name in ("From", "Call-ID"):
                value = invite.headers.get(name)
                assert value is not None
                h.add(name, value)
            to = resp.headers.get("To")
            h.add("To", to if to is not None else invite.headers.get("To") or "")
            h.add("CSeq", f"{invite.cseq.seq} ACK")
            h.add("Content-Length", "0")
            ack = Request(method="ACK", uri=invite.uri, headers=h)
            state.acked[tag] = ack
        # Each retransmission of the final response gets the same ACK again.
        self.core.send_stateless(ack, state.dest, state.transport)

    def _ack_and_bye(self, state: _Cancelled, resp: Response) -> None:
        """A 2xx crossed the CANCEL: ACK it (§13.2.2.4), then BYE the dialog (§15)."""
        tag = resp.to.tag or ""
        if tag in state.acked:
            self.core.send_stateless(state.acked[tag], state.dest, state.transport)
            return
        invite = state.invite
        dialog = Dialog.create_uac(invite, resp)
        ack = dialog.create_ack(invite.cseq.seq)
        state.acked[tag] = ack
        target = _next_hop(ack, state.dest)
        self.core.send_stateless(ack, target, state.transport)
        bye = dialog.create_request("BYE")
        tx = self.core.send_request(bye, _next_hop(bye, state.dest), state.transport)
        self._byes[tx] = state.label
        log.info("call %s: a 2xx crossed the recovery CANCEL: ACK and BYE sent", state.label)


def _to_tag(state: _Rejected) -> str | None:
    message = state.response.message
    return message.to.tag if isinstance(message, Response) else None


def _dialog_of(orphan: OrphanDialog) -> Dialog:
    """The confirmed dialog as the snapshot describes it (RFC 3261 §12.2.1.1)."""
    snap = orphan.snapshot
    assert snap.remote_tag is not None and snap.remote_target is not None
    return Dialog(
        role=DialogRole.UAC if orphan.direction == "outbound" else DialogRole.UAS,
        state=DialogState.CONFIRMED,
        call_id=snap.call_id,
        local_tag=snap.local_tag,
        remote_tag=snap.remote_tag,
        local_uri=NameAddr(display_name=orphan.local_display_name, uri=parse_uri(orphan.local_uri)),
        remote_uri=NameAddr(
            display_name=orphan.remote_display_name, uri=parse_uri(orphan.remote_uri)
        ),
        remote_target=parse_uri(snap.remote_target),
        route_set=[parse_name_addr(route) for route in snap.route_set],
        local_seq=snap.local_cseq or 0,
        remote_seq=snap.remote_cseq,
        secure=False,
        local_contact=None,
        invite_seq=snap.invite_cseq,
    )


def _next_hop(request: Request, fallback: Addr) -> Addr:
    """An IP next hop from the first Route or the Request-URI, else ``fallback``."""
    routes = request.headers.get_list("Route")
    try:
        uri = parse_name_addr(routes[0]).uri if routes else request.parsed_uri()
    except SipError:
        return fallback
    if not isinstance(uri, SipUri) or not _is_ip(uri.host):
        return fallback
    return uri.host.strip("[]"), uri.port or 5060


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _response_address(invite: Request, transport: str, peer: Addr | None) -> Addr:
    """Where responses to the stored INVITE go (RFC 3261 §18.2.2, RFC 3581 §4)."""
    via = invite.top_via
    port = via.port or _DEFAULT_PORTS.get(transport, 5060)
    if transport not in _UNRELIABLE and peer is not None:
        return peer[0], int(peer[1])  # a new connection to where it came from
    if via.maddr:
        return via.maddr, port
    if via.received:
        rport = via.rport
        return via.received, rport if rport is not None else port
    return via.host.strip("[]"), port

"""Events ``SipEndpoint.next_event()`` hands to the transaction user (TU).

Frozen, slotted, keyword-only dataclasses with past-tense names (architecture convention 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

from app.sip.dialog import Dialog
from app.sip.message import Request, Response
from app.sip.timers import TimerName
from app.sip.transactions.keys import ClientTransactionId, ServerTransactionId, TransactionId

Addr: TypeAlias = tuple[str, int]

__all__ = [
    "AckReceived",
    "Addr",
    "CancelReceived",
    "Event",
    "MessageDropped",
    "RequestReceived",
    "ResponseReceived",
    "TransactionTimedOut",
    "TransportErrorOccurred",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestReceived:
    """A new request (not ACK, not a CANCEL that matched) for the TU to answer.

    Answer with ``endpoint.send_response(server_tx, response, now)``.  ``dialog`` is the
    registered dialog an in-dialog request matched (its remote CSeq and, for target refresh
    requests, remote target are already updated, RFC 3261 §12.2.2), None out of dialog.
    """

    request: Request
    server_tx: ServerTransactionId
    source: Addr
    transport: str
    dialog: Dialog | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AckReceived:
    """An ACK that matched no server transaction: the ACK for a 2xx (RFC 3261 §13.3.1.4).

    Also used for an ACK matching an INVITE server transaction in the RFC 6026 Accepted
    state (§8.9), then ``server_tx`` names it.  ``dialog`` is the registered dialog it
    belongs to, if any.
    """

    request: Request
    source: Addr
    transport: str = "UDP"
    server_tx: ServerTransactionId | None = None
    dialog: Dialog | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelReceived:
    """A CANCEL matched the INVITE server transaction ``server_tx`` (RFC 3261 §9.2).

    The endpoint already answered the CANCEL with 200 and, if the INVITE had no final
    response yet, the INVITE with 487 (``invite_answered`` tells which).
    """

    request: Request
    server_tx: ServerTransactionId
    source: Addr
    transport: str = "UDP"
    invite_answered: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseReceived:
    """A response for the TU.

    ``client_tx`` is the client transaction it matched.  It is None for a 2xx to an
    INVITE that matched no transaction any more (a retransmission after Timer M, or a
    forked 2xx): the TU still ACKs it (RFC 3261 §13.2.2.4, RFC 6026 §8.4).  Other
    unmatched responses are dropped (``MessageDropped``).
    """

    response: Response
    client_tx: ClientTransactionId | None
    source: Addr = ("", 0)
    transport: str = "UDP"


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionTimedOut:
    """Timer B, F (client) or H (server: no ACK for a 300-699) ended ``tx``."""

    tx: TransactionId
    timer: TimerName


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportErrorOccurred:
    """Sending failed (RFC 3261 §17.1.4 / §17.2.4); ``tx`` None for stateless sends."""

    tx: TransactionId | None
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageDropped:
    """Input the endpoint threw away (also counted in ``endpoint.stats``).

    ``reason`` is one of the ``DropReason`` strings of ``app.sip.endpoint``.
    """

    reason: str
    source: Addr
    transport: str = "UDP"
    detail: str = ""
    # The parsed message when there is one (e.g. a stray response): a TU that outlived its
    # transactions (crash recovery) still needs the 487 to ACK it. Not part of equality.
    message: Request | Response | None = field(default=None, compare=False)


Event: TypeAlias = (
    RequestReceived
    | AckReceived
    | CancelReceived
    | ResponseReceived
    | TransactionTimedOut
    | TransportErrorOccurred
    | MessageDropped
)

"""INVITE server transaction (RFC 3261 §17.2.1, with RFC 6026 §7.1 / §8.5-§8.9).

States: Proceeding -> Accepted (2xx) | Completed (300-699) -> Confirmed -> Terminated.
2xx retransmissions are the TU's job: in Accepted it may hand them to this transaction
again (RFC 6026 §8.7), later it sends them statelessly.
"""

from __future__ import annotations

from typing import ClassVar

from app.sip.timers import TimerName as T
from app.sip.transactions.base import (
    STAY,
    Act,
    Backoff,
    Start,
    Stop,
    Table,
    Transaction,
    TxInput,
    TxState,
)

S = TxState
I = TxInput  # noqa: E741

TABLE: Table = {
    # RFC 3261 §17.2.1: created in Proceeding (the endpoint sends the 100 Trying).
    (S.INIT, I.START): (S.PROCEEDING, STAY),
    # Proceeding: retransmitted INVITEs re-get the last provisional (if any).
    (S.PROCEEDING, I.RECV_REQUEST): (S.PROCEEDING, (Act.RESEND_RESPONSE,)),
    (S.PROCEEDING, I.RECV_ACK): (S.PROCEEDING, STAY),
    (S.PROCEEDING, I.TU_1XX): (S.PROCEEDING, (Act.SEND_RESPONSE,)),
    # RFC 6026 §8.5: a 2xx moves to Accepted and arms L.
    (S.PROCEEDING, I.TU_2XX): (S.ACCEPTED, (Act.SEND_RESPONSE, Start(T.L))),
    (S.PROCEEDING, I.TU_FINAL): (S.COMPLETED, (Act.SEND_RESPONSE, Start(T.G), Start(T.H))),
    # RFC 3261 §17.2.4
    (S.PROCEEDING, I.TRANSPORT_ERROR): (S.TERMINATED, (Act.REPORT_TRANSPORT_ERROR,)),
    # Accepted (RFC 6026 §7.1): INVITE retransmissions are absorbed (the TU retransmits
    # the 2xx), the TU's 2xx retransmissions pass, a matching ACK goes to the TU, and a
    # transport error is reported without leaving the state.
    (S.ACCEPTED, I.RECV_REQUEST): (S.ACCEPTED, STAY),
    (S.ACCEPTED, I.RECV_ACK): (S.ACCEPTED, (Act.PASS_ACK,)),
    (S.ACCEPTED, I.TU_2XX): (S.ACCEPTED, (Act.SEND_RESPONSE,)),
    (S.ACCEPTED, I.TRANSPORT_ERROR): (S.ACCEPTED, (Act.REPORT_TRANSPORT_ERROR,)),
    (S.ACCEPTED, I.TIMER_L): (S.TERMINATED, STAY),
    # Completed: G retransmits the final response (doubling up to T2) until ACK or H.
    (S.COMPLETED, I.TIMER_G): (S.COMPLETED, (Act.RESEND_RESPONSE, Backoff(T.G))),
    (S.COMPLETED, I.TIMER_H): (S.TERMINATED, (Act.REPORT_TIMEOUT,)),
    (S.COMPLETED, I.RECV_REQUEST): (S.COMPLETED, (Act.RESEND_RESPONSE,)),
    (S.COMPLETED, I.RECV_ACK): (S.CONFIRMED, (Stop(T.G), Stop(T.H), Start(T.I))),
    (S.COMPLETED, I.TRANSPORT_ERROR): (S.TERMINATED, (Act.REPORT_TRANSPORT_ERROR,)),
    # Confirmed: absorb ACK retransmissions until I.
    (S.CONFIRMED, I.RECV_ACK): (S.CONFIRMED, STAY),
    (S.CONFIRMED, I.RECV_REQUEST): (S.CONFIRMED, STAY),
    (S.CONFIRMED, I.TRANSPORT_ERROR): (S.CONFIRMED, STAY),
    (S.CONFIRMED, I.TIMER_I): (S.TERMINATED, STAY),
}


class InviteServerTransaction(Transaction):
    KIND: ClassVar[str] = "ist"
    TABLE: ClassVar[Table] = TABLE
    NETWORK_INPUTS: ClassVar[frozenset[TxInput]] = frozenset(
        {TxInput.RECV_REQUEST, TxInput.RECV_ACK, TxInput.TRANSPORT_ERROR}
    )

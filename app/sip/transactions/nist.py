"""Non-INVITE server transaction (RFC 3261 §17.2.2).

States: Trying -> Proceeding -> Completed -> Terminated.
"""

from __future__ import annotations

from typing import ClassVar

from app.sip.timers import TimerName as T
from app.sip.transactions.base import (
    STAY,
    Act,
    Start,
    Table,
    Transaction,
    TxInput,
    TxState,
)

S = TxState
I = TxInput  # noqa: E741

_FINAL = (Act.SEND_RESPONSE, Start(T.J))

TABLE: Table = {
    (S.INIT, I.START): (S.TRYING, STAY),
    # Trying: a retransmission before any response is discarded (RFC 3261 §17.2.2).
    (S.TRYING, I.RECV_REQUEST): (S.TRYING, STAY),
    (S.TRYING, I.TU_1XX): (S.PROCEEDING, (Act.SEND_RESPONSE,)),
    (S.TRYING, I.TU_2XX): (S.COMPLETED, _FINAL),
    (S.TRYING, I.TU_FINAL): (S.COMPLETED, _FINAL),
    # RFC 3261 §17.2.4
    (S.TRYING, I.TRANSPORT_ERROR): (S.TERMINATED, (Act.REPORT_TRANSPORT_ERROR,)),
    # Proceeding: retransmissions re-get the last provisional.
    (S.PROCEEDING, I.RECV_REQUEST): (S.PROCEEDING, (Act.RESEND_RESPONSE,)),
    (S.PROCEEDING, I.TU_1XX): (S.PROCEEDING, (Act.SEND_RESPONSE,)),
    (S.PROCEEDING, I.TU_2XX): (S.COMPLETED, _FINAL),
    (S.PROCEEDING, I.TU_FINAL): (S.COMPLETED, _FINAL),
    (S.PROCEEDING, I.TRANSPORT_ERROR): (S.TERMINATED, (Act.REPORT_TRANSPORT_ERROR,)),
    # Completed: retransmissions re-get the final response until J.
    (S.COMPLETED, I.RECV_REQUEST): (S.COMPLETED, (Act.RESEND_RESPONSE,)),
    (S.COMPLETED, I.TRANSPORT_ERROR): (S.TERMINATED, (Act.REPORT_TRANSPORT_ERROR,)),
    (S.COMPLETED, I.TIMER_J): (S.TERMINATED, STAY),
}


class NonInviteServerTransaction(Transaction):
    KIND: ClassVar[str] = "nist"
    TABLE: ClassVar[Table] = TABLE
    NETWORK_INPUTS: ClassVar[frozenset[TxInput]] = frozenset(
        {TxInput.RECV_REQUEST, TxInput.TRANSPORT_ERROR}
    )

"""Non-INVITE client transaction (RFC 3261 §17.1.2).

States: Trying -> Proceeding -> Completed -> Terminated.
"""

from __future__ import annotations

from typing import ClassVar

from app.sip.timers import TimerName as T
from app.sip.transactions.base import (
    CLIENT_NETWORK_INPUTS,
    STAY,
    Act,
    Backoff,
    Rearm,
    Start,
    Stop,
    Table,
    Transaction,
    TxInput,
    TxState,
)

S = TxState
I = TxInput  # noqa: E741

# RFC 3261 §17.1.2.2: a final response stops E and F, goes to the TU, and K starts.
_ON_FINAL = (Stop(T.E), Stop(T.F), Act.PASS_RESPONSE, Start(T.K))

TABLE: Table = {
    # RFC 3261 §17.1.2.2: send, arm E (unreliable only) and F.
    (S.INIT, I.START): (S.TRYING, (Act.SEND_REQUEST, Start(T.E), Start(T.F))),
    # Trying: E doubles up to T2.
    (S.TRYING, I.TIMER_E): (S.TRYING, (Act.SEND_REQUEST, Backoff(T.E))),
    (S.TRYING, I.TIMER_F): (S.TERMINATED, (Act.REPORT_TIMEOUT,)),
    (S.TRYING, I.RECV_1XX): (S.PROCEEDING, (Act.PASS_RESPONSE,)),
    (S.TRYING, I.RECV_2XX): (S.COMPLETED, _ON_FINAL),
    (S.TRYING, I.RECV_FINAL): (S.COMPLETED, _ON_FINAL),
    # RFC 3261 §17.1.4
    (S.TRYING, I.TRANSPORT_ERROR): (S.TERMINATED, (Act.REPORT_TRANSPORT_ERROR,)),
    # Proceeding: E is re-armed with T2 each time.
    (S.PROCEEDING, I.TIMER_E): (S.PROCEEDING, (Act.SEND_REQUEST, Rearm(T.E))),
    (S.PROCEEDING, I.TIMER_F): (S.TERMINATED, (Act.REPORT_TIMEOUT,)),
    (S.PROCEEDING, I.RECV_1XX): (S.PROCEEDING, (Act.PASS_RESPONSE,)),
    (S.PROCEEDING, I.RECV_2XX): (S.COMPLETED, _ON_FINAL),
    (S.PROCEEDING, I.RECV_FINAL): (S.COMPLETED, _ON_FINAL),
    (S.PROCEEDING, I.TRANSPORT_ERROR): (S.TERMINATED, (Act.REPORT_TRANSPORT_ERROR,)),
    # Completed: response retransmissions are absorbed until K.
    (S.COMPLETED, I.RECV_1XX): (S.COMPLETED, STAY),
    (S.COMPLETED, I.RECV_2XX): (S.COMPLETED, STAY),
    (S.COMPLETED, I.RECV_FINAL): (S.COMPLETED, STAY),
    (S.COMPLETED, I.TRANSPORT_ERROR): (S.TERMINATED, (Act.REPORT_TRANSPORT_ERROR,)),
    (S.COMPLETED, I.TIMER_K): (S.TERMINATED, STAY),
}


class NonInviteClientTransaction(Transaction):
    KIND: ClassVar[str] = "nict"
    TABLE: ClassVar[Table] = TABLE
    NETWORK_INPUTS: ClassVar[frozenset[TxInput]] = CLIENT_NETWORK_INPUTS

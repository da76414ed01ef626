"""The four RFC 3261 §17 transaction state machines, one module each, plus matching keys.

``ict`` (INVITE client, §17.1.1), ``nict`` (non-INVITE client, §17.1.2), ``ist`` (INVITE
server, §17.2.1), ``nist`` (non-INVITE server, §17.2.2); RFC 6026 Accepted states and
Timers L/M included.  ``keys`` holds the transaction ids and the matching rules.
"""

from __future__ import annotations

from app.sip.transactions import ict, ist, nict, nist
from app.sip.transactions.base import (
    Effect,
    Transaction,
    TxInput,
    TxState,
    response_input,
    tu_input,
)
from app.sip.transactions.ict import InviteClientTransaction, build_non2xx_ack
from app.sip.transactions.ist import InviteServerTransaction
from app.sip.transactions.keys import (
    ClientTransactionId,
    ServerTransactionId,
    TransactionId,
)
from app.sip.transactions.nict import NonInviteClientTransaction
from app.sip.transactions.nist import NonInviteServerTransaction

__all__ = [
    "ClientTransactionId",
    "Effect",
    "InviteClientTransaction",
    "InviteServerTransaction",
    "NonInviteClientTransaction",
    "NonInviteServerTransaction",
    "ServerTransactionId",
    "Transaction",
    "TransactionId",
    "TxInput",
    "TxState",
    "build_non2xx_ack",
    "ict",
    "ist",
    "nict",
    "nist",
    "response_input",
    "tu_input",
]

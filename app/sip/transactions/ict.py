"""INVITE client transaction (RFC 3261 §17.1.1, with RFC 6026 §7.2 / §8.4).

States: Calling -> Proceeding -> Accepted (2xx) | Completed (300-699) -> Terminated.
The ACK for a 2xx and its retransmissions are the TU's job (RFC 6026); the ACK for a
300-699 is built and retransmitted here (RFC 3261 §17.1.1.3).
"""

from __future__ import annotations

from typing import ClassVar

from app.sip.errors import LocalProtocolError
from app.sip.message import Headers, Request, Response
from app.sip.timers import TimerName as T
from app.sip.transactions.base import (
    CLIENT_NETWORK_INPUTS,
    STAY,
    Act,
    Backoff,
    Effect,
    SendEffect,
    Start,
    Stop,
    Table,
    Transaction,
    TxInput,
    TxState,
)

S = TxState
I = TxInput  # noqa: E741

_TO_TU_ON_FINAL = (Act.PASS_RESPONSE, Act.SEND_ACK, Start(T.D))

TABLE: Table = {
    # RFC 3261 §17.1.1.2: send, arm A (unreliable only) and B.
    (S.INIT, I.START): (S.CALLING, (Act.SEND_REQUEST, Start(T.A), Start(T.B))),
    # Calling
    (S.CALLING, I.TIMER_A): (S.CALLING, (Act.SEND_REQUEST, Backoff(T.A))),
    (S.CALLING, I.TIMER_B): (S.TERMINATED, (Act.REPORT_TIMEOUT,)),
    (S.CALLING, I.RECV_1XX): (S.PROCEEDING, (Stop(T.A), Stop(T.B), Act.PASS_RESPONSE)),
    # RFC 6026 §8.4: a 2xx moves to Accepted; Timer M absorbs 2xx retransmissions.
    (S.CALLING, I.RECV_2XX): (S.ACCEPTED, (Stop(T.A), Stop(T.B), Act.PASS_RESPONSE, Start(T.M))),
    (S.CALLING, I.RECV_FINAL): (S.COMPLETED, (Stop(T.A), Stop(T.B), *_TO_TU_ON_FINAL)),
    # RFC 3261 §17.1.4: transport failure -> inform the TU, go to Terminated.
    (S.CALLING, I.TRANSPORT_ERROR): (S.TERMINATED, (Act.REPORT_TRANSPORT_ERROR,)),
    # Proceeding
    (S.PROCEEDING, I.RECV_1XX): (S.PROCEEDING, (Act.PASS_RESPONSE,)),
    (S.PROCEEDING, I.RECV_2XX): (S.ACCEPTED, (Act.PASS_RESPONSE, Start(T.M))),
    (S.PROCEEDING, I.RECV_FINAL): (S.COMPLETED, _TO_TU_ON_FINAL),
    (S.PROCEEDING, I.TRANSPORT_ERROR): (S.TERMINATED, (Act.REPORT_TRANSPORT_ERROR,)),
    # Accepted (RFC 6026 §7.2): further 2xx go to the TU (which ACKs them); the rest is
    # absorbed.
    (S.ACCEPTED, I.RECV_2XX): (S.ACCEPTED, (Act.PASS_RESPONSE,)),
    (S.ACCEPTED, I.RECV_1XX): (S.ACCEPTED, STAY),
    (S.ACCEPTED, I.RECV_FINAL): (S.ACCEPTED, STAY),
    (S.ACCEPTED, I.TRANSPORT_ERROR): (S.TERMINATED, (Act.REPORT_TRANSPORT_ERROR,)),
    (S.ACCEPTED, I.TIMER_M): (S.TERMINATED, STAY),
    # Completed (RFC 3261 §17.1.1.2): retransmitted finals re-get the ACK, not the TU.
    (S.COMPLETED, I.RECV_FINAL): (S.COMPLETED, (Act.SEND_ACK,)),
    (S.COMPLETED, I.RECV_1XX): (S.COMPLETED, STAY),
    (S.COMPLETED, I.RECV_2XX): (S.COMPLETED, STAY),
    (S.COMPLETED, I.TRANSPORT_ERROR): (S.TERMINATED, (Act.REPORT_TRANSPORT_ERROR,)),
    (S.COMPLETED, I.TIMER_D): (S.TERMINATED, STAY),
}


def build_non2xx_ack(invite: Request, response: Response) -> Request:
    """The ACK for a 300-699 answer to ``invite`` (RFC 3261 §17.1.1.3).

    Request-URI, Call-ID, From, CSeq number and the top Via come from the INVITE, To from
    the response (it carries the UAS tag), Route from the INVITE; method ACK.
    """
    headers = Headers()
    headers.add("Via", invite.headers.get_list("Via")[0])
    for route in invite.headers.get_list("Route"):
        headers.add("Route", route)
    headers.add("Max-Forwards", "70")
    from_value = invite.headers.get("From")
    to_value = response.headers.get("To")
    call_id = invite.headers.get("Call-ID")
    if from_value is None or to_value is None or call_id is None:
        raise LocalProtocolError("cannot build the ACK: From, To or Call-ID missing")
    headers.add("From", from_value)
    headers.add("To", to_value)
    headers.add("Call-ID", call_id)
    headers.add("CSeq", f"{invite.cseq.seq} ACK")
    headers.add("Content-Length", "0")
    return Request(method="ACK", uri=invite.uri, headers=headers)


class InviteClientTransaction(Transaction):
    KIND: ClassVar[str] = "ict"
    TABLE: ClassVar[Table] = TABLE
    NETWORK_INPUTS: ClassVar[frozenset[TxInput]] = CLIENT_NETWORK_INPUTS

    ack: Request | None = None

    def _do_special(
        self,
        action: Act,
        event: TxInput,
        message: Request | Response | None,
        effects: list[Effect],
    ) -> None:
        if action is not Act.SEND_ACK:
            super()._do_special(action, event, message, effects)
            return
        if self.ack is None:
            if not isinstance(message, Response):
                raise LocalProtocolError("ict: the ACK needs the final response")
            self.ack = build_non2xx_ack(self.request, message)
        else:
            self.retransmissions += 1
        effects.append(SendEffect(message=self.ack))

"""Transaction state machines (RFC 3261 §17, RFC 6026): tables, timers, schedules on a link."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from app.sip.errors import LocalProtocolError
from app.sip.events import (
    AckReceived,
    RequestReceived,
    ResponseReceived,
    TransactionTimedOut,
)
from app.sip.message import Request, Response, make_response
from app.sip.timers import TimerConfig, TimerName
from app.sip.transactions import (
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    Transaction,
    TxInput,
    TxState,
    build_non2xx_ack,
)
from app.sip.transactions.base import SendEffect, TimeoutEffect, TimerSetEffect

from .link import UAS_ADDR, Link, is_method, is_status, make_config, new_request

S = TxState
I = TxInput  # noqa: E741
MACHINES: list[type[Transaction]] = [
    InviteClientTransaction,
    NonInviteClientTransaction,
    InviteServerTransaction,
    NonInviteServerTransaction,
]
STATES = {
    "ict": {S.INIT, S.CALLING, S.PROCEEDING, S.ACCEPTED, S.COMPLETED, S.TERMINATED},
    "nict": {S.INIT, S.TRYING, S.PROCEEDING, S.COMPLETED, S.TERMINATED},
    "ist": {S.INIT, S.PROCEEDING, S.ACCEPTED, S.COMPLETED, S.CONFIRMED, S.TERMINATED},
    "nist": {S.INIT, S.TRYING, S.PROCEEDING, S.COMPLETED, S.TERMINATED},
}


def _request(method: str = "INVITE", *, route: str | None = None) -> Request:
    extra = [("Route", route)] if route else None
    req = new_request(method, extra=extra)
    req.headers.prepend("Via", "SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKabc;rport")
    req.headers.add("Via", "SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bKlower")
    return req


def _make(cls: type[Transaction], transport: str = "UDP", method: str | None = None) -> Transaction:
    if method is None:
        method = "INVITE" if cls in (InviteClientTransaction, InviteServerTransaction) else "BYE"
    return cls(
        request=_request(method), transport=transport, peer=UAS_ADDR, timer_config=TimerConfig()
    )


def _resp(tx: Transaction, status: int, tag: str | None = "totag") -> Response:
    return make_response(tx.request, status, to_tag=tag)


# -- the tables ------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", MACHINES)
def test_table_stays_inside_the_machine(cls: type[Transaction]) -> None:
    states = STATES[cls.KIND]
    for (state, _), (target, _) in cls.TABLE.items():
        assert state in states and target in states
        assert state is not S.TERMINATED  # nothing leaves Terminated


@pytest.mark.parametrize("cls", MACHINES)
def test_every_network_input_is_handled_in_every_live_state(cls: type[Transaction]) -> None:
    live = STATES[cls.KIND] - {S.INIT, S.TERMINATED}
    missing = [
        (state.value, event.value)
        for state in live
        for event in cls.NETWORK_INPUTS
        if (state, event) not in cls.TABLE
    ]
    assert missing == []


@pytest.mark.parametrize(
    ("cls", "event"),
    [
        (InviteClientTransaction, I.TIMER_D),  # D only runs in Completed
        (InviteClientTransaction, I.TU_1XX),  # a client does not send responses
        (NonInviteClientTransaction, I.TIMER_K),
        (InviteServerTransaction, I.RECV_2XX),
        (NonInviteServerTransaction, I.TIMER_J),
    ],
)
def test_illegal_transition_raises(cls: type[Transaction], event: TxInput) -> None:
    tx = _make(cls)
    tx.fire(I.START, 0.0)
    with pytest.raises(LocalProtocolError, match="not allowed in state"):
        tx.fire(event, 0.0)


def test_illegal_moves_of_the_tu() -> None:
    ist = _make(InviteServerTransaction)
    ist.fire(I.START, 0.0)
    ist.fire(I.TU_FINAL, 0.0, _resp(ist, 486))
    with pytest.raises(LocalProtocolError):
        ist.fire(I.TU_2XX, 0.0, _resp(ist, 200))  # a second final response
    nist = _make(NonInviteServerTransaction)
    nist.fire(I.START, 0.0)
    nist.fire(I.TU_2XX, 0.0, _resp(nist, 200))
    with pytest.raises(LocalProtocolError):
        nist.fire(I.TU_1XX, 0.0, _resp(nist, 180))
    ict = _make(InviteClientTransaction)
    ict.fire(I.START, 0.0)
    with pytest.raises(LocalProtocolError):
        ict.fire(I.START, 0.0)  # started twice


# -- single machines ---------------------------------------------------------------------------


def _timers(effects: Sequence[object]) -> dict[TimerName, float]:
    return {e.timer: e.deadline for e in effects if isinstance(e, TimerSetEffect)}


def test_ict_start_arms_a_and_b_on_udp_and_only_b_on_tcp() -> None:
    udp = _make(InviteClientTransaction, "UDP")
    effects = udp.fire(I.START, 10.0)
    assert isinstance(effects[0], SendEffect) and effects[0].message is udp.request
    assert _timers(effects) == {TimerName.A: 10.5, TimerName.B: 42.0}
    assert udp.state is S.CALLING
    tcp = _make(InviteClientTransaction, "TCP")
    assert _timers(tcp.fire(I.START, 10.0)) == {TimerName.B: 42.0}


def test_ict_ack_for_non_2xx_fields() -> None:
    """RFC 3261 §17.1.1.3."""
    invite = _request("INVITE", route="<sip:proxy.example;lr>")
    tx = InviteClientTransaction(
        request=invite, transport="UDP", peer=UAS_ADDR, timer_config=TimerConfig()
    )
    tx.fire(I.START, 0.0)
    final = make_response(invite, 486, to_tag="t486")
    effects = tx.fire(I.RECV_FINAL, 1.0, final)
    acks = [e.message for e in effects if isinstance(e, SendEffect)]
    assert len(acks) == 1
    ack = acks[0]
    assert isinstance(ack, Request)
    assert ack.method == "ACK" and ack.uri == invite.uri
    assert ack.headers.get_list("Via") == [invite.headers.get_list("Via")[0]]  # top Via only
    assert ack.to.tag == "t486"
    assert ack.from_.tag == invite.from_.tag
    assert ack.call_id == invite.call_id
    assert (ack.cseq.seq, ack.cseq.method) == (invite.cseq.seq, "ACK")
    assert ack.headers.get_list("Route") == ["<sip:proxy.example;lr>"]
    assert ack == build_non2xx_ack(invite, final)
    assert tx.state is S.COMPLETED and tx.timers == {TimerName.D: 33.0}
    # A retransmitted final re-gets the same ACK and is not passed up again.
    again = tx.fire(I.RECV_FINAL, 2.0, final)
    assert again == [SendEffect(message=ack)]
    assert isinstance(again[0], SendEffect) and again[0].message is ack


def test_ict_timer_b_reports_timeout() -> None:
    tx = _make(InviteClientTransaction, "TCP")
    tx.fire(I.START, 0.0)
    effects = tx.fire(I.TIMER_B, 32.0)
    assert effects == [TimeoutEffect(timer=TimerName.B)]
    assert tx.state is S.TERMINATED and tx.timers == {}


def test_nict_proceeding_rearms_e_with_t2() -> None:
    tx = _make(NonInviteClientTransaction)
    tx.fire(I.START, 0.0)
    tx.fire(I.RECV_1XX, 0.1, _resp(tx, 100, None))
    assert tx.state is S.PROCEEDING
    effects = tx.fire(I.TIMER_E, 0.5)
    assert _timers(effects) == {TimerName.E: 4.5}
    assert tx.retransmissions == 1


@pytest.mark.parametrize(
    ("transport", "state", "timers"),
    [
        ("UDP", S.COMPLETED, {TimerName.J: 32.0}),
        ("TCP", S.TERMINATED, {}),
    ],
)
def test_nist_timer_j(transport: str, state: TxState, timers: dict[TimerName, float]) -> None:
    tx = _make(NonInviteServerTransaction, transport)
    tx.fire(I.START, 0.0)
    effects = tx.fire(I.TU_2XX, 0.0, _resp(tx, 200))
    assert isinstance(effects[0], SendEffect)
    assert tx.state is state and tx.timers == timers


def test_ist_accepted_takes_2xx_retransmissions_from_the_tu() -> None:
    """RFC 6026 §8.5-§8.7: Accepted, Timer L, TU 2xx retransmissions pass."""
    tx = _make(InviteServerTransaction)
    tx.fire(I.START, 0.0)
    ok = _resp(tx, 200)
    assert _timers(tx.fire(I.TU_2XX, 0.0, ok)) == {TimerName.L: 32.0}
    assert tx.state is S.ACCEPTED
    again = tx.fire(I.TU_2XX, 0.5, ok)
    assert [type(e) for e in again] == [SendEffect]
    assert tx.fire(I.RECV_REQUEST, 0.6, tx.request) == []  # INVITE retransmission absorbed
    with pytest.raises(LocalProtocolError):
        tx.fire(I.TU_FINAL, 1.0, _resp(tx, 500))
    tx.fire(I.TIMER_L, 32.0)
    assert tx.state is S.TERMINATED


# -- schedules on the link ----------------------------------------------------------------------


def test_invite_udp_all_lost_retransmits_on_timer_a_and_times_out_on_b() -> None:
    link = Link()
    link.drop(is_method("INVITE"))
    key = link.uac.send_request(new_request("INVITE"), UAS_ADDR, "UDP", link.now)
    tx = link.uac.transaction(key)
    assert tx is not None
    link.pump()
    link.run()
    assert link.times("uac", is_method("INVITE")) == [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert link.events["uac"] == [TransactionTimedOut(tx=key, timer=TimerName.B)]
    assert link.now == 32.0
    assert tx.state is S.TERMINATED
    assert link.uac.transaction_state(key) is None
    assert link.uac.stats["retransmissions_sent"] == 6
    assert link.uac.stats["timeouts"] == 1


def test_invite_udp_first_three_lost_then_trying_stops_retransmissions() -> None:
    link = Link()
    link.drop(is_method("INVITE"), count=3)
    key = link.uac.send_request(new_request("INVITE"), UAS_ADDR, "UDP", link.now)
    link.pump()
    link.run_until(20.0)
    assert link.times("uac", is_method("INVITE")) == [0, 0.5, 1.5, 3.5]
    assert link.times("uas", is_status(100)) == [3.5]
    assert [type(e) for e in link.events["uas"]] == [RequestReceived]
    assert link.uac.transaction_state(key) is S.PROCEEDING
    assert link.uac.get_timer() is None  # Proceeding has no timer (A and B stopped)


def test_invite_tcp_is_sent_once_and_times_out_on_b() -> None:
    link = Link(transport="TCP")
    link.drop(is_method("INVITE"))
    key = link.uac.send_request(new_request("INVITE"), UAS_ADDR, "TCP", link.now)
    link.pump()
    link.run()
    assert link.times("uac", is_method("INVITE")) == [0]
    assert link.events["uac"] == [TransactionTimedOut(tx=key, timer=TimerName.B)]
    assert link.now == 32.0


def test_non_invite_udp_e_schedule_capped_at_t2_and_f_timeout() -> None:
    link = Link()
    link.drop(is_method("OPTIONS"))
    key = link.uac.send_request(new_request("OPTIONS"), UAS_ADDR, "UDP", link.now)
    tx = link.uac.transaction(key)
    assert tx is not None
    link.pump()
    link.run()
    assert link.times("uac", is_method("OPTIONS")) == [
        0,
        0.5,
        1.5,
        3.5,
        7.5,
        11.5,
        15.5,
        19.5,
        23.5,
        27.5,
        31.5,
    ]
    assert link.events["uac"] == [TransactionTimedOut(tx=key, timer=TimerName.F)]
    assert link.now == 32.0
    assert tx.state is S.TERMINATED


def test_non_invite_proceeding_retransmits_every_t2() -> None:
    link = Link()
    key = link.uac.send_request(new_request("INFO"), UAS_ADDR, "UDP", link.now)
    link.pump()
    (ev,) = link.take("uas", RequestReceived)
    assert isinstance(ev, RequestReceived)
    link.uas.send_response(ev.server_tx, make_response(ev.request, 100), link.now)
    link.pump()
    assert link.uac.transaction_state(key) is S.PROCEEDING
    link.run()
    assert link.times("uac", is_method("INFO")) == [0, 0.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5]
    # Each retransmission re-gets the last provisional from the server transaction.
    assert len(link.sent("uas", is_status(100))) == 9
    assert link.events["uac"][-1] == TransactionTimedOut(tx=key, timer=TimerName.F)


def test_server_g_retransmits_final_until_h_when_ack_is_lost() -> None:
    link = Link()
    link.drop(is_method("ACK"))
    link.uac.send_request(new_request("INVITE"), UAS_ADDR, "UDP", link.now)
    link.pump()
    (ev,) = link.take("uas", RequestReceived)
    assert isinstance(ev, RequestReceived)
    tx = link.uas.transaction(ev.server_tx)
    assert tx is not None
    link.uas.send_response(ev.server_tx, make_response(ev.request, 486), link.now)
    link.pump()
    link.run()
    assert link.times("uas", is_status(486)) == [
        0,
        0.5,
        1.5,
        3.5,
        7.5,
        11.5,
        15.5,
        19.5,
        23.5,
        27.5,
        31.5,
    ]
    assert TransactionTimedOut(tx=ev.server_tx, timer=TimerName.H) in link.events["uas"]
    assert tx.state is S.TERMINATED
    # The client ACKed every copy, and passed only the first 486 to its TU.
    assert len(link.sent("uac", is_method("ACK"))) == 11
    statuses = [e.response.status for e in link.events["uac"] if isinstance(e, ResponseReceived)]
    assert statuses == [100, 486]


def test_server_g_stops_when_ack_arrives() -> None:
    link = Link()
    link.drop(is_method("ACK"), count=2)
    link.uac.send_request(new_request("INVITE"), UAS_ADDR, "UDP", link.now)
    link.pump()
    (ev,) = link.take("uas", RequestReceived)
    assert isinstance(ev, RequestReceived)
    tx = link.uas.transaction(ev.server_tx)
    assert tx is not None
    link.uas.send_response(ev.server_tx, make_response(ev.request, 603), link.now)
    link.pump()
    link.run_until(2.0)
    assert link.times("uas", is_status(603)) == [0, 0.5, 1.5]
    assert tx.state is S.CONFIRMED
    assert tx.timers == {TimerName.I: 6.5}  # T4 after the ACK at 1.5
    assert link.events["uas"] == []  # the non-2xx ACK stays in the transaction
    link.run()
    assert tx.state is S.TERMINATED


@pytest.mark.parametrize(("transport", "confirmed_for"), [("UDP", 5.0), ("TCP", 0.0)])
def test_timer_i_udp_vs_tcp(transport: str, confirmed_for: float) -> None:
    link = Link(transport=transport)
    link.uac.send_request(new_request("INVITE"), UAS_ADDR, transport, link.now)
    link.pump()
    (ev,) = link.take("uas", RequestReceived)
    assert isinstance(ev, RequestReceived)
    tx = link.uas.transaction(ev.server_tx)
    assert tx is not None
    link.uas.send_response(ev.server_tx, make_response(ev.request, 480), link.now)
    link.pump()
    if confirmed_for:
        assert tx.state is S.CONFIRMED and tx.timers == {TimerName.I: confirmed_for}
    else:
        assert tx.state is S.TERMINATED and link.uas.transaction(ev.server_tx) is None


@pytest.mark.parametrize(("transport", "d"), [("UDP", 32.0), ("TCP", 0.0)])
def test_timer_d_udp_vs_tcp(transport: str, d: float) -> None:
    link = Link(transport=transport)
    key = link.uac.send_request(new_request("INVITE"), UAS_ADDR, transport, link.now)
    tx = link.uac.transaction(key)
    assert tx is not None
    link.pump()
    (ev,) = link.take("uas", RequestReceived)
    assert isinstance(ev, RequestReceived)
    link.uas.send_response(ev.server_tx, make_response(ev.request, 404), link.now)
    link.pump()
    if d:
        assert tx.state is S.COMPLETED and tx.timers == {TimerName.D: d}
    else:
        assert tx.state is S.TERMINATED


@pytest.mark.parametrize(("transport", "k", "j"), [("UDP", 5.0, 32.0), ("TCP", 0.0, 0.0)])
def test_timers_k_and_j_udp_vs_tcp(transport: str, k: float, j: float) -> None:
    link = Link(transport=transport)
    key = link.uac.send_request(new_request("OPTIONS"), UAS_ADDR, transport, link.now)
    client = link.uac.transaction(key)
    assert client is not None
    link.pump()  # the endpoint answers OPTIONS itself
    assert [e.response.status for e in link.events["uac"] if isinstance(e, ResponseReceived)] == [
        200
    ]
    if k:
        assert client.state is S.COMPLETED and client.timers == {TimerName.K: k}
        (server,) = [link.uas.transaction(t) for t in link.uas.transaction_ids()]
        assert server is not None
        assert server.state is S.COMPLETED and server.timers == {TimerName.J: j}
        link.run_until(k)
        assert client.state is S.TERMINATED and server.state is S.COMPLETED
        link.run_until(j)
        assert server.state is S.TERMINATED
    else:
        assert client.state is S.TERMINATED
        assert link.uas.transaction_ids() == []


def test_retransmitted_request_gets_the_same_last_response() -> None:
    link = Link()
    link.drop(is_status(200), count=1)
    link.uac.send_request(new_request("OPTIONS"), UAS_ADDR, "UDP", link.now)
    link.pump()
    link.run_until(1.0)
    oks = link.sent("uas", is_status(200))
    assert [w.time for w in oks] == [0, 0.5]
    assert oks[0].dropped and not oks[1].dropped
    assert oks[0].data == oks[1].data  # resent, not rebuilt (same To tag)
    assert link.uas.stats["retransmissions_received"] == 1
    assert link.uas.stats["retransmissions_sent"] == 1


def test_retransmitted_invite_gets_the_last_provisional() -> None:
    link = Link()
    link.drop(is_status(180), count=1)
    key = link.uac.send_request(new_request("INVITE"), UAS_ADDR, "UDP", link.now)
    link.drop(is_status(100), count=1)
    link.pump()
    (ev,) = link.take("uas", RequestReceived)
    assert isinstance(ev, RequestReceived)
    link.uas.send_response(ev.server_tx, make_response(ev.request, 180, to_tag="x"), link.now)
    link.pump()
    link.run_until(0.5)
    ringing = link.sent("uas", is_status(180))
    assert [w.time for w in ringing] == [0, 0.5]
    assert ringing[0].data == ringing[1].data
    assert link.uac.transaction_state(key) is S.PROCEEDING
    assert [type(e) for e in link.events["uas"]] == []  # the TU saw the INVITE once


def test_rfc6026_accepted_absorbs_2xx_retransmissions_and_ends_on_m_and_l() -> None:
    link = Link()
    key = link.uac.send_request(new_request("INVITE"), UAS_ADDR, "UDP", link.now)
    client = link.uac.transaction(key)
    link.pump()
    (ev,) = link.take("uas", RequestReceived)
    assert isinstance(ev, RequestReceived)
    server = link.uas.transaction(ev.server_tx)
    assert client is not None and server is not None
    ok = make_response(ev.request, 200, to_tag="uas1")
    ok.headers.add("Contact", "<sip:bob@127.0.0.2:5062>")
    link.uas.send_response(ev.server_tx, ok, link.now)
    link.pump()
    assert client.state is S.ACCEPTED and client.timers == {TimerName.M: 32.0}
    assert server.state is S.ACCEPTED and server.timers == {TimerName.L: 32.0}
    # The TU (not the transaction) retransmits the 2xx while the ACK is missing.
    link.clock.now = 0.5
    link.uas.send_response(ev.server_tx, ok, link.now)
    link.pump()
    oks = [
        e
        for e in link.events["uac"]
        if isinstance(e, ResponseReceived) and e.response.status == 200
    ]
    assert [e.client_tx for e in oks] == [key, key]  # both reach the TU, which ACKs each
    assert link.sent("uac", is_method("ACK")) == []  # the transaction does not ACK a 2xx
    # An INVITE retransmission is absorbed by the server's Accepted state.
    sent_before = len(link.wire)
    link.uas.receive(link.wire[0].data, link.addr("uac"), "UDP", link.now)
    link.pump()
    assert len(link.wire) == sent_before
    assert [type(e) for e in link.events["uas"]] == []
    link.run()
    assert client.state is S.TERMINATED and server.state is S.TERMINATED
    assert link.now == 32.0  # L and M, both armed at 0, expired; no timer is left
    # After Timer L only stateless 2xx retransmissions are possible.
    with pytest.raises(LocalProtocolError, match="no live server transaction"):
        link.uas.send_response(ev.server_tx, ok, link.now)
    link.uas.send_stateless(ok, link.addr("uac"), "UDP", link.now)
    link.pump()
    late = link.events["uac"][-1]
    assert isinstance(late, ResponseReceived)
    assert late.client_tx is None and late.response.status == 200


def test_ack_for_2xx_reaches_the_tu_without_a_transaction() -> None:
    link = Link()
    req = new_request("INVITE")
    link.uac.send_request(req, UAS_ADDR, "UDP", link.now)
    link.pump()
    (ev,) = link.take("uas", RequestReceived)
    assert isinstance(ev, RequestReceived)
    link.uas.send_response(ev.server_tx, make_response(ev.request, 200, to_tag="t"), link.now)
    link.pump()
    ack = new_request("ACK", call_id=req.call_id, to_tag="t")
    link.uac.send_stateless(ack, UAS_ADDR, "UDP", link.now)
    link.pump()
    acks = link.take("uas", AckReceived)
    assert len(acks) == 1
    assert isinstance(acks[0], AckReceived) and acks[0].server_tx is None
    # Sending the same ACK object again repeats it byte for byte (its Via is kept).
    link.uac.send_stateless(ack, UAS_ADDR, "UDP", link.now)
    link.pump()
    sent = link.sent("uac", is_method("ACK"))
    assert len(sent) == 2 and sent[0].data == sent[1].data


def test_transport_config_is_respected() -> None:
    link = Link(uac_config=make_config("uac", "UDP", transports=("udp",)))
    with pytest.raises(LocalProtocolError, match="not enabled"):
        link.uac.send_request(new_request("OPTIONS"), UAS_ADDR, "TCP", link.now)

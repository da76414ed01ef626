"""Session FSM, actions not allowed now (StateTransitionError), dispose and shutdown."""

from __future__ import annotations

import pytest

from app.ua import EndBy, EndCause, SessionEnd, SessionState, StateTransitionError
from app.ua.state import TRANSITIONS, check_transition
from tests.ua.conftest import Pair
from tests.ua.link import request, response

S = SessionState


def test_state_table_never_goes_back() -> None:
    order = list(S)
    for state, targets in TRANSITIONS.items():
        for target in targets:
            assert order.index(target) > order.index(state)
    with pytest.raises(StateTransitionError) as err:
        check_transition(S.ESTABLISHED, S.ESTABLISHING)
    assert err.value.state == "established"
    assert S.ESTABLISHED == "established"  # the lower-case names of API.md


async def test_bye_while_ringing_is_refused_and_sends_nothing(pair: Pair) -> None:
    inviter, _rec = await pair.call()
    invitation = pair.callee.last
    wire = len(pair.link.wire)
    with pytest.raises(StateTransitionError) as err:
        await inviter.bye()
    assert err.value.state == "establishing"
    assert err.value.allowed == ("cancel", "hangup")
    with pytest.raises(StateTransitionError) as err:
        await invitation.bye()
    assert err.value.state == "initial"
    assert err.value.allowed == ("progress", "accept", "reject", "hangup")
    with pytest.raises(StateTransitionError):
        await inviter.dtmf("1")
    await pair.link.settle()
    assert len(pair.link.wire) == wire


async def test_actions_after_accept_are_refused(pair: Pair) -> None:
    inviter, _rec, invitation, _brec = await pair.established()
    wire = len(pair.link.wire)
    for action in (invitation.accept(), invitation.progress(), invitation.reject(486)):
        with pytest.raises(StateTransitionError) as err:
            await action
        assert err.value.state == "established"
        assert err.value.allowed == ("bye", "hangup", "dtmf")
    with pytest.raises(StateTransitionError) as err:
        await inviter.cancel()
    assert err.value.allowed == ("bye", "hangup", "dtmf")
    with pytest.raises(StateTransitionError):
        await inviter.invite()
    await pair.link.settle()
    assert len(pair.link.wire) == wire


async def test_everything_but_hangup_refused_when_terminated(pair: Pair) -> None:
    inviter, _rec, invitation, _brec = await pair.established()
    await inviter.bye()
    await pair.link.settle()
    for session in (inviter, invitation):
        assert session.state is S.TERMINATED
        assert session.allowed_actions() == ("hangup",)
        with pytest.raises(StateTransitionError) as err:
            await session.bye()
        assert err.value.state == "terminated"
        await session.dispose()  # hangup on a terminated call: a no-op
    with pytest.raises(StateTransitionError):
        await invitation.accept()
    wire = len(pair.link.wire)
    await pair.link.settle()
    assert len(pair.link.wire) == wire


async def test_bad_arguments_raise_value_error(pair: Pair) -> None:
    await pair.call()
    invitation = pair.callee.last
    with pytest.raises(ValueError):
        await invitation.progress(200)
    with pytest.raises(ValueError):
        await invitation.reject(200)
    with pytest.raises(ValueError):
        pair.inviter("mailto:bob@example.com")
    with pytest.raises(ValueError):
        pair.inviter("sip:bob@")


async def test_dispose_picks_cancel_reject_or_bye(pair: Pair) -> None:
    ringing_out, _ = await pair.call()
    await ringing_out.dispose()
    await pair.link.settle()
    assert ringing_out.end == SessionEnd(EndCause.CANCELED, EndBy.LOCAL)

    await pair.call()
    ringing_in = pair.callee.last
    await ringing_in.dispose()
    await pair.link.settle()
    assert ringing_in.end == SessionEnd(
        EndCause.REJECTED, EndBy.LOCAL, 480, "Temporarily Unavailable"
    )

    inviter, _rec, invitation, _brec = await pair.established()
    await invitation.dispose()
    await pair.link.settle()
    assert invitation.end == SessionEnd(EndCause.LOCAL_BYE, EndBy.LOCAL)
    assert inviter.end == SessionEnd(EndCause.REMOTE_BYE, EndBy.REMOTE)

    unsent, _ = pair.inviter()
    await unsent.dispose()
    assert unsent.end == SessionEnd(EndCause.CANCELED, EndBy.LOCAL)
    assert unsent.state is S.TERMINATED


async def test_close_ends_every_session_with_shutdown(pair: Pair) -> None:
    talking, _, talking_in, _ = await pair.established()
    ringing_out, _ = await pair.call()
    ringing_in = pair.callee.last
    await pair.b.close()
    await pair.link.settle()
    shutdown = SessionEnd(EndCause.SHUTDOWN, EndBy.SYSTEM)
    assert talking_in.end == shutdown and ringing_in.end == shutdown
    assert talking.end == SessionEnd(EndCause.REMOTE_BYE, EndBy.REMOTE)
    assert ringing_out.end == SessionEnd(
        EndCause.REJECTED, EndBy.REMOTE, 503, "Service Unavailable"
    )
    assert pair.b.sessions == {}
    # A closing UA refuses new calls.
    late, _ = await pair.call()
    assert late.end is not None and late.end.sip_code == 503
    await pair.a.close()
    assert pair.a.sessions == {}


async def test_close_cancels_ringing_outbound(pair: Pair) -> None:
    ringing_out, _ = await pair.call()
    await pair.a.close()
    await pair.link.settle()
    assert ringing_out.end == SessionEnd(EndCause.SHUTDOWN, EndBy.SYSTEM)
    assert pair.link.sent("a", request("CANCEL"))
    assert pair.link.sent("b", response(487))
    assert pair.callee.last.end == SessionEnd(EndCause.CANCELED, EndBy.REMOTE)

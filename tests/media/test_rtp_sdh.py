"""RtpSessionDescriptionHandler: RFC 3264 offers and answers, hold, ports, errors."""

from __future__ import annotations

import re

import pytest

from app.media import (
    Body,
    Direction,
    MediaError,
    PortPool,
    RtpSdhFactory,
    RtpSessionDescriptionHandler,
    SdhState,
)
from tests.media.conftest import LOOPBACK, PUBLIC, can_bind
from tests.media.sdp_samples import (
    ASTERISK_OFFER,
    DESK_PHONE_OFFER,
    SIPP_OFFER,
    WEBRTC_OFFER,
    sdp,
)

SDH = RtpSessionDescriptionHandler


def body(text: str) -> Body:
    return Body("application/sdp", text)


def lines(description: Body) -> list[str]:
    """The body's lines; every line of what we send ends with CRLF (RFC 4566 §5)."""
    assert description.content_type == "application/sdp"
    assert description.content.endswith("\r\n")
    assert "\n" not in description.content.replace("\r\n", "")
    return description.content.split("\r\n")[:-1]


def origin(description: Body) -> tuple[int, int]:
    """(session id, version) of our o= line."""
    match = re.fullmatch(rf"o=- (\d+) (\d+) IN IP4 {re.escape(PUBLIC)}", lines(description)[1])
    assert match is not None
    return int(match.group(1)), int(match.group(2))


def media_sections(description: Body) -> list[list[str]]:
    sections: list[list[str]] = []
    for line in lines(description):
        if line.startswith("m="):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
    return sections


def answer_to(offer: Body, *media: str, version: int = 1000, **kwargs: object) -> Body:
    """The far end's answer to ``offer`` (kept for readability), media lines verbatim."""
    return body(sdp(*media, version=version, **kwargs))  # type: ignore[arg-type]


PCMU_ANSWER = ("m=audio 7000 RTP/AVP 0", "a=rtpmap:0 PCMU/8000")


# -- offers --------------------------------------------------------------------------------


async def test_initial_offer_every_line(sdh: SDH, pool: PortPool) -> None:
    offer = await sdh.get_description()
    assert sdh.ports is not None
    port = sdh.ports.rtp_port
    session_id, version = origin(offer)
    assert lines(offer) == [
        "v=0",
        f"o=- {session_id} {version} IN IP4 {PUBLIC}",
        "s=-",
        f"c=IN IP4 {PUBLIC}",
        "t=0 0",
        f"m=audio {port} RTP/AVP 0 8 101",
        "a=sendrecv",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=ptime:20",
    ]
    assert port % 2 == 0 and pool.low <= port < pool.high
    assert not can_bind(port) and not can_bind(port + 1)
    assert sdh.state is SdhState.HAVE_LOCAL_OFFER
    assert sdh.negotiated is None and sdh.direction is None


async def test_offer_options_and_ipv6(pool: PortPool) -> None:
    handler = RtpSdhFactory(
        "2001:db8::10", LOOPBACK, pool, codecs=("pcma",), telephone_event_payload_type=96
    )()
    try:
        text = lines(await handler.get_description())
        assert text[1].endswith(" IN IP6 2001:db8::10")
        assert text[3] == "c=IN IP6 2001:db8::10"
        assert text[5].endswith(" RTP/AVP 8 96")
        assert text[7:10] == [
            "a=rtpmap:8 PCMA/8000",
            "a=rtpmap:96 telephone-event/8000",
            "a=fmtp:96 0-16",
        ]
    finally:
        handler.close()
        await handler.wait_closed()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"public_address": "pbx.example.com"}, "IP address"),
        ({"codecs": ()}, "codecs"),
        ({"codecs": ("PCMU", "G729")}, "codecs"),
        ({"telephone_event_payload_type": 13}, "96-127"),
    ],
)
def test_factory_rejects_bad_options(
    pool: PortPool, kwargs: dict[str, object], message: str
) -> None:
    options: dict[str, object] = {"public_address": PUBLIC, "host": LOOPBACK, "port_pool": pool}
    options.update(kwargs)
    with pytest.raises(ValueError, match=message):
        RtpSdhFactory(**options)  # type: ignore[arg-type]


async def test_same_offer_asked_twice_is_the_same_sdp(sdh: SDH) -> None:
    first = await sdh.get_description()
    again = await sdh.get_description()  # e.g. the INVITE resent after a 407
    assert again == first
    assert sdh.state is SdhState.HAVE_LOCAL_OFFER


# -- answers to remote offers ----------------------------------------------------------------


async def test_answer_to_sipp_pcmu_only(sdh: SDH) -> None:
    await sdh.set_description(body(SIPP_OFFER))
    assert sdh.state is SdhState.HAVE_REMOTE_OFFER
    answer = await sdh.get_description()
    assert sdh.ports is not None
    port = sdh.ports.rtp_port
    session_id, version = origin(answer)
    assert lines(answer) == [
        "v=0",
        f"o=- {session_id} {version} IN IP4 {PUBLIC}",
        "s=-",
        f"c=IN IP4 {PUBLIC}",
        "t=0 0",
        f"m=audio {port} RTP/AVP 0",
        "a=sendrecv",
        "a=rtpmap:0 PCMU/8000",
        "a=ptime:20",
    ]
    assert sdh.state is SdhState.STABLE
    media = sdh.negotiated
    assert media is not None
    assert (media.local_port, media.remote_address, media.remote_port) == (port, "127.0.0.1", 6000)
    assert media.remote_rtcp_port == 6001
    assert media.direction is Direction.SENDRECV
    assert [(c.payloadType, c.name) for c in media.codecs] == [(0, "PCMU")]
    assert media.telephone_event is None
    assert not sdh.local_hold and not sdh.remote_hold


async def test_answer_to_pcma_only_without_rtpmap(sdh: SDH) -> None:
    await sdh.set_description(body(sdp("m=audio 4000 RTP/AVP 8", "a=ptime:30")))
    sections = media_sections(await sdh.get_description())
    assert sections[0][0].endswith(" RTP/AVP 8")
    assert sections[0][1:] == ["a=sendrecv", "a=rtpmap:8 PCMA/8000", "a=ptime:20"]
    assert sdh.negotiated is not None
    assert sdh.negotiated.remote_ptime == 30


async def test_answer_keeps_offerer_payload_types_and_order(sdh: SDH) -> None:
    # Both codecs, PCMA preferred, telephone-event on 96 limited to 0-15.
    await sdh.set_description(
        body(
            sdp(
                "m=audio 4000 RTP/AVP 8 0 96",
                "a=rtpmap:96 telephone-event/8000",
                "a=fmtp:96 0-15",
            )
        )
    )
    sections = media_sections(await sdh.get_description())
    assert sections[0][0].endswith(" RTP/AVP 8 0 96")
    assert sections[0][1:] == [
        "a=sendrecv",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:96 telephone-event/8000",
        "a=fmtp:96 0-15",
        "a=ptime:20",
    ]
    media = sdh.negotiated
    assert media is not None
    assert [c.payloadType for c in media.codecs] == [8, 0]
    assert media.telephone_event is not None
    assert media.telephone_event.payloadType == 96


async def test_answer_to_asterisk_many_codecs_and_video(sdh: SDH) -> None:
    await sdh.set_description(body(ASTERISK_OFFER))
    answer = await sdh.get_description()
    assert sdh.ports is not None
    audio, video = media_sections(answer)
    assert audio == [
        f"m=audio {sdh.ports.rtp_port} RTP/AVP 8 0 101",
        "a=sendrecv",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=ptime:20",
    ]
    assert video == ["m=video 0 RTP/AVP 99 34"]  # RFC 3264 §6: refused, same formats
    assert sdh.negotiated is not None
    assert (sdh.negotiated.remote_address, sdh.negotiated.remote_port) == ("10.0.0.5", 17000)


async def test_answer_to_desk_phone_offer(sdh: SDH) -> None:
    await sdh.set_description(body(DESK_PHONE_OFFER))
    audio = media_sections(await sdh.get_description())[0]
    assert audio[0].endswith(" RTP/AVP 0 8 100")
    assert "a=fmtp:100 0-15" in audio
    assert sdh.negotiated is not None
    assert sdh.negotiated.remote_rtcp_port == 11797


async def test_no_common_codec_rejects_stream_and_raises(sdh: SDH) -> None:
    offer = sdp("m=audio 4000 RTP/AVP 18 101", "a=rtpmap:101 telephone-event/8000")
    with pytest.raises(MediaError) as caught:
        await sdh.set_description(body(offer))
    assert caught.value.cause == "no common codec"
    assert caught.value.status_hint == 488
    # A first offer is kept: the answer refusing it can still be sent (offer in a 2xx).
    assert sdh.state is SdhState.HAVE_REMOTE_OFFER
    answer = await sdh.get_description()
    assert media_sections(answer) == [["m=audio 0 RTP/AVP 18 101"]]
    assert sdh.state is SdhState.STABLE
    assert sdh.negotiated is None


async def test_telephone_event_alone_is_no_common_codec(sdh: SDH) -> None:
    offer = sdp("m=audio 4000 RTP/AVP 101", "a=rtpmap:101 telephone-event/8000")
    with pytest.raises(MediaError, match="no common codec"):
        await sdh.set_description(body(offer))


async def test_wideband_telephone_event_is_not_taken_with_g711(sdh: SDH) -> None:
    offer = sdp("m=audio 4000 RTP/AVP 0 110", "a=rtpmap:110 telephone-event/48000")
    await sdh.set_description(body(offer))
    assert media_sections(await sdh.get_description())[0][0].endswith(" RTP/AVP 0")


async def test_webrtc_offer_is_refused_with_port_0(sdh: SDH) -> None:
    with pytest.raises(MediaError) as caught:
        await sdh.set_description(body(WEBRTC_OFFER))
    assert caught.value.cause == "unsupported audio transport UDP/TLS/RTP/SAVPF"
    assert caught.value.status_hint == 488
    answer = await sdh.get_description()
    assert media_sections(answer) == [
        ["m=audio 0 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126"],
        ["m=video 0 UDP/TLS/RTP/SAVPF 96 97"],
    ]
    assert sdh.negotiated is None


async def test_plain_rtp_audio_next_to_srtp_audio_is_taken(sdh: SDH) -> None:
    offer = sdp(
        "m=audio 5000 RTP/SAVP 0",
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz",
        "m=audio 5002 RTP/AVP 0",
    )
    await sdh.set_description(body(offer))
    srtp, plain = media_sections(await sdh.get_description())
    assert srtp == ["m=audio 0 RTP/SAVP 0"]
    assert plain[0].endswith(" RTP/AVP 0") and not plain[0].startswith("m=audio 0 ")
    assert sdh.negotiated is not None and sdh.negotiated.remote_port == 5002


async def test_offer_without_audio_stream(sdh: SDH) -> None:
    offer = sdp("m=audio 0 RTP/AVP 0", "m=image 6000 udptl t38", "a=T38FaxVersion:0")
    with pytest.raises(MediaError, match="no audio stream"):
        await sdh.set_description(body(offer))
    assert media_sections(await sdh.get_description()) == [
        ["m=audio 0 RTP/AVP 0"],
        ["m=image 0 udptl t38"],
    ]


async def test_audio_stream_without_connection_address_is_malformed(sdh: SDH) -> None:
    with pytest.raises(MediaError) as caught:
        await sdh.set_description(body(sdp("m=audio 4000 RTP/AVP 0", connection=None)))
    assert caught.value.status_hint == 400
    assert sdh.state is SdhState.STABLE


@pytest.mark.parametrize(
    ("offered", "answered", "remote_hold"),
    [
        ("sendrecv", "sendrecv", False),
        ("sendonly", "recvonly", True),
        ("recvonly", "sendonly", False),
        ("inactive", "inactive", True),
    ],
)
async def test_answer_direction_follows_the_offer(
    sdh: SDH, offered: str, answered: str, remote_hold: bool
) -> None:
    await sdh.set_description(body(sdp("m=audio 4000 RTP/AVP 0", f"a={offered}")))
    audio = media_sections(await sdh.get_description())[0]
    assert audio[1] == f"a={answered}"
    assert sdh.direction == Direction(answered)
    assert sdh.remote_hold is remote_hold


async def test_session_level_sendonly_and_c_0_0_0_0_are_holds(sdh: SDH) -> None:
    await sdh.set_description(body(sdp("m=audio 4000 RTP/AVP 0", session=["a=sendonly"])))
    assert media_sections(await sdh.get_description())[0][1] == "a=recvonly"
    assert sdh.remote_hold
    await sdh.set_description(body(sdp("m=audio 4000 RTP/AVP 0", connection="0.0.0.0")))
    assert media_sections(await sdh.get_description())[0][1] == "a=recvonly"
    assert sdh.remote_hold
    assert sdh.negotiated is not None and sdh.negotiated.remote_address == "0.0.0.0"


async def test_answer_while_we_hold(sdh: SDH) -> None:
    await sdh.set_description(body(SIPP_OFFER))
    assert media_sections(await sdh.get_description(hold=True))[0][1] == "a=sendonly"
    assert sdh.local_hold
    assert sdh.direction is Direction.SENDONLY


# -- the far end's re-INVITEs ----------------------------------------------------------------


async def test_remote_hold_resume_and_new_address(sdh: SDH) -> None:
    await sdh.set_description(body(sdp("m=audio 4000 RTP/AVP 0 8", version=1)))
    first = await sdh.get_description()
    session_id, version = origin(first)
    # Hold (RFC 3264 §8.4): the far end goes sendonly.
    await sdh.set_description(body(sdp("m=audio 4000 RTP/AVP 0 8", "a=sendonly", version=2)))
    held = await sdh.get_description()
    assert origin(held) == (session_id, version + 1)
    assert media_sections(held)[0][1] == "a=recvonly"
    assert sdh.remote_hold and sdh.direction is Direction.RECVONLY
    # Resume from another address and port, PCMA only now.
    resumed_offer = sdp(
        "m=audio 4100 RTP/AVP 8", "a=sendrecv", connection="203.0.113.99", version=3
    )
    await sdh.set_description(body(resumed_offer))
    resumed = await sdh.get_description()
    assert origin(resumed) == (session_id, version + 2)
    assert media_sections(resumed)[0][0].endswith(" RTP/AVP 8")
    assert media_sections(resumed)[0][1] == "a=sendrecv"
    media = sdh.negotiated
    assert media is not None
    assert (media.remote_address, media.remote_port, media.remote_rtcp_port) == (
        "203.0.113.99",
        4100,
        4101,
    )
    assert [c.name for c in media.codecs] == ["PCMA"]
    assert not sdh.remote_hold
    # The same port for the whole session.
    assert media.local_port == int(media_sections(first)[0][0].split()[1])


async def test_unchanged_reoffer_gets_the_same_answer_version(sdh: SDH) -> None:
    await sdh.set_description(body(SIPP_OFFER))
    first = await sdh.get_description()
    await sdh.set_description(body(SIPP_OFFER))  # session refresh, same version
    again = await sdh.get_description()
    assert again == first  # RFC 3264 §8: an unchanged SDP keeps its version


async def test_reoffer_removing_the_audio_stream(sdh: SDH) -> None:
    await sdh.set_description(body(sdp("m=audio 4000 RTP/AVP 0", "m=video 4002 RTP/AVP 31")))
    await sdh.get_description()
    await sdh.set_description(body(sdp("m=audio 0 RTP/AVP 0", "m=video 0 RTP/AVP 31")))
    answer = await sdh.get_description()
    assert media_sections(answer) == [["m=audio 0 RTP/AVP 0"], ["m=video 0 RTP/AVP 31"]]
    assert sdh.negotiated is None
    assert sdh.state is SdhState.STABLE
    # Our next offer brings audio back in the first free place and keeps both m= lines.
    offer = await sdh.get_description()
    assert sdh.ports is not None
    assert [section[0] for section in media_sections(offer)] == [
        f"m=audio {sdh.ports.rtp_port} RTP/AVP 0 8 101",
        "m=video 0 RTP/AVP 31",
    ]


async def test_reoffer_with_no_common_codec_leaves_the_session(sdh: SDH) -> None:
    await sdh.set_description(body(SIPP_OFFER))
    answer = await sdh.get_description()
    before = sdh.negotiated
    with pytest.raises(MediaError, match="no common codec"):
        await sdh.set_description(body(sdp("m=audio 4000 RTP/AVP 18", version=2)))
    # The UA answers 488 and the session goes on (RFC 3261 §14.2).
    assert sdh.state is SdhState.STABLE
    assert sdh.negotiated == before
    offer = await sdh.get_description()  # an offer, not an answer to the refused one
    assert sdh.state is SdhState.HAVE_LOCAL_OFFER
    assert origin(offer)[1] == origin(answer)[1] + 1


async def test_pending_remote_offer_replaced_by_a_later_one(sdh: SDH) -> None:
    await sdh.set_description(body(sdp("m=audio 4000 RTP/AVP 0")))
    await sdh.set_description(body(sdp("m=audio 4100 RTP/AVP 8")))
    assert media_sections(await sdh.get_description())[0][0].endswith(" RTP/AVP 8")
    assert sdh.negotiated is not None and sdh.negotiated.remote_port == 4100


# -- answers to our offers, our re-offers ----------------------------------------------------


async def test_answer_to_our_offer(sdh: SDH) -> None:
    offer = await sdh.get_description()
    await sdh.set_description(
        answer_to(
            offer, "m=audio 7000 RTP/AVP 8 96", "a=rtpmap:96 telephone-event/8000", "a=fmtp:96 0-11"
        )
    )
    assert sdh.state is SdhState.STABLE
    media = sdh.negotiated
    assert media is not None
    assert (media.remote_address, media.remote_port) == ("203.0.113.5", 7000)
    assert [(c.payloadType, c.name) for c in media.codecs] == [(8, "PCMA")]
    # The answerer picked another payload type for events: we send with its number.
    assert media.telephone_event is not None
    assert media.telephone_event.payloadType == 96
    assert media.telephone_event.parameters == {"0-11": None}
    assert media.direction is Direction.SENDRECV


async def test_answer_without_events_to_our_offer(sdh: SDH) -> None:
    offer = await sdh.get_description()
    await sdh.set_description(answer_to(offer, *PCMU_ANSWER))
    assert sdh.negotiated is not None
    assert sdh.negotiated.telephone_event is None


@pytest.mark.parametrize(
    ("media", "cause"),
    [
        (("m=audio 7000 RTP/AVP 18",), "no common codec"),
        (("m=audio 7000 RTP/AVP 9 101", "a=rtpmap:101 telephone-event/8000"), "no common codec"),
        (("m=audio 0 RTP/AVP 0",), "audio stream refused by the answer"),
        (("m=audio 7000 RTP/AVP 0", "m=video 0 RTP/AVP 31"), "answer has 2 m= lines"),
        (("m=audio 7000 RTP/SAVP 0",), "answer changed the audio stream"),
    ],
)
async def test_unacceptable_answer(sdh: SDH, media: tuple[str, ...], cause: str) -> None:
    offer = await sdh.get_description()
    with pytest.raises(MediaError) as caught:
        await sdh.set_description(answer_to(offer, *media))
    assert caught.value.cause.startswith(cause)
    assert sdh.state is SdhState.HAVE_LOCAL_OFFER  # failures change nothing
    assert sdh.negotiated is None
    sdh.rollback_description()
    assert sdh.state is SdhState.STABLE


async def test_hold_and_resume_reoffers_increment_the_version(sdh: SDH) -> None:
    offer = await sdh.get_description()
    session_id, version = origin(offer)
    await sdh.set_description(answer_to(offer, *PCMU_ANSWER))

    hold = await sdh.get_description(hold=True)
    assert origin(hold) == (session_id, version + 1)
    assert media_sections(hold)[0][1] == "a=sendonly"
    await sdh.set_description(answer_to(hold, *PCMU_ANSWER, "a=recvonly", version=1001))
    assert sdh.direction is Direction.SENDONLY
    assert sdh.local_hold and not sdh.remote_hold

    resume = await sdh.get_description()
    assert origin(resume) == (session_id, version + 2)
    assert media_sections(resume)[0][1] == "a=sendrecv"
    await sdh.set_description(answer_to(resume, *PCMU_ANSWER, version=1002))
    assert sdh.direction is Direction.SENDRECV
    assert not sdh.local_hold

    refresh = await sdh.get_description()  # nothing changed: same SDP, same version
    assert origin(refresh) == (session_id, version + 2)
    assert refresh == resume


async def test_hold_while_held_is_inactive(sdh: SDH) -> None:
    await sdh.set_description(body(sdp("m=audio 4000 RTP/AVP 0", "a=sendonly")))
    await sdh.get_description()
    assert sdh.remote_hold
    hold = await sdh.get_description(hold=True)
    assert media_sections(hold)[0][1] == "a=inactive"
    await sdh.set_description(answer_to(hold, "m=audio 4000 RTP/AVP 0", "a=inactive"))
    assert sdh.direction is Direction.INACTIVE
    assert sdh.remote_hold  # an answer forced to inactive says nothing new
    # The far end resumes us with an answer saying sendrecv to our sendrecv offer.
    resume = await sdh.get_description()
    assert media_sections(resume)[0][1] == "a=sendrecv"
    await sdh.set_description(answer_to(resume, "m=audio 4000 RTP/AVP 0"))
    assert not sdh.remote_hold and sdh.direction is Direction.SENDRECV


async def test_answer_cannot_widen_our_inactive_offer(sdh: SDH) -> None:
    await sdh.set_description(body(sdp("m=audio 4000 RTP/AVP 0", "a=inactive")))
    await sdh.get_description()
    hold = await sdh.get_description(hold=True)
    assert media_sections(hold)[0][1] == "a=inactive"
    # A non-conforming answer (RFC 3264 §6.1 forces inactive) neither opens the stream
    # nor tells us the far end stopped holding.
    await sdh.set_description(answer_to(hold, "m=audio 4000 RTP/AVP 0", "a=sendrecv"))
    assert sdh.direction is Direction.INACTIVE
    assert sdh.remote_hold


async def test_answer_holding_us_to_our_offer(sdh: SDH) -> None:
    offer = await sdh.get_description()
    await sdh.set_description(answer_to(offer, *PCMU_ANSWER, "a=sendonly"))
    assert sdh.remote_hold
    assert sdh.direction is Direction.RECVONLY


async def test_reoffer_keeps_every_m_line_of_the_session(sdh: SDH) -> None:
    await sdh.set_description(body(ASTERISK_OFFER))
    await sdh.get_description()
    hold = await sdh.get_description(hold=True)
    assert [section[0] for section in media_sections(hold)][1] == "m=video 0 RTP/AVP 99 34"
    assert len(media_sections(hold)) == 2  # RFC 3264 §8: never fewer m= lines


async def test_reoffer_keeps_the_remote_dynamic_payload_types(sdh: SDH) -> None:
    # The far end uses 96 for events and 101 for something else: our re-offer must not
    # move telephone-event to 101 (RFC 3264 §8.3.2).
    await sdh.set_description(
        body(
            sdp(
                "m=audio 4000 RTP/AVP 0 101 96",
                "a=rtpmap:101 iLBC/8000",
                "a=rtpmap:96 telephone-event/8000",
            )
        )
    )
    await sdh.get_description()
    audio = media_sections(await sdh.get_description(hold=True))[0]
    assert audio[0].endswith(" RTP/AVP 0 8 96")
    assert "a=rtpmap:96 telephone-event/8000" in audio


async def test_reoffer_avoids_a_dynamic_type_taken_by_another_codec(sdh: SDH) -> None:
    await sdh.set_description(body(sdp("m=audio 4000 RTP/AVP 0 101", "a=rtpmap:101 iLBC/8000")))
    await sdh.get_description()
    audio = media_sections(await sdh.get_description())[0]
    assert audio[0].endswith(" RTP/AVP 0 8 96")  # 101 is iLBC in this stream


async def test_glare_rollback_then_remote_offer(sdh: SDH) -> None:
    await sdh.set_description(body(SIPP_OFFER))
    await sdh.get_description()
    await sdh.get_description(hold=True)  # our re-INVITE gets 491
    sdh.rollback_description()
    assert sdh.state is SdhState.STABLE
    await sdh.set_description(body(sdp("m=audio 4000 RTP/AVP 0", "a=sendonly", version=5)))
    assert sdh.state is SdhState.HAVE_REMOTE_OFFER  # taken as an offer, not as an answer
    assert media_sections(await sdh.get_description())[0][1] == "a=recvonly"


# -- bodies, errors, lifecycle ---------------------------------------------------------------


def test_has_description(sdh: SDH) -> None:
    assert sdh.has_description("application/sdp")
    assert sdh.has_description("Application/SDP; charset=utf-8")
    assert not sdh.has_description("application/isup")
    assert not sdh.has_description("text/plain")


async def test_body_that_is_not_sdp(sdh: SDH) -> None:
    with pytest.raises(MediaError) as caught:
        await sdh.set_description(Body("text/plain", SIPP_OFFER))
    assert caught.value.status_hint == 415
    assert sdh.state is SdhState.STABLE


@pytest.mark.parametrize(
    "text",
    ["", "garbage", "v=0\r\nm=audio x\r\n", sdp("m=audio 4000 RTP/AVP opus"), "v=0\r\n\x00"],
)
async def test_garbage_sdp_is_a_media_error_and_changes_nothing(sdh: SDH, text: str) -> None:
    with pytest.raises(MediaError) as caught:
        await sdh.set_description(body(text))
    assert caught.value.status_hint == 400
    assert sdh.state is SdhState.STABLE
    offer = await sdh.get_description()
    with pytest.raises(MediaError):
        await sdh.set_description(body(text))  # as an answer, too
    assert sdh.state is SdhState.HAVE_LOCAL_OFFER
    await sdh.set_description(answer_to(offer, *PCMU_ANSWER))
    assert sdh.state is SdhState.STABLE


async def test_socket_bound_while_alive_and_freed_on_close(
    factory: RtpSdhFactory, pool: PortPool
) -> None:
    handler = factory()
    assert handler.ports is None  # nothing bound before the first negotiation
    await handler.get_description()
    assert handler.ports is not None
    port = handler.ports.rtp_port
    assert not can_bind(port)
    assert not can_bind(port + 1)
    assert pool.in_use == 1
    handler.close()
    handler.close()  # idempotent
    assert handler.state is SdhState.CLOSED
    await handler.wait_closed()
    assert can_bind(port)
    assert can_bind(port + 1)
    assert pool.in_use == 0


async def test_closed_handler_refuses_everything(factory: RtpSdhFactory) -> None:
    handler = factory()
    handler.close()
    for call in (handler.get_description(), handler.set_description(body(SIPP_OFFER))):
        with pytest.raises(MediaError, match="closed"):
            await call
    with pytest.raises(MediaError, match="closed"):
        handler.rollback_description()
    assert handler.ports is None
    await handler.wait_closed()


async def test_each_handler_gets_its_own_port(factory: RtpSdhFactory, pool: PortPool) -> None:
    handlers = [factory() for _ in range(3)]
    for handler in handlers:
        await handler.set_description(body(SIPP_OFFER))
    ports = {handler.ports.rtp_port for handler in handlers if handler.ports is not None}
    assert len(ports) == 3
    assert pool.in_use == 3
    for handler in handlers:
        handler.close()
        await handler.wait_closed()
    assert pool.in_use == 0


async def test_no_free_port_is_a_503_and_changes_nothing(port_range: tuple[int, int]) -> None:
    low, _ = port_range
    pool = PortPool(low, low + 1)
    factory = RtpSdhFactory(PUBLIC, LOOPBACK, pool)
    first, second = factory(), factory()
    await first.get_description()
    with pytest.raises(MediaError) as caught:
        await second.get_description()
    assert caught.value.status_hint == 503
    assert second.state is SdhState.STABLE
    first.close()
    await first.wait_closed()
    await second.get_description()  # the port came back
    assert second.ports is not None and second.ports.rtp_port == low
    second.close()
    await second.wait_closed()

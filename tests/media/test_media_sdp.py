"""SDP parsing helpers: what phones send, what aiortc alone would choke on, garbage."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.media import Direction, MediaError
from app.media.sdp import (
    MAX_SDP_LENGTH,
    codec_events,
    events_fmtp,
    make_codec,
    parse_sdp,
)
from tests.media.sdp_samples import ASTERISK_OFFER, SIPP_OFFER, WEBRTC_OFFER, sdp


def names(codecs: object) -> list[tuple[int | None, str, int]]:
    return [(c.payloadType, c.name, c.clockRate) for c in codecs]  # type: ignore[attr-defined]


def test_sipp_offer() -> None:
    parsed = parse_sdp(SIPP_OFFER)
    assert parsed.origin == "user1 53655765 2353687637 IN IP4 127.0.0.1"
    assert [(m.kind, m.port, m.proto, m.fmts) for m in parsed.media] == [
        ("audio", 6000, "RTP/AVP", ("0",))
    ]
    audio = parsed.audio[0]
    assert (audio.address, audio.port, audio.rtcp_port) == ("127.0.0.1", 6000, 6001)
    assert audio.direction is Direction.SENDRECV
    assert audio.ptime is None
    assert names(audio.codecs) == [(0, "PCMU", 8000)]


def test_asterisk_offer_keeps_preference_order_and_fmtp() -> None:
    parsed = parse_sdp(ASTERISK_OFFER)
    audio = parsed.audio[0]
    assert names(audio.codecs) == [
        (9, "G722", 8000),
        (107, "opus", 48000),
        (8, "PCMA", 8000),
        (0, "PCMU", 8000),
        (3, "GSM", 8000),
        (18, "G729", 8000),
        (101, "telephone-event", 8000),
    ]
    assert audio.codecs[1].channels == 2
    assert audio.codecs[5].parameters == {"annexb": "no"}
    assert codec_events(audio.codecs[6]) == frozenset(range(17))
    assert audio.ptime == 20
    assert parsed.media[1].kind == "video"
    assert 1 not in parsed.audio  # only RTP/AVP audio is read in depth


def test_static_payload_types_without_rtpmap_and_in_mline_order() -> None:
    # rtpmap lines out of m= order, one static type without rtpmap, an fmtp for it.
    parsed = parse_sdp(
        sdp(
            "m=audio 4000 RTP/AVP 8 18 0 96",
            "a=rtpmap:96 telephone-event/8000",
            "a=rtpmap:0 PCMU/8000",
            "a=fmtp:18 annexb=no",
            "a=fmtp:97 ignored-no-such-format",
        )
    )
    codecs = parsed.audio[0].codecs
    assert names(codecs) == [
        (8, "PCMA", 8000),
        (18, "G729", 8000),
        (0, "PCMU", 8000),
        (96, "telephone-event", 8000),
    ]
    assert codecs[1].parameters == {"annexb": "no"}
    assert codec_events(codecs[3]) == frozenset(range(16))  # RFC 4733: no fmtp means 0-15


def test_unknown_dynamic_payload_type_without_rtpmap_is_skipped() -> None:
    parsed = parse_sdp(sdp("m=audio 4000 RTP/AVP 0 98"))
    assert names(parsed.audio[0].codecs) == [(0, "PCMU", 8000)]


def test_session_level_direction_and_media_level_override() -> None:
    parsed = parse_sdp(
        sdp(
            "m=audio 4000 RTP/AVP 0",
            "m=audio 4002 RTP/AVP 0",
            "a=recvonly",
            session=["a=sendonly"],
        )
    )
    assert parsed.audio[0].direction is Direction.SENDONLY
    assert parsed.audio[1].direction is Direction.RECVONLY


@pytest.mark.parametrize(
    ("direction", "expected"),
    [
        ("sendrecv", Direction.SENDONLY),
        ("recvonly", Direction.INACTIVE),
        ("sendonly", Direction.SENDONLY),
        ("inactive", Direction.INACTIVE),
    ],
)
def test_c_0_0_0_0_means_do_not_send_to_me(direction: str, expected: Direction) -> None:
    # RFC 3264 §8.4: the RFC 2543 way of holding.
    parsed = parse_sdp(sdp("m=audio 4000 RTP/AVP 0", f"a={direction}", connection="0.0.0.0"))
    assert parsed.audio[0].address == "0.0.0.0"
    assert parsed.audio[0].direction is expected


def test_media_level_connection_and_rtcp_attribute() -> None:
    parsed = parse_sdp(
        sdp(
            "m=audio 4000 RTP/AVP 0",
            "c=IN IP4 198.51.100.7",
            "a=rtcp:4011 IN IP4 198.51.100.8",
            connection=None,
        )
    )
    audio = parsed.audio[0]
    assert (audio.address, audio.port, audio.rtcp_port) == ("198.51.100.7", 4000, 4011)


def test_ipv6_connection() -> None:
    parsed = parse_sdp(sdp("m=audio 4000 RTP/AVP 0", connection=None, session=["c=IN IP6 ::1"]))
    assert parsed.audio[0].address == "::1"


def test_lines_aiortc_cannot_read_are_kept_verbatim() -> None:
    parsed = parse_sdp(
        sdp(
            "m=audio 4000/2 RTP/AVP 0",
            "m=image 0 udptl t38",
            "a=T38FaxVersion:0",
            "m=application 5000 TCP/MRCPv2 1",
            "a=setup:holdconn",
        )
    )
    assert [(m.kind, m.port, m.proto, m.fmts) for m in parsed.media] == [
        ("audio", 4000, "RTP/AVP", ("0",)),
        ("image", 0, "udptl", ("t38",)),
        ("application", 5000, "TCP/MRCPv2", ("1",)),
    ]
    assert list(parsed.audio) == [0]
    assert parsed.media[2].rejected().port == 0


def test_webrtc_offer_parses_without_audio_to_take() -> None:
    parsed = parse_sdp(WEBRTC_OFFER)
    assert [(m.kind, m.proto) for m in parsed.media] == [
        ("audio", "UDP/TLS/RTP/SAVPF"),
        ("video", "UDP/TLS/RTP/SAVPF"),
    ]
    assert parsed.audio == {}


def test_lf_line_endings_blank_lines_and_trailing_spaces_are_tolerated() -> None:
    text = "v=0\no=- 1 1 IN IP4 192.0.2.1 \ns=-\n\nc=IN IP4 192.0.2.1\nt=0 0\n"
    text += "m=audio 4000 RTP/AVP 8\na=sendonly  \n\n"
    parsed = parse_sdp(text)
    assert parsed.audio[0].direction is Direction.SENDONLY
    assert names(parsed.audio[0].codecs) == [(8, "PCMA", 8000)]


GARBAGE = [
    "",
    "hello world",
    "\x00\x01\x02\xff",
    "v=1\r\no=- 1 1 IN IP4 192.0.2.1\r\n",
    "o=- 1 1 IN IP4 192.0.2.1\r\nv=0\r\n",
    "v=0\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n",  # no o=
    "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\no=- 2 2 IN IP4 192.0.2.1\r\n",
    "v=0\r\no=- 1 IN IP4\r\n",
    "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nthis is not sdp\r\n",
    "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nX=upper case type\r\n",
    "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nc=IN IP4\r\n",
    "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nc=ATM NSAP 47.0005\r\n",
    sdp("m=audio"),
    sdp("m=audio 4000 RTP/AVP"),
    sdp("m=audio port RTP/AVP 0"),
    sdp("m=audio 70000 RTP/AVP 0"),
    sdp("m=audio 4000 RTP/AVP PCMU"),
    sdp("m=audio 4000 RTP/AVP 200"),
    sdp("m=audio 4000 RTP/AVP 72"),
    sdp("m=audio 4000 RTP/AVP -1"),
    sdp("m=audio 4000 RTP/AVP 0", "c=IN IP4"),
    sdp("m=audio 4000 RTP/AVP 96", "a=rtpmap:96"),
    sdp("m=audio 4000 RTP/AVP 96", "a=rtpmap:96 opus"),
    sdp("m=audio 4000 RTP/AVP 96", "a=rtpmap:96 opus/fast"),
    sdp("m=audio 4000 RTP/AVP 96", "a=rtpmap:x opus/48000"),
    sdp("m=audio 4000 RTP/AVP 0", "a=fmtp:0"),
    sdp("m=audio 4000 RTP/AVP 0", "a=rtcp:"),
    sdp("m=audio 4000 RTP/AVP 0", "a=rtcp:4001 IN IP4"),
    sdp("m=audio 4000 RTP/AVP 0", "a=ptime:fast"),
    "v=0\r\n" + "a=x\r\n" * 3000,
    sdp(*["m=audio 0 RTP/AVP 0"] * 65),
    "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=" + "x" * MAX_SDP_LENGTH + "\r\n",
]


@pytest.mark.parametrize("text", GARBAGE)
def test_garbage_raises_media_error_400(text: str) -> None:
    with pytest.raises(MediaError) as caught:
        parse_sdp(text)
    assert caught.value.status_hint == 400
    assert caught.value.cause.startswith("malformed SDP")


_SDP_CHARS = st.sampled_from(list("vosctma=:/ -0123456789\r\nINPAVRTudioe.\x00"))


@given(st.text(_SDP_CHARS, max_size=300))
def test_random_text_only_ever_raises_media_error(text: str) -> None:
    try:
        parse_sdp(text)
    except MediaError as exc:
        assert exc.status_hint == 400


@given(
    st.sampled_from([SIPP_OFFER, ASTERISK_OFFER, WEBRTC_OFFER]),
    st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 8), st.text(max_size=6)), max_size=4),
)
def test_mutated_real_offers_only_ever_raise_media_error(
    text: str, edits: list[tuple[int, int, str]]
) -> None:
    for at, cut, insert in edits:
        at %= len(text) + 1
        text = text[:at] + insert + text[at + cut :]
    try:
        parse_sdp(text)
    except MediaError as exc:
        assert exc.status_hint == 400


@pytest.mark.parametrize(
    ("wanted", "offered", "answer"),
    [
        # RFC 3264 §6.1, answering with our full wish (sendrecv) ...
        (Direction.SENDRECV, Direction.SENDRECV, Direction.SENDRECV),
        (Direction.SENDRECV, Direction.SENDONLY, Direction.RECVONLY),
        (Direction.SENDRECV, Direction.RECVONLY, Direction.SENDONLY),
        (Direction.SENDRECV, Direction.INACTIVE, Direction.INACTIVE),
        # ... and while we hold (sendonly).
        (Direction.SENDONLY, Direction.SENDRECV, Direction.SENDONLY),
        (Direction.SENDONLY, Direction.SENDONLY, Direction.INACTIVE),
        (Direction.SENDONLY, Direction.RECVONLY, Direction.SENDONLY),
        (Direction.SENDONLY, Direction.INACTIVE, Direction.INACTIVE),
    ],
)
def test_answer_direction_table(wanted: Direction, offered: Direction, answer: Direction) -> None:
    assert wanted.answer_to(offered) is answer


@pytest.mark.parametrize(
    ("fmtp", "events"),
    [
        ("0-16", set(range(17))),
        ("0-15,66,70-71", {*range(16), 66, 70, 71}),
        ("16", {16}),
        ("x,3,9-7,5-", {3}),
    ],
)
def test_codec_events(fmtp: str, events: set[int]) -> None:
    assert codec_events(make_codec("telephone-event", 101, events=fmtp)) == events


@pytest.mark.parametrize(
    ("events", "fmtp"),
    [(range(17), "0-16"), ({0, 1, 2, 5, 7, 8}, "0-2,5,7-8"), ({4}, "4"), (set(), "")],
)
def test_events_fmtp(events: set[int], fmtp: str) -> None:
    assert events_fmtp(events) == fmtp

"""SDP for plain RTP/AVP audio: parsing and building on top of aiortc's SDP classes.

aiortc (a WebRTC stack) reads and writes the lines; this module adds what SIP phones need
and aiortc does not do: static payload types listed without ``a=rtpmap``, the session-level
direction attribute, ``c=0.0.0.0`` hold, m= lines aiortc cannot read (``m=image 0 udptl t38``,
port counts) kept verbatim so an answer can reject them, bounded input and one error type.
Only the RTP/AVP audio sections are handed to aiortc, after a strict first pass.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from aiortc.rtcicetransport import RTCIceParameters
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.sdp import MediaDescription, SessionDescription, parameters_to_sdp

from app.media.errors import MediaError

# Input limits. An audio offer is a few hundred bytes; WebRTC offers with many candidates
# reach a few KiB. 64 KiB bounds the work on hostile input with a wide margin.
MAX_SDP_LENGTH: Final = 65536
# Lines per body: a 64 KiB body of minimal lines would be ~16k lines; real ones have < 200.
MAX_SDP_LINES: Final = 2048
# m= sections per body: phones send 1-3, conference servers a few dozen at most.
MAX_MEDIA_SECTIONS: Final = 64

AUDIO: Final = "audio"
RTP_AVP: Final = "RTP/AVP"  # RFC 3551
PTIME_MS: Final = 20  # RFC 3551 §4.5: 20 ms is the default packetization for G.711
TELEPHONE_EVENT: Final = "telephone-event"  # RFC 4733
# RFC 4733 §3.2: events 0-15 are the DTMF keys 0-9 * # A-D, 16 is flash.
SUPPORTED_EVENTS: Final = frozenset(range(17))
# RFC 4733 §2.4.1: without an fmtp line only events 0-15 may be sent.
DEFAULT_EVENTS: Final = frozenset(range(16))
DYNAMIC_PAYLOAD_TYPES: Final = range(96, 128)  # RFC 3551 §3
# RFC 5761 §4: payload types 72-76 collide with RTCP packet types and must not be used.
_RTCP_CONFLICT_PAYLOAD_TYPES: Final = range(72, 77)

# RFC 3551 §6 table 4: audio payload types with a fixed meaning (name, clock rate, channels),
# which an SDP may list without an a=rtpmap line (RFC 4566 §6, "rtpmap").
STATIC_AUDIO_PAYLOAD_TYPES: Final[Mapping[int, tuple[str, int, int]]] = {
    0: ("PCMU", 8000, 1),
    3: ("GSM", 8000, 1),
    4: ("G723", 8000, 1),
    5: ("DVI4", 8000, 1),
    6: ("DVI4", 16000, 1),
    7: ("LPC", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),
    10: ("L16", 44100, 2),
    11: ("L16", 44100, 1),
    12: ("QCELP", 8000, 1),
    13: ("CN", 8000, 1),
    14: ("MPA", 90000, 1),
    15: ("G728", 8000, 1),
    16: ("DVI4", 11025, 1),
    17: ("DVI4", 22050, 1),
    18: ("G729", 8000, 1),
}
# The audio codecs this handler can carry, with their static payload type (RFC 3551 §6).
AUDIO_CODECS: Final[Mapping[str, int]] = {"PCMU": 0, "PCMA": 8}

_LINE = re.compile(r"[a-z]=")
_CONNECTION = re.compile(r"IN IP([46]) (\S+)")
_PORT = re.compile(r"(\d+)(?:/\d+)?")
_RTPMAP = re.compile(r"(\d+) ([^/\s]+)/(\d+)(?:/(\d+))?")
_FMTP = re.compile(r"(\d+) (\S.*)")
_RTCP = re.compile(r"(\d+)(?: IN IP[46] \S+)?")
_PTIME = re.compile(r"\d+(?:\.\d+)?")


class Direction(enum.StrEnum):
    """The direction attribute of a stream, from the point of view of whoever wrote it."""

    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"

    @classmethod
    def from_flags(cls, *, send: bool, recv: bool) -> Direction:
        if send:
            return cls.SENDRECV if recv else cls.SENDONLY
        return cls.RECVONLY if recv else cls.INACTIVE

    @property
    def sends(self) -> bool:
        return self in (Direction.SENDRECV, Direction.SENDONLY)

    @property
    def receives(self) -> bool:
        return self in (Direction.SENDRECV, Direction.RECVONLY)

    def answer_to(self, offered: Direction) -> Direction:
        """Our direction in an answer to ``offered`` when we want ``self`` (RFC 3264 §6.1).

        We may send only if the offerer receives and receive only if it sends: sendonly is
        answered recvonly (or inactive), recvonly sendonly (or inactive), inactive inactive.
        """
        return Direction.from_flags(
            send=self.sends and offered.receives, recv=self.receives and offered.sends
        )


_DIRECTIONS: Final = frozenset(direction.value for direction in Direction)


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaLine:
    """An m= line as written (RFC 4566 §5.14), kept verbatim so an answer can reject it."""

    kind: str
    port: int
    proto: str
    fmts: tuple[str, ...]

    def rejected(self) -> MediaLine:
        """The same stream with port 0: rejected in an answer or removed (RFC 3264 §6, §8.2)."""
        return MediaLine(kind=self.kind, port=0, proto=self.proto, fmts=self.fmts)


@dataclass(frozen=True, slots=True, kw_only=True)
class AudioSection:
    """An RTP/AVP audio stream with a non-zero port, as the remote party described it."""

    index: int  # position among the m= lines
    description: MediaDescription  # aiortc's parse of the section
    address: str | None  # media-level c=, else session-level c=
    port: int
    rtcp_port: int  # a=rtcp (RFC 3605), else port + 1 (RFC 3550 §11)
    # The writer's direction; c=0.0.0.0 removes its receiving half (RFC 3264 §8.4).
    direction: Direction
    ptime: int | None  # a=ptime in ms (RFC 4566 §6), rounded down

    @property
    def codecs(self) -> list[RTCRtpCodecParameters]:
        """Codecs in m= line order, i.e. the writer's order of preference (RFC 3264 §5.1)."""
        return self.description.rtp.codecs


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedSdp:
    """A remote SDP body: every m= line, and the readable RTP/AVP audio sections by index."""

    origin: str
    session: SessionDescription
    media: tuple[MediaLine, ...]
    audio: Mapping[int, AudioSection]


def _malformed(what: str) -> MediaError:
    return MediaError(f"malformed SDP: {what}", status_hint=400)


def _connection_address(value: str) -> str:
    match = _CONNECTION.fullmatch(value)
    if match is None:
        raise _malformed(f"bad c= line {value[:60]!r}")
    return match.group(2).split("/", 1)[0]  # drop a multicast TTL / count (RFC 4566 §5.7)


def _parse_media_line(value: str) -> MediaLine:
    tokens = value.split()
    if len(tokens) < 4 or _PORT.fullmatch(tokens[1]) is None:
        raise _malformed(f"bad m= line {value[:60]!r}")
    port = int(tokens[1].split("/", 1)[0])
    if port > 65535:
        raise _malformed(f"port {port} out of range")
    return MediaLine(kind=tokens[0], port=port, proto=tokens[2], fmts=tuple(tokens[3:]))


def _payload_types(line: MediaLine) -> tuple[int, ...]:
    pts: dict[int, None] = {}  # ordered, and at most 128 of them
    for fmt in line.fmts:
        if not fmt.isdigit() or int(fmt) > 127 or int(fmt) in _RTCP_CONFLICT_PAYLOAD_TYPES:
            # RFC 3551 §3: an RTP/AVP format is a 7-bit payload type number.
            raise _malformed(f"bad RTP payload type {fmt[:10]!r}")
        pts[int(fmt)] = None
    return tuple(pts)


def _attribute(line: str) -> tuple[str, str | None]:
    name, sep, value = line[2:].partition(":")
    return name, (value if sep else None)


@dataclass(slots=True)
class _Section:
    line: MediaLine
    lines: list[str]


def _audio_lines(line: MediaLine, lines: Sequence[str]) -> tuple[list[str], int | None]:
    """The lines of an RTP/AVP audio section that aiortc should read, and its a=ptime.

    rtpmap lines are written in m= line order (aiortc lists codecs in rtpmap order); a static
    payload type without rtpmap gets one from RFC 3551; fmtp lines without a codec and other
    attributes (ICE, SSRC, ...) are left out, none matter for plain RTP.
    """
    pts = _payload_types(line)
    rtpmaps: dict[int, str] = {}
    fmtps: dict[int, str] = {}
    kept: list[str] = []
    ptime: int | None = None
    for text in lines:
        if text.startswith("c="):
            _connection_address(text[2:])
            kept.append(text)
            continue
        if not text.startswith("a="):
            continue
        name, value = _attribute(text)
        if name in _DIRECTIONS:
            kept.append(text)
        elif name == "rtpmap":
            match = _RTPMAP.fullmatch(value or "")
            if match is None:
                raise _malformed(f"bad a=rtpmap {value!r:.60}")
            pt = int(match.group(1))
            if pt in pts and pt not in rtpmaps:
                rtpmaps[pt] = text
        elif name == "fmtp":
            match = _FMTP.fullmatch(value or "")
            if match is None:
                raise _malformed(f"bad a=fmtp {value!r:.60}")
            pt = int(match.group(1))
            if pt in pts and pt not in fmtps:
                fmtps[pt] = text
        elif name == "rtcp":
            if _RTCP.fullmatch(value or "") is None:
                raise _malformed(f"bad a=rtcp {value!r:.60}")
            kept.append(text)
        elif name == "ptime":
            if _PTIME.fullmatch(value or "") is None:
                raise _malformed(f"bad a=ptime {value!r:.60}")
            ptime = int(float(value or "0"))
    for pt in pts:
        if pt not in rtpmaps and pt in STATIC_AUDIO_PAYLOAD_TYPES:
            name, rate, channels = STATIC_AUDIO_PAYLOAD_TYPES[pt]
            rtpmaps[pt] = f"a=rtpmap:{pt} {name}/{rate}/{channels}"
    head = f"m={line.kind} {line.port} {line.proto} {' '.join(map(str, pts))}"
    ordered = [rtpmaps[pt] for pt in pts if pt in rtpmaps]
    ordered += [fmtps[pt] for pt in pts if pt in fmtps and pt in rtpmaps]
    return [head, *kept, *ordered], ptime


def parse_sdp(text: str) -> ParsedSdp:
    """Parse a remote SDP body; any problem raises :class:`MediaError` (status hint 400)."""
    if len(text) > MAX_SDP_LENGTH:
        raise _malformed(f"body longer than {MAX_SDP_LENGTH} characters")
    lines = [line.rstrip() for line in text.splitlines()]
    lines = [line for line in lines if line]  # tolerate blank lines (trailing ones are common)
    if len(lines) > MAX_SDP_LINES:
        raise _malformed(f"more than {MAX_SDP_LINES} lines")
    if not lines or lines[0] != "v=0":
        raise _malformed("does not start with v=0")  # RFC 4566 §5.1
    for line in lines:
        if _LINE.match(line) is None:
            raise _malformed(f"not a <type>=<value> line: {line[:40]!r}")

    session_lines: list[str] = []
    sections: list[_Section] = []
    for line in lines:
        if line.startswith("m="):
            if len(sections) >= MAX_MEDIA_SECTIONS:
                raise _malformed(f"more than {MAX_MEDIA_SECTIONS} m= lines")
            sections.append(_Section(line=_parse_media_line(line[2:]), lines=[]))
        elif sections:
            sections[-1].lines.append(line)
        else:
            session_lines.append(line)

    origins = [line for line in session_lines if line.startswith("o=")]
    if len(origins) != 1 or len(origins[0][2:].split()) != 6:
        raise _malformed("needs exactly one o= line with six fields")  # RFC 4566 §5.2
    session_host: str | None = None
    session_direction = Direction.SENDRECV  # RFC 3264 §5.1: the default
    filtered: list[str] = []
    for line in session_lines:
        if line[0] in "vost":
            filtered.append(line)
        elif line.startswith("c="):
            session_host = _connection_address(line[2:])
            filtered.append(line)
        elif line.startswith("a="):
            name, _ = _attribute(line)
            if name in _DIRECTIONS:
                session_direction = Direction(name)

    audio_at: list[int] = []
    ptimes: list[int | None] = []
    for index, section in enumerate(sections):
        mline = section.line
        if mline.kind == AUDIO and mline.proto == RTP_AVP and mline.port != 0:
            section_lines, ptime = _audio_lines(mline, section.lines)
            filtered.extend(section_lines)
            audio_at.append(index)
            ptimes.append(ptime)

    try:
        session = SessionDescription.parse("\r\n".join(filtered) + "\r\n")
    except Exception as exc:  # aiortc asserts and raises freely on input it dislikes
        raise _malformed(f"{type(exc).__name__}: {exc}"[:120]) from exc
    if len(session.media) != len(audio_at):
        raise _malformed("media sections could not be read")

    audio: dict[int, AudioSection] = {}
    for index, description, ptime in zip(audio_at, session.media, ptimes, strict=True):
        host = description.host.split("/", 1)[0] if description.host else session_host
        direction = Direction(description.direction) if description.direction else session_direction
        if host == "0.0.0.0":
            # RFC 3264 §8.4: c=0.0.0.0 is the old way of putting a stream on hold.
            direction = Direction.from_flags(send=direction.sends, recv=False)
        rtcp_port = description.rtcp_port if description.rtcp_port else description.port + 1
        audio[index] = AudioSection(
            index=index,
            description=description,
            address=host,
            port=description.port,
            rtcp_port=rtcp_port,
            direction=direction,
            ptime=ptime,
        )
    return ParsedSdp(
        origin=origins[0][2:],
        session=session,
        media=tuple(section.line for section in sections),
        audio=audio,
    )


# -- codecs ---------------------------------------------------------------------------------


def make_codec(
    name: str, payload_type: int, *, clock_rate: int = 8000, events: str | None = None
) -> RTCRtpCodecParameters:
    """An audio codec as aiortc describes it (``events`` becomes the RFC 4733 fmtp value)."""
    return RTCRtpCodecParameters(
        mimeType=f"{AUDIO}/{name}",
        clockRate=clock_rate,
        channels=1,
        payloadType=payload_type,
        parameters={events: None} if events else {},
    )


def is_audio_codec(codec: RTCRtpCodecParameters, names: Iterable[str]) -> bool:
    """True for one of ``names`` (PCMU, PCMA) at 8000 Hz, mono (RFC 3551 §4.5.14)."""
    return (
        codec.name.upper() in {name.upper() for name in names}
        and codec.clockRate == 8000
        and (codec.channels or 1) == 1
    )


def is_telephone_event(codec: RTCRtpCodecParameters) -> bool:
    """True for RFC 4733 telephone-event at 8000 Hz, the rate of our audio codecs."""
    return codec.name.lower() == TELEPHONE_EVENT and codec.clockRate == 8000


def codec_events(codec: RTCRtpCodecParameters) -> frozenset[int]:
    """The events a telephone-event codec's fmtp lists ("0-15,66"), RFC 4733 §2.4.1."""
    text = parameters_to_sdp(codec.parameters)
    if not text:
        return DEFAULT_EVENTS
    listed = bytearray(256)  # RFC 4733 event codes are 8 bits
    for item in text.split(","):
        low, sep, high = item.strip().partition("-")
        if not low.isdigit() or (sep and not high.isdigit()):
            continue  # an item we cannot read lists no event we could use
        first, last = int(low), int(high) if sep else int(low)
        if first <= last <= 255:
            listed[first : last + 1] = b"\x01" * (last + 1 - first)
    return frozenset(event for event, flag in enumerate(listed) if flag)


def events_fmtp(events: Iterable[int]) -> str:
    """Write events as RFC 4733 fmtp ranges: {0..16} -> "0-16"."""
    ranges: list[str] = []
    run: list[int] = []
    for event in sorted(set(events)):
        if run and event == run[-1] + 1:
            run.append(event)
            continue
        if run:
            ranges.append(_event_range(run))
        run = [event]
    if run:
        ranges.append(_event_range(run))
    return ",".join(ranges)


def _event_range(run: Sequence[int]) -> str:
    return str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}"


# -- building -------------------------------------------------------------------------------


def audio_description(
    *, port: int, codecs: Sequence[RTCRtpCodecParameters], direction: Direction
) -> MediaDescription:
    """An active RTP/AVP audio section (rtpmap for every payload type, RFC 4566 §6)."""
    description = MediaDescription(
        kind=AUDIO, port=port, profile=RTP_AVP, fmt=[codec.payloadType for codec in codecs]
    )
    description.direction = direction.value
    description.rtp.codecs = list(codecs)
    description.ice = RTCIceParameters()  # aiortc's writer reads it; it stays empty
    return description


def rejected_description(line: MediaLine) -> MediaDescription:
    """A stream refused or removed: same media, transport and formats, port 0 (RFC 3264 §6)."""
    description = MediaDescription(kind=line.kind, port=0, profile=line.proto, fmt=list(line.fmts))
    description.ice = RTCIceParameters()
    return description


@functools.lru_cache(maxsize=256)
def connection(address: str) -> str:
    """``IN IP4 192.0.2.1`` / ``IN IP6 2001:db8::1`` (RFC 4566 §5.7)."""
    return f"IN IP{ipaddress.ip_address(address).version} {address}"


def build_sdp(
    *,
    session_id: int,
    version: int,
    address: str,
    media: Sequence[MediaDescription],
) -> str:
    """The whole body: o=, s=-, c= with ``address`` at session level, t=0 0, then ``media``."""
    return sdp_session(session_id=session_id, version=version, address=address) + sdp_media(media)


def sdp_session(*, session_id: int, version: int, address: str) -> str:
    """The session-level lines of :func:`build_sdp` (the only ones holding the version)."""
    session = SessionDescription()
    # RFC 4566 §5.2: "-" as user name; RFC 3264 §5: s= is a single dash for unicast.
    session.origin = f"- {session_id} {version} {connection(address)}"
    session.name = "-"
    session.host = address
    return str(session)


def sdp_media(media: Sequence[MediaDescription]) -> str:
    """The media sections of :func:`build_sdp`, each audio stream with its a=ptime."""
    text = ""
    for description in media:
        text += str(description)
        if description.kind == AUDIO and description.port != 0:
            text += f"a=ptime:{PTIME_MS}\r\n"
    return text

"""Plain RTP/AVP audio session description handler: RFC 3264 offer/answer with G.711.

The twin of a SIP.js ``SessionDescriptionHandler`` for phones rather than browsers: it offers
and answers ``m=audio <port> RTP/AVP`` with PCMU, PCMA and telephone-event, holds and resumes
with direction attributes, and owns an RTP/RTCP port pair from the :class:`PortPool` from the
first negotiation until :meth:`close`. No audio flows through it yet.

Whether a body passed to :meth:`set_description` is an offer or an answer follows from the
state, as in SIP.js: it is the answer while one of our offers is pending, an offer otherwise.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.sdp import MediaDescription

from app.media.body import SDP_CONTENT_TYPE, Body, is_sdp
from app.media.errors import MediaError
from app.media.ports import PortPool, RtpPorts
from app.media.sdp import (
    AUDIO,
    AUDIO_CODECS,
    DYNAMIC_PAYLOAD_TYPES,
    RTP_AVP,
    SUPPORTED_EVENTS,
    TELEPHONE_EVENT,
    AudioSection,
    Direction,
    MediaLine,
    ParsedSdp,
    audio_description,
    codec_events,
    events_fmtp,
    is_audio_codec,
    is_telephone_event,
    make_codec,
    parse_sdp,
    rejected_description,
    sdp_media,
    sdp_session,
)
from app.sip.ids import random_below

DEFAULT_CODECS: Final = ("PCMU", "PCMA")
DEFAULT_TELEPHONE_EVENT_PAYLOAD_TYPE: Final = 101


class SdhState(enum.StrEnum):
    """Offer/answer state (the names of WebRTC's signaling states, as SIP.js uses them)."""

    STABLE = "stable"  # no offer outstanding (before the first one, or after an answer)
    HAVE_LOCAL_OFFER = "have-local-offer"  # we made an offer; the next body is its answer
    HAVE_REMOTE_OFFER = "have-remote-offer"  # we got an offer; get_description answers it
    CLOSED = "closed"


class _Move(enum.Enum):
    LOCAL_OFFER = "create an offer"
    LOCAL_ANSWER = "create an answer"
    REMOTE_OFFER = "take an offer"
    REMOTE_ANSWER = "take an answer"
    ROLLBACK = "roll back"
    CLOSE = "close"


_S = SdhState
_M = _Move
_TRANSITIONS: Final[Mapping[tuple[SdhState, _Move], SdhState]] = {
    (_S.STABLE, _M.LOCAL_OFFER): _S.HAVE_LOCAL_OFFER,
    (_S.STABLE, _M.REMOTE_OFFER): _S.HAVE_REMOTE_OFFER,
    (_S.STABLE, _M.ROLLBACK): _S.STABLE,
    (_S.STABLE, _M.CLOSE): _S.CLOSED,
    # A new offer replaces one that was never answered (e.g. the INVITE is sent again).
    (_S.HAVE_LOCAL_OFFER, _M.LOCAL_OFFER): _S.HAVE_LOCAL_OFFER,
    (_S.HAVE_LOCAL_OFFER, _M.REMOTE_ANSWER): _S.STABLE,
    (_S.HAVE_LOCAL_OFFER, _M.ROLLBACK): _S.STABLE,
    (_S.HAVE_LOCAL_OFFER, _M.CLOSE): _S.CLOSED,
    # A later offer replaces one not yet answered.
    (_S.HAVE_REMOTE_OFFER, _M.REMOTE_OFFER): _S.HAVE_REMOTE_OFFER,
    (_S.HAVE_REMOTE_OFFER, _M.LOCAL_ANSWER): _S.STABLE,
    (_S.HAVE_REMOTE_OFFER, _M.ROLLBACK): _S.STABLE,
    (_S.HAVE_REMOTE_OFFER, _M.CLOSE): _S.CLOSED,
    (_S.CLOSED, _M.CLOSE): _S.CLOSED,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class NegotiatedMedia:
    """The audio stream both sides agreed on in the last completed offer/answer."""

    local_port: int  # our RTP port (RTCP on local_port + 1)
    remote_address: str  # where to send RTP (0.0.0.0 when the remote holds the old way)
    remote_port: int
    remote_rtcp_port: int
    direction: Direction  # ours: sendrecv, sendonly (we hold), recvonly (held), inactive
    # Audio codecs in the remote's order of preference with the payload types it receives on.
    codecs: tuple[RTCRtpCodecParameters, ...]
    telephone_event: RTCRtpCodecParameters | None  # RFC 4733, with the remote's payload type
    remote_ptime: int | None


@dataclass(frozen=True, slots=True)
class _LocalOffer:
    media: tuple[MediaLine, ...]
    audio_index: int
    direction: Direction
    codecs: tuple[RTCRtpCodecParameters, ...]
    hold: bool


@dataclass(frozen=True, slots=True)
class _RemoteOffer:
    sdp: ParsedSdp
    audio: AudioSection | None  # the stream we take; None: every stream is refused
    codecs: tuple[RTCRtpCodecParameters, ...]  # what we accept of it, in the offerer's order


def _closed() -> MediaError:
    return MediaError("session description handler is closed", status_hint=500)


class RtpSessionDescriptionHandler:
    """Offer/answer for one session's audio over plain RTP/AVP (RFC 3264, RFC 3551).

    Implements the UA layer's ``SessionDescriptionHandler`` protocol structurally.
    """

    def __init__(
        self,
        *,
        public_address: str,
        host: str,
        port_pool: PortPool,
        codecs: Sequence[str] = DEFAULT_CODECS,
        telephone_event_payload_type: int = DEFAULT_TELEPHONE_EVENT_PAYLOAD_TYPE,
    ) -> None:
        _check_options(public_address, codecs, telephone_event_payload_type)
        self._public_address = public_address
        self._host = host
        self._pool = port_pool
        self._codec_names = tuple(name.upper() for name in codecs)
        self._telephone_event_pt = telephone_event_payload_type
        self._lock = asyncio.Lock()
        self._ports: RtpPorts | None = None
        self._state = SdhState.STABLE
        # RFC 4566 §5.2: a numeric session id, unique enough; the version starts at 1 and
        # goes up by one whenever the SDP we send differs from the previous one (RFC 3264 §8).
        self._session_id = random_below(2**31 - 1) + 1  # fits any 32-bit parser
        self._version = 1
        self._last_sent: str | None = None
        # The session's m= lines as last agreed (RFC 3264 §8: later offers keep them all).
        self._media: tuple[MediaLine, ...] = ()
        self._audio_index: int | None = None
        # Dynamic payload types seen in the audio stream, which must keep their codec for
        # the whole session (RFC 3264 §8.3.2): payload type -> (name, clock rate).
        self._dynamic_pts: dict[int, tuple[str, int]] = {}
        self._local_offer: _LocalOffer | None = None
        self._remote_offer: _RemoteOffer | None = None
        self._negotiated: NegotiatedMedia | None = None
        self._local_hold = False
        self._remote_hold = False

    # -- the SessionDescriptionHandler protocol ------------------------------------------------

    async def get_description(self, *, hold: bool = False) -> Body:
        """Our answer if a remote offer is pending, else a new offer; ``hold`` puts the far
        end on hold (sendonly, or inactive when it holds us too)."""
        await self._ensure_ports()
        if self._state is SdhState.HAVE_REMOTE_OFFER:
            return self._answer(hold)
        return self._offer(hold)

    async def set_description(self, body: Body) -> None:
        """Take the answer to our pending offer, or a new offer from the far end.

        Raises :class:`MediaError` when the body is not SDP (415), is malformed (400) or
        cannot be accepted (488: no common codec, no audio, audio refused by the answer).
        Failures leave the state as it was, with one exception: a first offer we cannot
        accept is kept, so that :meth:`get_description` can still build the answer refusing
        every stream (needed when the offer came in a 2xx and the ACK must answer it,
        RFC 3261 §13.2.2.4). A refused re-offer leaves the session as it was (RFC 3261 §14.2).
        """
        if self._is_closed():
            raise _closed()
        if not is_sdp(body.content_type):
            raise MediaError(f"unsupported body type {body.content_type!r}", status_hint=415)
        parsed = parse_sdp(body.content)
        await self._ensure_ports()
        if self._state is SdhState.HAVE_LOCAL_OFFER:
            self._take_answer(parsed)
        else:
            self._take_offer(parsed)

    def has_description(self, content_type: str) -> bool:
        return is_sdp(content_type)

    @property
    def state(self) -> SdhState:
        return self._state

    def close(self) -> None:
        """Free the port pair (returned to the pool once the sockets are closed). Idempotent."""
        self._state = self._next_state(_Move.CLOSE)
        self._local_offer = None
        self._remote_offer = None
        if self._ports is not None:
            self._ports.close()

    # -- extras --------------------------------------------------------------------------------

    def rollback_description(self) -> None:
        """Forget a pending offer, ours or theirs (SIP.js ``rollbackDescription``): after a
        491 or a failed re-INVITE the session goes on as last negotiated."""
        state = self._next_state(_Move.ROLLBACK)
        self._local_offer = None
        self._remote_offer = None
        self._state = state

    async def wait_closed(self) -> None:
        """Close (if not yet) and wait until the sockets are closed and the ports are free."""
        self.close()
        if self._ports is not None:
            await self._ports.wait_closed()

    @property
    def negotiated(self) -> NegotiatedMedia | None:
        """The audio stream in use, or None before the first exchange or once it is removed."""
        return self._negotiated

    @property
    def direction(self) -> Direction | None:
        return self._negotiated.direction if self._negotiated is not None else None

    @property
    def local_hold(self) -> bool:
        """The last SDP we sent put the far end on hold."""
        return self._local_hold

    @property
    def remote_hold(self) -> bool:
        """The far end's last SDP said it does not want to receive our audio (it holds us)."""
        return self._remote_hold

    @property
    def ports(self) -> RtpPorts | None:
        return self._ports

    # -- internals ----------------------------------------------------------------------------

    def _next_state(self, move: _Move) -> SdhState:
        state = _TRANSITIONS.get((self._state, move))
        if state is None:
            if self._state is SdhState.CLOSED:
                raise _closed()
            raise MediaError(f"cannot {move.value} in state {self._state}", status_hint=500)
        return state

    def _is_closed(self) -> bool:
        return self._state is SdhState.CLOSED

    async def _ensure_ports(self) -> None:
        if self._is_closed():
            raise _closed()
        async with self._lock:
            if self._ports is None:
                ports = await self._pool.acquire(self._host)
                if self._is_closed():  # closed while we were binding
                    ports.close()
                    raise _closed()
                self._ports = ports
        if self._is_closed():
            raise _closed()

    @property
    def _rtp_port(self) -> int:
        assert self._ports is not None  # bound by _ensure_ports before any SDP is built
        return self._ports.rtp_port

    def _emit(self, media: Sequence[MediaDescription]) -> Body:
        """Write our SDP; the o= version goes up only when the content changed (RFC 3264 §8).

        The media sections are rendered once: besides them, only the version changes
        (the session id and the address are the handler's own).
        """
        content = sdp_media(media)
        if self._last_sent is not None and content != self._last_sent:
            self._version += 1
        self._last_sent = content
        head = sdp_session(
            session_id=self._session_id, version=self._version, address=self._public_address
        )
        return Body(SDP_CONTENT_TYPE, head + content)

    def _accept(
        self, offered: Sequence[RTCRtpCodecParameters], names: Sequence[str], events: bool
    ) -> tuple[RTCRtpCodecParameters, ...]:
        """What we take of ``offered``, in its order, with its payload types (RFC 3264 §6.1):
        the audio codecs in ``names`` and, if ``events``, the first telephone-event."""
        accepted: list[RTCRtpCodecParameters] = []
        seen: set[int] = set()
        have_events = False
        for codec in offered:
            pt = codec.payloadType
            if pt is None or pt in seen:
                continue
            if is_audio_codec(codec, names):
                accepted.append(make_codec(codec.name.upper(), pt))
            elif events and not have_events and is_telephone_event(codec):
                common = codec_events(codec) & SUPPORTED_EVENTS
                if common:
                    accepted.append(make_codec(TELEPHONE_EVENT, pt, events=events_fmtp(common)))
                    have_events = True
            else:
                continue
            seen.add(pt)
        return tuple(accepted)

    def _note_payload_types(self, codecs: Sequence[RTCRtpCodecParameters]) -> None:
        for codec in codecs:
            if codec.payloadType is not None and codec.payloadType in DYNAMIC_PAYLOAD_TYPES:
                self._dynamic_pts[codec.payloadType] = (codec.name.lower(), codec.clockRate)

    def _events_payload_type(self, known: Mapping[int, tuple[str, int]]) -> int | None:
        """telephone-event keeps the payload type it already has in this stream; else the
        configured one if still free; else the first free dynamic one (RFC 3264 §8.3.2)."""
        for pt, key in known.items():
            if key == (TELEPHONE_EVENT, 8000):
                return pt
        if self._telephone_event_pt not in known:
            return self._telephone_event_pt
        return next((pt for pt in DYNAMIC_PAYLOAD_TYPES if pt not in known), None)

    def _negotiation(
        self,
        section: AudioSection,
        codecs: Sequence[RTCRtpCodecParameters],
        direction: Direction,
    ) -> NegotiatedMedia:
        assert section.address is not None
        return NegotiatedMedia(
            local_port=self._rtp_port,
            remote_address=section.address,
            remote_port=section.port,
            remote_rtcp_port=section.rtcp_port,
            direction=direction,
            codecs=tuple(codec for codec in codecs if not is_telephone_event(codec)),
            telephone_event=next((c for c in codecs if is_telephone_event(c)), None),
            remote_ptime=section.ptime,
        )

    # offers we make

    def _offer(self, hold: bool) -> Body:
        state = self._next_state(_Move.LOCAL_OFFER)
        if not hold:
            direction = Direction.SENDRECV  # resume (RFC 6337 §5.3)
        elif self._remote_hold:
            direction = Direction.INACTIVE  # both hold: nobody sends (RFC 3264 §8.4)
        else:
            direction = Direction.SENDONLY  # hold: we may still send music (RFC 3264 §8.4)
        media = list(self._media)
        index = self._audio_index
        known: Mapping[int, tuple[str, int]] = self._dynamic_pts
        if index is None:
            # A new audio stream takes the place of a refused one, else goes last (§8.1).
            index = next((i for i, line in enumerate(media) if line.port == 0), len(media))
            known = {}
        codecs = [make_codec(name, AUDIO_CODECS[name]) for name in self._codec_names]
        events_pt = self._events_payload_type(known)
        if events_pt is not None:
            events = events_fmtp(SUPPORTED_EVENTS)
            codecs.append(make_codec(TELEPHONE_EVENT, events_pt, events=events))
        audio = MediaLine(
            kind=AUDIO,
            port=self._rtp_port,
            proto=RTP_AVP,
            fmts=tuple(str(codec.payloadType) for codec in codecs),
        )
        if index == len(media):
            media.append(audio)
        else:
            media[index] = audio
        body = self._emit(
            [
                audio_description(port=self._rtp_port, codecs=codecs, direction=direction)
                if i == index
                else rejected_description(line)
                for i, line in enumerate(media)
            ]
        )
        self._state = state
        self._remote_offer = None
        self._local_offer = _LocalOffer(
            media=tuple(media),
            audio_index=index,
            direction=direction,
            codecs=tuple(codecs),
            hold=hold,
        )
        return body

    def _take_answer(self, answer: ParsedSdp) -> None:
        offer = self._local_offer
        assert offer is not None
        state = self._next_state(_Move.REMOTE_ANSWER)
        if len(answer.media) != len(offer.media):
            # RFC 3264 §6: one m= line in the answer for each in the offer.
            raise MediaError(
                f"answer has {len(answer.media)} m= lines, the offer had {len(offer.media)}"
            )
        line = answer.media[offer.audio_index]
        if line.port == 0:
            raise MediaError("audio stream refused by the answer")
        section = answer.audio.get(offer.audio_index)
        if section is None:
            raise MediaError(f"answer changed the audio stream to {line.kind} {line.proto}")
        if section.address is None:
            raise MediaError("malformed SDP: no c= line for the audio stream", status_hint=400)
        offered_events = any(is_telephone_event(codec) for codec in offer.codecs)
        codecs = self._accept(section.codecs, self._codec_names, offered_events)
        if not any(not is_telephone_event(codec) for codec in codecs):
            raise MediaError("no common codec")
        # RFC 3264 §6.1: we send only if we offered to and the answerer receives, and so on.
        direction = Direction.from_flags(
            send=offer.direction.sends and section.direction.receives,
            recv=offer.direction.receives and section.direction.sends,
        )
        self._state = state
        self._local_offer = None
        if self._audio_index != offer.audio_index:
            self._dynamic_pts.clear()
        self._media = offer.media
        self._audio_index = offer.audio_index
        self._note_payload_types(offer.codecs)
        self._note_payload_types(section.codecs)
        if offer.direction.sends:
            # Only when we offered to send was the answerer free to refuse to receive,
            # i.e. to hold us; otherwise its direction was forced by ours (RFC 3264 §6.1).
            self._remote_hold = not section.direction.receives
        self._local_hold = offer.hold
        self._negotiated = self._negotiation(section, codecs, direction)

    # offers we answer

    def _take_offer(self, offer: ParsedSdp) -> None:
        state = self._next_state(_Move.REMOTE_OFFER)
        active = [i for i, line in enumerate(offer.media) if line.kind == AUDIO and line.port != 0]
        chosen: AudioSection | None = None
        accepted: tuple[RTCRtpCodecParameters, ...] = ()
        for index in active:
            section = offer.audio.get(index)
            if section is None:
                continue  # not RTP/AVP
            codecs = self._accept(section.codecs, self._codec_names, True)
            if any(not is_telephone_event(codec) for codec in codecs):
                if section.address is None:
                    raise MediaError(
                        "malformed SDP: no c= line for the audio stream", status_hint=400
                    )
                chosen, accepted = section, codecs
                break
        pending = _RemoteOffer(sdp=offer, audio=chosen, codecs=accepted)
        if chosen is None and (active or not self._media):
            if any(index in offer.audio for index in active):
                cause = "no common codec"
            elif active:
                cause = f"unsupported audio transport {offer.media[active[0]].proto}"
            else:
                cause = "no audio stream"
            if not self._media:
                # A first offer: keep it so the answer refusing every stream can be built.
                self._state = state
                self._remote_offer = pending
            raise MediaError(cause)
        # Either we take an audio stream, or a re-offer removed it (answered with port 0).
        self._state = state
        self._remote_offer = pending

    def _answer(self, hold: bool) -> Body:
        offer = self._remote_offer
        assert offer is not None
        state = self._next_state(_Move.LOCAL_ANSWER)
        section = offer.audio
        wanted = Direction.SENDONLY if hold else Direction.SENDRECV
        direction = wanted.answer_to(section.direction) if section else Direction.INACTIVE
        media: list[MediaLine] = []
        descriptions: list[MediaDescription] = []
        for index, line in enumerate(offer.sdp.media):
            if section is not None and index == section.index:
                descriptions.append(
                    audio_description(port=self._rtp_port, codecs=offer.codecs, direction=direction)
                )
                fmts = tuple(str(codec.payloadType) for codec in offer.codecs)
                media.append(MediaLine(kind=AUDIO, port=self._rtp_port, proto=RTP_AVP, fmts=fmts))
            else:
                # RFC 3264 §6: a refused (or removed, §8.2) stream is answered with port 0.
                descriptions.append(rejected_description(line))
                media.append(line.rejected())
        body = self._emit(descriptions)
        self._state = state
        self._remote_offer = None
        self._media = tuple(media)
        self._local_hold = hold
        if section is None:
            self._audio_index = None
            self._dynamic_pts.clear()
            self._negotiated = None
            return body
        if self._audio_index != section.index:
            self._dynamic_pts.clear()
        self._audio_index = section.index
        self._note_payload_types(section.codecs)
        self._remote_hold = not section.direction.receives
        self._negotiated = self._negotiation(section, offer.codecs, direction)
        return body


@functools.lru_cache(maxsize=64)
def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_options(public_address: str, codecs: Sequence[str], events_pt: int) -> None:
    if not _is_ip(public_address):
        raise ValueError(f"public RTP address must be an IP address, got {public_address!r}")
    unknown = [name for name in codecs if name.upper() not in AUDIO_CODECS]
    if not codecs or unknown:
        raise ValueError(f"codecs must be a non-empty subset of {sorted(AUDIO_CODECS)}")
    if events_pt not in DYNAMIC_PAYLOAD_TYPES:
        raise ValueError(f"telephone-event payload type must be 96-127, got {events_pt}")


class RtpSdhFactory:
    """Makes one :class:`RtpSessionDescriptionHandler` per session (SIP.js
    ``SessionDescriptionHandlerFactory``). ``public_address`` goes in c=/o= lines, ``host``
    is where the RTP sockets bind (e.g. 0.0.0.0)."""

    def __init__(
        self,
        public_address: str,
        host: str,
        port_pool: PortPool,
        *,
        codecs: Sequence[str] = DEFAULT_CODECS,
        telephone_event_payload_type: int = DEFAULT_TELEPHONE_EVENT_PAYLOAD_TYPE,
    ) -> None:
        _check_options(public_address, codecs, telephone_event_payload_type)
        self.public_address = public_address
        self.host = host
        self.port_pool = port_pool
        self.codecs = tuple(codecs)
        self.telephone_event_payload_type = telephone_event_payload_type

    def __call__(self) -> RtpSessionDescriptionHandler:
        return RtpSessionDescriptionHandler(
            public_address=self.public_address,
            host=self.host,
            port_pool=self.port_pool,
            codecs=self.codecs,
            telephone_event_payload_type=self.telephone_event_payload_type,
        )

"""Session description handlers: plain RTP/AVP audio (RFC 3264 offer/answer) and its ports."""

from app.media.body import SDP_CONTENT_TYPE, Body, is_sdp
from app.media.errors import MediaError
from app.media.ports import PortPool, RtpPorts
from app.media.rtp_sdh import (
    NegotiatedMedia,
    RtpSdhFactory,
    RtpSessionDescriptionHandler,
    SdhState,
)
from app.media.sdp import Direction

__all__ = [
    "SDP_CONTENT_TYPE",
    "Body",
    "Direction",
    "MediaError",
    "NegotiatedMedia",
    "PortPool",
    "RtpPorts",
    "RtpSdhFactory",
    "RtpSessionDescriptionHandler",
    "SdhState",
    "is_sdp",
]

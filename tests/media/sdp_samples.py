"""SDP bodies as real peers send them, and a small builder for variations."""

from __future__ import annotations

from collections.abc import Sequence


def sdp(
    *media: str,
    connection: str | None = "203.0.113.5",
    session: Sequence[str] = (),
    version: int = 1000,
    origin_address: str = "203.0.113.5",
) -> str:
    """An SDP body: the usual session lines, then ``media`` lines as given (CRLF ends)."""
    lines = ["v=0", f"o=- 1000 {version} IN IP4 {origin_address}", "s=-"]
    if connection is not None:
        lines.append(f"c=IN IP4 {connection}")
    lines.append("t=0 0")
    lines.extend(session)
    lines.extend(media)
    return "\r\n".join(lines) + "\r\n"


# SIPp's built-in uac/uas scenarios (LF endings, as in the scenario files).
SIPP_OFFER = """v=0
o=user1 53655765 2353687637 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio 6000 RTP/AVP 0
a=rtpmap:0 PCMU/8000
"""

# Asterisk (chan_pjsip) with a generous codec list, video enabled, RFC 4733 events.
ASTERISK_OFFER = (
    "v=0\r\n"
    "o=- 1735822817 1735822817 IN IP4 10.0.0.5\r\n"
    "s=Asterisk\r\n"
    "c=IN IP4 10.0.0.5\r\n"
    "t=0 0\r\n"
    "m=audio 17000 RTP/AVP 9 107 8 0 3 18 101\r\n"
    "a=rtpmap:9 G722/8000\r\n"
    "a=rtpmap:107 opus/48000/2\r\n"
    "a=fmtp:107 useinbandfec=1\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:3 GSM/8000\r\n"
    "a=rtpmap:18 G729/8000\r\n"
    "a=fmtp:18 annexb=no\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-16\r\n"
    "a=ptime:20\r\n"
    "a=maxptime:150\r\n"
    "a=sendrecv\r\n"
    "m=video 17002 RTP/AVP 99 34\r\n"
    "a=rtpmap:99 H264/90000\r\n"
    "a=fmtp:99 profile-level-id=42801F\r\n"
    "a=rtpmap:34 H263/90000\r\n"
    "a=sendrecv\r\n"
)

# A desk phone (Yealink/Polycom style): static types without rtpmap for some, G.722 first,
# telephone-event on a different dynamic type, a=rtcp, session-level a=sendrecv.
DESK_PHONE_OFFER = (
    "v=0\r\n"
    "o=- 20019 20019 IN IP4 192.168.1.50\r\n"
    "s=SDP data\r\n"
    "c=IN IP4 192.168.1.50\r\n"
    "t=0 0\r\n"
    "a=sendrecv\r\n"
    "m=audio 11796 RTP/AVP 9 0 8 18 100\r\n"
    "a=rtpmap:9 G722/8000\r\n"
    "a=fmtp:18 annexb=no\r\n"
    "a=rtpmap:100 telephone-event/8000\r\n"
    "a=fmtp:100 0-15\r\n"
    "a=rtcp:11797\r\n"
    "a=ptime:20\r\n"
)

# A browser (Chrome-like) offer: DTLS-SRTP over ICE with BUNDLE; no plain RTP/AVP at all.
WEBRTC_OFFER = (
    "v=0\r\n"
    "o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n"
    "s=-\r\n"
    "t=0 0\r\n"
    "a=group:BUNDLE 0 1\r\n"
    "a=extmap-allow-mixed\r\n"
    "a=msid-semantic: WMS 5a5d7c\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\n"
    "c=IN IP4 0.0.0.0\r\n"
    "a=rtcp:9 IN IP4 0.0.0.0\r\n"
    "a=candidate:1467250027 1 udp 2122260223 192.168.0.196 46243 typ host generation 0\r\n"
    "a=ice-ufrag:Oyef\r\n"
    "a=ice-pwd:4ZqqOXHv5JH0Hw5mIfQ9U4ET\r\n"
    "a=ice-options:trickle\r\n"
    "a=fingerprint:sha-256 49:66:12:17:0D:1C:91:AE:57:4C:C6:36:DD:D5:97:D2:"
    "7D:62:C9:9A:7F:B9:A3:F4:70:03:E7:43:91:73:23:5E\r\n"
    "a=setup:actpass\r\n"
    "a=mid:0\r\n"
    "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n"
    "a=sendrecv\r\n"
    "a=msid:5a5d7c 8e1f\r\n"
    "a=rtcp-mux\r\n"
    "a=rtpmap:111 opus/48000/2\r\n"
    "a=rtcp-fb:111 transport-cc\r\n"
    "a=fmtp:111 minptime=10;useinbandfec=1\r\n"
    "a=rtpmap:63 red/48000/2\r\n"
    "a=fmtp:63 111/111\r\n"
    "a=rtpmap:9 G722/8000\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:13 CN/8000\r\n"
    "a=rtpmap:110 telephone-event/48000\r\n"
    "a=rtpmap:126 telephone-event/8000\r\n"
    "a=ssrc:3735928559 cname:4TOk42mSjXCkVIa6\r\n"
    "a=ssrc:3735928559 msid:5a5d7c 8e1f\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\n"
    "c=IN IP4 0.0.0.0\r\n"
    "a=rtcp:9 IN IP4 0.0.0.0\r\n"
    "a=ice-ufrag:Oyef\r\n"
    "a=ice-pwd:4ZqqOXHv5JH0Hw5mIfQ9U4ET\r\n"
    "a=setup:actpass\r\n"
    "a=mid:1\r\n"
    "a=sendrecv\r\n"
    "a=rtcp-mux\r\n"
    "a=rtpmap:96 VP8/90000\r\n"
    "a=rtpmap:97 rtx/90000\r\n"
    "a=fmtp:97 apt=96\r\n"
)

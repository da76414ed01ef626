"""Bytes to messages: :func:`parse_message` for one datagram or framed message, and
:class:`StreamFramer` to cut a TCP byte stream into messages (RFC 3261 §7, §18.3).

Serialising is ``msg.to_bytes()``.

The start line is parsed and the header fields are split eagerly; structured values
(Via, From/To, CSeq, Contact, URIs) are parsed on first use by the message's views.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.sip.errors import SipParseError
from app.sip.headers import COMPACT_FORMS, normalize_name
from app.sip.message import Headers, Message, Request, Response, _Field

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_HEADERS",
    "MAX_HEADER_BYTES",
    "MAX_MESSAGE_BYTES",
    "KeepAlivePing",
    "KeepAlivePong",
    "StreamFramer",
    "StreamItem",
    "is_keepalive",
    "parse_message",
]

# Size limits. They bound the memory and the work a peer can cause with one message or
# one connection; a real SIP message (INVITE with SDP, a few Record-Routes) is 1-4 KiB.
#
# Header block (start line + fields): RFC 4475's long request is ~3.5 KiB; 32 KiB leaves
# room for long Route/Record-Route sets and big auth headers.
MAX_HEADER_BYTES = 32 * 1024
# Header fields (lines): typical messages have 10-30; 256 covers long proxy chains
# while keeping per-message work bounded.
MAX_HEADERS = 256
# Body: SDP is a few KiB; MESSAGE/INFO/multipart bodies can be larger. A datagram
# cannot exceed 64 KiB anyway (RFC 3261 §18.1.1 wants big messages on TCP).
MAX_BODY_BYTES = 224 * 1024
# Whole message: what a stream connection may buffer for one message.
MAX_MESSAGE_BYTES = MAX_HEADER_BYTES + MAX_BODY_BYTES

# RFC 3261 §25.1 token, Method, SIP-Version (ABNF literals are case-insensitive).
_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_VERSION_RE = re.compile(r"SIP/[0-9]+\.[0-9]+", re.IGNORECASE)
_CTL_OR_SPACE_RE = re.compile(r"[\x00-\x20\x7f]")
_MAX_CL_DIGITS = 10
_WS = " \t"

# header name as written (up to the colon) -> (name without trailing WS, normalised key).
# Pre-seeded with common spellings; grows up to a bound with names seen on the wire.
_NAME_CACHE: dict[str, tuple[str, str]] = {}
_NAME_CACHE_MAX = 2048
for _n in (
    "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Max-Forwards", "Content-Type",
    "Content-Length", "Allow", "Supported", "Require", "User-Agent", "Server", "Route",
    "Record-Route", "Expires", "Accept", "Authorization", "WWW-Authenticate",
    "Proxy-Authorization", "Proxy-Authenticate", "Session-Expires", "Min-SE", "RSeq",
    "RAck", "Event", "Subscription-State", "Refer-To", "Referred-By", "Reason",
    "Allow-Events", "Date", "Subject", "Organization", "Call-Info", "Alert-Info",
    "P-Asserted-Identity", "Privacy", "Timestamp", "Warning", "Unsupported", "Call-Id",
    "Cseq", "Content-length", "Content-type", "Max-forwards", "User-agent",
    *COMPACT_FORMS,
):
    _NAME_CACHE[_n] = (_n, normalize_name(_n))


def _name_key(raw: str) -> tuple[str, str]:
    hit = _NAME_CACHE.get(raw)
    if hit is not None:
        return hit
    name = raw.rstrip(_WS)  # HCOLON = *( SP / HTAB ) ":" SWS
    if _TOKEN_RE.fullmatch(name) is None:
        raise SipParseError(f"bad header name {raw[:40]!r}")
    hit = (name, normalize_name(name))
    if len(_NAME_CACHE) < _NAME_CACHE_MAX:
        _NAME_CACHE[raw] = hit
    return hit


def is_keepalive(data: bytes) -> bool:
    """True for a keep-alive datagram or chunk: nothing but CR and LF (RFC 5626 §3.5.1)."""
    return bool(data) and not data.strip(b"\r\n")


def parse_message(data: bytes, *, stream: bool = False) -> Message:
    """Parse one SIP message.

    ``data`` is one UDP datagram, or one message cut out by :class:`StreamFramer` (then
    pass ``stream=True``). RFC 3261 §18.3: in a datagram, octets beyond Content-Length
    are dropped and a missing Content-Length means "the rest of the datagram"; a body
    shorter than Content-Length is an error. On a stream Content-Length is mandatory.
    Raises only :class:`SipParseError`.
    """
    if len(data) > MAX_MESSAGE_BYTES:
        raise SipParseError("message too large", 513)
    start = 0
    # RFC 3261 §7.5: CRLFs before the start line are ignored.
    while data.startswith(b"\r\n", start):
        start += 2
    end = data.find(b"\r\n\r\n", start)
    if end < 0:
        raise SipParseError("no empty line after the header fields")
    if end - start > MAX_HEADER_BYTES:
        raise SipParseError("header block too large", 513)
    head = data[start:end].decode("utf-8", "surrogateescape")
    lines = head.split("\r\n")
    nlines = len(lines)
    if nlines > MAX_HEADERS + 1:
        raise SipParseError("too many header fields", 513)
    # A CR or LF that is not part of a CRLF is not allowed anywhere in the header block.
    if head.count("\n") != nlines - 1 or head.count("\r") != nlines - 1:
        raise SipParseError("bare CR or LF in the header block")

    fields: list[_Field] = []
    cl_value: str | None = None
    cl_index = -1
    for line in lines[1:]:
        c = line[:1]
        if c == " " or c == "\t":
            # RFC 3261 §7.3.1: a line starting with whitespace continues the field above;
            # the folding (CRLF + whitespace) is equivalent to a single SP.
            if not fields:
                raise SipParseError("continuation line before the first header field")
            raw_name, key, value, raw = fields[-1]
            more = line.strip(_WS)
            if more:
                value = f"{value} {more}" if value else more
            fields[-1] = (raw_name, key, value, f"{raw}\r\n{line}")
            if len(fields) - 1 == cl_index:
                cl_value = value
            continue
        colon = line.find(":")
        if colon <= 0:
            raise SipParseError(f"header line without a name and colon: {line[:40]!r}")
        name, key = _name_key(line[:colon])
        value = line[colon + 1 :].strip(_WS)
        if key == "content-length":
            if cl_value is not None and cl_value != value:
                # RFC 4475 §3.1.2.13-like conflicts: framing cannot be trusted.
                _check_cl_conflict(cl_value, value)
            cl_value = value
            cl_index = len(fields)
        fields.append((name, key, value, line))

    body = data[end + 4 :]
    if cl_value is None:
        if stream:
            raise SipParseError("missing Content-Length on a stream", close_connection=True)
    else:
        n = _parse_content_length(cl_value, stream)
        if n > len(body):
            # RFC 3261 §18.3: a datagram with less body than announced is rejected.
            raise SipParseError(
                "body shorter than Content-Length", close_connection=stream
            )
        if n < len(body):
            body = body[:n]  # RFC 3261 §18.3: extra octets in a datagram are dropped

    first = lines[0]
    headers = Headers._from_fields(fields)
    if first[:4].upper() == "SIP/":
        return _parse_response(first, headers, body)
    return _parse_request(first, headers, body)


def _check_cl_conflict(a: str, b: str) -> None:
    if _cl_int(a) != _cl_int(b):
        raise SipParseError("conflicting Content-Length values", close_connection=True)


def _cl_int(value: str) -> int | None:
    if value.isascii() and value.isdigit() and len(value) <= _MAX_CL_DIGITS:
        return int(value)
    return None


def _parse_content_length(value: str, stream: bool) -> int:
    n = _cl_int(value)
    if n is None:
        # RFC 4475 §3.1.2.8 (negative Content-Length): never use it as a length.
        raise SipParseError(f"bad Content-Length: {value[:20]!r}", close_connection=stream)
    return n


def _parse_request(first: str, headers: Headers, body: bytes) -> Request:
    # RFC 3261 §7.1: Method SP Request-URI SP SIP-Version, exactly one SP each.
    parts = first.split(" ")
    if len(parts) != 3:
        raise SipParseError(f"bad Request-Line: {first[:80]!r}")
    method, uri, version = parts
    if _TOKEN_RE.fullmatch(method) is None:
        raise SipParseError(f"bad method: {method[:40]!r}")
    if not uri or _CTL_OR_SPACE_RE.search(uri) is not None:
        raise SipParseError(f"bad Request-URI: {uri[:80]!r}")
    if _VERSION_RE.fullmatch(version) is None:
        raise SipParseError(f"bad SIP-Version: {version[:20]!r}")
    return Request(method=method, uri=uri, headers=headers, body=body, version=version)


def _parse_response(first: str, headers: Headers, body: bytes) -> Response:
    # RFC 3261 §7.2: SIP-Version SP Status-Code SP Reason-Phrase. An empty phrase is
    # legal (RFC 4475 §3.1.1.12); a missing SP before it is tolerated.
    parts = first.split(" ", 2)
    if len(parts) < 2:
        raise SipParseError(f"bad Status-Line: {first[:80]!r}")
    version, code = parts[0], parts[1]
    reason = parts[2] if len(parts) == 3 else ""
    if _VERSION_RE.fullmatch(version) is None:
        raise SipParseError(f"bad SIP-Version: {version[:20]!r}")
    if len(code) != 3 or not (code.isascii() and code.isdigit()) or code[0] not in "123456":
        raise SipParseError(f"bad status code: {code[:20]!r}")
    return Response(
        status=int(code), reason=reason, headers=headers, body=body, version=version
    )


# -- stream framing (TCP, TLS) ----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class KeepAlivePing:
    """A double CRLF between messages (RFC 5626 §3.5.1): answer with a single CRLF."""


@dataclass(frozen=True, slots=True, kw_only=True)
class KeepAlivePong:
    """A single CRLF between messages (RFC 5626 §3.5.1): the answer to our ping."""


StreamItem = bytes | KeepAlivePing | KeepAlivePong

_PING = KeepAlivePing()
_PONG = KeepAlivePong()


class StreamFramer:
    """Cut a stream into messages by Content-Length (RFC 3261 §18.3).

    ``feed(data)`` returns, in order, each complete message's bytes (give them to
    ``parse_message(..., stream=True)`` / the endpoint) and the keep-alives seen between
    messages. A lone CRLF at the very end of the buffered data is reported as a pong at
    once; if the next chunk starts with another CRLF, that is reported as a ping (it was
    a ping split in two), so a split ping yields ``[pong]`` then ``[ping]``.

    Any framing error (no/bad Content-Length, a size limit exceeded) is a
    :class:`SipParseError` with ``close_connection=True``, and the framer is dead from
    then on. If a ``feed`` call met the error after complete messages, it returns those
    messages first and only sets :attr:`failed` / :attr:`error`; otherwise, and on every
    later call, ``feed`` raises the error. Either way: handle what was returned, then
    close the connection when ``failed`` is true.
    """

    def __init__(
        self,
        *,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_headers: int = MAX_HEADERS,
    ) -> None:
        self._buf = bytearray()
        self._max_header_bytes = max_header_bytes
        self._max_message_bytes = max_message_bytes
        self._max_headers = max_headers
        self._need: int | None = None  # total size of the message being received
        self._scan_from = 0
        self._after_lone_crlf = False
        self._error: SipParseError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete message."""
        return len(self._buf)

    @property
    def failed(self) -> bool:
        """True once framing is lost: the connection must be closed."""
        return self._error is not None

    @property
    def error(self) -> SipParseError | None:
        return self._error

    def feed(self, data: bytes) -> list[StreamItem]:
        if self._error is not None:
            raise self._error
        self._buf += data
        out: list[StreamItem] = []
        try:
            while True:
                item = self._next()
                if item is None:
                    break
                out.append(item)
        except SipParseError as exc:
            self._error = exc
            self._buf.clear()
            if not out:
                raise
        return out

    def _fail(self, msg: str, status: int = 400) -> SipParseError:
        return SipParseError(msg, status, close_connection=True)

    def _next(self) -> StreamItem | None:
        buf = self._buf
        if self._need is None:
            if not buf:
                return None
            first = buf[0]
            if first == 0x0D or first == 0x0A:
                return self._keepalive()
            self._after_lone_crlf = False
            end = buf.find(b"\r\n\r\n", self._scan_from)
            if end < 0:
                if len(buf) > self._max_header_bytes:
                    raise self._fail("header block too large", 513)
                self._scan_from = max(0, len(buf) - 3)
                return None
            if end > self._max_header_bytes:
                raise self._fail("header block too large", 513)
            length = self._content_length(bytes(buf[:end]))
            total = end + 4 + length
            if total > self._max_message_bytes:
                raise self._fail("message too large", 513)
            self._need = total
            self._scan_from = 0
        need = self._need
        if len(buf) < need:
            return None
        frame = bytes(buf[:need])
        del buf[:need]
        self._need = None
        return frame

    def _keepalive(self) -> StreamItem | None:
        buf = self._buf
        if buf.startswith(b"\r\n\r\n"):
            del buf[:4]
            self._after_lone_crlf = False
            return _PING
        if buf.startswith(b"\r\n"):
            if len(buf) == 3 and buf[2] == 0x0D:
                return None  # "\r\n\r": wait to see whether it is a ping
            del buf[:2]
            if self._after_lone_crlf:
                self._after_lone_crlf = False
                return _PING  # second half of a ping that arrived split
            self._after_lone_crlf = not buf
            return _PONG
        if buf[0] == 0x0A:
            del buf[:1]  # stray LF between messages: ignore
            return self._next()
        # a lone CR
        if len(buf) == 1:
            return None
        raise self._fail("stray CR between messages")

    def _content_length(self, head: bytes) -> int:
        lines = head.split(b"\r\n")
        if len(lines) > self._max_headers + 1:
            raise self._fail("too many header fields", 513)
        value: bytes | None = None
        in_cl = False
        for line in lines[1:]:
            if line[:1] in (b" ", b"\t"):
                if in_cl and value is not None:
                    value = (value + b" " + line.strip(b" \t")).strip()
                continue
            name, colon, rest = line.partition(b":")
            lname = name.rstrip(b" \t").lower()
            in_cl = bool(colon) and (lname == b"content-length" or lname == b"l")
            if in_cl:
                v = rest.strip(b" \t")
                if value is not None and _cl_bytes(value) != _cl_bytes(v):
                    raise self._fail("conflicting Content-Length values")
                value = v
        if value is None:
            # RFC 3261 §18.3: on a stream Content-Length is mandatory.
            raise self._fail("missing Content-Length on a stream")
        n = _cl_bytes(value)
        if n is None:
            raise self._fail(f"bad Content-Length: {value[:20]!r}")
        return n


def _cl_bytes(value: bytes) -> int | None:
    if value.isdigit() and len(value) <= _MAX_CL_DIGITS:
        return int(value)
    return None

"""Header names and structured header values (RFC 3261 §7.3, §20, §25.1).

Values are parsed from the *unfolded* header text the message layer keeps (folding
already replaced by a single space). Every parse error is a :class:`SipParseError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from app.sip.errors import SipParseError
from app.sip.uri import SipUri, Uri, parse_hostport, parse_uri

__all__ = [
    "CANONICAL_NAMES",
    "COMPACT_FORMS",
    "CSeq",
    "NameAddr",
    "Via",
    "canonical_name",
    "is_token",
    "normalize_name",
    "parse_cseq",
    "parse_max_forwards",
    "parse_name_addr",
    "parse_params",
    "parse_via",
    "quote_string",
    "render_params",
    "split_header_list",
    "unquote_string",
]

# RFC 3261 §7.3.3 compact forms, plus r (RFC 3515 Refer-To), x (RFC 4028
# Session-Expires), b (RFC 3892 Referred-By), u (RFC 6665 Allow-Events),
# o (RFC 6665 Event), a/j/d (RFC 3841), y/n (RFC 4474).
COMPACT_FORMS: dict[str, str] = {
    "i": "Call-ID",
    "m": "Contact",
    "f": "From",
    "t": "To",
    "v": "Via",
    "l": "Content-Length",
    "c": "Content-Type",
    "k": "Supported",
    "s": "Subject",
    "e": "Content-Encoding",
    "o": "Event",
    "r": "Refer-To",
    "u": "Allow-Events",
    "x": "Session-Expires",
    "b": "Referred-By",
    "a": "Accept-Contact",
    "j": "Reject-Contact",
    "d": "Request-Disposition",
    "y": "Identity",
    "n": "Identity-Info",
}

# Conventional spelling of header names, for headers we render ourselves.
CANONICAL_NAMES: dict[str, str] = {
    name.lower(): name
    for name in (
        "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Alert-Info",
        "Allow", "Allow-Events", "Authentication-Info", "Authorization", "Call-ID",
        "Call-Info", "Contact", "Content-Disposition", "Content-Encoding",
        "Content-Language", "Content-Length", "Content-Type", "CSeq", "Date",
        "Error-Info", "Event", "Expires", "From", "Identity", "Identity-Info",
        "In-Reply-To", "Max-Forwards", "MIME-Version", "Min-Expires", "Min-SE",
        "Organization", "P-Asserted-Identity", "Path", "Priority", "Privacy",
        "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require", "RAck", "Reason",
        "Record-Route", "Refer-To", "Referred-By", "Reject-Contact", "Replaces",
        "Reply-To", "Request-Disposition", "Require", "Retry-After", "Route", "RSeq",
        "Server", "Session-Expires", "Subject", "Subscription-State", "Supported",
        "Timestamp", "To", "Unsupported", "User-Agent", "Via", "Warning",
        "WWW-Authenticate",
    )
}

_COMPACT_KEYS: dict[str, str] = {k: v.lower() for k, v in COMPACT_FORMS.items()}

# RFC 3261 §25.1 token
_TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
_TOKEN_RE = re.compile(rf"[{_TOKEN_CHARS}]+")
# display-name = *(token LWS) / quoted-string; non-ASCII tolerated in the token form.
_DISPLAY_WORD = rf"[{_TOKEN_CHARS}\x80-\U0010ffff]+"
_DISPLAY_TOKENS_RE = re.compile(rf"{_DISPLAY_WORD}(?:[ \t]+{_DISPLAY_WORD})*")
# gen-value = token / host / quoted-string (host adds [ ] and :)
_GEN_VALUE_RE = re.compile(rf"[{_TOKEN_CHARS}\[\]:]+")
# Via: sent-protocol = protocol-name SLASH protocol-version SLASH transport, SLASH
# allows SWS around "/"; then LWS sent-by, then *(SEMI via-params).
_VIA_RE = re.compile(
    rf"([{_TOKEN_CHARS}]+)[ \t]*/[ \t]*([{_TOKEN_CHARS}]+)[ \t]*/[ \t]*"
    rf"([{_TOKEN_CHARS}]+)[ \t]+([^;]*)(;.*)?",
    re.S,
)
_WS = " \t"
_NOT_IN_URI_RE = re.compile(r'[\x00-\x20\x7f<>"]')
_COLON_WS_RE = re.compile(r"[ \t]*:[ \t]*")
_CSEQ_MAX = 2**32 - 1  # RFC 3261 §8.1.1.5: a 32-bit unsigned integer
_MAX_FORWARDS_MAX = 255  # RFC 3261 §20.22: 0-255
_MAX_INT_DIGITS = 10


def is_token(s: str) -> bool:
    """True if ``s`` is a non-empty RFC 3261 token."""
    return _TOKEN_RE.fullmatch(s) is not None


def normalize_name(name: str) -> str:
    """Key used to compare header names: lower case, compact forms expanded."""
    lname = name.strip(_WS).lower()
    return _COMPACT_KEYS.get(lname, lname)


def canonical_name(name: str) -> str:
    """Conventional spelling of a header name (compact forms expanded)."""
    key = normalize_name(name)
    return CANONICAL_NAMES.get(key, name.strip(_WS))


def _scan_quoted(s: str, i: int) -> int:
    """``s[i]`` is an opening quote; return the index just past the closing quote."""
    n = len(s)
    j = i + 1
    while j < n:
        c = s[j]
        if c == "\\":
            j += 2
            continue
        if c == '"':
            return j + 1
        j += 1
    raise SipParseError(f"unterminated quoted string: {s[i : i + 60]!r}")


def unquote_string(s: str) -> str:
    """Strip the quotes of a quoted-string and resolve its quoted-pairs (§25.1)."""
    if len(s) < 2 or s[0] != '"' or s[-1] != '"':
        raise SipParseError(f"not a quoted string: {s[:60]!r}")
    inner = s[1:-1]
    if "\\" not in inner:
        return inner
    out: list[str] = []
    i = 0
    n = len(inner)
    while i < n:
        c = inner[i]
        if c == "\\" and i + 1 < n:
            out.append(inner[i + 1])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def quote_string(s: str) -> str:
    """Render ``s`` as a quoted-string, escaping backslash and double quote."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def split_header_list(value: str) -> list[str]:
    """Split a header value at top-level commas (not inside quotes or ``<>``).

    Elements are stripped of surrounding whitespace; empty elements are dropped.
    """
    if '"' not in value and "<" not in value:
        parts = value.split(",")
    else:
        parts = []
        start = 0
        i = 0
        n = len(value)
        in_angle = False
        while i < n:
            c = value[i]
            if c == '"' and not in_angle:
                i = _scan_quoted(value, i)
                continue
            if c == "<":
                in_angle = True
            elif c == ">":
                in_angle = False
            elif c == "," and not in_angle:
                parts.append(value[start:i])
                start = i + 1
            i += 1
        if in_angle:
            raise SipParseError(f"unbalanced '<' in header value: {value[:60]!r}")
        parts.append(value[start:])
    out = []
    for p in parts:
        p = p.strip(_WS)
        if p:
            out.append(p)
    return out


def _split_semis(s: str) -> list[str]:
    if '"' not in s:
        return s.split(";")
    parts = []
    start = 0
    i = 0
    n = len(s)
    while i < n:
        c = s[i]
        if c == '"':
            i = _scan_quoted(s, i)
            continue
        if c == ";":
            parts.append(s[start:i])
            start = i + 1
        i += 1
    parts.append(s[start:])
    return parts


def parse_params(s: str) -> dict[str, str | None]:
    """Parse ``;name=value;flag`` generic parameters (§25.1 generic-param).

    A leading ``;`` is optional. Names are lower-cased; values are kept as written
    (a quoted-string keeps its quotes, see :func:`unquote_string`); a flag maps to None.
    """
    s = s.strip(_WS)
    if not s:
        return {}
    if s[0] == ";":
        s = s[1:]
    params: dict[str, str | None] = {}
    for item in _split_semis(s):
        name, sep, value = item.partition("=")
        name = name.strip(_WS)
        if _TOKEN_RE.fullmatch(name) is None:
            raise SipParseError(f"bad parameter {item.strip(_WS)[:40]!r}")
        if not sep:
            params[name.lower()] = None
            continue
        value = value.strip(_WS)
        if value.startswith('"'):
            if _scan_quoted(value, 0) != len(value):
                raise SipParseError(f"bad quoted parameter value {value[:40]!r}")
        elif _GEN_VALUE_RE.fullmatch(value) is None:
            raise SipParseError(f"bad value of parameter {name!r}: {value[:40]!r}")
        params[name.lower()] = value
    return params


def render_params(params: dict[str, str | None]) -> str:
    """Render parameters as ``;name=value;flag``."""
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def _parse_digits(s: str, what: str, maximum: int) -> int:
    if not (s.isascii() and s.isdigit()) or len(s.lstrip("0")) > _MAX_INT_DIGITS:
        raise SipParseError(f"bad {what}: {s[:40]!r}")
    n = int(s)
    if n > maximum:
        raise SipParseError(f"{what} out of range: {s[:40]!r}")
    return n


# -- CSeq ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CSeq:
    """CSeq header (RFC 3261 §20.16)."""

    seq: int
    method: str

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


def parse_cseq(value: str) -> CSeq:
    """Parse ``1*DIGIT LWS Method`` (§20.16)."""
    parts = value.split()
    if len(parts) != 2:
        raise SipParseError(f"bad CSeq: {value[:60]!r}")
    seq = _parse_digits(parts[0], "CSeq number", _CSEQ_MAX)
    method = parts[1]
    if _TOKEN_RE.fullmatch(method) is None:
        raise SipParseError(f"bad CSeq method: {method[:40]!r}")
    return CSeq(seq, method)


def parse_max_forwards(value: str) -> int:
    """Parse Max-Forwards (§20.22): an integer 0-255."""
    return _parse_digits(value.strip(_WS), "Max-Forwards", _MAX_FORWARDS_MAX)


# -- name-addr / addr-spec -------------------------------------------------------------


@dataclass
class NameAddr:
    """From/To/Contact/Route-style value: ``[display] <uri>;params`` (§20.10, §25.1)."""

    display_name: str | None = None  # unquoted text; None when absent
    uri: Uri = field(default_factory=SipUri)
    params: dict[str, str | None] = field(default_factory=dict)  # header params

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    @tag.setter
    def tag(self, value: str | None) -> None:
        if value is None:
            self.params.pop("tag", None)
        else:
            self.params["tag"] = value

    def __str__(self) -> str:
        uri = f"<{self.uri}>"
        head = uri if self.display_name is None else f"{quote_string(self.display_name)} {uri}"
        return head + render_params(self.params)

    def copy(self) -> NameAddr:
        return NameAddr(
            display_name=self.display_name, uri=self.uri.copy(), params=dict(self.params)
        )


def parse_name_addr(value: str) -> NameAddr:
    """Parse one name-addr or addr-spec with its header parameters.

    RFC 3261 §20.10: without ``<>`` (addr-spec form) every ``;param`` belongs to the
    header, not the URI, and the URI may not contain ``,``, ``?`` or ``;``.
    """
    s = value.strip(_WS)
    if not s:
        raise SipParseError("empty address")
    display: str | None = None
    if s[0] == '"':
        end = _scan_quoted(s, 0)
        display = unquote_string(s[:end])
        rest = s[end:].lstrip(_WS)
        if not rest.startswith("<"):
            raise SipParseError(f"quoted display name without <uri>: {s[:60]!r}")
        lt = 0
        s = rest
    else:
        lt = s.find("<")
        if lt > 0:
            text = s[:lt].rstrip(_WS)
            if text:
                if _DISPLAY_TOKENS_RE.fullmatch(text) is None:
                    raise SipParseError(f"bad display name: {text[:60]!r}")
                display = text
    if lt >= 0:
        gt = s.find(">", lt)
        if gt < 0:
            raise SipParseError(f"unterminated <uri>: {s[:60]!r}")
        uri_s = s[lt + 1 : gt]
        tail = s[gt + 1 :].lstrip(_WS)
        if tail and tail[0] != ";":
            raise SipParseError(f"junk after <uri>: {tail[:40]!r}")
    else:
        uri_s, sep, tail = s.partition(";")
        uri_s = uri_s.rstrip(_WS)
        if "?" in uri_s or "," in uri_s:
            raise SipParseError(f"URI with '?' or ',' must be enclosed in <>: {s[:60]!r}")
        if sep:
            tail = ";" + tail
    if not uri_s or _NOT_IN_URI_RE.search(uri_s) is not None:
        raise SipParseError(f"bad URI in address: {uri_s[:60]!r}")
    uri = parse_uri(uri_s)
    params = parse_params(tail) if tail else {}
    return NameAddr(display_name=display, uri=uri, params=params)


# -- Via -------------------------------------------------------------------------------


@dataclass
class Via:
    """One Via value (RFC 3261 §20.42, §18.2.1; rport RFC 3581)."""

    transport: str = "UDP"  # upper-cased
    host: str = ""  # IPv6 keeps its brackets
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    protocol: str = "SIP/2.0"

    def _get(self, name: str) -> str | None:
        return self.params.get(name)

    def _set(self, name: str, value: str | None) -> None:
        if value is None:
            self.params.pop(name, None)
        else:
            self.params[name] = value

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @branch.setter
    def branch(self, value: str | None) -> None:
        self._set("branch", value)

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @received.setter
    def received(self, value: str | None) -> None:
        self._set("received", value)

    @property
    def has_rport(self) -> bool:
        """True when ``rport`` is present, as a flag or with a value (RFC 3581)."""
        return "rport" in self.params

    @property
    def rport(self) -> int | None:
        """The numeric ``rport`` value; None when absent or present only as a flag."""
        value = self.params.get("rport")
        if value is None or not (value.isascii() and value.isdigit()):
            return None
        return int(value)

    @rport.setter
    def rport(self, value: int | None) -> None:
        self._set("rport", None if value is None else str(value))

    @property
    def maddr(self) -> str | None:
        return self.params.get("maddr")

    @property
    def ttl(self) -> int | None:
        value = self.params.get("ttl")
        if value is None or not (value.isascii() and value.isdigit()):
            return None
        return int(value)

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.protocol}/{self.transport} {self.sent_by}{render_params(self.params)}"

    def copy(self) -> Via:
        return Via(
            transport=self.transport,
            host=self.host,
            port=self.port,
            params=dict(self.params),
            protocol=self.protocol,
        )


def parse_via(value: str) -> Via:
    """Parse one via-parm (§25.1): ``SIP/2.0/UDP host:port;branch=...``."""
    m = _VIA_RE.fullmatch(value.strip(_WS))
    if m is None:
        raise SipParseError(f"bad Via: {value[:80]!r}")
    name, version, transport, sent_by, param_s = m.groups()
    sent_by = sent_by.strip(_WS)
    if " " in sent_by or "\t" in sent_by:
        # sent-by = host [ COLON port ] and COLON allows whitespace around ":".
        sent_by = _COLON_WS_RE.sub(":", sent_by)
    host, port = parse_hostport(sent_by)
    params = parse_params(param_s) if param_s else {}
    # RFC 3581 §4: rport is a flag in requests and carries the port in responses.
    rport = params.get("rport")
    if rport is not None and not (rport.isascii() and rport.isdigit()):
        raise SipParseError(f"bad Via rport: {rport[:20]!r}")
    ttl = params.get("ttl")  # RFC 3261 §20.42: ttl = 1*3DIGIT (0-255)
    if ttl is not None:
        _parse_digits(ttl, "Via ttl", 255)
    return Via(
        transport=transport.upper(),
        host=host,
        port=port,
        params=params,
        protocol=f"{name}/{version}",
    )

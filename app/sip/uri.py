"""SIP, SIPS and TEL URIs (RFC 3261 §19.1, RFC 3966) and URI comparison (§19.1.4).

Components are kept in their wire (escaped) form: ``SipUri.user`` of
``sip:%61lice@example.com`` is ``"%61lice"``. Rendering with ``str(uri)`` therefore gives
back what was parsed (parameter names are lower-cased), and comparison with
:func:`uri_equal` unescapes before comparing, as §19.1.4 requires. To put arbitrary text
in a user part, escape it with :func:`escape_user`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import quote, unquote_to_bytes

from app.sip.errors import SipParseError

__all__ = [
    "AbsoluteUri",
    "SipUri",
    "TelUri",
    "Uri",
    "escape_user",
    "parse_hostport",
    "parse_uri",
    "uri_equal",
]

# RFC 3261 §25.1: character classes of the SIP-URI grammar.
_ESC = r"%[0-9A-Fa-f]{2}"
_UNRESERVED = r"A-Za-z0-9\-_.!~*'()"
# user = 1*( unreserved / escaped / user-unreserved ), user-unreserved = & = + $ , ; ? /
_USER_RE = re.compile(rf"(?:[{_UNRESERVED}&=+$,;?/]|{_ESC})+")
# password = *( unreserved / escaped / & = + $ , )
_PASSWORD_RE = re.compile(rf"(?:[{_UNRESERVED}&=+$,]|{_ESC})*")
# paramchar = param-unreserved / unreserved / escaped; param-unreserved = [ ] / : & + $
_PARAMCHARS_RE = re.compile(rf"(?:[{_UNRESERVED}\[\]/:&+$]|{_ESC})+")
# hname / hvalue: hnv-unreserved = [ ] / ? : + $
_HNV_RE = re.compile(rf"(?:[{_UNRESERVED}\[\]/?:+$]|{_ESC})*")
# hostname / IPv4address. Underscore is tolerated (seen in the wild, harmless).
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9\-_.]*)")
# IPv6reference: RFC 5118 §4.4 asks to tolerate the buggy 3-colon form of the RFC 3261
# ABNF, so only the character set is checked here, not the address structure.
_IPV6REF_RE = re.compile(r"\[[0-9A-Fa-f:.]+\]")
# RFC 3986 §3.1 scheme
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
# absoluteURI body: anything printable without whitespace or the name-addr delimiters.
_OPAQUE_RE = re.compile(r"[!#-;=?-~]+")
# RFC 3966 §3: telephone-subscriber, digits plus visual separators (and * # for local).
_TEL_NUMBER_RE = re.compile(r"\+?[0-9A-Fa-f*#\-.()]+")
_TEL_SEPARATORS = str.maketrans("", "", "-.()")

# RFC 3261 §19.1.4: these URI parameters must match even if present in only one URI.
_STRICT_PARAMS = frozenset({"user", "ttl", "method", "maddr", "transport"})

_MAX_PORT = 65535


@dataclass
class SipUri:
    """``sip:`` or ``sips:`` URI (RFC 3261 §19.1.1). Components are in escaped wire form."""

    scheme: str = "sip"
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)  # names lower-cased
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(self.user)
            if self.password is not None:
                parts.append(":")
                parts.append(self.password)
            parts.append("@")
        parts.append(self.host)
        if self.port is not None:
            parts.append(f":{self.port}")
        for name, value in self.params.items():
            parts.append(f";{name}" if value is None else f";{name}={value}")
        if self.headers:
            parts.append("?")
            parts.append("&".join(f"{k}={v}" for k, v in self.headers.items()))
        return "".join(parts)

    @property
    def secure(self) -> bool:
        return self.scheme == "sips"

    @property
    def transport(self) -> str | None:
        """The ``transport`` parameter, lower-cased, or None."""
        value = self.params.get("transport")
        return value.lower() if value else None

    @property
    def lr(self) -> bool:
        """True when the URI carries the loose-routing flag (RFC 3261 §16.12.1.1)."""
        return "lr" in self.params

    @property
    def maddr(self) -> str | None:
        return self.params.get("maddr")

    def copy(self) -> SipUri:
        return SipUri(
            scheme=self.scheme,
            user=self.user,
            password=self.password,
            host=self.host,
            port=self.port,
            params=dict(self.params),
            headers=dict(self.headers),
        )


@dataclass
class TelUri:
    """``tel:`` URI (RFC 3966): the number as written plus its parameters."""

    number: str
    params: dict[str, str | None] = field(default_factory=dict)  # names lower-cased

    @property
    def scheme(self) -> str:
        return "tel"

    def __str__(self) -> str:
        parts = ["tel:", self.number]
        for name, value in self.params.items():
            parts.append(f";{name}" if value is None else f";{name}={value}")
        return "".join(parts)

    @property
    def is_global(self) -> bool:
        return self.number.startswith("+")

    def copy(self) -> TelUri:
        return TelUri(number=self.number, params=dict(self.params))


@dataclass
class AbsoluteUri:
    """Any other absolute URI (RFC 3261 §25.1 absoluteURI), kept opaque."""

    scheme: str
    rest: str  # everything after "scheme:"

    def __str__(self) -> str:
        return f"{self.scheme}:{self.rest}"

    def copy(self) -> AbsoluteUri:
        return AbsoluteUri(scheme=self.scheme, rest=self.rest)


Uri = SipUri | TelUri | AbsoluteUri


def escape_user(text: str) -> str:
    """Escape ``text`` for use as a SIP URI user part (RFC 3261 §19.1.2)."""
    return quote(text, safe="-_.!~*'()&=+$,;?/")


def parse_uri(s: str) -> Uri:
    """Parse a URI; raise :class:`SipParseError` when it is malformed."""
    colon = s.find(":")
    if colon <= 0:
        raise SipParseError(f"URI without scheme: {s[:80]!r}")
    scheme = s[:colon]
    lscheme = scheme.lower()
    rest = s[colon + 1 :]
    if lscheme == "sip" or lscheme == "sips":
        return _parse_sip_uri(lscheme, rest, s)
    if lscheme == "tel":
        return _parse_tel_uri(rest, s)
    if _SCHEME_RE.fullmatch(scheme) is None:
        raise SipParseError(f"bad URI scheme: {s[:80]!r}")
    if _OPAQUE_RE.fullmatch(rest) is None:
        raise SipParseError(f"bad URI: {s[:80]!r}")
    return AbsoluteUri(scheme=scheme, rest=rest)


def _parse_sip_uri(scheme: str, rest: str, whole: str) -> SipUri:
    user: str | None = None
    password: str | None = None
    at = rest.find("@")
    if at >= 0:
        userinfo = rest[:at]
        rest = rest[at + 1 :]
        user, sep, pw = userinfo.partition(":")
        if _USER_RE.fullmatch(user) is None:
            raise SipParseError(f"bad user part in URI: {whole[:80]!r}")
        if sep:
            if _PASSWORD_RE.fullmatch(pw) is None:
                raise SipParseError(f"bad password in URI: {whole[:80]!r}")
            password = pw
    headers: dict[str, str] = {}
    q = rest.find("?")
    if q >= 0:
        headers = _parse_uri_headers(rest[q + 1 :], whole)
        rest = rest[:q]
    params: dict[str, str | None] = {}
    semi = rest.find(";")
    if semi >= 0:
        params = _parse_uri_params(rest[semi + 1 :], whole)
        rest = rest[:semi]
    host, port = _parse_hostport(rest, whole)
    return SipUri(
        scheme=scheme,
        user=user,
        password=password,
        host=host,
        port=port,
        params=params,
        headers=headers,
    )


def parse_hostport(s: str) -> tuple[str, int | None]:
    """Parse ``host[:port]`` (RFC 3261 §25.1 hostport); IPv6 hosts keep their brackets."""
    return _parse_hostport(s, s)


def _parse_hostport(s: str, whole: str) -> tuple[str, int | None]:
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise SipParseError(f"unterminated IPv6 reference in URI: {whole[:80]!r}")
        host = s[: end + 1]
        if _IPV6REF_RE.fullmatch(host) is None:
            raise SipParseError(f"bad IPv6 reference in URI: {whole[:80]!r}")
        tail = s[end + 1 :]
        if not tail:
            return host, None
        if tail[0] != ":":
            raise SipParseError(f"bad host in URI: {whole[:80]!r}")
        return host, _parse_port(tail[1:], whole)
    host, sep, port_s = s.partition(":")
    # RFC 5118 §4.1: an IPv6 address must be bracketed; unbracketed ends up here as a
    # bad port ("sip:2001:db8::10" -> port "db8::10").
    if _HOSTNAME_RE.fullmatch(host) is None:
        raise SipParseError(f"bad host in URI: {whole[:80]!r}")
    return host, (_parse_port(port_s, whole) if sep else None)


def _parse_port(s: str, whole: str) -> int:
    if not s.isdigit() or not s.isascii() or len(s) > 5:
        raise SipParseError(f"bad port in URI: {whole[:80]!r}")
    port = int(s)
    if port > _MAX_PORT:
        raise SipParseError(f"port out of range in URI: {whole[:80]!r}")
    return port


def _parse_uri_params(s: str, whole: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for item in s.split(";"):
        name, sep, value = item.partition("=")
        if _PARAMCHARS_RE.fullmatch(name) is None:
            raise SipParseError(f"bad URI parameter {item[:40]!r} in {whole[:80]!r}")
        if sep:
            if value and _PARAMCHARS_RE.fullmatch(value) is None:
                raise SipParseError(f"bad URI parameter {item[:40]!r} in {whole[:80]!r}")
            params[name.lower()] = value
        else:
            params[name.lower()] = None
    return params


def _parse_uri_headers(s: str, whole: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in s.split("&"):
        name, _, value = item.partition("=")
        if (
            not name
            or _HNV_RE.fullmatch(name) is None
            or _HNV_RE.fullmatch(value) is None
        ):
            raise SipParseError(f"bad URI header {item[:40]!r} in {whole[:80]!r}")
        headers[name] = value
    return headers


def _parse_tel_uri(rest: str, whole: str) -> TelUri:
    number, sep, param_s = rest.partition(";")
    if _TEL_NUMBER_RE.fullmatch(number) is None:
        raise SipParseError(f"bad tel URI: {whole[:80]!r}")
    params = _parse_uri_params(param_s, whole) if sep else {}
    return TelUri(number=number, params=params)


def _unescape(s: str) -> bytes:
    return unquote_to_bytes(s)


def _coerce(u: Uri | str) -> Uri | None:
    if isinstance(u, str):
        try:
            return parse_uri(u)
        except SipParseError:
            return None
    return u


def uri_equal(a: Uri | str, b: Uri | str) -> bool:
    """URI equivalence (RFC 3261 §19.1.4 for SIP/SIPS, RFC 3966 §4 for tel).

    Strings are parsed first; a string that does not parse equals nothing.
    """
    ua = _coerce(a)
    ub = _coerce(b)
    if ua is None or ub is None:
        return False
    if isinstance(ua, SipUri) and isinstance(ub, SipUri):
        return _sip_equal(ua, ub)
    if isinstance(ua, TelUri) and isinstance(ub, TelUri):
        return _tel_equal(ua, ub)
    if isinstance(ua, AbsoluteUri) and isinstance(ub, AbsoluteUri):
        return ua.scheme.lower() == ub.scheme.lower() and ua.rest == ub.rest
    return False


def _opt_unescape(s: str | None) -> bytes | None:
    return None if s is None else _unescape(s)


def _ci(s: str | None) -> bytes | None:
    return None if s is None else _unescape(s).lower()


def _sip_equal(a: SipUri, b: SipUri) -> bool:
    # §19.1.4: a SIP and a SIPS URI are never equivalent.
    if a.scheme != b.scheme:
        return False
    # §19.1.4: userinfo is compared case-sensitively, after unescaping.
    if _opt_unescape(a.user) != _opt_unescape(b.user):
        return False
    if _opt_unescape(a.password) != _opt_unescape(b.password):
        return False
    # §19.1.4: everything else case-insensitively; an omitted port is not the default.
    if a.host.lower() != b.host.lower() or a.port != b.port:
        return False
    # §19.1.4: user, ttl, method, maddr, transport must appear in both or neither;
    # any other parameter is compared only when both URIs have it.
    for name in a.params.keys() | b.params.keys():
        in_a = name in a.params
        in_b = name in b.params
        if in_a and in_b:
            if _ci(a.params[name]) != _ci(b.params[name]):
                return False
        elif name in _STRICT_PARAMS:
            return False
    # §19.1.4: header components are never ignored: both must have the same ones.
    ha = {k.lower(): _unescape(v) for k, v in a.headers.items()}
    hb = {k.lower(): _unescape(v) for k, v in b.headers.items()}
    return ha == hb


def _tel_equal(a: TelUri, b: TelUri) -> bool:
    # RFC 3966 §4: visual separators do not count, case does not matter, and both URIs
    # need the same parameters (in any order).
    na = a.number.translate(_TEL_SEPARATORS).lower()
    nb = b.number.translate(_TEL_SEPARATORS).lower()
    if na != nb:
        return False
    pa = {k: _ci(v) for k, v in a.params.items()}
    pb = {k: _ci(v) for k, v in b.params.items()}
    return pa == pb

"""SIP message model (RFC 3261 §7): :class:`Headers`, :class:`Request`, :class:`Response`.

A parsed message keeps each header field's raw text (name as written, folding and all)
beside its normalised name and its unfolded value. Serialising an unchanged field
writes the raw text back, so an unchanged parsed message round-trips byte for byte
(except Content-Length, which :meth:`Request.to_bytes` always makes right). A field
that was added or changed is rendered as ``Name: value``.

Structured views (``req.vias``, ``req.to``, ...) are parsed on first use and cached
until the headers change. Treat the returned objects as read-only snapshots: to
change a header, assign the view (``req.to = na``, ``req.top_via = via``) or use the
:class:`Headers` methods.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from app.sip.errors import LocalProtocolError, SipParseError
from app.sip.headers import (
    CSeq,
    NameAddr,
    Via,
    is_token,
    normalize_name,
    parse_cseq,
    parse_max_forwards,
    parse_name_addr,
    parse_via,
    split_header_list,
)
from app.sip.ids import random_hex
from app.sip.reasons import reason_phrase
from app.sip.uri import Uri, parse_uri

__all__ = ["Headers", "Message", "Request", "Response", "make_response", "new_tag"]

_T = TypeVar("_T")

# One header field: (raw name, normalised key, unfolded value, raw text or None).
# The raw text is the field exactly as received (without the final CRLF); None means
# "render from name and value".
_Field = tuple[str, str, str, str | None]

# Headers whose values contain commas that do not separate list elements
# (RFC 3261 §7.3.1: these are not comma-separated lists).
_NOT_LISTS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "www-authenticate",
        "proxy-authenticate",
        "authentication-info",
        "date",
        "subject",
        "user-agent",
        "server",
        "organization",
        "call-id",
        "cseq",
        "content-length",
        "content-type",
        "max-forwards",
        "retry-after",
        "timestamp",
        "mime-version",
        "priority",
        "expires",
        "min-expires",
        "from",
        "to",
        "refer-to",
        "referred-by",
        "replaces",
        "session-expires",
        "rack",
        "rseq",
        "event",
        "subscription-state",
    }
)

# name-as-written -> normalised key, for names already checked to be tokens. Bounded so
# a peer sending random header names cannot grow it without limit.
_KEY_CACHE: dict[str, str] = {}
_KEY_CACHE_MAX = 2048
_MISSING = object()


def _key(name: str) -> str:
    key = _KEY_CACHE.get(name)
    if key is None:
        key = normalize_name(name)
        if len(_KEY_CACHE) < _KEY_CACHE_MAX:
            _KEY_CACHE[name] = key
    return key


def _check_field(name: str, value: str) -> None:
    if not is_token(name):
        raise LocalProtocolError(f"bad header name {name!r}")
    if "\r" in value or "\n" in value or "\x00" in value:
        raise LocalProtocolError(f"header {name} value contains CR, LF or NUL")


def _norm_ws(value: str) -> str:
    return " ".join(value.split())


class Headers:
    """Ordered header fields; duplicates kept, raw casing kept, compact names understood."""

    __slots__ = ("_cache", "_fields")

    def __init__(self, items: Iterable[tuple[str, str]] | None = None) -> None:
        self._fields: list[_Field] = []
        self._cache: dict[str, object] = {}
        if items is not None:
            for name, value in items:
                self.add(name, value)

    @classmethod
    def _from_fields(cls, fields: list[_Field]) -> Headers:
        h = cls.__new__(cls)
        h._fields = fields
        h._cache = {}
        return h

    # -- reading -----------------------------------------------------------------------

    def get(self, name: str) -> str | None:
        """Value of the first field called ``name`` (any case, compact form ok)."""
        key = _key(name)
        for f in self._fields:
            if f[1] == key:
                return f[2]
        return None

    def get_all(self, name: str) -> list[str]:
        """Every field's value, in order (not comma-split)."""
        key = _key(name)
        return [f[2] for f in self._fields if f[1] == key]

    def get_list(self, name: str) -> list[str]:
        """Every field's values, split at top-level commas (RFC 3261 §7.3.1).

        Headers that are not lists (auth headers, Date, From, ...) are not split.
        """
        key = _key(name)
        if key in _NOT_LISTS:
            return [f[2] for f in self._fields if f[1] == key]
        out: list[str] = []
        for f in self._fields:
            if f[1] == key:
                out.extend(split_header_list(f[2]))
        return out

    def count(self, name: str) -> int:
        """Number of fields called ``name``."""
        key = _key(name)
        return sum(1 for f in self._fields if f[1] == key)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = _key(name)
        # A plain loop: any() over a generator costs a frame per field (hot: every message).
        for f in self._fields:
            if f[1] == key:
                return True
        return False

    def __iter__(self) -> Iterator[tuple[str, str]]:
        """(raw_name, value) in wire order."""
        return ((f[0], f[2]) for f in self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def raw_fields(self) -> Iterator[tuple[str, str, str | None]]:
        """(raw_name, value, raw text or None if it will be rendered) in wire order."""
        return ((f[0], f[2], f[3]) for f in self._fields)

    def copy(self) -> Headers:
        return Headers._from_fields(list(self._fields))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._comparable() == other._comparable()

    __hash__ = None  # type: ignore[assignment]

    def _comparable(self) -> list[tuple[str, str]]:
        # Content-Length is left out: to_bytes() always recomputes it from the body.
        return [(f[1], _norm_ws(f[2])) for f in self._fields if f[1] != "content-length"]

    def __repr__(self) -> str:
        return f"Headers({[(f[0], f[2]) for f in self._fields]!r})"

    # -- writing -----------------------------------------------------------------------

    def add(self, name: str, value: str) -> None:
        """Append a field."""
        _check_field(name, value)
        self._fields.append((name, _key(name), value, None))
        self._cache.clear()

    def prepend(self, name: str, value: str) -> None:
        """Insert a field before all others (e.g. a new top Via)."""
        _check_field(name, value)
        self._fields.insert(0, (name, _key(name), value, None))
        self._cache.clear()

    def set(self, name: str, value: str) -> None:
        """Replace every field called ``name`` by one, at the first one's position.

        The first field's raw name (e.g. a compact form) is kept.
        """
        _check_field(name, value)
        key = _key(name)
        out: list[_Field] = []
        done = False
        for f in self._fields:
            if f[1] == key:
                if not done:
                    out.append((f[0], key, value, None))
                    done = True
            else:
                out.append(f)
        if not done:
            out.append((name, key, value, None))
        self._fields = out
        self._cache.clear()

    def remove(self, name: str) -> None:
        """Remove every field called ``name``."""
        key = _key(name)
        self._fields = [f for f in self._fields if f[1] != key]
        self._cache.clear()

    def remove_first(self, name: str) -> None:
        """Remove the topmost value of ``name``.

        When the first field holds several comma-separated values (``Via: a, b``), only
        the first value goes and the field is re-rendered with the rest.
        """
        key = _key(name)
        for i, f in enumerate(self._fields):
            if f[1] == key:
                values = [f[2]] if key in _NOT_LISTS else split_header_list(f[2])
                if len(values) <= 1:
                    del self._fields[i]
                else:
                    self._fields[i] = (f[0], key, ", ".join(values[1:]), None)
                self._cache.clear()
                return

    def replace_first(self, name: str, value: str) -> None:
        """Replace the topmost value of ``name`` (keeping other values of its field)."""
        _check_field(name, value)
        key = _key(name)
        for i, f in enumerate(self._fields):
            if f[1] == key:
                values = [f[2]] if key in _NOT_LISTS else split_header_list(f[2])
                rest = values[1:]
                new = ", ".join([value, *rest])
                self._fields[i] = (f[0], key, new, None)
                self._cache.clear()
                return
        self._fields.append((name, key, value, None))
        self._cache.clear()

    # -- typed-value cache ---------------------------------------------------------------

    def _cached(self, slot: str, make: Callable[[], _T]) -> _T:
        value = self._cache.get(slot, _MISSING)
        if value is _MISSING:
            value = make()
            self._cache[slot] = value
        return value  # type: ignore[return-value]

    # -- serialisation -------------------------------------------------------------------

    def _render(self, out: list[str], body_len: int) -> None:
        cl_done = False
        for raw_name, key, value, raw in self._fields:
            if key == "content-length":
                # RFC 3261 §20.14 / §18.3: one Content-Length, equal to the body size.
                if cl_done:
                    continue
                cl_done = True
                if raw is not None and value.isascii() and value.isdigit() and (
                    int(value) == body_len
                ):
                    out.append(raw)
                else:
                    out.append(f"{raw_name}: {body_len}")
                continue
            out.append(raw if raw is not None else f"{raw_name}: {value}")
        if not cl_done:
            out.append(f"Content-Length: {body_len}")


def _single(headers: Headers, name: str) -> str:
    values = headers.get_all(name)
    if not values:
        raise SipParseError(f"missing {name} header")
    return values[0]


class _TypedViews:
    """Lazily parsed, cached views of the headers every transaction and dialog uses."""

    headers: Headers

    @property
    def call_id(self) -> str:
        def make() -> str:
            value = _single(self.headers, "Call-ID")
            # RFC 3261 §25.1: callid = word [ "@" word ]; no whitespace.
            if not value or len(value.split()) != 1:
                raise SipParseError(f"bad Call-ID: {value[:60]!r}")
            return value

        return self.headers._cached("call_id", make)

    @call_id.setter
    def call_id(self, value: str) -> None:
        self.headers.set("Call-ID", value)

    @property
    def cseq(self) -> CSeq:
        return self.headers._cached("cseq", lambda: parse_cseq(_single(self.headers, "CSeq")))

    @cseq.setter
    def cseq(self, value: CSeq) -> None:
        self.headers.set("CSeq", str(value))

    @property
    def vias(self) -> list[Via]:
        return self.headers._cached(
            "vias", lambda: [parse_via(v) for v in self.headers.get_list("Via")]
        )

    @property
    def top_via(self) -> Via:
        vias = self.vias
        if not vias:
            raise SipParseError("missing Via header")
        return vias[0]

    @top_via.setter
    def top_via(self, via: Via) -> None:
        self.headers.replace_first("Via", str(via))

    @property
    def from_(self) -> NameAddr:
        return self.headers._cached(
            "from", lambda: parse_name_addr(_single(self.headers, "From"))
        )

    @from_.setter
    def from_(self, value: NameAddr) -> None:
        self.headers.set("From", str(value))

    @property
    def to(self) -> NameAddr:
        return self.headers._cached("to", lambda: parse_name_addr(_single(self.headers, "To")))

    @to.setter
    def to(self, value: NameAddr) -> None:
        self.headers.set("To", str(value))

    @property
    def max_forwards(self) -> int | None:
        def make() -> int | None:
            value = self.headers.get("Max-Forwards")
            return None if value is None else parse_max_forwards(value)

        return self.headers._cached("max_forwards", make)

    @max_forwards.setter
    def max_forwards(self, value: int | None) -> None:
        if value is None:
            self.headers.remove("Max-Forwards")
        else:
            self.headers.set("Max-Forwards", str(value))

    @property
    def contacts(self) -> list[NameAddr]:
        """Contact values; ``Contact: *`` (REGISTER only, §10.2.2) is a parse error here."""
        return self.headers._cached(
            "contacts", lambda: [parse_name_addr(v) for v in self.headers.get_list("Contact")]
        )

    @property
    def record_routes(self) -> list[NameAddr]:
        return self.headers._cached(
            "record_routes",
            lambda: [parse_name_addr(v) for v in self.headers.get_list("Record-Route")],
        )

    @property
    def routes(self) -> list[NameAddr]:
        return self.headers._cached(
            "routes", lambda: [parse_name_addr(v) for v in self.headers.get_list("Route")]
        )

    @property
    def content_type(self) -> str | None:
        return self.headers.get("Content-Type")


def _to_bytes(start_line: str, headers: Headers, body: bytes) -> bytes:
    out = [start_line]
    headers._render(out, len(body))
    out.append("")
    out.append("")
    return "\r\n".join(out).encode("utf-8", "surrogateescape") + body


@dataclass(eq=False)
class Request(_TypedViews):
    """A SIP request (RFC 3261 §7.1)."""

    method: str
    uri: str  # Request-URI as on the wire
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = "SIP/2.0"

    def __post_init__(self) -> None:
        if not isinstance(self.uri, str):  # a SipUri/TelUri passed by mistake: render it
            self.uri = str(self.uri)

    def parsed_uri(self) -> Uri:
        """The Request-URI parsed (cached per URI string); SipParseError when bad."""
        cached = self.headers._cache.get("ruri")
        if isinstance(cached, tuple) and cached[0] == self.uri:
            return cached[1]  # type: ignore[no-any-return]
        uri = parse_uri(self.uri)
        self.headers._cache["ruri"] = (self.uri, uri)
        return uri

    @property
    def start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    def to_bytes(self) -> bytes:
        """Serialise; Content-Length is always made to match the body."""
        return _to_bytes(self.start_line, self.headers, self.body)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Request):
            return NotImplemented
        return (
            self.method == other.method
            and self.uri == other.uri
            and self.version == other.version
            and self.body == other.body
            and self.headers == other.headers
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(eq=False)
class Response(_TypedViews):
    """A SIP response (RFC 3261 §7.2)."""

    status: int
    reason: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = "SIP/2.0"

    @property
    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def to_bytes(self) -> bytes:
        """Serialise; Content-Length is always made to match the body."""
        return _to_bytes(self.start_line, self.headers, self.body)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Response):
            return NotImplemented
        return (
            self.status == other.status
            and self.reason == other.reason
            and self.version == other.version
            and self.body == other.body
            and self.headers == other.headers
        )

    __hash__ = None  # type: ignore[assignment]


Message = Request | Response


def new_tag() -> str:
    """A fresh random tag (RFC 3261 §19.3: at least 32 bits of randomness)."""
    return random_hex(8)


def make_response(
    req: Request, status: int, reason: str | None = None, *, to_tag: str | None = None
) -> Response:
    """Build a response to ``req`` (RFC 3261 §8.2.6).

    Copies every Via (in order), From, To, Call-ID and CSeq as received (§8.2.6.2), and
    Timestamp on a 100 (§8.2.6.1). When ``status > 100`` and To has no tag, one is added:
    ``to_tag`` if given, else a random one. Headers the request lacks are left out, so
    this also serves the 400 for a request with missing headers.
    """
    if not 100 <= status <= 699:
        raise LocalProtocolError(f"status code out of range: {status}")
    h = Headers()
    src = req.headers._fields
    for f in src:
        if f[1] == "via":
            h._fields.append(f)
    for key in ("from", "to", "call-id", "cseq"):
        for f in src:
            if f[1] == key:
                if key == "to" and status > 100:
                    f = _with_to_tag(req, f, to_tag)
                h._fields.append(f)
                break
    if status == 100:
        for f in src:
            if f[1] == "timestamp":
                h._fields.append(f)
                break
    return Response(
        status=status,
        reason=reason if reason is not None else reason_phrase(status),
        headers=h,
    )


def _with_to_tag(req: Request, f: _Field, to_tag: str | None) -> _Field:
    try:
        has_tag = req.to.tag is not None
    except SipParseError:
        return f  # a To we cannot parse is copied as it came
    if has_tag:
        return f
    tag = to_tag if to_tag is not None else new_tag()
    return (f[0], f[1], f"{f[2]};tag={tag}", None)

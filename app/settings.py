"""Service settings: environment variables with the prefix ``CALLCTL_``.

Every field carries its default and a description; ``callctl --help`` and the README's
settings table are generated from this model, so it is the one place to document a knob.
Values that come as lists (``SIP_TRANSPORTS``, ``API_KEYS``, ...) are comma-separated.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import itertools
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "CALLCTL_"

SipTransport = Literal["udp", "tcp"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LogFormat = Literal["text", "json"]
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# A DNS name or an IPv4 address; IPv6 literals are checked with `ipaddress` instead.
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
# RFC 3261 §19.1.1: sip:/sips: URI; the host part is checked separately.
_SIP_URI = re.compile(r"^(?P<scheme>sips?):(?:[^@;?]+@)?(?P<hostport>[^;?]+)(?P<rest>[;?].*)?$")
_WEBHOOK_SECRET_PREFIX = "whsec_"
_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class PortRange:
    """An inclusive range of UDP ports, written ``LOW-HIGH``."""

    low: int
    high: int

    def __str__(self) -> str:
        return f"{self.low}-{self.high}"

    def __len__(self) -> int:
        return self.high - self.low + 1

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high


@dataclass(frozen=True, slots=True, kw_only=True)
class Credential:
    """A username and password that inbound callers may authenticate with (digest)."""

    username: str
    password: SecretStr


def _split_csv(value: Any) -> Any:
    """Comma-separated text to a list; lists and tuples pass through."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _check_host(host: str, what: str) -> str:
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        if not _HOSTNAME.match(host):
            raise ValueError(f"{what} {host!r} is not a host name or IP address") from None
    return host


def _split_host_port(value: str, what: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``; a bare IPv6 address has no port."""
    if value.startswith("["):
        host, _, rest = value.partition("]")
        host += "]"
        if rest and not rest.startswith(":"):
            raise ValueError(f"{what} {value!r} is not host[:port]")
        port_text = rest[1:] if rest else ""
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    else:
        host, port_text = value, ""
    _check_host(host, what)
    if not port_text:
        return host, None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{what} {value!r} has an invalid port")
    return host, int(port_text)


def _positive_finite(value: float, what: str) -> float:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive number")
    return value


class Settings(BaseSettings):
    """All knobs of callctl, read from ``CALLCTL_*`` environment variables."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        case_sensitive=False,
        extra="ignore",
        frozen=True,
        validate_default=True,
    )

    # -- HTTP ----------------------------------------------------------------------------
    http_host: str = Field(
        default="127.0.0.1",
        description="Address the REST API listens on (0.0.0.0 for every interface).",
    )
    http_port: int = Field(default=8000, ge=1, le=65535, description="TCP port of the REST API.")
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        default=(),
        description=(
            "Comma-separated API keys. When set, every /v1 request needs "
            "'Authorization: Bearer <key>'. Empty: the API is open."
        ),
    )

    # -- SIP -----------------------------------------------------------------------------
    sip_host: str = Field(default="127.0.0.1", description="Address the SIP transports bind to.")
    sip_port: int = Field(default=5060, ge=1, le=65535, description="SIP port (UDP and TCP).")
    sip_transports: Annotated[tuple[SipTransport, ...], NoDecode] = Field(
        default=("udp", "tcp"),
        description="Comma-separated SIP transports to listen on: udp, tcp.",
    )
    public_address: str | None = Field(
        default=None,
        description=(
            "host[:port] put in Via, Contact and SDP instead of SIP_HOST "
            "(needed behind NAT or when SIP_HOST is 0.0.0.0)."
        ),
    )
    outbound_proxy: str | None = Field(
        default=None,
        description=(
            "SIP URI every out-of-dialog request is routed through, "
            "e.g. 'sip:proxy.example.com;lr'. Empty: direct by Request-URI."
        ),
    )
    t1_ms: int = Field(
        default=500, ge=1, le=60_000, description="SIP timer T1 (RTT estimate), milliseconds."
    )
    t2_ms: int = Field(
        default=4000,
        ge=1,
        le=600_000,
        description="SIP timer T2 (max retransmit interval of non-INVITE requests), ms.",
    )
    t4_ms: int = Field(
        default=5000,
        ge=1,
        le=600_000,
        description="SIP timer T4 (max time a message stays in the network), ms.",
    )
    sip_trace: bool = Field(
        default=False, description="Log every SIP message sent and received (debug aid)."
    )

    # -- Inbound calls -------------------------------------------------------------------
    inbound_timeout: float = Field(
        default=60.0,
        description=(
            "Seconds an inbound call may wait for accept/reject; then 480 and 'no_answer'."
        ),
    )
    auto_provisional: bool = Field(
        default=True,
        description="Send 180 Ringing at once on inbound INVITEs (unless they require 100rel).",
    )
    inbound_allow: Annotated[tuple[IpNetwork, ...], NoDecode] = Field(
        default=(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")),
        description=(
            "Comma-separated CIDRs whose INVITEs are accepted; others get 403. "
            "Empty: refuse every inbound call."
        ),
    )
    inbound_auth: Annotated[tuple[Credential, ...], NoDecode] = Field(
        default=(),
        description=(
            "Comma-separated user:password pairs; when set, inbound INVITEs are "
            "digest-challenged and must match one. Empty: no challenge."
        ),
    )

    # -- Media ---------------------------------------------------------------------------
    rtp_ports: Annotated[PortRange, NoDecode] = Field(
        default=PortRange(low=20000, high=20999),
        description="UDP port range LOW-HIGH for RTP/RTCP media.",
    )

    # -- Webhooks ------------------------------------------------------------------------
    webhook_url: str | None = Field(
        default=None,
        description="http(s) URL that receives events of calls without their own webhook_url.",
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description=(
            "Standard Webhooks signing key 'whsec_<base64>'; several keys separated by spaces "
            "or commas during a rotation (every signature is sent). Empty: events are unsigned."
        ),
    )
    webhook_timeout: float = Field(
        default=10.0, description="Seconds one webhook delivery attempt may take."
    )
    webhook_retry_schedule: Annotated[tuple[float, ...], NoDecode] = Field(
        # Fast at first (a receiver restarting), then spread over about a day (27 h in all).
        default=(1.0, 5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 43200.0),
        description=(
            "Comma-separated base delays (seconds, non-decreasing) before each retry of a "
            "failed delivery; jitter is added; after the last the event is given up."
        ),
    )
    webhook_allow_private: bool = Field(
        default=False,
        description=(
            "Allow webhook URLs that resolve to loopback, private or link-local addresses."
        ),
    )

    # -- Load ----------------------------------------------------------------------------
    max_calls: int = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description=(
            "Most calls at once (inbound and outbound); a new INVITE over it gets 503 with "
            "Retry-After, POST /v1/calls a 503 problem. 0: no cap."
        ),
    )
    overload_lag_ms: int = Field(
        default=150,
        ge=0,
        le=60_000,
        description=(
            "Load shedding: event-loop lag (smoothed, ms) above which fewer new calls are "
            "admitted (503 + Retry-After); 0: not a signal."
        ),
    )
    overload_write_backlog: int = Field(
        default=2000,
        ge=0,
        le=10_000_000,
        description=(
            "Load shedding: call changes queued for the database above which fewer new calls "
            "are admitted; 0: not a signal."
        ),
    )
    overload_webhook_backlog: int = Field(
        # About 1.3 s of events at 375 calls/s (four each): deliveries under way alone
        # reached 500 on a service keeping up (loop lag 6 ms), and shed calls it could take.
        default=2000,
        ge=0,
        le=10_000_000,
        description=(
            "Load shedding: webhook events waiting for a delivery slot, deliveries under way "
            "and outcomes not yet recorded, above which fewer new calls are admitted; 0: not a "
            "signal."
        ),
    )
    overload_dials: int = Field(
        default=100,
        ge=0,
        le=1_000_000,
        description=(
            "Load shedding: POST /v1/calls requests being placed at once above which fewer "
            "new calls are admitted; 0: not a signal."
        ),
    )

    # -- Storage and process -------------------------------------------------------------
    database_url: str = Field(
        default="sqlite+aiosqlite:///./callctl.db",
        repr=False,
        description=(
            "SQLAlchemy URL: sqlite+aiosqlite:///path.db or "
            "postgresql+asyncpg://user:pass@host:5432/db."
        ),
    )
    drain_seconds: float = Field(
        default=30.0,
        description=("On SIGTERM, seconds to let calls end and webhooks drain before stopping."),
    )
    log_level: LogLevel = Field(
        default="INFO", description="DEBUG, INFO, WARNING, ERROR or CRITICAL."
    )
    log_format: LogFormat = Field(
        default="text", description="'text' for people, 'json' (one object a line) for machines."
    )

    # -- validators ----------------------------------------------------------------------

    @field_validator("http_host", "sip_host")
    @classmethod
    def _valid_bind_host(cls, value: str) -> str:
        return _check_host(value.strip(), "host")

    @field_validator(
        "public_address",
        "outbound_proxy",
        "webhook_url",
        "webhook_secret",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("public_address")
    @classmethod
    def _valid_public_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        _split_host_port(value.strip(), "public address")
        return value.strip()

    @field_validator("outbound_proxy")
    @classmethod
    def _valid_outbound_proxy(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = _SIP_URI.match(value.strip())
        if match is None:
            raise ValueError(f"{value!r} is not a sip: or sips: URI")
        _split_host_port(match["hostport"], "proxy host")
        return value.strip()

    @field_validator("webhook_url")
    @classmethod
    def _valid_webhook_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value.strip()

    @field_validator("webhook_secret")
    @classmethod
    def _valid_webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        keys = value.get_secret_value().replace(",", " ").split()
        for raw in keys:
            if not raw.startswith(_WEBHOOK_SECRET_PREFIX):
                raise ValueError("each key must look like whsec_<base64>")
            try:
                key = base64.b64decode(raw.removeprefix(_WEBHOOK_SECRET_PREFIX), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("the part after whsec_ is not valid base64") from None
            if len(key) < 16:
                raise ValueError("a key must be at least 16 bytes (24 base64 characters)")
        return SecretStr(" ".join(keys)) if keys else None

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_api_keys(cls, value: Any) -> Any:
        keys = _split_csv(value)
        if isinstance(keys, list | tuple):
            for key in keys:
                text = key.get_secret_value() if isinstance(key, SecretStr) else str(key)
                if any(ch.isspace() for ch in text.strip()):
                    raise ValueError("an API key must not contain spaces")
        return keys

    @field_validator("sip_transports", mode="before")
    @classmethod
    def _parse_transports(cls, value: Any) -> Any:
        items = _split_csv(value)
        if isinstance(items, list | tuple):
            items = [str(item).lower() for item in items]
            if not items:
                raise ValueError("at least one transport is needed")
            if len(set(items)) != len(items):
                raise ValueError("a transport is listed twice")
        return items

    @field_validator("inbound_allow", mode="before")
    @classmethod
    def _parse_networks(cls, value: Any) -> Any:
        items = _split_csv(value)
        if not isinstance(items, list | tuple):
            return items
        networks: list[IpNetwork] = []
        for item in items:
            if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network):
                networks.append(item)
                continue
            try:
                networks.append(ipaddress.ip_network(str(item), strict=False))
            except ValueError:
                raise ValueError(f"{item!r} is not a CIDR such as 10.0.0.0/8") from None
        return tuple(networks)

    @field_validator("inbound_auth", mode="before")
    @classmethod
    def _parse_credentials(cls, value: Any) -> Any:
        items = _split_csv(value)
        if not isinstance(items, list | tuple):
            return items
        credentials: list[Credential] = []
        for item in items:
            if isinstance(item, Credential):
                credentials.append(item)
                continue
            username, sep, password = str(item).partition(":")
            if not sep or not username or not password:
                raise ValueError("each entry must be user:password")
            credentials.append(Credential(username=username, password=SecretStr(password)))
        return tuple(credentials)

    @field_validator("rtp_ports", mode="before")
    @classmethod
    def _parse_port_range(cls, value: Any) -> Any:
        if isinstance(value, PortRange):
            return value
        match = re.fullmatch(r"\s*(\d{1,5})\s*-\s*(\d{1,5})\s*", str(value))
        if match is None:
            raise ValueError(f"{value!r} is not a range LOW-HIGH such as 20000-20999")
        low, high = int(match[1]), int(match[2])
        if not 1024 <= low < high <= 65535:
            raise ValueError("need 1024 <= LOW < HIGH <= 65535")
        # RFC 3550 §11: RTP on an even port, RTCP on the next odd one: a pair at least.
        if high - low + 1 < 2:
            raise ValueError("the range must hold at least one RTP/RTCP port pair")
        return PortRange(low=low, high=high)

    @field_validator("webhook_retry_schedule", mode="before")
    @classmethod
    def _parse_schedule(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _valid_schedule(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        for delay in value:
            _positive_finite(delay, "each retry delay")
        if any(later < earlier for earlier, later in itertools.pairwise(value)):
            raise ValueError("delays must not decrease")
        return value

    @field_validator("inbound_timeout", "webhook_timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        return _positive_finite(value, "the value")

    @field_validator("drain_seconds")
    @classmethod
    def _not_negative(cls, value: float) -> float:
        if not math.isfinite(value) or value < 0:
            raise ValueError("must be zero or more seconds")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_format(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _valid_database_url(cls, value: str) -> str:
        return normalize_database_url(value)

    @model_validator(mode="after")
    def _timers_ordered(self) -> Settings:
        # RFC 3261 §17.1.2.2: T2 caps the doubling interval that starts at T1.
        if self.t2_ms < self.t1_ms:
            raise ValueError("CALLCTL_T2_MS must not be smaller than CALLCTL_T1_MS")
        return self

    # -- derived values ------------------------------------------------------------------

    @property
    def api_key_values(self) -> tuple[str, ...]:
        """The API keys as plain strings (for the auth check only)."""
        return tuple(key.get_secret_value() for key in self.api_keys)


def normalize_database_url(value: str) -> str:
    """Check a database URL and give it the async driver callctl uses.

    ``postgresql://`` and ``postgres://`` become ``postgresql+asyncpg://``, ``sqlite://``
    becomes ``sqlite+aiosqlite://``; any other dialect or driver is refused.
    """
    # Imported here so that reading settings stays cheap for `callctl --help`.
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    text = value.strip()
    try:
        url = make_url(text)
    except ArgumentError:
        raise ValueError("not a database URL such as sqlite+aiosqlite:///./callctl.db") from None
    driver = _ASYNC_DRIVERS.get(url.drivername)
    if driver is None:
        raise ValueError(
            f"unsupported database {url.drivername!r}: use sqlite+aiosqlite or postgresql+asyncpg"
        )
    url = url.set(drivername=driver)
    if driver == "postgresql+asyncpg" and not url.database:
        raise ValueError("a PostgreSQL URL needs a database name, e.g. .../callctl")
    if driver == "sqlite+aiosqlite" and not url.database:
        raise ValueError("a SQLite URL needs a file, e.g. sqlite+aiosqlite:///./callctl.db")
    return url.render_as_string(hide_password=False)


class SettingsError(Exception):
    """Settings could not be loaded; ``str()`` is one line naming the variable and the reason."""


def field_env_name(name: str) -> str:
    """The environment variable behind a settings field (``http_port`` -> CALLCTL_HTTP_PORT)."""
    return f"{ENV_PREFIX}{name.upper()}"


# Fields whose rejected value must never be echoed into logs or terminals.
SECRET_FIELDS = frozenset({"api_keys", "webhook_secret", "inbound_auth", "database_url"})


def describe_validation_error(error: ValidationError) -> str:
    """One line out of pydantic's multi-line error, naming each variable."""
    parts: list[str] = []
    for item in error.errors(include_url=False):
        loc = [str(part) for part in item["loc"] if not isinstance(part, int)]
        message = str(item["msg"]).removeprefix("Value error, ")
        if not loc:
            parts.append(message)
            continue
        got = item.get("input")
        shown = (
            f" (got {got!r})"
            if loc[0] not in SECRET_FIELDS and isinstance(got, str | int | float)
            else ""
        )
        parts.append(f"{field_env_name(loc[0])}: {message}{shown}")
    return "; ".join(parts)


def load_settings(**overrides: Any) -> Settings:
    """Read the settings from the environment; raise :class:`SettingsError` when invalid."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None
    except ValueError as exc:
        # pydantic-settings raises SettingsError (a ValueError) for undecodable values.
        raise SettingsError(str(exc).splitlines()[0]) from None


__all__ = [
    "ENV_PREFIX",
    "Credential",
    "IpNetwork",
    "LogFormat",
    "LogLevel",
    "PortRange",
    "Settings",
    "SettingsError",
    "SipTransport",
    "describe_validation_error",
    "field_env_name",
    "load_settings",
    "normalize_database_url",
]

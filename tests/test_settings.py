"""Settings: defaults, parsing of list values, and one clear line per invalid value."""

from __future__ import annotations

import ipaddress

import pytest

from app.settings import (
    PortRange,
    Settings,
    SettingsError,
    load_settings,
    normalize_database_url,
)


def test_defaults_match_the_issue() -> None:
    settings = load_settings()
    assert settings.http_host == "127.0.0.1"
    assert settings.http_port == 8000
    assert settings.sip_host == "127.0.0.1"
    assert settings.sip_port == 5060
    assert settings.sip_transports == ("udp", "tcp")
    assert settings.public_address is None
    assert settings.database_url == "sqlite+aiosqlite:///./callctl.db"
    assert settings.api_keys == ()
    assert settings.webhook_url is None
    assert settings.webhook_secret is None
    assert settings.inbound_timeout == 60
    assert (settings.t1_ms, settings.t2_ms, settings.t4_ms) == (500, 4000, 5000)
    assert settings.rtp_ports == PortRange(low=20000, high=20999)
    assert settings.log_level == "INFO"
    assert settings.log_format == "text"
    assert settings.outbound_proxy is None
    assert settings.auto_provisional is True
    assert settings.inbound_auth == ()
    assert settings.webhook_allow_private is False
    assert settings.sip_trace is False
    assert settings.webhook_retry_schedule[0] == 1.0
    assert settings.drain_seconds == 30
    assert settings.webhook_timeout == 10
    assert ipaddress.ip_address("203.0.113.9") in settings.inbound_allow[0]


def test_every_field_is_documented() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} has no description"


def test_values_come_from_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLCTL_HTTP_PORT", "9000")
    monkeypatch.setenv("CALLCTL_SIP_TRANSPORTS", "TCP")
    monkeypatch.setenv("CALLCTL_API_KEYS", "k1, k2")
    monkeypatch.setenv("CALLCTL_RTP_PORTS", "30000-30099")
    monkeypatch.setenv("CALLCTL_INBOUND_ALLOW", "10.0.0.0/8,2001:db8::/32")
    monkeypatch.setenv("CALLCTL_INBOUND_AUTH", "alice:s3cret:with:colons,bob:pw")
    monkeypatch.setenv("CALLCTL_WEBHOOK_RETRY_SCHEDULE", "0.5,1,1,30")
    monkeypatch.setenv("CALLCTL_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    monkeypatch.setenv("CALLCTL_LOG_LEVEL", "debug")
    monkeypatch.setenv("CALLCTL_LOG_FORMAT", "JSON")
    monkeypatch.setenv("CALLCTL_SIP_TRACE", "true")
    monkeypatch.setenv("CALLCTL_AUTO_PROVISIONAL", "0")
    monkeypatch.setenv("CALLCTL_OUTBOUND_PROXY", "sip:proxy.example.com:5070;lr")
    monkeypatch.setenv("CALLCTL_PUBLIC_ADDRESS", "[2001:db8::1]:5062")
    monkeypatch.setenv("HTTP_PORT", "1")  # no prefix: ignored

    settings = load_settings()

    assert settings.http_port == 9000
    assert settings.sip_transports == ("tcp",)
    assert settings.api_key_values == ("k1", "k2")
    assert settings.rtp_ports == PortRange(low=30000, high=30099)
    assert len(settings.rtp_ports) == 100
    assert [str(net) for net in settings.inbound_allow] == ["10.0.0.0/8", "2001:db8::/32"]
    assert [(c.username, c.password.get_secret_value()) for c in settings.inbound_auth] == [
        ("alice", "s3cret:with:colons"),
        ("bob", "pw"),
    ]
    assert settings.webhook_retry_schedule == (0.5, 1.0, 1.0, 30.0)
    assert settings.log_level == "DEBUG"
    assert settings.log_format == "json"
    assert settings.sip_trace is True
    assert settings.auto_provisional is False
    assert settings.outbound_proxy == "sip:proxy.example.com:5070;lr"
    assert settings.public_address == "[2001:db8::1]:5062"


def test_secrets_are_not_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLCTL_API_KEYS", "topsecretkey")
    monkeypatch.setenv("CALLCTL_DATABASE_URL", "postgresql+asyncpg://u:dbpassword@h/db")
    text = repr(load_settings())
    assert "topsecretkey" not in text
    assert "dbpassword" not in text


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("CALLCTL_HTTP_PORT", "70000", "CALLCTL_HTTP_PORT: Input should be less than or equal"),
        ("CALLCTL_HTTP_PORT", "eighty", "CALLCTL_HTTP_PORT: Input should be a valid integer"),
        ("CALLCTL_SIP_PORT", "0", "CALLCTL_SIP_PORT"),
        ("CALLCTL_SIP_TRANSPORTS", "udp,sctp", "CALLCTL_SIP_TRANSPORTS: Input should be"),
        ("CALLCTL_SIP_TRANSPORTS", "udp,udp", "CALLCTL_SIP_TRANSPORTS: a transport is listed"),
        ("CALLCTL_SIP_TRANSPORTS", " ", "CALLCTL_SIP_TRANSPORTS: at least one transport"),
        ("CALLCTL_HTTP_HOST", "not a host", "CALLCTL_HTTP_HOST: host 'not a host'"),
        ("CALLCTL_PUBLIC_ADDRESS", "192.0.2.1:99999", "CALLCTL_PUBLIC_ADDRESS: public address"),
        ("CALLCTL_DATABASE_URL", "mysql://x/y", "CALLCTL_DATABASE_URL: unsupported database"),
        ("CALLCTL_DATABASE_URL", "::nonsense::", "CALLCTL_DATABASE_URL: not a database URL"),
        ("CALLCTL_DATABASE_URL", "postgresql://h", "CALLCTL_DATABASE_URL: a PostgreSQL URL"),
        ("CALLCTL_WEBHOOK_URL", "ftp://example.com/x", "CALLCTL_WEBHOOK_URL: 'ftp://"),
        ("CALLCTL_WEBHOOK_SECRET", "secret", "CALLCTL_WEBHOOK_SECRET: each key must"),
        ("CALLCTL_WEBHOOK_SECRET", "whsec_!!!", "CALLCTL_WEBHOOK_SECRET: the part after"),
        ("CALLCTL_WEBHOOK_SECRET", "whsec_c2hvcnQ=", "CALLCTL_WEBHOOK_SECRET: a key must"),
        ("CALLCTL_INBOUND_TIMEOUT", "0", "CALLCTL_INBOUND_TIMEOUT: the value must be a positive"),
        ("CALLCTL_INBOUND_TIMEOUT", "nan", "CALLCTL_INBOUND_TIMEOUT"),
        ("CALLCTL_T1_MS", "0", "CALLCTL_T1_MS"),
        ("CALLCTL_T1_MS", "5000", "CALLCTL_T2_MS must not be smaller than CALLCTL_T1_MS"),
        ("CALLCTL_RTP_PORTS", "20000", "CALLCTL_RTP_PORTS: '20000' is not a range"),
        ("CALLCTL_RTP_PORTS", "30000-20000", "CALLCTL_RTP_PORTS: need 1024 <= LOW < HIGH"),
        ("CALLCTL_RTP_PORTS", "80-90", "CALLCTL_RTP_PORTS: need 1024"),
        ("CALLCTL_LOG_LEVEL", "verbose", "CALLCTL_LOG_LEVEL: Input should be 'DEBUG'"),
        ("CALLCTL_LOG_FORMAT", "xml", "CALLCTL_LOG_FORMAT: Input should be 'text' or 'json'"),
        ("CALLCTL_SIP_TRACE", "maybe", "CALLCTL_SIP_TRACE: Input should be a valid boolean"),
        ("CALLCTL_AUTO_PROVISIONAL", "sometimes", "CALLCTL_AUTO_PROVISIONAL"),
        ("CALLCTL_WEBHOOK_ALLOW_PRIVATE", "2", "CALLCTL_WEBHOOK_ALLOW_PRIVATE"),
        ("CALLCTL_INBOUND_ALLOW", "10.0.0.0/8,nope", "CALLCTL_INBOUND_ALLOW: 'nope' is not a CIDR"),
        ("CALLCTL_INBOUND_AUTH", "alice", "CALLCTL_INBOUND_AUTH: each entry must be user:pass"),
        ("CALLCTL_OUTBOUND_PROXY", "proxy.example.com", "CALLCTL_OUTBOUND_PROXY: 'proxy"),
        ("CALLCTL_OUTBOUND_PROXY", "sip:bad host", "CALLCTL_OUTBOUND_PROXY: proxy host"),
        ("CALLCTL_WEBHOOK_RETRY_SCHEDULE", "1,x", "CALLCTL_WEBHOOK_RETRY_SCHEDULE: Input should"),
        ("CALLCTL_WEBHOOK_RETRY_SCHEDULE", "5,1", "CALLCTL_WEBHOOK_RETRY_SCHEDULE: delays must"),
        ("CALLCTL_WEBHOOK_RETRY_SCHEDULE", "0", "CALLCTL_WEBHOOK_RETRY_SCHEDULE: each retry"),
        ("CALLCTL_WEBHOOK_TIMEOUT", "-1", "CALLCTL_WEBHOOK_TIMEOUT"),
        ("CALLCTL_DRAIN_SECONDS", "-1", "CALLCTL_DRAIN_SECONDS: must be zero or more"),
        ("CALLCTL_API_KEYS", "a key", "CALLCTL_API_KEYS: an API key must not contain spaces"),
    ],
)
def test_invalid_value_gives_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message


def test_several_errors_stay_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLCTL_HTTP_PORT", "-1")
    monkeypatch.setenv("CALLCTL_LOG_FORMAT", "xml")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "CALLCTL_HTTP_PORT" in message
    assert "CALLCTL_LOG_FORMAT" in message
    assert "\n" not in message


def test_rejected_secrets_are_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLCTL_WEBHOOK_SECRET", "hunter2hunter2")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "hunter2" not in str(caught.value)


def test_empty_optional_values_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PUBLIC_ADDRESS", "OUTBOUND_PROXY", "WEBHOOK_URL", "WEBHOOK_SECRET"):
        monkeypatch.setenv(f"CALLCTL_{name}", "")
    monkeypatch.setenv("CALLCTL_INBOUND_ALLOW", "")
    monkeypatch.setenv("CALLCTL_WEBHOOK_RETRY_SCHEDULE", "")
    settings = load_settings()
    assert settings.public_address is None
    assert settings.outbound_proxy is None
    assert settings.webhook_url is None
    assert settings.webhook_secret is None
    assert settings.inbound_allow == ()
    assert settings.webhook_retry_schedule == ()


@pytest.mark.parametrize(
    ("given", "normalized"),
    [
        ("sqlite:///./x.db", "sqlite+aiosqlite:///./x.db"),
        ("sqlite+aiosqlite:////abs/x.db", "sqlite+aiosqlite:////abs/x.db"),
        ("postgres://u:p@h:5433/db", "postgresql+asyncpg://u:p@h:5433/db"),
        ("postgresql://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
    ],
)
def test_database_urls_get_the_async_driver(given: str, normalized: str) -> None:
    assert normalize_database_url(given) == normalized


@pytest.mark.parametrize("bad", ["postgresql+psycopg2://u@h/db", "sqlite+pysqlite:///x.db"])
def test_sync_drivers_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="unsupported database"):
        normalize_database_url(bad)


def test_port_range_membership() -> None:
    ports = PortRange(low=20000, high=20003)
    assert 20000 in ports
    assert 20003 in ports
    assert 20004 not in ports
    assert "20001" not in ports
    assert str(ports) == "20000-20003"


def test_several_webhook_secrets_for_a_rotation(monkeypatch: pytest.MonkeyPatch) -> None:
    old = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    new = "whsec_c2VjcmV0LWtleS1mb3ItdGVzdHMtMTIzNA=="
    monkeypatch.setenv("CALLCTL_WEBHOOK_SECRET", f"{old}, {new}")
    settings = load_settings()
    assert settings.webhook_secret is not None
    assert settings.webhook_secret.get_secret_value() == f"{old} {new}"


def test_default_retry_schedule_starts_fast_and_spans_about_a_day() -> None:
    schedule = Settings().webhook_retry_schedule
    assert schedule[:3] == (1.0, 5.0, 30.0)
    assert 20 * 3600 <= sum(schedule) <= 36 * 3600

"""Webhook URL checks: the pure literal check (API 422s) and the resolved-address check."""

from __future__ import annotations

import ipaddress

import pytest

from app.webhooks.urls import (
    ForbiddenAddressError,
    InvalidWebhookUrlError,
    check_resolved,
    check_webhook_url,
    forbidden_reason,
    parse_host_literal,
)

ACCEPTED_ALWAYS = [
    "https://hooks.example.com/callctl",
    "http://hooks.example.com:8080/a?b=c",
    "https://8.8.8.8/x",
    "https://[2001:4860:4860::8888]/x",
    "HTTPS://Hooks.Example.com/",
]

REFUSED_WHEN_PRIVATE = [
    ("http://127.0.0.1:9000/hook", "loopback"),
    ("http://127.1/", "loopback"),  # legacy short form, as inet_aton reads it
    ("http://2130706433/", "loopback"),  # 127.0.0.1 as one decimal number
    ("http://0x7f000001/", "loopback"),
    ("http://localhost:8000/", "loopback"),
    ("http://api.localhost/", "loopback"),
    ("http://[::1]/", "loopback"),
    ("http://10.1.2.3/", "private"),
    ("http://172.16.0.1/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://[fd00::1]/", "private"),
    ("http://169.254.169.254/latest/meta-data", "link-local"),  # cloud metadata
    ("http://[fe80::1]/", "link-local"),
    ("http://224.0.0.1/", "multicast"),
    ("http://[ff02::1]/", "multicast"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://[::]/", "unspecified"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),  # IPv4-mapped
    ("http://[64:ff9b::a00:1]/", "private"),  # NAT64 of 10.0.0.1
    ("http://[2002:7f00:1::]/", "loopback"),  # 6to4 of 127.0.0.1
    ("http://100.64.0.1/", "not globally reachable"),  # carrier-grade NAT
    ("http://240.0.0.1/", "reserved"),
]

MALFORMED = [
    ("", "empty"),
    ("ftp://hooks.example.com/", "http:// or https://"),
    ("javascript:alert(1)", "http:// or https://"),
    ("hooks.example.com/path", "http:// or https://"),
    ("http:///path-only", "no host"),
    ("http://hooks.example.com:99999/", "malformed"),
    ("http://hooks.example.com/a b", "control"),
    ("http://hooks.example.com/\r\nX-Injected: 1", "control"),
    ("https://" + "a" * 3000 + ".com/", "longer"),
]


@pytest.mark.parametrize("url", ACCEPTED_ALWAYS)
def test_public_http_urls_pass(url: str) -> None:
    assert check_webhook_url(url, allow_private=False) == url
    assert check_webhook_url(url, allow_private=True) == url


@pytest.mark.parametrize(("url", "why"), REFUSED_WHEN_PRIVATE)
def test_private_targets_are_refused_unless_allowed(url: str, why: str) -> None:
    with pytest.raises(ForbiddenAddressError, match=why):
        check_webhook_url(url, allow_private=False)
    assert check_webhook_url(url, allow_private=True) == url


@pytest.mark.parametrize(("url", "why"), MALFORMED)
def test_malformed_urls_are_refused_even_when_private_is_allowed(url: str, why: str) -> None:
    for allow in (False, True):
        with pytest.raises(InvalidWebhookUrlError, match=why):
            check_webhook_url(url, allow_private=allow)


def test_the_errors_are_value_errors_for_the_api() -> None:
    assert issubclass(InvalidWebhookUrlError, ValueError)
    assert issubclass(ForbiddenAddressError, InvalidWebhookUrlError)


def test_names_are_left_to_the_delivery_time_check() -> None:
    # A name could resolve anywhere; the pure check cannot know, so it lets it pass.
    assert parse_host_literal("internal.example.com") is None
    assert check_webhook_url("http://internal.example.com/", allow_private=False)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("0177.0.0.1", "127.0.0.1"),  # octal part
        ("10.1", "10.0.0.1"),
        ("999.1.1.1", None),
        ("1.2.3.example", None),
    ],
)
def test_parse_host_literal(host: str, expected: str | None) -> None:
    parsed = parse_host_literal(host)
    assert (None if parsed is None else str(parsed)) == expected


def test_forbidden_reason_lets_global_addresses_through() -> None:
    for text in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"):
        assert forbidden_reason(ipaddress.ip_address(text)) is None


def test_check_resolved_needs_every_address_to_pass() -> None:
    good = ipaddress.ip_address("8.8.8.8")
    bad = ipaddress.ip_address("10.0.0.7")
    assert check_resolved("h.example", [good, good]) == [good]
    with pytest.raises(ForbiddenAddressError, match=r"h\.example resolves to 10\.0\.0\.7"):
        check_resolved("h.example", [good, bad])
    with pytest.raises(ForbiddenAddressError, match="no address"):
        check_resolved("h.example", [])

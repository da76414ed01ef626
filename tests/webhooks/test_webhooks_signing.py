"""Standard Webhooks signing, checked against the independent ``standardwebhooks`` package."""

from __future__ import annotations

import base64
import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.webhooks.signing import (
    HEADER_ID,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    InvalidSecretError,
    SignatureVerificationError,
    SigningKey,
    WebhookSigner,
    parse_secrets,
    verify,
)
from tests.webhooks.conftest import SECRET_NEW, SECRET_OLD

BODY = json.dumps({"id": "evt_1", "type": "call.answered", "data": {"call": {}}}).encode()


def test_headers_verify_with_standardwebhooks() -> None:
    now = int(time.time())
    headers = WebhookSigner.from_secrets(SECRET_OLD).headers(
        msg_id="evt_abc", timestamp=now, body=BODY
    )
    assert headers[HEADER_ID] == "evt_abc"
    assert headers[HEADER_TIMESTAMP] == str(now)
    assert headers[HEADER_SIGNATURE].startswith("v1,")
    assert " " not in headers[HEADER_SIGNATURE]
    assert Webhook(SECRET_OLD).verify(BODY, headers) == json.loads(BODY)


def test_signature_matches_the_reference_implementation_byte_for_byte() -> None:
    from datetime import UTC, datetime

    moment = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    ours = SigningKey.parse(SECRET_NEW).sign(
        msg_id="evt_x", timestamp=int(moment.timestamp()), body=BODY
    )
    theirs = Webhook(SECRET_NEW).sign("evt_x", moment, BODY.decode())
    assert ours == theirs


def test_rotation_sends_one_signature_per_secret_and_each_verifies() -> None:
    signer = WebhookSigner.from_secrets([SECRET_OLD, SECRET_NEW])
    headers = signer.headers(msg_id="evt_rot", timestamp=int(time.time()), body=BODY)
    signatures = headers[HEADER_SIGNATURE].split(" ")
    assert len(signatures) == 2
    assert all(sig.startswith("v1,") for sig in signatures)
    # A receiver that has either key only accepts the request.
    Webhook(SECRET_OLD).verify(BODY, headers)
    Webhook(SECRET_NEW).verify(BODY, headers)
    stranger = "whsec_" + base64.b64encode(b"someone-else-entirely-123").decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(stranger).verify(BODY, headers)


def test_a_tampered_body_or_id_does_not_verify() -> None:
    headers = WebhookSigner.from_secrets(SECRET_OLD).headers(
        msg_id="evt_t", timestamp=int(time.time()), body=BODY
    )
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET_OLD).verify(BODY.replace(b"answered", b"ended"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET_OLD).verify(BODY, headers | {HEADER_ID: "evt_other"})


def test_without_secrets_no_signature_header_is_sent() -> None:
    signer = WebhookSigner.from_secrets(None)
    headers = signer.headers(msg_id="evt_n", timestamp=1, body=BODY)
    assert not signer.enabled
    assert headers == {HEADER_ID: "evt_n", HEADER_TIMESTAMP: "1"}


@given(
    body=st.text(max_size=300).map(str.encode),
    msg_id=st.from_regex(r"evt_[A-Za-z0-9_-]{1,30}", fullmatch=True),
    key=st.binary(min_size=16, max_size=64),
)
def test_any_body_and_key_verify_with_standardwebhooks(
    body: bytes, msg_id: str, key: bytes
) -> None:
    secret = "whsec_" + base64.b64encode(key).decode()
    headers = WebhookSigner.from_secrets(secret).headers(
        msg_id=msg_id, timestamp=int(time.time()), body=body
    )
    Webhook(secret).verify(body, headers, json_parse=False)


def test_parse_secrets_accepts_spaces_and_commas() -> None:
    keys = parse_secrets(f" {SECRET_OLD}, {SECRET_NEW} ")
    assert [k.key for k in keys] == [
        b"old-key-0123456789abcdef",
        b"new-key-fedcba9876543210",
    ]
    assert parse_secrets(None) == ()
    assert "old-key" not in repr(keys)


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("c2VjcmV0LXNlY3JldC1zZWNyZXQ=", "whsec_"),
        ("whsec_%%%%%%%%", "base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "at least 16 bytes"),
    ],
)
def test_bad_secrets_are_refused(secret: str, message: str) -> None:
    with pytest.raises(InvalidSecretError, match=message):
        parse_secrets(secret)


def test_unpadded_base64_is_accepted_like_the_reference() -> None:
    padded = "whsec_" + base64.b64encode(b"seventeen-bytes!!").decode()
    assert padded.endswith("=")
    unpadded = padded.rstrip("=")
    assert SigningKey.parse(unpadded).key == SigningKey.parse(padded).key == b"seventeen-bytes!!"


def test_own_verify_accepts_and_rejects() -> None:
    key = SigningKey.parse(SECRET_NEW)
    signer = WebhookSigner.from_secrets([SECRET_OLD, SECRET_NEW])
    headers = signer.headers(msg_id="evt_v", timestamp=1_000_000, body=BODY)
    verify(key=key, headers=headers, body=BODY, now=1_000_010)
    with pytest.raises(SignatureVerificationError, match="tolerance"):
        verify(key=key, headers=headers, body=BODY, now=1_000_000 + 301)
    with pytest.raises(SignatureVerificationError, match="no signature"):
        verify(key=key, headers=headers, body=BODY + b" ", now=1_000_000)
    with pytest.raises(SignatureVerificationError, match="missing"):
        verify(key=key, headers={HEADER_ID: "evt_v"}, body=BODY, now=1_000_000)

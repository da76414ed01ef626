"""Standard Webhooks signatures (https://www.standardwebhooks.com, "Signature scheme").

Every request carries ``webhook-id`` (the event id, stable across retries),
``webhook-timestamp`` (unix seconds of this attempt) and ``webhook-signature``: ``v1,`` and
the base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}`` under the secret's key. Secrets are
written ``whsec_<base64 key>``. During a key rotation several secrets are configured and
one signature per secret is sent, separated by spaces, so receivers holding either key
accept the request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"
# The spec asks for at least 24 bytes in generated keys and accepts shorter configured ones;
# below 16 bytes (128 bits) an HMAC key is too weak to be worth sending.
MIN_KEY_BYTES = 16
# Receivers reject timestamps further than this from their clock (replay protection).
DEFAULT_TOLERANCE_S = 5 * 60
_SEPARATORS = re.compile(r"[\s,]+")


class InvalidSecretError(ValueError):
    """A configured secret is not ``whsec_<base64>`` of a long enough key."""


class SignatureVerificationError(ValueError):
    """The headers do not prove that the body came from a holder of the secret."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SigningKey:
    """One HMAC key; ``repr`` never shows it."""

    key: bytes

    def __repr__(self) -> str:
        return "SigningKey(<hidden>)"

    @classmethod
    def parse(cls, secret: str) -> SigningKey:
        text = secret.strip()
        if not text.startswith(SECRET_PREFIX):
            raise InvalidSecretError("a webhook secret must look like whsec_<base64>")
        encoded = text.removeprefix(SECRET_PREFIX)
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidSecretError("the part after whsec_ is not valid base64") from None
        if len(key) < MIN_KEY_BYTES:
            raise InvalidSecretError(f"a webhook key must be at least {MIN_KEY_BYTES} bytes")
        return cls(key=key)

    def sign(self, *, msg_id: str, timestamp: int, body: bytes) -> str:
        """``v1,<base64 HMAC-SHA256 of id.timestamp.body>``."""
        to_sign = f"{msg_id}.{timestamp}.".encode() + body
        digest = hmac.new(self.key, to_sign, hashlib.sha256).digest()
        return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def parse_secrets(secrets: str | Iterable[str] | None) -> tuple[SigningKey, ...]:
    """Keys from one string (secrets separated by spaces or commas) or a list of strings."""
    if secrets is None:
        return ()
    items = [secrets] if isinstance(secrets, str) else list(secrets)
    keys: list[SigningKey] = []
    for item in items:
        for part in _SEPARATORS.split(item.strip()):
            if part:
                keys.append(SigningKey.parse(part))
    return tuple(keys)


class WebhookSigner:
    """Makes the three Standard Webhooks headers for one request body."""

    def __init__(self, keys: Sequence[SigningKey]) -> None:
        self._keys = tuple(keys)

    @classmethod
    def from_secrets(cls, secrets: str | Iterable[str] | None) -> WebhookSigner:
        return cls(parse_secrets(secrets))

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def headers(self, *, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        """``webhook-id`` and ``webhook-timestamp`` always; ``webhook-signature`` with keys."""
        headers = {HEADER_ID: msg_id, HEADER_TIMESTAMP: str(timestamp)}
        if self._keys:
            headers[HEADER_SIGNATURE] = " ".join(
                key.sign(msg_id=msg_id, timestamp=timestamp, body=body) for key in self._keys
            )
        return headers


def verify(
    *,
    key: SigningKey,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> None:
    """Check a received request the way a receiver does; raise when it does not verify.

    For receivers written in Python against callctl (and the benchmark); ``now`` is unix
    seconds, passed in so that tests need no clock.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get(HEADER_ID)
    stamp = lowered.get(HEADER_TIMESTAMP)
    signatures = lowered.get(HEADER_SIGNATURE)
    if not msg_id or not stamp or not signatures:
        raise SignatureVerificationError("missing webhook-id, -timestamp or -signature")
    if not stamp.isdigit():
        raise SignatureVerificationError("webhook-timestamp is not unix seconds")
    timestamp = int(stamp)
    if abs(now - timestamp) > tolerance_s:
        raise SignatureVerificationError("webhook-timestamp is outside the tolerance")
    expected = key.sign(msg_id=msg_id, timestamp=timestamp, body=body).encode()
    for candidate in signatures.split(" "):
        if hmac.compare_digest(candidate.encode(), expected):
            return
    raise SignatureVerificationError("no signature matches")

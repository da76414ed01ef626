"""The dispatcher's knobs, as a plain value built from the settings (or by tests)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from app.settings import Settings
from app.webhooks.retry import DEFAULT_RETRY_SCHEDULE, RetryPolicy
from app.webhooks.signing import SigningKey, parse_secrets

# Deliveries in flight at once (one per call at most): also the connection pool size.
DEFAULT_MAX_IN_FLIGHT = 64
# Connections to one origin at once, so that one busy receiver cannot take the whole pool.
DEFAULT_MAX_PER_HOST = 16
# The safety-net poll: notify() wakes the worker at once; this catches anything else
# (an event written by another process, a lost wake-up).
DEFAULT_POLL_INTERVAL_S = 5.0
# How much of a response is read: enough for an answer-flow action list.
DEFAULT_RESPONSE_LIMIT = 64 * 1024
# How much of a response is kept in webhook_deliveries.response_excerpt.
EXCERPT_LIMIT = 1024
USER_AGENT = "callctl-webhooks/0.1"


class Clock(Protocol):
    """Wall-clock time, aware and in UTC (tests step a fake one)."""

    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookConfig:
    """Everything the dispatcher needs to know besides the database and the clock."""

    default_url: str | None = None
    keys: tuple[SigningKey, ...] = field(default=(), repr=False)
    timeout: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    allow_private: bool = False
    # The operator's CALLCTL_WEBHOOK_URL is trusted even when private targets are refused
    # (it is typically an internal service); the check guards URLs given through the API.
    trust_default_url: bool = True
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    max_per_host: int = DEFAULT_MAX_PER_HOST
    poll_interval: float = DEFAULT_POLL_INTERVAL_S
    response_limit: int = DEFAULT_RESPONSE_LIMIT
    user_agent: str = USER_AGENT

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.poll_interval <= 0:
            raise ValueError("timeout and poll_interval must be positive")
        if self.max_in_flight < 1 or self.max_per_host < 1:
            raise ValueError("max_in_flight and max_per_host must be at least 1")
        if self.response_limit < EXCERPT_LIMIT:
            raise ValueError(f"response_limit must be at least {EXCERPT_LIMIT}")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> WebhookConfig:
        """From CALLCTL_WEBHOOK_*; several secrets may be separated by spaces or commas."""
        secret = settings.webhook_secret
        schedule = tuple(settings.webhook_retry_schedule) or DEFAULT_RETRY_SCHEDULE
        values: dict[str, Any] = {
            "default_url": settings.webhook_url,
            "keys": parse_secrets(secret.get_secret_value() if secret else None),
            "timeout": settings.webhook_timeout,
            "retry": RetryPolicy(schedule=schedule),
            "allow_private": settings.webhook_allow_private,
        }
        values.update(overrides)
        return cls(**values)

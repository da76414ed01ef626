"""Webhook delivery: the outbox dispatcher, Standard Webhooks signing, URL checks, retries.

Layer: below ``app.calls`` (which writes events and calls ``notify()``), above
``app.store`` (whose models hold the outbox and the attempt log).
"""

from app.webhooks.config import Clock, SystemClock, WebhookConfig
from app.webhooks.dispatcher import (
    DispatcherStats,
    OnResponse,
    WebhookDispatcher,
    WebhookEvent,
    WebhookResponse,
)
from app.webhooks.retry import DEFAULT_RETRY_SCHEDULE, RetryPolicy, parse_schedule
from app.webhooks.signing import WebhookSigner, parse_secrets
from app.webhooks.urls import ForbiddenAddressError, InvalidWebhookUrlError, check_webhook_url

__all__ = [
    "DEFAULT_RETRY_SCHEDULE",
    "Clock",
    "DispatcherStats",
    "ForbiddenAddressError",
    "InvalidWebhookUrlError",
    "OnResponse",
    "RetryPolicy",
    "SystemClock",
    "WebhookConfig",
    "WebhookDispatcher",
    "WebhookEvent",
    "WebhookResponse",
    "WebhookSigner",
    "check_webhook_url",
    "parse_schedule",
    "parse_secrets",
]

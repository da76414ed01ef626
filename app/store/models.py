"""SQLAlchemy 2 models: calls, their event outbox, webhook attempts, idempotency keys.

Enumerated values are stored as short strings with CHECK constraints (no native enum
types: they make PostgreSQL migrations painful and SQLite has none). The string values
are the ones of the public API (docs: /work/shared/API.md, the call object).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from app.store.types import UTCDateTime, json_type, utcnow

# Deterministic constraint names, so that migrations can refer to them on both databases.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class CallState(enum.StrEnum):
    """SIP.js ``SessionState``, lower-case; never goes backwards."""

    INITIAL = "initial"
    ESTABLISHING = "establishing"
    ESTABLISHED = "established"
    TERMINATING = "terminating"
    TERMINATED = "terminated"


class Direction(enum.StrEnum):
    OUTBOUND = "outbound"
    INBOUND = "inbound"


class EndCause(enum.StrEnum):
    LOCAL_BYE = "local_bye"
    REMOTE_BYE = "remote_bye"
    CANCELED = "canceled"
    REJECTED = "rejected"
    NO_ANSWER = "no_answer"
    FAILED = "failed"
    SHUTDOWN = "shutdown"


class EndedBy(enum.StrEnum):
    LOCAL = "local"
    REMOTE = "remote"
    SYSTEM = "system"


class Transport(enum.StrEnum):
    UDP = "udp"
    TCP = "tcp"
    TLS = "tls"
    WS = "ws"
    WSS = "wss"


class DeliveryState(enum.StrEnum):
    """Where an outbox event stands with its webhook."""

    PENDING = "pending"  # waiting for its first or next attempt
    DELIVERED = "delivered"  # a 2xx was received
    FAILED = "failed"  # given up: retries exhausted or 410 Gone
    SKIPPED = "skipped"  # no webhook URL applied to the call when the event was written


class EventType(enum.StrEnum):
    """Webhook event types of the public contract."""

    INITIATED = "call.initiated"
    PROGRESS = "call.progress"
    EARLY_MEDIA = "call.early_media"
    ANSWERED = "call.answered"
    DTMF = "call.dtmf"
    REFER = "call.refer"
    ENDED = "call.ended"


def _in(column: str, values: type[enum.StrEnum]) -> str:
    listed = ", ".join(f"'{member.value}'" for member in values)
    return f"{column} IN ({listed})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Call(Base):
    """One INVITE session of the user agent, with what is needed to end it after a restart."""

    __tablename__ = "calls"
    __table_args__ = (
        CheckConstraint(_in("direction", Direction), name="direction"),
        CheckConstraint(_in("state", CallState), name="state"),
        CheckConstraint(f"end_cause IS NULL OR {_in('end_cause', EndCause)}", name="end_cause"),
        CheckConstraint(f"end_by IS NULL OR {_in('end_by', EndedBy)}", name="end_by"),
        CheckConstraint(_in("transport", Transport), name="transport"),
        # Newest-first listing walks this index: ORDER BY created_at DESC, id DESC.
        Index("ix_calls_created_at_id", "created_at", "id"),
        Index("ix_calls_state_created_at", "state", "created_at"),
        Index("ix_calls_sip_call_id", "sip_call_id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    direction: Mapped[str] = mapped_column(String(8))
    state: Mapped[str] = mapped_column(String(16), default=CallState.INITIAL.value)

    # Public identity: the From/To URIs and the local/remote parties (display names).
    from_uri: Mapped[str] = mapped_column(Text)
    to_uri: Mapped[str] = mapped_column(Text)
    local_uri: Mapped[str] = mapped_column(Text)
    local_display_name: Mapped[str | None] = mapped_column(Text)
    remote_uri: Mapped[str] = mapped_column(Text)
    remote_display_name: Mapped[str | None] = mapped_column(Text)

    last_response_code: Mapped[int | None] = mapped_column(Integer)
    last_response_reason: Mapped[str | None] = mapped_column(Text)
    early_media: Mapped[bool] = mapped_column(Boolean, default=False)
    # Hold as the last offer/answer left it (RFC 3264 §8.4): we hold (sendonly/inactive
    # offered by us) or the far end holds (it offered sendonly/inactive, e.g. a re-INVITE).
    local_hold: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    remote_hold: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    end_cause: Mapped[str | None] = mapped_column(String(16))
    end_sip_code: Mapped[int | None] = mapped_column(Integer)
    end_reason: Mapped[str | None] = mapped_column(Text)
    end_by: Mapped[str | None] = mapped_column(String(8))

    client_state: Mapped[str | None] = mapped_column(Text)
    webhook_url: Mapped[str | None] = mapped_column(Text)

    # Inbound only: the INVITE as received (SIP.js Invitation.request) and the 180 policy.
    request_uri: Mapped[str | None] = mapped_column(Text)
    request_headers: Mapped[dict[str, list[str]] | None] = mapped_column(json_type())
    request_body: Mapped[str | None] = mapped_column(Text)
    request_content_type: Mapped[str | None] = mapped_column(Text)
    auto_provisional: Mapped[bool | None] = mapped_column(Boolean)

    # SIP dialog state (RFC 3261 §12): enough to send a BYE after a restart.
    sip_call_id: Mapped[str] = mapped_column(String(255))
    local_tag: Mapped[str] = mapped_column(String(128))
    remote_tag: Mapped[str | None] = mapped_column(String(128))
    local_cseq: Mapped[int] = mapped_column(BigInteger, default=0)
    remote_cseq: Mapped[int | None] = mapped_column(BigInteger)
    route_set: Mapped[list[str]] = mapped_column(json_type(), default=list)
    remote_target: Mapped[str | None] = mapped_column(Text)
    transport: Mapped[str] = mapped_column(String(8), default=Transport.UDP.value)
    peer_host: Mapped[str | None] = mapped_column(String(255))
    peer_port: Mapped[int | None] = mapped_column(Integer)
    # RFC 3261 §9.1: a CANCEL (and the ACK of a non-2xx) reuses the INVITE's branch and CSeq.
    invite_branch: Mapped[str | None] = mapped_column(String(128))
    invite_cseq: Mapped[int | None] = mapped_column(BigInteger)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Optimistic locking: an UPDATE that lost a race raises StaleDataError.
    version: Mapped[int] = mapped_column(Integer, default=1)

    events: Mapped[list[CallEvent]] = relationship(
        back_populates="call",
        order_by="CallEvent.sequence",
        cascade="all, delete-orphan",
        passive_deletes=True,
        lazy="raise",
    )

    __mapper_args__ = {"version_id_col": version}

    def __repr__(self) -> str:
        return f"Call(id={self.id!r}, direction={self.direction!r}, state={self.state!r})"


@dataclass(slots=True, kw_only=True)
class CallRecord:
    """A ``calls`` row as plain values: the call writer's copy of what it committed.

    The writer reads and sets these fields for every change of every call; on the mapped
    :class:`Call` each access goes through SQLAlchemy's instrumentation (~6 % of the CPU
    under load). The fields are the table's columns, in order (a test checks that they
    stay so).
    """

    id: str
    direction: str
    state: str
    from_uri: str
    to_uri: str
    local_uri: str
    local_display_name: str | None
    remote_uri: str
    remote_display_name: str | None
    last_response_code: int | None
    last_response_reason: str | None
    early_media: bool
    local_hold: bool
    remote_hold: bool
    end_cause: str | None
    end_sip_code: int | None
    end_reason: str | None
    end_by: str | None
    client_state: str | None
    webhook_url: str | None
    request_uri: str | None
    request_headers: dict[str, list[str]] | None
    request_body: str | None
    request_content_type: str | None
    auto_provisional: bool | None
    sip_call_id: str
    local_tag: str
    remote_tag: str | None
    local_cseq: int
    remote_cseq: int | None
    route_set: list[str]
    remote_target: str | None
    transport: str
    peer_host: str | None
    peer_port: int | None
    invite_branch: str | None
    invite_cseq: int | None
    created_at: datetime
    updated_at: datetime
    answered_at: datetime | None
    ended_at: datetime | None
    version: int


class CallEvent(Base):
    """The outbox: every webhook event, written in the transaction of its state change."""

    __tablename__ = "call_events"
    __table_args__ = (
        UniqueConstraint("call_id", "sequence"),
        CheckConstraint("sequence >= 1", name="sequence_positive"),
        CheckConstraint(_in("delivery_state", DeliveryState), name="delivery_state"),
        # The dispatcher looks for pending events that are due.
        Index("ix_call_events_delivery_state_next_attempt_at", "delivery_state", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"))
    sequence: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(json_type())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    delivery_state: Mapped[str] = mapped_column(String(16), default=DeliveryState.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    call: Mapped[Call] = relationship(back_populates="events", lazy="raise")

    def __repr__(self) -> str:
        return f"CallEvent(call_id={self.call_id!r}, sequence={self.sequence}, type={self.type!r})"


class WebhookDelivery(Base):
    """One HTTP attempt to deliver one event."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_event_id", "event_id"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    event_id: Mapped[str] = mapped_column(ForeignKey("call_events.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    url: Mapped[str] = mapped_column(Text)
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    response_excerpt: Mapped[str | None] = mapped_column(Text)
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class IdempotencyKey(Base):
    """``Idempotency-Key`` of a POST /v1/calls: same key and body return the first call."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (Index("ix_idempotency_keys_call_id", "call_id"),)

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

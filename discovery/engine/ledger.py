"""The ledger: requests, their tasks, what discovery learned, and the audit trail.

The ledger, not the broker, is the source of truth: every state change is a row update here,
and the broker only carries wake-ups. SQLite (embedded) and PostgreSQL (production) both work;
the schema is managed by Alembic (discovery/engine/migrations).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware datetimes on both SQLite (which drops the zone) and PostgreSQL."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime stored in the ledger")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class RequestType(enum.StrEnum):
    ACCESS = "access"
    PORTABILITY = "portability"
    ERASURE = "erasure"
    RESTRICTION = "restriction"
    LIFT_RESTRICTION = "lift_restriction"


class RequestStatus(enum.StrEnum):
    AWAITING_VERIFICATION = "awaiting_verification"  # the requester is not the subject: an operator confirms
    RECEIVED = "received"
    DISCOVERING = "discovering"
    RUNNING = "running"
    AWAITING_MANUAL = "awaiting_manual"
    MERGING = "merging"
    COMPLETED = "completed"
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    FAILED = "failed"
    # Closed by an operator (discovery/engine/lifecycle.py): refused under Art. 12(5) or with the identity not
    # verified, or withdrawn by the person. Terminal, like the three above.
    DENIED = "denied"
    CANCELLED = "cancelled"


OPEN_STATUSES = frozenset({
    RequestStatus.AWAITING_VERIFICATION, RequestStatus.RECEIVED, RequestStatus.DISCOVERING, RequestStatus.RUNNING,
    RequestStatus.AWAITING_MANUAL, RequestStatus.MERGING,
})


class TaskStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    AWAITING_MANUAL = "awaiting_manual"
    UNSUPPORTED = "unsupported"  # the system has no way to do it; reported with the reason
    # The system asked to wait (a vendor's rate limit resets later): not claimed before `retry_at`, and the wait
    # costs no attempt; the sweeper makes it pending again then.
    WAITING = "waiting"
    CANCELLED = "cancelled"  # the request was denied or cancelled before this task ran; nothing was done


TERMINAL_TASK = frozenset({TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.UNSUPPORTED, TaskStatus.CANCELLED})


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: sa.JSON, list[Any]: sa.JSON}


# A webhook delivered twice must not open a second request (CLI tickets are free-form notes).
_WEBHOOK_TICKET = "ticket_ref IS NOT NULL AND source IN ('ticket', 'freshdesk')"


class Request(Base):
    __tablename__ = "requests"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    type: Mapped[str] = mapped_column(sa.String(24))
    subject_email: Mapped[str] = mapped_column(sa.String(320))
    subject_hash: Mapped[str] = mapped_column(sa.String(64), index=True)
    ticket_ref: Mapped[str | None] = mapped_column(sa.String(128))
    # Where the request came from: cli | api | ticket | freshdesk | schedule | demo. With ticket_ref it
    # identifies a ticket, so a webhook delivered twice finds the first request (unique index below).
    source: Mapped[str] = mapped_column(sa.String(24), default="cli", server_default="cli")
    requester_email: Mapped[str | None] = mapped_column(sa.String(320))  # when not the subject
    verified_at: Mapped[datetime | None]
    verified_by: Mapped[str | None] = mapped_column(sa.String(128))
    callback_url: Mapped[str | None] = mapped_column(sa.String(1024))
    status: Mapped[str] = mapped_column(sa.String(24), index=True)
    # "type:subject_hash" while the request is open, NULL after: a unique index makes a second
    # open request for the same subject and type impossible, even under concurrent intake.
    open_key: Mapped[str | None] = mapped_column(sa.String(100), unique=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    due_at: Mapped[datetime]
    # Art. 12(3): extendable by two further months, with the reason recorded.
    original_due_at: Mapped[datetime | None]
    extension_reason: Mapped[str | None] = mapped_column(sa.Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    completed_at: Mapped[datetime | None]
    plan: Mapped[list[Any] | None]
    # The systems this request acts in (sorted names); NULL: every enabled system. Retention rules that
    # belong to one system (newsletter, trial, a legal hold) must not erase the person everywhere.
    systems: Mapped[list[Any] | None]
    # an operator's reason to change records that also name other people (the plan refuses otherwise)
    confirm_others: Mapped[str | None] = mapped_column(sa.Text)
    # what the person is written to in (bundle page, ticket note): a code of discovery.i18n; NULL on requests
    # older than languages, which read as requests.language
    language: Mapped[str | None] = mapped_column(sa.String(8))
    bundle_path: Mapped[str | None] = mapped_column(sa.String(1024))  # a local path or s3://bucket/key
    bundle_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    bundle_size: Mapped[int | None] = mapped_column(sa.BigInteger)
    bundle_expires_at: Mapped[datetime | None]
    bundle_deleted_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(sa.Text)
    # when the e-mail and learned identifiers were blanked (ledger.retention_days after the end; subject_hash stays)
    purged_at: Mapped[datetime | None]
    # Who is discovering or merging this request, and until when (renewed while it works; migration 0008): the
    # sweeper takes a phase over only when its lease lapsed, never while the process doing it is alive.
    lease_until: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(sa.String(36))
    # Why an operator denied or cancelled it (migration 0012); `close_basis`: for a denial, unfounded_or_excessive
    # (Art. 12(5)) or identity_not_verified. Who did it is in the audit trail.
    close_reason: Mapped[str | None] = mapped_column(sa.Text)
    close_basis: Mapped[str | None] = mapped_column(sa.String(32))

    tasks: Mapped[list[Task]] = relationship(back_populates="request", order_by="Task.id")

    __table_args__ = (sa.Index("uq_request_ticket", "source", "ticket_ref", "type", unique=True,
                               postgresql_where=sa.text(_WEBHOOK_TICKET), sqlite_where=sa.text(_WEBHOOK_TICKET)),)


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (sa.UniqueConstraint("request_id", "system", "action", name="uq_task_system_action"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(sa.ForeignKey("requests.id", ondelete="CASCADE"), index=True)
    system: Mapped[str] = mapped_column(sa.String(64))
    action: Mapped[str] = mapped_column(sa.String(24))
    entities: Mapped[list[Any]]
    status: Mapped[str] = mapped_column(sa.String(24), index=True)
    attempts: Mapped[int] = mapped_column(default=0)
    lease_until: Mapped[datetime | None]
    # the first transient failure of the current run of failures: worker.system_retry_budget counts from here
    retrying_since: Mapped[datetime | None]
    # a waiting task's earliest next attempt: the time the system asked for (migration 0012)
    retry_at: Mapped[datetime | None]
    waits: Mapped[int] = mapped_column(default=0, server_default="0")  # how often it was asked to wait
    error: Mapped[str | None] = mapped_column(sa.Text)
    result: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    request: Mapped[Request] = relationship(back_populates="tasks")


class SubjectIdentity(Base):
    """An identifier the request used, and where it came from (the request, or a system's hit)."""

    __tablename__ = "identities"
    __table_args__ = (sa.UniqueConstraint("request_id", "type", "value", name="uq_identity"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(sa.ForeignKey("requests.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(sa.String(32))
    value: Mapped[str] = mapped_column(sa.String(512))
    source: Mapped[str] = mapped_column(sa.String(64))
    round: Mapped[int] = mapped_column(default=0)
    via: Mapped[str | None] = mapped_column(sa.Text)  # provenance: system, table, column, path from a direct match
    via_note: Mapped[dict[str, Any] | None]  # the same as a Note ({"msgid", "params"}), for the person's language


class SystemHit(Base):
    """Where discovery looked, whether the person was there, and how many records per entity."""

    __tablename__ = "system_hits"
    __table_args__ = (sa.UniqueConstraint("request_id", "system", name="uq_hit"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(sa.ForeignKey("requests.id", ondelete="CASCADE"), index=True)
    system: Mapped[str] = mapped_column(sa.String(64))
    found: Mapped[bool]
    counts: Mapped[dict[str, Any]]
    error: Mapped[str | None] = mapped_column(sa.Text)
    skipped: Mapped[dict[str, Any] | None]  # entity -> why -> records reached but not this person's


class AuditEvent(Base):
    """Who did what, when. Holds a keyed hash of the subject, never the e-mail."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    request_id: Mapped[str | None] = mapped_column(sa.String(36), index=True)
    event: Mapped[str] = mapped_column(sa.String(64))
    actor: Mapped[str] = mapped_column(sa.String(128))
    subject_hash: Mapped[str | None] = mapped_column(sa.String(64))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class ScheduledAction(Base):
    """A promise kept later: an erasure after a grace period, a notice, the end of a legal hold.

    Long waits live here, never in broker delays; the scheduler claims due rows with
    SELECT ... FOR UPDATE SKIP LOCKED (PostgreSQL) and turns them into requests.
    """

    __tablename__ = "scheduled_actions"
    __table_args__ = (sa.Index("ix_scheduled_due", "status", "due_at"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(sa.String(32))  # erasure | inactivity_erasure | hold_end_erasure | ...
    subject_email: Mapped[str] = mapped_column(sa.String(320))
    subject_hash: Mapped[str] = mapped_column(sa.String(64), index=True)
    due_at: Mapped[datetime]
    reason: Mapped[str] = mapped_column(sa.Text)
    status: Mapped[str] = mapped_column(sa.String(16), default="scheduled")  # scheduled|claimed|done|cancelled|failed
    attempts: Mapped[int] = mapped_column(default=0)
    created_by: Mapped[str] = mapped_column(sa.String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    claimed_at: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(sa.String(128))
    done_at: Mapped[datetime | None]
    request_id: Mapped[str | None] = mapped_column(sa.String(36))  # the request it became
    source_request_id: Mapped[str | None] = mapped_column(sa.String(36))  # e.g. the erasure whose hold this ends
    error: Mapped[str | None] = mapped_column(sa.Text)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class OutboxStatus(enum.StrEnum):
    PENDING = "pending"  # not delivered yet: tried again at next_attempt_at, until expires_at
    DELIVERED = "delivered"
    EXPIRED = "expired"  # still undelivered at expires_at (api.report_back_expiry_days)
    REFUSED = "refused"  # an answer that will not change (a 404, the callback allow-list): not tried again


class OutboxMessage(Base):
    """What the ticket's side is to hear (a Freshdesk note, a signed callback), kept until delivered or expired.

    Written in the transaction of the state change it reports, so a crash between the two loses nothing; sent by
    discovery/intake/outbox.py, claimed under a lease (`claimed_by`, `claimed_until`) so no two senders send one
    row. `target` is the ticket id or callback URL the request holds already; `payload` the note's HTML or the
    callback's JSON (signed when sent), blanked by the ledger purge with the request's personal data.
    """

    __tablename__ = "outbox"
    __table_args__ = (sa.Index("ix_outbox_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(sa.ForeignKey("requests.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(sa.String(16))  # ticket_note | callback
    event: Mapped[str] = mapped_column(sa.String(32))  # request.held | request.extended | request.finished
    target: Mapped[str] = mapped_column(sa.String(1024))
    payload: Mapped[str] = mapped_column(sa.Text)
    status: Mapped[str] = mapped_column(sa.String(16), default=OutboxStatus.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime]
    claimed_by: Mapped[str | None] = mapped_column(sa.String(36))
    claimed_until: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(sa.String(300))  # one scrubbed line
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]
    expires_at: Mapped[datetime]


class ApiToken(Base):
    """An HTTP API token: only its SHA-256 is stored; scopes limit what it may do."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(sa.String(128), unique=True)
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    scopes: Mapped[list[Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]

"""The report-back outbox: ticket notes and signed callbacks that do not give up.

What the ticket's side is to hear is a row of the ledger's `outbox` table (discovery/engine/ledger.py), written in
the transaction of the state change it reports (discovery/intake/report_back.py builds the texts). A delivery pass
sends the rows that are due:

- claimed first, in one short transaction (`SELECT ... FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite serialises
  writers with BEGIN IMMEDIATE) under a lease (`claimed_by`, `claimed_until`), so two passes side by side never send
  one row twice; a sender that died leaves a lease that runs out, and the row is due again;
- sent outside any transaction; the outcome is written only while the claim is still the sender's;
- delivered; or retried after 1 minute, doubling up to 6 hours (a 429's Retry-After when that is longer); or
  `refused` at once when the answer will not change (400/401/403/404/410/422, a redirect, a callback outside
  `api.callback_allow`); or `expired` once `expires_at` (`api.report_back_expiry_days`) has passed undelivered.

Every attempt is audited (`report_back.attempt`: the row, kind, event, attempt, outcome, HTTP status, one scrubbed
line; never the payload). The workers' sweeper starts a pass in the background (`sweep`); the event's own process
tries at once after its commit, so the common case is as quick as before.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.orm import Session

from connectors.base import ConnectorError, PermanentError, TransientError
from connectors.freshdesk import FreshdeskClient
from connectors.http import HttpClient, RetryPolicy
from connectors.redact import redact, safe_url
from discovery.engine.callbacks import CallbackPolicy, CallbackRefused
from discovery.engine.callbacks import session as callback_session
from discovery.engine.ledger import AuditEvent, OutboxMessage, OutboxStatus, Request
from discovery.engine.runtime import Runtime
from discovery.intake.tickets import SIGNATURE_HEADER, sign

log = structlog.get_logger(__name__)

NOTE, CALLBACK = "ticket_note", "callback"
FIRST_RETRY = timedelta(minutes=1)
MAX_RETRY = timedelta(hours=6)
LEASE = timedelta(minutes=10)  # longer than one attempt with the client's own in-line retries
BATCH = 50
# In-line tries of one attempt: a blip is ridden out at once, anything longer is the outbox's to retry.
INLINE_RETRY = RetryPolicy(attempts=4)
# Answers that sending the same thing again will not change. 429, 408 and 5xx are retried.
REFUSING = frozenset({400, 401, 403, 404, 405, 410, 413, 422})
_HTTP_STATUS = re.compile(r"answered HTTP (\d{3})")


class NotConfigured(Exception):
    """A secret or setting the delivery needs is missing: retried, since an operator may set it before expiry."""


# -- writing -----------------------------------------------------------------------------------

def add(s: Session, rt: Runtime, req: Request, kind: str, event: str, target: str, payload: str) -> OutboxMessage:
    """Queue one message in the caller's transaction; due at once."""
    now = rt.clock()
    row = OutboxMessage(request_id=req.id, kind=kind, event=event, target=target, payload=payload,
                        status=OutboxStatus.PENDING, attempts=0, next_attempt_at=now, created_at=now,
                        expires_at=now + timedelta(days=rt.settings.api.report_back_expiry_days))
    s.add(row)
    return row


# -- sending -----------------------------------------------------------------------------------

@dataclass
class Attempt:
    """The outcome of one try: delivered (with the HTTP status or note id), or why not and what follows."""

    row_id: int
    kind: str
    event: str
    status: str  # delivered | pending (retried) | refused | expired
    attempt: int
    http_status: int | None = None
    note_id: int | None = None
    error: str | None = None
    next_attempt_at: datetime | None = None
    target: str = field(default="", repr=False)  # for the caller's message; not audited

    def details(self) -> dict[str, Any]:
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in {
            "outbox": self.row_id, "kind": self.kind, "report_event": self.event, "status": self.status,
            "attempt": self.attempt, "http_status": self.http_status, "note_id": self.note_id,
            "error": self.error, "next_attempt_at": self.next_attempt_at}.items() if v is not None}


@dataclass
class Pass:
    attempts: list[Attempt] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {"delivered": 0, "retried": 0, "refused": 0, "expired": 0}
        for a in self.attempts:
            out["retried" if a.status == OutboxStatus.PENDING else a.status] += 1
        return out


def send_note(rt: Runtime, ticket: str, body_html: str) -> int | None:
    """POST the private note to the Freshdesk ticket; the note id Freshdesk gives."""
    api = rt.settings.api
    if not api.freshdesk_domain:
        raise NotConfigured("api.freshdesk_domain is not set")
    key = rt.env.get(api.freshdesk_api_key_env, "")
    if not key:
        raise NotConfigured(f"no Freshdesk API key in {api.freshdesk_api_key_env}")
    client = FreshdeskClient(api.freshdesk_domain, key, retry=INLINE_RETRY)
    try:
        return client.add_note(ticket, body_html)
    finally:
        client.close()


def send_callback(rt: Runtime, url: str, body: bytes, now: datetime, delivery: str | None = None) -> int:
    """POST the body to the callback URL, signed now (the receiver's replay window counts from the send, not from
    the event); the allow-list is checked before anything is signed and again as the connection is made."""
    secret = rt.env.get(rt.settings.api.callback_secret_env, "")
    if not secret:
        raise NotConfigured(f"no callback secret in {rt.settings.api.callback_secret_env}; not sending unsigned")
    policy = CallbackPolicy.from_settings(rt.settings.api)
    policy.check(url)
    headers = {SIGNATURE_HEADER: sign(secret.encode(), body, now), "Content-Type": "application/json"}
    if delivery:  # the same on every attempt: a receiver that got an attempt whose answer was lost can tell
        headers["Idempotency-Key"] = delivery
    client = HttpClient("callback", url, retry=INLINE_RETRY, timeout=(5.0, 15.0), session=callback_session(policy))
    try:
        return client.request("POST", url, data=body, headers=headers, ok=(200, 201, 202, 204)).status_code  # type: ignore[arg-type]
    finally:
        client.close()


def _send(rt: Runtime, row: OutboxMessage, now: datetime) -> tuple[int | None, int | None]:
    """(HTTP status, note id) of a delivered row; raises why not."""
    if row.kind == NOTE:
        return 201, send_note(rt, row.target, row.payload)
    if row.kind == CALLBACK:
        return send_callback(rt, row.target, row.payload.encode(), now, f"dsar-outbox-{row.id}"), None
    raise PermanentError("report-back", f"unknown outbox kind {row.kind!r}")


def http_status(exc: BaseException) -> int | None:
    found = _HTTP_STATUS.search(str(exc))
    return int(found.group(1)) if found else None


def refuses(exc: BaseException) -> bool:
    """True when sending the same again cannot succeed; everything else is retried until the row expires."""
    if isinstance(exc, CallbackRefused):
        return "does not resolve" not in str(exc)  # DNS may come back; a host outside the allow-list will not
    if isinstance(exc, NotConfigured | TransientError):
        return False
    if isinstance(exc, PermanentError):
        status = http_status(exc)
        if status is None:  # not an answer (a ticket id that is no number): the same every time
            return True
        return status in REFUSING or 300 <= status < 400
    return False  # a connection problem outside the client, a bug: tried again, and it expires in the end


def backoff(attempts: int, retry_after: float | None = None) -> timedelta:
    """After the n-th failed attempt: 1 min, 2, 4 ... up to 6 h; never sooner than a Retry-After asks."""
    delay = min(FIRST_RETRY * 2 ** max(0, attempts - 1), MAX_RETRY)
    if retry_after:
        delay = max(delay, timedelta(seconds=retry_after))
    return delay


def one_line(exc: BaseException) -> str:
    text = (redact(str(exc)).splitlines() or [""])[0]
    return (text or type(exc).__name__)[:300]


# -- the delivery pass ---------------------------------------------------------------------------

def deliver(rt: Runtime, *, request_id: str | None = None, force: bool = False, limit: int = BATCH) -> Pass:
    """Send what is due (`request_id`: only that request's rows; `force`: those not yet due too, as right after the
    event). Rows past their expiry are marked expired. Safe side by side with other passes: each row is claimed."""
    done = Pass()
    done.attempts.extend(_expire(rt, request_id, limit))
    token = str(uuid.uuid4())
    for row in _claim(rt, token, request_id, force, limit):
        done.attempts.append(_attempt(rt, row, token))
    counts = done.counts()
    if any(counts.values()):
        log.info("report_back.pass", **counts)
    return done


def _claimable(now: datetime) -> sa.ColumnElement[bool]:
    return sa.and_(OutboxMessage.status == OutboxStatus.PENDING,
                   sa.or_(OutboxMessage.claimed_until.is_(None), OutboxMessage.claimed_until < now))


def _locked(query: sa.Select[OutboxMessage], s: Session) -> sa.Select[OutboxMessage]:
    if s.get_bind().dialect.name == "postgresql":
        return query.with_for_update(skip_locked=True)  # held by another pass: not ours this time
    return query


def _expire(rt: Runtime, request_id: str | None, limit: int) -> list[Attempt]:
    now = rt.clock()
    out: list[Attempt] = []
    with rt.sessions.begin() as s:
        query = sa.select(OutboxMessage).where(_claimable(now), OutboxMessage.expires_at <= now)
        if request_id is not None:
            query = query.where(OutboxMessage.request_id == request_id)
        for row in list(s.scalars(_locked(query.order_by(OutboxMessage.id).limit(limit), s))):
            row.status, row.claimed_by, row.claimed_until = OutboxStatus.EXPIRED, None, None
            attempt = Attempt(row.id, row.kind, row.event, OutboxStatus.EXPIRED, row.attempts, error=row.last_error,
                              target=row.target)
            _audit(s, row, attempt, now)
            out.append(attempt)
    for a in out:
        log.warning("report_back.expired", outbox=a.row_id, kind=a.kind, attempts=a.attempt)
    return out


def _claim(rt: Runtime, token: str, request_id: str | None, force: bool, limit: int) -> list[OutboxMessage]:
    now = rt.clock()
    with rt.sessions.begin() as s:
        query = sa.select(OutboxMessage).where(_claimable(now), OutboxMessage.expires_at > now)
        if request_id is not None:
            query = query.where(OutboxMessage.request_id == request_id)
        if not force:
            query = query.where(OutboxMessage.next_attempt_at <= now)
        rows = list(s.scalars(_locked(query.order_by(OutboxMessage.next_attempt_at, OutboxMessage.id)
                                      .limit(limit), s)))
        for row in rows:
            row.claimed_by, row.claimed_until = token, now + LEASE
    return rows


def _attempt(rt: Runtime, row: OutboxMessage, token: str) -> Attempt:
    now = rt.clock()
    number = row.attempts + 1
    try:
        status, note_id = _send(rt, row, now)
    except Exception as exc:
        retry_after = exc.retry_after if isinstance(exc, TransientError) else None
        refused = refuses(exc)
        outcome = Attempt(row.id, row.kind, row.event, OutboxStatus.REFUSED if refused else OutboxStatus.PENDING,
                          number, http_status=http_status(exc), error=one_line(exc), target=row.target)
        if not refused:
            outcome.next_attempt_at = min(now + backoff(number, retry_after), row.expires_at)
        if not isinstance(exc, ConnectorError | CallbackRefused | NotConfigured):  # not one we expected
            log.warning("report_back.unexpected", outbox=row.id, error=type(exc).__name__)
    else:
        outcome = Attempt(row.id, row.kind, row.event, OutboxStatus.DELIVERED, number, http_status=status,
                          note_id=note_id, target=row.target)
    _record(rt, row.id, token, outcome)
    log.info("report_back.attempt", outbox=row.id, request_id=row.request_id, kind=row.kind,
             status=outcome.status, attempt=number, http_status=outcome.http_status)
    return outcome


def _record(rt: Runtime, row_id: int, token: str, outcome: Attempt) -> None:
    """The attempt's outcome, written only while the claim is still ours (a lapsed lease may have been taken)."""
    now = rt.clock()
    with rt.sessions.begin() as s:
        row = s.get(OutboxMessage, row_id, with_for_update=True)
        if row is None or row.claimed_by != token:
            log.warning("report_back.claim_lost", outbox=row_id)
            return
        row.attempts, row.status = outcome.attempt, outcome.status
        row.claimed_by = row.claimed_until = None
        row.last_error = outcome.error
        if outcome.status == OutboxStatus.DELIVERED:
            row.delivered_at = now
        if outcome.next_attempt_at is not None:
            row.next_attempt_at = outcome.next_attempt_at
        _audit(s, row, outcome, now)


def _audit(s: Session, row: OutboxMessage, outcome: Attempt, now: datetime) -> None:
    subject_hash = s.scalar(sa.select(Request.subject_hash).where(Request.id == row.request_id))
    s.add(AuditEvent(event="report_back.attempt", actor="report-back", at=now, request_id=row.request_id,
                     subject_hash=subject_hash, details=outcome.details()))


# -- the sweeper's job ---------------------------------------------------------------------------

_passes: dict[int, threading.Thread] = {}
_passes_lock = threading.Lock()


def sweep(rt: Runtime) -> bool:
    """The workers' sweeper: start a delivery pass in a thread of its own, unless this process runs one already, so a
    receiver that hangs never holds up the re-waking of lost work. Never raises; True if a pass was started."""
    with _passes_lock:
        running = _passes.get(id(rt))
        if running is not None and running.is_alive():
            return False
        thread = threading.Thread(target=_background, args=(rt,), name="dsar-report-back", daemon=True)
        _passes[id(rt)] = thread
    thread.start()  # a process stopping mid-send leaves its claim to run out: the row is sent again later
    return True


def _background(rt: Runtime) -> None:
    try:
        deliver(rt)
    except Exception as exc:  # the ledger away: the next sweep tries again
        log.warning("report_back.pass_failed", error=one_line(exc))


# -- what status shows -----------------------------------------------------------------------------

def state(rt: Runtime, request_id: str) -> list[dict[str, Any]]:
    """The request's report-back, oldest first: kind, event, status, attempts, next attempt (while pending), when
    delivered, the last error (one scrubbed line). The payload is not shown."""
    with rt.sessions() as s:
        rows: Sequence[OutboxMessage] = s.scalars(sa.select(OutboxMessage).where(
            OutboxMessage.request_id == request_id).order_by(OutboxMessage.id)).all()
    return [{"id": r.id, "kind": r.kind, "event": r.event, "status": r.status, "attempts": r.attempts,
             "target": safe_url(r.target) if r.kind == CALLBACK else r.target,
             "next_attempt_at": r.next_attempt_at.isoformat() if r.status == OutboxStatus.PENDING else None,
             "delivered_at": r.delivered_at.isoformat() if r.delivered_at else None,
             "expires_at": r.expires_at.isoformat(), "last_error": r.last_error} for r in rows]

"""The ledger forgets: `ledger.retention_days` after a request ended, its personal data is blanked.

While a request runs, and for a while after (follow-up questions, a complaint to the supervisory
authority), the ledger needs the subject's e-mail and what discovery learned about them. After that it
needs only the proof: what was asked, when, what each system did (counts, statuses, dates). So a request
that ended (`completed_at`, else its last update) more than `ledger.retention_days` ago gets:

- `subject_email` (and `requester_email`) replaced by a marker; `subject_hash`, the keyed HMAC of the
  e-mail, stays, so a repeat request from the same person is still recognised (`earlier_requests`);
- every learned identifier's value replaced by a marker (type, source, round and provenance stay);
- task results scrubbed: vendor references, values inside receipt notes (ids, names), attachment record
  ids and file names are blanked; counts, statuses, entities, hold dates and the notes' texts stay;
- the request's report-back (outbox rows: ticket notes and callbacks, which may carry names in the operator's
  reason or a download link) loses its payload; a row still pending then is expired, never sent blank;
- `purged_at` set, which makes the purge idempotent.

Finished scheduled actions (done, cancelled, failed) lose their e-mail and identifiers on the same terms;
scheduled ones keep them (a legal hold's end still has to find the person). Every batch writes one audit
event with counts only. Run by `dsar ledger purge` and by the workers' sweeper (`sweep`, at most hourly).
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog

from connectors.emails import normalise_email
from discovery.engine.ledger import (
    OPEN_STATUSES,
    AuditEvent,
    OutboxMessage,
    OutboxStatus,
    Request,
    ScheduledAction,
    SubjectIdentity,
    Task,
)
from discovery.engine.runtime import Runtime

log = structlog.get_logger(__name__)

MARKER = "[purged]"
BATCH = 200  # requests per transaction: short locks, and a crash loses at most one batch's work (none: it is redone)
_FINISHED_ACTIONS = ("done", "cancelled", "failed")
_HELD_KEYS = ("entity", "records", "until", "reason", "ends")  # what a hold entry keeps: no record ids


@dataclass
class PurgeResult:
    cutoff: datetime
    retention_days: int
    dry_run: bool = False
    requests: int = 0
    identities: int = 0
    tasks: int = 0
    scheduled_actions: int = 0
    outbox: int = 0  # report-back messages whose payload was blanked

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cutoff": self.cutoff.isoformat()}

    @property
    def changed(self) -> int:
        return self.requests + self.scheduled_actions


def _due_requests(cutoff: datetime) -> sa.Select[Request]:
    ended = sa.func.coalesce(Request.completed_at, Request.updated_at)
    return sa.select(Request).where(Request.purged_at.is_(None), Request.status.not_in(list(OPEN_STATUSES)),
                                    ended < cutoff)


def _due_actions(cutoff: datetime) -> sa.Select[ScheduledAction]:
    ended = sa.func.coalesce(ScheduledAction.done_at, ScheduledAction.created_at)
    return sa.select(ScheduledAction).where(ScheduledAction.status.in_(_FINISHED_ACTIONS),
                                            ScheduledAction.subject_email != MARKER, ended < cutoff)


def purge(rt: Runtime, *, dry_run: bool = False, actor: str = "sweeper", batch: int = BATCH) -> PurgeResult:
    """Blank the personal data of requests that ended more than ledger.retention_days ago. Idempotent."""
    days = rt.settings.ledger.retention_days
    result = PurgeResult(cutoff=rt.clock() - timedelta(days=days), retention_days=days, dry_run=dry_run)
    if dry_run:
        return _count(rt, result)
    while True:
        with rt.sessions.begin() as s:
            done = PurgeResult(result.cutoff, days)
            for req in s.scalars(_due_requests(result.cutoff).order_by(Request.id).limit(batch)
                                 .with_for_update(skip_locked=True)):  # two sweepers never scrub one row twice
                _scrub_request(s, req, rt.clock(), done)
            for action in s.scalars(_due_actions(result.cutoff).order_by(ScheduledAction.id).limit(batch)
                                    .with_for_update(skip_locked=True)):
                _scrub_action(action)
                done.scheduled_actions += 1
            if not done.changed:
                break
            s.add(AuditEvent(event="ledger.purged", actor=actor, request_id=None, subject_hash=None,
                             at=rt.clock(), details={k: v for k, v in done.to_dict().items() if k != "dry_run"}))
        for name in ("requests", "identities", "tasks", "scheduled_actions", "outbox"):
            setattr(result, name, getattr(result, name) + getattr(done, name))
    if result.changed:
        log.info("ledger.purged", requests=result.requests, identities=result.identities, tasks=result.tasks,
                 scheduled_actions=result.scheduled_actions, outbox=result.outbox, retention_days=days)
    return result


def _count(rt: Runtime, result: PurgeResult) -> PurgeResult:
    with rt.sessions() as s:
        ids = sa.select(_due_requests(result.cutoff).subquery().c.id)
        result.requests = s.scalar(sa.select(sa.func.count()).select_from(_due_requests(result.cutoff).subquery())) or 0
        result.identities = s.scalar(sa.select(sa.func.count()).where(SubjectIdentity.request_id.in_(ids))) or 0
        result.tasks = s.scalar(sa.select(sa.func.count()).where(Task.request_id.in_(ids),
                                                                  Task.result.is_not(None))) or 0
        result.scheduled_actions = s.scalar(sa.select(sa.func.count()).select_from(
            _due_actions(result.cutoff).subquery())) or 0
        result.outbox = s.scalar(sa.select(sa.func.count()).where(OutboxMessage.request_id.in_(ids))) or 0
    return result


def _scrub_request(s: sa.orm.Session, req: Request, now: datetime, done: PurgeResult) -> None:
    req.subject_email = MARKER
    if req.requester_email:
        req.requester_email = MARKER
    req.purged_at = now
    done.requests += 1
    for ident in s.scalars(sa.select(SubjectIdentity).where(SubjectIdentity.request_id == req.id)):
        ident.value = f"{MARKER} {ident.id}"  # (request, type, value) is unique: one marker per row
        done.identities += 1
    for task in s.scalars(sa.select(Task).where(Task.request_id == req.id, Task.result.is_not(None))):
        task.result = scrub_result(task.result)
        done.tasks += 1
    # A message still pending this late is expired rather than sent blank; delivered ones keep their record.
    s.execute(sa.update(OutboxMessage).where(OutboxMessage.request_id == req.id,
                                             OutboxMessage.status == OutboxStatus.PENDING)
              .values(status=OutboxStatus.EXPIRED, claimed_by=None, claimed_until=None),
              execution_options={"synchronize_session": False})
    scrubbed = s.execute(sa.update(OutboxMessage).where(OutboxMessage.request_id == req.id)
                         .values(payload=MARKER), execution_options={"synchronize_session": False})
    done.outbox += scrubbed.rowcount  # type: ignore[attr-defined]


def _scrub_action(action: ScheduledAction) -> None:
    action.subject_email = MARKER
    details = dict(action.details or {})
    if "identities" in details:
        details["identities"] = len(details["identities"] or [])  # how many, not which
    action.details = details


def scrub_result(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """A task's result (an export's staging summary or a receipt) without values that could name the person."""
    if not result:
        return result
    out = dict(result)
    if "vendor_refs" in out:
        out["vendor_refs"] = [MARKER for _ in out["vendor_refs"] or []]
    for texts, notes in (("details", "notes"), ("manual_steps", "manual_notes")):
        if notes in out:
            out[notes] = [_scrub_note(n) for n in out[notes] or []]
        if texts in out:
            scrubbed = out.get(notes) or []
            out[texts] = ([_render(n) for n in scrubbed] if len(scrubbed) == len(out[texts] or [])
                          else [MARKER for _ in out[texts] or []])
    if isinstance(out.get("error_note"), dict):
        out["error_note"] = _scrub_note(out["error_note"])
    if "held" in out:
        out["held"] = [{k: v for k, v in h.items() if k in _HELD_KEYS} for h in out["held"] or []
                       if isinstance(h, dict)]
    if "files" in out:  # an export's attachments: their record ids and names may name the person
        out["files"] = [{**f, "record_id": MARKER, "path": MARKER} for f in out["files"] or [] if isinstance(f, dict)]
    out["purged"] = True
    return out


def _scrub_value(value: Any) -> Any:
    if isinstance(value, bool | int | float) or value is None:
        return value  # counts and flags
    if isinstance(value, list):
        return [_scrub_value(v) for v in value]
    if isinstance(value, dict) and "msgid" in value:
        return _scrub_note(value)
    return MARKER


def _scrub_note(note: Any) -> Any:
    if not isinstance(note, dict):
        return MARKER
    return {**note, "params": {k: _scrub_value(v) for k, v in (note.get("params") or {}).items()}}


def _render(note: Any) -> str:
    from connectors.base import Note

    try:
        return Note.from_dict(note).render()
    except (KeyError, IndexError, ValueError, TypeError):
        return MARKER


def earlier_requests(rt: Runtime, email: str) -> list[Request]:
    """Every request of this person, purged ones included: the keyed hash of the e-mail still finds them."""
    with rt.sessions() as s:
        return list(s.scalars(sa.select(Request).where(Request.subject_hash == rt.subject_hash(normalise_email(email)))
                              .order_by(Request.received_at)))


# -- the sweeper's job ---------------------------------------------------------------------------

SWEEP_EVERY = 3600.0  # seconds; the purge is a daily matter, the sweeper runs every few seconds
_last_sweep: dict[int, float] = {}
_sweep_lock = threading.Lock()


def sweep(rt: Runtime, every: float = SWEEP_EVERY) -> PurgeResult | None:
    """The workers' sweeper job: purge at most once per `every` seconds per runtime; never raises."""
    with _sweep_lock:
        now = time.monotonic()
        if now - _last_sweep.get(id(rt), -every) < every:
            return None
        _last_sweep[id(rt)] = now
    try:
        return purge(rt, actor="sweeper")
    except Exception:  # a ledger hiccup must not stop the sweeper; the next hour tries again
        log.exception("ledger.purge_failed")
        return None

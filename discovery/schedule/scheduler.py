"""Promises kept later: erasures scheduled for a future date, claimed when due and turned into requests.

Kinds of `scheduled_actions` rows:
- `erasure`: an account was deleted; erased after the grace period unless restored (cancelled);
- `inactivity_erasure`: an account inactive too long; the person was told (discovery.schedule.inactivity),
  and it is erased after the notice period unless they became active again;
- `hold_end_erasure`: an erasure kept records under a legal hold; when the hold ends they go
  (only in the systems that held them);
- `newsletter_erasure` / `trial_erasure` (discovery.schedule.marketing): the person unsubscribed, or their
  trial ended; erased in the marketing system only, unless that no longer holds when due.

An action's `details["systems"]` limits the request it becomes to those systems (None: all).

Long waits live in the ledger, never in broker delays. A scheduler claims a batch of due rows
with `SELECT ... FOR UPDATE SKIP LOCKED` (PostgreSQL; SQLite serialises writers with BEGIN
IMMEDIATE), so schedulers running side by side share the work without overlap, and in the same
transaction opens one erasure request per action (ticket `schedule:<id>`, source `schedule`)
and marks the action done. A scheduler killed half-way therefore leaves every action as it was;
one that committed has run each exactly once. `claimed_by` / `claimed_at` say who did it.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from connectors.base import Identities, Identity, IdentityType
from connectors.emails import normalise_email
from connectors.redact import redact
from discovery.engine import pipeline
from discovery.engine.ledger import AuditEvent, Request, RequestType, ScheduledAction, SubjectIdentity, Task
from discovery.engine.runtime import Ended, Runtime, TaskOutcome

log = structlog.get_logger(__name__)

KIND_ERASURE = "erasure"  # account deleted: erased after the grace period
KIND_INACTIVITY = "inactivity_erasure"
KIND_HOLD_END = "hold_end_erasure"
KIND_NEWSLETTER = "newsletter_erasure"  # unsubscribed: newsletter data is kept only while subscribed
KIND_TRIAL = "trial_erasure"  # trial data is kept until the trial ends
KINDS = (KIND_ERASURE, KIND_INACTIVITY, KIND_HOLD_END, KIND_NEWSLETTER, KIND_TRIAL)

SCHEDULED, DONE, CANCELLED, FAILED = "scheduled", "done", "cancelled", "failed"
OPEN = (SCHEDULED,)  # claimed and run in one transaction: no lasting "claimed" state
MAX_GRACE = timedelta(days=365)
MAX_ATTEMPTS = 5
_IDENTITY_TYPES = {t.value for t in IdentityType}


# -- scheduling --------------------------------------------------------------------------------

def parse_duration(text: str) -> timedelta:
    """'30d', '12h', '90m', '2w' or a plain number of days; must lie in the future."""
    match = re.fullmatch(r"\s*([+-]?\d+)\s*([wdhm]?)\s*", text or "")
    if not match:
        raise pipeline.InvalidInput(f"cannot read the grace period '{text}' (use e.g. 30d, 12h, 2w)")
    n, unit = int(match.group(1)), match.group(2) or "d"
    delta = {"w": timedelta(weeks=n), "d": timedelta(days=n), "h": timedelta(hours=n), "m": timedelta(minutes=n)}[unit]
    if delta <= timedelta(0):
        raise pipeline.InvalidInput(f"the grace period '{text}' is not in the future")
    return delta


def schedule(rt: Runtime, kind: str, email: str, due_at: datetime, reason: str, actor: str, *,
             source_request_id: str | None = None, details: dict[str, Any] | None = None,
             ) -> tuple[ScheduledAction, bool]:
    """Record a scheduled action, or return the open one it repeats; (action, created).

    An open action of the same kind for the same subject is a repeat (a webhook delivered twice,
    a second sweep), except for hold ends, where each end date is its own action.
    """
    if kind not in KINDS:
        raise pipeline.InvalidInput(f"unknown scheduled action kind '{kind}' (one of: {', '.join(KINDS)})")
    if due_at.tzinfo is None:
        raise pipeline.InvalidInput("the due time must carry a time zone")
    subject = normalise_email(email)
    subject_hash = rt.subject_hash(subject)
    with rt.sessions.begin() as s:
        _lock_subject(s, subject_hash)
        repeat = sa.select(ScheduledAction).where(ScheduledAction.kind == kind,
                                                  ScheduledAction.subject_hash == subject_hash,
                                                  ScheduledAction.status.in_(OPEN))
        if kind == KIND_HOLD_END:
            repeat = repeat.where(ScheduledAction.due_at == due_at)
        existing = s.scalars(repeat.order_by(ScheduledAction.id).limit(1)).first()
        if existing is not None:
            _audit(s, "schedule.repeated", actor, existing)
            return existing, False
        action = ScheduledAction(kind=kind, subject_email=subject, subject_hash=subject_hash, due_at=due_at,
                                 reason=reason, status=SCHEDULED, attempts=0, created_by=actor,
                                 created_at=rt.clock(), source_request_id=source_request_id,
                                 details=details or {})
        s.add(action)
        s.flush()
        _audit(s, "schedule.created", actor, action, kind=kind, due_at=due_at.isoformat())
    log.info("schedule.created", action_id=action.id, kind=kind, due_at=due_at.isoformat())
    return action, True


def account_deletion(rt: Runtime, email: str, grace: timedelta | None, actor: str) -> tuple[ScheduledAction, bool]:
    """The account was deleted: erase the person after the grace period (restorable until then)."""
    grace = timedelta(days=rt.settings.schedule.grace_days) if grace is None else grace
    if grace <= timedelta(0):
        raise pipeline.InvalidInput("the grace period must be in the future")
    if grace > MAX_GRACE:
        raise pipeline.InvalidInput(f"the grace period must be at most {MAX_GRACE.days} days")
    days = grace / timedelta(days=1)
    reason = f"account deleted; erased after a {days:g}-day grace period unless the account is restored"
    return schedule(rt, KIND_ERASURE, email, rt.clock() + grace, reason, actor)


def schedule_account_deletion(rt: Runtime, email: str, grace: timedelta | None, actor: str) -> ScheduledAction:
    """Schedule the erasure of a deleted account (None: the configured grace); a repeat returns the first."""
    return account_deletion(rt, email, grace, actor)[0]


def list_actions(rt: Runtime, include_closed: bool = False, email: str | None = None,
                 limit: int = 500) -> list[ScheduledAction]:
    query = sa.select(ScheduledAction).order_by(ScheduledAction.due_at, ScheduledAction.id).limit(limit)
    if not include_closed:
        query = query.where(ScheduledAction.status.in_((*OPEN, FAILED)))
    if email is not None:
        query = query.where(ScheduledAction.subject_hash == rt.subject_hash(normalise_email(email)))
    with rt.sessions() as s:
        return list(s.scalars(query))


def cancel(rt: Runtime, action_id: int, reason: str, actor: str) -> ScheduledAction:
    """Cancel a scheduled action (e.g. the account was restored); audited with the reason."""
    if not reason.strip():
        raise pipeline.InvalidInput("a reason for cancelling is required")
    with rt.sessions.begin() as s:
        action = s.get(ScheduledAction, action_id, with_for_update=True)
        if action is None:
            raise pipeline.NotFoundError(f"unknown scheduled action {action_id}")
        if action.status != SCHEDULED:
            raise pipeline.InvalidInput(f"scheduled action {action_id} is {action.status}; only a scheduled "
                                        "action can be cancelled")
        _close(action, CANCELLED, rt.clock(), {"cancel_reason": reason.strip()[:500], "cancelled_by": actor})
        _audit(s, "schedule.cancelled", actor, action, reason=reason.strip()[:500])
    log.info("schedule.cancelled", action_id=action_id)
    return action


# -- claiming and running ----------------------------------------------------------------------

@dataclass
class BatchResult:
    claimed: int = 0
    requests: int = 0  # actions turned into a request (a new one, or the subject's open erasure)
    cancelled: int = 0  # no longer applies (active again after an inactivity notice)
    failed: int = 0
    retried: int = 0  # a service was down: due again later
    request_ids: list[str] = field(default_factory=list)

    def add(self, other: BatchResult) -> None:
        for name in ("claimed", "requests", "cancelled", "failed", "retried"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.request_ids += [r for r in other.request_ids if r not in self.request_ids]

    def to_dict(self) -> dict[str, Any]:
        return {"claimed": self.claimed, "requests": self.requests, "cancelled": self.cancelled,
                "failed": self.failed, "retried": self.retried}


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def run_due(rt: Runtime, wake: pipeline.Wakeups, worker: str, batch: int) -> BatchResult:
    """Claim up to `batch` due actions and turn them into erasure requests, all in one transaction.

    Claim, requests and "done" commit together: a scheduler that dies half-way leaves every
    action as it was, and one that commits has done each action exactly once. Workers are woken
    after the commit (if that is lost, the pipeline's sweeper wakes requests left `received`).
    """
    for _ in range(3):
        try:
            result, wakeups = _run_batch(rt, worker, batch)
            break
        except IntegrityError:  # a request for one of these subjects opened meanwhile: the next try joins it
            continue
        except Exception:
            log.exception("schedule.batch_failed", worker=worker)
            result, wakeups = _one_by_one(rt, worker, batch)
            break
    else:
        result, wakeups = _one_by_one(rt, worker, batch)
    for request_id in wakeups:
        wake.discover(request_id)
    if result.claimed:
        log.info("schedule.batch", worker=worker, **result.to_dict())
    return result


def run_scheduler(rt: Runtime, wake: pipeline.Wakeups, *, worker: str, batch: int, once: bool,
                  stop: threading.Event, progress: Callable[[BatchResult], None] | None = None) -> BatchResult:
    """Claim and run due actions until stopped; `once`: until nothing is due (for cron). The periodic jobs (the
    retention run among them) are discovery.schedule.periodic's, run by `dsar scheduler` beside this."""
    total = BatchResult()
    while not stop.is_set():
        result = run_due(rt, wake, worker, batch)
        total.add(result)
        if progress and result.claimed:
            progress(result)
        if result.claimed < batch:
            if once:
                break
            stop.wait(rt.settings.schedule.poll_interval_seconds)
    return total


def _run_batch(rt: Runtime, worker: str, batch: int, only: int | None = None) -> tuple[BatchResult, list[str]]:
    now = rt.clock()
    result, wakeups = BatchResult(), list[str]()
    with rt.sessions.begin() as s:
        query = (sa.select(ScheduledAction).where(ScheduledAction.status == SCHEDULED, ScheduledAction.due_at <= now)
                 .order_by(ScheduledAction.due_at, ScheduledAction.id).limit(batch))
        if only is not None:
            query = query.where(ScheduledAction.id == only)
        if s.get_bind().dialect.name == "postgresql":
            # Rows another scheduler holds are skipped, not waited for: side by side, no overlap.
            query = query.with_for_update(skip_locked=True)
        actions = list(s.scalars(query))
        if not actions:
            return result, wakeups
        result.claimed = len(actions)
        for action in actions:
            action.claimed_at, action.claimed_by, action.attempts = now, worker, action.attempts + 1
        s.add(AuditEvent(event="schedule.claimed", actor=worker, at=now, details={"ids": [a.id for a in actions]}))
        s.flush()
        # The subject's erasure of the same scope may be open already (asked for, or an earlier action): join it,
        # as intake would.
        keys = {_open_key(a) for a in actions}
        open_requests = dict(s.execute(sa.select(Request.open_key, Request.id).where(Request.open_key.in_(keys))).all())
        for action in actions:
            stale = _no_longer_applies(rt, action, now)
            if stale is not None:
                _close(action, CANCELLED, now, {"cancel_reason": stale, "cancelled_by": "scheduler"})
                _audit(s, "schedule.cancelled", worker, action, reason=stale)
                result.cancelled += 1
                continue
            key = _open_key(action)
            request_id = open_requests.get(key)
            if request_id is None:
                request_id = open_requests[key] = _open_request(s, rt, action, now)
                wakeups.append(request_id)
            _close(action, DONE, now, {})
            action.request_id, action.error = request_id, None
            _audit(s, "schedule.done", worker, action, request=request_id)
            result.requests += 1
            if request_id not in result.request_ids:
                result.request_ids.append(request_id)
    return result, wakeups


def _one_by_one(rt: Runtime, worker: str, batch: int) -> tuple[BatchResult, list[str]]:
    """After a failed batch: each action alone, so one that keeps failing cannot hold up the others."""
    with rt.sessions() as s:
        ids = list(s.scalars(sa.select(ScheduledAction.id).where(
            ScheduledAction.status == SCHEDULED, ScheduledAction.due_at <= rt.clock())
            .order_by(ScheduledAction.due_at, ScheduledAction.id).limit(batch)))
    total, wakeups = BatchResult(), list[str]()
    for action_id in ids:
        try:
            result, woken = _run_batch(rt, worker, 1, only=action_id)
        except Exception as exc:
            log.warning("schedule.action_failed", action_id=action_id, error=type(exc).__name__)
            result, woken = _retry_later(rt, action_id, worker, f"{type(exc).__name__}: {redact(str(exc))[:300]}"), []
        total.add(result)
        wakeups += woken
    return total, wakeups


def _open_request(s: Session, rt: Runtime, action: ScheduledAction, now: datetime) -> str:
    """An erasure request as pipeline.submit makes it (source "schedule", ticket "schedule:<id>")."""
    req = pipeline.new_request(rt, RequestType.ERASURE, action.subject_email, action.subject_hash, now,
                               ticket=f"schedule:{action.id}", source="schedule", systems=_scope(action))
    s.add(req)
    s.add(SubjectIdentity(request_id=req.id, type=IdentityType.EMAIL.value, value=action.subject_email,
                          source="request", round=0))
    # Erased rows no longer carry the e-mail; what a hold kept is found by the identifiers learned then.
    seen = {(IdentityType.EMAIL.value, action.subject_email)}
    for ident in (action.details or {}).get("identities") or []:
        key = (ident.get("type"), ident.get("value"))
        if key not in seen and key[0] in _IDENTITY_TYPES and key[1]:
            seen.add(key)
            s.add(SubjectIdentity(request_id=req.id, type=key[0], value=str(key[1]), source=f"schedule:{action.id}",
                                  round=0))
    pipeline.audit(s, "request.received", "scheduler", req, type=req.type, ticket=req.ticket_ref, source="schedule",
                   needs_verification=False, action_id=action.id)
    return req.id


def _scope(action: ScheduledAction) -> list[str] | None:
    systems = (action.details or {}).get("systems")
    return sorted(set(systems)) if systems else None


def _open_key(action: ScheduledAction) -> str:
    return pipeline.open_key(RequestType.ERASURE, action.subject_hash, _scope(action))


def _no_longer_applies(rt: Runtime, action: ScheduledAction, now: datetime) -> str | None:
    """Why a due action should not run any more (it is then cancelled), or None."""
    if action.kind == KIND_INACTIVITY and _active_again(rt, action):
        return "the person was active again after the notice"
    system = (action.details or {}).get("system")
    if not system or action.kind not in (KIND_NEWSLETTER, KIND_TRIAL):
        return None
    conn: Any = rt.connector(system)  # a MauticConnector (discovery.schedule.marketing schedules these)
    if action.kind == KIND_NEWSLETTER and not conn.is_unsubscribed(action.subject_email):
        return f"no longer unsubscribed in {system} (subscribed again, or no contact left)"
    if action.kind == KIND_TRIAL and not conn.trial_ended(action.subject_email, now):
        return f"the trial in {system} has not ended (extended, or no contact left)"
    return None


def _active_again(rt: Runtime, action: ScheduledAction) -> bool:
    """Whether the person was active after the inactivity notice (then the erasure is cancelled)."""
    system = (action.details or {}).get("system")
    if not system:
        return False
    conn = rt.connector(system)
    identities = Identities([Identity(IdentityType.EMAIL, action.subject_email)])
    latest = conn.last_activity(identities)  # type: ignore[attr-defined]
    recorded = action.details.get("last_activity")
    if latest is None:
        return False
    return recorded is None or latest > datetime.fromisoformat(recorded)


def _retry_later(rt: Runtime, action_id: int, worker: str, error: str) -> BatchResult:
    """Count the attempt and try again after a backoff; give up (failed, audited) after MAX_ATTEMPTS."""
    now = rt.clock()
    with rt.sessions.begin() as s:
        action = s.get(ScheduledAction, action_id, with_for_update=True)
        if action is None or action.status != SCHEDULED:
            return BatchResult()
        action.attempts += 1
        action.claimed_at, action.claimed_by, action.error = now, worker, error
        if action.attempts >= MAX_ATTEMPTS:
            _close(action, FAILED, now, {})
            _audit(s, "schedule.failed", worker, action, error=error)
            return BatchResult(claimed=1, failed=1)
        action.due_at = now + timedelta(minutes=2 ** action.attempts)
        _audit(s, "schedule.retry", worker, action, error=error, due_at=action.due_at.isoformat())
    return BatchResult(claimed=1, retried=1)


def _close(action: ScheduledAction, status: str, now: datetime, extra: dict[str, Any]) -> None:
    action.status, action.done_at = status, now
    if extra:
        action.details = {**(action.details or {}), **extra}


def _audit(s: Session, event: str, actor: str, action: ScheduledAction, **details: Any) -> None:
    s.add(AuditEvent(event=event, actor=actor, subject_hash=action.subject_hash,
                     request_id=details.get("request") or action.source_request_id,
                     details={"action_id": action.id, "kind": action.kind, **details}))


def _lock_subject(s: Session, subject_hash: str) -> None:
    """Serialise scheduling for one subject, so two concurrent events make one action (SQLite: BEGIN IMMEDIATE)."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": int(subject_hash[:15], 16)})


# -- hold ends (a task hook, and a completion hook as a safety net) -------------------------------

def record_task_hold_ends(rt: Runtime, task: TaskOutcome) -> None:
    """A task hook (registered in workers.app.setup): as soon as an erase task has applied a legal hold, schedule
    the erasure of the held records for the day after the hold ends, even while other tasks of the request still
    wait for a manual step."""
    if task.action == "erase" and (task.result or {}).get("held"):
        _schedule_hold_ends(rt, task.request_id, task.id)


def record_hold_ends(rt: Runtime, ended: Ended) -> None:
    """A completion hook: after an erasure, schedule what the task hook did not (it failed, or ran before it
    existed). Holds already scheduled are left alone, so running both makes one action per day."""
    if ended.type == RequestType.ERASURE:
        _schedule_hold_ends(rt, ended.id, None)


def _schedule_hold_ends(rt: Runtime, request_id: str, task_id: int | None) -> None:
    """Schedule an erasure for the day after each legal hold the request's erase tasks (or only `task_id`) applied."""
    with rt.sessions() as s:
        req = s.get(Request, request_id)
        if req is None or req.type != "erasure":
            return
        query = sa.select(Task).where(Task.request_id == request_id, Task.action == "erase")
        if task_id is not None:
            query = query.where(Task.id == task_id)
        tasks = list(s.scalars(query))
        identities = [{"type": i.type, "value": i.value}
                      for i in s.scalars(sa.select(SubjectIdentity).where(SubjectIdentity.request_id == request_id)
                                         .order_by(SubjectIdentity.id))]
        email = req.subject_email
    by_day: dict[Any, list[dict[str, Any]]] = {}
    for task in tasks:
        for held in (task.result or {}).get("held") or []:
            ends = held.get("ends")
            if ends is None:  # a receipt that names only the latest end
                ends = [{"until": held["until"], "records": held["records"]}] if held.get("until") else []
            for end in ends:
                until = datetime.fromisoformat(end["until"]).astimezone(UTC)
                by_day.setdefault(until.date(), []).append({
                    "system": task.system, "entity": held["entity"], "records": end["records"],
                    "until": until.isoformat(), "reason": held.get("reason", "")})
    if not by_day:
        return
    # Kept for years: only the identifier types the holding systems search by (data minimisation).
    wanted = set().union(*(rt.connector(system).accepts() for system in {h["system"] for hs in by_day.values()
                                                                          for h in hs}))
    identities = [i for i in identities if i["type"] in wanted]
    for day, holds in sorted(by_day.items()):
        # The day after: every row whose hold ends that day is past it by then.
        due = datetime.combine(day + timedelta(days=1), time(0), UTC)
        if _scheduled_already(rt, email, due, holds):
            continue
        # Only the holding systems: someone who signed up again meanwhile keeps their new data elsewhere.
        action, created = schedule(rt, KIND_HOLD_END, email, due, _hold_reason(holds), "hold-end",
                                   source_request_id=request_id,
                                   details={"holds": holds, "identities": identities,
                                            "systems": sorted({h["system"] for h in holds})})
        if not created:  # another system's hold (or an earlier erasure's) ends the same day: one action for both
            _add_holds(rt, action.id, holds, identities)


def _hold_key(hold: dict[str, Any]) -> tuple[Any, ...]:
    return hold.get("system"), hold.get("entity"), hold.get("until"), hold.get("records")


def _hold_reason(holds: list[dict[str, Any]]) -> str:
    return ("legal hold ends: " + "; ".join(f"{h['system']}.{h['entity']}: {h['records']} kept until "
                                            f"{h['until'][:10]} for {h['reason']}" for h in holds))[:2000]


def _scheduled_already(rt: Runtime, email: str, due: datetime, holds: list[dict[str, Any]]) -> bool:
    """Whether an open hold-end action for this person and day covers every one of `holds`."""
    subject_hash = rt.subject_hash(normalise_email(email))
    with rt.sessions() as s:
        actions = s.scalars(sa.select(ScheduledAction).where(
            ScheduledAction.kind == KIND_HOLD_END, ScheduledAction.subject_hash == subject_hash,
            ScheduledAction.due_at == due, ScheduledAction.status.in_(OPEN)))
        have = {_hold_key(h) for a in actions for h in (a.details or {}).get("holds") or []}
    return all(_hold_key(h) in have for h in holds)


def _add_holds(rt: Runtime, action_id: int, holds: list[dict[str, Any]], identities: list[dict[str, Any]]) -> None:
    """Widen an open hold-end action by more holds (their systems, identifiers and reasons), under the subject's
    lock and the row's, so two tasks finishing together both end up in it."""
    with rt.sessions.begin() as s:
        action = s.get(ScheduledAction, action_id)
        if action is None:
            return
        _lock_subject(s, action.subject_hash)
        s.refresh(action, with_for_update=True)
        if action.status not in OPEN:
            return
        details = dict(action.details or {})
        have = {_hold_key(h) for h in details.get("holds") or []}
        added = [h for h in holds if _hold_key(h) not in have]
        if not added:
            return
        known = {(i.get("type"), i.get("value")) for i in details.get("identities") or []}
        details["holds"] = [*(details.get("holds") or []), *added]
        details["identities"] = [*(details.get("identities") or []),
                                 *(i for i in identities if (i["type"], i["value"]) not in known)]
        details["systems"] = sorted({*(details.get("systems") or []), *(h["system"] for h in added)})
        action.details = details
        action.reason = _hold_reason(details["holds"])
        _audit(s, "schedule.widened", "hold-end", action, systems=details["systems"], holds=len(details["holds"]))
    log.info("schedule.widened", action_id=action_id, holds=len(details["holds"]))

"""Periodic jobs of `dsar scheduler`: the sweeps that keep the privacy policy's time limits without a request.

A small registry, name -> PeriodicJob (what runs, and the setting that says every how many hours; 0: not run by the
scheduler). Built in, in this order: the retention run (discovery.schedule.retention: every rule of the data map,
the inactivity notices and the marketing sweeps among them), bundle expiry (discovery.engine.bundles) and the
ledger's retention purge (discovery.engine.ledger_retention), each once a day by default. Other jobs join with
`register()`.

The lock is the job's row in `periodic_runs`. A scheduler claims a due job in one short transaction: it locks the
row (`SELECT ... FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite serialises writers with BEGIN IMMEDIATE), checks
`next_due_at`, and moves it on by the lease before committing. A second scheduler finds the row locked or not due, so
two schedulers never run a job twice. The job runs outside any transaction; its end sets `next_due_at` one interval
after it started (an hour at most after a failure: the next try comes soon, not tomorrow) and writes one audit
event, `periodic.done` or `periodic.failed`, with counts only. A scheduler killed mid-job leaves the lease: the job
is due again when it runs out. The jobs themselves are idempotent and safe side by side, so a job outliving its
lease costs work, not correctness.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Mapped, Session, mapped_column

from connectors.redact import redact
from discovery.engine.ledger import AuditEvent, Base
from discovery.engine.runtime import Runtime
from discovery.engine.settings import Settings

log = structlog.get_logger(__name__)

LEASE = timedelta(hours=6)  # a claimed job is due again this long after a scheduler died running it
RETRY = timedelta(hours=1)  # after a failure (or a partial run), the job is due again this soon
RUNNING, DONE, FAILED = "running", "done", "failed"
_BUNDLE_BATCH = 500

Counts = Mapping[str, int]


class PeriodicRun(Base):
    """One row per periodic job: the lock, when it is due next, and how its last run went (counts, no personal data)."""

    __tablename__ = "periodic_runs"
    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    next_due_at: Mapped[datetime]
    status: Mapped[str | None] = mapped_column(sa.String(16))
    worker: Mapped[str | None] = mapped_column(sa.String(128))
    last_started_at: Mapped[datetime | None]
    last_finished_at: Mapped[datetime | None]
    counts: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(sa.Text)


@dataclass(frozen=True)
class PeriodicJob:
    name: str
    run: Callable[[Runtime, str], Counts]  # (runtime, actor) -> counts; raises when the job failed
    hours: Callable[[Settings], float]  # the interval, from the settings; 0: the scheduler does not run it
    description: str = ""


@dataclass
class JobOutcome:
    job: str
    status: str  # done | failed
    counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"job": self.job, "status": self.status, "counts": self.counts, "error": self.error}

    def line(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        return f"{self.job}: {self.status}" + (f" ({counts})" if counts else "") + (f": {self.error}" if self.error
                                                                                   else "")


JOBS: dict[str, PeriodicJob] = {}


def register(job: PeriodicJob) -> None:
    """Add a job to every scheduler (a name registered again replaces the earlier job, keeping its place)."""
    JOBS[job.name] = job


# -- the built-in jobs -------------------------------------------------------------------------------

def _retention(rt: Runtime, actor: str) -> Counts:
    """Every retention rule (dsar retention run), the inactivity notice and marketing sweeps included: one mechanism."""
    from discovery.schedule import retention

    try:
        r = retention.run(rt, actor=actor)
    except retention.RetentionBusy:  # someone runs it by hand right now: that run covers today
        return {"rules": 0, "changed": 0, "busy": 1}
    if r.errors:
        raise RuntimeError(f"{len(r.errors)} rule(s) failed: " + "; ".join(r.errors))
    return {"rules": len(r.rules), "changed": r.changed}


def _bundles(rt: Runtime, actor: str) -> Counts:
    from discovery.engine.bundles import expire_bundles

    expired = failed = 0
    while True:  # expire_bundles takes a batch; a backlog (the scheduler was off) is cleared in one run
        batch = expire_bundles(rt, actor=actor, limit=_BUNDLE_BATCH)
        expired += sum(e.deleted for e in batch)
        failed += sum(not e.deleted for e in batch)
        if len(batch) < _BUNDLE_BATCH or not any(e.deleted for e in batch):
            return {"expired": expired, "failed": failed}


def _ledger(rt: Runtime, actor: str) -> Counts:
    from discovery.engine.ledger_retention import purge

    r = purge(rt, actor=actor)
    return {"requests": r.requests, "identities": r.identities, "tasks": r.tasks,
            "scheduled_actions": r.scheduled_actions}


register(PeriodicJob("retention-run", _retention, lambda s: s.schedule.retention_run_hours,
                     "every retention rule, inactivity notices and marketing sweeps included (dsar retention run)"))
register(PeriodicJob("bundle-expiry", _bundles, lambda s: s.schedule.bundle_expiry_hours,
                     "delete bundles past archive.retention_days (dsar bundles expire)"))
register(PeriodicJob("ledger-purge", _ledger, lambda s: s.schedule.ledger_purge_hours,
                     "blank the ledger's personal data past ledger.retention_days (dsar ledger purge)"))


# -- claiming and running ------------------------------------------------------------------------------

def run_due(rt: Runtime, worker: str, jobs: Mapping[str, PeriodicJob] | None = None) -> list[JobOutcome]:
    """Run every job that is due and that no other scheduler holds, one after the other; a failing job is recorded
    and the others still run. Returns what ran."""
    out: list[JobOutcome] = []
    for job in (JOBS if jobs is None else jobs).values():
        hours = job.hours(rt.settings)
        if hours <= 0:
            continue
        interval = timedelta(hours=hours)
        started = _claim(rt, job.name, worker, min(interval, LEASE))
        if started is None:
            continue
        try:
            counts = {k: int(v) for k, v in job.run(rt, "scheduler").items()}
        except Exception as exc:  # the job's failure is recorded; the scheduler goes on with the next
            outcome = JobOutcome(job.name, FAILED, error=_why(exc))
            log.warning("periodic.failed", job=job.name, error=type(exc).__name__)
        else:
            outcome = JobOutcome(job.name, DONE, counts)
        retry_soon = outcome.status == FAILED or bool(outcome.counts.get("failed"))
        _finish(rt, outcome, worker, started + (min(interval, RETRY) if retry_soon else interval))
        out.append(outcome)
    return out


def _why(exc: Exception) -> str:
    return (redact(str(exc)).splitlines() or [""])[0][:300] or type(exc).__name__


def _claim(rt: Runtime, name: str, worker: str, lease: timedelta) -> datetime | None:
    """Take the job if it is due and free: its start time, or None (not due, or another scheduler has it)."""
    now = rt.clock()
    with rt.sessions.begin() as s:
        _ensure_row(s, name, now)
        query = sa.select(PeriodicRun).where(PeriodicRun.name == name)
        if s.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)  # held by another scheduler: not ours this time
        row = s.scalars(query).first()
        if row is None or row.next_due_at > now:
            return None
        row.next_due_at, row.status, row.worker, row.last_started_at = now + lease, RUNNING, worker, now
        s.add(AuditEvent(event="periodic.started", actor=worker, at=now, details={"job": name}))
    return now


def _ensure_row(s: Session, name: str, now: datetime) -> None:
    """A job seen for the first time is due at once; two schedulers adding it together add one row."""
    insert = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
    s.execute(insert(PeriodicRun).values(name=name, next_due_at=now).on_conflict_do_nothing(index_elements=["name"]))


def _finish(rt: Runtime, outcome: JobOutcome, worker: str, next_due: datetime) -> None:
    now = rt.clock()
    with rt.sessions.begin() as s:
        row = s.get(PeriodicRun, outcome.job, with_for_update=True)
        if row is not None:
            row.next_due_at, row.status, row.last_finished_at = next_due, outcome.status, now
            row.counts, row.error = outcome.counts, outcome.error
        s.add(AuditEvent(event=f"periodic.{outcome.status}", actor=worker, at=now,
                         details={"job": outcome.job, "counts": outcome.counts, "next_due_at": next_due.isoformat(),
                                  **({"error": outcome.error} if outcome.error else {})}))
    log.info("periodic.run", job=outcome.job, status=outcome.status, **outcome.counts)


def status(rt: Runtime) -> list[dict[str, Any]]:
    """Each registered job with its interval, last run and next due time (for `dsar scheduler --json`, dashboards)."""
    with rt.sessions() as s:
        rows = {r.name: r for r in s.scalars(sa.select(PeriodicRun))}
    out = []
    for name, job in JOBS.items():
        row = rows.get(name)
        out.append({"job": name, "hours": job.hours(rt.settings), "description": job.description,
                    "status": row.status if row else None,
                    "last_started_at": row.last_started_at.isoformat() if row and row.last_started_at else None,
                    "last_finished_at": row.last_finished_at.isoformat() if row and row.last_finished_at else None,
                    "next_due_at": row.next_due_at.isoformat() if row else None,
                    "counts": row.counts if row else None, "error": row.error if row else None})
    return out

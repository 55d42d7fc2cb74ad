"""Scheduled erasures on real PostgreSQL: grace periods, cancelling, the inactivity rule, and schedulers
running side by side or dying mid-claim (real `dsar scheduler` processes on a Redis broker)."""

from __future__ import annotations

import email
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from discovery.engine import db, pipeline
from discovery.engine.ledger import AuditEvent, Request, ScheduledAction
from discovery.engine.runtime import Runtime
from discovery.engine.settings import load_settings
from discovery.intake.notify import OutboxNotifier
from discovery.schedule import inactivity, scheduler
from sandbox.people import JANE, JOHN, OLA
from tests.conftest import ROOT, SECRET, dsar_env, seed_accounts, write_config
from tests.helpers import SyncWakeups

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def env(tmp_path: Path, pg_database: Callable[[], str]) -> Iterator[dict[str, Any]]:
    ledger, accounts_url = pg_database(), pg_database()
    accounts = seed_accounts(accounts_url)
    config = write_config(tmp_path, ledger)
    environ = {"DSAR_SECRET_KEY": SECRET, "DSAR_ACCOUNTS_DB_URL": accounts_url,
               "DSAR_SCHEDULE_OUTBOX_PATH": str(tmp_path / "outbox")}
    clock = Clock(datetime.now(UTC))
    rt = Runtime(load_settings(config, environ), env=environ, now=clock)
    db.upgrade(rt.engine)
    wake = SyncWakeups()
    wake.rt = rt
    yield {"rt": rt, "wake": wake, "clock": clock, "accounts": accounts, "config": config, "ledger": ledger,
           "accounts_url": accounts_url, "tmp": tmp_path}
    rt.close()
    accounts.dispose()


def action(rt: Runtime, action_id: int) -> ScheduledAction:
    with rt.sessions() as s:
        found = s.get(ScheduledAction, action_id)
        assert found is not None
        return found


def audit_events(rt: Runtime, event: str) -> list[AuditEvent]:
    with rt.sessions() as s:
        return list(s.scalars(sa.select(AuditEvent).where(AuditEvent.event == event).order_by(AuditEvent.id)))


def user(engine: sa.Engine, account_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.text(f"SELECT * FROM users WHERE id = {account_id}")).one()._mapping)


# -- in-process --------------------------------------------------------------------------------

def test_a_deleted_account_is_erased_after_the_grace_period_and_not_before(env: dict[str, Any]) -> None:
    rt, wake, clock = env["rt"], env["wake"], env["clock"]
    t0 = clock.now
    first = scheduler.schedule_account_deletion(rt, JANE.email, None, actor="account-service")
    again = scheduler.schedule_account_deletion(rt, " JANE.doe@example.COM", timedelta(days=3), actor="api")
    assert again.id == first.id  # a repeated event is the same promise
    assert first.kind == "erasure" and first.due_at == t0 + timedelta(days=30) and first.status == "scheduled"

    clock.now = t0 + timedelta(days=29, hours=23)
    assert scheduler.run_due(rt, wake, "s1", 10).claimed == 0
    assert user(env["accounts"], JANE.account_id)["full_name"] == "Jane Doe"

    clock.now = t0 + timedelta(days=30)
    result = scheduler.run_due(rt, wake, "s1", 10)
    assert (result.claimed, result.requests) == (1, 1)
    wake.drain()
    done = action(rt, first.id)
    assert done.status == "done" and done.attempts == 1 and done.claimed_by == "s1"
    with rt.sessions() as s:
        req = s.get(Request, done.request_id)
        assert req is not None
        assert (req.type, req.source, req.ticket_ref, req.status) == ("erasure", "schedule", f"schedule:{first.id}",
                                                                    "completed")
    assert user(env["accounts"], JANE.account_id)["full_name"] == "[redacted]"
    assert user(env["accounts"], JOHN.account_id)["full_name"] == "John Smith"
    assert [e.details["action_id"] for e in audit_events(rt, "schedule.done")] == [first.id]
    assert audit_events(rt, "schedule.created")[0].subject_hash == rt.subject_hash(JANE.email)
    assert all(JANE.email not in str(e.details) for e in audit_events(rt, "schedule.created"))


def test_a_cancelled_erasure_never_runs_and_the_cancel_is_audited(env: dict[str, Any]) -> None:
    rt, wake, clock = env["rt"], env["wake"], env["clock"]
    scheduled = scheduler.schedule_account_deletion(rt, JANE.email, timedelta(days=1), actor="account-service")
    cancelled = scheduler.cancel(rt, scheduled.id, "account restored by support", actor="olav")
    assert cancelled.status == "cancelled"
    [event] = audit_events(rt, "schedule.cancelled")
    assert event.actor == "olav" and event.details["reason"] == "account restored by support"
    clock.now += timedelta(days=2)
    assert scheduler.run_due(rt, wake, "s1", 10).claimed == 0
    assert user(env["accounts"], JANE.account_id)["full_name"] == "Jane Doe"
    with pytest.raises(pipeline.InvalidInput, match="is cancelled; only a scheduled action can be cancelled"):
        scheduler.cancel(rt, scheduled.id, "again", actor="olav")
    with pytest.raises(pipeline.NotFoundError, match="unknown scheduled action 987654"):
        scheduler.cancel(rt, 987654, "restored", actor="olav")
    with pytest.raises(pipeline.InvalidInput, match="a reason for cancelling is required"):
        scheduler.cancel(rt, scheduled.id, "  ", actor="olav")
    # After a cancel, a new deletion event schedules anew.
    assert scheduler.schedule_account_deletion(rt, JANE.email, None, actor="api").id != scheduled.id


@pytest.mark.parametrize(("text", "message"), [
    ("-3d", "is not in the future"), ("0d", "is not in the future"), ("soon", "cannot read the grace period"),
    ("30 days", "cannot read the grace period"), ("", "cannot read the grace period"),
])
def test_unusable_grace_periods_are_refused(text: str, message: str) -> None:
    with pytest.raises(pipeline.InvalidInput, match=message):
        scheduler.parse_duration(text)


def test_grace_periods_out_of_range_are_refused_and_nothing_is_scheduled(env: dict[str, Any]) -> None:
    rt = env["rt"]
    for grace, message in ((timedelta(0), "must be in the future"), (timedelta(days=-1), "must be in the future"),
                           (timedelta(days=400), "at most 365 days")):
        with pytest.raises(pipeline.InvalidInput, match=message):
            scheduler.schedule_account_deletion(rt, JANE.email, grace, actor="test")
    assert scheduler.list_actions(rt, include_closed=True) == []
    assert scheduler.parse_duration("2w") == timedelta(weeks=2) and scheduler.parse_duration("12h") == timedelta(
        hours=12)


def test_inactive_accounts_are_told_then_erased_unless_active_again(env: dict[str, Any]) -> None:
    rt, wake, clock = env["rt"], env["wake"], env["clock"]
    t0 = clock.now
    naive = t0.replace(tzinfo=None)
    with env["accounts"].begin() as conn:
        conn.execute(sa.text("UPDATE users SET last_login_at = :t WHERE id = :id"),
                     [{"t": naive - timedelta(days=25 * 31), "id": JOHN.account_id},
                      {"t": None, "id": OLA.account_id}])  # never logged in: created_at (900 days ago) counts
    outbox = env["tmp"] / "outbox"
    result = inactivity.sweep_inactive(rt, OutboxNotifier(outbox, "privacy@example.no"))
    assert (result.systems, result.inactive, result.notified) == (["accounts"], 2, 2)
    notices = {email.message_from_bytes(p.read_bytes())["To"]: p for p in outbox.glob("*.eml")}
    assert set(notices) == {JOHN.email, OLA.email}
    body = email.message_from_bytes(notices[JOHN.email].read_bytes()).get_payload()
    assert "Example Green Cloud AS" in body and f"{t0 + timedelta(days=30):%d %B %Y}" in body
    # A second sweep tells nobody twice.
    again = inactivity.sweep_inactive(rt, OutboxNotifier(outbox, "privacy@example.no"))
    assert (again.inactive, again.notified, again.already_scheduled) == (2, 0, 2)
    assert len(list(outbox.glob("*.eml"))) == 2

    # Ola logs in during the notice period; when the erasures fall due only John's runs.
    with env["accounts"].begin() as conn:
        conn.execute(sa.text("UPDATE users SET last_login_at = :t WHERE id = :id"),
                     {"t": naive + timedelta(days=3), "id": OLA.account_id})
    clock.now = t0 + timedelta(days=30)
    result_run = scheduler.run_due(rt, wake, "s1", 10)
    assert (result_run.claimed, result_run.requests, result_run.cancelled) == (2, 1, 1)
    wake.drain()
    assert user(env["accounts"], JOHN.account_id)["full_name"] == "[redacted]"
    assert user(env["accounts"], OLA.account_id)["full_name"] == "Ola Nordmann"
    states = {a.subject_hash: a for a in scheduler.list_actions(rt, include_closed=True)}
    assert states[rt.subject_hash(OLA.email)].status == "cancelled"
    assert "active again" in states[rt.subject_hash(OLA.email)].details["cancel_reason"]
    assert states[rt.subject_hash(JOHN.email)].status == "done"
    # John is erased now: the next sweep does not find him (nor tell him) again.
    assert inactivity.sweep_inactive(rt, OutboxNotifier(outbox, "privacy@example.no")).inactive == 0


# -- scheduler processes -------------------------------------------------------------------------

def seed_due(rt: Runtime, n: int, due: datetime) -> list[int]:
    with rt.sessions.begin() as s:
        rows = [ScheduledAction(kind="erasure", subject_email=f"person{k}@example.org",
                                subject_hash=rt.subject_hash(f"person{k}@example.org"), due_at=due,
                                reason="test", status="scheduled", attempts=0, created_by="test", details={})
                for k in range(n)]
        s.add_all(rows)
        s.flush()
        return [r.id for r in rows]


def scheduler_env(env: dict[str, Any], redis_url: str, **extra: str) -> dict[str, str]:
    return dsar_env(env["config"], env["accounts_url"], DSAR_BROKER_URL=redis_url,
                    DSAR_SCHEDULE_OUTBOX_PATH=str(env["tmp"] / "outbox"), **extra)


DSAR = str(Path(sys.executable).parent / "dsar")  # the installed entry point: it carries every part's commands


def start(environ: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([DSAR, "scheduler", "--once", "--json", *args],
                            env=environ, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Wait for a state (not for time): polls `condition` until true or fails naming `what`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def lock_waiters(admin: sa.Engine, database: str, table: str) -> int:
    with admin.connect() as conn:
        return int(conn.execute(sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = :db AND wait_event_type = 'Lock' "
            "AND query ILIKE :q"), {"db": database, "q": f"%{table}%"}).scalar_one())


def ledger_admin(env: dict[str, Any]) -> tuple[sa.Engine, str]:
    url = sa.make_url(env["ledger"])
    return sa.create_engine(url, isolation_level="AUTOCOMMIT"), str(url.database)


def test_two_schedulers_at_once_share_the_work_and_never_run_an_action_twice(env: dict[str, Any],
                                                                             redis_url: str) -> None:
    rt = env["rt"]
    ids = seed_due(rt, 300, datetime.now(UTC) - timedelta(minutes=1))
    admin, database = ledger_admin(env)
    environ = scheduler_env(env, redis_url)
    with sa.create_engine(env["ledger"]).connect() as blocker:
        # Both schedulers start and stop at their first claim until the table is released: truly side by side.
        blocker.execute(sa.text("LOCK TABLE scheduled_actions IN ACCESS EXCLUSIVE MODE"))
        procs = [start(environ, "--batch", "20") for _ in range(2)]
        until(lambda: lock_waiters(admin, database, "scheduled_actions") == 2, "both schedulers to reach a claim")
        blocker.rollback()
    outputs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outputs]
    with rt.sessions() as s:
        actions = list(s.scalars(sa.select(ScheduledAction).where(ScheduledAction.id.in_(ids))))
        requests = list(s.scalars(sa.select(Request).where(Request.source == "schedule")))
    assert all(a.status == "done" and a.attempts == 1 for a in actions)
    done_events = [e.details["action_id"] for e in audit_events(rt, "schedule.done")]
    assert sorted(done_events) == sorted(ids)  # each action ran exactly once
    assert sorted(r.ticket_ref for r in requests) == sorted(f"schedule:{i}" for i in ids)
    by_worker: dict[str, int] = {}
    for a in actions:
        by_worker[a.claimed_by or ""] = by_worker.get(a.claimed_by or "", 0) + 1
    assert len(by_worker) == 2 and all(n >= 20 for n in by_worker.values()), by_worker
    admin.dispose()


@pytest.mark.parametrize("held_table", ["audit_events", "requests"])
def test_a_scheduler_killed_mid_claim_loses_nothing(env: dict[str, Any], redis_url: str, held_table: str) -> None:
    """Killed while claiming (its claim audit waits) or while opening the requests (their insert waits)."""
    rt = env["rt"]
    ids = seed_due(rt, 5, datetime.now(UTC) - timedelta(minutes=1))
    admin, database = ledger_admin(env)
    environ = scheduler_env(env, redis_url)
    with sa.create_engine(env["ledger"]).connect() as blocker:
        blocker.execute(sa.text(f"LOCK TABLE {held_table} IN EXCLUSIVE MODE"))
        proc = start(environ, "--batch", "5")
        until(lambda: lock_waiters(admin, database, held_table) == 1, f"the scheduler to wait on {held_table}")
        with admin.connect() as conn:  # it had claimed the rows (they are locked) when it was stopped
            free = "SELECT count(*) FROM (SELECT id FROM scheduled_actions FOR UPDATE SKIP LOCKED) AS unlocked"
            assert conn.execute(sa.text(free)).scalar_one() == 0
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        blocker.rollback()
    # The half-done claim rolled back: every action is still scheduled, as if nobody had looked.
    assert [(action(rt, i).status, action(rt, i).attempts) for i in ids] == [("scheduled", 0)] * 5
    with rt.sessions() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Request)) == 0
    again = start(environ, "--batch", "5")
    _out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err[-2000:]
    assert all(action(rt, i).status == "done" and action(rt, i).attempts == 1 for i in ids)
    with rt.sessions() as s:
        assert sorted(s.scalars(sa.select(Request.ticket_ref))) == sorted(f"schedule:{i}" for i in ids)
    admin.dispose()


def test_wake_ups_lost_after_the_commit_are_sent_again_by_the_sweeper(env: dict[str, Any]) -> None:
    rt, wake, clock = env["rt"], env["wake"], env["clock"]
    scheduler.schedule_account_deletion(rt, JANE.email, timedelta(days=1), actor="test")

    class DiesBeforeWaking(SyncWakeups):
        def discover(self, request_id: str) -> None:
            raise ConnectionError("the scheduler died before the broker heard of it")

    clock.now += timedelta(days=1)
    with pytest.raises(ConnectionError):
        scheduler.run_due(rt, DiesBeforeWaking(), "s1", 10)
    [done] = scheduler.list_actions(rt, include_closed=True)
    assert done.status == "done" and done.request_id
    clock.now += timedelta(minutes=5)
    assert pipeline.sweep(rt, wake)["discover"] == 1
    wake.drain()
    with rt.sessions() as s:
        req = s.get(Request, done.request_id)
        assert req is not None and req.status == "completed"
    assert user(env["accounts"], JANE.account_id)["full_name"] == "[redacted]"

"""The scheduler's periodic jobs on a real PostgreSQL ledger: once per interval, once across schedulers running at
the same moment, a failing job audited while the others still run, and the built-in jobs with their counts."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from discovery.engine import db
from discovery.engine.ledger import AuditEvent
from discovery.engine.runtime import Runtime
from discovery.engine.settings import load_settings
from discovery.schedule import periodic, retention
from tests.conftest import SECRET, dsar_env, run_dsar, seed_accounts, write_config

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
    environ = {"DSAR_SECRET_KEY": SECRET, "DSAR_ACCOUNTS_DB_URL": accounts_url,
               "DSAR_SCHEDULE_OUTBOX_PATH": str(tmp_path / "outbox"), "DSAR_SCHEDULE_LEDGER_PURGE_HOURS": "12"}
    clock = Clock(datetime.now(UTC))
    rt = Runtime(load_settings(write_config(tmp_path, ledger), environ), env=environ, now=clock)
    db.upgrade(rt.engine)
    yield {"rt": rt, "clock": clock}
    rt.close()
    accounts.dispose()


def events(rt: Runtime, prefix: str = "periodic.") -> list[AuditEvent]:
    with rt.sessions() as s:
        return list(s.scalars(sa.select(AuditEvent).where(AuditEvent.event.startswith(prefix)).order_by(AuditEvent.id)))


def counting(name: str, calls: list[str], hours: float = 24.0, fail: bool = False,
             gate: threading.Event | None = None) -> periodic.PeriodicJob:
    def run(rt: Runtime, actor: str) -> dict[str, int]:
        calls.append(name)
        if gate is not None:
            gate.wait(10)
        if fail:
            raise RuntimeError("the vendor said no\nsecond line never shown")
        return {"seen": len(calls)}

    return periodic.PeriodicJob(name, run, lambda _s: hours)


def test_each_job_runs_once_per_interval(env: dict[str, Any]) -> None:
    rt, clock = env["rt"], env["clock"]
    calls: list[str] = []
    jobs = {"a": counting("a", calls, hours=24), "b": counting("b", calls, hours=6), "off": counting("off", calls, 0)}
    t0 = clock.now
    assert [o.job for o in periodic.run_due(rt, "s1", jobs)] == ["a", "b"]  # a new job is due at once; 0: never
    assert periodic.run_due(rt, "s1", jobs) == []  # ran: not due again within its interval
    clock.now = t0 + timedelta(hours=6, seconds=1)
    assert [o.job for o in periodic.run_due(rt, "s1", jobs)] == ["b"]
    clock.now = t0 + timedelta(hours=23)
    assert [o.job for o in periodic.run_due(rt, "s2", jobs)] == ["b"]
    clock.now = t0 + timedelta(hours=24, seconds=1)
    assert [o.job for o in periodic.run_due(rt, "s2", jobs)] == ["a"]
    assert calls == ["a", "b", "b", "b", "a"]
    done = [e for e in events(rt) if e.event == "periodic.done"]
    assert [e.details["job"] for e in done] == ["a", "b", "b", "b", "a"]
    assert done[0].details["counts"] == {"seen": 1} and done[0].actor == "s1"


def test_two_schedulers_at_once_run_a_job_once(env: dict[str, Any]) -> None:
    rt = env["rt"]
    calls: list[str] = []
    gate = threading.Event()
    jobs = {"slow": counting("slow", calls, gate=gate)}
    barrier = threading.Barrier(4)
    results: list[list[periodic.JobOutcome]] = []

    def scheduler(worker: str) -> None:
        barrier.wait()
        results.append(periodic.run_due(rt, worker, jobs))

    threads = [threading.Thread(target=scheduler, args=(f"s{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    # One holds the job (its run waits on the gate); the others find it claimed (or locked) and return at once.
    deadline = time.monotonic() + 30
    while len(results) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(results) == 3 and calls == ["slow"]
    gate.set()
    for t in threads:
        t.join(timeout=30)
    assert calls == ["slow"]
    assert sorted(len(r) for r in results) == [0, 0, 0, 1]
    assert [e.event for e in events(rt)] == ["periodic.started", "periodic.done"]


def test_a_failing_job_is_audited_retried_sooner_and_the_others_still_run(env: dict[str, Any]) -> None:
    rt, clock = env["rt"], env["clock"]
    calls: list[str] = []
    jobs = {"bad": counting("bad", calls, fail=True), "good": counting("good", calls)}
    t0 = clock.now
    outcomes = periodic.run_due(rt, "s1", jobs)
    assert [(o.job, o.status) for o in outcomes] == [("bad", "failed"), ("good", "done")]
    assert outcomes[0].error == "the vendor said no"  # one line
    failed = [e for e in events(rt) if e.event == "periodic.failed"]
    assert len(failed) == 1 and failed[0].details["error"] == "the vendor said no"
    clock.now = t0 + periodic.RETRY + timedelta(seconds=1)
    assert [o.job for o in periodic.run_due(rt, "s1", jobs)] == ["bad"]  # an hour later, not a day


def test_a_scheduler_that_died_mid_job_leaves_it_due_when_the_lease_runs_out(env: dict[str, Any]) -> None:
    rt, clock = env["rt"], env["clock"]
    calls: list[str] = []
    jobs = {"a": counting("a", calls)}
    t0 = clock.now
    assert periodic._claim(rt, "a", "dead", periodic.LEASE) is not None  # claimed, never finished
    assert periodic.run_due(rt, "s2", jobs) == []
    clock.now = t0 + periodic.LEASE + timedelta(seconds=1)
    assert [o.job for o in periodic.run_due(rt, "s2", jobs)] == ["a"]


def test_the_built_in_jobs_run_with_their_counts_and_intervals(env: dict[str, Any]) -> None:
    rt, clock = env["rt"], env["clock"]
    assert list(periodic.JOBS)[:3] == ["retention-run", "bundle-expiry", "ledger-purge"]
    builtin = {k: v for k, v in periodic.JOBS.items() if k in ("retention-run", "bundle-expiry", "ledger-purge")}
    planned = retention.plan(rt)
    outcomes = {o.job: o for o in periodic.run_due(rt, "s1", builtin)}
    assert set(outcomes) == set(builtin) and all(o.status == "done" for o in outcomes.values()), outcomes
    # one retention run over every rule, the inactivity notice rule the settings state among them
    assert outcomes["retention-run"].counts["rules"] == len(planned)
    assert any(r["mechanism"] == "sweep-inactive" for r in planned), [r["mechanism"] for r in planned]
    due = sum(r.get("due", 0) for r in planned if r["mechanism"] == "retention run")
    assert due and outcomes["retention-run"].counts["changed"] >= due  # what was due went (with what it owned)
    assert not any(r.get("due") for r in retention.plan(rt) if r["mechanism"] == "retention run")
    assert outcomes["bundle-expiry"].counts == {"expired": 0, "failed": 0}
    assert outcomes["ledger-purge"].counts["requests"] == 0
    clock.now += timedelta(hours=12, seconds=1)  # DSAR_SCHEDULE_LEDGER_PURGE_HOURS=12; the rest daily
    assert [o.job for o in periodic.run_due(rt, "s1", builtin)] == ["ledger-purge"]
    status = {s["job"]: s for s in periodic.status(rt)}
    assert status["ledger-purge"]["hours"] == 12 and status["retention-run"]["status"] == "done"


def test_dsar_scheduler_once_periodic_runs_each_job_once_and_says_so(env: dict[str, Any], tmp_path: Path) -> None:
    rt = env["rt"]
    config = rt.settings.source
    environ = dsar_env(config, rt.env["DSAR_ACCOUNTS_DB_URL"], DSAR_SCHEDULE_OUTBOX_PATH=str(tmp_path / "outbox"))
    alive = tmp_path / "alive"
    first = run_dsar(["scheduler", "--once", "--periodic", "--json", "--alive-file", str(alive)], environ)
    assert first.returncode == 0, first.stderr
    ran = {p["job"]: p for p in orjson.loads(first.stdout)["periodic"]}
    assert {"retention-run", "bundle-expiry", "ledger-purge"} <= set(ran)
    assert all(p["status"] == "done" for p in ran.values()) and alive.exists()
    assert "scheduler: ledger-purge: done" in first.stderr
    again = run_dsar(["scheduler", "--once", "--periodic", "--json"], environ)
    assert again.returncode == 0 and orjson.loads(again.stdout)["periodic"] == []  # not due for a day
    plain = run_dsar(["scheduler", "--once", "--json"], environ)  # --once alone: cron's scheduled actions only
    assert plain.returncode == 0 and orjson.loads(plain.stdout)["periodic"] == []

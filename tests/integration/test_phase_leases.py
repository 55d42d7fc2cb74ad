"""A lease for every phase (issue 11.1) on a PostgreSQL ledger: the sweeper never restarts a discovery or merge
whose lease is live and takes over one that lapsed; a system that hangs fails its own locate at
worker.locate_timeout while the request is planned for the others; a second, concurrent merge never overwrites the
bundle the ledger records; a system that stays unreachable spends worker.system_retry_budget, then its task fails
with one line. The last test runs a real Dramatiq worker on a test-owned Redis."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dramatiq
import pytest
import sqlalchemy as sa

from connectors.base import Identities, Record, TransientError
from discovery.engine import db, lifecycle, pipeline
from discovery.engine.ledger import OPEN_STATUSES, AuditEvent, Request, SystemHit, Task
from discovery.engine.runtime import Runtime
from discovery.engine.settings import load_settings
from tests.conftest import ROOT, SECRET, write_config
from tests.helpers import SyncWakeups
from tests.integration.hang_worker import Fine
from workers.app import make_broker

pytestmark = pytest.mark.integration

EMAIL = "p@example.no"


class Slow(Fine):
    """Locate or export waits until the test lets it go (and says when it started waiting)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.started, self.go = threading.Event(), threading.Event()
        self.locates = 0

    def locate(self, identities: Identities) -> Any:
        self.locates += 1
        self.started.set()
        assert self.go.wait(60)
        return super().locate(identities)


class Unreachable(Fine):
    def __init__(self) -> None:
        super().__init__("down")
        self.calls = 0

    def export(self, identities: Identities, entities: Iterable[str] | None = None) -> Iterator[Record]:
        self.calls += 1
        raise TransientError(self.name, "connection refused (127.0.0.1:1)")


class Recorded(SyncWakeups):
    """Wake-ups queued but merges only counted: the tests run merges themselves."""

    def __init__(self, rt: Runtime) -> None:
        super().__init__(rt)
        self.merges: list[str] = []

    def merge(self, request_id: str) -> None:
        self.merges.append(request_id)


def runtime(tmp_path: Path, ledger_url: str, *connectors: Fine, **worker: object) -> Runtime:
    (tmp_path / "datamap.yaml").write_text(
        "controller: {name: Test AS, contact: dpo@example.no}\n"
        "systems: {accounts: {kind: sql, enabled: false, url_env: X, entities: {}}}\n")
    config = write_config(tmp_path, ledger_url, **{"task_lease_seconds": 5, **worker})
    rt = Runtime(load_settings(config, {"DSAR_SECRET_KEY": SECRET}), env={})
    db.upgrade(rt.engine)
    rt._connectors = {c.name: c for c in connectors}
    return rt


def request_row(rt: Runtime, request_id: str) -> Request:
    with rt.sessions() as s:
        req = s.get(Request, request_id)
        assert req is not None
        return req


def events(rt: Runtime, request_id: str) -> list[str]:
    with rt.sessions() as s:
        return list(s.scalars(sa.select(AuditEvent.event).where(AuditEvent.request_id == request_id)
                              .order_by(AuditEvent.id)))


def lapse(rt: Runtime, request_id: str) -> None:
    """What a worker that died (or froze) leaves: a lease nobody renews, now in the past."""
    with rt.sessions.begin() as s:
        s.execute(sa.update(Request).where(Request.id == request_id)
                  .values(lease_until=rt.clock() - timedelta(seconds=1)))


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


def test_a_live_discovery_is_never_restarted_and_a_lapsed_one_is_taken_over(
        tmp_path: Path, pg_database: Callable[[], str]) -> None:
    slow = Slow("slow")
    rt = runtime(tmp_path, pg_database(), slow)
    wake = Recorded(rt)
    request_id = pipeline.submit(rt, wake, "access", EMAIL).request.id
    wake.queue.clear()
    first, _ = in_thread(lambda: pipeline.run_discovery(rt, wake, request_id))
    assert slow.started.wait(10)
    # Longer than the lease (5 s): only the renewals keep it live.
    deadline = time.monotonic() + 7
    while time.monotonic() < deadline:
        assert pipeline.sweep(rt, wake, stale_after=timedelta(0))["discover"] == 0
        time.sleep(0.5)
    assert request_row(rt, request_id).lease_until > rt.clock()  # type: ignore[operator]
    pipeline.run_discovery(rt, wake, request_id)  # a redelivered message finds it busy and returns at once
    assert slow.locates == 1 and not wake.queue
    slow.go.set()
    first.join(10)
    req = request_row(rt, request_id)
    assert req.status == "running" and req.lease_until is None and req.lease_owner is None
    assert events(rt, request_id).count("request.planned") == 1

    # A discovery whose worker died: the sweeper wakes it once its lease lapsed, and the next worker takes over.
    other = pipeline.submit(rt, wake, "erasure", EMAIL).request.id
    with rt.sessions.begin() as s:
        s.execute(sa.update(Request).where(Request.id == other).values(
            status="discovering", lease_owner="a-worker-that-died", lease_until=rt.clock() + timedelta(minutes=1)))
    assert pipeline.sweep(rt, wake, stale_after=timedelta(0))["discover"] == 0  # still live
    lapse(rt, other)
    wake.queue.clear()
    assert pipeline.sweep(rt, wake, stale_after=timedelta(0))["discover"] == 1
    assert [w for w in wake.queue if w[0] == "discover"] == [("discover", other)]
    wake.queue.clear()
    pipeline.run_discovery(rt, wake, other)
    assert request_row(rt, other).status == "running"
    assert events(rt, other).count("request.discovery_taken_over") == 1
    assert events(rt, other).count("request.planned") == 1
    rt.close()


def test_a_hanging_system_fails_its_own_locate_and_the_others_are_planned(
        tmp_path: Path, pg_database: Callable[[], str]) -> None:
    hangs = Slow("hangs")  # never let go: it hangs past the deadline
    rt = runtime(tmp_path, pg_database(), hangs, Fine("fine"), locate_timeout=1.5)
    wake = SyncWakeups(rt)
    request_id = pipeline.submit(rt, wake, "access", EMAIL).request.id
    started = time.monotonic()
    wake.drain()
    assert time.monotonic() - started < 10  # one deadline, not the hanging call
    with rt.sessions() as s:
        hits = {h.system: h for h in s.scalars(sa.select(SystemHit).where(SystemHit.request_id == request_id))}
        tasks = {(t.system, t.action): t.status for t in s.scalars(sa.select(Task).where(
            Task.request_id == request_id))}
    assert hits["hangs"].error == "locate timed out after 1.5s (worker.locate_timeout)"
    assert hits["fine"].found and hits["fine"].error is None
    assert tasks[("fine", "export")] == "done"
    assert hangs.locates == 1  # not asked again in a later round
    req = request_row(rt, request_id)
    assert req.status == "completed_with_errors"
    assert req.error is not None and req.error.startswith("hangs locate: locate timed out after 1.5s")
    hangs.go.set()
    rt.close()


def test_a_second_merge_never_overwrites_the_recorded_bundle(
        tmp_path: Path, pg_database: Callable[[], str], monkeypatch: pytest.MonkeyPatch) -> None:
    rt = runtime(tmp_path, pg_database(), Fine("fine"))
    wake = Recorded(rt)
    request_id = pipeline.submit(rt, wake, "access", EMAIL).request.id
    wake.drain()
    assert wake.merges == [request_id] and request_row(rt, request_id).status == "merging"

    building, go = threading.Event(), threading.Event()

    def stuck(system: str, entity: str, n: int) -> None:  # a slow store: the first merge stops half-way
        building.set()
        assert go.wait(60)

    class Frozen(pipeline.LeaseKeeper):  # a merge whose process froze: its lease is not renewed
        def renew(self) -> None:
            return

    monkeypatch.setattr(pipeline, "LeaseKeeper", Frozen)
    first, first_out = in_thread(lambda: pipeline.merge_request(rt, request_id, progress=stuck))
    assert building.wait(20)
    monkeypatch.undo()
    # Live: neither a redelivered merge nor the sweeper touches it.
    assert pipeline.merge_request(rt, request_id) is None
    assert pipeline.sweep(rt, wake, stale_after=timedelta(0))["merge"] == 0
    # Lapsed: the second merge takes over and records its bundle; the first, let go, must not overwrite it.
    lapse(rt, request_id)
    assert pipeline.sweep(rt, wake, stale_after=timedelta(0))["merge"] == 1
    second = pipeline.merge_request(rt, request_id)
    assert second is not None
    go.set()
    first.join(20)
    assert first_out == [None]
    req = request_row(rt, request_id)
    assert req.status == "completed" and req.bundle_path == second.uri
    stored = Path(urlsplit(req.bundle_path).path)
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == req.bundle_sha256
    assert sorted(p.name for p in stored.parent.iterdir()) == [stored.name]  # the first merge's object is gone
    names = events(rt, request_id)
    assert names.count("request.completed") == 1 and names.count("request.merge_taken_over") == 1
    rt.close()


class Died(BaseException):
    """What a worker killed mid-phase (out of memory, SIGKILL) leaves: nothing after it runs, its lease stays."""


def dies(*_args: object, **_kwargs: object) -> None:
    raise Died


def test_a_discovery_that_stops_its_worker_every_time_fails_after_max_attempts(
        tmp_path: Path, pg_database: Callable[[], str], monkeypatch: pytest.MonkeyPatch) -> None:
    rt = runtime(tmp_path, pg_database(), Fine("fine"), max_attempts=3)
    wake = Recorded(rt)
    request_id = pipeline.submit(rt, wake, "access", EMAIL).request.id
    wake.queue.clear()
    monkeypatch.setattr(pipeline, "discover", dies)
    for _ in range(3):  # the first discovery and two takeovers: three attempts, each killed
        with pytest.raises(Died):
            pipeline.run_discovery(rt, wake, request_id)
        assert request_row(rt, request_id).status == "discovering"
        lapse(rt, request_id)
    pipeline.run_discovery(rt, wake, request_id)  # a fourth would be one too many: the request fails instead
    req = request_row(rt, request_id)
    assert req.status == "failed" and req.lease_owner is None, (req.status, req.lease_owner)
    assert req.error == "discovery gave up after 4 attempts: the worker stopped before finishing each time"
    names = events(rt, request_id)
    assert names.count("request.discovery_taken_over") == 3 and names[-1] == "request.failed", names
    assert pipeline.sweep(rt, wake, stale_after=timedelta(0))["discover"] == 0  # nothing left to re-wake

    # An operator's retry starts the count afresh: the discovery runs again (and, mended, completes).
    monkeypatch.undo()
    lifecycle.retry_request(rt, wake, request_id, None, "operator")
    wake.queue.clear()
    pipeline.run_discovery(rt, wake, request_id)
    assert request_row(rt, request_id).status in ("running", "merging"), request_row(rt, request_id).status
    rt.close()


def test_a_merge_that_stops_its_worker_every_time_fails_and_leaves_no_bundle(
        tmp_path: Path, pg_database: Callable[[], str], monkeypatch: pytest.MonkeyPatch) -> None:
    rt = runtime(tmp_path, pg_database(), Fine("fine"), max_attempts=3)
    wake = Recorded(rt)
    request_id = pipeline.submit(rt, wake, "access", EMAIL).request.id
    wake.drain()
    assert request_row(rt, request_id).status == "merging"
    archive = Path(rt.settings.archive.path)
    # Each merge dies after storing its bundle, before recording it: three attempts, three unrecorded bundles.
    monkeypatch.setattr(pipeline, "_record_bundle", dies)
    for attempt in range(1, 4):
        with pytest.raises(Died):
            pipeline.merge_request(rt, request_id)
        assert len(list(archive.glob(f"{request_id}-*.zip"))) == attempt
        lapse(rt, request_id)
    monkeypatch.undo()
    assert pipeline.merge_request(rt, request_id) is None  # a fourth attempt would be one too many
    req = request_row(rt, request_id)
    assert req.status == "failed" and req.lease_owner is None and req.bundle_path is None
    assert req.error == "the bundle could not be built after 4 attempts: the worker stopped before finishing each time"
    assert not list(archive.glob(f"{request_id}-*")), list(archive.iterdir())  # every dead merge's bundle removed
    assert not (Path(rt.settings.archive.staging_path) / request_id).exists()  # staged data: no further use
    names = events(rt, request_id)
    assert names.count("request.merge_taken_over") == 3 and names[-1] == "request.failed", names
    assert pipeline.sweep(rt, wake, stale_after=timedelta(0))["merge"] == 0

    # An operator's retry runs the exports and the merge again, its takeovers counted afresh.
    lifecycle.retry_request(rt, wake, request_id, None, "operator")
    wake.drain()
    built = pipeline.merge_request(rt, request_id)
    assert built is not None and request_row(rt, request_id).status == "completed"
    assert [p.name for p in archive.glob(f"{request_id}-*")] == [Path(urlsplit(built.uri).path).name]
    rt.close()


def test_a_merge_after_a_chain_of_dead_ones_removes_every_bundle_they_stored(
        tmp_path: Path, pg_database: Callable[[], str], monkeypatch: pytest.MonkeyPatch) -> None:
    rt = runtime(tmp_path, pg_database(), Fine("fine"))  # max_attempts 5: the third merge is allowed
    wake = Recorded(rt)
    request_id = pipeline.submit(rt, wake, "access", EMAIL).request.id
    wake.drain()
    archive = Path(rt.settings.archive.path)
    monkeypatch.setattr(pipeline, "_record_bundle", dies)
    for _ in range(2):  # two merges in a row die after storing their bundles
        with pytest.raises(Died):
            pipeline.merge_request(rt, request_id)
        lapse(rt, request_id)
    monkeypatch.undo()
    assert len(list(archive.glob(f"{request_id}-*.zip"))) == 2
    built = pipeline.merge_request(rt, request_id)
    assert built is not None
    req = request_row(rt, request_id)
    assert req.status == "completed" and req.bundle_path == built.uri
    stored = Path(urlsplit(req.bundle_path).path)
    assert [p.name for p in archive.glob(f"{request_id}-*")] == [stored.name]  # both dead merges' copies gone
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == req.bundle_sha256
    rt.close()


def test_an_unreachable_system_spends_its_retry_budget_then_fails_with_one_line(
        tmp_path: Path, pg_database: Callable[[], str]) -> None:
    down = Unreachable()
    rt = runtime(tmp_path, pg_database(), down, max_attempts=50, system_retry_budget=2)
    wake = SyncWakeups(rt)
    request_id = pipeline.submit(rt, wake, "access", EMAIL).request.id
    wake.queue.clear()
    pipeline.run_discovery(rt, wake, request_id)
    ((_, task_id),) = list(wake.queue)
    wake.queue.clear()
    started = time.monotonic()
    while True:
        try:
            pipeline.execute_task(rt, wake, task_id)
            break
        except pipeline.RetryLater:
            assert time.monotonic() - started < 10
            time.sleep(0.3)
    with rt.sessions() as s:
        task = s.get(Task, task_id)
        assert task is not None
    assert task.status == "failed" and 2 <= down.calls < 50
    assert task.error is not None and "\n" not in task.error
    assert task.error.startswith(f"gave up after {down.calls} attempts in ")
    assert task.error.endswith("s (worker.system_retry_budget): connection refused (127.0.0.1:1)")
    wake.drain()
    req = request_row(rt, request_id)
    assert req.status == "completed_with_errors" and "down export: gave up after" in (req.error or "")
    rt.close()


def test_a_hanging_vendor_stalls_no_request_under_a_real_worker(
        tmp_path: Path, pg_database: Callable[[], str], redis_url: str) -> None:
    """Production shape: a Dramatiq worker (2 threads) with its sweeper on; every locate of `hangs` never answers.
    Each request is discovered once (no restarts), planned for `fine`, and ends naming `hangs`, in bounded time."""
    (tmp_path / "datamap.yaml").write_text(
        "controller: {name: Test AS, contact: dpo@example.no}\n"
        "systems: {accounts: {kind: sql, enabled: false, url_env: X, entities: {}}}\n")
    config = write_config(tmp_path, pg_database(), redis_url, task_lease_seconds=5, sweep_interval_seconds=0.5,
                          retry_backoff_seconds=0.2, locate_timeout=2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSAR_")}
    env.update({"DSAR_SECRET_KEY": SECRET, "PYTHONUNBUFFERED": "1", "DSAR_LOG_LEVEL": "INFO"})
    rt = Runtime(load_settings(config, env), env=env)
    db.upgrade(rt.engine)
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "tests.integration.hang_worker", str(config)], env=env,
                                  cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    broker = make_broker(rt.settings)  # the worker's broker and queue (broker.namespace), not bound here

    class Wake:
        def discover(self, request_id: str) -> None:
            broker.enqueue(dramatiq.Message(queue_name=rt.settings.broker.namespace, actor_name="discover",
                                            args=(request_id,), kwargs={}, options={}))

        def execute(self, task_id: int) -> None: ...
        def merge(self, request_id: str) -> None: ...

    try:
        deadline = time.monotonic() + 60
        while b"worker ready" not in log_path.read_bytes():
            assert worker.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        started = time.monotonic()
        ids = [pipeline.submit(rt, Wake(), "access", f"p{i}@example.no").request.id for i in range(6)]
        # 6 discoveries on 2 threads, each waiting one 2 s deadline: ~6 s when nothing is restarted.
        deadline = time.monotonic() + 45
        while True:
            with rt.sessions() as s:
                statuses = list(s.scalars(sa.select(Request.status).where(Request.id.in_(ids))))
            if not any(st in OPEN_STATUSES for st in statuses):
                break
            assert time.monotonic() < deadline, (statuses, log_path.read_text()[-3000:])
            time.sleep(0.3)
        assert time.monotonic() - started < 30
        assert statuses == ["completed_with_errors"] * 6
        with rt.sessions() as s:
            planned = s.scalar(sa.select(sa.func.count()).select_from(AuditEvent).where(
                AuditEvent.event == "request.planned")) or 0
            taken = s.scalar(sa.select(sa.func.count()).select_from(AuditEvent).where(
                AuditEvent.event.in_(["request.discovery_taken_over", "request.merge_taken_over"]))) or 0
            errors = set(s.scalars(sa.select(SystemHit.error).where(SystemHit.system == "hangs")))
        assert planned == 6 and taken == 0  # every discovery ran once: the sweeper restarted none
        assert errors == {"locate timed out after 2s (worker.locate_timeout)"}
        # One round each (`hangs` is not asked again): request.planned says how many rounds a discovery took.
        planned_lines = [line for line in log_path.read_text().splitlines() if "request.planned" in line]
        assert len(planned_lines) == 6 and all(" rounds=1 " in f"{line} " for line in planned_lines), planned_lines
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
        rt.close()

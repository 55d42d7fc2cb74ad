"""How many statements one request costs the ledger, phase by phase: a budget that cannot creep back; and the
connections the pools open and ping for bursts and pauses (round trips too).

Measured on PostgreSQL (production's ledger) with the accounts system only, through the pipeline's own functions and
the wake-ups a worker uses. Counted: every statement sent to the ledger's engine (what SQLAlchemy's
`before_cursor_execute` sees) and every savepoint, and apart from them the transactions (each a BEGIN and a COMMIT
more); the account database's own queries are the connector's, not counted.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
import structlog

from connectors import sql_pool
from discovery.engine import db, pipeline
from discovery.engine.ledger import Request, SystemHit
from discovery.engine.runtime import Runtime
from discovery.engine.settings import load_settings
from sandbox.people import JANE
from tests.conftest import SECRET, seed_accounts, write_config
from tests.helpers import SyncWakeups
from workers import logs
from workers.app import install_hooks

pytestmark = pytest.mark.integration


class Statements:
    def __init__(self, engine: sa.Engine) -> None:
        self.phase = "setup"
        self.counts: Counter[str] = Counter()
        self.transactions: Counter[str] = Counter()  # each costs a BEGIN and a COMMIT besides its statements
        self.seen: list[tuple[str, str]] = []
        sa.event.listen(engine, "before_cursor_execute", self._count)
        sa.event.listen(engine, "begin", lambda _conn: self.transactions.update([self.phase]))
        for event in ("savepoint", "release_savepoint", "rollback_savepoint"):  # round trips of their own
            sa.event.listen(engine, event, lambda _conn, name, *_, e=event: self._count(None, None, f"{e} {name}"))

    def _count(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.counts[self.phase] += 1
        self.seen.append((self.phase, " ".join(statement.split())[:120]))


@pytest.fixture
def counted(tmp_path: Path, pg_database: Callable[[], str]) -> Iterator[tuple[Runtime, Statements]]:
    ledger, accounts = pg_database(), pg_database()
    engine = seed_accounts(accounts)
    environ = {"DSAR_SECRET_KEY": SECRET, "DSAR_ACCOUNTS_DB_URL": accounts}
    rt = Runtime(load_settings(write_config(tmp_path, ledger), environ), env=environ)
    db.upgrade(rt.engine)
    install_hooks(rt)  # report-back and hold ends, as every worker has them: nothing to do here must cost nothing
    yield rt, Statements(rt.engine)
    rt.close()
    engine.dispose()


def test_an_access_request_costs_the_ledger_few_statements(counted: tuple[Runtime, Statements]) -> None:
    rt, stmts = counted
    sent = SyncWakeups(rt)  # what would go through the broker
    stmts.phase = "submit"
    rid = pipeline.submit(rt, sent, "access", JANE.email, actor="test").request.id
    assert list(sent.queue) == [("discover", rid)]
    sent.queue.clear()
    stmts.phase = "worker"
    pipeline.run_discovery(rt, pipeline.InlineWakeups(lambda: rt, sent), rid)  # as the discover actor runs it
    assert not sent.queue  # nothing handed on: the SQL system's task and the merge ran in this thread
    stmts.phase = "check"
    with rt.sessions() as s:
        assert s.get(Request, rid).status == "completed"  # type: ignore[union-attr]
    seen = "\n".join(f"{phase}: {sql}" for phase, sql in stmts.seen)
    # submit: the request, its e-mail and its audit event, one statement outside a transaction (1). The worker: claim
    # the discovery with its identifiers, one statement outside a transaction (1); the plan written only while the
    # lease is ours, then identifiers, hits, the task already claimed and the audit event (5); the task's outcome
    # moving the request to its merge under the lease: the request locked, the task, its audit event, the tasks read
    # and the merge's lease (5: the identifiers and hits the merge needs are the discovery's, not read back); the
    # merge's outcome with its audit event, one statement outside a transaction, written only while its lease is
    # ours (1). Hooks with nothing to do cost nothing.
    assert stmts.counts["submit"] <= 1, seen
    assert stmts.counts["worker"] <= 12, seen
    # none at intake; the worker: the plan and the task's outcome (intake, the claim and the merge's outcome are
    # single statements in autocommit, PostgreSQL)
    assert stmts.transactions["submit"] == 0, seen
    assert stmts.transactions["worker"] <= 2, seen


def test_an_access_request_writes_three_info_lines(counted: tuple[Runtime, Statements],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Log lines are a worker's CPU too (issue 15): at INFO an access is received (the API), then planned, its task
    finished and the request completed, one line each (docs/deployment.md, "Logs"); DEBUG adds the discovery's
    rounds and the task's start."""
    rt, _stmts = counted
    monkeypatch.setattr(logs, "_configure_stdlib", lambda quiet: None)  # the root handler keeps its stream
    saved = structlog.get_config()
    try:
        intake, events = {}, {}
        for level in (logging.INFO, logging.DEBUG):
            err = io.StringIO()
            monkeypatch.setattr(sys, "stderr", err)
            logs.configure_logging("json", level=level)
            sent = SyncWakeups(rt)
            rid = pipeline.submit(rt, sent, "access", JANE.email, actor="test").request.id
            intake[level] = [orjson.loads(line)["event"] for line in err.getvalue().splitlines()]
            err.seek(0)
            err.truncate()
            pipeline.run_discovery(rt, pipeline.InlineWakeups(lambda: rt, sent), rid)  # the worker's part
            lines = [orjson.loads(line) for line in err.getvalue().splitlines()]
            assert all(line["request_id"] == rid for line in lines if "request_id" in line), lines
            events[level] = Counter(line["event"] for line in lines)
    finally:
        structlog.configure(**saved)
    assert intake == {logging.INFO: ["request.received"], logging.DEBUG: ["request.received"]}, intake
    assert events[logging.INFO] == {"request.planned": 1, "task.finish": 1, "request.completed": 1}, events
    assert events[logging.DEBUG] - events[logging.INFO] == {"locate.round": 1, "task.start": 1}, events


def test_an_access_request_costs_the_account_database_one_count_no_transactions_and_no_pings(
        counted: tuple[Runtime, Statements]) -> None:
    """The SQL connector's reads: every entity's counts in one statement (not one per entity and reason), and no
    transaction around them on PostgreSQL (autocommit: no BEGIN and ROLLBACK round trips for a reader)."""
    rt, _ = counted
    connector = rt.connector("accounts")
    seen: list[tuple[str, bool]] = []

    def spy(conn: sa.Connection, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append((" ".join(statement.split()), conn.connection.driver_connection.autocommit))  # type: ignore[union-attr]

    pings: list[object] = []
    ping = connector.engine.dialect.do_ping  # type: ignore[attr-defined]
    sent = SyncWakeups(rt)
    for listening in (False, True):  # the first request reflects the tables (once per process): not counted
        if listening:
            sa.event.listen(connector.engine, "before_cursor_execute", spy)  # type: ignore[attr-defined]
            # a ping per checkout (pool_pre_ping) was a round trip of its own for the locate and the export
            connector.engine.dialect.do_ping = lambda conn: pings.append(conn) or ping(conn)  # type: ignore[attr-defined]
        rid = pipeline.submit(rt, sent, "access", JANE.email, actor="test").request.id
        pipeline.run_discovery(rt, pipeline.InlineWakeups(lambda: rt, sent), rid)
    with rt.sessions() as s:
        req = s.get(Request, rid)
        assert req is not None and req.status == "completed"
        hit = s.scalars(sa.select(SystemHit).where(SystemHit.request_id == rid, SystemHit.system == "accounts")).one()
    counted_entities = [name for name, n in hit.counts.items() if n]
    assert len(counted_entities) >= 2  # the test means something only if several entities hold Jane's rows
    counts = [sql for sql, _ in seen if "count(*)" in sql]
    assert len(counts) == 1, counts  # one census for every entity, whatever the schema's size
    assert all(autocommit for _, autocommit in seen), seen
    assert not pings  # connections used a moment ago are not pinged (connectors/sql_pool.py)
    exports = [sql for sql, _ in seen if "count(*)" not in sql and "DISTINCT" not in sql]
    assert len(exports) == len(connector.entities), exports  # type: ignore[attr-defined]


def _hold_at_once(engine: sa.Engine, n: int) -> None:
    """`n` threads each check out a connection, use it and hold it until all `n` do: `n` connections at once."""
    barrier = threading.Barrier(n)

    def hold() -> None:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
            barrier.wait(timeout=30)

    threads = [threading.Thread(target=hold) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not barrier.broken


def test_a_burst_of_twenty_reuses_the_ledgers_connections(counted: tuple[Runtime, Statements]) -> None:
    """The API under 20 clients at once holds 20 ledger connections at once. They stay in the pool for the next burst:
    a connection opened for one checkout and closed after costs a PostgreSQL backend started and stopped each time."""
    rt, _ = counted
    opened: list[object] = []
    sa.event.listen(rt.engine, "connect", lambda dbapi_conn, _record: opened.append(dbapi_conn))
    for burst in range(3):
        before = len(opened)
        _hold_at_once(rt.engine, 20)  # as a burst's intakes are
        if burst:
            assert len(opened) == before, f"burst {burst} opened {len(opened) - before} connections"
    assert rt.engine.pool.checkedin() >= 20  # type: ignore[attr-defined]


def test_after_a_quiet_spell_sequential_work_pings_one_connection(counted: tuple[Runtime, Statements],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Ledger and SQL connector pools hand back the connection given back last (LIFO). In FIFO order sequential work
    cycled through every pooled connection, and after a pause each was pinged on its first use (ping_when_idle): 20
    extra round trips over the first requests after a burst and a quiet spell, in the side-by-side harness the rounds
    that started slow."""
    rt, _ = counted
    monkeypatch.setattr(sql_pool, "PING_AFTER_IDLE_SECONDS", 0.5)
    for engine in (rt.engine, rt.connector("accounts").engine):  # type: ignore[attr-defined]
        pings: list[object] = []
        ping = engine.dialect.do_ping
        monkeypatch.setattr(engine.dialect, "do_ping", lambda c, _p=ping, _l=pings: _l.append(c) or _p(c))
        _hold_at_once(engine, 10)  # ten connections in the pool
        time.sleep(0.8)  # every pooled connection is now due a ping
        pings.clear()
        for _ in range(30):
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        assert len(pings) == 1, f"{len(pings)} pings for 30 sequential checkouts on {engine.url.database}"

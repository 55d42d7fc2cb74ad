"""The hot path's ledger statements on the driver's cursor (connectors/sql_driver.py) write and return what
SQLAlchemy's own execution of the same statements does, on PostgreSQL, production's ledger.

An access and an erasure run through the pipeline's own functions twice, once on the driver and once with the
driver turned off (every statement through SQLAlchemy); the ledger rows each left behind are compared column by
column, with what must differ between two requests (ids, lease owners, the bundle's hash) set aside and timestamps
compared by kind (present, zone-aware). A duplicate open request must still be the IntegrityError intake turns into
"already open", and a statement's listeners must still hear it.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from connectors import sql_driver
from discovery.engine import db, pipeline
from discovery.engine.ledger import TaskStatus
from discovery.engine.ledger_rows import INSERT_REQUEST, INSERT_TASKS
from discovery.engine.runtime import Runtime
from discovery.engine.settings import load_settings
from discovery.intake import api_tokens
from sandbox.people import JANE
from tests.conftest import SECRET, seed_accounts, write_config
from tests.helpers import SyncWakeups
from workers.app import install_hooks

pytestmark = pytest.mark.integration

TABLES = ("requests", "tasks", "identities", "system_hits", "audit_events")
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(\+00:00|Z)?")  # when, in a detail
DIFFERS = {"id", "request_id", "lease_owner", "bundle_sha256", "bundle_size", "bundle_path", "open_key"}


@pytest.fixture
def runtimes(tmp_path: Path, pg_database: Callable[[], str]) -> Iterator[Callable[[], Runtime]]:
    """Runtimes each on a fresh ledger and a freshly seeded account database of its own."""
    made: list[Runtime] = []

    def make() -> Runtime:
        accounts = pg_database()
        seed_accounts(accounts).dispose()
        environ = {"DSAR_SECRET_KEY": SECRET, "DSAR_ACCOUNTS_DB_URL": accounts}
        folder = tmp_path / str(len(made))
        folder.mkdir()
        runtime = Runtime(load_settings(write_config(folder, pg_database()), environ), env=environ)
        db.upgrade(runtime.engine)
        install_hooks(runtime)
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        runtime.close()


@pytest.fixture
def rt(runtimes: Callable[[], Runtime]) -> Runtime:
    return runtimes()


def run(rt: Runtime, kind: str) -> str:
    sent = SyncWakeups(rt)
    rid = pipeline.submit(rt, sent, kind, JANE.email, actor="test").request.id
    sent.queue.clear()
    pipeline.run_discovery(rt, pipeline.InlineWakeups(lambda: rt, sent), rid)
    sent.drain()
    return rid


def normalised(value: Any, rid: str) -> Any:
    if isinstance(value, datetime):
        return ("datetime", value.tzinfo is not None)
    if isinstance(value, str):
        return ISO_TIME.sub("<time>", value.replace(rid, "<request>"))
    if isinstance(value, dict):
        return {k: normalised(v, rid) for k, v in value.items() if k not in DIFFERS}
    if isinstance(value, list):
        return [normalised(v, rid) for v in value]
    return value


def ledger_rows(rt: Runtime, rid: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    with rt.engine.connect() as conn:
        for name in TABLES:
            table = sa.Table(name, sa.MetaData(), autoload_with=conn)
            key = table.c.id if name == "requests" else table.c.request_id
            rows = conn.execute(sa.select(table).where(key == rid).order_by(table.c.id)).mappings()
            out[name] = [{k: normalised(v, rid) for k, v in row.items() if k not in DIFFERS} for row in rows]
    return out


@pytest.mark.parametrize("kind", ["access", "erasure"])
def test_the_driver_writes_what_sqlalchemy_writes(runtimes: Callable[[], Runtime], kind: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[str] = []
    fetch = sql_driver._fetch
    monkeypatch.setattr(sql_driver, "_fetch", lambda cursor, plan, *rest: ran.append(plan.sql) or
                        fetch(cursor, plan, *rest))
    first = runtimes()
    on_driver = run(first, kind)
    assert len(ran) >= 15, ran  # the hot path really ran on the driver: intake, discovery, the task, the merge
    monkeypatch.setattr(sql_driver, "_plan", lambda *_a: None)  # every statement through SQLAlchemy
    ran.clear()
    second = runtimes()  # the same person in a fresh ledger and account database
    through_sqlalchemy = run(second, kind)
    assert not ran
    driver, reference = ledger_rows(first, on_driver), ledger_rows(second, through_sqlalchemy)
    assert reference["requests"][0]["status"] == "completed"
    for name in TABLES:
        assert len(driver[name]) == len(reference[name]), (name, [r.get("event") for r in driver[name]],
                                                           [r.get("event") for r in reference[name]])
        for mine, theirs in zip(driver[name], reference[name], strict=True):
            assert mine == theirs, (name, {k: (mine.get(k), theirs.get(k)) for k in {*mine, *theirs}
                                           if mine.get(k) != theirs.get(k)})


def test_a_duplicate_open_request_is_still_sqlalchemys_integrity_error(rt: Runtime) -> None:
    sent = SyncWakeups(rt)
    first = pipeline.submit(rt, sent, "access", JANE.email, actor="test")
    again = pipeline.submit(rt, sent, "access", JANE.email, actor="test")  # intake catches the IntegrityError
    assert again.created is False and again.request.id == first.request.id
    with rt.engine.begin() as conn, pytest.raises(sa.exc.IntegrityError):
        row = conn.execute(sa.text("SELECT * FROM requests WHERE id = :id"), {"id": first.request.id}).mappings().one()
        sql_driver.execute(conn, INSERT_REQUEST, {**row, "id": "another"})


def test_listeners_hear_the_statements_the_driver_runs(rt: Runtime) -> None:
    heard: list[str] = []
    sa.event.listen(rt.engine, "before_cursor_execute", lambda _c, _cur, sql, *_a: heard.append(sql))
    run(rt, "access")
    assert any(sql.startswith("UPDATE tasks SET") for sql in heard)  # FINISH_TASK, run on the driver
    assert any(sql.startswith("INSERT INTO audit_events") for sql in heard)


def test_api_tokens_are_checked_on_the_driver_as_before(rt: Runtime) -> None:
    """The API's token lookup runs on the driver: its dates come back zone-aware, as the checks compare them."""
    _live, token = api_tokens.create_token(rt, "live", ["submit"], actor="test")
    _old, expired = api_tokens.create_token(rt, "old", ["submit"], actor="test", expires_in=timedelta(seconds=-1))
    _gone, revoked = api_tokens.create_token(rt, "gone", ["submit"], actor="test")
    api_tokens.revoke_token(rt, "gone", actor="test")
    info = api_tokens.authenticate(rt, token, "submit")
    assert info.name == "live" and info.created_at.tzinfo is not None
    with pytest.raises(api_tokens.ScopeMissing):
        api_tokens.authenticate(rt, token, "admin")
    with pytest.raises(api_tokens.TokenRejected, match="expired"):
        api_tokens.authenticate(rt, expired, "submit")
    with pytest.raises(api_tokens.TokenRejected, match="revoked"):
        api_tokens.authenticate(rt, revoked, "submit")
    with pytest.raises(api_tokens.TokenRejected, match="unknown"):
        api_tokens.authenticate(rt, "not-a-token", "submit")


@pytest.mark.parametrize("count", [1, 3])
def test_new_tasks_get_their_ids_in_the_order_given(rt: Runtime, count: int) -> None:
    """One row is a plain execute, several go through psycopg's executemany: ids come back in parameter order."""
    rid = run(rt, "access")
    systems = [f"system-{n}" for n in range(count)][::-1]
    rows = [pipeline._task_row(rid, system, "export", [], TaskStatus.PENDING) for system in systems]
    with rt.engine.begin() as conn:
        ids = sql_driver.scalars(conn, INSERT_TASKS, rows)
        stored = dict(conn.execute(sa.text("SELECT id, system FROM tasks WHERE id = ANY(:ids)"), {"ids": ids}).all())
    assert len(ids) == count and [stored[i] for i in ids] == systems


def _manifest(rt: Runtime, rid: str) -> dict[str, Any]:
    with rt.engine.connect() as conn:
        uri = conn.execute(sa.text("SELECT bundle_path FROM requests WHERE id = :id"), {"id": rid}).scalar_one()
    with zipfile.ZipFile(uri.removeprefix("file://")) as bundle:
        manifest = json.loads(bundle.read("manifest.json"))
    def plain(value: Any) -> Any:  # files hash differently: the two account databases were seeded apart
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items() if k != "sha256"}
        return [plain(v) for v in value] if isinstance(value, list) else value

    return {"identifiers": manifest["subject"]["identifiers"], "systems": plain(normalised(manifest["systems"], rid))}


def test_the_one_statement_steps_write_what_the_transactions_write(runtimes: Callable[[], Runtime],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL's single-statement intake (request, e-mail, audit event), claim (with the identifiers) and merge
    outcome (with its audit event), and the merge built from what the discovery holds (no read back), leave the rows
    and bundle the transactions do."""
    used: list[str] = []
    for name in ("intake_with_audit", "claim_with_seed", "complete_with_audit"):
        real = getattr(pipeline, name)
        monkeypatch.setattr(pipeline, name, lambda *a, _r=real, _n=name, **k: used.append(_n) or _r(*a, **k))
    reads: list[str] = []
    real_inputs = pipeline.merge_inputs
    forget = False  # the second run: the merge reads back what its discovery wrote, as a merge elsewhere does

    def inputs(rt: Runtime, conn: sa.Connection, req: Any, tasks: Any = None, known: Any = None) -> Any:
        reads.append("known" if known is not None else "read")
        return real_inputs(rt, conn, req, tasks, None if forget else known)

    monkeypatch.setattr(pipeline, "merge_inputs", inputs)
    first = runtimes()
    one_statement = run(first, "access")
    assert used == ["intake_with_audit", "claim_with_seed", "complete_with_audit"] and reads == ["known"]
    used.clear()
    reads.clear()
    second = runtimes()
    second.autocommit = None  # as on a ledger without autocommit: every step in its transaction
    forget = True
    in_transactions = run(second, "access")
    assert used == [] and reads == ["known"]
    mine, theirs = ledger_rows(first, one_statement), ledger_rows(second, in_transactions)
    assert [r["event"] for r in mine["audit_events"]] == [r["event"] for r in theirs["audit_events"]]
    for name in TABLES:
        assert mine[name] == theirs[name], name
    assert _manifest(first, one_statement) == _manifest(second, in_transactions)
    assert len(_manifest(first, one_statement)["identifiers"]) >= 2  # the e-mail and what the account taught

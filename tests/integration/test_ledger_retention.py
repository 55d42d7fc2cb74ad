"""The ledger forgets (issue 11, point 6): ledger.retention_days after a request ended its e-mail and learned
identifiers are blanked on the real PostgreSQL ledger; the keyed hash and the receipts (without personal data)
stay, a repeat request is still recognised, nothing younger or still open is touched, and it is idempotent."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from discovery.engine import db, ledger_retention, pipeline
from discovery.engine.ledger import AuditEvent, Request, ScheduledAction, SubjectIdentity, Task
from discovery.engine.ledger_retention import MARKER, purge
from discovery.engine.runtime import Runtime
from discovery.engine.settings import load_settings
from sandbox.people import JANE, JOHN, OLA
from tests.conftest import SECRET, dsar_env, run_dsar, seed_accounts, write_config
from tests.helpers import SyncWakeups

pytestmark = pytest.mark.integration


@pytest.fixture
def env(tmp_path: Path, pg_database: Callable[[], str]) -> Iterator[dict[str, Any]]:
    ledger, accounts = pg_database(), pg_database()
    engine = seed_accounts(accounts)
    config = write_config(tmp_path, ledger)
    environ = {"DSAR_SECRET_KEY": SECRET, "DSAR_ACCOUNTS_DB_URL": accounts}
    rt = Runtime(load_settings(config, environ), env=environ)
    db.upgrade(rt.engine)
    wake = SyncWakeups(rt)
    yield {"rt": rt, "wake": wake, "config": config, "accounts": accounts}
    rt.close()
    engine.dispose()


def run(env: dict[str, Any], request_type: str, email: str, ended_days_ago: int | None) -> str:
    """A request run through the pipeline; then its end moved `ended_days_ago` into the past (None: left open)."""
    rt: Runtime = env["rt"]
    submitted = pipeline.submit(rt, env["wake"], request_type, email, ticket=f"T-{request_type}", actor="test",
                                requester_email="agent@example.net" if request_type == "restriction" else None)
    if ended_days_ago is None:
        return submitted.request.id  # a requester who is not the subject: waits for verification, stays open
    env["wake"].drain()
    with rt.sessions.begin() as s:
        req = s.get(Request, submitted.request.id)
        assert req is not None and req.completed_at is not None, req and req.status
        req.completed_at = rt.clock() - timedelta(days=ended_days_ago)
    return submitted.request.id


def dump(rt: Runtime, request_id: str) -> str:
    """Everything the ledger holds about one request, as text (to look for personal data in)."""
    with rt.engine.connect() as conn:
        parts = [conn.execute(sa.select(table).where(column == request_id)).mappings().all()
                 for table, column in ((Request.__table__, Request.__table__.c.id),
                                       (SubjectIdentity.__table__, SubjectIdentity.__table__.c.request_id),
                                       (Task.__table__, Task.__table__.c.request_id),
                                       (AuditEvent.__table__, AuditEvent.__table__.c.request_id))]
    return orjson.dumps([[dict(r) for r in rows] for rows in parts], default=str).decode().lower()


def personal(person: Any) -> list[str]:
    return [person.email, person.phone, person.matomo_visitor_id, person.first_name.lower()]


def test_purge_blanks_old_requests_keeps_the_proof_and_is_idempotent(env: dict[str, Any]) -> None:
    rt: Runtime = env["rt"]
    old_access = run(env, "access", JANE.email, ended_days_ago=400)
    old_erasure = run(env, "erasure", JOHN.email, ended_days_ago=366)
    young = run(env, "access", OLA.email, ended_days_ago=300)
    still_open = run(env, "restriction", JANE.email, ended_days_ago=None)
    with rt.sessions.begin() as s:  # open, and untouched for years: still not due
        s.get(Request, still_open).updated_at = rt.clock() - timedelta(days=1000)  # type: ignore[union-attr]
        s.add(ScheduledAction(kind="erasure", subject_email=JOHN.email, subject_hash=rt.subject_hash(JOHN.email),
                              due_at=rt.clock() - timedelta(days=500), reason="account deleted", status="done",
                              created_by="test", created_at=rt.clock() - timedelta(days=530),
                              done_at=rt.clock() - timedelta(days=500),
                              details={"identities": [{"type": "phone", "value": JOHN.phone}]}))
        s.add(ScheduledAction(kind="hold_end_erasure", subject_email=JOHN.email,
                              subject_hash=rt.subject_hash(JOHN.email), due_at=rt.clock() + timedelta(days=900),
                              reason="legal hold ends", status="scheduled", created_by="hold-end",
                              created_at=rt.clock() - timedelta(days=500),
                              details={"identities": [{"type": "phone", "value": JOHN.phone}]}))
    with rt.sessions() as s:
        before = {r.id: (r.subject_hash, r.status, r.completed_at) for r in s.scalars(sa.select(Request))}
        john_receipts = {t.action: dict(t.result or {}) for t in s.scalars(
            sa.select(Task).where(Task.request_id == old_erasure))}
    assert any(word in dump(rt, old_access) for word in personal(JANE))  # there to be blanked
    assert john_receipts["erase"]["changed"]

    dry = purge(rt, dry_run=True, actor="test")
    assert (dry.requests, dry.scheduled_actions) == (2, 1) and dry.identities >= 4 and dry.tasks >= 2
    with rt.sessions() as s:  # --dry-run changed nothing
        assert s.get(Request, old_access).subject_email == JANE.email  # type: ignore[union-attr]
        assert not s.scalars(sa.select(AuditEvent).where(AuditEvent.event == "ledger.purged")).all()

    done = purge(rt, actor="test")
    assert (done.requests, done.identities, done.tasks, done.scheduled_actions) == (
        dry.requests, dry.identities, dry.tasks, dry.scheduled_actions)

    for request_id, person in ((old_access, JANE), (old_erasure, JOHN)):
        text = dump(rt, request_id)
        for word in personal(person):
            assert word.lower() not in text, (request_id, word)
        with rt.sessions() as s:
            req = s.get(Request, request_id)
            assert req is not None and req.subject_email == MARKER and req.purged_at is not None
            assert (req.subject_hash, req.status, req.completed_at) == before[request_id]  # the proof stays
            idents = s.scalars(sa.select(SubjectIdentity).where(SubjectIdentity.request_id == request_id)).all()
            assert idents and all(i.value.startswith(MARKER) for i in idents)
            assert {i.type for i in idents} >= {"email"}  # what kinds were used, not which
    with rt.sessions() as s:
        receipts = {t.action: t.result or {} for t in s.scalars(sa.select(Task).where(Task.request_id == old_erasure))}
        assert receipts["erase"]["changed"] == john_receipts["erase"]["changed"]  # counts kept
        assert receipts["erase"]["purged"] is True
        # younger, and still open, requests are untouched
        assert s.get(Request, young).subject_email == OLA.email  # type: ignore[union-attr]
        assert s.get(Request, young).purged_at is None  # type: ignore[union-attr]
        assert s.get(Request, still_open).subject_email == JANE.email  # type: ignore[union-attr]
        assert s.get(Request, still_open).requester_email == "agent@example.net"  # type: ignore[union-attr]
        assert OLA.email in {i.value for i in s.scalars(sa.select(SubjectIdentity).where(
            SubjectIdentity.request_id == young))}
        actions = {a.status: a for a in s.scalars(sa.select(ScheduledAction))}
        assert actions["done"].subject_email == MARKER and actions["done"].details["identities"] == 1
        assert actions["scheduled"].subject_email == JOHN.email  # a hold's end still has to find him
        (event,) = s.scalars(sa.select(AuditEvent).where(AuditEvent.event == "ledger.purged")).all()
    assert event.subject_hash is None and event.request_id is None and event.actor == "test"
    assert event.details["requests"] == 2 and event.details["retention_days"] == 365
    event_text = orjson.dumps(event.details).decode().lower()
    assert not any(w.lower() in event_text for p in (JANE, JOHN) for w in personal(p))

    again = purge(rt, actor="test")  # idempotent: nothing left to do, nothing audited
    assert again.changed == 0 and again.identities == again.tasks == 0
    with rt.sessions() as s:
        assert len(s.scalars(sa.select(AuditEvent).where(AuditEvent.event == "ledger.purged")).all()) == 1

    # a repeat request from Jane: the keyed hash still finds what she asked before
    repeat = pipeline.submit(rt, env["wake"], "access", f"  {JANE.email.upper()} ", actor="test").request
    earlier = {r.id for r in ledger_retention.earlier_requests(rt, JANE.email)}
    assert {old_access, still_open, repeat.id} <= earlier and young not in earlier


def test_the_command_dry_run_and_json(env: dict[str, Any]) -> None:
    rt: Runtime = env["rt"]
    old = run(env, "access", JANE.email, ended_days_ago=400)
    cli_env = dsar_env(env["config"], env["accounts"])
    dry = run_dsar(["ledger", "purge", "--dry-run", "--json"], cli_env)
    assert dry.returncode == 0, dry.stderr
    assert orjson.loads(dry.stdout)["requests"] == 1 and orjson.loads(dry.stdout)["dry_run"] is True
    with rt.sessions() as s:
        assert s.get(Request, old).subject_email == JANE.email  # type: ignore[union-attr]
    done = run_dsar(["ledger", "purge"], cli_env)
    assert done.returncode == 0 and "blanked: 1 request(s)" in done.stdout, done.stderr
    assert JANE.email not in done.stdout + done.stderr
    with rt.sessions() as s:
        assert s.get(Request, old).subject_email == MARKER  # type: ignore[union-attr]
    assert "blanked: 0 request(s)" in run_dsar(["ledger", "purge"], cli_env).stdout


def test_the_sweeper_job_runs_at_most_once_an_interval(env: dict[str, Any]) -> None:
    rt: Runtime = env["rt"]
    run(env, "access", JANE.email, ended_days_ago=400)
    first = ledger_retention.sweep(rt, every=3600)
    assert first is not None and first.requests == 1
    run(env, "access", JOHN.email, ended_days_ago=400)
    assert ledger_retention.sweep(rt, every=3600) is None  # not yet: the interval has not passed
    later = ledger_retention.sweep(rt, every=0)
    assert later is not None and later.requests == 1

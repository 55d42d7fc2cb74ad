"""The request lifecycle on a PostgreSQL ledger (issue 12): list, deny, cancel, retry, audit trail, next actions,
each wrong state a StateConflict; and a system asking to wait (429 with Retry-After) parks its task until then
without spending its attempts."""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import responses
import sqlalchemy as sa

from connectors.base import Identities, PermanentError
from connectors.http import HttpClient, RetryPolicy
from discovery.bundle.archive import local_path
from discovery.engine import db, lifecycle, pipeline
from discovery.engine.ledger import AuditEvent, Request, SystemHit, Task
from discovery.engine.runtime import Runtime
from discovery.engine.settings import load_settings
from sandbox.people import JANE, JOHN, OLA
from tests.conftest import SECRET, seed_accounts, write_config
from tests.helpers import SyncWakeups

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2027, 3, 1, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def env(tmp_path: Path, pg_database: Callable[[], str]) -> Iterator[dict[str, Any]]:
    ledger, accounts = pg_database(), pg_database()
    engine = seed_accounts(accounts)
    config = write_config(tmp_path, ledger)
    environ = {"DSAR_SECRET_KEY": SECRET, "DSAR_ACCOUNTS_DB_URL": accounts}
    clock = Clock()
    rt = Runtime(load_settings(config, environ), env=environ, now=clock)
    db.upgrade(rt.engine)
    yield {"rt": rt, "wake": SyncWakeups(rt), "clock": clock}
    rt.close()
    engine.dispose()


def submit(env: dict[str, Any], kind: str = "access", email: str = JANE.email, ticket: str | None = None,
           drain: bool = True) -> str:
    req = pipeline.submit(env["rt"], env["wake"], kind, email, ticket=ticket, actor="test").request
    if drain:
        env["wake"].drain()
    return req.id


def load(rt: Runtime, request_id: str) -> tuple[Request, list[Task]]:
    with rt.sessions() as s:
        req = s.get(Request, request_id)
        assert req is not None
        return req, list(req.tasks)


def events(rt: Runtime, request_id: str) -> list[tuple[str, str]]:
    with rt.sessions() as s:
        return [(e.event, e.actor) for e in s.scalars(sa.select(AuditEvent).where(
            AuditEvent.request_id == request_id).order_by(AuditEvent.id))]


# -- list ------------------------------------------------------------------------------------

def test_list_filters_pages_and_masks(env: dict[str, Any]) -> None:
    rt, clock = env["rt"], env["clock"]
    done = submit(env, "access", JANE.email, ticket="T-1")
    clock.now += timedelta(days=1)
    late = submit(env, "erasure", JOHN.email, ticket="T-2", drain=False)  # stays received: no worker drains it
    clock.now += timedelta(days=1)
    fresh = submit(env, "access", OLA.email, ticket="T-3", drain=False)
    everything = lifecycle.list_requests(rt)
    assert [i.id for i in everything.items] == [fresh, late, done] and everything.total == 3
    item = everything.items[2]
    assert item.subject == JANE.email and item.subject_masked == "j***@e***.com"
    assert JANE.email not in str(item.to_dict()) and item.to_dict(full_subject=True)["subject_email"] == JANE.email
    assert item.status == "completed" and item.days_left is None and item.ticket == "T-1"
    assert [i.id for i in lifecycle.list_requests(rt, status="open").items] == [fresh, late]
    assert [i.id for i in lifecycle.list_requests(rt, status="completed").items] == [done]
    assert [i.id for i in lifecycle.list_requests(rt, type="erasure").items] == [late]
    assert [i.id for i in lifecycle.list_requests(rt, ticket="T-3").items] == [fresh]
    assert lifecycle.list_requests(rt, overdue=True).total == 0
    later = clock.now + timedelta(days=29, hours=12)  # past `late`'s deadline, not `fresh`'s
    overdue = lifecycle.list_requests(rt, overdue=True, now=later)
    assert [i.id for i in overdue.items] == [late] and overdue.items[0].overdue and overdue.items[0].days_left == -1
    first, second = lifecycle.list_requests(rt, per_page=2), lifecycle.list_requests(rt, page=2, per_page=2)
    assert [i.id for i in first.items + second.items] == [fresh, late, done]
    assert first.total == second.total == 3 and first.pages == 2
    for bad in ({"status": "lost"}, {"type": "forget"}, {"page": 0}, {"per_page": 0}, {"per_page": 10_000}):
        with pytest.raises(pipeline.InvalidInput):
            lifecycle.list_requests(rt, **bad)


def test_mask_email() -> None:
    assert lifecycle.mask_email("ola.nordmann@example.no") == "o***@e***.no"
    assert lifecycle.mask_email("a@localhost") == "a***@l***"
    assert lifecycle.mask_email("[purged]") == "[purged]"


# -- deny and cancel -------------------------------------------------------------------------

def test_deny_an_unverified_request_reports_and_audits(env: dict[str, Any]) -> None:
    rt, wake = env["rt"], env["wake"]
    reported: list[tuple[str, str | None]] = []
    rt.completion_hooks.append(lambda rt_, ended: reported.append((ended.id, load(rt_, ended.id)[0].close_reason)))
    req = pipeline.submit(rt, wake, "access", JANE.email, requester_email="someone@example.org", actor="test").request
    assert req.status == "awaiting_verification"
    assert lifecycle.next_actions(rt, req.id)[0].startswith(f"dsar identity-verified {req.id}")
    denied = lifecycle.deny_request(rt, req.id, "no proof of identity after two reminders", "identity_not_verified",
                                    "dpo-kari")
    assert denied.status == "denied" and denied.close_basis == "identity_not_verified" and denied.open_key is None
    assert reported == [(req.id, "no proof of identity after two reminders")]
    trail = lifecycle.audit_trail(rt, req.id)
    assert trail[-1]["event"] == "request.denied" and trail[-1]["actor"] == "dpo-kari"
    assert trail[-1]["note"] == "no proof of identity after two reminders"
    assert trail[-1]["details"]["basis"] == "identity_not_verified"
    # closed: the person may ask again, and it cannot be denied, cancelled or retried twice
    with pytest.raises(pipeline.StateConflict, match="denied"):
        lifecycle.cancel_request(rt, req.id, "withdrawn", "dpo-kari")
    with pytest.raises(pipeline.StateConflict):
        lifecycle.deny_request(rt, req.id, "again please", "unfounded_or_excessive", "dpo-kari")
    with pytest.raises(pipeline.StateConflict):
        lifecycle.retry_request(rt, wake, req.id, None, "dpo-kari")
    with pytest.raises(pipeline.InvalidInput):
        pipeline.verify_request(rt, wake, req.id, "dpo", "checked")
    assert pipeline.submit(rt, wake, "access", JANE.email, actor="test").created


@pytest.mark.parametrize("bad", [
    {"reason": "", "basis": "unfounded_or_excessive", "actor": "x"},
    {"reason": "no", "basis": "unfounded_or_excessive", "actor": "x"},
    {"reason": "fine reason", "basis": "because", "actor": "x"},
    {"reason": "fine reason", "basis": "unfounded_or_excessive", "actor": "  "},
])
def test_deny_refuses_bad_input(env: dict[str, Any], bad: dict[str, str]) -> None:
    request_id = submit(env, drain=False)
    with pytest.raises(pipeline.InvalidInput):
        lifecycle.deny_request(env["rt"], request_id, **bad)
    assert load(env["rt"], request_id)[0].status == "received"


def test_unknown_request(env: dict[str, Any]) -> None:
    rt, wake, rid = env["rt"], env["wake"], "00000000-0000-0000-0000-000000000000"
    for call in (lambda: lifecycle.deny_request(rt, rid, "a reason", "unfounded_or_excessive", "x"),
                 lambda: lifecycle.cancel_request(rt, rid, "a reason", "x"),
                 lambda: lifecycle.retry_request(rt, wake, rid, None, "x"),
                 lambda: lifecycle.audit_trail(rt, rid), lambda: lifecycle.next_actions(rt, rid)):
        with pytest.raises(pipeline.NotFoundError):
            call()


def test_cancel_stops_pending_tasks_and_keeps_work_done(env: dict[str, Any]) -> None:
    rt, wake = env["rt"], env["wake"]
    request_id = submit(env, "erasure", drain=False)
    kind, arg = wake.queue.popleft()
    assert kind == "discover"
    pipeline.run_discovery(rt, wake, arg)  # planned: its tasks are pending, their wake-ups queued
    _, tasks = load(rt, request_id)
    assert tasks and all(t.status == "pending" for t in tasks)
    cancelled = lifecycle.cancel_request(rt, request_id, "the person withdrew by phone", "dpo-kari")
    assert cancelled.status == "cancelled" and cancelled.close_reason == "the person withdrew by phone"
    wake.drain()  # the queued wake-ups find nothing to claim
    req, tasks = load(rt, request_id)
    assert req.status == "cancelled" and req.bundle_path is None
    assert {t.status for t in tasks} == {"cancelled"} and all(t.attempts == 0 for t in tasks)
    assert pipeline.sweep(rt, wake, stale_after=timedelta(0))["pending_tasks"] == 0
    with pytest.raises(pipeline.StateConflict, match="cancelled"):
        lifecycle.deny_request(rt, request_id, "too late now", "unfounded_or_excessive", "dpo-kari")
    assert ("request.cancelled", "dpo-kari") in events(rt, request_id)


def test_a_task_running_when_cancelled_records_what_it_did(env: dict[str, Any]) -> None:
    rt, wake = env["rt"], env["wake"]
    request_id = submit(env, "access", drain=False)
    pipeline.run_discovery(rt, wake, wake.queue.popleft()[1])
    task_id = wake.queue.popleft()[1]
    conn = rt.connector("accounts")
    real = conn.export

    def export_then_cancel(identities: Identities, entities: list[Any]) -> Any:
        lifecycle.cancel_request(rt, request_id, "withdrawn meanwhile", "dpo-kari")
        return real(identities, entities)

    conn.export = export_then_cancel  # type: ignore[method-assign]
    pipeline.execute_task(rt, wake, task_id)
    req, tasks = load(rt, request_id)
    assert req.status == "cancelled"
    assert [t.status for t in tasks] == ["done"]  # it ran: the receipt stays
    assert not (rt.staging.root / request_id).exists()  # staged data of a closed request is discarded


def test_completed_requests_cannot_be_denied_cancelled_or_retried(env: dict[str, Any]) -> None:
    rt, wake = env["rt"], env["wake"]
    request_id = submit(env)
    assert load(rt, request_id)[0].status == "completed"
    with pytest.raises(pipeline.StateConflict, match="nothing failed"):
        lifecycle.retry_request(rt, wake, request_id, None, "dpo")
    with pytest.raises(pipeline.StateConflict):
        lifecycle.deny_request(rt, request_id, "too late", "unfounded_or_excessive", "dpo")
    with pytest.raises(pipeline.StateConflict):
        lifecycle.cancel_request(rt, request_id, "too late", "dpo")
    assert lifecycle.next_actions(rt, request_id) == [f"dsar download {request_id} -o {request_id}.zip"]


def test_an_open_request_cannot_be_retried(env: dict[str, Any]) -> None:
    request_id = submit(env, drain=False)
    with pytest.raises(pipeline.StateConflict, match="still open"):
        lifecycle.retry_request(env["rt"], env["wake"], request_id, None, "dpo")


# -- retry -----------------------------------------------------------------------------------

def test_retry_runs_the_failed_system_again_and_rebuilds_the_bundle(env: dict[str, Any]) -> None:
    rt, wake = env["rt"], env["wake"]
    conn = rt.connector("accounts")
    real = conn.export

    def broken(identities: Identities, entities: list[Any]) -> Any:
        raise PermanentError("accounts", "SELECT refused: permission denied")

    conn.export = broken  # type: ignore[method-assign]
    request_id = submit(env)
    req, tasks = load(rt, request_id)
    assert req.status == "completed_with_errors" and tasks[0].status == "failed"
    old_bundle = local_path(req.bundle_path)
    assert old_bundle.exists()
    assert lifecycle.next_actions(rt, request_id) == [f"dsar retry {request_id} --system accounts",
                                                      f"dsar download {request_id} -o {request_id}.zip"]
    with pytest.raises(pipeline.InvalidInput, match="nothing failed in billing"):
        lifecycle.retry_request(rt, wake, request_id, ["billing"], "dpo")
    conn.export = real  # type: ignore[method-assign]
    due = req.due_at
    retried = lifecycle.retry_request(rt, wake, request_id, ["accounts"], "dpo-kari")
    assert retried.request.status == "running" and retried.tasks == [
        {"system": "accounts", "action": "export", "why": "failed"}]
    assert not old_bundle.exists()  # the new merge writes a new one
    wake.drain()
    req, tasks = load(rt, request_id)
    assert req.status == "completed" and req.id == request_id and req.due_at == due and req.error is None
    assert tasks[0].status == "done" and tasks[0].attempts == 1
    with zipfile.ZipFile(local_path(req.bundle_path)) as zf:
        assert "data/accounts/users.json" in zf.namelist()
    assert [e for e, _ in events(rt, request_id)].count("request.retried") == 1
    assert ("request.retried", "dpo-kari") in events(rt, request_id)
    with pytest.raises(pipeline.StateConflict):
        lifecycle.retry_request(rt, wake, request_id, None, "dpo")


def test_retry_searches_a_system_whose_locate_failed_again(env: dict[str, Any]) -> None:
    rt, wake = env["rt"], env["wake"]
    conn = rt.connector("accounts")
    real = conn.locate

    def down(identities: Identities) -> Any:
        raise PermanentError("accounts", "connection refused")

    conn.locate = down  # type: ignore[method-assign]
    request_id = submit(env)
    req, _ = load(rt, request_id)
    assert req.status == "completed_with_errors" and "accounts locate" in (req.error or "")
    conn.locate = real  # type: ignore[method-assign]
    retried = lifecycle.retry_request(rt, wake, request_id, None, "dpo")
    assert retried.relocated == {"accounts": None}
    wake.drain()
    req, _ = load(rt, request_id)
    assert req.status == "completed", req.error
    with rt.sessions() as s:
        hit = s.scalars(sa.select(SystemHit).where(SystemHit.request_id == request_id)).one()
        assert hit.error is None and hit.found


def test_retry_a_request_whose_discovery_failed_runs_it_again(env: dict[str, Any]) -> None:
    rt, wake = env["rt"], env["wake"]
    request_id = submit(env, drain=False)
    assert pipeline.fail_request(rt, request_id, "discovery failed: boom")
    assert load(rt, request_id)[0].status == "failed"
    lifecycle.retry_request(rt, wake, request_id, None, "dpo")
    assert load(rt, request_id)[0].status == "received"
    wake.drain()
    assert load(rt, request_id)[0].status == "completed"


def test_retry_refused_while_the_person_has_another_open_request(env: dict[str, Any]) -> None:
    rt, wake = env["rt"], env["wake"]
    request_id = submit(env, drain=False)
    wake.queue.clear()
    assert pipeline.fail_request(rt, request_id, "discovery failed: boom")
    submit(env, drain=False)  # the same person and type, open
    with pytest.raises(pipeline.StateConflict, match="another open access request"):
        lifecycle.retry_request(rt, wake, request_id, None, "dpo")
    assert load(rt, request_id)[0].status == "failed"


# -- waiting for a vendor's rate limit -------------------------------------------------------

@responses.activate
def test_a_429_with_retry_after_parks_the_task_until_then(env: dict[str, Any]) -> None:
    """Contract-style: the vendor answers 429 with Retry-After: 3600 through the real HTTP client."""
    rt, wake, clock = env["rt"], env["wake"], env["clock"]
    url = "https://vendor.example/api/export"
    responses.get(url, status=429, headers={"Retry-After": "3600"}, json={"message": "hourly limit reached"})
    client = HttpClient("accounts", "https://vendor.example", retry=RetryPolicy(attempts=2), sleep=lambda _s: None)
    conn = rt.connector("accounts")
    real = conn.export

    def vendor_export(identities: Identities, entities: list[Any]) -> Any:
        client.json("GET", "/api/export")
        return real(identities, entities)

    conn.export = vendor_export  # type: ignore[method-assign]
    request_id = submit(env)
    req, tasks = load(rt, request_id)
    task = tasks[0]
    assert req.status == "running" and task.status == "waiting"
    assert task.attempts == 0 and task.waits == 1 and task.retrying_since is None
    assert task.retry_at is not None
    assert abs((task.retry_at - (clock.now + timedelta(seconds=3600))).total_seconds()) < 2
    assert task.error is not None and task.error.startswith("waiting until 2027-03-01 10:00 UTC (vendor rate limit)")
    assert any(a.startswith("wait: accounts export runs again at 2027-03-01 10:00")
               for a in lifecycle.next_actions(rt, request_id))
    # A redelivered message does not claim it early, and the sweeper leaves it alone until retry_at.
    pipeline.execute_task(rt, wake, task.id)
    clock.now += timedelta(minutes=59)
    assert pipeline.sweep(rt, wake, stale_after=timedelta(0))["pending_tasks"] == 0
    assert load(rt, request_id)[1][0].status == "waiting"
    # The limit resets: the sweeper wakes it, and this time the vendor answers.
    responses.replace(responses.GET, url, json={"ok": True})
    clock.now += timedelta(minutes=2)
    assert pipeline.sweep(rt, wake, stale_after=timedelta(0))["pending_tasks"] == 1
    wake.drain()
    req, tasks = load(rt, request_id)
    assert req.status == "completed" and tasks[0].status == "done" and tasks[0].attempts == 1


def test_cancel_a_request_with_a_waiting_task(env: dict[str, Any]) -> None:
    rt, wake, clock = env["rt"], env["wake"], env["clock"]
    request_id = submit(env, drain=False)
    pipeline.run_discovery(rt, wake, wake.queue.popleft()[1])
    wake.queue.clear()
    with rt.sessions.begin() as s:
        s.execute(sa.update(Task).where(Task.request_id == request_id).values(
            status="waiting", retry_at=clock.now + timedelta(hours=1)))
    lifecycle.cancel_request(rt, request_id, "withdrawn", "dpo")
    clock.now += timedelta(hours=2)
    assert pipeline.sweep(rt, wake, stale_after=timedelta(0))["pending_tasks"] == 0
    assert [t.status for t in load(rt, request_id)[1]] == ["cancelled"]


def test_a_task_put_back_after_the_request_closed_is_cancelled_by_the_sweeper(env: dict[str, Any]) -> None:
    rt, wake = env["rt"], env["wake"]
    request_id = submit(env, drain=False)
    pipeline.run_discovery(rt, wake, wake.queue.popleft()[1])
    wake.queue.clear()
    lifecycle.cancel_request(rt, request_id, "withdrawn", "dpo")
    with rt.sessions.begin() as s:  # as if a worker released it for a later attempt just after the cancel
        s.execute(sa.update(Task).where(Task.request_id == request_id).values(status="pending"))
    pipeline.sweep(rt, wake, stale_after=timedelta(0))
    assert [t.status for t in load(rt, request_id)[1]] == ["cancelled"]
    wake.drain()
    assert [(t.status, t.attempts) for t in load(rt, request_id)[1]] == [("cancelled", 0)]


def test_the_ticket_note_of_a_denied_request_gives_grounds_and_reason() -> None:
    from discovery.intake.report_back import note_html, outcome_of

    now = datetime(2027, 3, 1, tzinfo=UTC)
    req = Request(id="r-1", type="access", status="denied", ticket_ref="T-1", source="freshdesk", received_at=now,
                  due_at=now + timedelta(days=30), completed_at=now, error=None,
                  close_reason="the fifth identical request <this month>", close_basis="unfounded_or_excessive")
    outcome = outcome_of(req, [], None, "nb")
    assert outcome["request"]["reason"] == req.close_reason and outcome["request"]["basis"] == "unfounded_or_excessive"
    nb = note_html(outcome)
    assert "er ferdig: <b>avvist</b>" in nb and "Grunnlag: åpenbart grunnløs eller overdreven (art. 12(5))" in nb
    assert "Begrunnelse: the fifth identical request &lt;this month&gt;" in nb
    en = note_html(outcome_of(req, [], None, "en"))
    assert "finished: <b>refused</b>" in en and "Grounds: manifestly unfounded or excessive (Art. 12(5))" in en
    cancelled = note_html(outcome_of(Request(**{**{c: getattr(req, c) for c in (
        "id", "type", "ticket_ref", "source", "received_at", "due_at", "completed_at", "error")},
        "status": "cancelled", "close_reason": "withdrawn", "close_basis": None}), [], None, "nb"))
    assert "<b>avbrutt</b>" in cancelled and "Grunnlag" not in cancelled and "Begrunnelse: withdrawn" in cancelled

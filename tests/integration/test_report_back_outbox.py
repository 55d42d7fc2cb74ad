"""Report-back that does not give up (issue 14, point 6), on a PostgreSQL ledger with a local HTTP server standing in
for Freshdesk's notes API and a callback receiver: rows written with the state change, retried with backoff until
delivered or expired, refused at once on an answer that will not change, claimed so two passes send once, a note for
each event (held, extended, denied, cancelled, finished), scrubbed by the ledger purge."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from connectors.http import RetryPolicy
from discovery.engine import db, ledger_retention, lifecycle, pipeline
from discovery.engine.ledger import AuditEvent, OutboxMessage, Request
from discovery.engine.runtime import Runtime
from discovery.engine.settings import load_settings
from discovery.intake import outbox, tickets
from discovery.intake.report_back import report_back
from discovery.schedule import deadlines
from sandbox.people import JANE, JOHN, OLA
from tests.conftest import SECRET, dsar_env, run_dsar, seed_accounts, write_config
from tests.helpers import SyncWakeups

pytestmark = pytest.mark.integration

API_KEY = "fd-outbox-key"
CALLBACK_SECRET = "outbox-callback-secret"
NOTES = "/api/v2/tickets/"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2027, 3, 1, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


class Receiver(ThreadingHTTPServer):
    """Freshdesk's notes endpoint and a callback receiver in one: answers each path prefix from a script (then 201/204),
    optionally slowly, and records every call."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.calls: list[dict[str, Any]] = []
        self.script: dict[str, list[int]] = {}
        self.delay = 0.0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def answer(self, path: str) -> int:
        with self.lock:
            for prefix, statuses in self.script.items():
                if path.startswith(prefix) and statuses:
                    return statuses.pop(0)
        return 201 if path.startswith(NOTES) else 204

    def to(self, prefix: str) -> list[dict[str, Any]]:
        return [c for c in self.calls if c["path"].startswith(prefix)]


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(self.server.delay)
        with self.server.lock:
            self.server.calls.append({"path": self.path, "headers": dict(self.headers), "body": body})
        status = self.server.answer(self.path)
        if self.path.startswith(NOTES) and self.headers.get("Authorization") != \
                "Basic " + base64.b64encode(f"{API_KEY}:X".encode()).decode():
            status = 401
        data = orjson.dumps({"id": len(self.server.calls)}) if status == 201 else b""
        self.send_response(status)
        if status == 429:
            self.send_header("Retry-After", "3600")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        return


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def env(tmp_path: Path, pg_database: Callable[[], str], receiver: Receiver,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    monkeypatch.setattr(outbox, "INLINE_RETRY", RetryPolicy(attempts=1))  # one HTTP call per attempt: countable
    ledger, accounts = pg_database(), pg_database()
    engine = seed_accounts(accounts)
    config = write_config(tmp_path, ledger)
    environ = {"DSAR_SECRET_KEY": SECRET, "DSAR_ACCOUNTS_DB_URL": accounts,
               "DSAR_API_FRESHDESK_DOMAIN": receiver.url, "DSAR_FRESHDESK_API_KEY": API_KEY,
               "DSAR_CALLBACK_SECRET": CALLBACK_SECRET, "DSAR_API_CALLBACK_ALLOW": f'["{receiver.url}"]',
               "DSAR_API_PUBLIC_URL": "https://dsar.example.com"}
    clock = Clock()
    rt = Runtime(load_settings(config, environ), env=environ, now=clock)
    db.upgrade(rt.engine)
    rt.completion_hooks.append(report_back)  # as workers/app.setup registers it
    yield {"rt": rt, "wake": SyncWakeups(rt), "clock": clock, "config": config, "environ": environ}
    rt.close()
    engine.dispose()


def submit(env: dict[str, Any], email: str = JANE.email, ticket: str = "4711", callback: bool = False,
           requester: str | None = None, language: str | None = None, drain: bool = True) -> str:
    rt = env["rt"]
    req = pipeline.submit(rt, env["wake"], "access", email, ticket, "test", source="freshdesk",
                          callback_url=f"{env['rt'].env['DSAR_API_FRESHDESK_DOMAIN']}/callback" if callback else None,
                          requester_email=requester, language=language).request
    if drain:
        env["wake"].drain()  # a failing report-back is audited by the pipeline, never raised out of it
    return req.id


def rows(rt: Runtime, request_id: str | None = None) -> list[OutboxMessage]:
    with rt.sessions() as s:
        q = sa.select(OutboxMessage).order_by(OutboxMessage.id)
        if request_id is not None:
            q = q.where(OutboxMessage.request_id == request_id)
        return list(s.scalars(q))


def attempts(rt: Runtime, request_id: str) -> list[dict[str, Any]]:
    with rt.sessions() as s:
        return [e.details for e in s.scalars(sa.select(AuditEvent).where(
            AuditEvent.request_id == request_id, AuditEvent.event == "report_back.attempt").order_by(AuditEvent.id))]


def status(rt: Runtime, request_id: str) -> str:
    with rt.sessions() as s:
        req = s.get(Request, request_id)
        assert req is not None
        return req.status


# -- retries, refusals, expiry -------------------------------------------------------------------------

def test_a_receiver_down_for_the_first_attempts_gets_each_message_once_and_every_attempt_is_audited(
        env: dict[str, Any], receiver: Receiver) -> None:
    rt, clock = env["rt"], env["clock"]
    receiver.script = {NOTES: [503, 503, 503], "/callback": [502, 429]}
    request_id = submit(env, callback=True)  # completes; the hook's attempt (1) fails on both channels
    assert status(rt, request_id) == "completed"
    first = {r.kind: r for r in rows(rt, request_id)}
    assert set(first) == {"ticket_note", "callback"} and all(r.status == "pending" for r in first.values())
    assert first["ticket_note"].next_attempt_at == clock.now + timedelta(minutes=1)
    assert outbox.deliver(rt).attempts == []  # nothing due before the backoff ran out

    clock.now += timedelta(minutes=1)
    outbox.deliver(rt)  # attempt 2: the note fails again (next in 2 min), the callback gets 429 Retry-After: 1 h
    after = {r.kind: r for r in rows(rt, request_id)}
    assert after["ticket_note"].next_attempt_at == clock.now + timedelta(minutes=2)
    assert after["callback"].next_attempt_at == clock.now + timedelta(hours=1)  # honoured: longer than 2 min
    clock.now += timedelta(minutes=2)
    outbox.deliver(rt)  # note attempt 3 fails
    clock.now += timedelta(minutes=4)
    outbox.deliver(rt)  # note attempt 4: delivered
    clock.now += timedelta(hours=1)
    outbox.deliver(rt)  # callback attempt 3: delivered
    sent_at = clock.now
    clock.now += timedelta(days=1)
    assert outbox.deliver(rt).attempts == []  # delivered once; never again

    assert len(receiver.to(NOTES)) == 4 and len(receiver.to("/callback")) == 3
    done = {r.kind: r for r in rows(rt, request_id)}
    assert {(r.status, r.attempts) for r in done.values()} == {("delivered", 4), ("delivered", 3)}
    assert all(r.last_error is None and r.delivered_at is not None for r in done.values())
    note = [(a["attempt"], a["status"], a.get("http_status")) for a in attempts(rt, request_id)
            if a["kind"] == "ticket_note"]
    assert note == [(1, "pending", None), (2, "pending", None), (3, "pending", None), (4, "delivered", 201)]
    callback = [(a["attempt"], a["status"]) for a in attempts(rt, request_id) if a["kind"] == "callback"]
    assert callback == [(1, "pending"), (2, "pending"), (3, "delivered")]
    trail = orjson.dumps(attempts(rt, request_id)).decode().lower()
    assert JANE.email not in trail and "valid until" not in trail  # no personal data, no payload
    # The callback that got through is signed at the time it was sent, not when the request finished.
    last = receiver.to("/callback")[-1]
    tickets.verify_signature(CALLBACK_SECRET.encode(), last["body"], last["headers"][tickets.SIGNATURE_HEADER],
                             sent_at, 60)
    assert orjson.loads(last["body"])["request"]["id"] == request_id
    assert last["headers"]["Idempotency-Key"] == receiver.to("/callback")[0]["headers"]["Idempotency-Key"]


def test_a_404_is_refused_at_once_and_so_is_a_callback_outside_the_allow_list(
        env: dict[str, Any], receiver: Receiver) -> None:
    rt, clock = env["rt"], env["clock"]
    receiver.script = {NOTES: [404]}
    request_id = submit(env)
    (row,) = rows(rt, request_id)
    assert (row.status, row.attempts) == ("refused", 1) and "HTTP 404" in (row.last_error or "")
    clock.now += timedelta(days=1)
    assert outbox.deliver(rt).attempts == [] and len(receiver.to(NOTES)) == 1

    # A callback URL that got into the ledger before the allow-list changed: refused when sent, nothing sent.
    other = submit(env, JOHN.email, ticket="4712", drain=False)
    with rt.sessions.begin() as s:
        req = s.get(Request, other)
        assert req is not None
        req.callback_url = "http://169.254.169.254/latest/meta-data/"
    env["wake"].drain()
    refused = {r.kind: r for r in rows(rt, other)}
    assert refused["callback"].status == "refused" and "not in api.callback_allow" in (refused["callback"].last_error
                                                                                       or "")
    assert refused["ticket_note"].status == "delivered" and receiver.to("/latest") == []


def test_undelivered_messages_expire_after_report_back_expiry_days(env: dict[str, Any], receiver: Receiver) -> None:
    rt, clock = env["rt"], env["clock"]
    receiver.script = {NOTES: [503] * 1000}
    request_id = submit(env)
    (row,) = rows(rt, request_id)
    assert row.expires_at == clock.now + timedelta(days=7)  # api.report_back_expiry_days
    gaps = []
    while row.status == "pending":
        gaps.append(row.next_attempt_at - clock.now)
        clock.now = row.next_attempt_at
        outbox.deliver(rt)
        (row,) = rows(rt, request_id)
    assert row.status == "expired" and clock.now == row.expires_at
    assert gaps[:4] == [timedelta(minutes=m) for m in (1, 2, 4, 8)] and max(gaps) == timedelta(hours=6)
    assert len(receiver.to(NOTES)) == row.attempts
    assert attempts(rt, request_id)[-1]["status"] == "expired"
    clock.now += timedelta(days=1)
    assert outbox.deliver(rt).attempts == []


def test_two_delivery_passes_at_once_deliver_each_message_once(env: dict[str, Any], receiver: Receiver) -> None:
    rt, clock = env["rt"], env["clock"]
    receiver.script = {NOTES: [503] * 4}
    ids = [submit(env, person.email, ticket=str(4800 + n)) for n, person in enumerate((JANE, JOHN, OLA))]
    held = [submit(env, "someone@example.org", ticket="4900", requester="lawyer@example.net")]
    assert all(r.status == "pending" for r in rows(rt)) and len(rows(rt)) == 4
    clock.now += timedelta(minutes=1)
    receiver.delay = 0.3  # slow enough that both passes are inside at the same time
    barrier = threading.Barrier(2)
    results: list[outbox.Pass] = []

    def one_pass() -> None:
        barrier.wait()
        results.append(outbox.deliver(rt))

    threads = [threading.Thread(target=one_pass) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    sent = [a for p in results for a in p.attempts]
    assert len(sent) == 4 and {a.row_id for a in sent} == {r.id for r in rows(rt)}
    assert all(r.status == "delivered" and r.attempts == 2 for r in rows(rt))
    assert len(receiver.to(NOTES)) == 8  # 4 failed first attempts, then each once
    for request_id in ids + held:
        assert [a["status"] for a in attempts(rt, request_id)] == ["pending", "delivered"]


# -- a note for each event --------------------------------------------------------------------------

def notes(receiver: Receiver, ticket: str) -> list[str]:
    return [orjson.loads(c["body"])["body"] for c in receiver.to(f"{NOTES}{ticket}/notes")]


def test_a_note_for_each_event_held_extended_denied_cancelled_and_finished(env: dict[str, Any],
                                                                           receiver: Receiver) -> None:
    rt = env["rt"]
    held = submit(env, OLA.email, ticket="5001", requester="lawyer@example.net")
    (note,) = notes(receiver, "5001")
    assert "is on hold" in note and held in note and "Deadline: 31 March 2027" in note
    deadlines.extend(rt, held, 20, "three systems to search by hand", "dpo")
    extended = notes(receiver, "5001")[-1]
    assert "extended by 20 days, to <b>20 April 2027</b> (Art. 12(3))" in extended
    assert "Reason: three systems to search by hand" in extended
    lifecycle.deny_request(rt, held, "no power of attorney", "identity_not_verified", "dpo")
    denied = notes(receiver, "5001")[-1]
    assert "finished: <b>refused</b>" in denied and "Reason: no power of attorney" in denied

    cancelled = submit(env, JOHN.email, ticket="5002", requester="partner@example.net", language="nb")
    lifecycle.cancel_request(rt, cancelled, "trukket tilbake av personen", "dpo")
    on_hold, gone = notes(receiver, "5002")
    assert "er satt på vent" in on_hold and "Frist: 31. mars 2027" in on_hold
    assert "er ferdig: <b>avbrutt</b>" in gone and "Begrunnelse: trukket tilbake av personen" in gone

    nb_extended = submit(env, JANE.email, ticket="5003", requester="verge@example.net", language="nb")
    deadlines.extend(rt, nb_extended, 1, "venter på dokumentasjon", "dpo")
    assert "er forlenget med 1 dag, til <b>1. april 2027</b> (art. 12(3))" in notes(receiver, "5003")[-1]

    finished = submit(env, JOHN.email, ticket="5004")  # John's earlier request was cancelled: closed
    (done,) = notes(receiver, "5004")
    assert "finished: <b>completed</b>" in done and "Download link for the person" in done
    assert not any(p.email.encode() in c["body"] for c in receiver.calls for p in (JANE, JOHN, OLA))
    events = {(r.request_id, r.event, r.status) for r in rows(rt)}
    assert events == {(held, "request.held", "delivered"), (held, "request.extended", "delivered"),
                      (held, "request.finished", "delivered"), (cancelled, "request.held", "delivered"),
                      (cancelled, "request.finished", "delivered"), (nb_extended, "request.held", "delivered"),
                      (nb_extended, "request.extended", "delivered"), (finished, "request.finished", "delivered")}
    with rt.sessions() as s:  # the completion hook found the event's row and queued nothing twice
        assert s.scalar(sa.select(sa.func.count()).select_from(AuditEvent).where(
            AuditEvent.request_id == finished, AuditEvent.event == "request.reported")) == 1


def test_the_outbox_row_commits_with_the_state_change_and_status_shows_it(env: dict[str, Any],
                                                                          receiver: Receiver) -> None:
    rt, clock = env["rt"], env["clock"]
    receiver.script = {NOTES: [500]}
    held = submit(env, OLA.email, ticket="5101", requester="lawyer@example.net")
    (row,) = rows(rt, held)
    assert (row.event, row.status, row.attempts) == ("request.held", "pending", 1)
    with rt.sessions() as s:  # in the same transaction as the request: created at the same moment
        req = s.get(Request, held)
        assert req is not None and row.created_at == req.received_at
    cli = dsar_env(env["config"], env["environ"]["DSAR_ACCOUNTS_DB_URL"])
    result = run_dsar(["status", held, "--json"], cli)
    assert result.returncode == 0, result.stderr
    (shown,) = orjson.loads(result.stdout)["report_back"]
    assert shown["status"] == "pending" and shown["attempts"] == 1 and shown["kind"] == "ticket_note"
    assert shown["next_attempt_at"] == (clock.now + timedelta(minutes=1)).isoformat() and "HTTP 500" in \
        shown["last_error"]
    text = run_dsar(["status", held], cli)
    assert "Report-back: ticket note (held) to 5101: pending, 1 attempt(s), next " in text.stdout


def test_the_purge_scrubs_outbox_payloads(env: dict[str, Any], receiver: Receiver) -> None:
    rt, clock = env["rt"], env["clock"]
    receiver.script = {"/callback": [503] * 1000}
    request_id = submit(env, callback=True)
    other = submit(env, JOHN.email, ticket="4713")
    assert {r.status for r in rows(rt, request_id)} == {"delivered", "pending"}
    clock.now += timedelta(days=rt.settings.ledger.retention_days + 1)
    result = ledger_retention.purge(rt)
    assert result.requests == 2 and result.outbox == 3
    assert all(r.payload == ledger_retention.MARKER for r in rows(rt))
    assert {r.kind: r.status for r in rows(rt, request_id)} == {"ticket_note": "delivered", "callback": "expired"}
    assert {r.status for r in rows(rt, other)} == {"delivered"}
    assert ledger_retention.purge(rt).outbox == 0  # idempotent

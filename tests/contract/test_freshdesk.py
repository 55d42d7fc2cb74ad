"""Contract tests for reporting back: Freshdesk's notes API and the signed callback, mocked strictly with `responses`.

Freshdesk API v2: `POST https://<domain>/api/v2/tickets/{id}/notes` with basic auth (API key as the user
name, any password), JSON `{"body": "<html>", "private": true}`, answered 201 with the note object.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import responses
import sqlalchemy as sa
from responses import matchers

from connectors.base import PermanentError
from connectors.freshdesk import FreshdeskClient, base_url
from discovery.engine import callbacks, db, pipeline
from discovery.engine.ledger import AuditEvent, Request
from discovery.engine.runtime import Runtime
from discovery.engine.settings import load_settings
from discovery.intake import download_tokens, tickets
from discovery.intake.report_back import ReportBackError, report_back
from tests.conftest import SECRET, write_config
from tests.contract.conftest import FAST_RETRY

NOTES = "https://acme.freshdesk.com/api/v2/tickets/4711/notes"
API_KEY = "fd-key-123"
BASIC = matchers.header_matcher({"Authorization": "Basic " + base64.b64encode(f"{API_KEY}:X".encode()).decode()})
CALLBACK = "https://helpdesk.example.net/dsar-callback"
CALLBACK_SECRET = "callback-secret-abc"


def note_reply(note_id: int = 9001) -> dict[str, Any]:
    return {"id": note_id, "body": "<p>...</p>", "body_text": "...", "private": True, "incoming": False,
            "ticket_id": 4711, "user_id": 1, "created_at": "2024-05-02T10:00:00Z", "updated_at": "2024-05-02T10:00:00Z"}


def test_base_url_from_a_domain_or_a_full_url() -> None:
    assert base_url("acme.freshdesk.com") == "https://acme.freshdesk.com/api/v2"
    assert base_url("http://127.0.0.1:9000/") == "http://127.0.0.1:9000/api/v2"
    assert base_url("https://acme.freshdesk.com/api/v2") == "https://acme.freshdesk.com/api/v2"
    with pytest.raises(PermanentError, match="freshdesk_domain"):
        base_url(" ")


def test_add_note_posts_a_private_note_with_basic_auth(vendor: responses.RequestsMock) -> None:
    vendor.post(NOTES, status=201, json=note_reply(), match=[
        BASIC, matchers.json_params_matcher({"body": "<p>done</p>", "private": True})])
    client = FreshdeskClient("acme.freshdesk.com", API_KEY, retry=FAST_RETRY)
    assert client.add_note("4711", "<p>done</p>") == 9001


def test_add_note_waits_out_a_rate_limit(vendor: responses.RequestsMock, sleeps: list[float]) -> None:
    vendor.post(NOTES, status=429, headers={"Retry-After": "7"}, json={"message": "rate limited"})
    vendor.post(NOTES, status=201, json=note_reply(), match=[BASIC])
    assert FreshdeskClient("acme.freshdesk.com", API_KEY, retry=FAST_RETRY).add_note("4711", "<p>x</p>") == 9001
    assert sleeps == [7.0]


def test_add_note_errors_name_the_call_and_keep_the_key_out(vendor: responses.RequestsMock) -> None:
    vendor.post(NOTES, status=401, json={"code": "invalid_credentials", "message": "You have to be logged in"})
    with pytest.raises(PermanentError) as err:
        FreshdeskClient("acme.freshdesk.com", API_KEY, retry=FAST_RETRY).add_note("4711", "<p>x</p>")
    assert "HTTP 401" in str(err.value) and "/tickets/4711/notes" in str(err.value) and API_KEY not in str(err.value)
    with pytest.raises(PermanentError, match="API key"):
        FreshdeskClient("acme.freshdesk.com", "")
    with pytest.raises(PermanentError, match="number"):
        FreshdeskClient("acme.freshdesk.com", API_KEY).add_note("47/../11", "<p>x</p>")


# -- the completion hook ---------------------------------------------------------------------

class Nowhere:
    def discover(self, request_id: str) -> None: ...
    def execute(self, task_id: int) -> None: ...
    def merge(self, request_id: str) -> None: ...


@pytest.fixture
def rt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setattr(callbacks.RESOLVER, "resolve", lambda host, port: ["93.184.216.34"])  # no DNS in tests
    env = {"DSAR_SECRET_KEY": SECRET, "DSAR_ACCOUNTS_DB_URL": f"sqlite:///{tmp_path / 'accounts.db'}",
           "DSAR_API_CALLBACK_ALLOW": '["https://helpdesk.example.net"]',
           "DSAR_API_FRESHDESK_DOMAIN": "acme.freshdesk.com", "DSAR_FRESHDESK_API_KEY": API_KEY,
           "DSAR_CALLBACK_SECRET": CALLBACK_SECRET, "DSAR_API_PUBLIC_URL": "https://dsar.example.com"}
    runtime = Runtime(load_settings(config, env), env=env)
    db.upgrade(runtime.engine)
    yield runtime
    runtime.close()


def finished(rt: Runtime, source: str, callback_url: str | None = None) -> str:
    """A completed request from a ticket, with a bundle, as merge_request leaves it."""
    req = pipeline.submit(rt, Nowhere(), "access", "Jane.Doe@example.com", "4711", "test", source=source,
                          callback_url=callback_url).request
    with rt.sessions.begin() as s:
        row = s.get(Request, req.id)
        assert row is not None
        row.status, row.completed_at, row.open_key = "completed", rt.clock(), None
        row.bundle_path, row.bundle_sha256 = f"file:///var/archive/{req.id}.zip", "ab" * 32
    return req.id


def test_freshdesk_ticket_gets_a_note_with_the_outcome_and_a_working_link(rt: Runtime,
                                                                          vendor: responses.RequestsMock) -> None:
    request_id = finished(rt, "freshdesk")
    vendor.post(NOTES, status=201, json=note_reply(), match=[BASIC])
    report_back(rt, request_id)
    sent = orjson.loads(vendor.calls[0].request.body)
    assert sent["private"] is True
    assert f"<code>{request_id}</code>" in sent["body"] and "<b>completed</b>" in sent["body"]
    assert "jane.doe@example.com" not in sent["body"].lower()
    url = sent["body"].split('href="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    assert url.startswith(f"https://dsar.example.com/v1/requests/{request_id}/bundle?token=")
    grant = download_tokens.read_token(rt.settings.secret_key, url.split("token=", 1)[1], datetime.now(UTC))
    assert grant.request_id == request_id
    with rt.sessions() as s:
        (event,) = s.scalars(sa.select(AuditEvent).where(AuditEvent.event == "request.reported")).all()
    assert event.details["freshdesk_note"] == 9001 and not event.details["problems"]


def test_callback_is_signed_and_carries_no_email(rt: Runtime, vendor: responses.RequestsMock) -> None:
    request_id = finished(rt, "ticket", CALLBACK)
    vendor.post(CALLBACK, status=204)
    report_back(rt, request_id)
    call = vendor.calls[0].request
    body = call.body if isinstance(call.body, bytes) else str(call.body).encode()
    tickets.verify_signature(CALLBACK_SECRET.encode(), body, call.headers[tickets.SIGNATURE_HEADER],
                             datetime.now(UTC), 60)
    outcome = orjson.loads(body)
    assert outcome["request"]["id"] == request_id and outcome["request"]["status"] == "completed"
    assert outcome["download"]["url"].startswith("https://dsar.example.com/")
    assert b"jane.doe" not in body.lower()


def test_a_failing_freshdesk_is_audited_and_cli_requests_report_nowhere(
        rt: Runtime, vendor: responses.RequestsMock, sleeps: list[float]) -> None:
    request_id = finished(rt, "freshdesk")
    for _ in range(4):  # report_back's retry policy: four tries
        vendor.post(NOTES, status=503, json={"message": "maintenance"})
    rt.completion_hooks.append(report_back)  # as workers/app.setup registers it
    pipeline.run_completion_hooks(rt, request_id)  # a failing hook never undoes the request
    with rt.sessions() as s:
        events = {e.event: e.details for e in s.scalars(sa.select(AuditEvent).where(
            AuditEvent.request_id == request_id))}
        assert s.get(Request, request_id).status == "completed"  # type: ignore[union-attr]
    assert "HTTP 503" in events["request.reported"]["problems"][0]
    assert "freshdesk note" in events["request.hook_failed"]["error"]
    assert len(sleeps) == 3
    with pytest.raises(ReportBackError):
        vendor.post(NOTES, status=400, json={"message": "bad"})
        report_back(rt, request_id)
    report_back(rt, finished(rt, "cli"))  # nothing to report to: `vendor` fails on any call

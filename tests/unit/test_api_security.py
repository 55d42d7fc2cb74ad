"""The API refuses callbacks outside the allow-list (422, one line) at intake, report-back refuses them again at
call time, and a genuine download token with an absurd expiry is a 401, not a 500. In-process, on SQLite."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import responses
import sqlalchemy as sa
from fastapi.testclient import TestClient

from discovery.engine import callbacks, db, pipeline
from discovery.engine.ledger import AuditEvent, Request
from discovery.engine.runtime import Runtime
from discovery.engine.settings import load_settings
from discovery.intake import download_tokens, tickets
from discovery.intake.api_tokens import create_token
from discovery.intake.report_back import ReportBackError, report_back
from tests.conftest import SECRET, write_config
from workers.api import create_app

TICKET_SECRET = "ticket-secret-0123456789"
DNS = {"helpdesk.example.net": ["93.184.216.34"], "rebind.example.net": ["93.184.216.34"]}


class Nowhere:
    def discover(self, request_id: str) -> None: ...
    def execute(self, task_id: int) -> None: ...
    def merge(self, request_id: str) -> None: ...


@pytest.fixture
def rt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    def resolve(host: str, port: int) -> list[str]:
        if host not in DNS:
            raise OSError("no such host")
        return DNS[host]

    monkeypatch.setattr(callbacks.RESOLVER, "resolve", resolve)
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}")
    env = {"DSAR_SECRET_KEY": SECRET, "DSAR_ACCOUNTS_DB_URL": f"sqlite:///{tmp_path / 'accounts.db'}",
           "DSAR_API_CALLBACK_ALLOW": '["https://helpdesk.example.net", "https://rebind.example.net"]',
           "DSAR_TICKET_WEBHOOK_SECRET": TICKET_SECRET, "DSAR_CALLBACK_SECRET": "callback-secret-0123"}
    runtime = Runtime(load_settings(config, env), env=env)
    db.upgrade(runtime.engine)
    yield runtime
    runtime.close()


@pytest.fixture
def client(rt: Runtime) -> TestClient:
    return TestClient(create_app(rt, Nowhere()))


def headers(rt: Runtime, scope: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {create_token(rt, f't-{scope}-{id(rt)}', [scope], actor='test')[1]}"}


def count_requests(rt: Runtime) -> int:
    with rt.sessions() as s:
        return s.scalar(sa.select(sa.func.count()).select_from(Request)) or 0


@pytest.mark.parametrize("url, why", [
    ("http://169.254.169.254/latest/meta-data/", "not in api.callback_allow"),
    ("https://helpdesk.example.net.evil.org/x", "not in api.callback_allow"),
    ("http://helpdesk.example.net/dsar", "not in api.callback_allow"),
    ("https://127.0.0.1/dsar", "not in api.callback_allow"),
])
def test_submit_with_a_callback_outside_the_allow_list_is_422(rt: Runtime, client: TestClient, url: str,
                                                               why: str) -> None:
    resp = client.post("/v1/requests", headers=headers(rt, "submit"),
                       json={"type": "access", "email": "jane@example.com", "callback_url": url})
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["code"] == "callback_refused" and why in error["message"] and "\n" not in error["message"]
    assert count_requests(rt) == 0


def test_submit_with_an_allowed_callback_is_accepted_and_a_private_resolution_is_not(
        rt: Runtime, client: TestClient) -> None:
    auth = headers(rt, "submit")
    ok = client.post("/v1/requests", headers=auth, json={"type": "access", "email": "jane@example.com",
                                                         "callback_url": "https://helpdesk.example.net/dsar"})
    assert ok.status_code == 202, ok.text
    DNS["private.example.net"] = ["10.0.0.7"]
    try:
        rt.settings.api.callback_allow.append("https://private.example.net")
        refused = client.post("/v1/requests", headers=auth, json={
            "type": "erasure", "email": "jane@example.com", "callback_url": "https://private.example.net/x"})
    finally:
        del DNS["private.example.net"]
        rt.settings.api.callback_allow.remove("https://private.example.net")
    assert refused.status_code == 422 and "non-public address (10.0.0.7)" in refused.json()["error"]["message"]


def test_a_ticket_webhook_with_a_metadata_callback_is_422(rt: Runtime, client: TestClient) -> None:
    body = orjson.dumps({"ticket_id": "T-9", "requester_email": "jane@example.com", "type": "access",
                         "callback_url": "http://169.254.169.254/latest/meta-data/iam"})
    resp = client.post("/v1/tickets", content=body, headers={
        "Content-Type": "application/json",
        tickets.SIGNATURE_HEADER: tickets.sign(TICKET_SECRET.encode(), body, datetime.now(UTC))})
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "callback_refused"
    assert count_requests(rt) == 0


def finished(rt: Runtime, callback_url: str) -> str:
    """A completed request whose callback got into the ledger (before the allow-list, or DNS changed since)."""
    req = pipeline.submit(rt, Nowhere(), "access", "jane@example.com", "T-1", "test", source="ticket",
                          callback_url=callback_url).request
    with rt.sessions.begin() as s:
        row = s.get(Request, req.id)
        assert row is not None
        row.status, row.completed_at, row.open_key = "completed", rt.clock(), None
    return req.id


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "https://rebind.example.net/hook"])
def test_report_back_refuses_at_call_time_and_audits_it(rt: Runtime, url: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    request_id = finished(rt, url)
    monkeypatch.setitem(DNS, "rebind.example.net", ["169.254.169.254"])  # resolves elsewhere by now
    with responses.RequestsMock() as mock:
        with pytest.raises(ReportBackError, match="callback"):
            report_back(rt, request_id)  # `mock` fails on any HTTP call: none is made
        assert not mock.calls
    with rt.sessions() as s:
        event = s.scalars(sa.select(AuditEvent).where(AuditEvent.event == "request.reported")).one()
    assert "callback" in event.details["problems"][0]


def test_report_back_does_not_follow_a_redirect(rt: Runtime) -> None:
    request_id = finished(rt, "https://helpdesk.example.net/dsar")
    with responses.RequestsMock() as mock:
        mock.post("https://helpdesk.example.net/dsar", status=302,
                  headers={"Location": "http://169.254.169.254/latest/meta-data/"})
        with pytest.raises(ReportBackError, match="HTTP 302"):
            report_back(rt, request_id)
        assert [c.request.url for c in mock.calls] == ["https://helpdesk.example.net/dsar"]


# -- download tokens ----------------------------------------------------------------------------------

def token_with_expiry(rt: Runtime, request_id: str, expiry: Any) -> str:
    """A token signed with the real key (as one made by a leaked key or a future bug would be)."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    payload = b64(orjson.dumps({"r": request_id, "e": expiry}))
    mac = hmac.new(download_tokens._key(rt.settings.secret_key), payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{b64(mac)}"


@pytest.mark.parametrize("expiry", [10**18, 2**63 - 1, -(10**18), 1e300, "soon"])
def test_a_signed_token_with_an_absurd_expiry_is_a_4xx(rt: Runtime, client: TestClient, expiry: Any) -> None:
    token = token_with_expiry(rt, "r-1", expiry)
    with pytest.raises(download_tokens.DownloadTokenError):
        download_tokens.read_token(rt.settings.secret_key, token, datetime.now(UTC))
    resp = client.get("/v1/requests/r-1/bundle", params={"token": token})
    assert 400 <= resp.status_code < 500, resp.text
    assert resp.json()["error"]["code"] in ("invalid_download_token", "download_token_expired")


def test_a_token_beyond_what_dsar_issues_is_refused_and_a_normal_one_works(rt: Runtime) -> None:
    now = datetime.now(UTC)
    far = token_with_expiry(rt, "r-1", int((now + timedelta(days=400)).timestamp()))
    with pytest.raises(download_tokens.DownloadTokenError, match="beyond"):
        download_tokens.read_token(rt.settings.secret_key, far, now)
    url, _ = download_tokens.download_link(rt.settings, "r-1", now)
    assert download_tokens.read_token(rt.settings.secret_key, url.split("token=")[1], now).request_id == "r-1"

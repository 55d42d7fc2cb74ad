"""The HTTP API through a real `dsar serve` process on 127.0.0.1, a real `dsar worker`, PostgreSQL and Redis.

A small recorder server in this process stands in for Freshdesk (notes) and for a callback receiver,
so reporting back is checked end to end: worker -> Freshdesk API / callback URL.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import sqlalchemy as sa

from discovery.intake import download_tokens, tickets
from sandbox.people import JANE, JOHN, OLA
from tests.conftest import ROOT, SECRET, RedisServer, dsar_env, free_port, run_dsar, seed_accounts, write_config

pytestmark = pytest.mark.integration

TICKET_SECRET = "ticket-webhook-secret-123"
FRESHDESK_SECRET = "freshdesk-shared-secret-456"
EVENTS_SECRET = "account-events-secret-789"
CALLBACK_SECRET = "callback-signing-secret-000"
FRESHDESK_KEY = "fd-api-key"


class Recorder(BaseHTTPRequestHandler):
    """Freshdesk's note endpoint and a callback receiver: records every call, answers like the real thing."""

    calls: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.calls.append({"path": self.path, "headers": dict(self.headers), "body": body})  # type: ignore[attr-defined]
        if self.path.startswith("/api/v2/tickets/"):
            expected = "Basic " + base64.b64encode(f"{FRESHDESK_KEY}:X".encode()).decode()
            status, reply = (201, {"id": len(self.server.calls), "private": True}) \
                if self.headers.get("Authorization") == expected else (401, {"code": "invalid_credentials"})  # type: ignore[attr-defined]
        else:
            status, reply = 204, None
        data = orjson.dumps(reply) if reply is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        return


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class ApiStack:
    """PostgreSQL ledger and account database, Redis, a recorder, `dsar worker` and `dsar serve`."""

    def __init__(self, tmp: Path, pg_admin: sa.Engine, redis_server: RedisServer, worker: bool = True,
                 **extra_env: str) -> None:
        self.tmp, self.pg_admin, self.with_worker, self.extra_env = tmp, pg_admin, worker, extra_env
        self.redis_server = redis_server
        self.procs: list[subprocess.Popen[bytes]] = []
        self.databases: list[str] = []
        self.tokens: dict[str, str] = {}

    def database(self) -> str:
        name = f"dsar_t_{uuid.uuid4().hex[:12]}"
        with self.pg_admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        self.databases.append(name)
        return self.pg_admin.url.set(database=name).render_as_string(hide_password=False)

    def __enter__(self) -> ApiStack:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        ledger_url, accounts_url = self.database(), self.database()
        self.accounts = seed_accounts(accounts_url)
        self.ledger = sa.create_engine(ledger_url)
        broker = self.redis_server.database()
        self.recorder = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
        self.recorder.calls = []  # type: ignore[attr-defined]
        threading.Thread(target=self.recorder.serve_forever, daemon=True).start()
        recorder_url = f"http://127.0.0.1:{self.recorder.server_address[1]}"
        self.callback_url = f"{recorder_url}/callback"
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        config = write_config(self.tmp, ledger_url, broker, sweep_interval_seconds=1, retry_backoff_seconds=0.2)
        self.env = dsar_env(
            config, accounts_url, DSAR_API_PORT=str(port), DSAR_API_PUBLIC_URL=self.base,
            DSAR_API_FRESHDESK_DOMAIN=recorder_url, DSAR_FRESHDESK_API_KEY=FRESHDESK_KEY,
            DSAR_TICKET_WEBHOOK_SECRET=TICKET_SECRET, DSAR_FRESHDESK_WEBHOOK_SECRET=FRESHDESK_SECRET,
            DSAR_EVENTS_SECRET=EVENTS_SECRET, DSAR_CALLBACK_SECRET=CALLBACK_SECRET,
            DSAR_API_CALLBACK_ALLOW=f'["{recorder_url}"]', **self.extra_env)
        for name, scopes in {"admin": ["admin"], "reader": ["read"], "submitter": ["submit"],
                             "downloader": ["download"], "expired": ["admin"], "revoked": ["admin"]}.items():
            made = run_dsar(["token", "create", name, *(a for s in scopes for a in ("--scope", s))], self.env)
            assert made.returncode == 0, made.stderr
            self.tokens[name] = made.stdout.strip()
        assert run_dsar(["token", "revoke", "revoked"], self.env).returncode == 0
        with self.ledger.begin() as conn:
            conn.execute(sa.text("UPDATE api_tokens SET expires_at = now() - interval '1 minute' "
                                 "WHERE name = 'expired'"))
        if self.with_worker:
            self.spawn("worker", ["worker", "--processes", "1", "--threads", "2"])
        server = self.spawn("serve", ["serve", "--host", "127.0.0.1", "--port", str(port)])
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"dsar serve did not start: {(self.tmp / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.2)

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{name}.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "workers.cli", *args], env=self.env, cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def __exit__(self, *_exc: object) -> None:
        for proc in self.procs:
            stop(proc)
        if hasattr(self, "recorder"):
            self.recorder.shutdown()
            self.recorder.server_close()
        for engine in ("ledger", "accounts"):
            if hasattr(self, engine):
                getattr(self, engine).dispose()
        with self.pg_admin.connect() as conn:
            for name in self.databases:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    # -- helpers for the tests -----------------------------------------------------------------

    def auth(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens.get(token, token)}"}

    def call(self, method: str, path: str, token: str | None = "admin", **kwargs: Any) -> requests.Response:
        headers = {**(self.auth(token) if token else {}), **kwargs.pop("headers", {})}
        return requests.request(method, f"{self.base}{path}", headers=headers, timeout=30, allow_redirects=False,
                                **kwargs)

    def wait_status(self, request_id: str, statuses: set[str], timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            data = self.call("GET", f"/v1/requests/{request_id}").json()
            if data["status"] in statuses:
                return data  # type: ignore[no-any-return]
            if time.monotonic() > deadline:
                raise AssertionError(f"request {request_id} still {data['status']}; wanted {statuses}")
            time.sleep(0.2)

    def recorded(self, path_prefix: str, timeout: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            calls = [c for c in self.recorder.calls if c["path"].startswith(path_prefix)]  # type: ignore[attr-defined]
            if calls or time.monotonic() > deadline:
                return calls
            time.sleep(0.2)

    def signed(self, path: str, payload: Any, secret: str, at: datetime | None = None) -> requests.Response:
        body = orjson.dumps(payload)
        sig = tickets.sign(secret.encode(), body, at or datetime.now(UTC))
        return self.call("POST", path, token=None, data=body,
                         headers={"Content-Type": "application/json", tickets.SIGNATURE_HEADER: sig})

    def freshdesk(self, payload: Any, secret: str | None = FRESHDESK_SECRET) -> requests.Response:
        headers = {"Content-Type": "application/json"}
        if secret is not None:
            headers["X-Dsar-Webhook-Secret"] = secret
        return self.call("POST", "/v1/tickets/freshdesk", token=None, data=orjson.dumps(payload), headers=headers)

    def sql(self, query: str, **params: Any) -> list[Any]:
        with self.ledger.begin() as conn:
            result = conn.execute(sa.text(query), params)
            return list(result) if result.returns_rows else []


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, pg_admin: sa.Engine,
        redis_server: RedisServer) -> Iterator[ApiStack]:
    with ApiStack(tmp_path_factory.mktemp("api"), pg_admin, redis_server) as stack:
        yield stack


def is_error(resp: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"], body
    return body["error"]  # type: ignore[no-any-return]


def unique_email(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}@example.org"


# -- the document and auth -------------------------------------------------------------------

def test_serve_refuses_a_port_in_use(api: ApiStack) -> None:
    taken = api.base.rsplit(":", 1)[1]
    result = run_dsar(["serve", "--port", taken], api.env, timeout=60)
    assert result.returncode == 3 and result.stderr.startswith(f"dsar: cannot listen on 127.0.0.1:{taken}")


def test_openapi_document_lists_every_endpoint(api: ApiStack) -> None:
    doc = api.call("GET", "/openapi.json", token=None).json()
    assert {"/v1/requests", "/v1/requests/{request_id}", "/v1/requests/{request_id}/confirm",
            "/v1/requests/{request_id}/extend", "/v1/requests/{request_id}/verify",
            "/v1/requests/{request_id}/bundle", "/v1/requests/{request_id}/download-link", "/v1/tickets",
            "/v1/tickets/freshdesk", "/v1/events/account-deleted"} <= set(doc["paths"])
    assert doc["paths"]["/v1/requests"]["post"]["responses"]["202"]
    assert "HTTPBearer" in doc["components"]["securitySchemes"]


@pytest.mark.parametrize(("method", "path", "scope_holder"), [
    ("POST", "/v1/requests", "reader"),
    ("GET", "/v1/requests", "submitter"),
    ("GET", f"/v1/requests/{uuid.uuid4()}", "downloader"),
    ("POST", f"/v1/requests/{uuid.uuid4()}/extend", "reader"),
    ("POST", f"/v1/requests/{uuid.uuid4()}/confirm", "submitter"),
    ("GET", f"/v1/requests/{uuid.uuid4()}/bundle", "reader"),
])
def test_auth_missing_wrong_expired_revoked_and_wrong_scope(api: ApiStack, method: str, path: str,
                                                            scope_holder: str) -> None:
    assert "API token is required" in is_error(api.call(method, path, token=None), 401, "unauthorized")["message"]
    assert is_error(api.call(method, path, token="dsar_not-a-real-token"), 401, "unauthorized")
    assert "expired" in is_error(api.call(method, path, token="expired"), 401, "unauthorized")["message"]
    assert "revoked" in is_error(api.call(method, path, token="revoked"), 401, "unauthorized")["message"]
    basic = api.call(method, path, token=None, headers={"Authorization": "Basic " + api.tokens["admin"]})
    assert is_error(basic, 401, "unauthorized")
    assert "lacks the" in is_error(api.call(method, path, token=scope_holder), 403, "forbidden")["message"]


def test_tokens_are_kept_hashed_and_listed_without_their_value(api: ApiStack) -> None:
    listed = run_dsar(["token", "list", "--json"], api.env)
    assert listed.returncode == 0 and api.tokens["admin"] not in listed.stdout
    states = {t["name"]: t for t in orjson.loads(listed.stdout)}
    assert states["revoked"]["revoked_at"] and not states["admin"]["revoked_at"]
    assert states["admin"]["scopes"] == ["admin"] and states["reader"]["scopes"] == ["read"]
    with api.ledger.connect() as conn:  # only hashes are stored
        stored = {r[0] for r in conn.execute(sa.text("SELECT token_hash FROM api_tokens"))}
    assert hashlib.sha256(api.tokens["admin"].encode()).hexdigest() in stored
    assert not any(api.tokens["admin"] in h for h in stored)
    assert run_dsar(["token", "revoke", "nobody"], api.env).returncode == 4
    duplicate = run_dsar(["token", "create", "admin", "--scope", "read"], api.env)
    assert duplicate.returncode == 2 and "exists already" in duplicate.stderr
    assert run_dsar(["token", "create", "x", "--scope", "root"], api.env).returncode == 2


# -- intake, status, downloads ---------------------------------------------------------------

def test_access_request_from_submit_to_download(api: ApiStack) -> None:
    submitted = api.call("POST", "/v1/requests", token="submitter",
                         json={"type": "access", "email": " Jane.Doe@Example.com ", "ticket": "T-100"})
    assert submitted.status_code == 202, submitted.text
    request_id = submitted.json()["id"]
    again = api.call("POST", "/v1/requests", token="submitter", json={"type": "access", "email": JANE.email})
    assert again.status_code == 200 and again.json()["id"] == request_id and again.json()["created"] is False

    done = api.wait_status(request_id, {"completed", "completed_with_errors"})
    assert done["status"] == "completed" and done["bundle_ready"] and done["ticket"] == "T-100"
    assert [(t["system"], t["action"], t["status"]) for t in done["tasks"]] == [("accounts", "export", "done")]
    assert done["tasks"][0]["records"] == 12 and done["days_left"] is None

    listed = api.call("GET", "/v1/requests", token="reader", params={"status": "completed"}).json()
    assert request_id in [r["id"] for r in listed["requests"]]
    assert all(r["status"] == "completed" for r in listed["requests"])

    # With an API token of the download scope: the ZIP itself (local archive: streamed).
    got = api.call("GET", f"/v1/requests/{request_id}/bundle", token="downloader")
    assert got.status_code == 200 and got.headers["content-type"] == "application/zip"
    assert hashlib.sha256(got.content).hexdigest() == done["bundle_sha256"]

    # A link made for the person works without any API token ...
    link = api.call("POST", f"/v1/requests/{request_id}/download-link", token="downloader").json()
    assert link["url"].startswith(f"{api.base}/v1/requests/{request_id}/bundle?token=")
    person = requests.get(link["url"], timeout=30)
    assert person.status_code == 200 and hashlib.sha256(person.content).hexdigest() == done["bundle_sha256"]
    # ... but not tampered with, expired, or for another request.
    token = link["url"].split("token=", 1)[1]
    payload, mac = token.split(".")
    tampered = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + mac
    path = f"/v1/requests/{request_id}/bundle"
    is_error(api.call("GET", path, token=None, params={"token": tampered}), 401, "invalid_download_token")
    is_error(api.call("GET", path, token=None, params={"token": "garbage"}), 401, "invalid_download_token")
    expired = download_tokens.make_token(SECRET.encode(), request_id, datetime.now(UTC) - timedelta(seconds=1))
    is_error(api.call("GET", path, token=None, params={"token": expired}), 401, "download_token_expired")
    other = download_tokens.make_token(SECRET.encode(), str(uuid.uuid4()), datetime.now(UTC) + timedelta(hours=1))
    is_error(api.call("GET", path, token=None, params={"token": other}), 403, "forbidden")
    forged = download_tokens.make_token(b"another-secret-key-0000", request_id, datetime.now(UTC) + timedelta(hours=1))
    is_error(api.call("GET", path, token=None, params={"token": forged}), 401, "invalid_download_token")

    downloads = api.sql("SELECT actor FROM audit_events WHERE request_id = :r AND event = 'bundle.downloaded'",
                        r=request_id)
    assert sorted(a for (a,) in downloads) == ["api:downloader", "download-token"]


def test_unknown_request_is_404_everywhere(api: ApiStack) -> None:
    missing = str(uuid.uuid4())
    is_error(api.call("GET", f"/v1/requests/{missing}"), 404, "not_found")
    is_error(api.call("GET", "/v1/requests/not-an-id"), 404, "not_found")
    is_error(api.call("POST", f"/v1/requests/{missing}/confirm", json={"system": "accounts", "note": "done"}),
             404, "not_found")
    is_error(api.call("POST", f"/v1/requests/{missing}/verify", json={"note": "checked"}), 404, "not_found")
    is_error(api.call("POST", f"/v1/requests/{missing}/extend", json={"days": 5, "reason": "complex"}),
             404, "not_found")
    is_error(api.call("GET", f"/v1/requests/{missing}/bundle"), 404, "not_found")
    is_error(api.call("GET", "/v2/nothing-here"), 404, "not_found")


def test_malformed_bodies_get_a_json_error_and_write_nothing(api: ApiStack) -> None:
    before = api.sql("SELECT count(*) FROM requests")[0][0]
    raw = {"headers": {"Content-Type": "application/json"}}
    is_error(api.call("POST", "/v1/requests", data=b"{not json", **raw), 422, "validation_error")
    missing = is_error(api.call("POST", "/v1/requests", json={"type": "access"}), 422, "validation_error")
    assert ["body", "email"] in [d["loc"] for d in missing["details"]]
    is_error(api.call("POST", "/v1/requests", json={"type": "forget-me", "email": OLA.email}), 422,
             "validation_error")
    is_error(api.call("POST", "/v1/requests", json={"type": "access", "email": OLA.email, "extra": 1}), 422,
             "validation_error")
    is_error(api.call("POST", "/v1/requests", json={"type": "access", "email": OLA.email, "ticket": "a\x00b"}),
             422, "validation_error")
    bad = is_error(api.call("POST", "/v1/requests", json={"type": "access", "email": "ola@"}), 422, "invalid_input")
    assert "invalid e-mail address" in bad["message"] and "ola@" not in bad["message"]
    is_error(api.call("POST", "/v1/requests", json=[1, 2]), 422, "validation_error")
    is_error(api.call("GET", "/v1/requests", params={"limit": 0}), 422, "validation_error")
    is_error(api.call("GET", "/v1/requests", params={"status": "lost"}), 422, "validation_error")
    assert api.sql("SELECT count(*) FROM requests")[0][0] == before


# -- ticket webhooks -------------------------------------------------------------------------

def test_ticket_webhook_signature_duplicate_and_signed_callback(api: ApiStack) -> None:
    ticket = f"HD-{uuid.uuid4().hex[:6]}"
    payload = {"ticket_id": ticket, "requester_email": JOHN.email, "type": "Access", "callback_url": api.callback_url}
    body = orjson.dumps(payload)
    unsigned = api.call("POST", "/v1/tickets", token=None, data=body, headers={"Content-Type": "application/json"})
    is_error(unsigned, 401, "bad_signature")
    is_error(api.signed("/v1/tickets", payload, "wrong-secret"), 401, "bad_signature")
    stale = datetime.now(UTC) - timedelta(minutes=10)
    assert "replay" in is_error(api.signed("/v1/tickets", payload, TICKET_SECRET, at=stale), 401,
                                "bad_signature")["message"]
    sig = tickets.sign(TICKET_SECRET.encode(), body, datetime.now(UTC))
    altered = api.call("POST", "/v1/tickets", token=None, data=body.replace(b"Access", b"Erasure"),
                       headers={tickets.SIGNATURE_HEADER: sig})
    is_error(altered, 401, "bad_signature")
    is_error(api.signed("/v1/tickets", {**payload, "type": "nonsense"}, TICKET_SECRET), 422, "invalid_input")
    is_error(api.signed("/v1/tickets", {"ticket_id": ticket}, TICKET_SECRET), 422, "validation_error")

    first = api.signed("/v1/tickets", payload, TICKET_SECRET)
    assert first.status_code == 202, first.text
    request_id = first.json()["id"]
    duplicate = api.signed("/v1/tickets", payload, TICKET_SECRET)
    assert duplicate.status_code == 200 and duplicate.json()["id"] == request_id
    assert duplicate.json()["created"] is False
    done = api.wait_status(request_id, {"completed", "completed_with_errors"})
    assert done["status"] == "completed" and done["source"] == "ticket" and not done["awaiting_verification"]
    # Delivered again after the request closed: still no second request.
    late = api.signed("/v1/tickets", payload, TICKET_SECRET)
    assert late.status_code == 200 and late.json()["id"] == request_id
    assert api.sql("SELECT count(*) FROM requests WHERE ticket_ref = :t", t=ticket)[0][0] == 1

    (callback,) = [c for c in api.recorded("/callback") if orjson.loads(c["body"])["request"]["id"] == request_id]
    tickets.verify_signature(CALLBACK_SECRET.encode(), callback["body"], callback["headers"][tickets.SIGNATURE_HEADER],
                             datetime.now(UTC), 300)
    outcome = orjson.loads(callback["body"])
    assert outcome["request"]["status"] == "completed" and outcome["request"]["ticket"] == ticket
    assert JOHN.email not in callback["body"].decode()
    assert requests.get(outcome["download"]["url"], timeout=30).status_code == 200


def test_a_requester_who_is_not_the_subject_waits_for_an_operator(api: ApiStack) -> None:
    ticket = f"HD-{uuid.uuid4().hex[:6]}"
    payload = {"ticket_id": ticket, "requester_email": "lawyer@example.net", "subject_email": OLA.email,
               "type": "access"}
    held = api.signed("/v1/tickets", payload, TICKET_SECRET)
    assert held.status_code == 202 and held.json()["status"] == "awaiting_verification"
    request_id = held.json()["id"]
    view = api.call("GET", f"/v1/requests/{request_id}").json()
    assert view["awaiting_verification"] and view["tasks"] == [] and view["subject_email"] == OLA.email
    # The held request was never handed to a worker: no discovery ran, nothing was planned.
    assert api.sql("SELECT count(*) FROM system_hits WHERE request_id = :r", r=request_id)[0][0] == 0

    is_error(api.call("POST", f"/v1/requests/{request_id}/verify", token="reader", json={"note": "id seen"}),
             403, "forbidden")
    is_error(api.call("POST", f"/v1/requests/{request_id}/verify", json={"note": ""}), 422, "validation_error")
    verified = api.call("POST", f"/v1/requests/{request_id}/verify", json={"note": "power of attorney checked"})
    assert verified.status_code == 200, verified.text
    is_error(api.call("POST", f"/v1/requests/{request_id}/verify", json={"note": "again"}), 409, "conflict")
    done = api.wait_status(request_id, {"completed", "completed_with_errors"})
    assert done["verified_by"] == "api:admin" and done["tasks"][0]["records"] > 0
    audit = api.sql("SELECT actor, details FROM audit_events WHERE request_id = :r AND event = 'request.verified'",
                    r=request_id)
    assert [(a, json.loads(d) if isinstance(d, str) else d) for a, d in audit] == [
        ("api:admin", {"note": "power of attorney checked"})]

    # The same through the CLI.
    other = held_request(api)
    assert run_dsar(["identity-verified", other, "--note", " "], api.env).returncode == 2
    assert run_dsar(["identity-verified", str(uuid.uuid4()), "--note", "x"], api.env).returncode == 4
    cli = run_dsar(["identity-verified", other, "--note", "passport seen", "--actor", "dpo"], api.env)
    assert cli.returncode == 0, cli.stderr
    again = run_dsar(["identity-verified", other, "--note", "again"], api.env)
    assert again.returncode == 2 and "not awaiting verification" in again.stderr
    assert api.wait_status(other, {"completed", "completed_with_errors"})["verified_by"] == "dpo"


def test_freshdesk_webhook_creates_once_and_gets_a_private_note(api: ApiStack) -> None:
    ticket = str(int(time.time() * 1000) % 10_000_000)
    person = unique_email("fd")  # an erasure of someone unknown changes nothing the other tests rely on
    payload = {"freshdesk_webhook": {"ticket_id": ticket, "ticket_requester_email": person,
                                     "ticket_cf_dsar_request_type": "Erasure", "ticket_tags": "vip"}}
    is_error(api.freshdesk(payload, secret="wrong"), 401, "bad_signature")
    is_error(api.freshdesk(payload, secret=None), 401, "bad_signature")
    no_type = {"freshdesk_webhook": {"ticket_id": ticket, "ticket_requester_email": person}}
    assert "cf_dsar_request_type" in is_error(api.freshdesk(no_type), 422, "invalid_input")["message"]
    is_error(api.call("POST", "/v1/tickets/freshdesk", token=None, data=b"<xml/>",
                      headers={"X-Dsar-Webhook-Secret": FRESHDESK_SECRET}), 422, "validation_error")

    created = api.freshdesk(payload)
    assert created.status_code == 202, created.text
    request_id = created.json()["id"]
    assert created.json()["type"] == "erasure"
    duplicate = api.freshdesk(payload)
    assert duplicate.status_code == 200 and duplicate.json()["id"] == request_id
    assert duplicate.json()["created"] is False
    done = api.wait_status(request_id, {"completed", "completed_with_errors"})
    assert done["source"] == "freshdesk" and done["ticket"] == ticket
    assert api.sql("SELECT count(*) FROM requests WHERE ticket_ref = :t", t=ticket)[0][0] == 1

    (note,) = api.recorded(f"/api/v2/tickets/{ticket}/notes")
    sent = orjson.loads(note["body"])
    assert sent["private"] is True and request_id in sent["body"] and "completed" in sent["body"]
    assert person not in sent["body"]
    url = sent["body"].split('href="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    assert requests.get(url, timeout=30).status_code == 200
    assert api.sql("SELECT count(*) FROM audit_events WHERE request_id = :r AND event = 'request.reported'",
                   r=request_id)[0][0] == 1

    tagged = {"ticket_id": str(int(ticket) + 1), "requester_email": unique_email("fd"),
              "tags": ["vip", "dsar-restriction"]}
    by_tag = api.freshdesk(tagged)
    assert by_tag.status_code == 202 and by_tag.json()["type"] == "restriction"


def test_the_language_from_the_api_and_a_freshdesk_ticket(api: ApiStack) -> None:
    body = {"type": "access", "email": unique_email("lang"), "language": "nb"}
    is_error(api.call("POST", "/v1/requests", token="submitter", json={**body, "language": "de"}), 422,
             "validation_error")
    submitted = api.call("POST", "/v1/requests", token="submitter", json=body)
    assert submitted.status_code == 202, submitted.text
    assert api.wait_status(submitted.json()["id"], {"completed", "completed_with_errors"})["language"] == "nb"

    ticket = str(int(time.time() * 1000) % 10_000_000 + 20_000_000)
    payload = {"freshdesk_webhook": {"ticket_id": ticket, "ticket_requester_email": unique_email("fdnb"),
                                     "ticket_cf_dsar_request_type": "Erasure", "ticket_cf_dsar_language": "nb"}}
    created = api.freshdesk(payload)
    assert created.status_code == 202, created.text
    done = api.wait_status(created.json()["id"], {"completed", "completed_with_errors"})
    assert done["language"] == "nb"
    (note,) = api.recorded(f"/api/v2/tickets/{ticket}/notes")
    text = orjson.loads(note["body"])["body"]
    assert "krav om sletting" in text and "er ferdig" in text and "Nedlastingslenke til personen" in text


# -- deadlines, manual steps, events ---------------------------------------------------------

def held_request(api: ApiStack) -> str:
    """An open request that stays open (held for verification), for deadline tests."""
    payload = {"ticket_id": f"HD-{uuid.uuid4().hex[:8]}", "requester_email": unique_email("asker"),
               "subject_email": unique_email("subject"), "type": "access"}
    resp = api.signed("/v1/tickets", payload, TICKET_SECRET)
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]  # type: ignore[no-any-return]


def test_extend_needs_a_reason_and_stays_within_two_months(api: ApiStack) -> None:
    request_id = held_request(api)
    original = datetime.fromisoformat(api.call("GET", f"/v1/requests/{request_id}").json()["due_at"])
    path = f"/v1/requests/{request_id}/extend"
    is_error(api.call("POST", path, json={"days": 10}), 422, "validation_error")
    is_error(api.call("POST", path, json={"days": 10, "reason": "   "}), 422, "validation_error")
    is_error(api.call("POST", path, json={"days": 10, "reason": "complex"}, token="reader"), 403, "forbidden")
    first = api.call("POST", path, json={"days": 40, "reason": "many systems involved"})
    assert first.status_code == 200, first.text
    assert datetime.fromisoformat(first.json()["due_at"]) == original + timedelta(days=40)
    latest = datetime.fromisoformat(first.json()["latest_possible"])
    assert timedelta(days=59) <= latest - original <= timedelta(days=62)  # two calendar months
    too_far = is_error(api.call("POST", path, json={"days": 30, "reason": "even more"}), 422, "invalid_input")
    assert "at the latest" in too_far["message"]
    # The CLI does the same; the remaining room is used exactly.
    room = (latest - (original + timedelta(days=40))).days
    cli = run_dsar(["extend", request_id, "--days", str(room), "--reason", "vendor backlog", "--json"], api.env)
    assert cli.returncode == 0, cli.stderr
    assert run_dsar(["extend", request_id, "--days", "1", "--reason", "x"], api.env).returncode == 2
    assert run_dsar(["extend", request_id, "--days", "1", "--reason", " "], api.env).returncode == 2
    view = api.call("GET", f"/v1/requests/{request_id}").json()
    assert datetime.fromisoformat(view["original_due_at"]) == original
    assert view["extension_reason"] == "many systems involved\nvendor backlog"
    assert api.sql("SELECT count(*) FROM audit_events WHERE request_id = :r AND event = 'request.extended'",
                   r=request_id)[0][0] == 2


def test_overdue_and_due_soon_listing(api: ApiStack) -> None:
    late, soon, later = held_request(api), held_request(api), held_request(api)
    api.sql("UPDATE requests SET due_at = now() - interval '2 days' WHERE id = :r", r=late)
    api.sql("UPDATE requests SET due_at = now() + interval '3 days 1 hour' WHERE id = :r", r=soon)
    overdue = api.call("GET", "/v1/requests", token="reader", params={"overdue": "true"}).json()["requests"]
    by_id = {r["id"]: r for r in overdue}
    assert late in by_id and soon not in by_id and later not in by_id
    assert by_id[late]["overdue"] is True and by_id[late]["days_left"] < 0
    due = api.call("GET", "/v1/requests", token="reader", params={"due_within_days": 7}).json()["requests"]
    ids = [r["id"] for r in due]
    assert late in ids and soon in ids and later not in ids and ids.index(late) < ids.index(soon)
    assert all(r["status"] in ("awaiting_verification", "received", "discovering", "running", "awaiting_manual",
                               "merging") for r in due)

    cli = run_dsar(["overdue", "--json"], api.env)
    assert cli.returncode == 0, cli.stderr
    listed = {r["id"]: r for r in orjson.loads(cli.stdout)["requests"]}
    assert listed[late]["overdue"] and listed[soon]["days_left"] == 3 and later not in listed
    human = run_dsar(["overdue"], api.env).stdout
    assert f"{late}  access" in human and "LATE since" in human and f"{soon}  access" in human


def test_confirm_completes_a_manual_step(api: ApiStack) -> None:
    from connectors.base import Receipt
    from discovery.engine import pipeline
    from discovery.engine.runtime import Runtime
    from discovery.engine.settings import load_settings

    class Nowhere:
        def discover(self, request_id: str) -> None: ...
        def execute(self, task_id: int) -> None: ...
        def merge(self, request_id: str) -> None: ...

    # A request whose only task waits for a person (as a vendor's "Forget" step leaves it).
    rt = Runtime(load_settings(api.env["DSAR_CONFIG"], api.env), env=api.env)
    request_id = pipeline.submit(rt, Nowhere(), "erasure", unique_email("manual"), actor="test").request.id
    rt.close()
    api.sql("UPDATE requests SET status = 'awaiting_manual', plan = '[]' WHERE id = :r", r=request_id)
    receipt = Receipt("accounts", "erase", manual_steps=["Forget the contact"]).to_dict()
    api.sql("INSERT INTO tasks (request_id, system, action, entities, status, attempts, created_at, updated_at, "
            "result) VALUES (:r, 'accounts', 'erase', '[]', 'awaiting_manual', 1, now(), now(), CAST(:res AS json))",
            r=request_id, res=orjson.dumps(receipt).decode())
    path = f"/v1/requests/{request_id}/confirm"
    is_error(api.call("POST", path, json={"system": "freshchat", "note": "done"}), 409, "conflict")
    is_error(api.call("POST", path, json={"system": "accounts"}), 422, "validation_error")
    is_error(api.call("POST", path, json={"system": "accounts", "note": "done"}, token="submitter"), 403, "forbidden")
    ok = api.call("POST", path, json={"system": "accounts", "note": "forgot the contact in the UI"})
    assert ok.status_code == 200 and ok.json() == {"id": request_id, "confirmed_tasks": 1}
    done = api.wait_status(request_id, {"completed", "completed_with_errors"})
    assert done["tasks"][0]["status"] == "done"
    assert api.sql("SELECT actor FROM audit_events WHERE request_id = :r AND event = 'task.done'",
                   r=request_id) == [("api:admin",)]


def test_account_deleted_event_schedules_the_erasure(api: ApiStack) -> None:
    email = unique_email("gone")
    path = "/v1/events/account-deleted"
    is_error(api.signed(path, {"email": email}, "not-the-secret"), 401, "bad_signature")
    is_error(api.call("POST", path, token=None, json={"email": email}), 401, "bad_signature")
    is_error(api.signed(path, {"email": "nope"}, EVENTS_SECRET), 422, "invalid_input")
    is_error(api.signed(path, {"email": email, "grace_days": -1}, EVENTS_SECRET), 422, "validation_error")
    resp = api.signed(path, {"email": email, "event_id": "evt-1", "grace_days": 14}, EVENTS_SECRET)
    assert resp.status_code == 202, resp.text
    data = resp.json()
    due = datetime.fromisoformat(data["due_at"])
    assert timedelta(days=13, hours=23) < due - datetime.now(UTC) <= timedelta(days=14)
    rows = api.sql("SELECT kind, status, due_at FROM scheduled_actions WHERE id = :i", i=data["scheduled_action_id"])
    assert len(rows) == 1 and rows[0][1] == data["status"]
    again = api.signed(path, {"email": email.upper(), "event_id": "evt-1"}, EVENTS_SECRET)  # redelivered
    assert again.status_code == 202 and again.json()["scheduled_action_id"] == data["scheduled_action_id"]
    assert api.sql("SELECT count(*) FROM scheduled_actions WHERE subject_email = :e", e=email)[0][0] == 1


def test_bundle_in_s3_is_a_redirect_to_a_short_presigned_link(tmp_path: Path, pg_admin: sa.Engine,
                                                             redis_server: RedisServer,
                                                             s3_server: dict[str, str], s3_bucket: str) -> None:
    s3 = {"DSAR_ARCHIVE_STORE": "s3", "DSAR_ARCHIVE_BUCKET": s3_bucket, "DSAR_ARCHIVE_ENDPOINT_URL":
          s3_server["endpoint_url"], "DSAR_ARCHIVE_REGION": s3_server["region"],
          "AWS_ACCESS_KEY_ID": s3_server["access_key"], "AWS_SECRET_ACCESS_KEY": s3_server["secret_key"]}
    with ApiStack(tmp_path, pg_admin, redis_server, **s3) as api:
        request_id = api.call("POST", "/v1/requests", json={"type": "access", "email": JANE.email}).json()["id"]
        done = api.wait_status(request_id, {"completed", "completed_with_errors"})
        assert done["status"] == "completed"
        got = api.call("GET", f"/v1/requests/{request_id}/bundle", token="downloader")
        assert got.status_code == 307, got.text
        location = got.headers["location"]
        assert location.startswith(f"{s3_server['endpoint_url']}/{s3_bucket}/") and "X-Amz-Expires=300" in location
        assert hashlib.sha256(requests.get(location, timeout=30).content).hexdigest() == done["bundle_sha256"]
        link = api.call("POST", f"/v1/requests/{request_id}/download-link", token="downloader").json()["url"]
        person = requests.get(link, timeout=30)  # follows the redirect, as a browser does
        assert person.status_code == 200 and hashlib.sha256(person.content).hexdigest() == done["bundle_sha256"]

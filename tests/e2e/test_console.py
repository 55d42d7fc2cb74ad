"""The console (/ui) end to end: a real `dsar serve` (its own worker, stub:// broker) on a PostgreSQL ledger, the
vendor simulators over sockets, Chromium driven by Playwright, and plain HTTP for what a browser would not send.

The browser scenario: log in, see a new request, open it, confirm a manual step, extend with a reason, deny another
request, retry a failed system once its simulator is back, read the audit trail, log out. Each page is saved as a
screenshot under the test's tmp_path. Refusals: a token without the act scope, a form without its CSRF token, a session
after logout or expiry. /docs loads nothing from another origin; /metrics matches the ledger.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import requests
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from sandbox.launch import Sandbox
from sandbox.people import JANE, JOHN, OLA
from sandbox.server import Served
from tests.conftest import ROOT, _unavailable, dsar_env, free_port, run_dsar, seed_accounts, write_config

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

CHROMIUM = os.environ.get("DSAR_TEST_CHROMIUM", "/usr/bin/chromium")
OPEN = {"awaiting_verification", "received", "discovering", "running", "awaiting_manual", "merging"}


class Console:
    """Sandbox simulators, a PostgreSQL ledger, tokens, and `dsar serve` on a free port."""

    def __init__(self, tmp: Path, pg_admin: sa.Engine) -> None:
        self.tmp, self.pg_admin = tmp, pg_admin
        self.db = f"dsar_ui_{uuid.uuid4().hex[:12]}"
        self.tokens: dict[str, str] = {}
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Console:
        with self.pg_admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{self.db}"'))
        ledger_url = self.pg_admin.url.set(database=self.db).render_as_string(hide_password=False)
        self.ledger = sa.create_engine(ledger_url)
        self.sandbox = Sandbox(self.tmp / "sandbox")
        accounts = f"sqlite:///{self.tmp / 'accounts.db'}"
        seed_accounts(accounts).dispose()
        # a system that is down fails fast: two attempts, short backoff, a short locate deadline
        config = write_config(self.tmp, ledger_url, max_attempts=2, retry_backoff_seconds=0.2,
                              system_retry_budget=5.0, locate_timeout=10.0)
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.env = dsar_env(config, accounts, DSAR_DATA_MAP_PATH=str(self.sandbox.datamap_path),
                            **self.sandbox.env())
        for name, scopes in {"operator": ["read", "act", "download"], "viewer": ["read"],
                             "api": ["submit", "read"], "submitter": ["submit"]}.items():
            made = run_dsar(["token", "create", name, *(a for s in scopes for a in ("--scope", s))], self.env)
            assert made.returncode == 0, made.stderr
            self.tokens[name] = made.stdout.strip()
        log = (self.tmp / "serve.log").open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "serve", "--host", "127.0.0.1", "--port",
                                      str(port)], env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise AssertionError(f"dsar serve did not start: {(self.tmp / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.2)

    def __exit__(self, *_exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
        self.sandbox.stop()
        self.ledger.dispose()
        with self.pg_admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)'))

    # -- helpers -------------------------------------------------------------------------------------------------

    def api(self, method: str, path: str, token: str = "api", **kw: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.tokens[token]}"}
        return requests.request(method, f"{self.base}{path}", headers=headers, timeout=60, **kw)

    def submit(self, rtype: str, email: str, ticket: str) -> str:
        made = self.api("POST", "/v1/requests", json={"type": rtype, "email": email, "ticket": ticket})
        assert made.status_code == 202, made.text
        return str(made.json()["id"])

    def wait(self, request_id: str, statuses: set[str], timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            data = self.api("GET", f"/v1/requests/{request_id}").json()
            if data["status"] in statuses:
                return data  # type: ignore[no-any-return]
            assert time.monotonic() < deadline, f"request {request_id} still {data['status']}; wanted {statuses}"
            time.sleep(0.3)

    def login(self, token: str) -> requests.Session:
        """A logged-in HTTP session (what the browser does, without a browser)."""
        http = requests.Session()
        form = http.get(f"{self.base}/ui/login", timeout=30)
        done = http.post(f"{self.base}/ui/login", data={"csrf": csrf_of(form.text), "token": self.tokens[token]},
                         allow_redirects=False, timeout=30)
        assert done.status_code == 303, done.text
        return http

    def sql(self, query: str, **params: Any) -> list[Any]:
        with self.ledger.begin() as conn:
            result = conn.execute(sa.text(query), params)
            return list(result) if result.returns_rows else []


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html[:500]
    return found.group(1)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory, pg_admin: sa.Engine) -> Iterator[Console]:
    with Console(tmp_path_factory.mktemp("console"), pg_admin) as stack:
        yield stack


def _chromium() -> None:
    if not Path(CHROMIUM).exists():
        _unavailable("Chromium", f"{CHROMIUM} is missing: apt-get install -y chromium")


# -- the browser scenario ---------------------------------------------------------------------------------------

def test_an_operator_works_requests_in_the_browser(console: Console, tmp_path: Path) -> None:
    _chromium()
    from playwright.sync_api import expect, sync_playwright

    jane = console.submit("erasure", JANE.email, "UI-1")
    john = console.submit("erasure", JOHN.email, "UI-2")
    assert console.wait(jane, {"awaiting_manual"})["status"] == "awaiting_manual"
    assert console.wait(john, OPEN | {"completed"})["status"] in OPEN
    # SALESmanago goes down: Ola's access request cannot search it and ends with errors
    down = console.sandbox.served["salesmanago"]
    port, app = down.port, down.server.app
    down.stop()
    ola = console.submit("access", OLA.email, "UI-3")
    failed = console.wait(ola, {"completed_with_errors", "failed", "completed"})
    assert failed["status"] == "completed_with_errors", failed

    shots: list[Path] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})

            def shot(name: str) -> None:
                path = tmp_path / f"{len(shots):02d}-{name}.png"
                page.screenshot(path=str(path), full_page=True)
                shots.append(path)

            page.goto(f"{console.base}/ui/")  # no session: to the login form
            assert "/ui/login" in page.url
            shot("login")
            page.fill("#token", console.tokens["operator"])
            page.click("button[type=submit]")
            page.wait_for_url(f"{console.base}/ui/")
            row = page.locator("tr", has=page.locator(f'a[href="/ui/requests/{jane}"]'))
            expect(row).to_contain_text("erasure")
            expect(row).to_contain_text("awaiting manual")
            assert JANE.email not in page.content()  # masked without the subject scope
            shot("requests")

            page.click(f'a[href="/ui/requests/{jane}"]')
            expect(page.locator("h1")).to_contain_text(jane)
            expect(page.locator("h2", has_text="Manual steps")).to_be_visible()
            shot("request")
            form = page.locator("form", has=page.locator('input[name=system][value="mautic"]'))
            form.locator("textarea[name=note]").fill("Deleted the email_stats rows by hand")
            form.locator("button").click()
            expect(page.locator(".notice")).to_contain_text("Confirmed the manual step in mautic")
            shot("confirmed")

            page.fill("#extend-days", "14")
            page.fill("#extend-reason", "Vendor export backlog; the person was told on the ticket")
            page.click("form[action$='/extend'] button")
            expect(page.locator(".notice")).to_contain_text("Extended")
            expect(page.locator("dl.facts")).to_contain_text("Vendor export backlog")
            shot("extended")

            page.goto(f"{console.base}/ui/requests/{john}")
            page.select_option("#deny-basis", "unfounded_or_excessive")
            page.fill("#deny-reason", "Fifth identical request this month")
            page.click("form[action$='/deny'] button")
            expect(page.locator(".notice")).to_contain_text("Denied")
            expect(page.locator(".tag.denied").first).to_be_visible()
            shot("denied")

            console.sandbox.served["salesmanago"] = Served(app, port=port)  # the simulator is back
            page.goto(f"{console.base}/ui/requests/{ola}")
            expect(page.locator("form[action$='/retry'] input[value=salesmanago]")).to_be_checked()
            shot("failed")
            page.fill("#retry-reason", "SALESmanago is reachable again")
            page.click("form[action$='/retry'] button")
            expect(page.locator(".notice")).to_contain_text("Retrying salesmanago")
            assert console.wait(ola, {"completed", "completed_with_errors"})["status"] == "completed"
            page.reload()
            trail = page.locator("h2:has-text('Audit trail') + table")
            expect(trail).to_contain_text("request.retried")
            expect(trail).to_contain_text("ui:operator")
            expect(trail).to_contain_text("SALESmanago is reachable again")
            expect(page.locator("a", has_text="Download")).to_be_visible()
            shot("retried")

            page.goto(f"{console.base}/ui/requests/{jane}")
            trail = page.locator("h2:has-text('Audit trail') + table")
            expect(trail).to_contain_text("request.extended")
            expect(trail).to_contain_text("Deleted the email_stats rows by hand")
            page.goto(f"{console.base}/ui/scheduled")
            shot("scheduled")
            page.goto(f"{console.base}/ui/datamap")
            expect(page.locator("h2").first).to_be_visible()
            shot("datamap")
            page.goto(f"{console.base}/docs")
            page.wait_for_selector(".swagger-ui .info", timeout=30_000)
            shot("docs")

            page.goto(f"{console.base}/ui/")
            page.click("header button")  # log out
            page.wait_for_url(re.compile(r".*/ui/login$"))
            page.goto(f"{console.base}/ui/")
            assert "/ui/login" in page.url
        finally:
            browser.close()
    assert len(shots) == 11 and all(p.stat().st_size > 5_000 for p in shots)

    status = {r[0]: r[1] for r in console.sql("SELECT id, status FROM requests")}
    assert status[john] == "denied" and status[ola] == "completed"
    assert console.sql("SELECT due_at > original_due_at FROM requests WHERE id = :id", id=jane) == [(True,)]


def test_a_viewer_cannot_act_and_forms_need_their_csrf_token(console: Console) -> None:
    request_id = console.submit("erasure", OLA.email.replace("@", "+csrf@"), f"UI-{uuid.uuid4().hex[:6]}")
    console.wait(request_id, OPEN | {"completed", "completed_with_errors"})
    viewer = console.login("viewer")
    page = viewer.get(f"{console.base}/ui/requests/{request_id}", timeout=30)
    assert page.status_code == 200 and "Act on this request" not in page.text and 'name="note"' not in page.text
    refused = viewer.post(f"{console.base}/ui/requests/{request_id}/extend", timeout=30,
                          data={"csrf": csrf_of(page.text), "days": "3", "reason": "viewer tries"})
    assert refused.status_code == 403 and "lacks the 'act' scope" in html.unescape(refused.text)

    operator = console.login("operator")
    page = operator.get(f"{console.base}/ui/requests/{request_id}", timeout=30)
    for form in ({"days": "3", "reason": "no token"}, {"days": "3", "reason": "bad token", "csrf": "forged"}):
        refused = operator.post(f"{console.base}/ui/requests/{request_id}/extend", data=form, timeout=30)
        assert refused.status_code == 403 and "security token" in refused.text, refused.text
    assert console.sql("SELECT original_due_at FROM requests WHERE id = :id", id=request_id) == [(None,)]
    # a token that cannot log in to the console at all, and a login form without its token
    no_ui = requests.Session()
    form = no_ui.get(f"{console.base}/ui/login", timeout=30)
    denied = no_ui.post(f"{console.base}/ui/login", timeout=30,
                        data={"csrf": csrf_of(form.text), "token": console.tokens["submitter"]})
    assert denied.status_code == 403 and "lacks the 'read' scope" in html.unescape(denied.text)
    assert requests.post(f"{console.base}/ui/login", data={"token": console.tokens["operator"]},
                         timeout=30).status_code == 403
    # the bearer token is no way into the console: only the session cookie is
    assert requests.get(f"{console.base}/ui/", headers={"Authorization": f"Bearer {console.tokens['operator']}"},
                        allow_redirects=False, timeout=30).status_code == 303


def test_the_session_cookie_logout_and_expiry(console: Console) -> None:
    http = requests.Session()
    form = http.get(f"{console.base}/ui/login", timeout=30)
    done = http.post(f"{console.base}/ui/login", allow_redirects=False, timeout=30,
                     data={"csrf": csrf_of(form.text), "token": console.tokens["operator"]})
    cookie = next(c for c in done.headers["set-cookie"].split(", dsar") if "dsar_session=" in c)
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    page = http.get(f"{console.base}/ui/", timeout=30)
    assert page.status_code == 200
    assert "default-src 'none'" in page.headers["content-security-policy"]
    stolen = http.cookies.get("dsar_session")
    out = http.post(f"{console.base}/ui/logout", data={"csrf": csrf_of(page.text)}, allow_redirects=False, timeout=30)
    assert out.status_code == 303
    replay = requests.get(f"{console.base}/ui/", cookies={"dsar_session": stolen}, allow_redirects=False, timeout=30)
    assert replay.status_code == 303 and "/ui/login" in replay.headers["location"]  # ended server-side

    http = console.login("operator")
    assert http.get(f"{console.base}/ui/", allow_redirects=False, timeout=30).status_code == 200
    console.sql("UPDATE console_sessions SET expires_at = now() - interval '1 second' WHERE ended_at IS NULL")
    assert http.get(f"{console.base}/ui/", allow_redirects=False, timeout=30).status_code == 303


def test_docs_load_nothing_from_elsewhere(console: Console) -> None:
    page = requests.get(f"{console.base}/docs", timeout=30)
    assert page.status_code == 200
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text) + re.findall(r"url: ?'([^']+)'", page.text)
    assert refs and all(not urlparse(r).netloc or urlparse(r).netloc == urlparse(console.base).netloc
                        for r in refs), refs
    for ref in refs:
        if ref.startswith("/docs-assets/"):
            assert requests.get(f"{console.base}{ref}", timeout=30).status_code == 200, ref
    ui = requests.get(f"{console.base}/ui/login", timeout=30).text
    assert all(not urlparse(r).netloc for r in re.findall(r'(?:src|href|action)="([^"]+)"', ui))


def test_metrics_match_the_ledger(console: Console) -> None:
    text = requests.get(f"{console.base}/metrics", timeout=30).text
    got: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            got[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    rows = console.sql("SELECT type, status, count(*) FROM requests GROUP BY type, status")
    assert rows and all(got[("dsar_requests", (("status", s), ("type", t)))] == n for t, s, n in rows)
    (opened, overdue), = console.sql("SELECT count(*) FILTER (WHERE status = ANY(:open)), count(*) FILTER (WHERE "
                                     "status = ANY(:open) AND due_at < now()) FROM requests", open=list(OPEN))
    assert got[("dsar_requests_open", ())] == opened and got[("dsar_requests_overdue", ())] == overdue
    tasks = console.sql("SELECT system, action, status, count(*) FROM tasks GROUP BY 1, 2, 3")
    assert all(got[("dsar_tasks", (("action", a), ("status", st), ("system", sy)))] == n for sy, a, st, n in tasks)
    manual = console.sql("SELECT system, count(*) FROM tasks WHERE status = 'awaiting_manual' GROUP BY 1")
    assert all(got[("dsar_manual_steps_open", (("system", s),))] == n for s, n in manual)
    finished = console.sql("SELECT system, action, count(*) FROM tasks WHERE started_at IS NOT NULL AND finished_at "
                           "IS NOT NULL AND status IN ('done', 'failed') GROUP BY 1, 2")
    assert finished and all(got[("dsar_task_duration_seconds_count", (("action", a), ("system", s)))] == n
                            for s, a, n in finished)
    (size,), = console.sql("SELECT coalesce(sum(bundle_size), 0) FROM requests")
    assert got[("dsar_bundle_bytes_written", ())] == size > 0
    assert ("dsar_scheduled_actions_due", ()) in got and ("dsar_scheduled_actions_overdue", ()) in got


def test_the_console_and_the_api_list_the_same_requests_for_the_same_filters(console: Console) -> None:
    """One rule in both places (lifecycle.list_requests): each filter picks the same requests, in the same order
    for the same sort, with the same totals, in GET /v1/requests and on /ui/."""
    tag = uuid.uuid4().hex[:6]
    made = [console.submit("access", JANE.email.replace("@", f"+{tag}{n}@"), f"AGREE-{tag}-{n}") for n in range(3)]
    for request_id in made:
        console.wait(request_id, {"completed", "completed_with_errors"})
    # Two of them open again, held for identity checks (nothing picks those up): one past its deadline, one not.
    late, waiting = made[0], made[1]
    console.sql("UPDATE requests SET status = 'awaiting_verification', due_at = now() - interval '3 days' "
                "WHERE id = :id", id=late)
    console.sql("UPDATE requests SET status = 'awaiting_verification', due_at = now() + interval '2 days' "
                "WHERE id = :id", id=waiting)
    http = console.login("viewer")

    def api_ids(**params: str) -> tuple[list[str], int]:
        got = console.api("GET", "/v1/requests", params={**params, "per_page": "500"})
        assert got.status_code == 200, got.text
        return [r["id"] for r in got.json()["requests"]], got.json()["total"]

    def ui_ids(**params: str) -> tuple[list[str], int, int, int]:
        got = http.get(f"{console.base}/ui/", params=params, timeout=30)
        assert got.status_code == 200, got.text[:500]
        ids = re.findall(r'href="/ui/requests/([0-9a-f-]{36})"', got.text)
        stats = re.search(r"<b>(\d+)</b> open</span><span><b>(\d+)</b> overdue</span>\s*<span><b>(\d+)</b> shown",
                          got.text)
        assert stats, got.text[:1000]
        return ids, int(stats[3]), int(stats[1]), int(stats[2])

    cases: list[tuple[dict[str, str], dict[str, str]]] = [
        ({}, {"status": "all", "sort": "-received"}),  # the API's default order: newest first
        ({"status": "open"}, {"status": "open", "sort": "-received"}),
        ({"status": "completed"}, {"status": "completed", "sort": "-received"}),
        ({"status": "denied"}, {"status": "denied", "sort": "-received"}),
        ({"type": "access"}, {"status": "all", "type": "access", "sort": "-received"}),
        ({"type": "erasure", "status": "open"}, {"status": "open", "type": "erasure", "sort": "-received"}),
        ({"overdue": "true"}, {"status": "open", "overdue": "1", "sort": "due"}),  # most late first
        ({"ticket": f"AGREE-{tag}-2"}, {"status": "all", "ticket": f"AGREE-{tag}-2", "sort": "-received"}),
    ]
    open_ids, open_total = api_ids(status="open")
    overdue_ids, overdue_total = api_ids(overdue="true")
    assert late in overdue_ids and waiting in open_ids and waiting not in overdue_ids
    for api_params, ui_params in cases:
        want, want_total = api_ids(**api_params)
        got, got_total, ui_open, ui_overdue = ui_ids(**ui_params)
        assert got == want and got_total == want_total, (api_params, got, want)
        assert (ui_open, ui_overdue) == (open_total, overdue_total)  # the header counts the whole ledger
    assert ui_ids(status="all", ticket=f"AGREE-{tag}-2")[0] == [made[2]]
    # The same sort, both ways, on the console: by deadline, earliest first and latest first.
    by_due = ui_ids(status="open", sort="due")[0]
    assert by_due.index(late) < by_due.index(waiting) and ui_ids(status="open", sort="-due")[0] == by_due[::-1]


def _section(page: str, heading: str) -> str:
    """The HTML from an <h2> to the next one."""
    start = page.index(f"<h2>{heading}</h2>")
    end = page.find("<h2>", start + 4)
    return page[start:end if end != -1 else len(page)]


def test_a_request_page_shows_identities_plan_receipts_and_holds_as_the_ledger_has_them(console: Console) -> None:
    """An erasure of the sandbox's Jane (the browser scenario's, or a new one): each section holds what the ledger
    says, the subject's values masked without the subject scope and in full with it."""
    found = console.sql("SELECT id FROM requests WHERE type = 'erasure' AND ticket_ref = 'UI-1'")
    request_id = found[0][0] if found else console.submit("erasure", JANE.email, "UI-1")
    console.wait(request_id, {"awaiting_manual", "completed", "completed_with_errors"})
    page = console.login("operator").get(f"{console.base}/ui/requests/{request_id}", timeout=30).text
    identities = _section(page, "Identities learned")
    learned = console.sql("SELECT type, source FROM identities WHERE request_id = :id", id=request_id)
    assert learned and all(f"<td>{source}</td>" in identities for _kind, source in learned)
    assert JANE.email not in identities and "j***@e***.com" in identities  # masked without the subject scope
    plan = _section(page, "Plan")
    (steps,) = console.sql("SELECT plan FROM requests WHERE id = :id", id=request_id)[0]
    assert steps and all(f"<td>{s['system']}</td><td>{s['entity']}</td>" in plan for s in steps)
    changed = console.sql("SELECT system, action FROM tasks WHERE request_id = :id AND action <> 'export' AND "
                          "result::jsonb ? 'changed'", id=request_id)
    assert changed  # the accounts erasure at least
    receipts = _section(page, "Receipts")
    assert all(f"<td>{system}</td>" in receipts for system, _action in changed)
    held = console.sql("SELECT system, h->>'entity', h->>'until' FROM tasks, "
                       "json_array_elements(COALESCE(result->'held', '[]'::json)) h WHERE request_id = :id",
                       id=request_id)
    assert held  # the accounts system keeps bookkeeping records under a legal hold, until a date
    section = _section(page, "Held records")
    assert all(f"<td>{entity}</td>" in section and (until or "")[:10] in section for _s, entity, until in held)
    full = console.login("api")  # read + submit: no subject scope either
    assert JANE.email not in full.get(f"{console.base}/ui/requests/{request_id}", timeout=30).text


def test_scheduled_actions_are_listed_and_cancelled_with_a_reason(console: Console) -> None:
    email = JOHN.email.replace("@", f"+{uuid.uuid4().hex[:6]}@")
    made = run_dsar(["account-deleted", "--email", email, "--grace", "30d", "--actor", "test", "--json"],
                    console.env)
    assert made.returncode == 0, made.stderr
    action_id = int(re.search(r'"id":\s*(\d+)', made.stdout)[1])  # type: ignore[index]
    viewer = console.login("viewer")
    listed = viewer.get(f"{console.base}/ui/scheduled", timeout=30).text
    assert f"<td>{action_id}</td>" in listed and email not in listed
    assert f"/ui/scheduled/{action_id}/cancel" not in listed  # no form without the act scope
    refused = viewer.post(f"{console.base}/ui/scheduled/{action_id}/cancel", timeout=30,
                          data={"csrf": csrf_of(listed), "reason": "viewer tries"})
    assert refused.status_code == 403

    operator = console.login("operator")
    page = operator.get(f"{console.base}/ui/scheduled", timeout=30).text
    assert f'action="/ui/scheduled/{action_id}/cancel"' in page
    blank = operator.post(f"{console.base}/ui/scheduled/{action_id}/cancel", timeout=30,
                          data={"csrf": csrf_of(page), "reason": "  "})
    assert blank.status_code == 200 and "a reason for cancelling is required" in html.unescape(blank.text)
    assert console.sql("SELECT status FROM scheduled_actions WHERE id = :id", id=action_id) == [("scheduled",)]
    done = operator.post(f"{console.base}/ui/scheduled/{action_id}/cancel", timeout=30,
                         data={"csrf": csrf_of(page), "reason": "the account was restored"})
    assert done.status_code == 200 and f"Cancelled scheduled action {action_id}." in done.text
    assert console.sql("SELECT status FROM scheduled_actions WHERE id = :id", id=action_id) == [("cancelled",)]
    assert console.sql("SELECT actor, details->>'reason' FROM audit_events WHERE event = 'schedule.cancelled' AND "
                       "details->>'action_id' = :id", id=str(action_id)) == [("ui:operator",
                                                                              "the account was restored")]

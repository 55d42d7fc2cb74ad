"""The schedule commands end to end on embedded settings (SQLite ledger, in-process broker), with the
process clock set by DSAR_NOW."""

from __future__ import annotations

import email
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from sandbox.people import JANE, JOHN
from tests.conftest import ROOT, dsar_env, seed_accounts, write_config

pytestmark = pytest.mark.e2e

DSAR = str(Path(sys.executable).parent / "dsar")  # the installed entry point: it carries every part's commands


def dsar(args: list[str], env: dict[str, str], **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DSAR, *args], env={**env, **extra}, cwd=ROOT, capture_output=True, text=True, timeout=180)


@pytest.fixture
def cli(tmp_path: Path) -> dict[str, Any]:
    accounts = f"sqlite:///{tmp_path / 'accounts.db'}"
    engine = seed_accounts(accounts)
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    config = write_config(tmp_path, ledger)
    env = dsar_env(config, accounts, DSAR_SCHEDULE_OUTBOX_PATH=str(tmp_path / "outbox"))
    return {"env": env, "accounts": engine, "ledger": sa.create_engine(ledger), "tmp": tmp_path}


def full_name(engine: sa.Engine, account_id: str) -> str:
    with engine.connect() as conn:
        return str(conn.execute(sa.text(f"SELECT full_name FROM users WHERE id = {account_id}")).scalar_one())


def later(days: int) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


def test_account_deleted_then_listed_and_cancelled_with_an_audit_trail(cli: dict[str, Any]) -> None:
    env = cli["env"]
    first = dsar(["account-deleted", "--email", " Jane.Doe@Example.com ", "--grace", "10d"], env)
    assert first.returncode == 0, first.stderr
    assert "Erasure scheduled: #1, due" in first.stdout and "dsar schedule cancel 1" in first.stdout
    again = orjson.loads(dsar(["account-deleted", "--email", JANE.email, "--json"], env).stdout)
    assert (again["id"], again["created"], again["status"]) == (1, False, "scheduled")

    listed = dsar(["schedule", "list"], env)
    assert listed.returncode == 0
    assert "erasure" in listed.stdout and "scheduled" in listed.stdout and "j***@example.com" in listed.stdout
    assert JANE.email not in listed.stdout  # subjects are shown masked
    [row] = orjson.loads(dsar(["schedule", "list", "--json"], env).stdout)
    due = datetime.fromisoformat(row["due_at"])
    assert timedelta(days=9, hours=23) < due - datetime.now(UTC) <= timedelta(days=10)

    cancelled = dsar(["schedule", "cancel", "1", "--reason", "account restored", "--actor", "support-olav"], env)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "Cancelled #1" in cancelled.stdout
    assert "Nothing scheduled" in dsar(["schedule", "list"], env).stdout
    [closed] = orjson.loads(dsar(["schedule", "list", "--all", "--json"], env).stdout)
    assert (closed["status"], closed["cancel_reason"]) == ("cancelled", "account restored")
    with cli["ledger"].connect() as conn:
        events = conn.execute(sa.text("SELECT event, actor FROM audit_events WHERE event LIKE 'schedule.%' "
                                      "ORDER BY id")).all()
    assert [e.event for e in events] == ["schedule.created", "schedule.repeated", "schedule.cancelled"]
    assert events[-1].actor == "support-olav"


@pytest.mark.parametrize(("args", "code", "message"), [
    (["schedule", "cancel", "999", "--reason", "restored"], 4, "dsar: unknown scheduled action 999"),
    (["schedule", "cancel", "abc", "--reason", "restored"], 2, "is not a valid integer"),
    (["schedule", "cancel", "1"], 2, "Missing option '--reason'"),
    (["account-deleted", "--email", JANE.email, "--grace", "-3d"], 2, "the grace period '-3d' is not in the future"),
    (["account-deleted", "--email", JANE.email, "--grace", "0d"], 2, "is not in the future"),
    (["account-deleted", "--email", JANE.email, "--grace", "soon"], 2, "cannot read the grace period 'soon'"),
    (["account-deleted", "--email", JANE.email, "--grace", "400d"], 2, "at most 365 days"),
    (["account-deleted", "--email", "not-an-address"], 2, "dsar: "),
])
def test_bad_input_gets_one_clear_line_and_its_exit_code(cli: dict[str, Any], args: list[str], code: int,
                                                         message: str) -> None:
    got = dsar(args, cli["env"])
    assert got.returncode == code, got.stderr
    assert message in got.stderr and "Traceback" not in got.stderr
    assert "Nothing scheduled" in dsar(["schedule", "list"], cli["env"]).stdout


def test_an_unreadable_clock_is_a_configuration_error(cli: dict[str, Any]) -> None:
    got = dsar(["scheduler", "--once"], cli["env"], DSAR_NOW="next tuesday")
    assert got.returncode == 3
    assert "DSAR_NOW='next tuesday' is not an ISO 8601 time" in got.stderr


def test_the_scheduler_erases_once_the_clock_passes_the_grace_period(cli: dict[str, Any]) -> None:
    env = cli["env"]
    assert dsar(["account-deleted", "--email", JANE.email, "--grace", "30d"], env).returncode == 0
    now = dsar(["scheduler", "--once", "--json"], env)
    assert now.returncode == 0, now.stderr
    assert orjson.loads(now.stdout)["claimed"] == 0
    assert full_name(cli["accounts"], JANE.account_id) == "Jane Doe"

    due = dsar(["scheduler", "--once", "--json"], env, DSAR_NOW=later(31))
    assert due.returncode == 0, due.stderr
    data = orjson.loads(due.stdout)
    assert (data["claimed"], data["requests"]) == (1, 1)
    [request_id] = data["requests_created"]
    assert data["request_status"] == {request_id: "completed"}
    assert full_name(cli["accounts"], JANE.account_id) == "[redacted]"
    assert full_name(cli["accounts"], JOHN.account_id) == "John Smith"
    rows = orjson.loads(dsar(["schedule", "list", "--all", "--json"], env).stdout)
    [row] = [r for r in rows if r["kind"] == "erasure"]
    assert (row["status"], row["request_id"], row["attempts"]) == ("done", request_id, 1)
    # The erasure kept the orders under the 5-year hold: their ends are scheduled erasures of their own.
    holds = [r for r in rows if r["kind"] == "hold_end_erasure"]
    assert len(holds) == 2 and all(h["status"] == "scheduled" and h["source_request_id"] == request_id
                                   for h in holds)
    status = orjson.loads(dsar(["status", request_id, "--json"], env).stdout)
    assert status["type"] == "erasure" and status["status"] == "completed"


def test_sweep_inactive_tells_the_person_and_schedules_the_erasure(cli: dict[str, Any]) -> None:
    env = cli["env"]
    with cli["accounts"].begin() as conn:
        conn.execute(sa.text("UPDATE users SET last_login_at = :t WHERE id = :id"),
                     {"t": datetime.now(UTC).replace(tzinfo=None) - timedelta(days=800), "id": JOHN.account_id})
    swept = dsar(["sweep-inactive"], env)
    assert swept.returncode == 0, swept.stderr
    assert "notified now, erasure scheduled for" in swept.stdout and ": 1" in swept.stdout
    [notice] = list((cli["tmp"] / "outbox").glob("*.eml"))
    message = email.message_from_bytes(notice.read_bytes())
    assert message["To"] == JOHN.email and "will be deleted" in message["Subject"]
    again = orjson.loads(dsar(["sweep-inactive", "--json"], env).stdout)
    assert (again["inactive"], again["notified"], again["already_scheduled"]) == (1, 0, 1)
    [row] = orjson.loads(dsar(["schedule", "list", "--json"], env).stdout)
    assert row["kind"] == "inactivity_erasure" and row["subject"] == "j***@example.com"

    ran = dsar(["scheduler", "--once", "--json"], env, DSAR_NOW=later(31))
    assert ran.returncode == 0, ran.stderr
    assert orjson.loads(ran.stdout)["requests"] == 1
    assert "inactivity_erasure" in dsar(["schedule", "list", "--all"], env).stdout
    assert full_name(cli["accounts"], JOHN.account_id) == "[redacted]"
    assert full_name(cli["accounts"], JANE.account_id) == "Jane Doe"

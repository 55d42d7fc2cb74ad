"""`dsar requests|deny|cancel|retry|audit` end to end on embedded settings (SQLite ledger, in-process broker):
each command, bad input (exit 2), an unknown id (exit 4) and a wrong state (exit 8)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from sandbox.people import JANE, JOHN
from tests.conftest import dsar_env, run_dsar, seed_accounts, write_config

pytestmark = pytest.mark.e2e

UNKNOWN = "00000000-0000-0000-0000-000000000000"


class Nowhere:
    def discover(self, request_id: str) -> None: ...
    def execute(self, task_id: int) -> None: ...
    def merge(self, request_id: str) -> None: ...


@pytest.fixture
def cli(tmp_path: Path) -> dict[str, Any]:
    accounts = f"sqlite:///{tmp_path / 'accounts.db'}"
    engine = seed_accounts(accounts)
    engine.dispose()
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}")
    return {"env": dsar_env(config, accounts), "config": config, "tmp": tmp_path, "accounts": accounts}


def open_request(cli: dict[str, Any], email: str) -> str:
    """A request that stays received: submitted without waking anyone."""
    from discovery.engine import db, pipeline
    from discovery.engine.runtime import Runtime
    from discovery.engine.settings import load_settings

    env = {k: v for k, v in cli["env"].items() if k.startswith("DSAR_")}
    rt = Runtime(load_settings(cli["config"], env), env=env)
    try:
        db.upgrade(rt.engine)
        return pipeline.submit(rt, Nowhere(), "erasure", email, ticket="T-9", actor="test").request.id
    finally:
        rt.close()


def dsar(cli: dict[str, Any], *args: str, **env: str) -> Any:
    return run_dsar(list(args), {**cli["env"], **env})


def test_list_deny_cancel_audit(cli: dict[str, Any]) -> None:
    done = dsar(cli, "request", "access", "--email", JANE.email, "--ticket", "T-1", "--json")
    assert done.returncode == 0, done.stderr
    done_id = orjson.loads(done.stdout)["id"]
    held = open_request(cli, JOHN.email)

    listed = dsar(cli, "requests", "--json")
    data = orjson.loads(listed.stdout)
    assert listed.returncode == 0 and data["total"] == 2 and data["page"] == 1
    assert [r["id"] for r in data["requests"]] == [held, done_id]
    assert JANE.email not in listed.stdout and data["requests"][1]["subject"] == "j***@e***.com"
    full = orjson.loads(dsar(cli, "requests", "--show-subject", "--json").stdout)
    assert full["requests"][1]["subject_email"] == JANE.email
    assert [r["id"] for r in orjson.loads(dsar(cli, "requests", "--status", "open", "--json").stdout)[
        "requests"]] == [held]
    assert [r["id"] for r in orjson.loads(dsar(cli, "requests", "--type", "access", "--ticket", "T-1", "--json")
                                          .stdout)["requests"]] == [done_id]
    assert orjson.loads(dsar(cli, "requests", "--overdue", "--json").stdout)["total"] == 0
    human = dsar(cli, "requests", "--per-page", "1")
    assert human.returncode == 0 and held in human.stdout and done_id not in human.stdout
    assert "page 1 of 2, 2 request(s)" in human.stderr
    assert dsar(cli, "requests", "--status", "lost").returncode == 2

    # wrong states, bad input, unknown ids
    completed = dsar(cli, "deny", done_id, "--basis", "unfounded-or-excessive", "--reason", "too many")
    assert completed.returncode == 8 and "is completed" in completed.stderr and "Traceback" not in completed.stderr
    assert dsar(cli, "retry", done_id).returncode == 8
    assert dsar(cli, "cancel", UNKNOWN, "--reason", "withdrawn").returncode == 4
    assert dsar(cli, "audit", UNKNOWN).returncode == 4
    assert dsar(cli, "deny", held, "--basis", "because", "--reason", "too many").returncode == 2
    assert dsar(cli, "deny", held, "--basis", "unfounded-or-excessive", "--reason", " ").returncode == 2
    assert dsar(cli, "cancel", held, "--reason", "withdrawn", "--actor", " ").returncode == 2

    cancelled = dsar(cli, "cancel", held, "--reason", "the person withdrew by phone", "--actor", "dpo-kari",
                     "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    assert orjson.loads(cancelled.stdout)["status"] == "cancelled"
    again = dsar(cli, "deny", held, "--basis", "identity-not-verified", "--reason", "no proof")
    assert again.returncode == 8 and "cancelled" in again.stderr

    trail = orjson.loads(dsar(cli, "audit", held, "--json").stdout)
    assert [(e["event"], e["actor"]) for e in trail["events"]][-1] == ("request.cancelled", "dpo-kari")
    human_trail = dsar(cli, "audit", held)
    assert "request.cancelled" in human_trail.stdout and "the person withdrew by phone" in human_trail.stdout
    status = dsar(cli, "status", held)
    assert "Cancelled: the person withdrew by phone" in status.stdout


def test_actor_defaults_to_the_os_user(cli: dict[str, Any]) -> None:
    held = open_request(cli, JOHN.email)
    got = dsar(cli, "deny", held, "--basis", "unfounded-or-excessive", "--reason", "the same question weekly",
               LOGNAME="kari", USER="kari")
    assert got.returncode == 0, got.stderr
    trail = orjson.loads(dsar(cli, "audit", held, "--json").stdout)
    assert trail["events"][-1]["actor"] == "kari"


def test_retry_after_a_failed_search(cli: dict[str, Any]) -> None:
    broken = f"sqlite:///{cli['tmp'] / 'missing' / 'accounts.db'}"  # the folder does not exist: cannot open
    # the export of an unreachable database is retried: twice, quickly, is enough to fail it here
    first = dsar(cli, "request", "access", "--email", JANE.email, "--json", DSAR_ACCOUNTS_DB_URL=broken,
                 DSAR_WORKER_MAX_ATTEMPTS="2", DSAR_WORKER_RETRY_BACKOFF_SECONDS="0.1")
    assert first.returncode == 1, first.stderr
    request_id = orjson.loads(first.stdout)["id"]
    assert orjson.loads(first.stdout)["status"] == "completed_with_errors"
    status = dsar(cli, "status", request_id)
    assert f"Next: dsar retry {request_id} --system accounts" in status.stdout
    assert dsar(cli, "retry", request_id, "--system", "billing").returncode == 2
    retried = dsar(cli, "retry", request_id, "--actor", "dpo-kari", "--json")
    assert retried.returncode == 0, retried.stderr
    data = orjson.loads(retried.stdout)
    assert data["status"] == "completed" and data["relocated"] == {"accounts": None}
    assert dsar(cli, "retry", request_id).returncode == 8


def test_token_extend_and_identity_verified_name_the_os_user_too(cli: dict[str, Any]) -> None:
    """`token`, `extend`, `identity-verified` and `schedule cancel` take the same actor as the lifecycle commands:
    --actor, else the OS user (getpass: $LOGNAME/$USER, else the password database), never a made-up "operator";
    a blank one is refused before anything changes."""
    import pwd

    import sqlalchemy as sa

    env = {k: v for k, v in cli["env"].items() if k not in ("LOGNAME", "USER", "LNAME", "USERNAME")}
    me = pwd.getpwuid(os.getuid()).pw_name
    held = open_request(cli, JOHN.email)

    assert run_dsar(["token", "create", "desk", "--scope", "read", "--actor", " "], env).returncode == 2
    assert run_dsar(["extend", held, "--days", "10", "--reason", "complex", "--actor", ""], env).returncode == 2
    blank = run_dsar(["identity-verified", held, "--note", "passport seen", "--actor", "  "], env)
    assert blank.returncode == 2 and "--actor must name who acts" in blank.stderr
    assert run_dsar(["schedule", "cancel", "1", "--reason", "restored", "--actor", " "], env).returncode == 2
    assert run_dsar(["token", "list", "--json"], env).stdout.strip() == "[]"  # nothing was made

    assert run_dsar(["token", "create", "desk", "--scope", "read"], env).returncode == 0
    assert run_dsar(["token", "revoke", "desk", "--actor", "dpo-kari"], env).returncode == 0
    extended = run_dsar(["extend", held, "--days", "10", "--reason", "many systems to search"], env)
    assert extended.returncode == 0, extended.stderr

    ledger = sa.create_engine(f"sqlite:///{cli['tmp'] / 'ledger.db'}")
    try:
        with ledger.connect() as conn:
            rows = conn.execute(sa.text("SELECT event, actor FROM audit_events WHERE event IN "
                                        "('api_token.created', 'api_token.revoked', 'request.extended') "
                                        "ORDER BY id")).all()
    finally:
        ledger.dispose()
    assert [tuple(r) for r in rows] == [("api_token.created", me), ("api_token.revoked", "dpo-kari"),
                                        ("request.extended", me)]
    assert me not in ("", "operator")


def test_request_expire_and_purge_name_who_ran_them(cli: dict[str, Any]) -> None:
    """`request`, `bundles expire` and `ledger purge` record who ran them as every other command does (--actor, else
    the OS user), not "cli": a submission and a deletion of personal data are someone's doing."""
    from datetime import UTC, datetime

    import sqlalchemy as sa

    from discovery.engine.ledger import Request

    blank = dsar(cli, "request", "access", "--email", JANE.email, "--actor", " ")
    assert blank.returncode == 2 and "--actor must name who acts" in blank.stderr
    done = dsar(cli, "request", "access", "--email", JANE.email, "--json", LOGNAME="kari", USER="kari")
    assert done.returncode == 0, done.stderr
    request_id = orjson.loads(done.stdout)["id"]
    ledger = sa.create_engine(f"sqlite:///{cli['tmp'] / 'ledger.db'}")
    try:
        with ledger.begin() as conn:  # as if it had ended long ago: its bundle due to expire, its row to be purged
            long_ago = datetime(2020, 1, 1, tzinfo=UTC)
            conn.execute(sa.update(Request).where(Request.id == request_id).values(
                completed_at=long_ago, bundle_expires_at=long_ago))
        assert dsar(cli, "bundles", "expire", "--actor", "").returncode == 2
        expired = dsar(cli, "bundles", "expire", "--json", LOGNAME="ola", USER="ola")
        assert expired.returncode == 0 and orjson.loads(expired.stdout)["failed"] == 0, expired.stderr
        assert dsar(cli, "ledger", "purge", "--actor", " ").returncode == 2
        purged = dsar(cli, "ledger", "purge", "--actor", "dpo-kari", "--json")
        assert purged.returncode == 0 and orjson.loads(purged.stdout)["requests"] == 1, purged.stderr
        with ledger.connect() as conn:
            rows = conn.execute(sa.text("SELECT event, actor FROM audit_events WHERE event IN ('request.received', "
                                        "'bundle.expired', 'ledger.purged') ORDER BY id")).all()
    finally:
        ledger.dispose()
    assert [tuple(r) for r in rows] == [("request.received", "kari"), ("bundle.expired", "ola"),
                                        ("ledger.purged", "dpo-kari")]

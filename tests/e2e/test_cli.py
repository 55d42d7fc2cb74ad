"""The dsar command line end to end, on embedded settings (SQLite ledger, in-process broker)."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
import yaml

from sandbox.people import JANE
from tests.conftest import dsar_env, run_dsar, seed_accounts, write_config

pytestmark = pytest.mark.e2e


@pytest.fixture
def cli(tmp_path: Path) -> dict[str, Any]:
    accounts = f"sqlite:///{tmp_path / 'accounts.db'}"
    engine = seed_accounts(accounts)
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}")
    return {"env": dsar_env(config, accounts), "accounts": engine, "config": config, "tmp": tmp_path}


def jane_restricted(engine: sa.Engine) -> bool:
    with engine.connect() as conn:
        return bool(conn.execute(sa.text(f"SELECT processing_restricted FROM users WHERE id = {JANE.account_id}"))
                    .scalar_one())


def test_access_status_and_download(cli: dict[str, Any]) -> None:
    done = run_dsar(["request", "access", "--email", " Jane.Doe@Example.com ", "--ticket", "4711", "--wait"],
                    cli["env"])
    assert done.returncode == 0, done.stderr
    assert "accounts       export            done  (12 records)" in done.stderr  # progress, per system
    assert "status: completed" in done.stdout and "Bundle:" in done.stdout
    request_id = done.stdout.split()[1]

    status = run_dsar(["status", request_id, "--json"], cli["env"])
    data = orjson.loads(status.stdout)
    assert data["status"] == "completed" and data["ticket"] == "4711" and data["due_at"]
    assert data["tasks"][0]["records"] == 12

    human = run_dsar(["status", request_id], cli["env"])
    assert "due" in human.stdout and "accounts" in human.stdout

    out = cli["tmp"] / "out.zip"
    got = run_dsar(["download", request_id, "-o", str(out)], cli["env"])
    assert got.returncode == 0
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
    assert {"manifest.json", "data/accounts/users.json", "data/accounts/login_log.json"} <= names


def test_open_request_shows_due_date_and_days_left(cli: dict[str, Any]) -> None:
    from discovery.engine import db, pipeline
    from discovery.engine.runtime import Runtime
    from discovery.engine.settings import load_settings

    class Nowhere:  # no worker picks it up: the request stays open
        def discover(self, request_id: str) -> None: ...
        def execute(self, task_id: int) -> None: ...
        def merge(self, request_id: str) -> None: ...

    rt = Runtime(load_settings(cli["config"], cli["env"]), env=cli["env"])
    db.upgrade(rt.engine)
    req = pipeline.submit(rt, Nowhere(), "access", JANE.email).request
    rt.close()
    data = orjson.loads(run_dsar(["status", req.id, "--json"], cli["env"]).stdout)
    assert data["status"] == "received" and data["days_left"] in (29, 30)
    human = run_dsar(["status", req.id], cli["env"]).stdout
    assert f"due {req.due_at:%Y-%m-%d}" in human and "days left" in human


def test_dry_run_shows_the_plan_and_changes_nothing(cli: dict[str, Any]) -> None:
    with cli["accounts"].connect() as conn:
        before = conn.execute(sa.text("SELECT count(*) FROM login_log")).scalar_one()
    plan = run_dsar(["request", "erasure", "--email", JANE.email, "--dry-run", "--json"], cli["env"])
    assert plan.returncode == 0, plan.stderr
    data = orjson.loads(plan.stdout)
    steps = {(s["entity"], s["action"]) for s in data["plan"]}
    assert {("orders", "restrict"), ("orders", "erase"), ("users", "erase"), ("login_log", "erase")} <= steps
    with cli["accounts"].connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM login_log")).scalar_one() == before
    human = run_dsar(["request", "erasure", "--email", JANE.email, "--dry-run"], cli["env"])
    assert "nothing was changed" in human.stdout and "Bookkeeping Act" in human.stdout
    # No request was recorded.
    ledger = sa.create_engine(f"sqlite:///{cli['tmp'] / 'ledger.db'}")
    with ledger.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM requests")).scalar_one() == 0


def test_restriction_and_erasure_through_the_cli(cli: dict[str, Any]) -> None:
    r = run_dsar(["request", "restriction", "--email", JANE.email, "--wait", "--json"], cli["env"])
    assert r.returncode == 0 and jane_restricted(cli["accounts"])
    e = run_dsar(["request", "erasure", "--email", JANE.email, "--wait", "--json"], cli["env"])
    task = orjson.loads(e.stdout)["tasks"][0]
    assert task["changed"] == {"orders": 1, "login_log": 6, "servers": 2, "users": 1}
    assert task["held"][0]["records"] == 2


@pytest.mark.parametrize("email", ["not-an-email", "jane@", ""])
def test_bad_email_is_refused_with_exit_2(cli: dict[str, Any], email: str) -> None:
    r = run_dsar(["request", "access", "--email", email], cli["env"])
    assert r.returncode == 2
    assert r.stderr.startswith("dsar: invalid e-mail address") and r.stderr.count("\n") == 1


def test_unknown_request_id_exits_4(cli: dict[str, Any]) -> None:
    for args in (["status", "nope"], ["download", "nope", "-o", str(cli["tmp"] / "x.zip")]):
        r = run_dsar(args, cli["env"])
        assert r.returncode == 4 and r.stderr == "dsar: unknown request nope\n"
    assert not (cli["tmp"] / "x.zip").exists()


def test_missing_config_key_exits_3_naming_it(cli: dict[str, Any]) -> None:
    config: Path = cli["config"]
    config.write_text(config.read_text().replace("[broker]\nurl = \"stub://\"", "[broker]"))
    r = run_dsar(["status", "x"], cli["env"])
    assert r.returncode == 3
    assert "missing key: 'broker.url'" in r.stderr and "DSAR_BROKER_URL" in r.stderr


def test_unknown_column_in_the_data_map(cli: dict[str, Any]) -> None:
    path = cli["tmp"] / "datamap.yaml"
    dm = yaml.safe_load(path.read_text())
    dm["systems"]["accounts"]["entities"]["users"]["fields"]["shoe_size"] = "identity"
    path.write_text(yaml.safe_dump(dm, allow_unicode=True))
    check = run_dsar(["check"], cli["env"])
    assert check.returncode == 1
    assert "entity users: column 'shoe_size' does not exist in table users" in check.stdout
    req = run_dsar(["request", "access", "--email", JANE.email, "--wait", "--json"], cli["env"])
    assert req.returncode == 1
    data = orjson.loads(req.stdout)
    assert data["status"] == "completed_with_errors" and "shoe_size" in data["error"]


def test_databases_down(cli: dict[str, Any]) -> None:
    env = dict(cli["env"], DSAR_LEDGER_URL="postgresql+psycopg://nobody@127.0.0.1:1/dsar")
    r = run_dsar(["status", "x"], env)
    assert r.returncode == 5 and r.stderr.startswith("dsar: ledger database unreachable")
    env = dict(cli["env"], DSAR_ACCOUNTS_DB_URL="postgresql+psycopg://nobody:pw@127.0.0.1:1/accounts")
    check = run_dsar(["check", "--json"], env)
    assert check.returncode == 1
    result = orjson.loads(check.stdout)
    assert result["systems"]["ledger"]["ok"] is True
    assert result["systems"]["accounts"]["problems"][0].startswith("cannot connect to the database")
    assert "pw@" not in check.stdout


def test_check_passes_on_a_good_setup(cli: dict[str, Any]) -> None:
    r = run_dsar(["check"], cli["env"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "accounts       ok" in r.stdout


def test_check_warns_about_identity_columns_without_an_index(cli: dict[str, Any]) -> None:
    with cli["accounts"].begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_users_phone"))
    r = run_dsar(["check", "--json"], cli["env"])
    assert r.returncode == 0  # a warning, not a failure
    warnings = orjson.loads(r.stdout)["systems"]["accounts"]["warnings"]
    assert "entity users: identity column phone (phone) has no index; locating will scan users" in warnings
    assert not any("matomo_visitor_id" in w and "no index" in w for w in warnings)

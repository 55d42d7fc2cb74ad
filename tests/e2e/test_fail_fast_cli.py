"""Fail fast, fail loudly (issue 11.3), through the CLI on a PostgreSQL ledger: a bad data map is exit 3 with one line
naming system and key before anything is written (`dsar request`, `dsar worker`); with the broker down, `request`
writes the request and says so, giving its id (exit 5); a system that stays unreachable spends
worker.system_retry_budget and its task fails with one line; a second request type on a ticket is exit 8 naming the
first request (issue 11.5)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
import yaml

from sandbox.people import JANE
from tests.conftest import ROOT, dsar_env, free_port, run_dsar, seed_accounts, write_config

pytestmark = pytest.mark.e2e


def requests_count(ledger: str) -> int:
    engine = sa.create_engine(ledger)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM requests")).scalar_one())
    finally:
        engine.dispose()


def break_map(tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    raw = yaml.safe_load((ROOT / "config" / "datamap.yaml").read_text(encoding="utf-8"))
    change(raw["systems"])
    (tmp_path / "datamap.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")


def bad_sql(systems: dict[str, Any]) -> None:
    systems["accounts"]["entities"]["users"]["colums"] = {}  # a typo in the SQL section


def bad_vendor(systems: dict[str, Any]) -> None:
    systems["freshchat"]["enabled"] = True
    systems["freshchat"]["rate_per_second"] = "fast"


@pytest.mark.parametrize("change, why", [
    (bad_sql, "systems.accounts: entities.users.colums: Extra inputs are not permitted"),
    (bad_vendor, "systems.freshchat: rate_per_second: Input should be a valid number"),
])
def test_a_bad_data_map_is_exit_3_before_anything_is_written(
        tmp_path: Path, pg_database: Callable[[], str], redis_url: str, change: Callable[[dict[str, Any]], None],
        why: str) -> None:
    ledger = pg_database()
    config = write_config(tmp_path, ledger)
    env = dsar_env(config, f"sqlite:///{tmp_path / 'accounts.db'}", DSAR_FRESHCHAT_TOKEN="t")
    assert run_dsar(["db-upgrade"], env).returncode == 0  # a ledger that works, with the good map
    break_map(tmp_path, change)

    done = run_dsar(["request", "access", "--email", JANE.email], env, timeout=60)
    assert done.returncode == 3, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("dsar: data map ") and line.endswith(why)
    assert requests_count(ledger) == 0

    worker = run_dsar(["worker", "--processes", "1", "--threads", "1"], {**env, "DSAR_BROKER_URL": redis_url},
                      timeout=60)
    assert worker.returncode == 3, worker.stderr
    assert worker.stderr.strip().splitlines()[-1].endswith(why) and "Traceback" not in worker.stderr
    assert requests_count(ledger) == 0


def test_with_the_broker_down_the_request_is_written_and_the_operator_gets_its_id(
        tmp_path: Path, pg_database: Callable[[], str]) -> None:
    ledger = pg_database()
    config = write_config(tmp_path, ledger, f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    env = dsar_env(config, f"sqlite:///{tmp_path / 'accounts.db'}")
    done = run_dsar(["request", "access", "--email", JANE.email], env, timeout=60)
    assert done.returncode == 5, done.stderr
    request_id = done.stdout.strip()
    (line,) = done.stderr.strip().splitlines()
    assert line == (f"dsar: broker unreachable (ConnectionError): request {request_id} is queued in the ledger; "
                    "the sweeper will pick it up when the broker is back")
    engine = sa.create_engine(ledger)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT id, status FROM requests")).all() == [(request_id, "received")]
    engine.dispose()
    as_json = run_dsar(["request", "erasure", "--email", JANE.email, "--json"], env, timeout=60)
    assert as_json.returncode == 5
    data = orjson.loads(as_json.stdout)
    assert data["queued_in_ledger_only"] is True and data["id"] in as_json.stderr


def test_an_unreachable_system_spends_its_retry_budget_and_fails_with_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}", max_attempts=50,
                          retry_backoff_seconds=0.2, system_retry_budget=3)
    env = dsar_env(config, f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/accounts")  # nothing listens
    started = time.monotonic()
    done = run_dsar(["request", "access", "--email", JANE.email, "--wait", "--timeout", "60", "--json"], env,
                    timeout=90)
    assert time.monotonic() - started < 45
    assert done.returncode == 1, done.stderr
    status = orjson.loads(done.stdout)
    (task,) = status["tasks"]
    assert task["status"] == "failed" and 2 <= task["attempts"] < 50
    assert task["error"].startswith(f"gave up after {task['attempts']} attempts in ")
    assert "s (worker.system_retry_budget): " in task["error"] and "Connection refused" in task["error"]
    assert "\n" not in task["error"] and "Traceback" not in done.stderr
    assert status["status"] == "completed_with_errors"


def test_a_second_type_on_a_ticket_is_exit_8_naming_the_first_request(tmp_path: Path) -> None:
    accounts = f"sqlite:///{tmp_path / 'accounts.db'}"
    seed_accounts(accounts).dispose()
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}")
    env = dsar_env(config, accounts)
    first = run_dsar(["request", "access", "--email", JANE.email, "--ticket", "HD-9", "--json"], env)
    assert first.returncode == 0, first.stderr
    first_id = orjson.loads(first.stdout)["id"]
    other = run_dsar(["request", "erasure", "--email", JANE.email, "--ticket", "HD-9"], env)
    assert other.returncode == 8
    assert other.stderr.strip() == (f"dsar: this ticket made request {first_id} (access) already; "
                                    "one request per ticket")

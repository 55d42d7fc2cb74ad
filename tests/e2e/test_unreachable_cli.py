"""A SQL system that cannot be reached (issue 10, point 5), through the CLI on embedded settings: the request ends
completed_with_errors in bounded time, `status` and `--dry-run` name the system with a one-line reason, and no
traceback reaches the terminal without -v."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from sandbox.people import JANE
from tests.conftest import dsar_env, free_port, run_dsar, write_config

pytestmark = pytest.mark.e2e


def env_for(tmp_path: Path) -> dict[str, str]:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}", max_attempts=2,
                          retry_backoff_seconds=0.2)
    return dsar_env(config, f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/accounts")  # nothing listens


def test_an_unreachable_sql_system_fails_the_request_in_bounded_time_naming_it(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    started = time.monotonic()
    done = run_dsar(["request", "access", "--email", JANE.email, "--wait", "--timeout", "60"], env, timeout=90)
    assert time.monotonic() - started < 60
    assert done.returncode == 1, done.stderr
    assert "status: completed_with_errors" in done.stdout
    assert "accounts       locate            failed           " in done.stdout and "Connection refused" in done.stdout
    assert "accounts       export            failed" in done.stderr  # progress: the export gave up after its retries
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    assert all(len(line) < 400 for line in done.stderr.splitlines())
    request_id = done.stdout.split()[1]

    status = orjson.loads(run_dsar(["status", request_id, "--json"], env).stdout)
    assert status["status"] == "completed_with_errors"
    assert list(status["locate_errors"]) == ["accounts"] and "Connection refused" in status["locate_errors"]["accounts"]
    assert status["error"].startswith("accounts locate: ") and "accounts export: gave up after 2 attempts" in \
        status["error"]
    (task,) = status["tasks"]
    assert task["status"] == "failed" and task["attempts"] == 2
    human = run_dsar(["status", request_id], env)
    assert "accounts       locate            failed" in human.stdout and "Traceback" not in human.stderr


def test_a_dry_run_names_the_unreachable_system_not_the_ledger(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    plan = run_dsar(["request", "erasure", "--email", JANE.email, "--dry-run"], env, timeout=60)
    assert plan.returncode == 1, plan.stderr
    # the connector names the trouble itself (a TransientError), not the driver's exception class
    assert "accounts: locate failed: database unreachable: " in plan.stdout and "Connection refused" in plan.stdout
    assert "Locate failed: accounts." in plan.stderr
    assert "ledger" not in plan.stderr + plan.stdout and "Traceback" not in plan.stderr
    data = orjson.loads(run_dsar(["request", "erasure", "--email", JANE.email, "--dry-run", "--json"], env).stdout)
    assert list(data["locate_errors"]) == ["accounts"]

"""Real Dramatiq workers on Redis and on RabbitMQ (each test runs on both: a test-owned Redis database, the test
run's own vhost), a PostgreSQL ledger and account database, driven through the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from sandbox.people import JANE
from tests.conftest import ROOT, dsar_env, run_dsar, seed_accounts, write_config
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(tmp_path: Path, pg_database: Callable[[], str], broker_url: str) -> Iterator[dict[str, Any]]:
    ledger, accounts = pg_database(), pg_database()
    engine = seed_accounts(accounts)
    config = write_config(tmp_path, ledger, broker_url, task_lease_seconds=5, sweep_interval_seconds=1,
                          retry_backoff_seconds=0.2)
    env = dsar_env(config, accounts)
    workers: list[subprocess.Popen[bytes]] = []

    def start_worker() -> subprocess.Popen[bytes]:
        log = (tmp_path / f"worker{len(workers)}.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "worker", "--processes", "1", "--threads", "2"],
                                env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        workers.append(proc)
        return proc

    yield {"env": env, "accounts": engine, "ledger": sa.create_engine(ledger), "start_worker": start_worker}
    for proc in workers:
        kill(proc, signal.SIGTERM)
    engine.dispose()


def kill(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()




def test_access_request_through_a_real_worker(stack: dict[str, Any], tmp_path: Path) -> None:
    stack["start_worker"]()
    done = run_dsar(["request", "access", "--email", JANE.email, "--ticket", "4711", "--wait", "--json",
                     "--timeout", "90"], stack["env"])
    assert done.returncode == 0, done.stderr
    status = orjson.loads(done.stdout)
    assert status["status"] == "completed" and status["ticket"] == "4711"
    assert [(t["system"], t["action"], t["status"]) for t in status["tasks"]] == [("accounts", "export", "done")]
    out = tmp_path / "bundle.zip"
    got = run_dsar(["download", status["id"], "-o", str(out)], stack["env"])
    assert got.returncode == 0, got.stderr
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None
        manifest = orjson.loads(zf.read("manifest.json"))
    assert manifest["request"]["id"] == status["id"]
    assert manifest["systems"]["accounts"]["entities"]["login_log"]["records"] == 6


def test_a_request_survives_a_worker_killed_mid_task(stack: dict[str, Any]) -> None:
    ledger = stack["ledger"]
    blocker = stack["accounts"].connect()
    blocker_tx = blocker.begin()
    # Reads go through (discovery and planning finish), writes to orders wait: the erase task hangs mid-way.
    blocker.execute(sa.text("LOCK TABLE orders IN EXCLUSIVE MODE"))
    first = stack["start_worker"]()
    submitted = run_dsar(["request", "erasure", "--email", JANE.email, "--json"], stack["env"])
    assert submitted.returncode == 0, submitted.stderr
    request_id = orjson.loads(submitted.stdout)["id"]

    def task_running() -> Any:
        with ledger.connect() as conn:
            return conn.execute(sa.text("SELECT id FROM tasks WHERE request_id = :r AND status = 'running'"),
                                {"r": request_id}).first()

    wait_until(task_running, what="the erase task to start")
    kill(first, signal.SIGKILL)  # no chance to clean up: the lease and the broker's unacked message remain
    blocker_tx.rollback()
    blocker.close()

    stack["start_worker"]()
    status = run_dsar(["request", "erasure", "--email", JANE.email, "--wait", "--json", "--timeout", "90"],
                      stack["env"])
    assert status.returncode == 0, status.stdout + status.stderr
    data = orjson.loads(status.stdout)
    assert data["id"] == request_id  # the same open request, not a second one
    assert data["status"] == "completed"
    (task,) = data["tasks"]
    assert task["status"] == "done" and task["attempts"] >= 2
    assert task["changed"] == {"orders": 1, "login_log": 6, "servers": 2, "users": 1}
    with ledger.connect() as conn:
        completed = conn.execute(sa.text("SELECT count(*) FROM audit_events WHERE request_id = :r AND "
                                         "event = 'request.completed'"), {"r": request_id}).scalar_one()
        tasks = conn.execute(sa.text("SELECT count(*) FROM tasks WHERE request_id = :r"),
                             {"r": request_id}).scalar_one()
    assert completed == 1 and tasks == 1
    with stack["accounts"].connect() as conn:
        held = conn.execute(sa.text(f"SELECT count(*) FROM orders WHERE user_id = {JANE.account_id} "
                                    "AND processing_restricted")).scalar_one()
    assert held == 2

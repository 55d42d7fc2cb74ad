"""Console and metrics benchmark: the open-requests page and /metrics with 10,000 requests in a PostgreSQL ledger.

    .venv/bin/python bench/bench_console.py                     # 10,000 requests, 5 tasks each, 50 timed calls

What it does (a benchmark, not a test: it writes down what it measures):
  - a fresh PostgreSQL ledger database (dropped afterwards), schema by Alembic;
  - seeds N requests server-side-fast (bulk inserts): 60% open (a tenth of those overdue), the rest finished,
    every one with 5 tasks (started and finished, durations spread), bundles on the finished ones, 200 scheduled
    actions;
  - the app in this process (`create_app`, Starlette's TestClient: no sockets), logged in with a read token;
  - times each URL 50 times after 5 warm-up calls: server time = the call's wall time in this process (routing,
    session check, queries, template, response), the median and p95.
Writes bench/out/console.json and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT))

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
SECRET = "bench-secret-key-0123456789"
OPEN = ("received", "running", "awaiting_manual")
DONE = ("completed", "completed_with_errors")
SYSTEMS = ("accounts", "freshchat", "mautic", "salesmanago", "matomo")


def seed(engine: sa.Engine, n: int) -> None:
    rnd = random.Random(7)
    now = datetime.now(UTC)
    reqs, tasks = [], []
    for i in range(n):
        rid = str(uuid.UUID(int=rnd.getrandbits(128)))
        received = now - timedelta(days=rnd.uniform(0, 60))
        is_open = i % 10 < 6
        due = received + timedelta(days=30)
        if is_open and i % 10 == 0:
            due = now - timedelta(days=rnd.uniform(0.1, 10))  # overdue
        elif is_open:
            due = now + timedelta(days=rnd.uniform(0.1, 30))
        status = OPEN[i % 3] if is_open else DONE[i % 2]
        rtype = ("access", "erasure", "portability", "restriction")[i % 4]
        reqs.append({"id": rid, "type": rtype, "subject_email": f"person{i}@example.org", "subject_hash": f"{i:064x}",
                     "ticket_ref": f"T-{i}", "source": "api", "status": status,
                     "open_key": f"{rtype}:{i:064x}" if is_open else None, "received_at": received, "due_at": due,
                     "updated_at": received, "completed_at": None if is_open else received + timedelta(hours=1),
                     "bundle_size": None if is_open else rnd.randint(10_000, 2_000_000),
                     "bundle_path": None if is_open else f"/archive/{rid}.zip"})
        for system in SYSTEMS:
            started = received + timedelta(seconds=rnd.uniform(1, 30))
            tasks.append({"request_id": rid, "system": system, "action": "export" if rtype == "access" else "erase",
                          "entities": ["x"], "status": "awaiting_manual" if status == "awaiting_manual"
                          and system == "mautic" else "done", "attempts": 1, "created_at": received,
                          "updated_at": received, "started_at": started,
                          "finished_at": started + timedelta(seconds=rnd.expovariate(1 / 3))})
    actions = [{"kind": "erasure", "subject_email": f"s{i}@example.org", "subject_hash": f"{i:064x}",
                "due_at": now + timedelta(days=rnd.uniform(-2, 30)), "reason": "bench", "status": "scheduled",
                "attempts": 0, "created_by": "bench", "created_at": now, "details": {}} for i in range(200)]
    from discovery.engine.ledger import Request, ScheduledAction, Task

    with engine.begin() as conn:
        for start in range(0, len(reqs), 2000):
            conn.execute(sa.insert(Request), reqs[start:start + 2000])
        for start in range(0, len(tasks), 5000):
            conn.execute(sa.insert(Task), tasks[start:start + 5000])
        conn.execute(sa.insert(ScheduledAction), actions)
        conn.execute(sa.text("ANALYZE"))


def timed(client: Any, url: str, calls: int) -> dict[str, float]:
    for _ in range(5):
        assert client.get(url).status_code == 200, url
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        resp = client.get(url)
        times.append((time.perf_counter() - t0) * 1000)
        assert resp.status_code == 200, (url, resp.status_code)
    times.sort()
    return {"median_ms": round(statistics.median(times), 1), "p95_ms": round(times[int(len(times) * 0.95) - 1], 1),
            "max_ms": round(times[-1], 1)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()

    from starlette.testclient import TestClient

    from discovery.engine import db
    from discovery.engine.runtime import Runtime
    from discovery.engine.settings import load_settings
    from discovery.intake import api_tokens
    from workers.api import create_app

    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"dsar_bench_ui_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    tmp = Path(tempfile.mkdtemp(prefix="dsar-bench-ui-"))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    config = tmp / "dsar.toml"
    config.write_text(f'[ledger]\nurl = "{url}"\n[broker]\nurl = "stub://"\n[archive]\npath = "{tmp / "a"}"\n'
                      f'staging_path = "{tmp / "s"}"\n[data_map]\npath = "{ROOT / "config" / "datamap.yaml"}"\n')
    env = {**os.environ, "DSAR_SECRET_KEY": SECRET, "DSAR_ACCOUNTS_DB_URL": f"sqlite:///{tmp / 'acc.db'}"}
    rt = Runtime(load_settings(config, env), env=env)
    try:
        db.upgrade(rt.engine)
        t0 = time.perf_counter()
        seed(rt.engine, args.requests)
        seeded = time.perf_counter() - t0
        _, token = api_tokens.create_token(rt, "bench", ["read"], "bench")
        client = TestClient(create_app(rt, wake=_NoWake()))
        form = client.get("/ui/login").text
        csrf = form.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        assert client.post("/ui/login", data={"csrf": csrf, "token": token}, follow_redirects=False).status_code == 303
        some = rt.engine.connect().execute(sa.text("SELECT id FROM requests WHERE status = 'awaiting_manual' "
                                                   "LIMIT 1")).scalar()
        results = {
            "open requests, sorted by due date (/ui/)": timed(client, "/ui/", args.calls),
            "all requests, received desc, page 100": timed(client, "/ui/?status=all&sort=-received&page=100",
                                                            args.calls),
            "overdue only": timed(client, "/ui/?overdue=1", args.calls),
            "one request (/ui/requests/<id>)": timed(client, f"/ui/requests/{some}", args.calls),
            "/metrics": timed(client, "/metrics", args.calls),
        }
    finally:
        rt.close()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    report = {"requests": args.requests, "tasks": args.requests * len(SYSTEMS), "seed_s": round(seeded, 1),
              "calls": args.calls, "results": results, "python": platform.python_version(),
              "cpus": os.cpu_count(), "load_avg": os.getloadavg()}
    OUT.mkdir(exist_ok=True)
    (OUT / "console.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


class _NoWake:
    def discover(self, request_id: str) -> None: ...
    def execute(self, task_id: int) -> None: ...
    def merge(self, request_id: str) -> None: ...


if __name__ == "__main__":
    sys.exit(main())

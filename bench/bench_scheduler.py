"""Scheduler benchmark: 10,000 due scheduled erasures claimed and turned into requests.

    .venv/bin/python bench/bench_scheduler.py [--actions 10000] [--batch 200]

What it does (a benchmark, not a test: it asserts no timing, it writes down what it measures):
  - environment: a fresh PostgreSQL ledger database `dsar_bench_scheduler` (dropped and recreated),
    a redis-server of its own on a free port as the broker (started and stopped by this script; the
    host's shared Redis is not touched; flushed between the two runs: no worker consumes, so only the
    scheduler's own work is timed), settings under bench/out/scheduler/;
  - seeds N due `erasure` actions for N distinct subjects (one bulk insert, not timed);
  - one scheduler: `dsar scheduler --once --batch B --json` (the installed entry point, a subprocess),
    timed from start to exit (process start-up and schema check included);
  - two schedulers side by side on a fresh set of N actions, started together; timed until both
    exit; then checked for overlap: every action done with attempts == 1, exactly one
    `schedule.done` audit event per action, one request per action (ticket `schedule:<id>`),
    and how the work was split (claimed_by);
Writes bench/out/scheduler.json and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa
from own_redis import own_redis

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT))

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
LEDGER_DB = "dsar_bench_scheduler"
SECRET = "bench-secret-key-0123456789"


def fresh_ledger() -> str:
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{LEDGER_DB}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{LEDGER_DB}"'))
    admin.dispose()
    return sa.make_url(ADMIN_URL).set(database=LEDGER_DB).render_as_string(hide_password=False)


def write_config(work: Path, ledger: str, broker: str) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    (work / "datamap.yaml").write_text((ROOT / "config" / "datamap.yaml").read_text())
    path = work / "dsar.toml"
    path.write_text(f"""
[ledger]
url = "{ledger}"
[broker]
url = "{broker}"
[archive]
path = "{work / 'archive'}"
staging_path = "{work / 'staging'}"
[data_map]
path = "datamap.yaml"
""")
    return path


def seed(ledger: str, n: int, offset: int) -> list[int]:
    from discovery.engine import db
    from discovery.engine.ledger import ScheduledAction
    from discovery.engine.runtime import Runtime
    from discovery.engine.settings import load_settings

    env = {"DSAR_SECRET_KEY": SECRET, "DSAR_ACCOUNTS_DB_URL": "sqlite://"}
    rt = Runtime(load_settings(OUT / "scheduler" / "dsar.toml", env), env=env)
    db.upgrade(rt.engine)
    due = datetime.now(UTC) - timedelta(minutes=5)
    rows = [{"kind": "erasure", "subject_email": f"bench{k}@example.org",
             "subject_hash": rt.subject_hash(f"bench{k}@example.org"), "due_at": due, "reason": "bench",
             "status": "scheduled", "attempts": 0, "created_by": "bench", "created_at": due, "details": {}}
            for k in range(offset, offset + n)]
    with rt.sessions.begin() as s:
        s.execute(sa.insert(ScheduledAction), rows)
        ids = list(s.scalars(sa.select(ScheduledAction.id).where(ScheduledAction.status == "scheduled")))
    rt.close()
    return ids


def run_schedulers(config: Path, count: int, batch: int) -> tuple[float, list[dict[str, Any]]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSAR_")}
    env.update({"DSAR_CONFIG": str(config), "DSAR_SECRET_KEY": SECRET, "DSAR_ACCOUNTS_DB_URL": "sqlite://"})
    dsar = str(Path(sys.executable).parent / "dsar")
    start = time.perf_counter()
    procs = [subprocess.Popen([dsar, "scheduler", "--once", "--batch", str(batch), "--json"], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(count)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=900)
        if p.returncode != 0:
            raise SystemExit(f"scheduler failed ({p.returncode}): {err[-2000:]}")
        data = json.loads(out)
        results.append({k: data[k] for k in ("worker", "claimed", "requests", "failed", "retried")})
    return time.perf_counter() - start, results


def verify(ledger: str, ids: list[int]) -> dict[str, Any]:
    engine = sa.create_engine(ledger)
    with engine.connect() as conn:
        actions = conn.execute(sa.text("SELECT id, status, attempts, claimed_by, request_id FROM scheduled_actions "
                                       "WHERE id = ANY(:ids)"), {"ids": ids}).all()
        done_events = Counter(conn.execute(sa.text(
            "SELECT (details->>'action_id')::int FROM audit_events WHERE event = 'schedule.done' "
            "AND (details->>'action_id')::int = ANY(:ids)"), {"ids": ids}).scalars())
        tickets = Counter(conn.execute(sa.text(
            "SELECT ticket_ref FROM requests WHERE source = 'schedule' AND ticket_ref = ANY(:t)"),
            {"t": [f"schedule:{i}" for i in ids]}).scalars())
    engine.dispose()
    return {
        "actions": len(actions),
        "all_done": all(a.status == "done" for a in actions),
        "max_attempts": max(a.attempts for a in actions),
        "actions_run_twice": sum(1 for n in done_events.values() if n > 1),
        "actions_without_done_event": len(set(ids) - set(done_events)),
        "requests": sum(tickets.values()),
        "tickets_with_two_requests": sum(1 for n in tickets.values() if n > 1),
        "split_by_scheduler": dict(Counter(a.claimed_by for a in actions)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--actions", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args()
    with own_redis() as redis_base:  # the broker: a redis-server of this run's own, empty at start
        return run(args, f"{redis_base}/0")


def run(args: argparse.Namespace, broker: str) -> int:
    work = OUT / "scheduler"
    ledger = fresh_ledger()
    config = write_config(work, ledger, broker)
    queue = redis.Redis.from_url(broker)

    report: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "command": f"{Path(sys.executable).name} bench/bench_scheduler.py --actions {args.actions} "
                   f"--batch {args.batch}",
        "actions": args.actions, "batch": args.batch,
    }
    ids = seed(ledger, args.actions, 0)
    seconds, results = run_schedulers(config, 1, args.batch)
    report["one_scheduler"] = {"seconds": round(seconds, 2), "per_second": round(args.actions / seconds),
                               "schedulers": results, "check": verify(ledger, ids)}
    print(f"one scheduler: {args.actions} due actions -> requests in {seconds:.1f}s "
          f"({args.actions / seconds:.0f}/s)")
    queue.flushdb()  # this run's own redis-server: the second run starts with an empty queue too

    ids = seed(ledger, args.actions, args.actions)
    seconds, results = run_schedulers(config, 2, args.batch)
    check = verify(ledger, ids)
    report["two_schedulers"] = {"seconds": round(seconds, 2), "per_second": round(args.actions / seconds),
                                "schedulers": results, "check": check}
    print(f"two schedulers: {args.actions} due actions -> requests in {seconds:.1f}s "
          f"({args.actions / seconds:.0f}/s); split {sorted(check['split_by_scheduler'].values())}, "
          f"run twice: {check['actions_run_twice']}, max attempts {check['max_attempts']}")
    (OUT / "scheduler.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {OUT / 'scheduler.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

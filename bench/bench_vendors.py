"""Vendor benchmark: access requests across all five systems, the vendors simulated on 127.0.0.1.

    .venv/bin/python bench/bench_vendors.py              # both parts, PostgreSQL ledger, Redis broker of its own
    .venv/bin/python bench/bench_vendors.py --part a --runs 10 --worker-timeout-ms 100

(a) latency: every simulator behind sandbox.server.Throttle(latency_s=0.05); one access request for
    the sample person at a time, submit -> completed measured on the ledger, warm-up run excluded;
    median of --runs runs, with where the time goes (discovery, each system's export, merge).
(b) throughput under a vendor limit: every simulator behind Throttle(latency_s=0.05,
    rate_per_second=10) (a sliding one-second window answering 429 beyond it); each connector's
    `rate_per_second` set to 10, paced through Redis (connectors.ratelimit); --requests access
    requests for as many *distinct* people submitted at once: the 3 sample people plus people
    seeded into the account database and every simulator (bench people with a little data each).
    Reports the 429s each simulator sent (target zero), calls made and the total time.

The pipeline runs in this process the way `dsar worker` runs it: the real Dramatiq actors on a
RedisBroker consumed by an in-process dramatiq.Worker (--threads), ledger on PostgreSQL, account
database in SQLite (a file). The RedisBroker's Redis is a redis-server of this run's own on a free port
(started and stopped by this script; the host's shared Redis is not touched); --redis-url (or
DSAR_BENCH_REDIS_URL) points it at an empty database of yours instead, which is checked empty and never
flushed. `--broker stub` uses the in-process StubBroker instead (part a only: pacing is then per process,
not shared through Redis).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from own_redis import broker_redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sandbox import accounts_db  # noqa: E402
from sandbox.launch import Sandbox  # noqa: E402
from sandbox.matomo import user_id_hash  # noqa: E402
from sandbox.people import PEOPLE, Person  # noqa: E402

SECRET = "bench-secret-key-0123456789"
SYSTEMS = ("accounts", "freshchat", "mautic", "salesmanago", "matomo")


# -- the world ---------------------------------------------------------------------------------

def bench_people(n: int) -> list[Person]:
    return [Person(f"bench{k}", f"bench.person{k}@example.org", "Bench", f"Person{k}", f"+4740{k:06d}",
                   str(5001 + k), f"{0xBE000000 + k:016x}") for k in range(n)]


def seed_extra(sandbox: Sandbox, accounts: sa.Engine, people: list[Person]) -> None:
    """Each bench person: an account with a server, two logins and an order; a FreshChat user with one
    conversation of 5 messages; a Mautic contact with 3 timeline events; a SALESmanago contact with a tag,
    an event and a visit; two Matomo visits by userId and one anonymous visit before login."""
    now = datetime.now(UTC).replace(tzinfo=None)
    with accounts.begin() as conn:
        for k, p in enumerate(people):
            uid = int(p.account_id)
            conn.execute(accounts_db.users.insert().values(
                id=uid, email=p.email, full_name=f"{p.first_name} {p.last_name}", phone=p.phone,
                password_hash="$argon2id$bench", created_at=now - timedelta(days=300), last_login_at=now,
                matomo_visitor_id=p.matomo_visitor_id, newsletter=False, processing_restricted=False))
            conn.execute(accounts_db.servers.insert().values(
                id=1000 + k, user_id=uid, hostname=f"{p.key}.example.net", ip_address="192.0.2.200",
                plan="green-1", datacenter="osl1", created_at=now - timedelta(days=200)))
            for j in range(2):
                conn.execute(accounts_db.login_log.insert().values(
                    id=1000 + 2 * k + j, server_id=1000 + k, at=now - timedelta(days=j), ip_address="198.51.100.9",
                    user_agent="curl/8.4.0"))
            conn.execute(accounts_db.orders.insert().values(
                id=1000 + k, user_id=uid, ordered_at=now - timedelta(days=30), product="VPS green-1 (1 month)",
                amount="9.00", currency="EUR", processing_restricted=False))
    freshchat, mautic = sandbox.sims["freshchat"], sandbox.sims["mautic"]
    salesmanago, matomo = sandbox.sims["salesmanago"], sandbox.sims["matomo"]
    for k, p in enumerate(people):
        uid = freshchat.add_user(p.email, email=p.email, first_name=p.first_name,  # type: ignore[attr-defined]
                                 last_name=p.last_name, phone=p.phone, reference_id=p.account_id,
                                 properties=[{"name": "plan", "value": "basic"}])
        freshchat.add_conversation(uid, f"{p.key}:q", "resolved", 5)  # type: ignore[attr-defined]
        with mautic._lock:  # type: ignore[attr-defined]  # the simulator has no public way to add a contact
            mautic._seed_person(p, p.email, day=12, events=3)  # type: ignore[attr-defined]
        salesmanago.add_contact(  # type: ignore[attr-defined]
            p.email, f"{p.first_name} {p.last_name}", p.phone, tags=("NEWSLETTER",),
            events=[{"eventId": str(uuid.uuid5(uuid.NAMESPACE_DNS, p.key)), "contactExtEventType": "PURCHASE",
                     "description": "order", "value": 9.0, "date": 1_714_650_000_000}],
            visits=("https://shop.example/pricing",))
        day = datetime(2024, 6, 1 + k % 28, 10, 0, tzinfo=UTC)
        matomo.add_visit(1, user_id_hash(p.email), p.email, day,  # type: ignore[attr-defined]
                         [("https://shop.example.com/account", "Account")])
        matomo.add_visit(2, user_id_hash(p.email), p.email, day.replace(hour=12),  # type: ignore[attr-defined]
                         [("https://blog.example.com/", "Blog")])
        matomo.add_visit(1, p.matomo_visitor_id, None, day.replace(hour=8),  # type: ignore[attr-defined]
                         [("https://shop.example.com/", "Home")])


def write_config(directory: Path, ledger_url: str, broker_url: str, threads: int) -> Path:
    path = directory / "dsar.toml"
    path.write_text(f"""
[ledger]
url = "{ledger_url}"
[broker]
url = "{broker_url}"
[archive]
path = "{directory / 'archive'}"
staging_path = "{directory / 'staging'}"
[data_map]
path = "datamap.yaml"
[worker]
threads = {threads}
""")
    return path


@contextmanager
def pg_database(admin_url: str) -> Iterator[str]:
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"dsar_bench_vendors_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class Pipeline:
    """The actors and one in-process Dramatiq worker for the whole run; `use()` points them at a sandbox."""

    def __init__(self, threads: int, worker_timeout_ms: int) -> None:
        self.threads, self.worker_timeout_ms = threads, worker_timeout_ms
        self.worker: Any = None

    def use(self, work: Path, sandbox: Sandbox, ledger_url: str, broker_url: str) -> Any:
        """Settings and a fresh runtime for this sandbox's data map; returns the runtime."""
        import dramatiq

        from discovery.engine.settings import load_settings
        from workers import app

        config = write_config(work, ledger_url, broker_url, self.threads)
        os.environ.update({
            "DSAR_CONFIG": str(config), "DSAR_SECRET_KEY": SECRET, "DSAR_LOG_LEVEL": "ERROR",
            "DSAR_ACCOUNTS_DB_URL": f"sqlite:///{work / 'accounts.db'}",
            "DSAR_DATA_MAP_PATH": str(sandbox.datamap_path), **sandbox.env(),
        })
        rt = app.setup(load_settings(config))  # the actors look the runtime up per message
        import workers.actors  # noqa: F401  (declares the actors on the broker set up above)

        if self.worker is None:
            self.worker = dramatiq.Worker(app.ensure_broker(), worker_threads=self.threads,
                                          worker_timeout=self.worker_timeout_ms)
            self.worker.start()
        return rt

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()


def wait_all(rt: Any, ids: list[str], timeout: float = 600.0) -> dict[str, str]:
    from discovery.engine.ledger import OPEN_STATUSES, Request

    deadline = time.monotonic() + timeout
    while True:
        with rt.sessions() as s:
            statuses = dict(s.execute(sa.select(Request.id, Request.status).where(Request.id.in_(ids))).all())
        if all(st not in OPEN_STATUSES for st in statuses.values()):
            return statuses
        if time.monotonic() > deadline:
            raise TimeoutError(f"still open after {timeout:.0f}s: {diagnose(rt, ids)}")
        time.sleep(0.01)


def diagnose(rt: Any, ids: list[str]) -> str:
    """What the open requests and their tasks are doing, and what the broker still holds (for a stuck run)."""
    from discovery.engine.ledger import OPEN_STATUSES, Request, Task

    lines = []
    with rt.sessions() as s:
        for req in s.scalars(sa.select(Request).where(Request.id.in_(ids), Request.status.in_(OPEN_STATUSES))):
            tasks = s.scalars(sa.select(Task).where(Task.request_id == req.id))
            lines.append(f"{req.id} {req.status} since {req.updated_at:%H:%M:%S.%f}: "
                         + ", ".join(f"{t.system} {t.action} {t.status} x{t.attempts}" for t in tasks))
    url = rt.settings.redis_url
    if url:
        import redis

        client = redis.Redis.from_url(url)
        keys = client.keys("dramatiq:*")
        lines.append("redis: " + ", ".join(f"{k.decode()} ({client.type(k).decode()})" for k in keys))
    return "\n".join(lines)


def breakdown(rt: Any, request_id: str) -> dict[str, float]:
    """Seconds: discovery (received -> tasks created), each export task, merge (last task -> completed)."""
    from discovery.engine.ledger import Request, Task

    with rt.sessions() as s:
        req = s.get(Request, request_id)
        tasks = list(s.scalars(sa.select(Task).where(Task.request_id == request_id)))
        out = {"discovery": (min(t.created_at for t in tasks) - req.received_at).total_seconds()}
        for t in tasks:
            out[t.system] = (t.finished_at - t.started_at).total_seconds()
        out["merge"] = (req.completed_at - max(t.finished_at for t in tasks)).total_seconds()
        out["total"] = (req.completed_at - req.received_at).total_seconds()
    return out


# -- the two parts ---------------------------------------------------------------------------

def part_a(args: argparse.Namespace, ledger_url: str, pipe: Pipeline) -> dict[str, Any]:
    from discovery.engine import pipeline
    from sandbox.people import JANE

    broker_url = args.redis_url if args.broker == "redis" else "stub://"
    with tempfile.TemporaryDirectory(prefix="dsar-bench-a-") as tmp, \
            Sandbox(Path(tmp) / "sandbox", latency_s=args.latency) as sandbox:
        work = Path(tmp)
        engine = sa.create_engine(f"sqlite:///{work / 'accounts.db'}")
        accounts_db.create(engine)
        accounts_db.seed(engine)
        engine.dispose()
        rt = pipe.use(work, sandbox, ledger_url, broker_url)
        from workers.actors import WAKE

        times: list[float] = []
        parts: list[dict[str, float]] = []
        for run in range(args.runs + 1):
            t0 = time.perf_counter()
            submitted = pipeline.submit(rt, WAKE, "access", JANE.email, actor="bench")
            status = wait_all(rt, [submitted.request.id], timeout=60)[submitted.request.id]
            elapsed = time.perf_counter() - t0
            if status != "completed":
                raise SystemExit(f"run {run}: request ended {status}")
            if run:  # run 0 warms up connections, tokens and caches
                times.append(elapsed)
                parts.append(breakdown(rt, submitted.request.id))
        calls = {name: t.stats.calls for name, t in sandbox.throttles.items()}
    keys = parts[0].keys()
    return {"times": times, "median": statistics.median(times), "min": min(times), "max": max(times),
            "parts": {k: statistics.median(p[k] for p in parts) for k in keys},
            "calls_per_request": {n: c / (args.runs + 1) for n, c in calls.items()}}


def part_b(args: argparse.Namespace, ledger_url: str, pipe: Pipeline) -> dict[str, Any]:
    from discovery.engine import pipeline
    from discovery.engine.ledger import Request, Task

    people = (list(PEOPLE) + bench_people(max(0, args.requests - len(PEOPLE))))[:args.requests]
    with tempfile.TemporaryDirectory(prefix="dsar-bench-b-") as tmp, \
            Sandbox(Path(tmp) / "sandbox", latency_s=args.latency, rate_per_second=args.rate,
                    connector_settings={"rate_per_second": args.connector_rate}) as sandbox:
        work = Path(tmp)
        engine = sa.create_engine(f"sqlite:///{work / 'accounts.db'}")
        accounts_db.create(engine)
        accounts_db.seed(engine)
        seed_extra(sandbox, engine, [p for p in people if p not in PEOPLE])
        engine.dispose()
        rt = pipe.use(work, sandbox, ledger_url, args.redis_url)
        from workers.actors import WAKE

        t0 = time.perf_counter()
        ids = [pipeline.submit(rt, WAKE, "access", p.email, actor="bench").request.id for p in people]
        submitted_s = time.perf_counter() - t0
        statuses = wait_all(rt, ids, timeout=1800)
        total = time.perf_counter() - t0
        with rt.sessions() as s:
            reqs = list(s.scalars(sa.select(Request).where(Request.id.in_(ids))))
            latencies = sorted((r.completed_at - r.received_at).total_seconds() for r in reqs)
            retried = s.scalar(sa.select(sa.func.count()).select_from(Task)
                               .where(Task.request_id.in_(ids), Task.attempts > 1))
        stats = {name: {"calls": t.stats.calls, "throttled": t.stats.throttled}
                 for name, t in sandbox.throttles.items()}
    outcome: dict[str, int] = {}
    for st in statuses.values():
        outcome[st] = outcome.get(st, 0) + 1
    return {"requests": len(ids), "distinct_people": len({p.email for p in people}), "submit_s": submitted_s,
            "total_s": total, "outcome": outcome, "latency_p50": statistics.median(latencies),
            "latency_max": latencies[-1], "tasks_retried": retried, "sims": stats}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return f"{platform.system()} {platform.release()}, {os.cpu_count()} CPU ({cpu}), Python {platform.python_version()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("a", "b", "both"), default="both")
    parser.add_argument("--runs", type=int, default=10, help="part a: measured runs (after one warm-up)")
    parser.add_argument("--requests", type=int, default=50, help="part b: requests submitted at once")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds each simulator adds to every call")
    parser.add_argument("--rate", type=int, default=10, help="part b: the simulators' limit, requests/s")
    parser.add_argument("--connector-rate", type=float, default=10, help="part b: connectors' rate_per_second")
    parser.add_argument("--threads", type=int, default=16, help="Dramatiq worker threads")
    parser.add_argument("--worker-timeout-ms", type=int, default=1000,
                        help="Dramatiq worker_timeout: the longest idle poll of the Redis queue (dramatiq's "
                             "default 1000, which `dsar worker` uses)")
    parser.add_argument("--broker", choices=("redis", "stub"), default="redis")
    parser.add_argument("--redis-url", default=os.environ.get("DSAR_BENCH_REDIS_URL"),
                        help="an empty Redis database of yours for the broker (checked empty, never flushed); "
                             "default: a redis-server of this run's own on a free port")
    parser.add_argument("--pg-admin-url", default=os.environ.get(
        "DSAR_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"))
    args = parser.parse_args()
    if args.broker == "stub" and args.part != "a":
        parser.error("--broker stub is for part a only (part b paces the vendors through Redis)")

    print(f"machine: {machine()}")
    print(f"command: {' '.join(sys.argv)}")
    print(f"settings: latency {args.latency * 1000:.0f} ms/call, broker {args.broker}, worker threads {args.threads}, "
          f"worker_timeout {args.worker_timeout_ms} ms, ledger PostgreSQL, accounts SQLite")
    logging.getLogger("dramatiq").setLevel(os.environ.get("DSAR_BENCH_DRAMATIQ_LOG", "CRITICAL"))  # retries: counted
    warnings.filterwarnings("ignore", category=sa.exc.SAWarning)  # reflection of the expression index
    pipe = Pipeline(args.threads, args.worker_timeout_ms)
    with contextlib.ExitStack() as stack:
        if args.broker == "redis":  # the worker consumes it until pipe.stop(): the server outlives the worker
            args.redis_url = stack.enter_context(broker_redis(args.redis_url))
        ledger_url = stack.enter_context(pg_database(args.pg_admin_url))
        try:
            report(args, ledger_url, pipe)
        finally:
            pipe.stop()
    return 0


def report(args: argparse.Namespace, ledger_url: str, pipe: Pipeline) -> None:
    if args.part in ("a", "both"):
        a = part_a(args, ledger_url, pipe)
        print(f"\n(a) one access request across {len(SYSTEMS)} systems, submit -> completed, {args.runs} runs:")
        print(f"    median {a['median']:.3f} s (min {a['min']:.3f}, max {a['max']:.3f}); target < 1 s: "
              f"{'met' if a['median'] < 1.0 else 'NOT met'}")
        print("    runs: " + " ".join(f"{t:.3f}" for t in a["times"]))
        print("    median seconds by step (ledger timestamps): "
              + ", ".join(f"{k} {v:.3f}" for k, v in a["parts"].items()))
        print("    HTTP calls per request: " + ", ".join(f"{k} {v:.0f}" for k, v in a["calls_per_request"].items()))
    if args.part in ("b", "both"):  # no flush in between: part a's requests are complete, the same worker goes on
        b = part_b(args, ledger_url, pipe)
        zero = all(s["throttled"] == 0 for s in b["sims"].values())
        print(f"\n(b) {b['requests']} access requests ({b['distinct_people']} distinct people) submitted at once; "
              f"simulators limit {args.rate}/s, connectors pace at {args.connector_rate}/s through Redis:")
        print(f"    all finished in {b['total_s']:.1f} s (submitting took {b['submit_s']:.2f} s); outcome "
              f"{b['outcome']}; per-request latency median {b['latency_p50']:.1f} s, max {b['latency_max']:.1f} s; "
              f"tasks retried {b['tasks_retried']}")
        for name, s in b["sims"].items():
            print(f"    {name:<12} calls {s['calls']:>5}  429s {s['throttled']:>4}")
        print(f"    zero 429s: {'met' if zero else 'NOT met'}")


if __name__ == "__main__":
    raise SystemExit(main())

"""Issue 14, point 7: scale-out, measured. Separate `dsar worker` processes (as separate machines would run them) on
one broker and one ledger answer a burst of access and erasure requests over the sandbox systems; then every request
is checked to have completed exactly once and every vendor write to have happened exactly once.

    .venv/bin/python bench/bench_soak.py --broker redis --workers 3 --access 2000 --erasure 200
    .venv/bin/python bench/bench_soak.py --broker rabbitmq --workers 1,2,3 --access 300 --erasure 30
    .venv/bin/python bench/bench_soak.py --broker redis --workers 3 --kill supervisor   # or child, machine

Per run (each configuration starts from nothing):
- the account database `dsar_bench_soak_accounts` (PostgreSQL, dropped and recreated) with one user, a server and an
  order inside the bookkeeping hold per person; the four vendor simulators (sandbox.launch, in this process) with
  each person in every one of them (a FreshChat user and conversation, a Mautic and a SALESmanago contact, two
  Matomo visits: one by userId, one before login under the visitor id the account database stores);
- the ledger `dsar_bench_soak_ledger` (dropped and recreated), a redis-server of this benchmark's own
  (bench/own_redis.py): the broker, or beside RabbitMQ (a vhost `dsar-bench-<hex>` made with rabbitmqctl and deleted
  at the end) the Redis of heartbeats and shared rate limits, as docs/deployment.md sets it up;
- N processes `dsar worker --processes 1 --threads 4`, each its own supervisor and session;
- all requests submitted at once with `pipeline.submit` in this process (one in every access/erasure is an erasure),
  the same call the API and the CLI make; an erasure waiting on its manual steps (FreshChat's Forget) has them
  confirmed at once by this process, as an operator would;
- `--kill supervisor|child|machine`: when 40% are done, worker 0's supervisor gets SIGKILL (its children notice and
  stop after their running messages), one of its children does (the supervisor restarts it), or the whole process
  group does (a machine gone: its tasks come back when their lease lapses, worker.task_lease_seconds).

Checked afterwards: every request `completed`, with one `request.completed` audit event, one bundle file in the
archive whose SHA-256 is the ledger's; every task done; no vendor write (sandbox simulators' write logs) made twice
or on anyone but an erased person, each erased person's writes all present and what they hold afterwards the same
for all; the account database masked exactly the erased users. Timings: requests/s from the first submission to the
last completion, p50/p95 submit-to-done (ledger received_at to completed_at). Writes bench/out/<label>.json.
Benchmark: measures and writes down, asserts nothing about timings; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
import redis
import sqlalchemy as sa
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
VENV_BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))

from own_redis import own_redis  # noqa: E402  (bench/, the script's folder)
from stats import pct  # noqa: E402

from sandbox import accounts_db  # noqa: E402
from sandbox.launch import Sandbox  # noqa: E402
from sandbox.matomo import user_id_hash  # noqa: E402

PG = "postgresql://postgres@127.0.0.1:5432"
ACCOUNTS_DB, LEDGER_DB = "dsar_bench_soak_accounts", "dsar_bench_soak_ledger"
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672"
RABBITMQCTL = "/usr/sbin/rabbitmqctl"
SECRET = "bench-soak-secret-0123456789abcdef"
TERMINAL = ("completed", "completed_with_errors", "failed", "denied", "cancelled")
VENDORS = ("freshchat", "mautic", "salesmanago", "matomo")


def fresh_database(name: str) -> str:
    assert name.startswith("dsar_bench")  # only this benchmark's own databases are ever dropped
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def drop_database(name: str) -> None:
    assert name.startswith("dsar_bench")
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextlib.contextmanager
def rabbit_vhost() -> Iterator[str]:
    """A vhost of this run's own on the host's RabbitMQ (guest has rights on it only); deleted, and only it, at the
    end."""
    name = f"dsar-bench-{uuid.uuid4().hex[:12]}"
    subprocess.run([RABBITMQCTL, "-q", "add_vhost", name], check=True, capture_output=True, timeout=60)
    try:
        subprocess.run([RABBITMQCTL, "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"], check=True,
                       capture_output=True, timeout=60)
        yield f"{RABBITMQ}/{name}"
    finally:
        subprocess.run([RABBITMQCTL, "-q", "delete_vhost", name], capture_output=True, timeout=60)


# -- the people and the systems ---------------------------------------------------------------------------------

def people(n: int) -> list[dict[str, Any]]:
    rng = random.Random(14_7)
    return [{"email": f"soak.person{k:05d}@soak.example.org", "account_id": 100_000 + k,
             "first": rng.choice(["Anna", "Bjorn", "Kari", "Lars", "Nils", "Tone"]), "last": f"Soak{k:05d}",
             "phone": f"+4798{k:06d}", "visitor_id": f"{rng.getrandbits(64):016x}"} for k in range(n)]


def seed_accounts(url: str, folks: list[dict[str, Any]]) -> None:
    engine = sa.create_engine(url)
    accounts_db.create(engine, drop=True)
    engine.dispose()
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn, conn.cursor() as cur:
        with cur.copy("COPY users (id, email, full_name, phone, password_hash, created_at, last_login_at, "
                      "matomo_visitor_id, newsletter, processing_restricted) FROM STDIN") as cp:
            for p in folks:
                cp.write_row((p["account_id"], p["email"], f"{p['first']} {p['last']}", p["phone"], "$argon2id$x",
                              now - timedelta(days=700), now - timedelta(days=3), p["visitor_id"], False, False))
        with cur.copy("COPY servers (id, user_id, hostname, ip_address, plan, datacenter, created_at) "
                      "FROM STDIN") as cp:
            for p in folks:
                cp.write_row((p["account_id"], p["account_id"], f"vps{p['account_id']}.example.net", "10.0.0.1",
                              "green-2", "osl1", now - timedelta(days=300)))
        with cur.copy("COPY orders (id, user_id, ordered_at, product, amount, currency, processing_restricted) "
                      "FROM STDIN") as cp:
            for p in folks:  # inside the 5-year bookkeeping hold: an erasure restricts it
                cp.write_row((p["account_id"], p["account_id"], now - timedelta(days=200), "VPS green-2", "119.00",
                              "EUR", False))
        conn.commit()
        cur.execute("ANALYZE")


def seed_vendors(sandbox: Sandbox, folks: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """Every person in the four simulators; (simulator, the vendor's id of a record) -> the person's e-mail."""
    sims: dict[str, Any] = sandbox.sims
    owner: dict[tuple[str, str], str] = {}
    when = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)
    for p in folks:
        email = p["email"]
        uid = sims["freshchat"].add_user(email, email=email, first_name=p["first"], last_name=p["last"],
                                         phone=p["phone"], reference_id=str(p["account_id"]))
        cid = sims["freshchat"].add_conversation(uid, f"soak:{email}", "resolved", 3)
        owner[("freshchat", uid)] = owner[("freshchat", cid)] = email
        owner[("mautic", str(sims["mautic"].add_contact(email, p["first"], p["last"], phone=p["phone"])))] = email
        sm = sims["salesmanago"].add_contact(email, f"{p['first']} {p['last']}", p["phone"])
        owner[("salesmanago", sm)] = owner[("salesmanago", email)] = email
        for visitor, user_id in ((user_id_hash(email), email), (p["visitor_id"], None)):
            idvisit = sims["matomo"].add_visit(1, visitor, user_id, when)
            owner[("matomo", f"1:{idvisit}")] = email
    return owner


def write_config(work: Path, ledger_url: str, broker_url: str, redis_url: str, namespace: str,
                 lease_seconds: int) -> Path:
    path = work / "dsar.toml"
    path.write_text(f"""log_format = "json"
[ledger]
url = "{ledger_url}"
[broker]
url = "{broker_url}"
namespace = "{namespace}"
redis_url = "{redis_url if broker_url.startswith('amqp') else ''}"
[archive]
path = "{work / 'archive'}"
staging_path = "{work / 'staging'}"
[data_map]
path = "{work / 'sandbox' / 'datamap.yaml'}"
[requests]
language = "en"
[worker]
task_lease_seconds = {lease_seconds}
""")
    return path


# -- worker processes -------------------------------------------------------------------------------------------

def children_of(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                    kids.append(int(entry))
    return kids


def start_workers(n: int, env: dict[str, str], work: Path) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(n):
        with (work / f"worker-{i}.log").open("wb") as log:
            procs.append(subprocess.Popen([str(VENV_BIN / "dsar"), "worker", "--processes", "1", "--threads", "4"],
                                          cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True))
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to each supervisor (graceful); SIGKILL to what is left of each process group after 60 s. Only the
    groups this benchmark started."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + 60
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)  # orphaned children too (each group is one worker's)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=5)


def wait_beating(redis_url: str, namespace: str, n: int, procs: list[subprocess.Popen[bytes]]) -> float:
    from workers import heartbeat

    client = redis.Redis.from_url(redis_url)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120:
        for i, p in enumerate(procs):
            if p.poll() is not None:
                raise SystemExit(f"worker {i} exited with {p.returncode} (bench/out/.../worker-{i}.log)")
        if heartbeat.read(client, hash_key=heartbeat.key(namespace)).alive >= n:
            client.close()
            return time.monotonic() - t0
        time.sleep(0.2)
    raise SystemExit(f"fewer than {n} worker processes beat after 120 s")


# -- one run ----------------------------------------------------------------------------------------------------

def run(args: argparse.Namespace, broker: str, workers: int, kill: str) -> dict[str, Any]:
    label = f"soak-{broker}-{workers}w-{kill}-{args.access}+{args.erasure}"
    work = OUT / "soak_work" / label
    subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir(parents=True)
    folks = people(args.access + args.erasure)
    step = len(folks) // args.erasure  # erasures spread through the burst: every step-th submission
    erased = {folks[i]["email"] for i in range(0, step * args.erasure, step)}
    accounts_url = fresh_database(ACCOUNTS_DB)
    ledger_url = fresh_database(LEDGER_DB)
    seed_accounts(accounts_url, folks)
    namespace = f"soak_{uuid.uuid4().hex[:8]}"
    result: dict[str, Any] = {"label": label, "broker": broker, "workers": workers, "kill": kill,
                              "access": args.access, "erasure": args.erasure, "lease_seconds": args.lease_seconds}
    with contextlib.ExitStack() as stack:
        base = stack.enter_context(own_redis())
        redis_url = f"{base}/0"
        broker_url = redis_url if broker == "redis" else stack.enter_context(rabbit_vhost())
        # Vendor limits raised: the workers, not a vendor's rate limit (issue 3 measured those), are what is measured.
        fast = {name: {"rate_per_second": args.vendor_rate} for name in VENDORS}
        sandbox = stack.enter_context(Sandbox(work / "sandbox", system_settings=fast))
        owner = seed_vendors(sandbox, folks)
        holdings_before = {e: sandbox.holdings(e) for e in (folks[1]["email"], folks[0]["email"])}  # access, erased
        config = write_config(work, ledger_url, broker_url, redis_url, namespace, args.lease_seconds)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DSAR_")}
        env.update({"DSAR_CONFIG": str(config), "DSAR_SECRET_KEY": SECRET, "DSAR_ACCOUNTS_DB_URL": accounts_url,
                    "DSAR_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1", **sandbox.env()})
        os.environ.update(env)  # this process submits with the same settings

        from discovery.engine import db, pipeline
        from discovery.engine.settings import load_settings
        from workers import app

        settings = load_settings()
        rt = app.setup(settings)  # upgrades the fresh ledger before any worker starts
        db.upgrade(rt.engine)
        from workers.actors import WAKE

        procs = start_workers(workers, {**env, "DSAR_SCHEMA_UPGRADED": "1"}, work)
        stack.callback(stop_workers, procs)
        result["workers_ready_s"] = round(wait_beating(redis_url, namespace, workers, procs), 1)
        poll = psycopg.connect(ledger_url.replace("postgresql+psycopg", "postgresql"), autocommit=True)
        stack.callback(poll.close)
        load0 = os.getloadavg()

        t_submit0 = time.time()
        ids: dict[str, str] = {}
        for p in folks:
            kind = "erasure" if p["email"] in erased else "access"
            sub = pipeline.submit(rt, WAKE, kind, p["email"], actor="bench-soak", source="cli")
            assert sub.created
            ids[sub.request.id] = kind
        result["submit_s"] = round(time.time() - t_submit0, 1)

        confirmed: set[tuple[str, str]] = set()
        killed: dict[str, Any] = {}
        deadline = time.monotonic() + args.timeout
        done = 0
        while True:
            rows = poll.execute("SELECT status, count(*) FROM requests GROUP BY status").fetchall()
            by: dict[str, int] = dict(rows)
            done = sum(n for s, n in by.items() if s in TERMINAL)
            if done >= len(ids):
                break
            if time.monotonic() > deadline:
                result["timed_out"] = by
                break
            # The operator's part: confirm the manual steps of erasures whose automated work is done.
            for rid, system in poll.execute(
                    "SELECT t.request_id, t.system FROM tasks t JOIN requests r ON r.id = t.request_id "
                    "WHERE r.status = 'awaiting_manual' AND t.status = 'awaiting_manual'").fetchall():
                if (rid, system) not in confirmed:
                    confirmed.add((rid, system))
                    pipeline.confirm_manual(rt, WAKE, rid, system, "done by hand (bench)", actor="bench-operator")
            if kill != "none" and not killed and done >= 0.4 * len(ids):
                killed = kill_one(procs[0], kill)
                killed["at_done"] = done
            time.sleep(0.25)
        result["wall_s"] = round(time.time() - t_submit0, 1)
        result["load_during"] = [round(x, 2) for x in os.getloadavg()]
        result["load_before"] = [round(x, 2) for x in load0]
        result["killed"] = killed
        result["restarts"] = restarts(work, workers)
        stop_workers(procs)
        result.update(verify(poll, ids, work, sandbox, owner, erased, holdings_before, accounts_url))
        app_close(rt)
    drop_database(ACCOUNTS_DB)
    drop_database(LEDGER_DB)
    return result


def app_close(rt: Any) -> None:
    with contextlib.suppress(Exception):
        rt.close()


def kill_one(supervisor: subprocess.Popen[bytes], how: str) -> dict[str, Any]:
    kids = children_of(supervisor.pid)
    if how == "supervisor":
        os.kill(supervisor.pid, signal.SIGKILL)  # its children see they are orphaned and stop after their messages
        return {"how": how, "pid": supervisor.pid, "children": kids}
    if how == "child":
        os.kill(kids[0], signal.SIGKILL)  # the supervisor restarts it after its backoff
        return {"how": how, "pid": kids[0]}
    os.killpg(supervisor.pid, signal.SIGKILL)  # the machine: supervisor and children at once, nothing finishes
    return {"how": how, "pid": supervisor.pid, "children": kids}


def restarts(work: Path, workers: int) -> int:
    return sum((work / f"worker-{i}.log").read_text(errors="replace").count("worker.restarting")
               for i in range(workers))


# -- checks -----------------------------------------------------------------------------------------------------

def verify(poll: psycopg.Connection, ids: dict[str, str], work: Path, sandbox: Sandbox,
           owner: dict[tuple[str, str], str], erased: set[str], holdings_before: dict[str, Any],
           accounts_url: str) -> dict[str, Any]:
    problems: list[str] = []
    rows = poll.execute("SELECT id, type, status, received_at, completed_at, bundle_path, bundle_sha256 "
                        "FROM requests").fetchall()
    statuses = Counter(r[2] for r in rows)
    if set(ids) != {r[0] for r in rows}:
        problems.append(f"ledger holds {len(rows)} requests, {len(ids)} submitted")
    completions = Counter(r[0] for r in poll.execute(
        "SELECT request_id FROM audit_events WHERE event = 'request.completed'").fetchall())
    extra = {rid: n for rid, n in completions.items() if n != 1}
    missing_completion = [r[0] for r in rows if completions.get(r[0], 0) == 0]
    # bundle files are <request id>-<merge token>.zip (pipeline.bundle_key): a second merge would leave a second
    files = Counter("-".join(f.name.split("-")[:5]) for f in (work / "archive").rglob("*.zip"))
    bad_sha: list[str] = []
    bundle_count: Counter[int] = Counter()
    for rid, _t, _s, _r, _c, path, sha in rows:
        bundle_count[files.get(rid, 0)] += 1
        local = Path(unquote(urlsplit(path).path)) if path and path.startswith("file://") else Path(path or "/-")
        if not local.is_file() or hashlib.sha256(local.read_bytes()).hexdigest() != sha:
            bad_sha.append(rid)
    tasks = Counter(f"{a}:{s}" for a, s in poll.execute("SELECT action, status FROM tasks").fetchall())
    attempts = Counter(n for (n,) in poll.execute("SELECT attempts FROM tasks").fetchall())
    # what went wrong where a request did not simply complete: its error, and its audit trail's failures
    failures = [{"request": rid, "status": st, "error": err, "events": [
        {"event": e, "actor": a, **(d or {})} for e, a, d in poll.execute(
            "SELECT event, actor, details FROM audit_events WHERE request_id = %s AND (event LIKE '%%fail%%' OR "
            "event LIKE '%%error%%' OR event LIKE '%%taken_over%%' OR event LIKE 'task.%%') ORDER BY id", (rid,))]}
        for rid, st, err in poll.execute(
            "SELECT id, status, error FROM requests WHERE status <> 'completed' LIMIT 10").fetchall()]
    taken_over = poll.execute("SELECT event, count(*) FROM audit_events WHERE event LIKE '%taken_over%' OR event LIKE "
                              "'%superseded%' OR event LIKE '%busy%' GROUP BY event").fetchall()

    # Vendor writes: each (simulator, call, record) once, only on erased people, and the same set for everyone.
    writes = sandbox.writes()
    calls = Counter((sim, call, target) for sim, log in writes.items() for call, target in log)
    duplicated = {f"{s} {c} {t}": n for (s, c, t), n in calls.items() if n > 1}
    stray = sorted({f"{s} {c} {t}" for (s, c, t) in calls if owner.get((s, t)) not in erased})
    per_person: dict[str, Counter[str]] = {e: Counter() for e in erased}
    for (sim, call, target), n in calls.items():
        who = owner.get((sim, target))
        if who in per_person:
            per_person[who][f"{sim} {call}"] += n
    shapes = Counter(tuple(sorted(c.items())) for c in per_person.values())
    expected_shape = max(shapes, key=lambda s: shapes[s]) if shapes else ()
    lost = sorted(e for e, c in per_person.items() if tuple(sorted(c.items())) != expected_shape)
    held_after = Counter(json.dumps(sandbox.holdings(e), sort_keys=True) for e in erased)
    access_sample = next(e for e in holdings_before if e not in erased)
    # an access request leaves SALESmanago an export file (the vendor's export job): not a change of the person's data
    access_unchanged = all({k: v for k, v in sandbox.holdings(access_sample)[sim].items() if k != "export_files"}
                           == holdings_before[access_sample][sim] for sim in VENDORS)
    with psycopg.connect(accounts_url.replace("postgresql+psycopg", "postgresql")) as conn:
        n_masked = conn.execute("SELECT count(*) FROM users WHERE password_hash = '!erased'").fetchone()
        restricted = conn.execute("SELECT count(*) FROM orders WHERE processing_restricted").fetchone()

    if set(statuses) != {"completed"}:
        problems.append(f"statuses {dict(statuses)}")
    if extra or missing_completion:
        problems.append(f"request.completed not once: {len(extra)} more than once, {len(missing_completion)} never")
    if set(bundle_count) != {1}:
        problems.append(f"bundle files per request: {dict(bundle_count)}")
    if bad_sha:
        problems.append(f"{len(bad_sha)} bundles whose file is missing or whose SHA-256 differs from the ledger's")
    if set(k.split(":")[1] for k in tasks) != {"done"}:
        problems.append(f"tasks {dict(tasks)}")
    if duplicated:
        problems.append(f"{len(duplicated)} vendor writes made more than once, e.g. {list(duplicated.items())[:3]}")
    if stray:
        problems.append(f"{len(stray)} vendor writes on someone not erased, e.g. {stray[:3]}")
    if lost:
        problems.append(f"{len(lost)} erased people whose writes differ from the rest, e.g. {lost[:3]}")
    if len(held_after) != 1:
        problems.append(f"erased people hold different things afterwards: {dict(held_after)}")
    if not access_unchanged:
        problems.append(f"an access request's person holds something else afterwards: "
                        f"{holdings_before[access_sample]} -> {sandbox.holdings(access_sample)}")
    if n_masked is None or n_masked[0] != len(erased) or restricted is None or restricted[0] != len(erased):
        problems.append(f"account database: {n_masked} users masked, {restricted} orders restricted")

    def lat(kind: str) -> dict[str, float]:
        d = [(r[4] - r[3]).total_seconds() for r in rows if ids.get(r[0]) == kind and r[4] is not None]
        return {"p50_s": round(pct(d, 0.5), 1), "p95_s": round(pct(d, 0.95), 1), "max_s": round(max(d, default=0), 1)}

    first = min(r[3] for r in rows)
    last = max((r[4] for r in rows if r[4] is not None), default=first)
    span = (last - first).total_seconds()
    return {
        "statuses": dict(statuses), "span_s": round(span, 1),
        "requests_per_s": round(sum(1 for r in rows if r[4] is not None) / span, 2) if span else None,
        "access": lat("access"), "erasure": lat("erasure"),
        "tasks": dict(tasks), "task_attempts": {str(k): v for k, v in sorted(attempts.items())},
        "takeovers": {e: n for e, n in taken_over},
        "bundles_per_request": {str(k): v for k, v in bundle_count.items()}, "bundle_sha_mismatch": len(bad_sha),
        "vendor_writes": {sim: len(log) for sim, log in writes.items()},
        "writes_per_erased_person": dict(expected_shape), "duplicated_writes": len(duplicated),
        "stray_writes": len(stray), "erased_with_other_writes": len(lost),
        "held_after_erasure": json.loads(next(iter(held_after))) if len(held_after) == 1 else dict(held_after),
        "failures": failures, "problems": problems, "ok": not problems,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--broker", default="redis", help="redis, rabbitmq, or both comma-separated")
    p.add_argument("--workers", default="3", help="worker processes (separate `dsar worker`s), e.g. 1,2,3")
    p.add_argument("--kill", default="none", help="none, supervisor, child, machine (comma-separated: one run each)")
    p.add_argument("--access", type=int, default=2000)
    p.add_argument("--erasure", type=int, default=200)
    p.add_argument("--lease-seconds", type=int, default=300, help="worker.task_lease_seconds (default: the settings')")
    p.add_argument("--vendor-rate", type=float, default=1000, help="each vendor connector's rate_per_second")
    p.add_argument("--timeout", type=float, default=1800, help="seconds before a run gives up waiting")
    p.add_argument("--label", default="soak", help="results go to bench/out/LABEL.json (appended)")
    args = p.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f"{args.label}.json"
    configs = [(b, int(n), k) for b in args.broker.split(",") for n in args.workers.split(",")
               for k in args.kill.split(",")]
    if len(configs) > 1:  # one process per configuration: workers.app keeps one broker per process
        codes = []
        for b, n, k in configs:
            rest = [a for a in (argv if argv is not None else sys.argv[1:])]
            codes.append(subprocess.run([sys.executable, __file__, *rest, "--broker", b, "--workers", str(n),
                                         "--kill", k]).returncode)
        return max(codes)
    (broker, n, kill), = configs
    t0 = time.time()
    result = run(args, broker, n, kill)
    result.update(machine=f"{platform.node()} {os.cpu_count()} CPUs, Python {platform.python_version()}",
                  started=datetime.fromtimestamp(t0, UTC).isoformat(timespec="seconds"),
                  command=" ".join(["bench/bench_soak.py", *(argv if argv is not None else sys.argv[1:])]))
    print(json.dumps({k: result[k] for k in ("label", "ok", "requests_per_s", "access", "erasure", "span_s",
                                             "problems")}), flush=True)
    history = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps([*history, result], indent=1, default=str))
    return 0 if result["ok"] else 1

if __name__ == "__main__":
    raise SystemExit(main())

"""Backbone benchmark: access requests through the Redis broker and ONE `dsar worker` process.

    .venv/bin/python bench/seed_accounts.py            # once: 100k users, 150k servers, 300k orders
    .venv/bin/python bench/bench_backbone.py           # this file

What it does (a benchmark, not a test: it asserts no timing, it writes down what it measures):
  - environment: a fresh PostgreSQL ledger database (dropped and recreated), a redis-server of its own
    on a free port as the broker (started and stopped by this script; the host's shared Redis is not
    touched; --redis-url: an empty database of yours instead, never flushed), the seeded account DB,
    archive and staging under bench/out/;
  - starts one worker: `.venv/bin/dsar worker --processes 1 --threads 8` (subprocess, own session);
  - warm-up: one request (the worker's first: connectors built, tables reflected), reported apart;
  - sequential: N access requests, one at a time, for distinct seeded people (their e-mails as
    stored: mixed case, spaces), timed from before `pipeline.submit` until the ledger says
    completed (polled every --ledger-poll-ms) and the bundle file exists; back to back, and again with an
    idle gap before each request (what a lone request meets: an idle worker);
  - burst: 20 requests submitted at once, time until all are completed (several rounds);
  - phases per request from the ledger's own timestamps (received, planned, task started/finished,
    completed) and, in-process without the broker, the time of each pipeline step;
  - worker memory: VmRSS of the dramatiq main process and its children sampled every 20 ms, and
    each process's VmHWM (kernel-recorded peak) at the end;
  - EXPLAIN ANALYZE of the connector's locate queries (round 0: e-mail; round 1: all identifiers).
Writes bench/out/<label>.json (default backbone.json) and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import hashlib
import io
import json
import os
import platform
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import psycopg
import sqlalchemy as sa
from own_redis import broker_redis
from procs import cmdline, cpu_seconds, machine_cpu, proc_kb, stat_fields, tree
from psycopg import sql
from stats import pct

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
WORK = OUT / "backbone_work"  # this benchmark's archive and staging (bench/out is shared with other benchmarks)
VENV_BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))

ACCOUNTS_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/dsar_bench_accounts"
LEDGER_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/dsar_bench_ledger"
OPEN = ("received", "discovering", "running", "awaiting_manual", "merging")


def pg(url: str) -> str:
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def summary(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {"n": len(ms), "median_ms": round(statistics.median(ms), 1), "p90_ms": round(pct(ms, 0.9), 1),
            "min_ms": round(min(ms), 1), "max_ms": round(max(ms), 1), "mean_ms": round(statistics.fmean(ms), 1)}


# -- environment -----------------------------------------------------------------------------

def scalar(conn: psycopg.Connection, query: Any, params: tuple[object, ...] = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def fresh_ledger(url: str) -> None:
    u = sa.make_url(url)
    assert u.database
    if not u.database.startswith("dsar_bench"):  # dropped and recreated: only a benchmark's own database
        raise SystemExit(f"--ledger-url: the benchmark drops and recreates its ledger; give a database named "
                         f"dsar_bench..., not {u.database!r} (it may hold someone else's data)")
    admin = pg(url).rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(u.database)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(u.database)))


def set_env(args: argparse.Namespace, broker: str) -> dict[str, str]:
    env = {
        "DSAR_LEDGER_URL": args.ledger_url,
        "DSAR_BROKER_URL": broker,
        "DSAR_ACCOUNTS_DB_URL": args.accounts_url,
        "DSAR_SECRET_KEY": "bench-secret-key-0123456789abcdef",
        "DSAR_ARCHIVE_PATH": str(WORK / "archive"),
        "DSAR_ARCHIVE_STAGING_PATH": str(WORK / "staging"),
    }
    os.environ.update(env)
    os.environ["DSAR_LOG_LEVEL"] = "WARNING"  # this process; the worker gets --log-level
    env["DSAR_LOG_LEVEL"] = args.log_level
    os.environ.pop("DSAR_CONFIG", None)
    return env


# -- worker process and its memory -----------------------------------------------------------

def proc_status(pid: int) -> dict[str, Any] | None:
    cmd = cmdline(pid)
    threads = next((f[17] for f in [stat_fields(pid)] if f), None)  # num_threads (field 20)
    if not cmd or threads is None:
        return None
    return {"pid": pid, "rss_kb": proc_kb(pid, "status", "VmRSS"), "pss_kb": proc_kb(pid, "smaps_rollup", "Pss"),
            "hwm_kb": proc_kb(pid, "status", "VmHWM"), "threads": int(threads), "cmd": cmd}


class RssSampler(threading.Thread):
    """Samples VmRSS of the worker's process tree; keeps the peak per process and per phase."""

    def __init__(self, root_pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.root_pid, self.interval = root_pid, interval
        self.phase = "boot"
        self.peak: dict[str, dict[str, Any]] = {}
        self.phase_peak: dict[str, dict[int, int]] = {}
        self.phase_total_peak: dict[str, int] = {}
        self.samples = 0
        self._pids: list[int] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def sample(self) -> None:
        total = 0
        if self.samples % 25 == 0 or not self._pids:  # walking /proc is the costly part: twice a second
            self._pids = tree([self.root_pid])
        for pid in self._pids:
            st = proc_status(pid)
            if st is None or not st["cmd"]:  # gone, or caught mid-exec
                continue
            total += st["rss_kb"]
            key = f"{pid} {st['cmd'][:60]}"  # `dsar worker` execs into dramatiq: same pid, two programs
            best = self.peak.get(key)
            if best is None or st["rss_kb"] > best["rss_kb"]:
                self.peak[key] = st
            ph = self.phase_peak.setdefault(self.phase, {})
            ph[pid] = max(ph.get(pid, 0), st["rss_kb"])
        self.phase_total_peak[self.phase] = max(self.phase_total_peak.get(self.phase, 0), total)
        self.samples += 1

    def hwm(self) -> list[dict[str, Any]]:
        return [st for pid in tree([self.root_pid]) if (st := proc_status(pid))]

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=2)


def start_worker(args: argparse.Namespace, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    wenv = dict(os.environ, **env)
    if args.worker_idle_ms:
        # worker.idle_ms: how long an idle consumer waits for a wake-up before it looks anyway (a message sent wakes
        # it at once; older code polled at worker.poll_ms / dramatiq_worker_timeout instead, set here too for it)
        wenv["DSAR_WORKER_IDLE_MS"] = wenv["DSAR_WORKER_POLL_MS"] = wenv["dramatiq_worker_timeout"] = \
            str(args.worker_idle_ms)
    cmd = [str(VENV_BIN / "dsar"), "worker", "--processes", "1", "--threads", str(args.threads)]
    log = log_path.open("wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=wenv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    return proc


def wait_ready(proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 60) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}; see {log_path}")
        if b"ready for action" in log_path.read_bytes():
            return time.perf_counter() - t0
        time.sleep(0.05)
    raise RuntimeError(f"worker not ready after {timeout}s; see {log_path}")


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    pids = tree([proc.pid])
    proc.send_signal(signal.SIGTERM)  # dramatiq's main process forwards it to its workers
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        for pid in pids:  # only the processes this benchmark started
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=5)


# -- requests --------------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        from discovery.engine import pipeline
        from discovery.engine.settings import load_settings
        from workers import app

        self.args = args
        self.pipeline = pipeline
        self.rt = app.setup(load_settings())  # Redis broker for .send, upgrades the fresh ledger
        from workers.actors import WAKE

        self.wake = WAKE
        self.poll = psycopg.connect(pg(args.ledger_url), autocommit=True)
        self.poll.prepare_threshold = 0

    def status(self, request_ids: list[str]) -> dict[str, tuple[str, str | None]]:
        rows = self.poll.execute("SELECT id, status, bundle_path FROM requests WHERE id = ANY(%s)",
                                 (request_ids,)).fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}

    def submit(self, email: str) -> str:
        sub = self.pipeline.submit(self.rt, self.wake, "access", email, actor="bench")
        if not sub.created:
            raise RuntimeError("a request for this person was already open; people must be distinct")
        return sub.request.id

    def wait_all(self, ids: list[str], t0: float, timeout: float) -> dict[str, float]:
        """Poll until every request is closed; returns seconds from t0 to when each was seen closed."""
        done: dict[str, float] = {}
        interval = self.args.ledger_poll_ms / 1000
        while len(done) < len(ids):
            now = time.perf_counter()
            if now - t0 > timeout:
                raise RuntimeError(f"{len(ids) - len(done)} request(s) still open after {timeout}s")
            for rid, (status, bundle) in self.status([i for i in ids if i not in done]).items():
                if status not in OPEN:
                    if status != "completed" or not bundle_exists(bundle):
                        raise RuntimeError(f"request {rid} ended {status} (bundle {bundle})")
                    done[rid] = time.perf_counter() - t0
            time.sleep(interval)
        return done

    def one(self, email: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        rid = self.submit(email)
        t_submit = time.perf_counter() - t0
        total = self.wait_all([rid], t0, 120)[rid]
        return {"id": rid, "total_s": total, "submit_s": t_submit}

    def phases(self, ids: list[str]) -> dict[str, list[float]]:
        """Ledger timestamps (wall clock, same machine): where each request's time went."""
        q = """
        SELECT r.id, r.received_at, p.at AS planned_at, t.started_at, t.finished_at, r.completed_at
        FROM requests r
        JOIN audit_events p ON p.request_id = r.id AND p.event = 'request.planned'
        JOIN tasks t ON t.request_id = r.id
        WHERE r.id = ANY(%s)"""
        out: dict[str, list[float]] = {"received->planned (queue+discover)": [],
                                       "planned->task started (queue)": [],
                                       "task started->finished (export)": [],
                                       "task finished->completed (queue+merge)": []}
        for _rid, rec, planned, started, finished, completed in self.poll.execute(q, (ids,)).fetchall():
            keys = list(out)
            for k, (a, b) in zip(keys, [(rec, planned), (planned, started), (started, finished),
                                        (finished, completed)], strict=True):
                out[k].append((b - a).total_seconds())
        return out

    def close(self) -> None:
        self.poll.close()
        self.rt.close()


def bundle_exists(uri: str | None) -> bool:
    """The ledger keeps a path, or (newer code) a store URI: file:///abs/<id>.zip or s3://..."""
    if not uri:
        return False
    if uri.startswith("file://"):
        return Path(url2pathname(urlsplit(uri).path)).exists()
    if "://" in uri:
        return True  # another store (s3): the ledger's completed status is what we go by
    return Path(uri).exists()


def code_version() -> dict[str, Any]:
    """Which code was measured: HEAD plus a digest of the working tree's Python sources (read-only git)."""
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    digest = hashlib.sha256()
    for f in sorted(p for d in ("connectors", "discovery", "workers") for p in (ROOT / d).rglob("*.py")):
        digest.update(f.relative_to(ROOT).as_posix().encode() + f.read_bytes())
    for name in ("config/dsar.toml", "config/datamap.yaml"):
        digest.update((ROOT / name).read_bytes())
    changed = git("--no-optional-locks", "status", "--porcelain").splitlines()  # never touches the index
    return {"head": git("rev-parse", "--short", "HEAD"), "changed_files": len(changed),
            "sources_sha256": digest.hexdigest()[:16]}


IDENTITY_COLUMNS = ("phone", "matomo_visitor_id")  # identity columns of users besides email and id


def set_identity_indexes(accounts_url: str, mode: str) -> None:
    """on: make sure users.phone and users.matomo_visitor_id are indexed (schemas before 70003c3 were not);
    off: drop every index on them (the state the issue was measured in); asis: leave the schema alone."""
    if mode == "asis":
        return
    with psycopg.connect(pg(accounts_url), autocommit=True) as conn:
        for col in IDENTITY_COLUMNS:
            existing = [r[0] for r in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'users' AND indexdef LIKE %s",
                (f"%({col})",))]
            if mode == "on" and not existing:
                conn.execute(sql.SQL("CREATE INDEX {} ON users ({})").format(
                    sql.Identifier(f"bench_ix_users_{col}"), sql.Identifier(col)))
            elif mode == "off":
                for name in existing:
                    conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
        conn.execute("ANALYZE users")


def identity_indexes(conn: psycopg.Connection) -> dict[str, list[str]]:
    return {col: [r[0] for r in conn.execute(
        "SELECT indexname FROM pg_indexes WHERE tablename = 'users' AND indexdef LIKE %s", (f"%({col})",))]
        for col in IDENTITY_COLUMNS}


def pick_people(accounts_url: str, n: int) -> list[str]:
    """Distinct seeded people (not the sample ones) with servers and orders, e-mails stored as typed."""
    with psycopg.connect(pg(accounts_url)) as conn:
        rows = conn.execute("""
            SELECT u.email FROM users u
            WHERE u.id >= 10001 AND u.email <> lower(trim(u.email))
              AND EXISTS (SELECT 1 FROM servers s WHERE s.user_id = u.id)
              AND EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.id)
            ORDER BY md5(u.id::text) LIMIT %s""", (n,)).fetchall()
    if len(rows) < n:
        raise RuntimeError(f"only {len(rows)} suitable people in the account DB; seed it (bench/seed_accounts.py)")
    return [r[0] for r in rows]


# -- in-process step timing (no broker) ------------------------------------------------------

class Collect:
    """A synchronous Wakeups stand-in that only records what would be woken."""

    def __init__(self) -> None:
        self.tasks: list[int] = []
        self.merges: list[str] = []

    def discover(self, request_id: str) -> None:
        pass

    def execute(self, task_id: int) -> None:
        self.tasks.append(task_id)

    def merge(self, request_id: str) -> None:
        self.merges.append(request_id)


def in_process_steps(bench: Bench, people: list[str]) -> dict[str, Any]:
    """Each pipeline step called directly (no broker, no polling): what the work itself costs."""
    p = bench.pipeline
    rt = bench.rt
    steps: dict[str, list[float]] = {"submit": [], "run_discovery": [], "execute_task": [], "merge_request": []}
    cpu0 = time.process_time()
    for email in people:
        wake = Collect()
        t = time.perf_counter()
        rid = p.submit(rt, wake, "access", email, actor="bench").request.id
        steps["submit"].append(time.perf_counter() - t)
        t = time.perf_counter()
        p.run_discovery(rt, wake, rid)
        steps["run_discovery"].append(time.perf_counter() - t)
        t = time.perf_counter()
        for task_id in list(wake.tasks):
            p.execute_task(rt, wake, task_id)
        steps["execute_task"].append(time.perf_counter() - t)
        t = time.perf_counter()
        p.merge_request(rt, rid)
        steps["merge_request"].append(time.perf_counter() - t)
    out: dict[str, Any] = {k: summary(v) for k, v in steps.items()}
    out["process_cpu_ms_per_request"] = round((time.process_time() - cpu0) * 1000 / len(people), 1)
    return out


def profile_requests(bench: Bench, people: list[str], path: Path) -> dict[str, float]:
    """cProfile over whole requests run in-process; writes the report, returns CPU ms per request by package."""
    prof = cProfile.Profile()
    prof.enable()
    in_process_steps(bench, people)
    prof.disable()
    stats = pstats.Stats(prof)
    by_pkg: dict[str, float] = {}
    for (filename, _line, func), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        key = _package(filename, func)
        if (filename.endswith("psycopg/connection.py") and func == "wait") or "acquire" in func:
            key = "waiting: PostgreSQL replies (psycopg wait) and thread locks"
        by_pkg[key] = by_pkg.get(key, 0.0) + tottime
    per_req = {k: round(v * 1000 / len(people), 2) for k, v in sorted(by_pkg.items(), key=lambda kv: -kv[1])}
    buf = io.StringIO()
    buf.write(f"{len(people)} access requests in-process (submit, discovery, export, merge), no broker\n\n")
    buf.write("self time per request by package, main thread only (locate runs in a thread pool: its time shows\n"
              "as waiting on a lock); profiler overhead included (ms)\n")
    for k, v in per_req.items():
        if v >= 0.05:
            buf.write(f"  {v:8.2f}  {k}\n")
    st = pstats.Stats(prof, stream=buf)
    buf.write("\n")
    st.sort_stats("tottime").print_stats(35)
    st.sort_stats("cumulative").print_stats(60)
    path.write_text(buf.getvalue())
    return dict(list(per_req.items())[:15])


def _package(filename: str, func: str) -> str:
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0]
    if filename.startswith(str(ROOT)):
        return filename[len(str(ROOT)) + 1:]
    if filename.startswith(("~", "<")):
        return "builtins: " + func.split(" of ")[0].replace("<built-in method ", "").strip("<>{}")
    return "stdlib/" + Path(filename).name


def sql_counts(bench: Bench, people: list[str]) -> dict[str, int]:
    """How many statements one request sends to the account DB and to the ledger (in-process run)."""
    counts = {"accounts": 0, "ledger": 0}
    conn = bench.rt.connector("accounts")
    engines = {"accounts": conn.engine, "ledger": bench.rt.engine}  # type: ignore[attr-defined]

    def counter(key: str) -> Any:
        def _inc(*_a: Any, **_k: Any) -> None:
            counts[key] += 1
        return _inc

    hooks = {k: counter(k) for k in engines}
    for k, eng in engines.items():
        sa.event.listen(eng, "before_cursor_execute", hooks[k])
    try:
        in_process_steps(bench, people)
    finally:
        for k, eng in engines.items():
            sa.event.remove(eng, "before_cursor_execute", hooks[k])
    return {k: v // len(people) for k, v in counts.items()}


# -- EXPLAIN ---------------------------------------------------------------------------------

def explain_locate(bench: Bench, email: str, learned: list[tuple[str, str]]) -> dict[str, Any]:
    """EXPLAIN ANALYZE the connector's own locate count queries, round 0 (e-mail) and round 1 (all learned)."""
    from sqlalchemy.dialects import postgresql

    from connectors.base import Identities, Identity, IdentityType
    from connectors.emails import normalise_email

    conn = bench.rt.connector("accounts")
    out: dict[str, Any] = {}
    seed = Identities([Identity(IdentityType.EMAIL, normalise_email(email), "request")])
    full = Identities([*seed, *(Identity(IdentityType(t), v, "accounts") for t, v in learned)])
    with conn.engine.connect() as c:  # type: ignore[attr-defined]
        for label, idents in (("round0_email", seed), ("round1_all_identifiers", full)):
            vals = conn._bound(idents)  # type: ignore[attr-defined]  # the identifiers as the connector binds them
            for entity in conn.order:  # type: ignore[attr-defined]
                reach = conn._reach(entity, vals, c)  # type: ignore[attr-defined]  # the connector's WHERE
                if reach is None:
                    continue
                cond = reach.mine
                table = conn._table(entity, c)  # type: ignore[attr-defined]
                # the identifiers are bind parameters (`vals.params`): given to the statement, then written in
                stmt = sa.select(sa.func.count()).select_from(table).where(cond).params(vals.params)
                text = str(stmt.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
                plan = [r[0] for r in c.execute(sa.text("EXPLAIN (ANALYZE, BUFFERS) " + text))]
                out[f"{label}.{entity}"] = {
                    "sql": _mask_literals(text, idents),
                    "plan": [_mask_literals(line, idents) for line in plan],
                    "uses_email_index": any("ix_users_email_norm" in line for line in plan),
                    "seq_scan_users": any("Seq Scan on users" in line for line in plan),
                    "execution_ms": next((float(line.split(":")[1].split()[0]) for line in plan
                                          if line.startswith("Execution Time")), None),
                }
    return out


def _mask_literals(text: str, idents: Any) -> str:
    for i in idents:
        text = text.replace(i.value, f"<{i.type.value}>")
    return text


# -- main ------------------------------------------------------------------------------------

def other_load(own: set[int]) -> dict[str, Any]:
    """Load average and other benchmark/worker processes running beside this one (they skew timings)."""
    others = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in own:
            continue
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "python" in cmd and any(k in cmd for k in ("bench", "dramatiq", "pytest", "dsar")):
                others.append(f"{entry} {cmd.strip()[:100]}")
    return {"loadavg": Path("/proc/loadavg").read_text().split()[:3], "other_processes": others}


def machine(broker: str) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    mem = next(line.split(":", 1)[1].strip() for line in meminfo if line.startswith("MemTotal"))
    with psycopg.connect(pg(LEDGER_URL).rsplit("/", 1)[0] + "/postgres") as c:
        pgv = scalar(c, "SHOW server_version")
    import dramatiq
    import redis

    client = redis.Redis.from_url(broker)  # the Redis this run uses: its own redis-server unless --redis-url
    rv = client.info("server")["redis_version"]
    client.close()
    return {"nproc": os.cpu_count(), "mem_total": mem, "cpu": cpu, "python": platform.python_version(),
            "postgresql": pgv, "redis": rv, "dramatiq": dramatiq.__version__}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Backbone benchmark (see module docstring).")
    ap.add_argument("--accounts-url", default=ACCOUNTS_URL)
    ap.add_argument("--ledger-url", default=LEDGER_URL, help="dropped and recreated")
    ap.add_argument("--redis-url", default=None,
                    help="an empty Redis database of yours as the broker (checked empty, never flushed); "
                         "default: a redis-server of this run's own on a free port")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--sequential", type=int, default=30)
    ap.add_argument("--idle-gap", type=float, default=1.5, help="idle seconds before each request, idle series")
    ap.add_argument("--burst", type=int, default=20)
    ap.add_argument("--burst-rounds", type=int, default=3)
    ap.add_argument("--in-process", type=int, default=20, help="requests run through pipeline steps directly")
    ap.add_argument("--ledger-poll-ms", type=float, default=3.0, help="how often this script polls the ledger")
    ap.add_argument("--worker-idle-ms", type=int, default=0,
                    help="set worker.idle_ms (DSAR_WORKER_IDLE_MS) for the worker; default: the settings' value")
    ap.add_argument("--idle-cpu-window", type=float, default=5.0, help="seconds of idle worker CPU measurement")
    ap.add_argument("--identity-indexes", choices=("asis", "on", "off"), default="asis",
                    help="on/off: make sure users.phone and users.matomo_visitor_id are / are not indexed")
    ap.add_argument("--log-level", default="INFO", help="DSAR_LOG_LEVEL for the worker (default INFO)")
    ap.add_argument("--label", default="backbone")
    args = ap.parse_args(argv)
    with broker_redis(args.redis_url) as broker:
        return run(args, broker)


def run(args: argparse.Namespace, broker: str) -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(WORK, ignore_errors=True)
    env = set_env(args, broker)
    fresh_ledger(args.ledger_url)

    set_identity_indexes(args.accounts_url, args.identity_indexes)
    n_people = 1 + 2 * args.sequential + args.burst * args.burst_rounds + args.in_process + 5 + 1
    people = pick_people(args.accounts_url, n_people)
    take = iter(people)
    result: dict[str, Any] = {"label": args.label, "started": datetime.now().isoformat(timespec="seconds"),
                              "machine": machine(broker), "code": code_version(), "args": vars(args), "argv": sys.argv}
    with psycopg.connect(pg(args.accounts_url)) as c:
        result["accounts_db"] = {t: scalar(c, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t)))
                                 for t in ("users", "servers", "orders", "login_log")}
        result["accounts_db"]["identity_indexes"] = identity_indexes(c)

    from discovery.engine.settings import load_settings

    result["worker_idle_ms_effective"] = getattr(
        load_settings(env=dict(os.environ, **({"DSAR_WORKER_IDLE_MS": str(args.worker_idle_ms)}
                                              if args.worker_idle_ms else {}))).worker,
        "idle_ms", args.worker_idle_ms or 1000)  # code without worker.idle_ms: Dramatiq's default
    result["load_before"] = other_load({os.getpid()})
    bench = Bench(args)
    log_path = OUT / f"{args.label}.worker.log"
    proc = start_worker(args, env, log_path)
    sampler = RssSampler(proc.pid)
    sampler.start()
    try:
        result["worker_boot_s"] = round(wait_ready(proc, log_path), 2)
        sampler.phase = "idle_after_boot"
        cpu0, t0 = cpu_seconds(tree([proc.pid])), time.perf_counter()
        time.sleep(args.idle_cpu_window)
        result["worker_idle_cpu_percent"] = round(
            100 * (cpu_seconds(tree([proc.pid])) - cpu0) / (time.perf_counter() - t0), 2)

        busy0, all0 = machine_cpu()
        wcpu0 = cpu_seconds(tree([proc.pid]))
        sampler.phase = "warmup"
        warm = bench.one(next(take))
        result["warmup_first_request_ms"] = round(warm["total_s"] * 1000, 1)
        time.sleep(0.5)

        sampler.phase = "sequential"
        seq = [bench.one(next(take)) for _ in range(args.sequential)]
        result["sequential_back_to_back"] = summary([r["total_s"] for r in seq])
        result["sequential_back_to_back"]["submit_call"] = summary([r["submit_s"] for r in seq])
        result["sequential_back_to_back"]["phases"] = {k: summary(v) for k, v in
                                                       bench.phases([r["id"] for r in seq]).items()}

        sampler.phase = "sequential_idle"
        idle = []
        for _ in range(args.sequential):
            time.sleep(args.idle_gap)
            idle.append(bench.one(next(take)))
        result["sequential_after_idle"] = summary([r["total_s"] for r in idle])
        result["sequential_after_idle"]["idle_gap_s"] = args.idle_gap
        result["sequential_after_idle"]["phases"] = {k: summary(v) for k, v in
                                                     bench.phases([r["id"] for r in idle]).items()}

        sampler.phase = "burst"
        bursts = []
        for _ in range(args.burst_rounds):
            time.sleep(args.idle_gap)
            emails = [next(take) for _ in range(args.burst)]
            t0 = time.perf_counter()
            ids = [bench.submit(e) for e in emails]
            t_submitted = time.perf_counter() - t0
            done = bench.wait_all(ids, t0, 120)
            per = list(done.values())
            bursts.append({"all_done_ms": round(max(per) * 1000, 1), "submit_all_ms": round(t_submitted * 1000, 1),
                           "per_request": summary(per),
                           "phases": {k: summary(v) for k, v in bench.phases(ids).items()}})
        result["burst"] = bursts

        result["load_end_of_broker_runs"] = other_load({os.getpid(), *tree([proc.pid])})
        busy1, all1 = machine_cpu()
        ncpu = os.cpu_count() or 1
        result["cpu_during_broker_runs"] = {
            "machine_busy_percent_of_all_cores": round(100 * (busy1 - busy0) / max(all1 - all0, 1), 1),
            "worker_cpu_s": round(cpu_seconds(tree([proc.pid])) - wcpu0, 2),
            "wall_s": round((all1 - all0) / ncpu, 1),
            "requests": 1 + 2 * args.sequential + args.burst * args.burst_rounds,
        }
        c = result["cpu_during_broker_runs"]
        c["worker_cpu_ms_per_request"] = round(c["worker_cpu_s"] * 1000 / c["requests"], 1)
        sampler.phase = "after"
        time.sleep(2.0)
        result["worker_memory"] = {
            "sampled_peak_per_process_mb": {f"{st['pid']} {st['cmd'][:60]}": round(st["rss_kb"] / 1024, 1)
                                            for st in sampler.peak.values()},
            "vmhwm_per_process_mb": {f"{st['pid']} {st['cmd'][:60]}": round(st["hwm_kb"] / 1024, 1)
                                     for st in sampler.hwm()},
            "pss_now_per_process_mb": {f"{st['pid']} {st['cmd'][:60]}": round(st["pss_kb"] / 1024, 1)
                                       for st in sampler.hwm()},
            "rss_now_per_process_mb": {f"{st['pid']} {st['cmd'][:60]}": round(st["rss_kb"] / 1024, 1)
                                       for st in sampler.hwm()},
            "threads_now": {str(st["pid"]): st["threads"] for st in sampler.hwm()},
            "tree_total_peak_mb_by_phase": {k: round(v / 1024, 1) for k, v in sampler.phase_total_peak.items()},
            "samples": sampler.samples,
        }
    finally:
        try:
            sampler.stop()
        finally:
            stop_worker(proc)

    # Without the broker, in this process: what the pipeline steps themselves cost.
    sample = [next(take) for _ in range(args.in_process)]
    result["in_process_steps"] = in_process_steps(bench, sample)
    result["profile_cpu_ms_per_request_by_package"] = profile_requests(
        bench, [next(take) for _ in range(5)], OUT / f"{args.label}.profile.txt")
    result["sql_statements_per_request"] = sql_counts(bench, [next(take)])

    # EXPLAIN the locate queries with the identifiers the first sequential request learned.
    with bench.poll.cursor() as cur:
        learned = cur.execute("SELECT type, value FROM identities WHERE request_id = %s AND source <> 'request'",
                              (seq[0]["id"],)).fetchall()
    email = scalar(bench.poll, "SELECT subject_email FROM requests WHERE id = %s", (seq[0]["id"],))
    result["explain_locate"] = explain_locate(bench, email, learned)
    bench.close()

    out_path = OUT / f"{args.label}.json"
    out_path.write_text(json.dumps(result, indent=2, default=str))
    report(result)
    print(f"\nwrote {out_path}; worker log {log_path}; profile {OUT / (args.label + '.profile.txt')}")
    return 0


def report(r: dict[str, Any]) -> None:
    def row(name: str, s: dict[str, Any]) -> None:
        print(f"  {name:<40} median {s['median_ms']:8.1f}  p90 {s['p90_ms']:8.1f}  max {s['max_ms']:8.1f}  ms"
              f"  (n={s['n']})")

    print(f"\n== {r['label']}  accounts {r['accounts_db']}  worker "
          f"idle {r.get('worker_idle_ms_effective', r.get('worker_poll_ms_effective'))} ms")
    print(f"code: {r['code']}")
    for k in ("load_before", "load_end_of_broker_runs"):
        print(f"{k}: loadavg {' '.join(r[k]['loadavg'])}; other processes: {r[k]['other_processes'] or 'none'}")
    print(f"cpu during broker runs: {r['cpu_during_broker_runs']}")
    print(f"worker boot {r['worker_boot_s']} s; idle worker CPU {r['worker_idle_cpu_percent']} % of one core; "
          f"first request (cold worker) {r['warmup_first_request_ms']} ms")
    print("single access request, submit -> completed + bundle written   [target: median < 100 ms]")
    row("back to back", r["sequential_back_to_back"])
    for k, s in r["sequential_back_to_back"]["phases"].items():
        row("  " + k, s)
    row(f"after {r['sequential_after_idle']['idle_gap_s']} s idle", r["sequential_after_idle"])
    for k, s in r["sequential_after_idle"]["phases"].items():
        row("  " + k, s)
    print("burst of 20 submitted at once, all completed   [target: < 1000 ms]")
    for n, b in enumerate(r["burst"], 1):
        print(f"  round {n}: all done {b['all_done_ms']:.1f} ms (submitting took {b['submit_all_ms']:.1f} ms);"
              f" per request median {b['per_request']['median_ms']:.1f} max {b['per_request']['max_ms']:.1f} ms")
    print("worker memory   [target: < 150 MB]")
    for k, v in r["worker_memory"]["sampled_peak_per_process_mb"].items():
        print(f"  sampled peak RSS {v:7.1f} MB  {k}")
    for k, v in r["worker_memory"]["vmhwm_per_process_mb"].items():
        print(f"  VmHWM            {v:7.1f} MB  {k}")
    for k, v in r["worker_memory"]["pss_now_per_process_mb"].items():
        print(f"  PSS at the end   {v:7.1f} MB  {k}")
    print(f"  tree total peak by phase (MB): {r['worker_memory']['tree_total_peak_mb_by_phase']}")
    print("pipeline steps in-process, no broker:")
    for k, s in r["in_process_steps"].items():
        if isinstance(s, dict):
            row(k, s)
    c = r["cpu_during_broker_runs"]
    print(f"  CPU per request: in-process (all threads) {r['in_process_steps']['process_cpu_ms_per_request']} ms;"
          f" worker during broker runs {c['worker_cpu_ms_per_request']} ms (incl. its idle polling)")
    print(f"SQL statements per request: {r['sql_statements_per_request']}")
    print("profiled in-process, self time per request by package (ms; profiler overhead included):")
    print("  " + ", ".join(f"{k} {v}" for k, v in r["profile_cpu_ms_per_request_by_package"].items()))
    print("EXPLAIN ANALYZE of locate count queries:")
    for k, e in r["explain_locate"].items():
        print(f"  {k:<40} email index: {'yes' if e['uses_email_index'] else 'no ':<4} seq scan users: "
              f"{'YES' if e['seq_scan_users'] else 'no':<4} {e['execution_ms']} ms")


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except Exception:  # keep the traceback even if stderr is gone; deep recursion shortened
        import traceback

        (OUT / "bench_error.txt").write_text("".join(traceback.format_exc(limit=-40)))
        raise

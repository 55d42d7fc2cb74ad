"""Process-shape benchmark: the dsar half of the Fides side-by-side harness (../shared/peers/fides), alone.

    .venv/bin/python bench/bench_shape.py                          # 3 rounds, serve + worker --processes 2 --threads 4
    .venv/bin/python bench/bench_shape.py --rounds 1 --big 0       # quick: one round, no 100-at-once
    .venv/bin/python bench/bench_shape.py --processes 1 --threads 8 --label shape-1x8

What it does (a benchmark, not a test: it writes down what it measures and asserts nothing about timings):
  - the peer's seed data (sql/klikk_accounts.sql: 100,000 users, 300,000 orders, 150,000 servers) in a
    database of its own, `dsar_shape_accounts`, seeded once (again with --reseed) with run.sh's index,
    ANALYZE and pg_prewarm; users erased by an earlier run are put back to their seeded values first, so
    every run erases real data. A fresh ledger database `dsar_shape_ledger`, a redis-server of its own on
    a free port (bench/own_redis.py; the host's shared Redis is not touched), the API on a free port;
  - the peer's dsar.toml and datamap.yaml (DSAR_CONFIG) with ledger, broker, archive, staging, outbox and
    port overridden by DSAR_<SECTION>_<KEY>; `dsar serve` and `dsar worker --processes P --threads T`;
  - sbs.py's request mix, seed and submission (POST /v1/requests with a bearer token, 20 client threads
    for bursts), completion polled in the ledger every --poll-ms: warm-up (3 access + 1 erasure, not
    counted), 10 s idle, then per round (a) 10 single access requests one after another, (b) 20 at once,
    (c) 3 erasures one after another, (e) 100 at once;
  - CPU of dsar's process tree per section (utime+stime from /proc, reaped children included), RSS
    (every 0.25 s) and PSS (every 1 s) summed over the tree, overall, per phase and per process;
  - afterwards: every request completed; a few bundles hold what the accounts database holds; the
    erased users' personal columns are empty.
Writes bench/out/shape.json (or --label) and prints a summary. Everything it starts is stopped, by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import psycopg
import requests
from own_redis import free_port, own_redis
from procs import cmdline, cpu_seconds, loadavg, machine_cpu, proc_kb, tree

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
PEER = ROOT.parent / "shared" / "peers" / "fides"  # the side-by-side harness beside this checkout
PG = "postgresql://postgres@127.0.0.1:5432"
SEED = 20261130  # sbs.py's: the same e-mails
SECRET = "bench-shape-secret-key-012345678"  # 32 characters
DSAR = str(Path(sys.executable).parent / "dsar")
TERMINAL = {"completed", "completed_with_errors", "failed"}
# run.sh's seed expressions (g = the row id), to put back what an earlier run's erasures masked
RESTORE = """
WITH u AS (
  UPDATE users SET email = 'user' || id || '@example.com',
    password_hash = '$2b$12$' || md5(id::text) || md5((id*7)::text),
    first_name = (ARRAY['Ola','Kari','Per','Anne','Lars','Ingrid','Jonas','Sofie','Emil','Nora'])[1 + id % 10],
    last_name = (ARRAY['Hansen','Johansen','Olsen','Larsen','Andersen','Pedersen','Nilsen','Kristiansen','Jensen',
                       'Karlsen'])[1 + (id/10) % 10],
    phone = '+47 ' || lpad((40000000 + id)::text, 8, '0')
  WHERE email <> 'user' || id || '@example.com' RETURNING id),
o AS (
  UPDATE orders SET company_name = 'Company ' || (id % 50000) || ' AS',
    vat_number = 'NO' || lpad((900000000 + id % 100000)::text, 9, '0') || 'MVA',
    country = (ARRAY['NO','SE','DK','FI','DE'])[1 + id % 5], street = 'Storgata ' || (1 + id % 200),
    postcode = lpad((id % 9999)::text, 4, '0'),
    city = (ARRAY['Oslo','Bergen','Trondheim','Stavanger','Tromsø'])[1 + id % 5]
  WHERE user_id IN (SELECT id FROM u) RETURNING 1),
s AS (
  UPDATE servers SET ip_address = ('10.' || (id / 65536) % 256 || '.' || (id / 256) % 256 || '.' || id % 256)::inet
  WHERE user_id IN (SELECT id FROM u) RETURNING 1)
SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM o), (SELECT count(*) FROM s)
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] load {loadavg()} | {msg}", file=sys.stderr, flush=True)


def med(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 4) if xs else None


class MemSampler(threading.Thread):
    """RSS of every process in the tree every 0.25 s, PSS every 1 s: peaks of the sums, per phase, per process."""

    def __init__(self, roots: list[int]) -> None:
        super().__init__(daemon=True)
        self.roots, self.phase, self.done, self.samples = roots, "start", threading.Event(), 0
        self.peak: dict[str, int] = {}
        self.per_phase: dict[str, dict[str, int]] = {}
        self.per_proc: dict[str, dict[str, int]] = {}

    def run(self) -> None:
        while not self.done.is_set():
            phase, with_pss = self.phase, self.samples % 4 == 0
            sums = {"rss": 0, "pss": 0}
            for pid in tree(self.roots):
                got = {"rss": proc_kb(pid, "status", "VmRSS")}
                if with_pss:
                    got["pss"] = proc_kb(pid, "smaps_rollup", "Pss")
                mine = self.per_proc.setdefault(f"{pid} {cmdline(pid, f'{ROOT}/')}", {})
                for k, v in got.items():
                    sums[k] += v
                    mine[k] = max(mine.get(k, 0), v)
            for k in ("rss", "pss") if with_pss else ("rss",):
                self.peak[k] = max(self.peak.get(k, 0), sums[k])
                ph = self.per_phase.setdefault(phase, {})
                ph[k] = max(ph.get(k, 0), sums[k])
            self.samples += 1
            self.done.wait(0.25)

    def report(self) -> dict[str, Any]:
        mib = lambda d: {f"{k}_MiB": round(v / 1024, 1) for k, v in d.items()}  # noqa: E731
        procs = sorted(self.per_proc.items(), key=lambda kv: -kv[1].get("rss", 0))
        return {"peak": mib(self.peak), "per_phase_peak": {p: mib(d) for p, d in self.per_phase.items()},
                "per_process_peak": [{"process": k, **mib(v)} for k, v in procs], "samples": self.samples}


class Section:
    """Load average, CPU of dsar's process tree and of the machine around one measured section (sbs.py's)."""

    def __init__(self, roots: list[int], sampler: MemSampler, label: str) -> None:
        self.roots, self.sampler, self.label = roots, sampler, label

    def __enter__(self) -> Section:
        self.sampler.phase = self.label
        self.load, self.c0, self.m0 = loadavg(), cpu_seconds(tree(self.roots)), machine_cpu()
        self.t0 = time.perf_counter()
        return self

    def stats(self, n: int = 0) -> dict[str, Any]:
        wall, m1, cpu = time.perf_counter() - self.t0, machine_cpu(), cpu_seconds(tree(self.roots)) - self.c0
        return {"load_before": self.load, "load_after": loadavg(), "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                "cpu_per_request_s": round(cpu / n, 4) if n else None,
                "machine_busy_s": round(m1[0] - self.m0[0], 3),
                "machine_cpus_busy_frac": round((m1[0] - self.m0[0]) / max(m1[1] - self.m0[1], 1e-9), 3)}

    def __exit__(self, *exc: object) -> None:
        self.sampler.phase = "between"


# -- the system and the request mix (sbs.py's Dsar, measure() and plan()) --------------------------------

class Dsar:
    def __init__(self, port: int, token: str, ledger: str) -> None:
        self.base, self.h = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {token}"}
        self.local, self.pool = threading.local(), ThreadPoolExecutor(20)
        self.db = psycopg.connect(ledger, autocommit=True)
        self.db.prepare_threshold = 0

    def _post(self, email: str, kind: str) -> str:
        s = getattr(self.local, "s", None)
        if s is None:
            s = self.local.s = requests.Session()
        r = s.post(f"{self.base}/v1/requests", json={"type": kind, "email": email}, headers=self.h, timeout=600)
        if r.status_code != 202 or not r.json().get("created"):
            raise RuntimeError(f"dsar submit failed {r.status_code} {r.text[:500]}")
        return str(r.json()["id"])

    def submit(self, emails: list[str], kind: str) -> list[str]:
        if len(emails) == 1:
            return [self._post(emails[0], kind)]
        return list(self.pool.map(lambda e: self._post(e, kind), emails))

    def poll(self, ids: list[str]) -> dict[str, tuple[str, Any, Any]]:
        rows = self.db.execute("SELECT id, status, received_at, completed_at FROM requests WHERE id = ANY(%s)",
                               (ids,)).fetchall()
        return {r[0]: (r[1], r[2], r[3]) for r in rows}


def measure(d: Dsar, emails: list[str], kind: str, poll_s: float, timeout: float = 600) -> dict[str, Any]:
    t0 = time.perf_counter()
    ids = d.submit(emails, kind)
    t_sub = time.perf_counter() - t0
    done: dict[str, tuple[str, float, Any, Any]] = {}
    pending = list(ids)
    while pending:
        now = time.perf_counter() - t0
        for rid, (st, a, b) in d.poll(pending).items():
            if st in TERMINAL:
                done[rid] = (st, now, a, b)
        pending = [i for i in ids if i not in done]
        if not pending:
            break
        if now > timeout:
            done.update({rid: ("timeout", float("nan"), None, None) for rid in pending})
            break
        time.sleep(poll_s)
    times = sorted(v[1] for v in done.values())
    srv = [(b - a).total_seconds() for _st, _t, a, b in done.values() if a is not None and b is not None]
    statuses = sorted({v[0] for v in done.values()})
    return {"n": len(ids), "ids": ids, "emails": emails, "statuses": statuses, "all_ok": statuses == ["completed"],
            "submit_s": round(t_sub, 4), "median_s": med(times), "last_s": round(times[-1], 4) if times else None,
            "first_s": round(times[0], 4) if times else None, "server_median_s": med(srv)}


def plan(rounds: int, n_single: int, n_burst: int, n_big: int, n_erase: int) -> dict[str, Any]:
    """sbs.py's plan(): Fides' erasure users are drawn too (and left out), so the e-mails are the same."""
    rng = random.Random(SEED)
    erase_ids = list(range(50002, 100001))
    rng.shuffle(erase_ids)
    n_er = (rounds + 1) * n_erase
    fides_er, dsar_er = erase_ids[:n_er], erase_ids[n_er:2 * n_er]
    taken = set(fides_er) | set(dsar_er)
    access = [i for i in range(2, 100001) if i not in taken]
    rng.shuffle(access)
    it = iter(access)
    mail = lambda i: f"user{i}@example.com"  # noqa: E731
    p: dict[str, Any] = {"warmup": [mail(next(it)) for _ in range(3)], "rounds": []}
    for k in range(rounds + 1):  # round 0 = warm-up erasures only
        p["rounds"].append({"single": [mail(next(it)) for _ in range(n_single)] if k else [],
                            "burst": [mail(next(it)) for _ in range(n_burst)] if k else [],
                            "big": [mail(next(it)) for _ in range(n_big)] if k else [],
                            "erase": [mail(i) for i in dsar_er[k * n_erase:(k + 1) * n_erase]]})
    return p


def sequential(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"median_s": med([r["last_s"] for r in runs]), "server_median_s": med([r["server_median_s"] for r in runs]),
            "all_ok": all(r["all_ok"] for r in runs), "statuses": sorted({x for r in runs for x in r["statuses"]}),
            "times_s": [r["last_s"] for r in runs], "runs": runs}


def bench(args: argparse.Namespace, d: Dsar, roots: list[int], sampler: MemSampler) -> dict[str, Any]:
    p = plan(args.rounds, 10, 20, args.big, 3)
    poll = args.poll_ms / 1000
    res: dict[str, Any] = {"load_at_start": loadavg(), "rounds": []}
    with Section(roots, sampler, "warmup") as sec:
        w = [measure(d, [e], "access", poll) for e in p["warmup"]] + [measure(d, p["rounds"][0]["erase"][:1],
                                                                              "erasure", poll)]
        res["warmup"] = {"times_s": [r["last_s"] for r in w], "all_ok": all(r["all_ok"] for r in w), **sec.stats()}
    log(f"warm-up: {res['warmup']['times_s']}")
    time.sleep(args.gap)
    with Section(roots, sampler, "idle") as sec:
        time.sleep(10)
        res["idle_10s"] = sec.stats()
    for k in range(1, args.rounds + 1):
        rp, r = p["rounds"][k], {"round": k, "load_at_start": loadavg()}
        with Section(roots, sampler, f"r{k}:a_single") as sec:
            r["a_single_access"] = {**sequential([measure(d, [e], "access", poll) for e in rp["single"]]),
                                    **sec.stats(len(rp["single"]))}
        time.sleep(args.gap)
        with Section(roots, sampler, f"r{k}:b_burst20") as sec:
            r["b_burst20"] = {**measure(d, rp["burst"], "access", poll), **sec.stats(len(rp["burst"]))}
        time.sleep(args.gap)
        with Section(roots, sampler, f"r{k}:c_erasure") as sec:
            r["c_erasure"] = {**sequential([measure(d, [e], "erasure", poll) for e in rp["erase"]]),
                              **sec.stats(len(rp["erase"]))}
        if args.big:
            time.sleep(args.gap)
            with Section(roots, sampler, f"r{k}:e_burst{args.big}") as sec:
                r["e_burst"] = {**measure(d, rp["big"], "access", poll), **sec.stats(len(rp["big"]))}
        time.sleep(args.gap)
        res["rounds"].append(r)
        log(round_line(r))
    res["load_at_end"] = loadavg()
    return res


# -- environment ------------------------------------------------------------------------------------

def admin(sql: str) -> None:
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]  # names checked by db_name()


def prepare_accounts(name: str, reseed: bool) -> dict[str, Any]:
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None
    why = "--reseed" if reseed else "" if exists else "missing"
    if exists and not why:
        with psycopg.connect(f"{PG}/{name}") as conn:
            seeded = conn.execute("SELECT to_regclass('users_email_norm_idx') IS NOT NULL AND "
                                  "(SELECT count(*) FROM users) = 100000").fetchone()
        why = "" if seeded and seeded[0] else "incomplete (no users_email_norm_idx or not 100,000 users)"
    if why:
        log(f"seeding {name} ({why}): 100k users / 300k orders / 150k servers")
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin(f'CREATE DATABASE "{name}"')
        env = {**os.environ, "PGHOST": "127.0.0.1", "PGUSER": "postgres"}
        done = subprocess.run(["psql", "-d", name, "-v", "ON_ERROR_STOP=1", "-q", "-f",
                               str(PEER / "sql" / "klikk_accounts.sql")], env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"seeding {name} failed: {done.stderr[-2000:]}")
    with psycopg.connect(f"{PG}/{name}", autocommit=True) as conn:
        if why:  # run.sh's index (dsar's README: lower(trim(email)) for every e-mail identity column)
            conn.execute("CREATE INDEX users_email_norm_idx ON users (lower(trim(email)))")
            conn.execute("ANALYZE")
        restored = conn.execute(RESTORE).fetchone() or (0, 0, 0)  # one statement: one transaction
        if restored[0]:
            log(f"restored {restored[0]} users erased by an earlier run (and {restored[1]} orders, {restored[2]} "
                "servers) to their seeded values")
        blocks = None
        if conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_prewarm'").fetchone():
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
            blocks = conn.execute("SELECT sum(pg_prewarm(c.oid))::bigint FROM pg_class c JOIN pg_namespace n ON "
                                  "n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i')"
                                  ).fetchone()[0]  # type: ignore[index]
        return {"database": name, "seeded_now": bool(why), "restored_users": restored[0], "prewarmed_blocks": blocks}


def start(cmd: list[str], logfile: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with logfile.open("wb") as fh:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def tail(path: Path, n: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else "(no log)"


def wait_ready(serve: subprocess.Popen[bytes], worker: subprocess.Popen[bytes], port: int, work: Path,
               processes: int, timeout: float = 120) -> float:
    t0 = time.perf_counter()
    api_ok = False
    while True:
        for proc, name in ((serve, "serve"), (worker, "worker")):
            if proc.poll() is not None:
                raise SystemExit(f"dsar {name} died (exit {proc.returncode}); {work / name}.log:\n"
                                 f"{tail(work / f'{name}.log')}")
        if not api_ok:
            with contextlib.suppress(requests.RequestException):
                api_ok = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        ready = (work / "worker.log").read_text(errors="replace").count("ready for action")
        if api_ok and ready >= processes:
            return round(time.perf_counter() - t0, 2)
        if time.perf_counter() - t0 > timeout:
            raise SystemExit(f"not ready after {timeout:.0f} s (API healthy: {api_ok}, workers ready: {ready})\n"
                             f"serve.log:\n{tail(work / 'serve.log')}\nworker.log:\n{tail(work / 'worker.log')}")
        time.sleep(0.3)


def stop(procs: list[subprocess.Popen[bytes]], timeout: float = 30) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log(f"pid {proc.pid} still running after {timeout:.0f} s: SIGKILL")
    for proc in procs:  # whatever is left in the process group (setsid: pgid = the leader's pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# -- correctness ------------------------------------------------------------------------------------

def correctness(res: dict[str, Any], ledger: psycopg.Connection[Any], accounts: str) -> dict[str, Any]:
    problems = [f"r{r['round']} {sec}: statuses {r[sec]['statuses']} (expected only 'completed')"
                for r in res["rounds"] for sec in ("a_single_access", "b_burst20", "c_erasure", "e_burst")
                if sec in r and not r[sec]["all_ok"]]
    out: dict[str, Any] = {"ledger_statuses": dict(ledger.execute(  # type: ignore[arg-type]
        "SELECT status, count(*) FROM requests GROUP BY status").fetchall()), "access": [], "erasure": []}
    r1 = res["rounds"][0]
    picks = [(run["ids"][0], run["emails"][0]) for run in r1["a_single_access"]["runs"][:2]]
    picks.append((r1["b_burst20"]["ids"][0], r1["b_burst20"]["emails"][0]))
    with psycopg.connect(accounts, autocommit=True) as klikk:
        for rid, email in picks:
            uid = int(email[4:].split("@")[0])  # seeded: user<g>@example.com has id g
            expect = {"users": 1, **{t: klikk.execute(f"SELECT count(*) FROM {t} WHERE user_id = %s",  # type: ignore
                                                      (uid,)).fetchone()[0] for t in ("orders", "servers")}}  # type: ignore
            row = ledger.execute("SELECT bundle_path FROM requests WHERE id = %s", (rid,)).fetchone()
            path = row[0] if row and row[0] else ""
            if path.startswith("file://"):
                path = url2pathname(urlsplit(path).path)
            got: dict[str, Any] = {"bundle": path, "counts": {}}
            if path and os.path.isfile(path) and zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as z:
                    for n in z.namelist():
                        if n.startswith("data/") and n.endswith(".json"):
                            recs = json.loads(z.read(n))
                            got["counts"][n.rsplit("/", 1)[1][:-5]] = len(recs)
                            if n.endswith("/users.json") and recs:
                                got["users_email"] = recs[0].get("email")
            ok = got["counts"] == expect and got.get("users_email") == email
            out["access"].append({"request": rid, "email": email, "expected": expect, **got, "ok": ok})
            if not ok:
                problems.append(f"access {email}: bundle {path or 'missing'} holds {got['counts']}, expected {expect}")
        for email in [run["emails"][0] for run in r1["c_erasure"]["runs"]]:
            uid = int(email[4:].split("@")[0])
            left = klikk.execute(
                "SELECT (SELECT count(*) FROM users WHERE id = %(u)s AND (email = %(e)s OR first_name IS NOT NULL "
                "OR last_name IS NOT NULL OR phone IS NOT NULL)), (SELECT count(company_name) + count(vat_number) "
                "+ count(street) + count(city) FROM orders WHERE user_id = %(u)s), "
                "(SELECT count(ip_address) FROM servers WHERE user_id = %(u)s)", {"u": uid, "e": email}).fetchone()
            ok = left == (0, 0, 0)
            out["erasure"].append({"email": email, "user_id": uid, "personal_values_left": left, "ok": ok})
            if not ok:
                problems.append(f"erasure {email}: personal values left (users, orders, servers): {left}")
    out["problems"], out["ok"] = problems, not problems
    return out


# -- report -----------------------------------------------------------------------------------------

def f3(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def ms(v: float | None) -> str:
    """CPU per request in milliseconds: at 0.001 s a change of 10 % does not show."""
    return "-" if v is None else f"{1000 * v:.1f} ms"


def round_line(r: dict[str, Any]) -> str:
    a, b, c, e = r["a_single_access"], r["b_burst20"], r["c_erasure"], r.get("e_burst")
    parts = [f"r{r['round']} load {r['load_at_start']}", f"a {f3(a['median_s'])} (server {f3(a['server_median_s'])})",
             f"b last {f3(b['last_s'])}", f"c {f3(c['median_s'])}"]
    if e:
        parts.append(f"e med {f3(e['median_s'])} last {f3(e['last_s'])} CPU/req {ms(e['cpu_per_request_s'])}")
    ok = all(r[s]["all_ok"] for s in ("a_single_access", "b_burst20", "c_erasure", "e_burst") if s in r)
    return " | ".join([*parts, "ok" if ok else "NOT ALL COMPLETED"])


def summary(rep: dict[str, Any]) -> str:
    rounds, m = rep["result"]["rounds"], rep["memory"]
    over = lambda sec, key: med([r[sec][key] for r in rounds if sec in r and r[sec][key] is not None])  # noqa: E731
    lines = [f"dsar {rep['version']} | serve + worker --processes {rep['processes']} --threads {rep['threads']} | "
             f"{rep['machine']['nproc']} CPUs, {rep['machine']['cpu_model']} | load at start {rep['load_at_start']}",
             *(round_line(r) for r in rounds),
             f"median over {len(rounds)} round(s), s: a {f3(over('a_single_access', 'median_s'))} (server "
             f"{f3(over('a_single_access', 'server_median_s'))}) | b med {f3(over('b_burst20', 'median_s'))} last "
             f"{f3(over('b_burst20', 'last_s'))} CPU/req {ms(over('b_burst20', 'cpu_per_request_s'))} | c "
             f"{f3(over('c_erasure', 'median_s'))} | e med {f3(over('e_burst', 'median_s'))} last "
             f"{f3(over('e_burst', 'last_s'))} CPU/req {ms(over('e_burst', 'cpu_per_request_s'))}",
             f"idle CPU, 10 s: {rep['result']['idle_10s']['cpu_s']:.2f} s",
             f"peak memory of the tree: RSS {m['peak'].get('rss_MiB')} MiB, PSS {m['peak'].get('pss_MiB')} MiB; "
             "per process (peak RSS / PSS MiB):",
             *(f"  {p.get('rss_MiB', 0):7.1f} / {p.get('pss_MiB', 0):7.1f}  {p['process']}"
               for p in m["per_process_peak"]),
             "correctness: ok (every request completed, bundles match the database, erasures emptied the columns)"
             if rep["correctness"]["ok"] else "correctness: NOT OK: " + "; ".join(rep["correctness"]["problems"]),
             f"log lines with errors/tracebacks: {rep['log_error_lines']}", f"written: {rep['written']}"]
    return "\n".join(lines)


def version() -> str:
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()  # noqa: E731
    return git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain") else "")


def db_name(text: str) -> str:
    """A database this benchmark may drop and recreate: a plain name of its own (dsar_shape_...), never another's."""
    if not re.fullmatch(r"dsar_shape_[a-z0-9_]{1,50}", text):
        raise argparse.ArgumentTypeError(f"not a dsar_shape_... database name (it is dropped and recreated): {text!r}")
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--big", type=int, default=100, help="(e) requests at once; 0 skips it")
    ap.add_argument("--processes", type=int, default=2, help="dsar worker --processes")
    ap.add_argument("--threads", type=int, default=4, help="dsar worker --threads")
    ap.add_argument("--poll-ms", type=float, default=10.0, help="ledger poll interval")
    ap.add_argument("--gap", type=float, default=3.0, help="pause between sections, s (run.sh's)")
    ap.add_argument("--accounts-db", type=db_name, default="dsar_shape_accounts")
    ap.add_argument("--ledger-db", type=db_name, default="dsar_shape_ledger")
    ap.add_argument("--reseed", action="store_true", help="drop and seed the accounts database again")
    ap.add_argument("--keep-ledger", action="store_true", help="keep the ledger database afterwards")
    ap.add_argument("--label", default="shape")
    ap.add_argument("--json", action="store_true", help="print the JSON instead of the summary")
    args = ap.parse_args()
    if args.accounts_db == args.ledger_db:
        ap.error("--accounts-db and --ledger-db must differ")

    def on_term(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)  # stop what we started, as on Ctrl-C
    try:
        with own_redis() as redis_base:
            rep = run(args, f"{redis_base}/0")
    except KeyboardInterrupt:
        log("interrupted: everything started was stopped")
        return 130
    print(json.dumps(rep, indent=1, default=str) if args.json else summary(rep))
    return 0 if rep["correctness"]["ok"] else 1


def run(args: argparse.Namespace, broker: str) -> dict[str, Any]:
    work, t0 = OUT / f"{args.label}_work", time.perf_counter()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rep: dict[str, Any] = {
        "label": args.label, "command": " ".join(sys.argv), "version": version(), "processes": args.processes,
        "threads": args.threads, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_at_start": loadavg(), "machine": {"nproc": len(os.sched_getaffinity(0)), "cpu_model": next(
            (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
             if ln.startswith("model name")), "?")}, "accounts": prepare_accounts(args.accounts_db, args.reseed)}
    admin(f'DROP DATABASE IF EXISTS "{args.ledger_db}" WITH (FORCE)')
    admin(f'CREATE DATABASE "{args.ledger_db}"')
    port, accounts = free_port(), f"{PG}/{args.accounts_db}"
    sa_url = lambda db: f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}"  # noqa: E731
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSAR_")}
    env.update({"DSAR_CONFIG": str(PEER / "dsar" / "dsar.toml"), "DSAR_SECRET_KEY": SECRET,
                "DSAR_LEDGER_URL": sa_url(args.ledger_db),
                "DSAR_BROKER_URL": broker, "DSAR_ARCHIVE_PATH": str(work / "archive"),
                "DSAR_ARCHIVE_STAGING_PATH": str(work / "staging"), "DSAR_SCHEDULE_OUTBOX_PATH": str(work / "outbox"),
                "DSAR_API_PORT": str(port), "DSAR_KLIKK_DB_URL": sa_url(args.accounts_db)})
    rep["dsar_env"] = {k: v for k, v in env.items() if k.startswith("DSAR_") and k != "DSAR_SECRET_KEY"}
    procs: list[subprocess.Popen[bytes]] = []
    sampler: MemSampler | None = None
    client: Dsar | None = None
    try:
        for cmd in (["db-upgrade"], ["token", "create", "shape", "--scope", "submit", "--scope", "read", "--json"]):
            done = subprocess.run([DSAR, *cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
            if done.returncode:
                raise SystemExit(f"dsar {' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        token = json.loads(done.stdout)["token"]
        procs.append(start([DSAR, "serve"], work / "serve.log", env))
        procs.append(start([DSAR, "worker", "--processes", str(args.processes), "--threads", str(args.threads)],
                           work / "worker.log", env))
        rep["ready_after_s"] = wait_ready(procs[0], procs[1], port, work, args.processes)
        rep["setup_s"] = round(time.perf_counter() - t0, 1)
        log(f"dsar ready (API :{port}, broker {broker}) {rep['ready_after_s']} s after start; setup {rep['setup_s']} s")
        roots = [p.pid for p in procs]
        sampler = MemSampler(roots)
        sampler.start()
        client = Dsar(port, token, f"{PG}/{args.ledger_db}")
        rep["result"] = bench(args, client, roots, sampler)
        sampler.done.set()
        sampler.join()
        rep["memory"] = sampler.report()
        rep["correctness"] = correctness(rep["result"], client.db, accounts)
    finally:
        if sampler is not None:
            sampler.done.set()
        if client is not None:
            client.pool.shutdown(wait=False)
            client.db.close()
        stop(procs)
        if not args.keep_ledger:
            admin(f'DROP DATABASE IF EXISTS "{args.ledger_db}" WITH (FORCE)')
    rep["log_error_lines"] = {f.name: sum(1 for ln in f.read_text(errors="replace").splitlines()
                                          if "Traceback" in ln or "[error" in ln or "[critical" in ln)
                              for f in (work / "serve.log", work / "worker.log")}
    rep["finished"], rep["load_at_end"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), loadavg()
    path = OUT / f"{args.label}.json"
    rep["written"] = str(path.relative_to(ROOT))
    path.write_text(json.dumps(rep, indent=1, default=str))
    return rep


if __name__ == "__main__":
    raise SystemExit(main())

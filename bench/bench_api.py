"""API intake benchmark: POST /v1/requests at a fixed rate through a real `dsar serve`, then check the ledger.

    .venv/bin/python bench/bench_api.py                         # 200 requests/s for 30 s, 2 server processes
    .venv/bin/python bench/bench_api.py --rate 300 --server-workers 1 --with-worker

What it does (a benchmark, not a test: it writes down what it measures):
  - environment: a fresh PostgreSQL ledger database, a redis-server of its own on a free port as the
    broker (started and stopped by this script; the host's shared Redis is not touched), a SQLite
    account database; an admin API token made with `dsar token create`;
  - starts `dsar serve --workers N` on 127.0.0.1 (and, with --with-worker, one `dsar worker` that
    discovers and answers the requests meanwhile, sharing the two CPUs);
  - open loop: request i is due at start + i/rate whatever happened before (a slow answer does
    not slow the sender down), each a distinct person; latency is measured from the due time
    (so queueing behind a stall counts) and from the actual send;
  - a 3 s warm-up at the same rate is sent first and not counted;
  - afterwards: every id answered 202 must be a row in the ledger, and (without a worker) every
    accepted request must have its `discover` wake-up waiting in Redis.
Writes bench/out/api.json (or --label) and prints a summary. Loopback only; bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
import redis
import sqlalchemy as sa
from own_redis import own_redis
from stats import pct

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT))

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
SECRET = "bench-secret-key-0123456789"
KEEPALIVE_S = 3.0  # uvicorn closes idle keep-alive connections after 5 s; reuse younger ones only
DSAR = [sys.executable, "-m", "workers.cli"]


def latency(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {k: round(v, 1) for k, v in {"p50_ms": pct(ms, 0.5), "p90_ms": pct(ms, 0.9), "p99_ms": pct(ms, 0.99),
                                        "max_ms": max(ms) if ms else float("nan")}.items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def environment(workdir: Path, port: int, broker: str) -> tuple[dict[str, str], str]:
    name = f"dsar_bench_api_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    ledger = sa.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "datamap.yaml").write_text((ROOT / "config" / "datamap.yaml").read_text())
    config = workdir / "dsar.toml"
    config.write_text(f"""
[ledger]
url = "{ledger}"
[broker]
url = "{broker}"
[archive]
path = "{workdir / 'archive'}"
staging_path = "{workdir / 'staging'}"
[data_map]
path = "datamap.yaml"
[api]
port = {port}
""")
    from sandbox import accounts_db

    accounts = f"sqlite:///{workdir / 'accounts.db'}"
    engine = sa.create_engine(accounts)
    accounts_db.create(engine, drop=True)
    accounts_db.seed(engine)
    engine.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSAR_")}
    env.update({"DSAR_CONFIG": str(config), "DSAR_SECRET_KEY": SECRET, "DSAR_ACCOUNTS_DB_URL": accounts})
    return env, name


def drop(name: str) -> None:
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


class Pool:
    """Keep-alive HTTP/1.1 connections, hand-rolled: httpx cost more CPU than the server (both share 2 cores)."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port = host, port
        self.head = (f"POST /v1/requests HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
                     "Content-Type: application/json\r\nContent-Length: ").encode()
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self.opened = 0

    async def post(self, body: bytes) -> tuple[int, bytes]:
        reader, writer = await self._take()
        try:
            writer.write(self.head + str(len(body)).encode() + b"\r\n\r\n" + body)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            data = await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        self.idle.append((reader, writer, time.monotonic()))
        return status, data

    async def _take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while self.idle:
            reader, writer, since = self.idle.pop()
            if time.monotonic() - since < KEEPALIVE_S:
                return reader, writer
            writer.close()  # the server may be closing it right now: never send on it
        self.opened += 1
        return await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        for _, writer, _ in self.idle:
            writer.close()


async def load(port: int, token: str, rate: float, seconds: float, tag: str, timeout: float) -> dict[str, Any]:
    """Open loop: one POST every 1/rate s; returns per-request outcomes."""
    total = int(rate * seconds)
    results: list[dict[str, Any]] = []
    pool = Pool("127.0.0.1", port, token)
    start = time.perf_counter() + 0.2

    async def one(i: int) -> None:
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        sent = time.perf_counter()
        body = b'{"type":"access","email":"%s-%d@bench.example.org"}' % (tag.encode(), i)
        try:
            status, data = await asyncio.wait_for(pool.post(body), timeout)
            rid = orjson.loads(data).get("id") if status < 300 else None
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            status, rid = type(exc).__name__, None  # type: ignore[assignment]
        done = time.perf_counter()
        results.append({"status": status, "id": rid, "from_due": done - due, "from_send": done - sent,
                        "late_start": sent - due})

    await asyncio.gather(*(one(i) for i in range(total)))
    elapsed = time.perf_counter() - start
    pool.close()
    return {"results": results, "elapsed": elapsed, "total": total, "connections": pool.opened}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=200.0, help="requests per second")
    ap.add_argument("--seconds", type=float, default=30.0, help="measured duration")
    ap.add_argument("--server-workers", type=int, default=2, help="dsar serve --workers")
    ap.add_argument("--with-worker", action="store_true", help="also run `dsar worker` (answers the requests)")
    ap.add_argument("--timeout", type=float, default=10.0, help="per-request client timeout, s")
    ap.add_argument("--label", default="api")
    args = ap.parse_args()
    with own_redis() as redis_base:  # the broker: a redis-server of this run's own, empty at start
        return run(args, f"{redis_base}/0")


def run(args: argparse.Namespace, broker: str) -> int:
    workdir = OUT / f"{args.label}-run"
    port = free_port()
    env, dbname = environment(workdir, port, broker)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        made = subprocess.run([*DSAR, "token", "create", "bench", "--scope", "submit"], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120, check=True)
        token = made.stdout.strip()
        serve_log = (OUT / f"{args.label}.serve.log").open("wb")
        procs.append(subprocess.Popen([*DSAR, "serve", "--port", str(port), "--workers", str(args.server_workers)],
                                      env=env, cwd=ROOT, stdout=serve_log, stderr=subprocess.STDOUT,
                                      start_new_session=True))
        if args.with_worker:
            worker_log = (OUT / f"{args.label}.worker.log").open("wb")
            procs.append(subprocess.Popen([*DSAR, "worker", "--processes", "1", "--threads", "4"], env=env, cwd=ROOT,
                                          stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True))
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("dsar serve did not start; see the serve log")
            time.sleep(0.2)

        run = uuid.uuid4().hex[:6]
        warm = asyncio.run(load(port, token, args.rate, 3.0, f"warm-{run}", args.timeout))
        print(f"warm-up: {warm['total']} requests in {warm['elapsed']:.1f}s", file=sys.stderr)
        measured = asyncio.run(load(port, token, args.rate, args.seconds, f"bench-{run}", args.timeout))

        results = measured["results"]
        accepted = [r["id"] for r in results if r["status"] == 202]
        statuses: dict[str, int] = {}
        for r in results:
            statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
        ledger = sa.create_engine(sa.make_url(ADMIN_URL).set(database=dbname))
        with ledger.connect() as conn:
            in_ledger = conn.execute(sa.text("SELECT count(*) FROM requests WHERE id = ANY(:ids)"),
                                     {"ids": accepted}).scalar_one()
        ledger.dispose()
        queued = redis.Redis.from_url(broker).hlen("dramatiq:dsar.msgs") if not args.with_worker else None
        report = {
            "label": args.label, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                             "python": platform.python_version()},
            "command": " ".join(sys.argv), "rate_target": args.rate, "seconds": args.seconds,
            "server_workers": args.server_workers, "with_worker": args.with_worker,
            "sent": measured["total"], "elapsed_s": round(measured["elapsed"], 2),
            "achieved_rate": round(len(results) / measured["elapsed"], 1),
            "accepted_rate": round(len(accepted) / measured["elapsed"], 1),
            "statuses": statuses, "accepted": len(accepted), "accepted_in_ledger": in_ledger,
            "lost": len(accepted) - in_ledger,
            "discover_messages_in_redis": queued,  # warm-up's included: compare with accepted_with_warmup
            "accepted_with_warmup": len(accepted) + sum(r["status"] == 202 for r in warm["results"]),
            "latency_from_due": latency([r["from_due"] for r in results]),
            "latency_from_send": latency([r["from_send"] for r in results]),
            "client_connections": measured["connections"],
            "sender_late_start_p99_ms": round(pct([r["late_start"] for r in results], 0.99) * 1000, 1),
        }
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / f"{args.label}.json").write_text(json.dumps(report, indent=2))
        print(json.dumps(report, indent=2))
        return 0 if report["lost"] == 0 and statuses.get("202") == measured["total"] else 1
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        drop(dbname)


if __name__ == "__main__":
    raise SystemExit(main())

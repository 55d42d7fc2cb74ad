"""Fault injection for the fault campaign (tests/integration/test_fault_campaign.py).

- `HttpFaultProxy`: an HTTP proxy in front of one vendor simulator (or the S3 server). Forwards every call
  unchanged (the Host header too, so S3 signatures still match) unless a fault is switched on: hang for N s
  and close without an answer, answer 500, answer 429 with `Retry-After` and `X-RateLimit-Reset` an hour away,
  or delay the call and then forward it. It counts every write call it forwards and the simulator accepted
  (per system, call and subject, the body stripped of per-call credentials), so a write made twice shows.
- `TcpProxy`: a TCP forwarder in front of a database. `refuse()` closes the listening socket and cuts every
  open connection (new connections are refused, ECONNREFUSED); `accept()` listens again on the same port.
- `OwnRedis`: a redis-server of the test's own on a free port, with or without AOF, that can be killed with
  SIGKILL and started again on the same port and directory.
- `Worker`: `dsar worker` as a subprocess in its own session; its descendant processes; SIGKILL one or all.
- `FaultWorld`: all of it wired together: the sample account database (PostgreSQL, reached through a
  `TcpProxy`), the four vendor simulators of `sandbox.launch.Sandbox` behind `HttpFaultProxy`s, synthetic people
  seeded in every system, a fresh PostgreSQL ledger, the archive (a folder, or S3 behind a proxy) and a settings
  file; requests are submitted in-process and woken through the test-owned Redis, the way `dsar request` does.

Only what this module starts is ever stopped; shared services (PostgreSQL, the host's Redis, SeaweedFS) are
used through fresh databases and buckets and never restarted.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import sqlalchemy as sa

from tests.conftest import BrokerWakeups, free_port

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Fault:
    """What the proxy does to a matching call instead of (or before) forwarding it.

    kind: "hang" (hold the call `seconds`, then close the connection without an answer: never forwarded),
    "status" (answer `status` at once, never forwarded), "ratelimit" (429 with Retry-After and X-RateLimit-Reset
    `seconds` away, never forwarded), "delay" (wait `seconds`, then forward). `writes_only`: only write calls."""

    kind: str
    seconds: float = 0.0
    status: int = 500
    writes_only: bool = False


def hang(seconds: float, writes_only: bool = False) -> Fault:
    return Fault("hang", seconds=seconds, writes_only=writes_only)


def status(code: int = 500, writes_only: bool = False) -> Fault:
    return Fault("status", status=code, writes_only=writes_only)


def rate_limited(reset_in: float = 3600, writes_only: bool = False) -> Fault:
    return Fault("ratelimit", seconds=reset_in, writes_only=writes_only)


def delay(seconds: float, writes_only: bool = False) -> Fault:
    return Fault("delay", seconds=seconds, writes_only=writes_only)


# What a write is, per system: (method, path, query, body) -> the call's name when it is a write, else None.
WriteRule = Callable[[str, str, dict[str, str], bytes], str | None]

# Request fields that change on every call without changing what the call does (credentials, clocks).
_VOLATILE = {"apiKey", "sha", "requestTime", "clientId", "token_auth", "access_token"}


def _freshchat_write(method: str, path: str, query: dict[str, str], body: bytes) -> str | None:
    return f"{method} {path}" if method in ("PUT", "POST", "DELETE", "PATCH") else None


def _mautic_write(method: str, path: str, query: dict[str, str], body: bytes) -> str | None:
    if method == "GET" or path.startswith("/oauth/"):
        return None
    return f"{method} {path}"


_SALESMANAGO_READS = {"/api/contact/basic", "/api/contact/export/data", "/api/job/status"}


def _salesmanago_write(method: str, path: str, query: dict[str, str], body: bytes) -> str | None:
    if method != "POST" or not path.startswith("/api/") or path in _SALESMANAGO_READS:
        return None
    return f"{method} {path}"


_MATOMO_READS = {"API.getMatomoVersion", "SitesManager.getSitesIdWithAdminAccess", "PrivacyManager.findDataSubjects",
                 "PrivacyManager.exportDataSubjects", "Live.getLastVisitsDetails"}


def _matomo_write(method: str, path: str, query: dict[str, str], body: bytes) -> str | None:
    if method == "GET":
        return None
    params = {**dict(parse_qsl(body.decode("utf-8", "replace"))), **query}
    api = params.get("method", "")
    return None if api in _MATOMO_READS else f"{method} {api or path}"


def _s3_write(method: str, path: str, query: dict[str, str], body: bytes) -> str | None:
    return None if method in ("GET", "HEAD") else f"{method} {path}"  # an upload (its key is the request's)


WRITE_RULES: dict[str, WriteRule] = {"freshchat": _freshchat_write, "mautic": _mautic_write,
                                     "salesmanago": _salesmanago_write, "matomo": _matomo_write, "s3": _s3_write}


def _canonical_body(body: bytes) -> str:
    """The body without what changes per call (credentials, timestamps), so a repeated write has one digest."""
    if not body:
        return ""
    try:
        parsed = json.loads(body)
    except ValueError:
        pairs = [(k, v) for k, v in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
                 if k not in _VOLATILE]
        return "&".join(f"{k}={v}" for k, v in sorted(pairs))
    if isinstance(parsed, dict):
        parsed = {k: v for k, v in parsed.items() if k not in _VOLATILE}
    return json.dumps(parsed, sort_keys=True)


_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "expect"}


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a caller killed mid-call (the point of some scenarios) resets its connection: not news


class HttpFaultProxy:
    """An HTTP/1.1 proxy in front of `upstream` (http://host:port) with switchable faults and write counts."""

    def __init__(self, system: str, upstream: str) -> None:
        self.system = system
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname or "127.0.0.1", parts.port or 80
        self.write_rule = WRITE_RULES[system]
        self._fault: Fault | None = None
        self._lock = threading.Lock()
        self._released = threading.Event()  # set when a fault is switched off or the proxy stops: hangs end
        self.calls = 0
        self.injected: Counter[str] = Counter()  # fault kind -> calls it was applied to
        self.writes: Counter[str] = Counter()  # "<call> <canonical body>" -> times forwarded and accepted (2xx)
        self.write_calls: Counter[str] = Counter()  # call name -> times forwarded and accepted
        self.in_flight = 0  # write calls being delayed or forwarded right now
        self.dropped = 0  # delayed calls whose client went away meanwhile (killed): never forwarded
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # request lines carry e-mails
                pass

            def do_GET(self) -> None:
                proxy._handle(self)

            do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"fault-proxy:{system}", daemon=True)
        self._thread.start()

    # -- control ----------------------------------------------------------------------------------

    def fault(self, fault: Fault | None) -> None:
        """Switch a fault on (replacing any other), or off with None."""
        with self._lock:
            self._fault = fault
            if fault is None:
                self._released.set()
            else:
                self._released.clear()

    def duplicated_writes(self) -> dict[str, int]:
        with self._lock:
            return {key: n for key, n in self.writes.items() if n > 1}

    def stop(self) -> None:
        self._released.set()
        self.server.shutdown()
        self.server.server_close()

    # -- serving ----------------------------------------------------------------------------------

    def _read_body(self, h: BaseHTTPRequestHandler) -> bytes:
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(h.rfile.read(size))
                h.rfile.readline()
            return b"".join(chunks)
        length = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(length) if length else b""

    def _answer(self, h: BaseHTTPRequestHandler, code: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        h.send_response(code)
        for key, value in headers:
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = self._read_body(h)
        parts = urlsplit(h.path)
        query = dict(parse_qsl(parts.query))
        call = self.write_rule(h.command, parts.path, query, body)
        with self._lock:
            self.calls += 1
            fault = self._fault
            if fault is not None and (call is not None or not fault.writes_only):
                self.injected[fault.kind] += 1
            else:
                fault = None
        if fault is not None and fault.kind == "hang":
            self._released.wait(fault.seconds)
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault is not None and fault.kind == "status":
            self._answer(h, fault.status, b'{"code":%d,"status":"ERROR","message":"injected fault"}' % fault.status,
                         [("Content-Type", "application/json")])
            return
        if fault is not None and fault.kind == "ratelimit":
            reset = int(time.time() + fault.seconds)
            self._answer(h, 429, b'{"code":429,"status":"TOO_MANY_REQUESTS","message":"rate limit exceeded"}',
                         [("Content-Type", "application/json"), ("Retry-After", str(int(fault.seconds))),
                          ("X-RateLimit-Reset", str(reset))])
            return
        if call is not None:
            with self._lock:
                self.in_flight += 1
        try:
            self._forward(h, body, call, fault)
        finally:
            if call is not None:
                with self._lock:
                    self.in_flight -= 1

    def _forward(self, h: BaseHTTPRequestHandler, body: bytes, call: str | None, fault: Fault | None) -> None:
        if fault is not None and fault.kind == "delay":
            time.sleep(fault.seconds)
            if _client_gone(h.connection):  # the caller was killed meanwhile: the call never reaches the vendor
                with self._lock:
                    self.dropped += 1
                return
        headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP}
        headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=120)
        try:
            upstream.request(h.command, h.path, body=body if body or h.command in ("POST", "PUT", "PATCH") else None,
                             headers=headers)
            resp = upstream.getresponse()
            answer = resp.read()
            answer_headers = [(k, v) for k, v in resp.getheaders()
                              if k.lower() not in _HOP and k.lower() != "content-length"]
            code = resp.status
        except OSError as exc:
            self._answer(h, 502, f"proxy: upstream failed: {type(exc).__name__}".encode(), [])
            return
        finally:
            upstream.close()
        if call is not None and 200 <= code < 300:
            key = call if self.system == "s3" else f"{call} {_canonical_body(body)}"
            with self._lock:
                self.writes[key] += 1
                self.write_calls[call] += 1
        self._answer(h, code, answer, answer_headers)


def _client_gone(conn: socket.socket) -> bool:
    try:
        readable, _, _ = select.select([conn], [], [], 0)
        return bool(readable) and conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class TcpProxy:
    """A TCP forwarder to host:port. `refuse()` closes the listener and cuts open connections; `accept()` reopens."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.port = 0
        self._listener: socket.socket | None = None
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._lock = threading.Lock()
        self._stopped = False
        self.cut = 0  # connections cut by refuse()
        self.refusing_since: float | None = None
        self.accept()

    def accept(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(64)
            self.port = listener.getsockname()[1]
            self._listener = listener
            self.refusing_since = None
        threading.Thread(target=self._accept_loop, args=(listener,), name=f"tcp-proxy:{self.port}",
                         daemon=True).start()

    def refuse(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            pairs, self._pairs = self._pairs, set()
            self.refusing_since = time.monotonic()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for a, b in pairs:
            self.cut += 1
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def stop(self) -> None:
        self._stopped = True
        self.refuse()

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    server.close()
                    return
                self._pairs.add((client, server))
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                readable, _, _ = select.select([a, b], [], [], 1.0)
                for src in readable:
                    data = src.recv(65536)
                    if not data:
                        raise OSError("closed")
                    (b if src is a else a).sendall(data)
        except (OSError, ValueError):
            pass
        finally:
            with self._lock:
                self._pairs.discard((a, b))
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()


# ---------------------------------------------------------------------------------------------- Redis


class OwnRedis:
    """A redis-server of this test's own: `aof=True` appends every write (fsync every second), else no persistence.
    `kill()` is SIGKILL (nothing flushed); `start()` brings it back on the same port and directory."""

    def __init__(self, directory: Path, aof: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.binary, self.directory, self.aof = binary, directory, aof
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        import redis

        persistence = ["--appendonly", "yes", "--appendfsync", "everysec"] if self.aof else ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persistence,
             "--dir", str(self.directory)],
            stdout=(self.directory / "redis.log").open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
        client = redis.Redis.from_url(self.url)
        try:
            for _ in range(200):
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if self.proc.poll() is not None:
                        break
                    time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------------------------------------- the worker


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(p) for p in f.read().split()]
    return found


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for child in _children(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


class Worker:
    """`dsar worker --processes N --threads M` in its own session (so SIGKILL to the group takes all of it)."""

    def __init__(self, env: dict[str, str], log: Path, processes: int = 2, threads: int = 4) -> None:
        self.env, self.log_path, self.processes, self.threads = env, log, processes, threads
        self.proc: subprocess.Popen[bytes] | None = None
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "workers.cli", "worker", "--processes", str(self.processes),
                 "--threads", str(self.threads)],
                env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append(self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def worker_processes(self) -> list[int]:
        """The processes that run actors: descendants with the actors module loaded (a Redis connection open)."""
        if self.proc is None:
            return []
        return [pid for pid in descendants(self.proc.pid) if _is_consumer(pid)]

    def wait_ready(self, timeout: float = 60) -> list[int]:
        """Until `processes` consumer processes exist and have been up a moment; their pids."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"dsar worker exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            pids = self.worker_processes()
            if len(pids) >= self.processes:
                return pids
            time.sleep(0.2)
        raise AssertionError(f"dsar worker did not start {self.processes} processes:\n{self.log()[-3000:]}")

    def kill_one(self, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)

    def kill_all(self) -> None:
        """SIGKILL the whole process group: supervisor, dramatiq and every worker process, no clean-up."""
        if self.proc is None:
            return
        pids = [self.proc.pid, *descendants(self.proc.pid)]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in pids:  # a process that left the group
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """Everything this object started, SIGKILLed (the scenario's ledger is thrown away with it)."""
        for proc in self.started:
            pids = descendants(proc.pid) if proc.poll() is None else []
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            for pid in pids:  # a process that left the group
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _is_consumer(pid: int) -> bool:
    """A process that imported the actors (dramatiq's worker processes load `workers.actors`)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            maps = f.read()
    except OSError:
        return False
    return "_psycopg" in maps or "psycopg_binary" in maps


# ---------------------------------------------------------------------------------------------- people


@dataclass(frozen=True)
class Synthetic:
    """A person seeded in every system for the campaign (the sample people stay as they are)."""

    n: int

    @property
    def email(self) -> str:
        return f"faulty.person{self.n:02d}@example.org"

    @property
    def account_id(self) -> int:
        return 5000 + self.n


def seed_synthetic(accounts: sa.Engine, sims: dict[str, Any], people: list[Synthetic]) -> None:
    from sandbox import accounts_db
    from sandbox.matomo import user_id_hash

    now = datetime.now(UTC).replace(tzinfo=None)
    with accounts.begin() as conn:
        for p in people:
            conn.execute(accounts_db.users.insert().values(
                id=p.account_id, email=p.email, full_name=f"Faulty Person{p.n}", phone=f"+47900{p.n:05d}",
                password_hash="x", created_at=now - timedelta(days=500), last_login_at=now - timedelta(days=3),
                matomo_visitor_id=None, newsletter=False, processing_restricted=False))
            conn.execute(accounts_db.servers.insert().values(
                id=9000 + p.n, user_id=p.account_id, hostname=f"p{p.n}.example.net", ip_address="192.0.2.200",
                plan="green-2", datacenter="osl1", created_at=now - timedelta(days=300)))
            conn.execute(accounts_db.login_log.insert().values(
                id=90000 + p.n, server_id=9000 + p.n, at=now - timedelta(days=1), ip_address="198.51.100.200",
                user_agent="Mozilla/5.0"))
            conn.execute(accounts_db.orders.insert().values(
                id=9000 + p.n, user_id=p.account_id, ordered_at=now - timedelta(days=6 * 365),
                product="VPS green-2 (12 months)", amount="119.00", currency="EUR"))
    for p in people:
        uid = sims["freshchat"].add_user(p.email, email=p.email, first_name="Faulty", last_name=f"Person{p.n}",
                                         phone=f"+47900{p.n:05d}", reference_id=str(p.account_id),
                                         properties=[{"name": "plan", "value": "pro"}])
        sims["freshchat"].add_conversation(uid, f"faulty:{p.n}", "assigned", 3)
        sims["mautic"].add_contact(p.email, "Faulty", f"Person{p.n}")
        sims["salesmanago"].add_contact(p.email, f"Faulty Person{p.n}", f"+47900{p.n:05d}")
        sims["matomo"].add_visit(1, user_id_hash(p.email), p.email, datetime(2024, 5, 9, 10, p.n, tzinfo=UTC))


# ---------------------------------------------------------------------------------------------- the world


TERMINAL = {"completed", "completed_with_errors", "failed", "denied", "cancelled"}
TERMINAL_TASKS = {"done", "failed", "unsupported", "cancelled"}


@dataclass
class Figures:
    scenario: str
    requests: int
    faults: str
    settle_s: float  # from the first submission to every request terminal or waiting with a reason
    recovery_s: float  # from the end of the fault (or its start, when it never ends) to the same
    outcome: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    writes: int = 0
    reasons: list[str] = field(default_factory=list)  # distinct reasons of the requests not completed


class FaultWorld:
    """One scenario's systems; see the module docstring. Use as a context manager."""

    def __init__(self, tmp: Path, make_pg: Callable[[], str], *, people: int = 6, aof: bool = False,
                 s3: dict[str, str] | None = None, worker: dict[str, Any] | None = None,
                 vendor_timeout_s: float = 2.0) -> None:
        self.tmp = tmp
        self.make_pg = make_pg
        self.people = [Synthetic(n) for n in range(1, people + 1)]
        self.aof = aof
        self.s3 = s3
        # Short leases and sweeps; five attempts with Dramatiq's backoff from 0.5 s retry for 7.5-15 s in all.
        self.worker_settings = {"task_lease_seconds": 5, "sweep_interval_seconds": 1, "retry_backoff_seconds": 0.5,
                                "max_attempts": 5, **(worker or {})}
        self.vendor_timeout_s = vendor_timeout_s
        self._stack = contextlib.ExitStack()
        self.submitted: list[str] = []
        self.started_at = 0.0

    # -- set-up ---------------------------------------------------------------------------------------

    def __enter__(self) -> FaultWorld:
        try:
            self._build()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _build(self) -> None:
        from discovery.engine import db
        from discovery.engine.runtime import Runtime
        from discovery.engine.settings import WorkerSettings, load_settings
        from sandbox.launch import Sandbox
        from tests.conftest import SECRET, seed_accounts

        stack = self._stack
        # Bounds the campaign relies on, where this checkout's settings have them: a locate that hangs gives up
        # after locate_timeout; a task keeps retrying a system that cannot be reached for system_retry_budget.
        for key, value in {"locate_timeout": 4, "system_retry_budget": 10}.items():
            if key in WorkerSettings.model_fields:
                self.worker_settings.setdefault(key, value)
        sandbox = Sandbox(self.tmp / "sandbox")
        stack.callback(sandbox.stop)
        self.sandbox = sandbox
        self.sims = sandbox.sims
        self.proxies: dict[str, HttpFaultProxy] = {}
        datamap = sandbox.datamap_path.read_text(encoding="utf-8")
        for name, url in sandbox.urls.items():
            proxy = self.proxies[name] = HttpFaultProxy(name, url)
            stack.callback(proxy.stop)
            datamap = datamap.replace(url, proxy.url)
        datamap = _with_timeouts(datamap, self.vendor_timeout_s)
        (self.tmp / "datamap.yaml").write_text(datamap, encoding="utf-8")

        accounts_url = self.make_pg()
        self.accounts = seed_accounts(accounts_url)
        stack.callback(self.accounts.dispose)
        seed_synthetic(self.accounts, self.sims, self.people)
        target = sa.engine.make_url(accounts_url)
        self.db_proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
        stack.callback(self.db_proxy.stop)
        proxied_accounts = target.set(host="127.0.0.1", port=self.db_proxy.port).render_as_string(hide_password=False)

        self.redis = OwnRedis(self.tmp / "redis", aof=self.aof)
        stack.callback(self.redis.stop)

        ledger_url = self.make_pg()
        self.ledger = sa.create_engine(ledger_url)
        stack.callback(self.ledger.dispose)
        archive = [f'path = "{self.tmp / "archive"}"', f'staging_path = "{self.tmp / "staging"}"']
        env_extra: dict[str, str] = {}
        if self.s3 is not None:
            self.s3_proxy = HttpFaultProxy("s3", self.s3["endpoint_url"])
            stack.callback(self.s3_proxy.stop)
            archive += ['store = "s3"', f'bucket = "{self.s3["bucket"]}"', f'endpoint_url = "{self.s3_proxy.url}"',
                        'region = "us-east-1"', "part_size_mb = 5"]
            env_extra = {"AWS_ACCESS_KEY_ID": self.s3["access_key"], "AWS_SECRET_ACCESS_KEY": self.s3["secret_key"],
                         "AWS_DEFAULT_REGION": "us-east-1"}
        worker_lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in self.worker_settings.items())
        self.config = self.tmp / "dsar.toml"
        self.config.write_text(
            f'[ledger]\nurl = "{ledger_url}"\n[broker]\nurl = "{self.redis.url}"\n'
            f"[archive]\n" + "\n".join(archive) + "\n"
            f'[data_map]\npath = "datamap.yaml"\n[worker]\n{worker_lines}\n', encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DSAR_", "AWS_"))}
        env.update({"DSAR_CONFIG": str(self.config), "DSAR_SECRET_KEY": SECRET,
                    "DSAR_ACCOUNTS_DB_URL": proxied_accounts, "PYTHONUNBUFFERED": "1", "DSAR_LOG_LEVEL": "INFO",
                    **sandbox.env(), **env_extra})
        self.env = env
        self.rt = Runtime(load_settings(self.config, env), env=env)
        stack.callback(self.rt.close)
        db.upgrade(self.rt.engine)
        self.wake = BrokerWakeups(self.rt.settings)
        stack.callback(self.wake.close)
        self.worker = Worker(env, self.tmp / "worker.log")
        stack.callback(self.worker.stop)

    # -- driving --------------------------------------------------------------------------------------

    def submit(self, kind: str, email: str) -> str:
        from discovery.engine import pipeline

        if not self.started_at:
            self.started_at = time.monotonic()
        request_id = pipeline.submit(self.rt, self.wake, kind, email, ticket=f"FAULT-{len(self.submitted)}",
                                     actor="fault-campaign").request.id
        self.submitted.append(request_id)
        return request_id

    def submit_all(self) -> list[str]:
        """Erasure for every synthetic person, access for two of the sample people."""
        from sandbox.people import JANE, JOHN

        for p in self.people:
            self.submit("erasure", p.email)
        self.submit("access", JANE.email)
        self.submit("access", JOHN.email)
        return list(self.submitted)

    def requests(self) -> list[dict[str, Any]]:
        with self.ledger.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.text(
                "SELECT id, status, error, bundle_path, bundle_sha256, bundle_size FROM requests"))]

    def tasks(self) -> list[dict[str, Any]]:
        with self.ledger.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.text(
                "SELECT id, request_id, system, action, status, attempts, error, result, updated_at FROM tasks"))]

    def settled(self, parked_after: float = 10.0, manual_ok: bool = True) -> tuple[bool, dict[str, str], list[str]]:
        """(all settled, status per request, what is wrong): a request is settled when it is terminal (with a
        reason unless completed), awaiting a manual step (each waiting task naming it), or running with every
        open task waiting with a reason (status waiting, or pending untouched for `parked_after` s, its error saying
        why)."""
        reqs = {r["id"]: r for r in self.requests()}
        tasks: dict[str, list[dict[str, Any]]] = {}
        for t in self.tasks():
            tasks.setdefault(t["request_id"], []).append(t)
        with self.ledger.connect() as conn:
            now = conn.execute(sa.text("SELECT now()")).scalar_one()
        states: dict[str, str] = {}
        problems: list[str] = []
        for rid in self.submitted:
            req = reqs.get(rid)
            if req is None:
                problems.append(f"{rid}: lost (not in the ledger)")
                continue
            status = states[rid] = req["status"]
            if status in TERMINAL:
                if status != "completed" and not (req["error"] or "").strip():
                    problems.append(f"{rid}: {status} without a reason")
                continue
            open_tasks = [t for t in tasks.get(rid, []) if t["status"] not in TERMINAL_TASKS]
            if status in ("running", "awaiting_manual") and open_tasks and all(
                    _waiting(t, now, parked_after, manual_ok) for t in open_tasks):
                continue
            problems.append(f"{rid}: {status}, open tasks "
                            f"{[(t['system'], t['action'], t['status'], t['error']) for t in open_tasks]}")
        return not problems, states, problems

    def wait_settled(self, bound: float, parked_after: float = 10.0, since: float | None = None,
                     manual_ok: bool = True) -> float:
        """Seconds from `since` (default: the first submission) until every request settled; fails past `bound`."""
        start = self.started_at if since is None else since
        while True:
            ok, _, problems = self.settled(parked_after, manual_ok)
            if ok:
                return time.monotonic() - start
            if time.monotonic() > start + bound:
                raise AssertionError(
                    f"not every request settled within {bound:.0f} s:\n  " + "\n  ".join(problems)
                    + "\n--- worker log (tail) ---\n" + self.worker.log()[-4000:])
            time.sleep(0.25)

    def confirm_manual_steps(self) -> int:
        """An operator confirms every waiting manual step (as `dsar confirm` does); how many systems."""
        from discovery.engine import pipeline

        confirmed = 0
        for t in self.tasks():
            if t["status"] == "awaiting_manual":
                with contextlib.suppress(pipeline.InvalidInput):
                    pipeline.confirm_manual(self.rt, self.wake, t["request_id"], t["system"],
                                            "done by hand (fault campaign)", "fault-campaign")
                    confirmed += 1
        return confirmed

    # -- the invariants -----------------------------------------------------------------------------

    def duplicated_writes(self) -> dict[str, int]:
        return {f"{name}: {key}": n for name, proxy in self.proxies.items()
                for key, n in proxy.duplicated_writes().items()}

    def writes(self) -> int:
        return sum(sum(p.writes.values()) for p in self.proxies.values())

    def sim_duplicated_writes(self) -> dict[str, int]:
        """The same count from the simulators' own write logs: (system, call, the vendor's id of the record) seen more
        than once, answered or not."""
        counts = Counter(f"{name}: {call} {record}" for name, log in self.sandbox.writes().items()
                         for call, record in log)
        return {key: n for key, n in counts.items() if n > 1}

    def bundle_problems(self) -> list[str]:
        """Every request with a bundle: the stored object's SHA-256 and size equal the ledger's."""
        problems = []
        for req in self.requests():
            if req["id"] not in self.submitted:
                problems.append(f"{req['id']}: in the ledger but never submitted")
                continue
            if req["status"] in ("completed", "completed_with_errors") and not req["bundle_path"]:
                problems.append(f"{req['id']}: {req['status']} without a bundle")
            if not req["bundle_path"]:
                continue
            data = self.stored_bundle(req["bundle_path"])
            if data is None:
                problems.append(f"{req['id']}: bundle {req['bundle_path']} is not in the store")
                continue
            digest = hashlib.sha256(data).hexdigest()
            if digest != req["bundle_sha256"] or len(data) != req["bundle_size"]:
                problems.append(f"{req['id']}: stored bundle sha256 {digest} ({len(data)} bytes) != ledger "
                                f"{req['bundle_sha256']} ({req['bundle_size']} bytes)")
        return problems

    def stored_bundle(self, uri: str) -> bytes | None:
        if uri.startswith("s3://"):
            from sandbox import s3 as s3_sandbox

            assert self.s3 is not None
            bucket, _, key = uri.removeprefix("s3://").partition("/")
            try:
                return bytes(s3_sandbox.client(self.s3["endpoint_url"]).get_object(Bucket=bucket, Key=key)[
                    "Body"].read())
            except Exception:
                return None
        from discovery.bundle.archive import local_path

        path = local_path(uri)
        return path.read_bytes() if path.exists() else None

    def completions(self) -> Counter[str]:
        """request id -> request.completed audit events (one per request that completed)."""
        with self.ledger.connect() as conn:
            return Counter(r[0] for r in conn.execute(sa.text(
                "SELECT request_id FROM audit_events WHERE event = 'request.completed'")))

    def outcome(self) -> dict[str, int]:
        return dict(Counter(r["status"] for r in self.requests()))


def _waiting(task: dict[str, Any], now: datetime, parked_after: float, manual_ok: bool) -> bool:
    if task["status"] == "awaiting_manual":
        return manual_ok and bool((task["result"] or {}).get("manual_steps"))
    if task["status"] == "waiting":  # parked until a vendor's rate limit resets (tasks.retry_at), saying why
        return bool((task["error"] or "").strip())
    if task["status"] == "pending" and (task["error"] or "").strip():
        updated = task["updated_at"]
        if updated.tzinfo is None:  # stored as UTC without a zone
            updated = updated.replace(tzinfo=UTC)
        return (now - updated).total_seconds() >= parked_after
    return False


def _with_timeouts(datamap: str, timeout_s: float) -> str:
    """Every vendor system's read timeout set to `timeout_s` (a hang costs the connector that long per try)."""
    import yaml

    raw = yaml.safe_load(datamap)
    for name, system in raw["systems"].items():
        if name in ("freshchat", "mautic", "salesmanago", "matomo"):
            system["timeout_s"] = timeout_s
    return yaml.safe_dump(raw, sort_keys=False, allow_unicode=True, width=1000)

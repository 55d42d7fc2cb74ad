"""A redis-server of a benchmark's own: the host's Redis (127.0.0.1:6379) is shared with other programs,
so a benchmark never writes to it, let alone flushes it.

    with own_redis() as base:          # "redis://127.0.0.1:<free port>", stopped on exit
        url = f"{base}/0"

    with broker_redis(args.redis_url) as url:   # the given URL (must be an empty database), or an own server's db 0

The server keeps nothing on disk (`--save "" --appendonly no`, its --dir a temporary folder), so every
run starts empty and flushing it is harmless. (tests/conftest.py has the tests' counterpart; benchmarks do
not import from tests/.)
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

START_TIMEOUT_S = 10.0
ATTEMPTS = 3  # a free port can be taken by someone else before redis-server binds it: then try another


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        tail = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return "(no output)"
    return " | ".join(tail) or "(no output)"


def _start(binary: str, directory: Path, timeout: float) -> tuple[subprocess.Popen[bytes], int, str, bool]:
    """One attempt: the process, its port, '' once it answers PING or else why not (the process is then
    stopped), and whether another port may help (it exited at once, e.g. the port was taken meanwhile)."""
    port = free_port()
    log = directory / f"redis-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(directory)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)  # Ctrl-C reaches the benchmark, which then stops this server last
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1, socket_timeout=1)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                client.ping()
                return proc, port, "", False
            except redis.ConnectionError:
                pass
            if proc.poll() is not None:
                return proc, port, f"redis-server exited with code {proc.returncode}: {_log_tail(log)}", True
            if time.monotonic() > deadline:
                _stop(proc)
                return proc, port, f"redis-server did not answer PING within {timeout:.0f} s: {_log_tail(log)}", False
            time.sleep(0.05)
    finally:
        client.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def own_redis(timeout: float = START_TIMEOUT_S) -> Iterator[str]:
    """Start redis-server on a free 127.0.0.1 port, without persistence; yield its base URL
    `redis://127.0.0.1:<port>` (no database number); stop it on exit. SystemExit naming the reason if
    redis-server is not installed or does not start."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (not on PATH): the benchmarks start a Redis of their "
                         "own rather than use the host's shared one (apt-get install redis-server)")
    with tempfile.TemporaryDirectory(prefix="dsar-bench-redis-") as tmp:
        for attempt in range(1, ATTEMPTS + 1):
            proc, port, why, retry = _start(binary, Path(tmp), timeout)
            if not why:
                break
            if not retry or attempt == ATTEMPTS:
                raise SystemExit(f"could not start a redis-server of the benchmark's own (attempt {attempt} "
                                 f"of {ATTEMPTS}): {why}")
        try:
            yield f"redis://127.0.0.1:{port}"
        finally:
            _stop(proc)


def require_empty(url: str) -> None:
    """For a Redis the benchmark did not start: it must answer and its database must be empty. Refuses
    (SystemExit) rather than flushing it: what is there belongs to someone else."""
    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        keys = client.dbsize()
    except redis.RedisError as exc:
        raise SystemExit(f"--redis-url {url}: no answer ({exc})") from None
    finally:
        client.close()
    if keys:
        raise SystemExit(f"--redis-url {url}: the database holds {keys} keys. The benchmark does not flush a "
                         "Redis it did not start: give an empty database (or flush it yourself if it is "
                         "yours), or leave out --redis-url to use a redis-server of the benchmark's own.")


@contextmanager
def broker_redis(url: str | None) -> Iterator[str]:
    """The Redis URL (with its database) a benchmark uses: `url` if given, after checking that its database
    is empty (it is never flushed); otherwise database 0 of a fresh redis-server of the benchmark's own."""
    if url:
        require_empty(url)
        yield url
        return
    with own_redis() as base:
        yield f"{base}/0"

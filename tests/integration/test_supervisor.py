"""Supervised workers (issue 11, point 2): `dsar worker` restarts a worker process that dies, stops cleanly on
SIGTERM, gives up with one line when a process dies at start again and again; every worker process beats in Redis
and `dsar status`, `dsar check` and GET /readyz say when none is alive, and since when.

Real processes on a test-owned Redis and a PostgreSQL ledger; every process started here is killed in a finally.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import dramatiq
import orjson
import pytest
import redis
import requests
import sqlalchemy as sa
from dramatiq.brokers.redis import RedisBroker
from prometheus_client.parser import text_string_to_metric_families

from discovery.engine.settings import load_settings
from sandbox.people import JANE
from tests.conftest import ROOT, dsar_env, free_port, run_dsar, seed_accounts, write_config
from tests.helpers import wait_until
from workers import heartbeat, supervisor

pytestmark = pytest.mark.integration


def pid_exists(pid: int) -> bool:
    """A live process (a zombie counts as gone: it runs nothing and only waits for its parent to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])




class Stack:
    """A PostgreSQL ledger and account database, a Redis database, and the `dsar` processes started on them."""

    def __init__(self, tmp: Path, ledger: str, accounts: str, redis_url: str) -> None:
        self.tmp, self.accounts = tmp, seed_accounts(accounts)
        self.config = write_config(tmp, ledger, redis_url, task_lease_seconds=5, sweep_interval_seconds=1,
                                   retry_backoff_seconds=0.2)
        self.env = dsar_env(self.config, accounts)
        self.redis, self.redis_url = redis.Redis.from_url(redis_url), redis_url
        self.beats_key = heartbeat.key(load_settings(self.config, self.env).broker.namespace)  # the ledger's name
        self.ledger = sa.create_engine(ledger)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.seen_pids: set[int] = set()

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{name}.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "workers.cli", *args], env=self.env, cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def alive(self) -> list[heartbeat.Beat]:
        now = time.time()
        found = [b for b in heartbeat.beats(self.redis, self.beats_key) if b.alive(now)]
        self.seen_pids.update(b.pid for b in found)
        return found

    def close(self) -> None:
        for proc in self.procs:  # each in its own session: the group holds the supervisor and its children
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for pid in self.seen_pids:  # a child that outlived its group (it should not exist)
            if pid_exists(pid):
                os.kill(pid, signal.SIGKILL)
        self.redis.close()
        self.ledger.dispose()
        self.accounts.dispose()


@pytest.fixture
def stack(tmp_path: Path, pg_database: Callable[[], str], redis_url: str) -> Iterator[Stack]:
    s = Stack(tmp_path, pg_database(), pg_database(), redis_url)
    try:
        yield s
    finally:
        s.close()


def start_pool(stack: Stack, processes: int) -> tuple[subprocess.Popen[bytes], list[heartbeat.Beat]]:
    sup = stack.spawn("worker", ["worker", "--processes", str(processes), "--threads", "1"])
    beats = wait_until(lambda: len(stack.alive()) == processes and stack.alive(), 90, f"{processes} workers beating")
    assert sup.poll() is None, stack.log("worker")
    assert {parent_of(b.pid) for b in beats} == {sup.pid}  # one level: the supervisor's own children
    return sup, beats


def test_a_killed_worker_is_restarted_and_sigterm_stops_all(stack: Stack) -> None:
    sup, beats = start_pool(stack, 2)
    # While they beat, nothing says "no worker": check and the status logic.
    workers = orjson.loads(run_dsar(["check", "--json"], stack.env).stdout)["systems"]["workers"]
    assert workers["ok"] and workers["alive"] == 2 and not workers["problems"] and not workers["warnings"]

    found = heartbeat.for_status(load_settings(stack.config, stack.env), "running")
    assert found is not None and found["alive"] == 2 and found["problem"] is None

    victim = beats[0]
    os.kill(victim.pid, signal.SIGKILL)
    old = {b.pid for b in beats}
    fresh = wait_until(lambda: [b for b in stack.alive() if b.pid not in old], 60, "a restarted worker beating")
    (new,) = fresh
    assert new.id not in {b.id for b in beats} and parent_of(new.pid) == sup.pid
    assert not pid_exists(victim.pid) and sup.poll() is None
    restarts = [line for line in stack.log("worker").splitlines() if "worker.restarting" in line]
    assert len(restarts) == 1 and f"pid={victim.pid}" in restarts[0] and "killed by SIGKILL" in restarts[0]

    # The pool still works: a request submitted now completes.
    done = run_dsar(["request", "access", "--email", JANE.email, "--wait", "--json", "--timeout", "90"], stack.env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert orjson.loads(done.stdout)["status"] == "completed"

    children = [b.pid for b in stack.alive() if b.pid != victim.pid]
    assert len(children) == 2
    os.kill(sup.pid, signal.SIGTERM)  # the supervisor alone: it passes the stop on
    assert sup.wait(timeout=60) == 0, stack.log("worker")
    assert not [pid for pid in children if pid_exists(pid)]
    stopped = {b.pid: b for b in heartbeat.beats(stack.redis, stack.beats_key)}
    assert all(stopped[pid].stopped_at is not None for pid in children)  # each said goodbye
    assert "Traceback" not in stack.log("worker")


def test_with_no_worker_alive_status_check_and_readyz_say_since_when(stack: Stack) -> None:
    port = free_port()
    serve = stack.spawn("serve", ["serve", "--host", "127.0.0.1", "--port", str(port)])
    base = f"http://127.0.0.1:{port}"

    def ready() -> tuple[int, Any] | None:  # (status, body); a 503 Response is falsy, a tuple is not
        try:
            got = requests.get(f"{base}/readyz", timeout=5)
            return got.status_code, got.json()
        except requests.ConnectionError:
            assert serve.poll() is None, stack.log("serve")
            return None

    status, body = wait_until(ready, 60, "dsar serve")
    assert status == 503
    assert body["error"]["details"] == [{"check": "workers",
                                                 "message": "no worker has ever run (start `dsar worker`)"}]
    check = run_dsar(["check", "--json"], stack.env)
    assert orjson.loads(check.stdout)["systems"]["workers"]["warnings"] == [
        "no worker has ever run (start `dsar worker`)"]

    sup, _ = start_pool(stack, 1)
    assert ready() == (200, {"ok": True, "workers": {"alive": 1, "last_seen": ANY, "problem": None}})
    os.kill(sup.pid, signal.SIGTERM)
    assert sup.wait(timeout=60) == 0, stack.log("worker")

    # Submitted with every worker stopped: it stays open, and status says why it does not move.
    submitted = run_dsar(["request", "access", "--email", JANE.email, "--json"], stack.env)
    assert submitted.returncode == 0, submitted.stderr
    request_id = orjson.loads(submitted.stdout)["id"]
    (stopped,) = heartbeat.beats(stack.redis, stack.beats_key)
    assert stopped.stopped_at is not None
    since = heartbeat.Liveness(0, stopped.stopped_at).problem
    assert since is not None and since.startswith("no worker alive since 20") and since.endswith(" UTC")

    status = run_dsar(["status", request_id], stack.env)
    assert status.returncode == 0 and "status: received" in status.stdout
    assert status.stderr.strip() == f"Warning: {since}; this request waits for a worker."
    as_json = orjson.loads(run_dsar(["status", request_id, "--json"], stack.env).stdout)
    assert as_json["workers"]["alive"] == 0 and as_json["workers"]["problem"] == since
    check = orjson.loads(run_dsar(["check", "--json"], stack.env).stdout)
    assert check["ok"] is False and check["systems"]["workers"]["problems"] == [since]
    human = run_dsar(["check"], stack.env)
    assert human.returncode == 1 and f"  problem: {since}" in human.stdout
    assert ready() == (503, {"error": {"code": "not_ready", "message": since,
                                       "details": [{"check": "workers", "message": since}]}})

    # Back up: the request completes and nothing warns any more.
    start_pool(stack, 1)
    assert ready() == (200, {"ok": True, "workers": {"alive": 1, "last_seen": ANY, "problem": None}})

    def finished() -> Any:
        data = orjson.loads(run_dsar(["status", request_id, "--json"], stack.env).stdout)
        return data if data["status"] == "completed" else None

    assert wait_until(finished, 90, "the request to complete")["workers"] is None


def test_readyz_names_an_unreachable_broker_and_ledger(stack: Stack, pg_admin: sa.Engine) -> None:
    """GET /readyz checks the ledger and the broker too, not only the workers: each that does not answer is a
    reason of the 503."""
    start_pool(stack, 1)
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    ports = {"ok": free_port(), "no_broker": free_port()}
    stack.spawn("serve", ["serve", "--host", "127.0.0.1", "--port", str(ports["ok"])])
    stack.env = {**stack.env, "DSAR_BROKER_URL": dead_redis}
    stack.spawn("serve-nobroker", ["serve", "--host", "127.0.0.1", "--port", str(ports["no_broker"])])

    def ready(port: int) -> tuple[int, Any] | None:
        try:
            got = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
            return got.status_code, got.json()
        except requests.ConnectionError:
            return None

    assert wait_until(lambda: ready(ports["ok"]), 60, "dsar serve")[0] == 200
    status, body = wait_until(lambda: ready(ports["no_broker"]), 60, "dsar serve without its broker")
    assert status == 503 and [d["check"] for d in body["error"]["details"]] == ["broker"], body

    ledger = stack.ledger.url.database
    with pg_admin.connect() as conn:  # the test's own ledger database stops taking connections
        conn.execute(sa.text(f'ALTER DATABASE "{ledger}" ALLOW_CONNECTIONS false'))
        conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db"),
                     {"db": ledger})
    try:
        status, body = wait_until(lambda: ready(ports["ok"]), 30, "dsar serve again")
        assert status == 503 and {"check": "ledger", "message": "ledger database unreachable"} in body[
            "error"]["details"], body
    finally:
        with pg_admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{ledger}" ALLOW_CONNECTIONS true'))
    assert wait_until(lambda: (ready(ports["ok"]) or (0,))[0] == 200, 30, "ready again")


def test_a_worker_whose_supervisor_was_killed_stops(stack: Stack) -> None:
    sup, (beat,) = start_pool(stack, 1)
    os.kill(sup.pid, signal.SIGKILL)
    sup.wait()
    wait_until(lambda: not pid_exists(beat.pid), 30, "the orphaned worker to stop")
    (after,) = heartbeat.beats(stack.redis, stack.beats_key)
    assert after.stopped_at is not None  # it stopped gracefully, not killed


def test_the_supervisor_is_the_same_process_without_the_cli_loaded(stack: Stack) -> None:
    sup, (beat,) = start_pool(stack, 1)
    with open(f"/proc/{sup.pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    assert argv[1:4] == [b"-m", b"workers.supervisor", b"--parent"]  # `dsar worker` exec'd into it: same pid
    with open(f"/proc/{sup.pid}/maps") as f:
        parent = f.read()
    with open(f"/proc/{beat.pid}/maps") as f:
        child = f.read()
    for library in ("/sqlalchemy/", "/pydantic_core/", "/psycopg_binary/"):  # compiled parts: loaded if imported
        assert library in child and library not in parent, library
    os.kill(sup.pid, signal.SIGTERM)
    assert sup.wait(timeout=60) == 0, stack.log("worker")
    assert not pid_exists(beat.pid) and "supervisor.stopped" in stack.log("worker")


def test_a_worker_dying_at_start_again_and_again_makes_it_give_up(stack: Stack) -> None:
    sup, (beat,) = start_pool(stack, 1)
    # The data map breaks while the pool runs; the next start of a worker process fails on it, every time.
    (stack.tmp / "datamap.yaml").write_text("systems: [not, a, mapping]\n")
    os.kill(beat.pid, signal.SIGKILL)
    code = sup.wait(timeout=120)
    log = stack.log("worker")
    assert code == 3, log
    last = log.strip().splitlines()[-1]
    assert last.startswith("dsar: worker process 0 died within 10 s of starting 5 times in a row (exit code 3;")
    restarts = [line for line in log.splitlines() if "worker.restarting" in line]
    # The kill is a death at start too when the process had run under 10 s: 4 or 5 restarts before giving up.
    assert "killed by SIGKILL" in restarts[0] and len(restarts) in (4, 5)
    assert all("exit code 3" in line for line in restarts[1:]) and "Traceback" not in log
    assert not pid_exists(beat.pid)


# -- Dramatiq's own metrics (worker.metrics_port) ----------------------------------------------------------------

def scrape(url: str) -> dict[tuple[str, str], float]:
    """(sample name, actor) -> value, summed over the other labels, from the text the pool serves."""
    got = requests.get(url, timeout=5)
    assert got.status_code == 200 and got.headers["content-type"].startswith("text/plain")
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(got.text):
        for sample in family.samples:
            key = (sample.name, sample.labels.get("actor_name", ""))
            out[key] = out.get(key, 0.0) + sample.value
    return out


def listening(port: int) -> set[str]:
    """The addresses (hex, as /proc/net/tcp* shows them) something listens on at this port."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, _, hex_port = local.rpartition(":")
                if int(hex_port, 16) == port and state == "0A":
                    found.add(address)
    return found


def test_the_pool_serves_dramatiqs_own_metrics_on_loopback(stack: Stack) -> None:
    port = free_port()
    stack.env["DSAR_WORKER_METRICS_PORT"] = str(port)  # worker.metrics_port; metrics_host stays 127.0.0.1
    sup, beats = start_pool(stack, 2)
    url = f"http://127.0.0.1:{port}/metrics"
    assert listening(port) == {"0100007F"}  # 127.0.0.1 only, not every interface
    with open(f"/proc/{beats[0].pid}/environ", "rb") as f:
        child_env = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
    metrics_dir = Path(child_env[b"PROMETHEUS_MULTIPROC_DIR"].decode())
    assert child_env[b"MALLOC_ARENA_MAX"] == b"2"  # `dsar worker` caps glibc's per-thread arenas in its workers
    assert metrics_dir.is_dir() and metrics_dir.name.startswith("dsar-worker-metrics-")

    done = run_dsar(["request", "access", "--email", JANE.email, "--wait", "--json", "--timeout", "90"], stack.env)
    assert done.returncode == 0 and orjson.loads(done.stdout)["status"] == "completed", done.stdout + done.stderr
    assert [t["system"] for t in orjson.loads(done.stdout)["tasks"]] == ["accounts"]
    got = scrape(url)
    # The account database's task ran in the worker that discovered the request (no message of its own).
    assert got[("dramatiq_messages_total", "discover")] >= 1
    assert ("dramatiq_messages_total", "execute") not in got
    assert got[("dramatiq_message_duration_milliseconds_count", "discover")] == got[
        ("dramatiq_messages_total", "discover")]
    assert got[("dramatiq_messages_inprogress", "discover")] == 0  # all done
    assert ("dramatiq_message_errors_total", "discover") not in got  # nothing failed
    text = requests.get(url, timeout=5).text
    namespace = load_settings(stack.config, stack.env).broker.namespace
    assert f'queue_name="{namespace}"' in text and JANE.email not in text

    # A message its actor cannot take (wrong arguments) fails, is retried with backoff, then dead-lettered.
    bad = RedisBroker(url=stack.redis_url, namespace=f"{namespace}:dramatiq")
    try:
        bad.enqueue(dramatiq.Message(queue_name=namespace, actor_name="execute", args=(1, 2), kwargs={},
                                     options={}))
    finally:
        bad.close()
    wait_until(lambda: scrape(url).get(("dramatiq_message_rejects_total", "execute")), 90, "the dead-letter")
    failing = scrape(url)
    assert failing[("dramatiq_message_errors_total", "execute")] == 1 + 5  # the first try and max_attempts more
    # each retry is counted as it is delayed and again as it comes due (Dramatiq's after_enqueue): 5 or more
    assert failing[("dramatiq_message_retries_total", "execute")] >= 5
    got = failing

    # A worker killed and restarted: what it counted stays in the sum (counters never go down).
    os.kill(beats[0].pid, signal.SIGKILL)
    wait_until(lambda: [b for b in stack.alive() if b.pid not in {x.pid for x in beats}], 60, "a restart")
    after = scrape(url)
    assert after[("dramatiq_messages_total", "execute")] >= got[("dramatiq_messages_total", "execute")]

    os.kill(sup.pid, signal.SIGTERM)
    assert sup.wait(timeout=60) == 0, stack.log("worker")
    assert not listening(port) and not metrics_dir.exists()  # the port closed, the counters' files removed
    assert "worker.metrics_serving" in stack.log("worker")  # (its tracebacks are the bad message's, by Dramatiq)


def test_without_metrics_port_nothing_is_served(stack: Stack) -> None:
    sup, (beat,) = start_pool(stack, 1)
    with open(f"/proc/{beat.pid}/environ", "rb") as f:
        assert b"PROMETHEUS_MULTIPROC_DIR" not in f.read() and b"DSAR_WORKER_METRICS=" not in f.read()
    os.kill(sup.pid, signal.SIGTERM)
    assert sup.wait(timeout=60) == 0


# -- the supervisor on its own, with stand-in children: the give-up rule and the exit codes ----------------------

class Stub(supervisor.Supervisor):
    def __init__(self, script: str, processes: int = 2, metrics: supervisor.WorkerMetrics | None = None) -> None:
        super().__init__(processes, 1, os.environ, metrics=metrics)
        self.script = script

    def child_argv(self, slot: Any) -> list[str]:
        return [sys.executable, "-c", self.script]


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "BACKOFF_START", 0.05)


@pytest.mark.parametrize(("code", "expected"), [(3, 3), (5, 5), (1, 3)])
def test_gives_up_with_the_childs_kind_of_failure(fast: None, code: int, expected: int) -> None:
    stub = Stub(f"import sys; sys.exit({code})")
    with pytest.raises(supervisor.GaveUp) as gave_up:
        stub.run()
    assert gave_up.value.code == expected
    assert str(gave_up.value).startswith("worker process ") and f"(exit code {code};" in str(gave_up.value)
    assert not stub.pids()


def test_a_metrics_port_in_use_stops_the_start_with_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        metrics = supervisor.WorkerMetrics("127.0.0.1", port)
        stub = Stub("import time; time.sleep(30)", metrics=metrics)
        with pytest.raises(supervisor.GaveUp) as gave_up:
            stub.run()
    assert gave_up.value.code == 3 and str(gave_up.value).startswith(
        f"cannot serve worker metrics on 127.0.0.1:{port} (worker.metrics_port): ")
    assert not stub.pids() and not Path(metrics.path).exists()  # no child started, nothing left behind


def test_a_worker_that_runs_a_while_is_restarted_without_giving_up(fast: None,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "QUICK_SECONDS", 0.3)
    monkeypatch.setattr(supervisor, "STABLE_SECONDS", 0.4)  # each run is stable: the backoff stays short
    stub = Stub("import time; time.sleep(0.5)", processes=1)
    started: list[int] = []
    real_start = stub._start

    def counting_start(slot: Any) -> None:
        real_start(slot)
        started.append(slot.proc.pid)
        if len(started) == 8:
            os.kill(os.getpid(), signal.SIGTERM)  # as an operator would; handled by the supervisor

    stub._start = counting_start  # type: ignore[method-assign]
    assert stub.run() == 0
    assert len(set(started)) == 8 and not any(pid_exists(p) for p in started)


# -- the beats themselves -------------------------------------------------------------------------------------------

def test_a_silent_worker_counts_as_dead_after_three_missed_beats(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    now = time.time()
    client.hset(heartbeat.KEY, "a", heartbeat.Beat("a", "host", 1, now - 100, now - 14, 5.0).dump())
    client.hset(heartbeat.KEY, "junk", b"not a beat")  # ignored, not a crash
    assert heartbeat.read(client, now) == heartbeat.Liveness(1, now - 14)
    later = heartbeat.read(client, now + 2)  # 16 s > 3 x 5 s without a beat
    assert later == heartbeat.Liveness(0, now - 14) and later.problem and later.problem.startswith("no worker alive")
    client.delete(heartbeat.KEY)
    assert heartbeat.read(client, now) == heartbeat.Liveness(0, None)
    assert heartbeat.Liveness(0, None).problem == "no worker has ever run (start `dsar worker`)"
    client.close()


def test_the_middleware_beats_prunes_and_says_goodbye(redis_url: str) -> None:
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.brokers.stub import StubBroker

    client = redis.Redis.from_url(redis_url)
    now = time.time()
    two_days = now - 2 * 86400
    client.hset(heartbeat.KEY, "old", heartbeat.Beat("old", "h", 1, two_days - 10, two_days - 5, 5.0, two_days - 5)
                .dump())
    client.hset(heartbeat.KEY, "older", heartbeat.Beat("older", "h", 2, two_days - 99, two_days - 90, 5.0).dump())
    broker = RedisBroker(url=redis_url)
    beat = heartbeat.Heartbeat(interval=0.2)
    try:
        beat.after_worker_boot(broker, None)
        (mine,) = [b for b in heartbeat.beats(client) if b.pid == os.getpid()]
        assert {b.id for b in heartbeat.beats(client)} == {mine.id}  # gone for a day: pruned
        time.sleep(0.5)
        (again,) = heartbeat.beats(client)
        assert again.last_beat > mine.last_beat and heartbeat.read(client).alive == 1
    finally:
        beat.before_worker_shutdown(broker, None)
        broker.close()
    (gone,) = heartbeat.beats(client)
    assert gone.stopped_at is not None and heartbeat.read(client).alive == 0
    assert heartbeat.read(client).last_seen == gone.stopped_at
    # The stub broker's in-process worker does not beat.
    stub = heartbeat.Heartbeat()
    stub.after_worker_boot(StubBroker(), None)
    stub.before_worker_shutdown(StubBroker(), None)
    assert len(heartbeat.beats(client)) == 1
    client.close()

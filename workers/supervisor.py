"""`dsar worker`: a supervisor that keeps N Dramatiq worker processes running, restarting one that dies.

Dramatiq's own CLI (`dramatiq workers.actors --processes N`) treats any worker process exiting as fatal: its main
loop sends SIGTERM to the siblings and exits with the dead one's code, and nothing brings the pool back. Here every
worker is a child process of its own (a fresh interpreter: `python -m workers.supervisor --child`), running a
`dramatiq.Worker` the way `dramatiq.cli.worker_process` does (process_boot, Worker.start, Worker.stop on SIGTERM).

- A dead child is restarted after a backoff that doubles with each death not preceded by STABLE_SECONDS of
  running (BACKOFF_START .. BACKOFF_CAP), and each restart is one log line (slot, old pid, how it ended).
- A child that dies within QUICK_SECONDS of starting GIVE_UP_AFTER times in a row (a settings or data-map error, a
  missing module) makes the supervisor stop the others and give up with one line: `GaveUp` (exit 3, or 5 when the
  broker was unreachable).
- SIGTERM, SIGINT and SIGHUP stop gracefully: each child gets one SIGTERM (children ignore SIGINT, which a
  terminal sends to the whole group; a repeated SIGTERM, as from `kill` of the process group, changes nothing),
  finishes its running messages (up to SHUTDOWN_MS, as Dramatiq's --worker-shutdown-timeout) and exits; then the
  supervisor exits 0. A second signal kills the children at once (their leases expire; the sweeper re-wakes).
- A child whose supervisor disappeared (kill -9) stops by itself instead of running unsupervised.
- With worker.metrics_port set, Dramatiq's own metrics of every child are served on that port (WorkerMetrics).

Idle, nothing here polls: the supervisor sleeps until a signal (a child ended: SIGCHLD; a stop) or a restart comes
due, and a child's main thread until a stop signal or its supervisor's death (PR_SET_PDEATHSIG on Linux). Signals
wake the sleeping main thread through signal.set_wakeup_fd, whichever thread the kernel gave them to.

`dsar worker` validates the settings and the data map, upgrades the ledger, and then replaces itself (exec) with
`python -m workers.supervisor --parent ...`: the long-running supervisor imports only what supervising needs
(no SQLAlchemy, boto3 or FastAPI, nor structlog: see workers/logs.py), so it stays small; its children import
the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any

from workers.logs import ProcessLogger

log = ProcessLogger(__name__)  # structlog in a child; the supervisor renders the same lines without it

BACKOFF_START = 1.0
BACKOFF_CAP = 60.0
STABLE_SECONDS = 60.0  # a child that ran this long starts the backoff afresh when it dies
QUICK_SECONDS = 10.0  # dying sooner than this after starting is "dying at start"
GIVE_UP_AFTER = 5
SHUTDOWN_MS = 600_000
IDLE_SECONDS = 60.0  # the longest sleep of the supervisor and of a child's main thread (signals wake them sooner)
ORPHAN_CHECK_SECONDS = 1.0  # without PR_SET_PDEATHSIG (not Linux), a child looks for its supervisor this often

# A child's exit codes (and the supervisor's when it gives up), as the CLI's: 3 configuration, 5 unreachable.
CHILD_IMPORT, CHILD_CONFIG, CHILD_UNAVAILABLE = 2, 3, 5
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class SignalWakeup:
    """Sleeps the main thread until a signal that has a Python handler arrives, or a timeout passes.

    Python runs signal handlers in the main thread, but the kernel may deliver a process's signal to any of its
    threads (a child has many); a main thread blocked on a lock would then sleep on until its timeout. The C-level
    handler writes each signal to the wake-up fd, which the main thread waits on here, so it wakes at once."""

    def __enter__(self) -> SignalWakeup:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._previous = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        return self

    def __exit__(self, *_exc: object) -> None:
        signal.set_wakeup_fd(self._previous)
        os.close(self._read)
        os.close(self._write)

    def wait(self, timeout: float | None) -> None:
        """Returns when a signal came (since the last wait) or after `timeout` seconds."""
        with contextlib.suppress(InterruptedError):
            select.select([self._read], [], [], timeout)
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 512):
                pass


def _no_op(_signum: int, _frame: FrameType | None) -> None:
    """A handler only so that the signal reaches the wake-up fd (SIGCHLD is ignored by default)."""


class GaveUp(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Slot:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    deaths: int = 0  # deaths in a row without a stable run: the backoff's exponent
    quick_deaths: int = 0  # deaths at start in a row: the give-up count
    restart_at: float | None = None
    term_sent: bool = False


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class WorkerMetrics:
    """Dramatiq's own metrics (dramatiq.middleware.Prometheus: messages processed, errored, retried, rejected, in
    progress, durations per actor), summed over the worker processes and served for Prometheus to scrape.

    As under Dramatiq's CLI: each child's middleware writes its counters into files of one directory
    (prometheus_client's multiprocess mode, the directory named by the environment before the child starts), and
    the main process serves their sum. Here the supervisor serves them from a thread instead of a forked process,
    and the directory is a fresh one of its own (not Dramatiq's shared /tmp default, where two deployments on one
    host would add up), removed when it stops. A restarted child's counts stay in the sum (counters only grow);
    a dead child's in-progress gauge is dropped."""

    ENV = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir", "dramatiq_prom_db")  # the last: Dramatiq's
    FLAG = "DSAR_WORKER_METRICS"  # workers/actors.py adds the middleware in a child that has it

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.path = tempfile.mkdtemp(prefix="dsar-worker-metrics-")
        self._server: Any = None

    def env(self) -> dict[str, str]:
        return {**dict.fromkeys(self.ENV, self.path), self.FLAG: "1"}

    def start(self) -> None:
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.path)
        try:
            self._server, _thread = start_http_server(self.port, self.host, registry)
        except OSError as exc:  # the port is taken, the address is not this host's: a settings error
            self.close()
            raise GaveUp(f"cannot serve worker metrics on {self.host}:{self.port} (worker.metrics_port): "
                         f"{exc.strerror or exc}", CHILD_CONFIG) from None
        log.info("worker.metrics_serving", host=self.host, port=self.port)

    def process_died(self, pid: int) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, self.path)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        shutil.rmtree(self.path, ignore_errors=True)


class Supervisor:
    def __init__(self, processes: int, threads: int, env: Mapping[str, str],
                 clock: Callable[[], float] = time.monotonic, metrics: WorkerMetrics | None = None) -> None:
        self.threads, self.env, self.clock = threads, dict(env), clock
        self.metrics = metrics
        if metrics is not None:
            self.env.update(metrics.env())
        self.slots = [_Slot(i) for i in range(processes)]
        self._stopping = False
        self._forced = False
        self._gave_up: GaveUp | None = None

    def child_argv(self, slot: _Slot) -> list[str]:
        return [sys.executable, "-m", "workers.supervisor", "--child", "--slot", str(slot.index),
                "--threads", str(self.threads)]

    def pids(self) -> list[int]:
        return [s.proc.pid for s in self.slots if s.proc is not None and s.proc.poll() is None]

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> int:
        """Supervise until stopped: 0 after a graceful stop, 1 if a second signal cut it short; raises GaveUp."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, _no_op)  # a child ended: wake and look
        try:
            with SignalWakeup() as wakeup:
                if self.metrics is not None:
                    self.metrics.start()  # before any child: a port that is taken fails the start, once
                log.info("supervisor.started", processes=len(self.slots), threads=self.threads, pid=os.getpid())
                for slot in self.slots:
                    self._start(slot)
                while True:
                    self._tick()
                    if self._stopping and not self.pids():
                        break
                    # no polling: a child's end (SIGCHLD), a stop signal or the next restart wakes it
                    wakeup.wait(self._sleep_seconds())
                for slot in self.slots:  # reap: no zombies left behind
                    if slot.proc is not None:
                        slot.proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.metrics is not None:
                self.metrics.close()
        if self._gave_up is not None:
            raise self._gave_up
        log.info("supervisor.stopped", forced=self._forced)
        return 1 if self._forced else 0

    def _sleep_seconds(self) -> float:
        due = [slot.restart_at for slot in self.slots if slot.restart_at is not None and not self._stopping]
        return max(0.0, min([IDLE_SECONDS, *(at - self.clock() for at in due)]))

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only flags here; the loop sends the signals (a child being started right now gets its SIGTERM too).
        if self._stopping:
            self._forced = True
        self._stopping = True

    def _tick(self) -> None:
        now = self.clock()
        for slot in self.slots:
            proc = slot.proc
            if proc is not None and proc.poll() is None:
                if self._forced:
                    proc.kill()
                elif self._stopping and not slot.term_sent:
                    slot.term_sent = True
                    proc.terminate()
            elif proc is not None and slot.restart_at is None and not self._stopping:
                self._died(slot, proc.returncode, now)
            elif slot.restart_at is not None and now >= slot.restart_at and not self._stopping:
                self._start(slot)

    def _start(self, slot: _Slot) -> None:
        slot.proc = subprocess.Popen(self.child_argv(slot), env=self.env, stdin=subprocess.DEVNULL)
        slot.started, slot.restart_at, slot.term_sent = self.clock(), None, False
        log.info("worker.started", slot=slot.index, pid=slot.proc.pid)

    def _died(self, slot: _Slot, code: int, now: float) -> None:
        assert slot.proc is not None
        if self.metrics is not None:
            self.metrics.process_died(slot.proc.pid)  # its in-progress gauge no longer counts
        ran = now - slot.started
        slot.deaths = 1 if ran >= STABLE_SECONDS else slot.deaths + 1
        slot.quick_deaths = slot.quick_deaths + 1 if ran < QUICK_SECONDS else 0
        how = describe_exit(code)
        if slot.quick_deaths >= GIVE_UP_AFTER:
            self._gave_up = GaveUp(
                f"worker process {slot.index} died within {QUICK_SECONDS:.0f} s of starting {slot.quick_deaths} "
                f"times in a row ({how}; its error is above); gave up",
                CHILD_UNAVAILABLE if code == CHILD_UNAVAILABLE else CHILD_CONFIG)
            self._stopping = True
            log.error("supervisor.gave_up", slot=slot.index, pid=slot.proc.pid, how=how, times=slot.quick_deaths)
            return
        delay = min(BACKOFF_CAP, BACKOFF_START * 2 ** (slot.deaths - 1))
        slot.restart_at = now + delay
        log.warning("worker.restarting", slot=slot.index, pid=slot.proc.pid, how=how, ran_s=round(ran, 1),
                    restart_in_s=delay)


# -- the child: one Dramatiq worker process ---------------------------------------------------------------------

def child_main(threads: int, slot: int) -> int:
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()  # idempotent: a SIGTERM to the process group plus the supervisor's own is still one stop

    orphaned = threading.Event()

    def on_parent_death(_signum: int, _frame: FrameType | None) -> None:
        orphaned.set()

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor turns Ctrl-C into one SIGTERM
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    signal.signal(signal.SIGUSR1, on_parent_death)
    supervisor = os.getppid()
    # The kernel tells this process when its supervisor dies (a signal, not a poll); checked once more just after,
    # in case it died before this line. Without it (not Linux) the main thread looks every ORPHAN_CHECK_SECONDS.
    told = _parent_death_signal(signal.SIGUSR1)

    from workers.logs import refuse_rich

    refuse_rich()  # before anything imports structlog
    import dramatiq

    from discovery.engine.datamap import DataMapError
    from discovery.engine.settings import ConfigError
    from workers.logs import exception_line

    try:
        from workers import app

        # Settings, logging and the whole data map now, so a broken one is a death at start (which the supervisor
        # counts) rather than a failure on the first message.
        app.runtime()
        import workers.actors  # noqa: F401  (declares the actors, adds the sweeper and the heartbeat)

        broker = app.ensure_broker()
        broker.emit_after("process_boot")  # TimeLimit and friends start their threads here, as under Dramatiq's CLI
        # The deployment's own queue (broker.namespace), never another's on the same Redis or vhost. A process takes
        # only as many messages as it has threads (Dramatiq's default is twice that): a discovery runs the local
        # database's tasks itself, so a thread can be busy a while, and a message held behind it would wait while
        # another process sits idle.
        worker = dramatiq.Worker(broker, queues={app.queue_name()}, worker_threads=threads,
                                 worker_timeout=app.worker_timeout_ms(app.settings()))
        worker.queue_prefetch = threads  # read when start() makes the consumers (Dramatiq takes no argument for it)
        worker.start()
    except (ConfigError, DataMapError) as exc:
        print(f"dsar worker: {exc}", file=sys.stderr, flush=True)
        return CHILD_CONFIG
    except ImportError as exc:
        print(f"dsar worker: {exception_line(exc)}", file=sys.stderr, flush=True)
        return CHILD_IMPORT
    except Exception as exc:
        from workers.app import broker_trouble  # loaded above, unless loading it is what failed (then that goes on)

        if not broker_trouble(exc):
            raise
        print(f"dsar worker: broker unreachable ({type(exc).__name__})", file=sys.stderr, flush=True)
        return CHILD_UNAVAILABLE
    # Dramatiq's own CLI says "Worker process is ready for action." here; scripts that wait for that line (the
    # side-by-side harness in ../shared/peers/fides) work with `dsar worker` too.
    log.info("worker.ready", slot=slot, pid=os.getpid(), threads=threads, said="Worker process is ready for action.")
    with SignalWakeup() as wakeup:
        while not stop.is_set():
            if orphaned.is_set() or os.getppid() != supervisor:
                log.warning("worker.orphaned", slot=slot, pid=os.getpid())  # the supervisor was killed: stop too
                break
            wakeup.wait(IDLE_SECONDS if told else ORPHAN_CHECK_SECONDS)
    worker.stop(timeout=SHUTDOWN_MS)
    broker.close()
    log.info("worker.stopped", slot=slot, pid=os.getpid())
    return 0


def _parent_death_signal(sig: int) -> bool:
    """Ask Linux to send `sig` to this process when its parent dies (prctl PR_SET_PDEATHSIG); False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(1, int(sig), 0, 0, 0) == 0)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return False


# -- the parent: what `dsar worker` becomes once it has checked the settings ------------------------------------

def parent_argv(processes: int, threads: int, log_format: str, metrics_host: str = "", metrics_port: int = 0,
                ) -> list[str]:
    """The command line `dsar worker` execs into (the environment carries the rest: DSAR_CONFIG and the flags)."""
    argv = [sys.executable, "-m", "workers.supervisor", "--parent", "--processes", str(processes),
            "--threads", str(threads), "--log-format", log_format]
    if metrics_port:
        argv += ["--metrics-host", metrics_host, "--metrics-port", str(metrics_port)]
    return argv


def parent_main(args: argparse.Namespace) -> int:
    """Supervise with the environment this process was started with; a give-up is one line, as the CLI's."""
    from workers.logs import configure_plain_logging

    configure_plain_logging(args.log_format)
    metrics = WorkerMetrics(args.metrics_host, args.metrics_port) if args.metrics_port else None
    try:
        return Supervisor(args.processes, args.threads, os.environ, metrics=metrics).run()
    except GaveUp as exc:
        print(f"dsar: {exc}", file=sys.stderr, flush=True)
        return exc.code


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m workers.supervisor", description="Run by `dsar worker`.")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--child", action="store_true")
    mode.add_argument("--parent", action="store_true")
    parser.add_argument("--slot", type=int, default=0)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log-format", default="console")
    parser.add_argument("--metrics-host", default="127.0.0.1")
    parser.add_argument("--metrics-port", type=int, default=0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse(sys.argv[1:])
    sys.exit(parent_main(args) if args.parent else child_main(args.threads, args.slot))

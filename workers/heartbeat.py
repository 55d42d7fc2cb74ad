"""Worker heartbeats in Redis (the broker): which worker processes are alive, and since when none is.

Every Dramatiq worker process on the Redis broker (`dsar worker` runs them) keeps one entry in the hash
`dsar:workers`: its id, host, pid, when it started, its last beat (every BEAT_SECONDS, from a thread of its own)
and the interval it beats at; a graceful stop writes `stopped_at`. A process killed without stopping just falls
silent and counts as dead once its last beat is older than STALE_BEATS intervals. `dsar status`, `dsar check` and
`GET /readyz` read the hash and say "no worker alive since <time>" (the newest sign of life of any worker) or "no
worker has ever run".

Redis rather than the ledger: the beats are about the broker's consumers, one HSET per process per beat costs
nothing there, and the hash has no expiry, so "since when" survives. Entries of processes gone for a day are pruned
when a worker starts. With the embedded stub:// broker the command is its own worker: nothing beats
and nothing is reported. Entries hold no personal data (host names, pids and times).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import dramatiq
import orjson
import redis
import structlog
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware

from discovery.engine.ledger import OPEN_STATUSES
from discovery.engine.settings import Settings

log = structlog.get_logger(__name__)

KEY = "dsar:workers"
BEAT_SECONDS = 5.0
STALE_BEATS = 3  # missed beats before a silent process counts as dead
PRUNE_AFTER_SECONDS = 24 * 3600


@dataclass(frozen=True)
class Beat:
    id: str
    host: str
    pid: int
    started_at: float  # epoch seconds
    last_beat: float
    interval: float
    stopped_at: float | None = None

    def alive(self, now: float) -> bool:
        return self.stopped_at is None and now - self.last_beat <= self.interval * STALE_BEATS

    @property
    def last_seen(self) -> float:
        return self.stopped_at or self.last_beat

    def dump(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def load(cls, raw: bytes | str) -> Beat | None:
        try:
            d = orjson.loads(raw)
            return cls(id=str(d["id"]), host=str(d["host"]), pid=int(d["pid"]), started_at=float(d["started_at"]),
                       last_beat=float(d["last_beat"]), interval=float(d["interval"]),
                       stopped_at=None if d.get("stopped_at") is None else float(d["stopped_at"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None  # someone else's value under our key: not a worker


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Liveness:
    """What the beats say: how many worker processes are alive and, when none is, since when."""

    alive: int
    last_seen: float | None  # newest sign of life of any worker; None: none ever beat on this broker

    @property
    def ok(self) -> bool:
        return self.alive > 0

    @property
    def problem(self) -> str | None:
        if self.ok:
            return None
        if self.last_seen is None:
            return "no worker has ever run (start `dsar worker`)"
        return f"no worker alive since {_iso(self.last_seen).replace('T', ' ').replace('+00:00', ' UTC')}"

    def to_dict(self) -> dict[str, Any]:
        return {"alive": self.alive, "last_seen": None if self.last_seen is None else _iso(self.last_seen),
                "problem": self.problem}


def beats(client: redis.Redis) -> list[Beat]:
    return [b for b in (Beat.load(v) for v in client.hvals(KEY)) if b is not None]


def read(client: redis.Redis, now: float | None = None) -> Liveness:
    now = time.time() if now is None else now
    found = beats(client)
    return Liveness(alive=sum(b.alive(now) for b in found),
                    last_seen=max((b.last_seen for b in found), default=None))


def liveness(settings: Settings) -> Liveness | None:
    """The workers' liveness on the configured Redis broker; None with the embedded stub:// broker (no separate
    worker to miss). Raises redis.RedisError when the broker does not answer."""
    if not settings.redis_url:
        return None
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3, socket_timeout=3)
    try:
        return read(client)
    finally:
        client.close()


def for_status(settings: Settings, request_status: str) -> dict[str, Any] | None:
    """`dsar status`: the workers' liveness when it matters (an open request on the Redis broker), else None.
    A broker that does not answer is said too: nothing moves then either."""
    if request_status not in OPEN_STATUSES or not settings.redis_url:
        return None
    try:
        found = liveness(settings)
    except redis.RedisError:
        return {"alive": None, "last_seen": None, "problem": "workers unknown: the broker is unreachable"}
    return None if found is None else found.to_dict()


class Heartbeat(Middleware):
    """Publishes this worker process's beat while its Dramatiq worker runs (Redis broker only)."""

    def __init__(self, interval: float = BEAT_SECONDS) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: redis.Redis | None = None
        self._beat: Beat | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        if not isinstance(broker, RedisBroker):
            return  # the in-process stub worker lives and dies with its command
        now = time.time()
        self._client = broker.client
        self._beat = Beat(id=uuid.uuid4().hex[:12], host=socket.gethostname(), pid=os.getpid(), started_at=now,
                          last_beat=now, interval=self.interval)
        self._stop.clear()
        self._write(prune=True)  # visible at once, not one interval later
        self._thread = threading.Thread(target=self._loop, name="dsar-heartbeat", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        if self._thread is None or self._beat is None:
            return
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)
        now = time.time()
        self._beat = replace(self._beat, last_beat=now, stopped_at=now)
        self._write()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            assert self._beat is not None
            self._beat = replace(self._beat, last_beat=time.time())
            self._write()

    def _write(self, prune: bool = False) -> None:
        assert self._client is not None and self._beat is not None
        try:
            self._client.hset(KEY, self._beat.id, self._beat.dump())
            if prune:
                self._prune()
        except redis.RedisError as exc:  # the broker is away: the consumers say so too; beat again next time
            log.warning("heartbeat.failed", worker_id=self._beat.id, error=type(exc).__name__)

    def _prune(self) -> None:
        """Drops entries of processes gone for a day; this process's own entry, just written, is the newest."""
        assert self._client is not None
        now = time.time()
        old = [b.id for b in beats(self._client) if b.last_seen < now - PRUNE_AFTER_SECONDS and not b.alive(now)]
        if old:
            self._client.hdel(KEY, *old)


def install(broker: dramatiq.Broker) -> None:
    if not any(isinstance(m, Heartbeat) for m in broker.middleware):
        broker.add_middleware(Heartbeat())

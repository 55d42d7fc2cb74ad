"""Worker heartbeats: which worker processes are alive, and since when none is.

Every Dramatiq worker process (`dsar worker` runs them) keeps one entry in the Redis hash `<namespace>:workers`
(broker.namespace): its id, host, pid, when it started, its last beat (every BEAT_SECONDS, from a thread of its own)
and the interval it beats at; a graceful stop writes `stopped_at`. A process killed without stopping just falls
silent and counts as dead once its last beat is older than STALE_BEATS intervals. `dsar status`, `dsar check` and
`GET /readyz` read the hash and say "no worker alive since <time>" (the newest sign of life of any worker) or "no
worker has ever run".

Where the beats live: in the broker's Redis; with RabbitMQ, in the Redis of broker.redis_url (the one shared rate
limits use) when there is one. RabbitMQ alone keeps no such record, but it knows the consumers on the queue right
now (one per worker process): then that count is the liveness, without "since when". Redis rather than the ledger:
the beats are about the broker's consumers, one HSET per process per beat costs nothing there, and the hash has no
expiry, so "since when" survives. Entries of processes gone for a day are pruned when a worker starts. With the
embedded stub:// broker the command is its own worker: nothing beats and nothing is reported. Entries hold no
personal data (host names, pids and times).
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
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware

from discovery.engine.ledger import OPEN_STATUSES
from discovery.engine.settings import Settings

log = structlog.get_logger(__name__)



def key(namespace: str) -> str:
    """The hash of a namespace's beats."""
    return f"{namespace}:workers"


KEY = key("dsar")  # the default namespace's
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
    history: bool = True  # False: RabbitMQ's consumer count, which cannot tell "since when" or "never"

    @property
    def ok(self) -> bool:
        return self.alive > 0

    @property
    def problem(self) -> str | None:
        if self.ok:
            return None
        if not self.history:
            return "no worker is consuming the queue (since when is not known: set broker.redis_url to keep beats)"
        if self.last_seen is None:
            return "no worker has ever run (start `dsar worker`)"
        return f"no worker alive since {_iso(self.last_seen).replace('T', ' ').replace('+00:00', ' UTC')}"

    def to_dict(self) -> dict[str, Any]:
        return {"alive": self.alive, "last_seen": None if self.last_seen is None else _iso(self.last_seen),
                "problem": self.problem}


def beats(client: redis.Redis, hash_key: str = KEY) -> list[Beat]:
    return [b for b in (Beat.load(v) for v in client.hvals(hash_key)) if b is not None]


def read(client: redis.Redis, now: float | None = None, hash_key: str = KEY) -> Liveness:
    now = time.time() if now is None else now
    found = beats(client, hash_key)
    return Liveness(alive=sum(b.alive(now) for b in found),
                    last_seen=max((b.last_seen for b in found), default=None))


class Unreachable(Exception):
    """The broker, or the Redis holding the beats, did not answer (one line, naming which)."""


def rabbitmq_consumers(url: str, queue: str) -> int:
    """Consumers on `queue` now (0 when it was never declared). Raises Unreachable."""
    import pika
    import pika.exceptions

    params = pika.URLParameters(url)
    params.connection_attempts, params.socket_timeout, params.blocked_connection_timeout = 1, 3, 3
    params.stack_timeout = 5
    try:
        connection = pika.BlockingConnection(params)
    except pika.exceptions.AMQPError:
        raise Unreachable("rabbitmq broker unreachable") from None
    try:
        channel = connection.channel()
        try:
            return int(channel.queue_declare(queue, passive=True).method.consumer_count)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:  # no such queue: no worker ever started on this namespace and vhost
                return 0
            raise
    except pika.exceptions.AMQPError:
        raise Unreachable("rabbitmq broker unreachable") from None
    finally:
        if connection.is_open:
            connection.close()


def _read_redis(url: str, namespace: str, what: str) -> Liveness:
    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        return read(client, hash_key=key(namespace))
    except redis.RedisError:
        raise Unreachable(f"{what} unreachable") from None
    finally:
        client.close()


def liveness(settings: Settings) -> Liveness | None:
    """The workers' liveness on the configured broker; None with the embedded stub:// broker (no separate worker to
    miss). With RabbitMQ the queue is looked at either way (readiness needs the broker to answer), the beats in
    broker.redis_url when set. Raises Unreachable when the broker (or that Redis) does not answer."""
    kind, namespace = settings.broker.kind, settings.broker.namespace
    if kind == "stub":
        return None
    if kind == "redis":
        return _read_redis(settings.broker.url, namespace, "redis broker")
    consumers = rabbitmq_consumers(settings.broker.url, namespace)
    if settings.redis_url:
        return _read_redis(settings.redis_url, namespace, "redis (broker.redis_url)")
    return Liveness(alive=consumers, last_seen=None, history=False)


def for_status(settings: Settings, request_status: str) -> dict[str, Any] | None:
    """`dsar status`: the workers' liveness when it matters (an open request, a separate broker), else None.
    A broker that does not answer is said too: nothing moves then either."""
    if request_status not in OPEN_STATUSES or settings.broker.kind == "stub":
        return None
    try:
        found = liveness(settings)
    except Unreachable:
        return {"alive": None, "last_seen": None, "problem": "workers unknown: the broker is unreachable"}
    return None if found is None else found.to_dict()


class Heartbeat(Middleware):
    """Publishes this worker process's beat while its Dramatiq worker runs: in the Redis broker, or beside RabbitMQ
    in the Redis of `redis_url`; nothing with the stub broker or RabbitMQ alone."""

    def __init__(self, interval: float = BEAT_SECONDS, namespace: str = "dsar", redis_url: str | None = None) -> None:
        self.interval = interval
        self.key = key(namespace)
        self.redis_url = redis_url
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: redis.Redis | None = None
        self._beat: Beat | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        if isinstance(broker, RedisBroker):
            self._client = broker.client
        elif self.redis_url and not isinstance(broker, StubBroker):
            self._client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=3, socket_timeout=3)
        else:
            return  # the in-process stub worker lives and dies with its command; RabbitMQ counts its consumers
        now = time.time()
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
        if not isinstance(broker, RedisBroker) and self._client is not None:
            self._client.close()  # our own connection (beside RabbitMQ); the Redis broker's is the broker's

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            assert self._beat is not None
            self._beat = replace(self._beat, last_beat=time.time())
            self._write()

    def _write(self, prune: bool = False) -> None:
        assert self._client is not None and self._beat is not None
        try:
            self._client.hset(self.key, self._beat.id, self._beat.dump())
            if prune:
                self._prune()
        except redis.RedisError as exc:  # the broker is away: the consumers say so too; beat again next time
            log.warning("heartbeat.failed", worker_id=self._beat.id, error=type(exc).__name__)

    def _prune(self) -> None:
        """Drops entries of processes gone for a day; this process's own entry, just written, is the newest."""
        assert self._client is not None
        now = time.time()
        old = [b.id for b in beats(self._client, self.key)
               if b.last_seen < now - PRUNE_AFTER_SECONDS and not b.alive(now)]
        if old:
            self._client.hdel(self.key, *old)


def install(broker: dramatiq.Broker, namespace: str = "dsar", redis_url: str | None = None) -> None:
    if not any(isinstance(m, Heartbeat) for m in broker.middleware):
        broker.add_middleware(Heartbeat(namespace=namespace, redis_url=redis_url))

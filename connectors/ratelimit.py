"""Per-vendor request pacing shared by every worker process.

Requests are spaced at 1/rate seconds: each caller reserves the next free slot atomically
(in Redis when configured, so many worker processes together never exceed the vendor's limit;
in-process otherwise) and sleeps until it. Sends leave evenly spaced, but network and server
jitter bunch their arrivals, so the pace keeps a margin (HEADROOM) under the configured rate:
measured against a simulator at exactly the limit, no margin gave dozens of 429s per 50
requests, 10% gave none (bench/RESULTS.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

import structlog

log = structlog.get_logger(__name__)

# Reserve a slot using the Redis server's clock, so worker machines with skewed clocks agree.
_RESERVE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local next_free = tonumber(redis.call('GET', KEYS[1]) or '0')
local slot = math.max(now, next_free)
-- %.6f, not tostring(): epoch seconds need 16 digits to keep microseconds
redis.call('SET', KEYS[1], string.format('%.6f', slot + interval), 'PX', math.ceil(interval * 1000) + 60000)
return {string.format('%.6f', slot), string.format('%.6f', now)}
"""


HEADROOM = 0.9  # pace at 90% of the configured rate


class RateLimiter(Protocol):
    def acquire(self) -> float:
        """Block until the caller may send one request; return the seconds waited."""
        ...


class NoLimit:
    def acquire(self) -> float:
        return 0.0


class LocalRateLimiter:
    """Spacing within one process (embedded runs and tests without Redis)."""

    def __init__(self, rate_per_second: float, sleep: Callable[[float], None] = time.sleep) -> None:
        if rate_per_second <= 0:
            raise ValueError("rate_per_second must be positive")
        self._interval = 1.0 / (rate_per_second * HEADROOM)
        self._next_free = 0.0
        self._lock = threading.Lock()
        self._sleep = sleep

    def reserve(self) -> tuple[float, float]:
        """Take the next free slot: (slot, now) on the monotonic clock."""
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next_free)
            self._next_free = slot + self._interval
        return slot, now

    def acquire(self) -> float:
        slot, now = self.reserve()
        wait = slot - now
        if wait > 0:
            self._sleep(wait)
        return wait


class RedisRateLimiter:
    """Spacing across processes and machines through one Redis key per vendor, `<namespace>:rate:<key>`: two
    deployments on one Redis pace apart (each has its own vendor accounts)."""

    def __init__(
        self, redis_client: object, key: str, rate_per_second: float, sleep: Callable[[float], None] = time.sleep,
        namespace: str = "dsar",
    ) -> None:
        if rate_per_second <= 0:
            raise ValueError("rate_per_second must be positive")
        self._key = f"{namespace}:rate:{key}"
        self._interval = 1.0 / (rate_per_second * HEADROOM)
        self._script = redis_client.register_script(_RESERVE_LUA)  # type: ignore[attr-defined]
        self._sleep = sleep
        # While Redis is away (restarted, failing over) each process paces on its own: vendor calls go on, slower
        # than shared pacing would allow only if several processes call one vendor at once.
        self._fallback = LocalRateLimiter(rate_per_second, sleep)
        self._degraded = False

    def reserve(self) -> tuple[float, float]:
        """Take the next free slot: (slot, now), both on the Redis server's clock."""
        slot, now = self._script(keys=[self._key], args=[repr(self._interval)])
        return float(slot), float(now)

    def acquire(self) -> float:
        from redis.exceptions import RedisError

        try:
            slot, now = self.reserve()
        except RedisError as exc:
            if not self._degraded:
                log.warning("ratelimit.redis_unavailable", key=self._key, error=type(exc).__name__,
                            action="pacing in this process until Redis answers")
                self._degraded = True
            return self._fallback.acquire()
        if self._degraded:
            log.info("ratelimit.redis_back", key=self._key)
            self._degraded = False
        wait = slot - now
        if wait > 0:
            self._sleep(wait)
        return wait


def make_rate_limiter(key: str, rate_per_second: float | None, redis_url: str | None,
                      namespace: str = "dsar") -> RateLimiter:
    """Redis-shared when a Redis URL is configured (keys under `namespace`), in-process otherwise, none without a
    rate."""
    if not rate_per_second:
        return NoLimit()
    if redis_url:
        import redis

        return RedisRateLimiter(redis.Redis.from_url(redis_url), key, rate_per_second, namespace=namespace)
    return LocalRateLimiter(rate_per_second)

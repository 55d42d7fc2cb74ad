"""The per-vendor pace is shared through Redis: many limiter instances (one per worker process) never
reserve two requests closer together than the paced interval."""

from __future__ import annotations

import itertools
import threading

import pytest
import redis

from connectors.ratelimit import HEADROOM, LocalRateLimiter, RedisRateLimiter, make_rate_limiter

pytestmark = pytest.mark.integration


def reserve_concurrently(limiters: list, per_limiter: int) -> list[float]:
    slots: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(len(limiters))

    def work(limiter: object) -> None:
        start.wait()
        for _ in range(per_limiter):
            slot, _now = limiter.reserve()  # type: ignore[attr-defined]
            with lock:
                slots.append(slot)

    threads = [threading.Thread(target=work, args=(lim,)) for lim in limiters]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(slots)


def test_workers_sharing_redis_never_exceed_the_rate(redis_url: str) -> None:
    rate = 10.0
    # Four "worker processes": separate limiter objects with their own Redis connections.
    limiters = [RedisRateLimiter(redis.Redis.from_url(redis_url), "vendor:test", rate) for _ in range(4)]
    slots = reserve_concurrently(limiters, per_limiter=10)
    interval = 1 / (rate * HEADROOM)
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert len(slots) == 40
    assert min(gaps) >= interval - 2e-6  # microsecond rounding
    # In any one-second window at most `rate` requests start.
    assert max(sum(1 for s in slots if w <= s < w + 1.0) for w in slots) <= rate


def test_separate_vendors_do_not_share_a_pace(redis_url: str) -> None:
    a = RedisRateLimiter(redis.Redis.from_url(redis_url), "vendor:a", 5)
    b = RedisRateLimiter(redis.Redis.from_url(redis_url), "vendor:b", 5)
    a_slot, a_now = a.reserve()
    b_slot, b_now = b.reserve()
    assert a_slot - a_now < 0.05 and b_slot - b_now < 0.05  # both free at once


def test_local_limiter_and_factory() -> None:
    limiter = LocalRateLimiter(20, sleep=lambda s: None)
    slots = reserve_concurrently([limiter] * 4, per_limiter=5)
    assert min(b - a for a, b in itertools.pairwise(slots)) >= 1 / (20 * HEADROOM) - 1e-9
    assert make_rate_limiter("x", None, None).acquire() == 0.0
    assert isinstance(make_rate_limiter("x", 3, None), LocalRateLimiter)
    with pytest.raises(ValueError, match="positive"):
        LocalRateLimiter(0)



class GoneRedis:
    """A Redis client whose server went away: every script call raises as redis-py does then."""

    def register_script(self, _source: str) -> object:
        def call(**_kwargs: object) -> object:
            raise redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

        return call


def test_redis_going_away_paces_in_process_instead_of_failing_the_vendor_call() -> None:
    """The fault campaign: a restarted Redis made every rate-limited vendor call fail with ConnectionError."""
    slept: list[float] = []
    limiter = RedisRateLimiter(GoneRedis(), "vendor:gone", 10.0, sleep=slept.append)
    waits = [limiter.acquire() for _ in range(3)]
    interval = 1.0 / (10.0 * HEADROOM)
    # no error, and still paced: by the process itself (the slots are 1/rate apart; nothing really sleeps here)
    assert waits[0] == 0.0 and waits[1] == pytest.approx(interval, abs=0.01)
    assert waits[2] == pytest.approx(2 * interval, abs=0.01) and slept == waits[1:]

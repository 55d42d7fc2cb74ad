"""Whose turn it is: one process of a deployment does a periodic chore per interval, the others skip it.

The worker processes' sweeper (workers/actors.py) runs this way: each interval, the process that takes the key
`<namespace>:<chore>` in Redis (SET NX, expiring shortly before the next interval begins) does the chore; an idle pool
of N processes no longer runs the same queries N times. Without a Redis (RabbitMQ alone), or while it is away, every
process takes its turn: the chores that use this are safe to run anywhere, any time, so the only cost is the waste.
"""

from __future__ import annotations

import os

import redis


class IntervalTurn:
    def __init__(self, chore: str, interval: float, redis_url: str | None, namespace: str) -> None:
        self.key = f"{namespace}:{chore}"
        self.ttl_ms = max(100, int(interval * 900))  # gone before the next interval begins anywhere
        self._redis = redis.Redis.from_url(redis_url, socket_timeout=5) if redis_url else None

    def mine(self) -> bool:
        """Take this interval's turn; False if another process took it already."""
        if self._redis is None:
            return True
        try:
            return bool(self._redis.set(self.key, os.getpid(), nx=True, px=self.ttl_ms))
        except redis.RedisError:
            return True

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()

"""One process per interval does a deployment's periodic chore (workers/turns.py: the sweeper uses it)."""

from __future__ import annotations

import pytest

from workers.turns import IntervalTurn

pytestmark = pytest.mark.integration


def test_one_process_per_interval_takes_the_turn(redis_url: str) -> None:
    turns = [IntervalTurn("sweeper", 0.5, redis_url, "ns-a") for _ in range(3)]  # three worker processes
    other = IntervalTurn("sweeper", 0.5, redis_url, "ns-b")  # another deployment on the same Redis
    try:
        assert [t.mine() for t in turns] == [True, False, False]
        assert other.mine()  # namespaces never share a turn
        # The key expires before the next interval: then one of them takes it again.
        redis = turns[0]._redis
        assert redis is not None and 0 < redis.pttl("ns-a:sweeper") <= 450
        redis.delete("ns-a:sweeper")  # as if the interval had passed
        assert [t.mine() for t in turns[1:]] == [True, False]
    finally:
        for t in (*turns, other):
            t.close()


def test_without_redis_every_process_takes_its_turn() -> None:
    assert all(IntervalTurn("sweeper", 30, None, "ns").mine() for _ in range(3))


def test_a_redis_away_never_stops_the_chore() -> None:
    turn = IntervalTurn("sweeper", 30, "redis://127.0.0.1:1/0", "ns")  # nothing listens on port 1
    assert turn.mine() and turn.mine()

"""Issue 15: a message sent to Redis wakes an idle consumer at once (workers/broker.py), instead of waiting for its
next poll. The consumers here have a 60 s idle timeout: a message they take within the tests' deadlines could only
have reached them through the wake-up. Each test uses a fresh Redis database of the test run's own redis-server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.errors import ConnectionClosed

from tests.conftest import free_port
from tests.helpers import wait_until
from workers.broker import WAKE_LIST_MAX, WakingRedisBroker

pytestmark = pytest.mark.integration

QUEUE = "wq"
LONG_MS = 60_000  # the consumers' idle timeout: far past every deadline below


class Taker:
    """One consumer (as one worker process has per queue) calling next() in a thread of its own until it holds
    `want` messages, as Dramatiq's consumer thread does."""

    def __init__(self, broker: WakingRedisBroker, queue: str = QUEUE, prefetch: int = 4, want: int = 1) -> None:
        self.consumer: Any = broker.consume(queue, prefetch=prefetch, timeout=LONG_MS)
        self.want, self.got = want, []  # type: list[Any]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while len(self.got) < self.want:
            message = next(self.consumer)
            if message is not None:
                self.got.append(message)


def blocked_on_wake(client: redis.Redis, count: int = 1) -> bool:
    """`count` connections of this database wait in BLPOP, i.e. that many consumers are idle on a wake list. Only
    this test's database counts: the run's redis-server serves every test, and a worker another test started may
    still be stopping, blocked in a BLPOP of its own."""
    db = str(client.connection_pool.connection_kwargs.get("db", 0))
    return sum(1 for c in client.client_list() if c.get("cmd") == "blpop" and str(c.get("db")) == db) == count


def send(broker: WakingRedisBroker, arg: int, queue: str = QUEUE, delay: int | None = None) -> dramatiq.Message:
    message = dramatiq.Message(queue_name=queue, actor_name="noop", args=(arg,), kwargs={}, options={})
    return broker.enqueue(message, delay=delay)


@pytest.fixture
def make(redis_url: str) -> Iterator[Any]:
    brokers: list[WakingRedisBroker] = []

    def make_broker(namespace: str = "wake_t:dramatiq") -> WakingRedisBroker:
        broker = WakingRedisBroker(url=redis_url, namespace=namespace, heartbeat_timeout=15_000)
        broker.declare_queue(QUEUE)
        brokers.append(broker)
        return broker

    yield make_broker
    for broker in brokers:
        broker.close()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url, decode_responses=True)
    yield c
    c.close()


def test_a_message_reaches_a_consumer_idle_for_a_minute(make: Any, client: redis.Redis) -> None:
    worker, api = make(), make()  # as a worker process and `dsar serve`: two brokers on one namespace
    taker = Taker(worker)
    wait_until(lambda: blocked_on_wake(client), 10, "the consumer waiting on its wake list")
    sent = send(api, 1)
    wait_until(lambda: taker.got, 20, "the consumer to take the message (its own next look is a minute away)")
    assert taker.got[0].message_id == sent.message_id and taker.got[0].args == (1,)
    taker.consumer.ack(taker.got[0])
    assert client.llen(f"wake_t:dramatiq:{QUEUE}") == 0  # taken off the queue, not just seen


def test_a_consumer_with_full_prefetch_leaves_the_wake_to_another(make: Any, client: redis.Redis) -> None:
    api = make()
    send(api, 1)
    full = Taker(make(), prefetch=1, want=2)  # takes message 1 and, holding it unacked, has no room for more
    wait_until(lambda: full.got, 20, "the first consumer to take message 1")
    # Message 1's wake token is still on the list (the first consumer fetched without taking it). Left there, the idle
    # consumer would take it, find nothing and block again: a moment between two BLPOPs the count below could see.
    client.delete(f"wake_t:dramatiq:__wake__.{QUEUE}")
    idle = Taker(make())
    wait_until(lambda: blocked_on_wake(client), 10, "the second consumer waiting on the wake list")
    assert blocked_on_wake(client, 1)  # only the idle one: the full one waits for its own ack, not for tokens
    send(api, 2)
    wait_until(lambda: idle.got, 20, "the idle consumer to take message 2")
    assert idle.got[0].args == (2,) and len(full.got) == 1
    # Once the full one acks, it has room again and fetches (nothing left); it then waits on the wake list too.
    full.consumer.ack(full.got[0])
    idle.consumer.ack(idle.got[0])
    wait_until(lambda: blocked_on_wake(client), 10, "the first consumer waiting on the wake list after its ack")
    send(api, 3)
    wait_until(lambda: len(full.got) == 2, 20, "the first consumer to take message 3")
    assert full.got[1].args == (3,)


def test_messages_put_back_by_a_stopping_worker_wake_another(make: Any, client: redis.Redis) -> None:
    api = make()
    stopping = Taker(make(), want=2)
    wait_until(lambda: blocked_on_wake(client), 10, "the first consumer idle")
    send(api, 1), send(api, 2)
    wait_until(lambda: len(stopping.got) == 2, 20, "the first consumer to take both")
    other = Taker(make(), want=2)
    wait_until(lambda: blocked_on_wake(client), 10, "the other consumer idle")
    stopping.consumer.requeue(stopping.got)  # what Dramatiq's worker does with unprocessed messages on a stop
    wait_until(lambda: len(other.got) == 2, 20, "the other consumer to take the requeued messages")
    assert sorted(m.args for m in other.got) == [(1,), (2,)]


def test_the_delay_queue_is_woken_and_returns_when_its_message_comes_due(make: Any, client: redis.Redis) -> None:
    api, worker = make(), make()
    delayed = Taker(worker, queue=f"{QUEUE}.DQ")
    wait_until(lambda: blocked_on_wake(client), 10, "the delay-queue consumer idle")
    send(api, 1, delay=30_000)  # a retry with backoff lands here
    wait_until(lambda: delayed.got, 20, "the delay-queue consumer to take the delayed message")
    eta = delayed.got[0].options["eta"]
    # Dramatiq's consumer thread moves a message to its queue between two calls of next(): this consumer's next
    # wait ends at the message's eta, not after its idle minute.
    assert delayed.consumer.etas == {delayed.got[0].message_id: eta}
    assert delayed.consumer._wait_seconds() <= 30.0
    delayed.consumer.ack(delayed.got[0])
    assert delayed.consumer.etas == {} and delayed.consumer._wait_seconds() == LONG_MS / 1000


def test_namespaces_never_wake_each_other(make: Any, client: redis.Redis) -> None:
    blue, green = make("blue:dramatiq"), make("green:dramatiq")
    taker = Taker(blue)
    wait_until(lambda: blocked_on_wake(client), 10, "blue's consumer idle")
    send(green, 1)
    assert client.llen(f"green:dramatiq:__wake__.{QUEUE}") == 1
    assert not client.exists(f"blue:dramatiq:__wake__.{QUEUE}") and not taker.got
    assert list(client.scan_iter("*__wake__*")) == [f"green:dramatiq:__wake__.{QUEUE}"]
    send(blue, 2)
    wait_until(lambda: taker.got, 20, "blue's consumer to take blue's message")
    assert taker.got[0].args == (2,)  # never green's


def test_wake_lists_stay_small_and_expire(make: Any, client: redis.Redis) -> None:
    api = make()
    for i in range(WAKE_LIST_MAX + 20):  # no consumer at all: the tokens pile up only to the cap
        send(api, i)
    key = f"wake_t:dramatiq:__wake__.{QUEUE}"
    assert client.llen(key) == WAKE_LIST_MAX and 0 < client.pttl(key) <= 60_000
    # A consumer that starts now takes every message (fetching until the queue is empty), then waits again.
    taker = Taker(make(), prefetch=200, want=WAKE_LIST_MAX + 20)
    wait_until(lambda: len(taker.got) == WAKE_LIST_MAX + 20, 20, "all the messages taken")


def test_an_unreachable_redis_is_a_connection_error_for_dramatiq() -> None:
    broker = WakingRedisBroker(url=f"redis://127.0.0.1:{free_port()}/0", namespace="gone:dramatiq")
    try:
        consumer = broker.consume(QUEUE, prefetch=1, timeout=LONG_MS)
        with pytest.raises(ConnectionClosed):  # Dramatiq's consumer thread restarts the consumer on this
            next(consumer)
    finally:
        broker.close()

"""Dramatiq's RedisBroker without the poll: a message sent wakes an idle consumer at once.

Dramatiq's Redis consumer looks for messages by running its `fetch` script and, when it finds none, sleeps an
exponential backoff up to the worker timeout: a message sent to an idle worker waits up to that long, and every
idle consumer runs the script many times a second if the timeout is short. Here:

- Every enqueue also pushes a token onto the queue's wake list, `<namespace>:__wake__.<queue>` (trimmed to
  WAKE_LIST_MAX tokens and expiring after WAKE_LIST_TTL_MS, so it never grows; under the broker's namespace, so two
  deployments on one Redis never wake each other). A consumer that has room for a message and found none blocks
  on that list (BLPOP, on a connection of its own from the pool) instead of sleeping, and fetches as soon as a
  token arrives. The list is persistent, so a message sent between the empty fetch and the BLPOP is not missed.
- A consumer whose prefetch is full takes no tokens (it could not fetch the message; another consumer may): it
  waits for one of its own messages to be acked or nacked, then fetches.
- At most the idle timeout passes without a fetch (which is also the consumer's heartbeat in Dramatiq's scripts),
  so messages nobody announced (requeued from a dead worker by Dramatiq's maintenance, or sent by a plain
  RedisBroker) are still taken, within the idle timeout; it must stay well under the heartbeat timeout.
- The delay queue (`<queue>.DQ`, retries with backoff) is woken the same way, and its consumer returns when the
  earliest eta of the messages it holds comes due, so the worker moves them to the queue on time (Dramatiq's
  consumer thread does that between two messages).

Acks, nacks, requeues, the scripts and the keys are Dramatiq's own; a Redis that is down raises ConnectionClosed
from the consumer, as Dramatiq's does (its consumer thread restarts the consumer).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import current_millis
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message

WAKE_LIST_MAX = 64  # tokens kept per queue: more than the consumers that can be idle on it at once
WAKE_LIST_TTL_MS = 60_000  # a wake list nobody read in a minute goes (the consumers fetch every idle timeout anyway)
MIN_WAIT_S = 0.005  # never spin: the shortest wait when an eta is already due


class WakingRedisBroker(RedisBroker):
    """A RedisBroker whose enqueues wake the queue's idle consumers (see the module's text)."""

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return _WakingConsumer

    def wake_key(self, queue_name: str) -> str:
        return f"{self.namespace}:__wake__.{queue_name}"

    def do_enqueue(self, queue_name: str, message_id: str, data: bytes) -> Any:
        result = self._dispatch("enqueue")(queue_name, message_id, data)
        self.wake(queue_name)
        return result

    def wake(self, queue_name: str, count: int = 1) -> None:
        """Tell the queue's idle consumers there is work. A failure here is only logged: the message is in Redis
        (it was enqueued first), and a consumer takes it within its idle timeout anyway."""
        key = self.wake_key(queue_name)
        try:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.lpush(key, *(["1"] * max(1, min(count, WAKE_LIST_MAX))))
                pipe.ltrim(key, 0, WAKE_LIST_MAX - 1)
                pipe.pexpire(key, WAKE_LIST_TTL_MS)
                pipe.execute()
        except redis.RedisError as exc:
            self.logger.warning("Could not wake the consumers of %r (%s); they look within their idle timeout.",
                                queue_name, exc)


class _WakingConsumer(_RedisConsumer):
    def __init__(self, broker: WakingRedisBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)
        self.wake_key = broker.wake_key(queue_name)
        self.etas: dict[str, int] = {}  # message id -> eta of held messages that have one (the delay queue's)
        self._etas_lock = threading.Lock()  # worker threads ack (and drop an eta) while this one reads them
        self.settled = threading.Event()  # set by an ack or nack: room for another message

    def ack(self, message: MessageProxy) -> None:
        try:
            super().ack(message)
        finally:
            self._settle(message)

    def nack(self, message: MessageProxy) -> None:
        try:
            super().nack(message)
        finally:
            self._settle(message)

    def _settle(self, message: MessageProxy) -> None:
        with self._etas_lock:
            self.etas.pop(message.message_id, None)
        self.settled.set()

    def requeue(self, messages: Any) -> None:
        messages = list(messages)
        super().requeue(messages)
        if messages:  # back on the queue: another worker may take them now rather than at its next look
            self.broker.wake(self.queue_name, len(messages))

    def __next__(self) -> MessageProxy | None:
        try:
            while True:
                if self.message_cache:
                    data = self.message_cache.pop(0)
                    if data is None:  # as Dramatiq's consumer (its issue #266)
                        self.logger.warning("Found 'None' message in message cache for queue %r.", self.queue_name)
                        continue
                    message = Message.decode(data)
                    self.queued_message_ids.add(message.message_id)
                    eta = message.options.get("eta")
                    if isinstance(eta, int | float):
                        with self._etas_lock:
                            self.etas[message.message_id] = int(eta)
                    return MessageProxy(message)
                room = self.prefetch - self.outstanding_message_count
                if room > 0:
                    self.settled.clear()
                    self.message_cache = self.broker.do_fetch(self.queue_name, room)
                    if self.message_cache:
                        continue
                    self._wait_for_wake()
                else:
                    self.settled.wait(self._wait_seconds())
                    self.settled.clear()
                # None lets the consumer thread run its delayed messages and notice a stop; it calls again at once
                return None
        except redis.ConnectionError as exc:
            raise ConnectionClosed(exc) from None

    def _wait_seconds(self) -> float:
        wait = self.timeout / 1000
        with self._etas_lock:
            earliest = min(self.etas.values(), default=None)
        if earliest is not None:
            wait = min(wait, (earliest - current_millis()) / 1000)
        return max(MIN_WAIT_S, wait)

    def _wait_for_wake(self) -> None:
        # BLPOP's timeout is in seconds (fractions since Redis 6). A socket timeout shorter than that in the URL
        # ends the wait early, which only means an early look.
        with contextlib.suppress(redis.TimeoutError):
            self.broker.client.blpop([self.wake_key], timeout=self._wait_seconds())

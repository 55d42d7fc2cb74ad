"""Namespaces (issue 14, point 3): two deployments on one Redis database, or one RabbitMQ vhost, never take each
other's messages, and every Redis key dsar writes (Dramatiq's queues, acks and heartbeats, the workers' beats, the
vendors' rate limits) starts with `<namespace>:`. Runs on a test-owned Redis database and the test run's vhost."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis

from connectors.ratelimit import make_rate_limiter
from discovery.engine.runtime import Runtime
from discovery.engine.settings import Settings, load_settings
from tests.conftest import SECRET, write_config
from workers import heartbeat
from workers.app import make_broker, worker_timeout_ms

pytestmark = pytest.mark.integration


class Deployment:
    """One namespace's broker, its `discover` actor (recording what it got) and an in-process worker on its queue."""

    def __init__(self, settings: Settings) -> None:
        self.settings, self.namespace = settings, settings.broker.namespace
        self.got: list[str] = []
        self.lock = threading.Lock()
        self.broker = make_broker(settings)
        heartbeat.install(self.broker, namespace=self.namespace, redis_url=settings.redis_url)

        def discover(request_id: str) -> None:
            with self.lock:
                self.got.append(request_id)

        dramatiq.actor(discover, broker=self.broker, queue_name=self.namespace, actor_name="discover")
        self.worker = dramatiq.Worker(self.broker, queues={self.namespace}, worker_threads=2,
                                      worker_timeout=worker_timeout_ms(settings))

    def send(self, request_id: str) -> None:
        self.broker.enqueue(dramatiq.Message(queue_name=self.namespace, actor_name="discover", args=(request_id,),
                                             kwargs={}, options={}))

    def close(self) -> None:
        self.worker.stop(timeout=10_000)
        self.broker.close()


@pytest.fixture
def two(tmp_path: Path, broker_url: str, request: pytest.FixtureRequest) -> Iterator[tuple[Deployment, Deployment]]:
    # beside RabbitMQ, a Redis of the test's own for beats and rate limits (broker.redis_url)
    env = {"DSAR_SECRET_KEY": SECRET}
    if broker_url.startswith("amqp"):
        env["DSAR_BROKER_REDIS_URL"] = request.getfixturevalue("redis_url")
    tag = uuid.uuid4().hex[:8]  # the vhost is the whole run's: namespaces of this test's own
    deployments = []
    for name in ("blue", "green"):
        home = tmp_path / name
        home.mkdir()
        (home / "datamap.yaml").write_text(
            "controller: {name: Test AS, contact: dpo@example.no}\n"
            "systems: {accounts: {kind: sql, enabled: false, url_env: X, entities: {}}}\n")
        config = write_config(home, f"sqlite:///{home / 'ledger.db'}", broker_url, namespace=f"{name}_{tag}")
        deployments.append(Deployment(load_settings(config, env)))
    try:
        for d in deployments:
            d.worker.start()
        yield deployments[0], deployments[1]
    finally:
        for d in deployments:
            d.close()


def wait_for(check: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_two_namespaces_on_one_broker_never_take_each_others_messages(two: tuple[Deployment, Deployment]) -> None:
    blue, green = two
    for i in range(10):
        blue.send(f"blue-{i}")
        green.send(f"green-{i}")
    wait_for(lambda: len(blue.got) == 10 and len(green.got) == 10)
    time.sleep(0.5)  # nothing more arrives
    assert sorted(blue.got) == sorted(f"blue-{i}" for i in range(10))
    assert sorted(green.got) == sorted(f"green-{i}" for i in range(10))


def test_every_redis_key_is_under_its_namespace(two: tuple[Deployment, Deployment]) -> None:
    blue, green = two
    redis_url = blue.settings.redis_url  # the Redis broker, or broker.redis_url beside RabbitMQ
    assert redis_url and redis_url == green.settings.redis_url
    for d in (blue, green):  # a message each; the in-process workers beat already; a vendor's pace, as connectors
        d.send("x")
        rt = Runtime(d.settings, env={"DSAR_SECRET_KEY": SECRET})
        assert rt.ctx.namespace == d.namespace and rt.ctx.redis_url == redis_url
        make_rate_limiter("mautic:mautic", 50, rt.ctx.redis_url, rt.ctx.namespace).acquire()
        rt.close()
    wait_for(lambda: len(blue.got) == 1 and len(green.got) == 1)
    client = redis.Redis.from_url(redis_url)
    keys = {k.decode() for k in client.keys("*")}
    for d in (blue, green):
        expected = {f"{d.namespace}:workers", f"{d.namespace}:rate:mautic:mautic"}
        if d.settings.broker.kind == "redis":
            expected.add(f"{d.namespace}:dramatiq:__heartbeats__")  # Dramatiq's own, under the namespace too
        assert expected <= {k for k in keys if k.startswith(f"{d.namespace}:")}
        assert heartbeat.read(client, hash_key=heartbeat.key(d.namespace)).alive == 1  # its worker, not both
    client.close()
    assert keys == {k for k in keys if k.startswith((f"{blue.namespace}:", f"{green.namespace}:"))}

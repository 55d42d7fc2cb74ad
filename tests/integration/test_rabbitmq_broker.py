"""RabbitMQ as the broker (issue 14, point 2), on the test run's own vhost: durable queues named by the namespace,
and `dsar check`, `dsar status` and GET /readyz honest about the workers with RabbitMQ alone (its consumer count,
without "since when") and beside a Redis (broker.redis_url: the beats). A request end to end through a worker
process on RabbitMQ: tests/integration/test_worker_redis.py (each of its tests runs on both brokers)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import orjson
import pytest

from discovery.engine.runtime import Runtime
from discovery.engine.settings import Settings, load_settings
from tests.conftest import RABBITMQCTL, SECRET, RabbitVhost, free_port, run_dsar, write_config
from workers import heartbeat
from workers.api.routes_ops import readyz
from workers.app import make_broker

pytestmark = pytest.mark.integration
DATAMAP = ("controller: {name: Test AS, contact: dpo@example.no}\n"
           "systems: {accounts: {kind: sql, enabled: false, url_env: X, entities: {}}}\n")


def settings_for(tmp_path: Path, broker_url: str, **env: str) -> tuple[Path, dict[str, str], Settings]:
    (tmp_path / "datamap.yaml").write_text(DATAMAP)
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}", broker_url,
                          namespace=f"t_{tmp_path.name[-20:].lower().replace('-', '_')}")
    full = {"DSAR_SECRET_KEY": SECRET, "DSAR_CONFIG": str(config), **env}
    return config, full, load_settings(config, full)


@pytest.fixture
def consuming(tmp_path: Path, rabbitmq_url: str) -> Iterator[dict[str, object]]:
    """A worker consuming the namespace's queue on RabbitMQ, in this process; stopped after the test."""
    _config, env, settings = settings_for(tmp_path, rabbitmq_url)
    broker = make_broker(settings)
    dramatiq.actor(lambda request_id: None, broker=broker, queue_name=settings.broker.namespace,
                   actor_name="discover")
    worker = dramatiq.Worker(broker, queues={settings.broker.namespace}, worker_threads=1, worker_timeout=200)
    yield {"settings": settings, "env": env, "worker": worker, "broker": broker}
    worker.stop(timeout=10_000)
    broker.close()


def test_liveness_is_the_queues_consumer_count_without_a_redis(consuming: dict[str, object]) -> None:
    settings = consuming["settings"]
    assert isinstance(settings, Settings) and settings.redis_url is None
    before = heartbeat.liveness(settings)
    assert before == heartbeat.Liveness(0, None, history=False)  # no queue yet: nobody ever consumed
    assert before.problem is not None and before.problem.startswith("no worker is consuming the queue")
    assert heartbeat.for_status(settings, "running") == {"alive": 0, "last_seen": None,
                                                         "problem": before.problem}
    consuming["worker"].start()  # type: ignore[attr-defined]
    deadline = time.monotonic() + 20
    while (found := heartbeat.liveness(settings)) is None or found.alive < 1:
        assert time.monotonic() < deadline, "the worker never showed as a consumer"
        time.sleep(0.2)
    assert found.ok and found.problem is None
    assert heartbeat.for_status(settings, "completed") is None  # only an open request asks
    # the namespace's queues are durable (they outlive a RabbitMQ restart, as the messages persist)
    vhost = str(settings.broker.url).rsplit("/", 1)[1]
    listed = subprocess.run([RABBITMQCTL, "-q", "list_queues", "-p", vhost, "name", "durable"], capture_output=True,
                            text=True, timeout=60).stdout.split("\n")
    ns = settings.broker.namespace
    mine = dict(line.split("\t") for line in listed if line.startswith(ns))
    assert mine == {ns: "true", f"{ns}.DQ": "true", f"{ns}.XQ": "true"}


def test_check_and_readyz_with_rabbitmq_alone(tmp_path: Path, rabbitmq_url: str) -> None:
    _config, env, settings = settings_for(tmp_path, rabbitmq_url)
    checked = run_dsar(["check", "--json"], env)
    systems = orjson.loads(checked.stdout)["systems"]
    assert systems["broker"]["ok"]
    # none consuming, and RabbitMQ cannot say whether one ever did: a warning, not a failure
    assert systems["workers"]["ok"] and systems["workers"]["warnings"][0].startswith("no worker is consuming")
    rt = Runtime(settings, env=env)
    try:
        ready = readyz(rt)
        assert ready.status_code == 503
        details = orjson.loads(ready.body)["error"]["details"]
        assert [d["check"] for d in details] == ["workers"]
    finally:
        rt.close()


def test_an_unreachable_rabbitmq_or_beat_redis_is_said_in_one_line(tmp_path: Path, rabbitmq_url: str) -> None:
    nowhere = f"amqp://guest:guest@127.0.0.1:{free_port()}/x"
    (tmp_path / "a").mkdir()
    _config, env, settings = settings_for(tmp_path / "a", nowhere)
    with pytest.raises(heartbeat.Unreachable, match=r"^rabbitmq broker unreachable$"):
        heartbeat.liveness(settings)
    assert heartbeat.for_status(settings, "running") == {
        "alive": None, "last_seen": None, "problem": "workers unknown: the broker is unreachable"}
    checked = run_dsar(["check", "--json"], env)
    assert checked.returncode == 1
    assert orjson.loads(checked.stdout)["systems"]["broker"]["problems"] == ["rabbitmq broker unreachable"]
    (tmp_path / "b").mkdir()
    _config, env, beside = settings_for(tmp_path / "b", rabbitmq_url,
                                        DSAR_BROKER_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(heartbeat.Unreachable, match=r"^redis \(broker.redis_url\) unreachable$"):
        heartbeat.liveness(beside)


def test_beats_beside_rabbitmq_live_in_the_redis_of_broker_redis_url(tmp_path: Path, rabbitmq_url: str,
                                                                      redis_url: str) -> None:
    import redis

    _config, _env, settings = settings_for(tmp_path, rabbitmq_url, DSAR_BROKER_REDIS_URL=redis_url)
    assert heartbeat.liveness(settings) == heartbeat.Liveness(0, None)  # history kept: "never ran" is known
    broker = make_broker(settings)
    beat = heartbeat.Heartbeat(interval=0.2, namespace=settings.broker.namespace, redis_url=settings.redis_url)
    try:
        beat.after_worker_boot(broker, None)
        found = heartbeat.liveness(settings)
        assert found is not None and found.alive == 1 and found.history
    finally:
        beat.before_worker_shutdown(broker, None)
        broker.close()
    gone = heartbeat.liveness(settings)
    assert gone is not None and gone.alive == 0 and gone.last_seen is not None
    assert gone.problem is not None and gone.problem.startswith("no worker alive since")
    client = redis.Redis.from_url(redis_url)
    assert {k.decode() for k in client.keys("*")} == {heartbeat.key(settings.broker.namespace)}
    client.close()


def test_the_vhost_fixture_deletes_only_its_own(tmp_path: Path) -> None:
    listed = lambda: set(subprocess.run([RABBITMQCTL, "-q", "list_vhosts"], capture_output=True,  # noqa: E731
                                        text=True, timeout=60).stdout.split())
    # RabbitMQ is shared: other programs may add or remove their own vhosts meanwhile, so only ours is compared
    before = listed()
    vhost = RabbitVhost()
    during = listed()
    assert vhost.name in during and vhost.name not in before and vhost.name.startswith("dsar-test-")
    vhost.stop()
    vhost.stop()  # once only
    after = listed()
    assert vhost.name not in after and (before & during) <= after  # nothing that was there went with it

"""broker.* settings (issue 14, points 2 and 3): RabbitMQ URLs, the namespace (validated, its default from the
ledger database's name), broker.redis_url beside RabbitMQ, and the broker each URL makes."""

from __future__ import annotations

from pathlib import Path

import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.stub import StubBroker

from discovery.engine.settings import ConfigError, default_namespace, load_settings
from workers.app import make_broker, worker_timeout_ms
from workers.broker import WakingRedisBroker

BASE = """
[ledger]
url = "{ledger}"
[broker]
url = "{broker}"
{extra}
[archive]
path = "var/archive"
staging_path = "var/staging"
[data_map]
path = "datamap.yaml"
"""
ENV = {"DSAR_SECRET_KEY": "0123456789abcdef0123"}


def load(tmp_path: Path, ledger: str = "sqlite:///var/x.db", broker: str = "stub://", extra: str = "",
         env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    path = tmp_path / "dsar.toml"
    path.write_text(BASE.format(ledger=ledger, broker=broker, extra=extra))
    return load_settings(path, {**ENV, **(env or {})})


@pytest.mark.parametrize(("ledger", "expected"), [
    ("sqlite:///var/dsar/ledger.db", "dsar"),
    ("postgresql+psycopg://dsar@db:5432/dsar_prod", "dsar_prod"),
    ("postgresql+psycopg://dsar@db/Billing.Ledger", "billing_ledger"),
    ("postgresql+psycopg://dsar@db/2024", "dsar_2024"),
    ("postgresql+psycopg://dsar@db/", "dsar"),
    ("mysql+pymysql://root@db/ledger", "ledger"),
    ("postgresql+psycopg://dsar@db/" + "x" * 60, "x" * 40),
])
def test_the_default_namespace_is_the_ledger_databases_name(ledger: str, expected: str) -> None:
    assert default_namespace(ledger) == expected


def test_namespace_default_explicit_and_from_the_environment(tmp_path: Path) -> None:
    assert load(tmp_path).broker.namespace == "dsar"
    pg = "postgresql+psycopg://dsar@db/dsar_staging"
    assert load(tmp_path, pg, env={"DSAR_LEDGER_URL": pg}).broker.namespace == "dsar_staging"
    assert load(tmp_path, extra='namespace = "tenant-a"').broker.namespace == "tenant-a"
    assert load(tmp_path, env={"DSAR_BROKER_NAMESPACE": "blue_2"}).broker.namespace == "blue_2"


@pytest.mark.parametrize("bad", ["Prod", "a b", "a:b", "a.b", "-x", "9lives", "x" * 41, "ø"])
def test_a_bad_namespace_is_refused_with_one_line(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, extra=f'namespace = "{bad}"')
    message = str(err.value)
    assert "'broker.namespace'" in message and "DSAR_BROKER_NAMESPACE" in message and "\n" not in message
    assert "a-z, 0-9, _ and -" in message


def test_rabbitmq_urls_and_the_redis_beside_them(tmp_path: Path) -> None:
    s = load(tmp_path, broker="amqp://guest:guest@127.0.0.1:5672/dsar")
    assert s.broker.kind == "rabbitmq" and s.redis_url is None
    s = load(tmp_path, broker="amqps://mq.example.net/prod", extra='redis_url = "redis://127.0.0.1:6379/2"')
    assert s.broker.kind == "rabbitmq" and s.redis_url == "redis://127.0.0.1:6379/2"
    s = load(tmp_path, broker="redis://127.0.0.1:6379/1", extra='redis_url = "redis://elsewhere/0"')
    assert s.broker.kind == "redis" and s.redis_url == "redis://127.0.0.1:6379/1"  # the broker's own Redis
    assert load(tmp_path).broker.kind == "stub"
    with pytest.raises(ConfigError, match=r"'broker.redis_url'"):
        load(tmp_path, broker="amqp://h/v", extra='redis_url = "amqp://h/v"')
    with pytest.raises(ConfigError, match=r"'broker.url'.*DSAR_BROKER_URL"):
        load(tmp_path, broker="kafka://h")


def test_each_url_makes_its_broker_under_the_namespace(tmp_path: Path) -> None:
    assert isinstance(make_broker(load(tmp_path)), StubBroker)
    redis_settings = load(tmp_path, broker="redis://127.0.0.1:1/0", extra='namespace = "blue"')
    broker = make_broker(redis_settings)
    assert isinstance(broker, WakingRedisBroker) and broker.namespace == "blue:dramatiq"  # every key under "blue:"
    assert broker.wake_key("blue") == "blue:dramatiq:__wake__.blue"  # the wake-ups too
    # Sends wake idle consumers: the timeout only bounds a stop (and the heartbeat of an idle Redis consumer)
    assert worker_timeout_ms(redis_settings) == redis_settings.worker.idle_ms == 2000
    assert worker_timeout_ms(redis_settings) < broker.heartbeat_timeout / 3
    rabbit_settings = load(tmp_path, broker="amqp://guest:guest@127.0.0.1:1/v")
    rabbit = make_broker(rabbit_settings)  # nothing connects until the first send
    assert isinstance(rabbit, RabbitmqBroker) and rabbit.confirm_delivery
    assert worker_timeout_ms(rabbit_settings) == 2000  # RabbitMQ pushes


def test_the_old_poll_ms_still_loads_and_idle_ms_is_bounded(tmp_path: Path) -> None:
    old = load(tmp_path, broker="redis://127.0.0.1:1/0", env={"DSAR_WORKER_POLL_MS": "50"})
    assert old.worker.poll_ms == 50 and worker_timeout_ms(old) == old.worker.idle_ms == 2000  # no longer used
    # past the heartbeat timeout an idle Redis consumer would look dead
    with pytest.raises(ConfigError, match=r"'worker.idle_ms'.*DSAR_WORKER_IDLE_MS"):
        load(tmp_path, env={"DSAR_WORKER_IDLE_MS": "60000"})

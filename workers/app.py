"""Process-wide wiring: settings -> broker -> runtime. Actors and commands get both from here.

The broker must exist before the actors are declared, so `workers.actors` calls
`ensure_broker()` at import; a command that wants another config calls `setup()` first.
"""

from __future__ import annotations

import threading

import dramatiq
from dramatiq.brokers.stub import StubBroker

from discovery.engine import db
from discovery.engine.runtime import Runtime
from discovery.engine.settings import Settings, load_settings
from workers.logs import configure_logging

_lock = threading.RLock()
_settings: Settings | None = None
_runtime: Runtime | None = None
_broker: dramatiq.Broker | None = None


def setup(settings: Settings, runtime: Runtime | None = None) -> Runtime:
    """Install settings, broker and runtime for this process; idempotent for the same settings."""
    global _settings, _runtime, _broker
    with _lock:
        configure_logging(settings.log_format)
        if _broker is None:
            _broker = make_broker(settings)
            dramatiq.set_broker(_broker)
        _settings = settings
        if _runtime is not None and runtime is not _runtime:
            _runtime.close()
        _runtime = runtime or Runtime(settings)
        if not os_env_flag("DSAR_SCHEMA_UPGRADED"):  # `dsar worker` upgrades once before its processes start
            db.upgrade(_runtime.engine)
        install_hooks(_runtime)
        return _runtime


def install_hooks(rt: Runtime) -> None:
    """What every process that runs requests does when one ends: report back (ticket notes, signed callbacks) and
    schedule the end of each legal hold. Idempotent."""
    from discovery.intake.report_back import report_back

    if report_back not in rt.completion_hooks:  # ticket notes and signed callbacks
        rt.completion_hooks.append(report_back)
    from discovery.schedule.scheduler import record_hold_ends, record_task_hold_ends

    # Each legal hold's end is a scheduled erasure, made as soon as the erase task applied the hold (a request
    # may wait weeks on a manual step); the completion hook only catches what the task hook missed.
    if record_task_hold_ends not in rt.task_hooks:
        rt.task_hooks.append(record_task_hold_ends)
    if record_hold_ends not in rt.completion_hooks:
        rt.completion_hooks.append(record_hold_ends)


def make_broker(settings: Settings) -> dramatiq.Broker:
    """The configured broker, not installed (tests use this to send to a worker's queue without binding one)."""
    kind = settings.broker.kind
    if kind == "stub":
        return StubBroker()
    if kind == "rabbitmq":
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        # Durable queues and persistent messages are Dramatiq's defaults there; confirms make a send return only
        # once RabbitMQ holds the message (and re-declare a queue deleted under us). A dead worker's unacked
        # messages return as soon as RabbitMQ notices its connection gone.
        return RabbitmqBroker(url=settings.broker.url, confirm_delivery=True)
    from workers.broker import WakingRedisBroker

    # A dead worker's unacked messages return to the queue after the heartbeat timeout. Dramatiq's keys (queues,
    # acks, its own heartbeats) and the wake lists under "<namespace>:dramatiq:", so deployments sharing a Redis
    # never meet. Each send wakes an idle consumer of its queue at once: no polling (workers/broker.py).
    heartbeat_ms = max(15_000, settings.worker.task_lease_seconds * 1000)
    return WakingRedisBroker(url=settings.broker.url, heartbeat_timeout=heartbeat_ms,
                             namespace=f"{settings.broker.namespace}:dramatiq")


def queue_name() -> str:
    """The one queue every actor of this deployment is on: broker.namespace."""
    return settings().broker.namespace


def worker_timeout_ms(settings: Settings) -> int:
    """How long an idle consumer or worker thread waits before it looks again by itself (worker.idle_ms). Neither
    broker makes a message wait for it: RabbitMQ pushes, and a send to Redis wakes an idle consumer at once
    (workers/broker.py). It bounds how soon a stopping worker notices, and how soon a Redis consumer takes a
    message nobody announced (one requeued from a dead worker) and heartbeats."""
    return settings.worker.idle_ms


def ensure_broker() -> dramatiq.Broker:
    global _broker
    with _lock:
        if _broker is None:
            settings = _settings or load_settings()
            _broker = make_broker(settings)
            dramatiq.set_broker(_broker)
        return _broker


def settings() -> Settings:
    global _settings
    with _lock:
        if _settings is None:
            _settings = load_settings()
        return _settings


def runtime() -> Runtime:
    with _lock:
        if _runtime is None:
            return setup(settings())
        return _runtime


def broker_trouble(exc: BaseException) -> bool:
    """The broker (Redis, RabbitMQ) or Dramatiq's client failed, not dsar. By the exception's module, so naming
    RabbitMQ's errors does not load pika (2 MB) into a process whose broker is Redis."""
    return type(exc).__module__.startswith(("redis", "dramatiq", "pika"))


def is_embedded() -> bool:
    return isinstance(ensure_broker(), StubBroker)


def os_env_flag(name: str) -> bool:
    import os

    return os.environ.get(name, "").lower() in ("1", "true", "yes")

"""A real Dramatiq worker (Redis broker, sweeper on) whose one system, `odd`, answers an erasure with a receipt the
ledger cannot store as JSON (a timestamp, as a timestamp restriction marker once did). Not a test module: run as
`python -m tests.integration.poison_worker CONFIG` by tests/integration/test_no_poison.py, which stops it."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from connectors.base import Connector, Health, Hits, Identities, Receipt, Record


class UnstorableReceipt(Receipt):
    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "restricted_at": datetime(2024, 5, 1, tzinfo=UTC)}


class Odd(Connector):
    name = "odd"
    entities = ("thing",)

    def locate(self, identities: Identities) -> Hits:
        return Hits(self.name, True, {"thing": 1})

    def export(self, identities: Identities, entities: Iterable[str] | None = None) -> Iterator[Record]:
        yield Record("thing", "1", {"colour": "green"})

    def erase(self, identities: Identities, entities: Iterable[str] | None = None) -> Receipt:
        return UnstorableReceipt(self.name, "erase", changed={"thing": 1})

    restrict = lift_restriction = erase

    def check(self) -> Health:
        return Health(self.name, True)


def main(config: str) -> None:
    import dramatiq

    from discovery.engine.settings import load_settings
    from workers import app

    rt = app.setup(load_settings(config))
    rt._connectors = {"odd": Odd()}
    from workers.actors import add_sweeper

    add_sweeper()
    worker = dramatiq.Worker(app.ensure_broker(), worker_threads=1, worker_timeout=50)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker.start()
    print("worker ready", flush=True)
    stop.wait()
    worker.stop()


if __name__ == "__main__":
    main(sys.argv[1])

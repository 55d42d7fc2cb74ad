"""A real Dramatiq worker (Redis broker, sweeper on) with two systems: `fine` answers at once, `hangs` never answers
a locate within the test (it sleeps for a minute). Not a test module: run as
`python -m tests.integration.hang_worker CONFIG` by tests/integration/test_phase_leases.py, which stops it."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator

from connectors.base import Connector, Health, Hits, Identities, Receipt, Record


class Fine(Connector):
    entities = ("thing",)

    def __init__(self, name: str = "fine") -> None:
        self.name = name

    def locate(self, identities: Identities) -> Hits:
        return Hits(self.name, True, {"thing": 1})

    def export(self, identities: Identities, entities: Iterable[str] | None = None) -> Iterator[Record]:
        yield Record("thing", "1", {"colour": "green"})

    def erase(self, identities: Identities, entities: Iterable[str] | None = None) -> Receipt:
        return Receipt(self.name, "erase", changed={"thing": 1})

    restrict = lift_restriction = erase

    def check(self) -> Health:
        return Health(self.name, True)


class Hangs(Fine):
    def __init__(self, seconds: float = 60.0) -> None:
        super().__init__("hangs")
        self.seconds = seconds

    def locate(self, identities: Identities) -> Hits:
        time.sleep(self.seconds)  # a vendor that accepts the connection and never answers
        return super().locate(identities)


def main(config: str) -> None:
    import dramatiq

    from discovery.engine.settings import load_settings
    from workers import app

    rt = app.setup(load_settings(config))
    rt._connectors = {"hangs": Hangs(), "fine": Fine()}
    from workers.actors import add_sweeper

    add_sweeper()
    worker = dramatiq.Worker(app.ensure_broker(), worker_threads=2, worker_timeout=50)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker.start()
    print("worker ready", flush=True)
    stop.wait()
    worker.stop(timeout=2000)


if __name__ == "__main__":
    main(sys.argv[1])

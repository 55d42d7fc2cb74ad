"""An in-process Dramatiq worker for the embedded `stub://` broker: the CLI command or API server is its own worker.

Kept apart from the CLI and the API so both can use it without importing each other; the actors
are imported only when a worker is really started (importing them sets up the broker).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

IN_PROCESS_TIMEOUT_MS = 100


@contextmanager
def in_process_worker_if_embedded(embedded: bool) -> Iterator[None]:
    """With the in-process broker, this command is its own worker (and sweeper)."""
    if not embedded:
        yield
        return
    import dramatiq

    from workers import app
    from workers.actors import add_sweeper

    add_sweeper()
    # The stub broker hands a message to a waiting consumer at once; the timeout only bounds how long the stop at
    # the end of the command waits for the threads to notice, so it stays short (a command should not linger).
    worker = dramatiq.Worker(app.ensure_broker(), worker_threads=app.settings().worker.threads,
                             worker_timeout=IN_PROCESS_TIMEOUT_MS)
    worker.start()
    try:
        yield
    finally:
        worker.stop()

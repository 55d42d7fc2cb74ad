"""Helpers shared by tests that drive the pipeline in-process."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from discovery.engine import db, pipeline
from discovery.engine.runtime import Runtime
from discovery.engine.settings import load_settings

if TYPE_CHECKING:
    from sandbox.launch import Sandbox


class SyncWakeups:
    """Runs wake-ups in this thread, in order, the way the broker would deliver them."""

    def __init__(self, rt: Runtime | None = None) -> None:
        self.rt = rt
        self.queue: deque[tuple[str, Any]] = deque()

    def discover(self, request_id: str) -> None:
        self.queue.append(("discover", request_id))

    def execute(self, task_id: int) -> None:
        self.queue.append(("execute", task_id))

    def merge(self, request_id: str) -> None:
        self.queue.append(("merge", request_id))

    def drain(self) -> None:
        assert self.rt is not None
        while self.queue:
            kind, arg = self.queue.popleft()
            if kind == "discover":
                pipeline.run_discovery(self.rt, self, arg)
            elif kind == "execute":
                pipeline.execute_task(self.rt, self, arg)
            else:
                pipeline.merge_request(self.rt, arg)


def rows(engine: sa.Engine, sql: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(sql))]


@contextmanager
def sandbox_world(tmp_path: Path, now: Callable[[], datetime] | None = None,
                  seed: Callable[[Sandbox], object] | None = None) -> Iterator[dict[str, Any]]:
    """Every system over real sockets: the sample account database (SQLite) and the four vendor simulators,
    a SQLite ledger, and a runtime driven in-process (`wake.drain()` runs what the broker would deliver).
    `seed` shapes the simulators before the runtime starts (e.g. a conversation two people share)."""
    from sandbox.launch import Sandbox as Sandboxes
    from tests.conftest import SECRET, seed_accounts, write_config

    with Sandboxes(tmp_path / "sandbox") as sandbox:
        if seed is not None:
            seed(sandbox)
        accounts_url = f"sqlite:///{tmp_path / 'accounts.db'}"
        accounts = seed_accounts(accounts_url)
        config = write_config(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}")
        environ = {"DSAR_SECRET_KEY": SECRET, "DSAR_ACCOUNTS_DB_URL": accounts_url,
                   "DSAR_DATA_MAP_PATH": str(sandbox.datamap_path), **sandbox.env()}
        rt = Runtime(load_settings(config, environ), env=environ, now=now)
        db.upgrade(rt.engine)
        try:
            yield {"rt": rt, "wake": SyncWakeups(rt), "sandbox": sandbox, "accounts": accounts}
        finally:
            rt.close()
            accounts.dispose()


def wait_until(check: Callable[[], Any], timeout: float = 60, what: str = "condition", every: float = 0.2) -> Any:
    """`check()`'s first truthy value within `timeout` seconds, else an AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")

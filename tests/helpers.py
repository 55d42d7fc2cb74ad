"""Helpers shared by tests that drive the pipeline in-process."""

from __future__ import annotations

from collections import deque
from typing import Any

import sqlalchemy as sa

from discovery.engine import pipeline
from discovery.engine.runtime import Runtime


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

"""Everything one process needs to run requests: settings, ledger, data map, connectors.

Built once per process (CLI command, worker, test) and passed to the domain functions;
connectors are created (and the data map so validated) when it is built and kept, so their HTTP
sessions and database pools are reused across tasks.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from connectors.base import Connector, ConnectorContext, EntityPolicy
from connectors.sql_pool import autocommit_engine
from discovery.bundle.staging import Staging
from discovery.engine import db
from discovery.engine.datamap import DataMap, DataMapError, load_data_map
from discovery.engine.ledger import Request
from discovery.engine.ledger_rows import AnyRow
from discovery.engine.settings import Settings


@dataclass(frozen=True)
class Ended:
    """A request that ended, as the completion hooks are told of it: what they need to decide whether they have
    anything to do, so a hook with nothing to do costs no query (most requests have no ticket to report to)."""

    id: str
    type: str
    status: str
    source: str
    ticket_ref: str | None = None
    callback_url: str | None = None

    @classmethod
    def of(cls, req: Request | AnyRow) -> Ended:
        return cls(req.id, str(req.type), str(req.status), req.source, req.ticket_ref, req.callback_url)


@dataclass(frozen=True)
class TaskOutcome:
    """A task whose outcome was just stored, as the task hooks are told of it (its row as stored)."""

    id: int
    request_id: str
    system: str
    action: str
    status: str
    result: dict[str, Any] | None


class Runtime:
    def __init__(self, settings: Settings, env: Mapping[str, str] | None = None,
                 now: Callable[[], datetime] | None = None) -> None:
        self.settings = settings
        self.env = os.environ if env is None else env
        self.now = now
        self.engine = db.make_engine(settings.ledger.url)
        # the hot path's single-statement steps (intake, a claim, the merge's outcome) and reads: PostgreSQL only
        self.autocommit: sa.Engine | None = autocommit_engine(self.engine)
        self.sessions: sessionmaker[Session] = db.session_factory(self.engine)
        self.data_map: DataMap = load_data_map(settings.data_map.path)
        self.staging = Staging(settings.archive.staging_path)
        self.ctx = ConnectorContext(env=self.env, redis_url=settings.redis_url, namespace=settings.broker.namespace,
                                    secret_key=settings.secret_key, now=now)
        # The whole data map is checked here, when a command or worker starts, before anything is written: every
        # enabled system's settings are validated and its connector built (nothing is connected to), so a bad map
        # is one DataMapError naming system and key now, not a request stuck half-way later.
        self._connectors: dict[str, Connector] | None = self.data_map.connectors(self.ctx)
        # Called with (runtime, Ended) once a request has ended: ticket notes, callbacks, scheduling a hold's end.
        # A failing hook is logged and audited; it never undoes the request.
        self.completion_hooks: list[Callable[[Runtime, Ended], None]] = []
        # Called with (runtime, TaskOutcome) once a task's outcome is stored (DONE, FAILED, awaiting a manual step
        # ...): scheduling a legal hold's end as soon as the hold is applied. Same failure rule as above.
        self.task_hooks: list[Callable[[Runtime, TaskOutcome], None]] = []
        self._lock = threading.Lock()
        self._memo: dict[tuple[Any, ...], Any] = {}

    def memoized(self, key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
        """What `make` derives from the data map alone (entity policies, the bundle page's texts per request type
        and language), made once per process: the map does not change under a running Runtime."""
        try:
            return self._memo[key]
        except KeyError:
            value = self._memo[key] = make()  # two threads may both make it once; either copy is the same
            return value

    def policies(self) -> dict[str, dict[str, EntityPolicy]]:
        """Each enabled system's entity policies (what the planner and the bundle page read), made once."""
        return self.memoized(("policies",), lambda: {name: c.policies() for name, c in self.connectors().items()})

    def connectors(self) -> dict[str, Connector]:
        with self._lock:
            if self._connectors is None:
                self._connectors = self.data_map.connectors(self.ctx)
            return self._connectors

    def connector(self, system: str) -> Connector:
        conns = self.connectors()
        if system not in conns:
            raise DataMapError(f"system '{system}' is not enabled in the data map {self.data_map.path}")
        return conns[system]

    def subject_hash(self, email: str) -> str:
        """Keyed hash of the normalised e-mail: links audit events to a subject without naming them."""
        return hmac.new(self.settings.secret_key, email.encode(), hashlib.sha256).hexdigest()

    def clock(self) -> datetime:
        return self.ctx.clock()  # type: ignore[no-any-return]

    def close(self) -> None:
        with self._lock:
            for c in (self._connectors or {}).values():
                c.close()
            self._connectors = None
            self._memo.clear()
        self.engine.dispose()

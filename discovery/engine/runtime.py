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
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from connectors.base import Connector, ConnectorContext
from discovery.bundle.staging import Staging
from discovery.engine import db
from discovery.engine.datamap import DataMap, DataMapError, load_data_map
from discovery.engine.settings import Settings


class Runtime:
    def __init__(self, settings: Settings, env: Mapping[str, str] | None = None,
                 now: Callable[[], datetime] | None = None) -> None:
        self.settings = settings
        self.env = os.environ if env is None else env
        self.now = now
        self.engine = db.make_engine(settings.ledger.url)
        self.sessions: sessionmaker[Session] = db.session_factory(self.engine)
        self.data_map: DataMap = load_data_map(settings.data_map.path)
        self.staging = Staging(settings.archive.staging_path)
        self.ctx = ConnectorContext(env=self.env, redis_url=settings.redis_url, namespace=settings.broker.namespace,
                                    secret_key=settings.secret_key, now=now)
        # The whole data map is checked here, when a command or worker starts, before anything is written: every
        # enabled system's settings are validated and its connector built (nothing is connected to), so a bad map
        # is one DataMapError naming system and key now, not a request stuck half-way later.
        self._connectors: dict[str, Connector] | None = self.data_map.connectors(self.ctx)
        # Called with (runtime, request_id) once a request is completed: ticket notes, callbacks,
        # scheduling a hold's end. A failing hook is logged and audited; it never undoes the request.
        self.completion_hooks: list[Callable[[Runtime, str], None]] = []
        # Called with (runtime, task_id) once a task's outcome is stored (DONE, FAILED, awaiting a manual step
        # ...): scheduling a legal hold's end as soon as the hold is applied. Same failure rule as above.
        self.task_hooks: list[Callable[[Runtime, int], None]] = []
        self._lock = threading.Lock()

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
        self.engine.dispose()

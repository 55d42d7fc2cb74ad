"""One SqlConnector serves every thread of a worker process (the fault campaign: a restarted worker with a backlog
ran eight locates at once on a fresh connector, and PostgreSQL refused queries that named a table twice)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from connectors.base import ConnectorContext, Hits, Identities, Identity, IdentityType
from connectors.sql import SqlConnector

pytestmark = pytest.mark.integration

MAP = {"kind": "sql", "url_env": "THREADS_DB_URL", "entities": {
    "users": {"table": "users", "identities": {"email": "email"}, "fields": {"email": "contact"},
              "erase": {"strategy": "delete"}},
    "orders": {"table": "orders", "references": {"user_id": "users.id"}, "fields": {"total": "billing"},
               "erase": {"strategy": "delete"}},
    "lines": {"table": "lines", "references": {"order_id": "orders.id"}, "fields": {"text": "billing"},
              "erase": {"strategy": "delete"}},
}}


def test_eight_threads_locating_on_a_fresh_connector_all_succeed(pg_database: Callable[[], str]) -> None:
    url = pg_database()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE users (id int PRIMARY KEY, email text)")
        conn.exec_driver_sql("CREATE TABLE orders (id int PRIMARY KEY, user_id int REFERENCES users, total int)")
        conn.exec_driver_sql("CREATE TABLE lines (id int PRIMARY KEY, order_id int REFERENCES orders, text text)")
        conn.exec_driver_sql("INSERT INTO users VALUES (1, 'a@example.com'), (2, 'b@example.com')")
        conn.exec_driver_sql("INSERT INTO orders VALUES (10, 1, 5), (20, 2, 7)")
        conn.exec_driver_sql("INSERT INTO lines VALUES (100, 10, 'x'), (200, 20, 'y')")
    engine.dispose()
    for _trial in range(5):  # each trial a fresh connector: nothing reflected yet
        connector = SqlConnector.from_settings("shop", MAP, ConnectorContext(env={"THREADS_DB_URL": url}))
        start = threading.Barrier(8)
        results: list[Hits | BaseException] = []

        def locate(connector: SqlConnector = connector, start: threading.Barrier = start,
                   results: list[Hits | BaseException] = results) -> None:
            start.wait()
            try:
                results.append(connector.locate(Identities([Identity(IdentityType.EMAIL, "a@example.com")])))
            except BaseException as exc:  # collected and asserted below
                results.append(exc)

        threads = [threading.Thread(target=locate) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        connector.close()
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, errors[0]
        assert all(isinstance(r, Hits) and r.counts == {"users": 1, "orders": 1, "lines": 1} for r in results)

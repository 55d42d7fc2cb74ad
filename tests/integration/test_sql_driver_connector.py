"""The SQL connector's kept locate and export statements on the driver's cursor (connectors/sql_driver.py) find and
return what SQLAlchemy's own execution of them does, on PostgreSQL.

The same connector work runs twice, on the driver and with it turned off (every statement through SQLAlchemy): a
table with a column of every type issue 10 lists (the result processors are chosen per type and per the type code
the driver reports), and every person of every fixture schema of "only the subject's data" (counts, identifiers
learned with their provenance, rows left alone and why, exported rows).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from connectors import sql_driver
from connectors.base import Hits, Record
from connectors.sql import SqlConnector
from discovery.engine.discover import discover
from tests.integration.test_sql_types import SUBJECT, connector, create, exported
from tests.integration.test_subject_only import built, seed
from tests.subject_schemas import SCENARIOS, SYSTEM

pytestmark = pytest.mark.integration


@pytest.fixture
def driver_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The SQL of every statement the driver ran (its plans), recorded."""
    ran: list[str] = []
    fetch = sql_driver._fetch
    monkeypatch.setattr(sql_driver, "_fetch", lambda cursor, plan, *rest: ran.append(plan.sql) or
                        fetch(cursor, plan, *rest))
    return ran


def off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sql_driver, "_plan", lambda *_a: None)


def test_every_column_type_exports_the_same_on_the_driver(pg_database: Callable[[], str], driver_runs: list[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    url = pg_database()
    create(url, "postgresql")
    with connector(url, "postgresql") as conn:
        on_driver = exported(conn, SUBJECT)
        assert any(sql.startswith("SELECT") and "ANY" in sql for sql in driver_runs), driver_runs
        off(monkeypatch)
        driver_runs.clear()
        through_sqlalchemy = exported(conn, SUBJECT)
        assert not driver_runs
    assert {k: repr(v) for k, v in on_driver.items()} == {k: repr(v) for k, v in through_sqlalchemy.items()}


def found(hits: Hits) -> dict[str, Any]:
    return {"counts": hits.counts, "skipped": hits.skipped, "touches": {k: sorted(v) for k, v in hits.touches.items()},
            "learned": sorted((str(i.type), i.value, i.via or "") for i in hits.learned)}


def records(items: list[Record]) -> list[tuple[str, str, dict[str, Any]]]:
    return sorted((r.entity, r.record_id, dict(r.fields)) for r in items)


@pytest.mark.parametrize("scenario_name", list(SCENARIOS))
def test_every_person_is_found_and_exported_the_same_on_the_driver(
        pg_database: Callable[[], str], driver_runs: list[str], monkeypatch: pytest.MonkeyPatch,
        scenario_name: str) -> None:
    scenario = SCENARIOS[scenario_name]()

    def work(connector: SqlConnector) -> dict[str, Any]:
        out = {}
        for person in scenario.people:
            identities = discover({SYSTEM: connector}, seed(scenario, person)).identities
            out[person] = (found(connector.locate(identities)), records(list(connector.export(identities))))
        return out

    with built(pg_database, scenario) as (connector, _engine):
        on_driver = work(connector)
        assert driver_runs
        off(monkeypatch)
        driver_runs.clear()
        through_sqlalchemy = work(connector)
        assert not driver_runs
    assert on_driver == through_sqlalchemy

"""How the SQL connector reads an export query (connectors.sql._rows): a handful of rows in one plain SELECT, more than
a batch streamed through a server-side cursor, and in both cases every row once, in key order. SQLite in memory: the
statements sent are what is checked; tests/integration/test_pipeline_postgres.py exports through PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from connectors.sql import _Paged, _rows


@pytest.fixture
def sent() -> list[dict[str, Any]]:
    return []


def _table(rows: int, sent: list[dict[str, Any]]) -> tuple[sa.Engine, sa.Table]:
    engine = sa.create_engine("sqlite://")
    md = sa.MetaData()
    table = sa.Table("t", md, sa.Column("id", sa.Integer, primary_key=True), sa.Column("v", sa.String))
    md.create_all(engine)
    if rows:
        with engine.begin() as conn:
            # inserted in reverse, so the order seen is the query's ORDER BY, not the insertion order
            conn.execute(table.insert(), [{"id": i, "v": f"v{i}"} for i in reversed(range(rows))])

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _record(_conn: Any, _cursor: Any, statement: str, _params: Any, context: Any, _many: bool) -> None:
        sent.append({"sql": statement, "stream": bool(context.execution_options.get("stream_results"))})

    return engine, table


@pytest.mark.parametrize("rows", [0, 1, 7, 500])
def test_rows_that_fit_in_a_batch_are_one_plain_select(rows: int, sent: list[dict[str, Any]]) -> None:
    engine, table = _table(rows, sent)
    with engine.connect() as conn:
        got = [r.id for r in _rows(conn, _Paged.of(sa.select(table).order_by(table.c.id), batch=500))]
    assert got == list(range(rows))
    assert len(sent) == 1 and not sent[0]["stream"]
    assert "LIMIT" in sent[0]["sql"]


def test_more_rows_than_a_batch_are_streamed_all_of_them_in_order(sent: list[dict[str, Any]]) -> None:
    engine, table = _table(1203, sent)
    with engine.connect() as conn:
        got = [r.id for r in _rows(conn, _Paged.of(sa.select(table).order_by(table.c.id), batch=500))]
    assert got == list(range(1203))  # each row once: the probe's rows are not yielded twice
    assert [s["stream"] for s in sent] == [False, True]
    assert "LIMIT" not in sent[1]["sql"]

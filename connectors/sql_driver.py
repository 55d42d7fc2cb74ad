"""Prebuilt SQLAlchemy Core statements run on the database driver's cursor (PostgreSQL).

Executing an already compiled statement through SQLAlchemy still costs about 0.1 ms of CPU (an execution context,
parameter processing, a CursorResult and its metadata) beside the driver's own, and an access request runs some
twenty-five statements that were built once: the ledger's hot path (discovery/engine/ledger_rows.py) and the SQL
connector's locate and export statements (issue 15). Here each such statement is compiled once per dialect and set
of parameter keys, and run on the DBAPI cursor of the caller's Connection, inside its transaction, doing what
SQLAlchemy's execution does for it: the same SQL, bind processors and Python-side column defaults (`updated_at`'s
onupdate), the same result processors (chosen by the type codes the cursor reports, as SQLAlchemy chooses them),
errors raised as SQLAlchemy's (IntegrityError, OperationalError ...) with a dead connection invalidated, and
`before_cursor_execute` listeners told.

Only statements that live as long as the process may come here (plans are kept by the statement's identity). What
this does not handle goes through SQLAlchemy unchanged: every dialect but PostgreSQL, positional or expanding
parameters, streamed results, a default that needs its execution context. tests/integration/test_ledger_driver.py
and test_sql_driver_connector.py run the same work both ways and compare the results.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.compiler import SQLCompiler

Params = Mapping[str, Any]


class Rows:
    """What a statement returned, in order; each row a named tuple read by attribute (and `_mapping`), as
    SQLAlchemy's rows are."""

    __slots__ = ("_rows",)

    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def all(self) -> list[Any]:
        return list(self._rows)

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def one(self) -> Any:
        if len(self._rows) != 1:
            raise sa.exc.NoResultFound("no row") if not self._rows else sa.exc.MultipleResultsFound("several rows")
        return self._rows[0]

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalars(self) -> list[Any]:
        return [row[0] for row in self._rows]


@dataclass
class _Plan:
    """One statement compiled for one dialect and set of parameter keys, with what its execution needs."""

    statement: sa.Executable  # held: plans are found by its id, which must not be reused
    compiled: SQLCompiler
    sql: str
    defaults: tuple[tuple[str, Any, bool], ...]  # (parameter, scalar value or callable, callable?) for keys not given
    binds: tuple[tuple[str, Any], ...]  # (parameter, bind processor)
    row: Any  # a named tuple class for returned rows, or None
    types: tuple[Any, ...]  # each returned column's SQLAlchemy type
    results: dict[tuple[Any, ...], tuple[Callable[[Any], Any] | None, ...]] = field(default_factory=dict)


_PLANS: dict[tuple[int, str, frozenset[str]], _Plan | None] = {}
_MAX_PLANS = 4096


def execute(conn: sa.Connection, stmt: sa.Executable, params: Params | Sequence[Params]) -> Rows | sa.CursorResult[Any]:
    """`conn.execute(stmt, params)`, on the driver's cursor where this module can (see the module's text)."""
    many = isinstance(params, list | tuple)
    if conn.dialect.name != "postgresql" or (many and not params):
        return conn.execute(stmt, params)
    rows: list[Params] = list(params) if many else [params]  # type: ignore[list-item, arg-type]
    plan = _plan(stmt, conn.dialect, rows[0])
    if plan is None:
        return conn.execute(stmt, params)
    values = [_values(plan, row) for row in rows]
    cursor = _cursor(conn)
    try:
        if conn._has_events or conn.engine._has_events:
            conn.dispatch.before_cursor_execute(conn, cursor, plan.sql, values if many else values[0], None, many)
        try:
            several = len(values) > 1  # psycopg runs executemany in pipeline mode: dearer for a single row
            if several:
                cursor.executemany(plan.sql, values, returning=plan.row is not None)
            else:
                cursor.execute(plan.sql, values[0])
            got = _fetch(cursor, plan, several, conn.dialect)
        except conn.dialect.loaded_dbapi.Error as exc:  # as SQLAlchemy raises it: IntegrityError, OperationalError ...
            gone = conn.dialect.is_disconnect(exc, conn.connection.dbapi_connection, cursor)
            error = sa.exc.DBAPIError.instance(plan.sql, values, exc, conn.dialect.loaded_dbapi.Error,
                                               hide_parameters=conn.engine.hide_parameters, connection_invalidated=gone,
                                               dialect=conn.dialect, ismulti=many)
            if gone:  # the pool must not hand this connection out again
                conn.invalidate(exc)
            raise error from exc
    except BaseException:
        cursor.close()  # whatever it holds goes with it; the next statement makes a fresh one
        raise
    return Rows(got)


def scalars(conn: sa.Connection, stmt: sa.Executable, params: Params | Sequence[Params]) -> list[Any]:
    """The first column of every row `execute` returns."""
    result = execute(conn, stmt, params)
    return result.scalars() if isinstance(result, Rows) else list(result.scalars())


_CURSOR = "dsar_driver_cursor"


def _cursor(conn: sa.Connection) -> Any:
    """The driver connection's cursor, kept with it in the pool's record: making one per statement cost 40 us."""
    info = conn.connection.info
    driver = conn.connection.driver_connection
    held = info.get(_CURSOR)
    if held is not None and held[0] is driver and not held[1].closed:
        return held[1]
    cursor = driver.cursor()  # type: ignore[union-attr]
    info[_CURSOR] = (driver, cursor)
    return cursor


def _fetch(cursor: Any, plan: _Plan, many: bool, dialect: sa.Dialect) -> list[Any]:
    if plan.row is None:
        return []
    raw: list[Any] = []
    if many:  # one result set per parameter set, in order
        while True:
            raw.extend(cursor.fetchall())
            if not cursor.nextset():
                break
    else:
        raw = cursor.fetchall()
    # The type codes straight from the result: psycopg's `description` builds a Column object per column on every
    # read (6 us for eight columns against 0.6 us), and a request reads some thirty results.
    result = cursor.pgresult
    codes = tuple(result.ftype(i) for i in range(result.nfields)) if result is not None else ()
    results = plan.results.get(codes)
    if results is None:  # as SQLAlchemy picks them: by each column's type and the type code the driver reports
        results = plan.results[codes] = tuple(
            t._cached_result_processor(dialect, code) for t, code in zip(plan.types, codes, strict=True))
    make = plan.row
    return [make(*(p(v) if p is not None else v for p, v in zip(results, r, strict=True))) for r in raw]


def _values(plan: _Plan, given: Params) -> MutableMapping[str, Any]:
    values = plan.compiled.construct_params(given, escape_names=False)  # type: ignore[arg-type]
    for key, default, is_callable in plan.defaults:
        values[key] = default(None) if is_callable else default
    for key, process in plan.binds:
        if key in values:
            values[key] = process(values[key])
    return values


def _plan(stmt: sa.Executable, dialect: sa.Dialect, params: Params) -> _Plan | None:
    key = (id(stmt), dialect.name, frozenset(params))
    try:
        return _PLANS[key]
    except KeyError:
        pass
    if len(_PLANS) >= _MAX_PLANS:  # only kept statements come here; a bound against misuse, not an LRU
        _PLANS.clear()
    plan = _PLANS[key] = _compile(stmt, dialect, list(params))
    return plan


def _compile(stmt: sa.Executable, dialect: sa.Dialect, keys: list[str]) -> _Plan | None:
    options = stmt.get_execution_options()
    if options.get("stream_results") or options.get("yield_per"):
        return None
    compiled = stmt.compile(dialect=dialect, column_keys=keys)  # type: ignore[attr-defined]
    assert isinstance(compiled, SQLCompiler)
    if compiled.positional or compiled.literal_execute_params or compiled.post_compile_params \
            or compiled.schema_translate_map or compiled.escaped_bind_names:
        return None
    prefetch = compiled.insert_prefetch or compiled.update_prefetch
    defaults: list[tuple[str, Any, bool]] = []
    for column in prefetch:
        arg, is_scalar, is_callable, is_sentinel = (
            column._default_description_tuple if compiled.insert_prefetch else column._onupdate_description_tuple)
        if is_sentinel or not (is_scalar or is_callable):
            return None
        defaults.append((column.key, arg, bool(is_callable)))
    columns = compiled._result_columns
    row = _row_class(tuple(c.keyname for c in columns)) if columns else None
    return _Plan(stmt, compiled, compiled.string, tuple(defaults), tuple(compiled._bind_processors.items()), row,
                 tuple(c.type for c in columns))


def _row_class(names: tuple[str, ...]) -> Any:
    base = collections.namedtuple("Row", names, rename=True)  # type: ignore[misc]

    class Row(base):  # type: ignore[misc, valid-type]
        __slots__ = ()

        @property
        def _mapping(self) -> dict[str, Any]:  # as SQLAlchemy's Row: the columns by their names
            return dict(zip(names, self, strict=True))

    return Row

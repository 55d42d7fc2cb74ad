"""`dsar check` for a SQL system: the data map against the live schema, before any request runs.

Problems make the system unhealthy (a request would fail or do harm); warnings deserve a look. A map
that passes must not crash an access, erasure or restriction, so beside the schema's shape the check
tries what those requests will do, without changing anything:

- every mask value and literal restriction marker, against its column's type (`sql_values` says why a
  value does not fit, and the database is asked too: a PostgreSQL EXPLAIN of the very UPDATE, a
  MariaDB CAST whose warnings count);
- every reference's two columns, for types the lookup `child IN (SELECT parent ...)` can compare;
- every entity's key, for a primary key or unique constraint (masking goes row by row, by key);
- a sample of every mapped table, through the export's serialisation (`sql_values.jsonable`, then
  orjson as the staging files write it).

All of it runs in read-only transactions that are rolled back. Lines name entity, table and column,
and types, never a row's value.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError, StatementError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

from connectors import sql_values
from connectors.base import Health, IdentityType, PermanentError
from connectors.redact import redact
from connectors.sql_map import EntitySpec, Fixed, Reference, risks

if TYPE_CHECKING:
    from connectors.sql import SqlConnector

# Rows of each table tried through the export's serialisation: more than one, so a column that is
# empty in the first row is still tried, and few enough that a large table costs nothing.
PROBE_ROWS = 20
# the key the check hashes mask values with (the values are thrown away; any key gives the same shape)
_CHECK_KEY = b"dsar-check"


def check_system(self: SqlConnector) -> Health:
    health = Health(system=self.name, ok=True)
    try:
        tables: dict[str, sa.Table] = {}
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
            inspector = sa.inspect(conn)
            metadata = sa.MetaData()
            for name, entity in self.spec.entities.items():
                table = _check_entity(self, conn, inspector, metadata, name, entity, health)
                if table is not None:
                    tables[name] = table
            health.warnings += risks(self.spec)
            for name, entity in self.spec.entities.items():
                if entity.retention and name in tables:
                    _check_retention(inspector, name, entity, tables, health)
            if self.spec.inactivity and inspector.has_table(self.spec.entities[self.spec.inactivity.entity].table):
                try:
                    self._activity(self._table(self.spec.inactivity.entity, conn))
                except PermanentError as exc:
                    health.problems.append(exc.message)
        with read_only(self.engine) as conn:
            for name, entity in self.spec.entities.items():
                if name in tables:
                    _check_values(self, conn, name, entity, tables[name], health)
                    _check_references(conn, name, entity, tables, health)
            for name, table in tables.items():
                _probe_export(conn, name, self.spec.entities[name], table, health)
    except OperationalError as exc:
        from connectors.sql import db_reason

        health.problems.append(f"cannot connect to the database: {db_reason(exc)}")
    if self.s3:
        health.problems += self.s3.problems({self._bucket(e) for e in self.spec.entities.values() if e.files})
    health.ok = not health.problems
    return health


@contextmanager
def read_only(engine: Engine) -> Iterator[Connection]:
    """A connection whose transaction the database itself keeps read-only, rolled back at the end.

    SQLite has no read-only transactions; the check sends it nothing but SELECTs.
    """
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")  # the first statement of the transaction
        elif conn.dialect.name in ("mysql", "mariadb"):
            conn.exec_driver_sql("START TRANSACTION READ ONLY")
        try:
            yield conn
        finally:
            conn.rollback()


# -- the schema's shape ---------------------------------------------------------------------------

def key_columns(entity: EntitySpec) -> list[str]:
    """The entity's key: a composite key's columns where the map has them (`key_columns()`), else `primary_key`."""
    columns = getattr(entity, "key_columns", None)
    return list(columns()) if callable(columns) else [str(entity.primary_key)]


def _links(entity: EntitySpec) -> list[tuple[str, Reference]]:
    """(column, reference) for every reference, whether a column holds one reference or several."""
    links = getattr(entity, "links", None)
    if callable(links):
        return list(links())
    refs: Any = entity.references
    return [(column, ref) for column, value in refs.items() for ref in (value if isinstance(value, list) else [value])]


def _identity_columns(entity: EntitySpec) -> list[tuple[IdentityType, str]]:
    columns = getattr(entity, "identity_columns", None)
    if callable(columns):
        return list(columns())
    identities: Any = entity.identities
    return [(t, c) for t, value in identities.items() for c in (value if isinstance(value, list) else [value])]


def _check_entity(self: SqlConnector, conn: Connection, inspector: Any, metadata: sa.MetaData, name: str,
                  entity: EntitySpec, health: Health) -> sa.Table | None:
    """The table as the database has it (None when it does not exist), after checking the map's columns."""
    if not inspector.has_table(entity.table):
        health.problems.append(f"entity {name}: table '{entity.table}' does not exist")
        return None
    columns = {c["name"]: c for c in inspector.get_columns(entity.table)}
    for col in sorted(entity.columns() - set(columns)):
        health.problems.append(f"entity {name}: column '{col}' does not exist in table {entity.table}")
    uniques = _unique_sets(inspector, entity.table)
    unique_cols = {tuple(u) for u in uniques[1:]}  # the primary key is uniques[0]
    for col, method in entity.erase.mask.items():
        info = columns.get(col)
        if info is None:
            continue
        if method == "null" and not info.get("nullable", True):
            health.problems.append(f"entity {name}: masks NOT NULL column {col} with null")
        if (isinstance(method, Fixed) or method == "redact") and (col,) in unique_cols:
            health.problems.append(f"entity {name}: column {col} is unique; mask it with 'hash', not one value")
    key = key_columns(entity)
    if set(key) <= set(columns) and not any(u and set(u) <= set(key) for u in uniques):
        health.problems.append(
            f"entity {name}: key {', '.join(key)} of table {entity.table} has no primary key or unique constraint "
            "in the database; masking by key would change several rows")
    mapped = entity.columns()
    for col in sorted(set(columns) - mapped):
        health.warnings.append(f"entity {name}: column {entity.table}.{col} is not in the data map (not exported)")
    _check_identity_indexes(self, inspector, name, entity, health)
    return sa.Table(entity.table, metadata, autoload_with=conn)


def _check_retention(inspector: Any, name: str, entity: EntitySpec, tables: dict[str, sa.Table],
                     health: Health) -> None:
    """A retention rule's date columns exist and hold dates or timestamps (a text date would compare as text);
    a warning when the date has no index (a daily run would read the whole table to find the few due)."""
    rule = entity.retention
    assert rule is not None
    parent = rule.parent()
    owner, column = parent if parent else (name, rule.from_)
    places = [(owner, column), *([(name, rule.fallback)] if rule.fallback else [])]
    for where, col in places:
        table = tables.get(where)
        if table is None or col not in table.c:
            if table is not None:
                health.problems.append(f"entity {name}: retention column '{col}' does not exist in table {table.name}")
            continue
        family = sql_values.kind(table.c[col])
        if family not in ("date", "datetime"):
            shown = _sql_type_name(table.c[col])
            health.problems.append(f"entity {name}: retention column {table.name}.{col} is {shown}, not a date or "
                                   "timestamp")
    table = tables.get(owner)
    if table is not None and column in table.c and not any(
            (ix.get("column_names") or [None])[0] == column for ix in inspector.get_indexes(table.name)) \
            and column not in (inspector.get_pk_constraint(table.name).get("constrained_columns") or [])[:1]:
        health.warnings.append(f"entity {name}: retention column {table.name}.{column} has no index; each retention "
                               "run reads the whole table")


def _sql_type_name(column: sa.Column[Any]) -> str:
    try:
        return str(column.type.compile())
    except Exception:  # a type without a generic spelling
        return type(column.type).__name__


def _unique_sets(inspector: Any, table: str) -> list[list[str]]:
    """Column sets the database keeps unique: the primary key's first (empty if none), then unique
    constraints and unique indexes on plain columns."""
    out = [list(inspector.get_pk_constraint(table).get("constrained_columns") or [])]
    out += [list(u["column_names"]) for u in inspector.get_unique_constraints(table)]
    out += [list(i["column_names"]) for i in inspector.get_indexes(table)
            if i.get("unique") and i.get("column_names") and None not in i["column_names"]]
    return out


def _check_identity_indexes(self: SqlConnector, inspector: Any, name: str, entity: EntitySpec, health: Health) -> None:
    """Every identity column is searched on every request: without an index each search scans the table."""
    indexes = inspector.get_indexes(entity.table)
    leading = {i["column_names"][0] for i in indexes if i.get("column_names") and i["column_names"][0]}
    leading |= set(key_columns(entity)[:1])
    leading |= {c for u in inspector.get_unique_constraints(entity.table) for c in u["column_names"][:1]}
    for type_, column in _identity_columns(entity):
        if type_ == IdentityType.EMAIL:
            if self.engine.dialect.name != "postgresql":
                continue  # SQLite does not report expression indexes
            indexed = any(column in (expr or "") and "lower" in (expr or "")
                          for i in indexes for expr in i.get("expressions") or [])
            if not indexed:
                health.warnings.append(
                    f"entity {name}: no index on lower(trim({column})); locating will scan {entity.table}")
        elif column not in leading:
            health.warnings.append(f"entity {name}: identity column {column} ({type_}) has no index; "
                                   f"locating will scan {entity.table}")


# -- values an erasure or restriction writes ------------------------------------------------------

def _check_values(self: SqlConnector, conn: Connection, name: str, entity: EntitySpec, table: sa.Table,
                  health: Health) -> None:
    """Each mask and literal `set` value must fit its column: first what sql_values says about the type,
    then (for the values themselves, as the request would write them) what the database says."""
    now = self.ctx.clock()
    masks = [("erase.mask", col, method) for col, method in entity.erase.mask.items()]
    if entity.retention is not None and entity.retention.mask is not None:
        # a `then: anonymise` rule's own masks are written by every retention run: the same checks
        masks += [("retention.mask", col, method) for col, method in entity.retention_mask().items()]
    for where, col, method in masks:
        if col not in table.c:
            continue
        what = f"entity {name}: {where} {entity.table}.{col} ({_method(method)})"
        reason = sql_values.mask_problem(table.c[col], method)
        if reason is None and where == "retention.mask":
            reason = _mask_fits_schema(table.c[col], method, _unique_columns(conn, entity.table))
        if reason is None:
            try:
                value = sql_values.mask_value(table.c[col], method, row=f"{entity.table}:check",
                                              secret_key=_CHECK_KEY)
            except ValueError as exc:  # sql_values.ValueProblem: one line, the map's value at most
                reason = str(exc)
            else:
                reason = _refused(conn, table, table.c[col], value)
        if reason is not None:
            health.problems.append(f"{what}: {reason}")
    for action, spec in (("restrict", entity.restrict), ("lift", entity.lift)):
        for col, marker in (spec.set.items() if spec else ()):
            if col not in table.c:
                continue
            what = f"entity {name}: {action} sets {entity.table}.{col} to {_shown(marker)}"
            reason = sql_values.marker_problem(table.c[col], marker)
            if reason is None:
                try:
                    value = sql_values.marker_value(table.c[col], marker, now)
                except ValueError as exc:
                    reason = str(exc)
                else:
                    reason = _refused(conn, table, table.c[col], value)
            if reason is not None:
                health.problems.append(f"{what}: {reason}")


def _unique_columns(conn: Connection, table: str) -> set[str]:
    """Columns the database keeps unique on their own (the primary key or a one-column constraint or index)."""
    return {u[0] for u in _unique_sets(sa.inspect(conn), table) if len(u) == 1}


def _mask_fits_schema(column: sa.Column[Any], method: Any, unique: set[str]) -> str | None:
    """What _check_entity says of erase.mask, for a retention rule's own mask: null needs a nullable column, and
    one value for every row cannot go into a unique column."""
    if method == "null" and not column.nullable:
        return "the column is NOT NULL: it cannot be masked with null"
    if (isinstance(method, Fixed) or method == "redact") and column.name in unique:
        return "the column is unique; mask it with 'hash', not one value"
    return None


def _method(method: Any) -> str:
    return f"fixed {_shown(method.fixed)}" if isinstance(method, Fixed) else str(method)


def _shown(value: Any) -> str:
    """A data-map value (never a row's) as the map gives it, cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Explain(sa.sql.expression.Executable, sa.sql.expression.ClauseElement):
    """EXPLAIN <statement>: PostgreSQL plans it, converting its values to the columns' types, and runs nothing."""

    inherit_cache = False

    def __init__(self, statement: sa.Update) -> None:
        self.statement = statement
        # the compiler reads these off the statement it compiles, which it takes for the UPDATE
        self._inline = statement._inline
        self._return_defaults = False


@compiles(_Explain)
def _compile_explain(element: _Explain, compiler: SQLCompiler, **kw: Any) -> str:
    return "EXPLAIN " + compiler.process(element.statement, **kw)


def _refused(conn: Connection, table: sa.Table, column: sa.Column[Any], value: Any) -> str | None:
    """Why the database would not store `value` in `column` unchanged, or None; nothing is written.

    PostgreSQL: EXPLAIN of the UPDATE a request runs (a bad value fails while the statement is planned,
    which a read-only transaction allows). MariaDB: an UPDATE matching no row checks nothing, so the value
    is CAST to the column's type and any warning (a truncation, a zero date) counts; types MariaDB cannot
    CAST to (ENUM, SET, JSON ...) rely on sql_values alone. SQLite stores any value in any column.
    """
    if value is None:
        return None  # null: the NOT NULL check above
    dialect = conn.dialect.name
    try:
        with conn.begin_nested():  # a refused statement must not end the check's transaction
            if dialect == "postgresql":
                conn.execute(_Explain(sa.update(table).where(sa.false()).values({column.name: value})))
            elif dialect in ("mysql", "mariadb") and _mariadb_casts(column.type):
                # FROM a derived table: MariaDB clears the last statement's warnings only for a statement
                # that reads a table, and a stale warning would be taken for this value's
                one = sa.select(sa.literal(1)).subquery("one")
                conn.execute(sa.select(sa.cast(sa.bindparam("v", value, type_=column.type), column.type))
                             .select_from(one))
                warned = [str(m) for level, _code, m in conn.exec_driver_sql("SHOW WARNINGS") if level != "Note"]
                if warned:
                    return f"the database would not store it as given: {redact(warned[0])[:200]}"
    except StatementError as exc:  # the driver's refusal, or the column type's own bind conversion
        from connectors.sql import db_reason

        return f"the database cannot store it: {db_reason(exc)}"
    except SQLAlchemyError as exc:  # the UPDATE cannot even be built for this column type
        return f"the statement cannot be built for this column ({type(exc).__name__})"
    return None


def _mariadb_casts(type_: sa.types.TypeEngine[Any]) -> bool:
    """Types MariaDB's CAST takes (as SQLAlchemy renders them); others would be silently left uncast."""
    if isinstance(type_, sa.Float):
        return False
    if isinstance(type_, sa.Integer | sa.Numeric | sa.Date | sa.DateTime | sa.Time):
        return True
    return isinstance(type_, sa.String) and not isinstance(type_, sa.Enum | mysql.SET)


# -- references -----------------------------------------------------------------------------------

def _family(type_: sa.types.TypeEngine[Any]) -> str | None:
    """What a column's values compare as; None when the database did not say (SQLite without a type)."""
    for kind, family in ((sa.Boolean, "boolean"), (sa.Integer, "integer"), (sa.Numeric, "number"),
                         (sa.Uuid, "uuid"), (sa.Enum, "text"), (sa.String, "text"), (sa.DateTime, "datetime"),
                         (sa.Date, "date"), (sa.LargeBinary, "binary")):
        if isinstance(type_, kind):
            return family
    return None if isinstance(type_, sa.types.NullType) else type(type_).__name__.lower()


NUMBERS = {"integer", "number"}


def _check_references(conn: Connection, name: str, entity: EntitySpec, tables: dict[str, sa.Table],
                      health: Health) -> None:
    """Rows are found through `child.column IN (SELECT parent.column ...)`: both columns must compare."""
    for column, ref in _links(entity):
        table, parent = tables[name], tables.get(ref.entity)
        if parent is None or column not in table.c or ref.column not in parent.c:
            continue  # a missing table or column is reported already
        mine, theirs = table.c[column], parent.c[ref.column]
        a, b = _family(mine.type), _family(theirs.type)
        what = (f"entity {name}: reference {table.name}.{column} ({a or 'untyped'}) -> "
                f"{parent.name}.{ref.column} ({b or 'untyped'})")
        if a is None or b is None or a == b or {a, b} <= NUMBERS:
            refused = _lookup_refused(conn, mine, theirs)
            if refused:
                health.problems.append(f"{what}: the database cannot compare them: {refused}")
        elif {a, b} & NUMBERS and "text" in {a, b}:
            health.problems.append(f"{what}: a number compared with text fails on PostgreSQL and compares "
                                   "as numbers on MariaDB; give both columns one type")
        elif refused := _lookup_refused(conn, mine, theirs):
            health.problems.append(f"{what}: the database cannot compare them: {refused}")
        else:
            health.warnings.append(f"{what}: compared across types, which may not use an index and breaks on "
                                   "a database that does not convert them (PostgreSQL); give both columns one type")


def _lookup_refused(conn: Connection, mine: sa.Column[Any], theirs: sa.Column[Any]) -> str | None:
    """The lookup a request runs, with LIMIT 0: the database resolves the comparison and returns nothing."""
    query = sa.select(sa.literal(1)).select_from(mine.table).where(mine.in_(sa.select(theirs))).limit(0)
    try:
        with conn.begin_nested():
            conn.execute(query)
    except SQLAlchemyError as exc:
        from connectors.sql import db_reason

        return db_reason(exc)
    return None


# -- the export -----------------------------------------------------------------------------------

def _probe_export(conn: Connection, name: str, entity: EntitySpec, table: sa.Table, health: Health) -> None:
    """A few rows of the mapped columns through the export's serialisation: each value through
    `sql_values.jsonable`, then orjson as the staging files write it. The CSV cells of the bundle are
    written from those JSON values (discovery.bundle, which a connector may not import), so a value
    that becomes JSON becomes a cell. A failure names the column and the Python type, never the value."""
    columns = [c for c in sorted(entity.columns()) if c in table.c]
    if not columns:
        return
    rows, reason = _sample(conn, table, columns)
    if reason is not None:
        # Read column by column to name the one whose values the driver or its type cannot read.
        unreadable = [(c, why) for c in columns if (why := _sample(conn, table, [c])[1]) is not None]
        for col, why in unreadable:
            health.problems.append(f"entity {name}: column {entity.table}.{col} ({_sql_type(conn, table.c[col])}): "
                                   f"reading its values failed: {why}")
        if not unreadable:
            health.problems.append(f"entity {name}: reading table {entity.table} failed: {reason}")
        return
    failed: set[str] = set()
    for row in rows:
        for col, value in zip(columns, row, strict=True):
            if value is None or col in failed:
                continue
            try:
                orjson.dumps(sql_values.jsonable(value, table.c[col]), option=orjson.OPT_NON_STR_KEYS)
            except Exception as exc:  # whatever it is, the export would stop on it too
                failed.add(col)
                health.problems.append(
                    f"entity {name}: column {entity.table}.{col} ({_sql_type(conn, table.c[col])}) holds "
                    f"{_python_type(value)} values the export cannot write ({type(exc).__name__})")


def _sample(conn: Connection, table: sa.Table, columns: list[str]) -> tuple[list[sa.Row[Any]], str | None]:
    """Up to PROBE_ROWS rows of `columns`, or why they could not be read: the database's reason, or only
    the exception's type when the driver or a column type failed on a value (its message may hold it)."""
    try:
        with conn.begin_nested():
            return list(conn.execute(sa.select(*(table.c[c] for c in columns)).limit(PROBE_ROWS)).all()), None
    except SQLAlchemyError as exc:
        from connectors.sql import db_reason

        return [], db_reason(exc) if isinstance(exc, sa.exc.DBAPIError) else type(exc).__name__
    except Exception as exc:  # a result processor (JSON, a number) that could not read a stored value
        return [], type(exc).__name__


def _python_type(value: Any) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _sql_type(conn: Connection, column: sa.Column[Any]) -> str:
    try:
        return str(column.type.compile(dialect=conn.dialect))
    except SQLAlchemyError:
        return type(column.type).__name__

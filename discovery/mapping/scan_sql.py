"""Introspect a SQL database and classify every column from its name, type and a bounded sample of its rows.

Never a full scan: PostgreSQL reads a TABLESAMPLE SYSTEM of a big table (a few pages, chosen from the planner's
row estimate) with a LIMIT, and falls back to a plain bounded LIMIT when the sample came back short; MariaDB reads
a bounded LIMIT (never ORDER BY RAND(), which reads the whole table). Long texts are cut to 1000 characters by
the database. The session is read-only with a statement timeout, so a slow table costs seconds, not the scan.

Sampled values live in memory only while their table is classified; a few distinct values of columns that could
be references are kept until `infer_references` has asked the other tables whether it holds them (value overlap,
the only way to find links between two databases), then dropped. Results hold counts and patterns, never values.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from connectors import sql_values
from connectors.redact import redact
from discovery.mapping import SAMPLE_ROWS as SAMPLE_ROWS
from discovery.mapping import names as n
from discovery.mapping.classify import THRESHOLD, classify

MAX_TABLES = 5000
STATEMENT_TIMEOUT_S = 15
TEXT_PREFIX = 1000  # characters of a text value the database sends
READ = frozenset({"text", "enum", "int", "numeric"})  # families whose values are sampled
KEYS = frozenset({"int", "text", "uuid", "numeric"})  # families a reference may join on
REF_WORDS = ("nummer", "number", "nr", "no", "id", "ref", "key", "fk")

Progress = Callable[[int, int, str], None]


class Unreachable(Exception):
    """The database could not be connected to: one line, no URL password."""


@dataclass
class ColumnScan:
    name: str
    type: str
    family: str
    nullable: bool
    category: str
    confidence: float
    personal: bool
    evidence: list[str]
    sampled: int


@dataclass
class ForeignKey:
    columns: list[str]
    to_table: str
    to_columns: list[str]


@dataclass
class TableScan:
    name: str
    rows_estimate: int | None
    primary_key: list[str]
    foreign_keys: list[ForeignKey]
    unique: list[list[str]]
    indexes: list[list[str]]
    columns: list[ColumnScan]
    sampled_rows: int = 0
    sampling: str = ""
    error: str | None = None

    def column(self, name: str) -> ColumnScan | None:
        return next((c for c in self.columns if c.name == name), None)

    def personal(self) -> list[ColumnScan]:
        return [c for c in self.columns if c.personal]


@dataclass
class InferredReference:
    system: str
    table: str
    column: str
    to_system: str
    to_table: str
    to_column: str
    how: str  # "foreign key" or "inferred: name and values"
    evidence: str


@dataclass
class SqlScan:
    system: str
    dialect: str
    tables: list[TableScan] = field(default_factory=list)
    references: list[InferredReference] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    partial: bool = False
    seconds: float = 0.0
    threshold: float = THRESHOLD

    def table(self, name: str) -> TableScan | None:
        return next((t for t in self.tables if t.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def family(type_: Any) -> str:
    return sql_values.kind(sa.Column("c", type_))


def _type_name(type_: Any, dialect: Any) -> str:
    try:
        return str(type_.compile(dialect=dialect))
    except Exception:  # a type without a spelling in this dialect: its class name will do
        return type(type_).__name__


class SqlScanner:
    """One database: connect, scan, answer overlap questions, close."""

    def __init__(self, system: str, url: str, *, sample: int = SAMPLE_ROWS, max_tables: int = MAX_TABLES,
                 threshold: float = THRESHOLD, timeout_s: int = STATEMENT_TIMEOUT_S) -> None:
        from connectors.sql import CONNECT_TIMEOUT_SECONDS

        self.system, self.sample, self.max_tables, self.threshold = system, sample, max_tables, threshold
        try:
            backend = sa.engine.make_url(url).get_backend_name()
            args = {"connect_timeout": CONNECT_TIMEOUT_SECONDS} if backend in ("postgresql", "mysql", "mariadb") else {}
            self.engine: Engine = sa.create_engine(url, connect_args=args, poolclass=sa.pool.NullPool)
        except (SQLAlchemyError, ValueError) as exc:
            raise Unreachable(f"{system}: bad database URL: {redact(str(exc))[:200]}") from None
        try:
            self.conn: Connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except SQLAlchemyError as exc:
            from connectors.sql import db_reason

            self.engine.dispose()
            raise Unreachable(f"{system}: database unreachable: {db_reason(exc)}") from None
        self.dialect = self.conn.dialect.name
        self._session(timeout_s)
        # (table, column) -> distinct sampled values, for reference candidates only; dropped by close()
        self._candidates: dict[tuple[str, str], set[Any]] = {}

    def _session(self, timeout_s: int) -> None:
        if self.dialect == "postgresql":
            self.conn.exec_driver_sql(f"SET statement_timeout = {int(timeout_s) * 1000}")
            self.conn.exec_driver_sql("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        elif self.dialect in ("mysql", "mariadb"):
            with contextlib.suppress(DBAPIError):  # MySQL has max_execution_time; the LIMIT bounds the work anyway
                self.conn.exec_driver_sql(f"SET SESSION max_statement_time = {int(timeout_s)}")
            self.conn.exec_driver_sql("SET SESSION TRANSACTION READ ONLY")

    def close(self) -> None:
        self._candidates.clear()
        self.conn.close()
        self.engine.dispose()

    def __enter__(self) -> SqlScanner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the scan ------------------------------------------------------------------------------

    def scan(self, progress: Progress | None = None, tables: Iterable[str] | None = None) -> SqlScan:
        started = time.monotonic()
        result = SqlScan(self.system, self.dialect, threshold=self.threshold)
        inspector = sa.inspect(self.conn)
        names = sorted(inspector.get_table_names()) if tables is None else sorted(tables)
        if len(names) > self.max_tables:
            result.partial = True
            result.problems.append(f"{len(names)} tables; scanned the first {self.max_tables} by name "
                                   "(raise --max-tables to scan more)")
            names = names[: self.max_tables]
        if not names:
            result.seconds = round(time.monotonic() - started, 2)
            return result
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unknown column types and expression indexes: named per column below
            columns = inspector.get_multi_columns(filter_names=names)
            pks: dict[Any, Any] = dict(inspector.get_multi_pk_constraint(filter_names=names))
            fks = inspector.get_multi_foreign_keys(filter_names=names)
            uniques = inspector.get_multi_unique_constraints(filter_names=names)
            indexes = inspector.get_multi_indexes(filter_names=names)
        estimates = self._estimates()
        fk_columns: set[tuple[str, str]] = set()
        for i, name in enumerate(names):
            key: Any = (None, name)
            if progress:
                progress(i + 1, len(names), name)
            table = TableScan(
                name=name, rows_estimate=estimates.get(name),
                primary_key=list((pks.get(key) or {}).get("constrained_columns") or []),
                foreign_keys=[ForeignKey(list(f["constrained_columns"]), f["referred_table"],
                                         list(f["referred_columns"])) for f in fks.get(key, [])],
                unique=[list(u["column_names"]) for u in uniques.get(key, [])]
                + [[c for c in ix["column_names"] if c] for ix in indexes.get(key, []) if ix.get("unique")],
                indexes=[[c for c in ix.get("column_names") or [] if c] for ix in indexes.get(key, [])],
                columns=[])
            for fk in table.foreign_keys:
                fk_columns |= {(name, c) for c in fk.columns}
                if len(fk.columns) == 1:
                    result.references.append(InferredReference(
                        self.system, name, fk.columns[0], self.system, fk.to_table, fk.to_columns[0],
                        "foreign key", "declared in the database"))
            self._scan_table(table, columns.get(key, []), fk_columns)
            if table.error:
                result.partial = True
                result.problems.append(f"table {name}: {table.error}")
            result.tables.append(table)
        result.seconds = round(time.monotonic() - started, 2)
        return result

    def _estimates(self) -> dict[str, int]:
        try:
            if self.dialect == "postgresql":
                rows = self.conn.execute(sa.text(
                    "SELECT c.relname, c.reltuples::bigint FROM pg_class c JOIN pg_namespace s "
                    "ON s.oid = c.relnamespace WHERE s.nspname = current_schema() AND c.relkind IN ('r', 'p')"))
            elif self.dialect in ("mysql", "mariadb"):
                rows = self.conn.execute(sa.text(
                    "SELECT table_name, table_rows FROM information_schema.tables WHERE table_schema = DATABASE()"))
            else:
                return {}
            return {str(name): int(count) for name, count in rows if count is not None and int(count) >= 0}
        except SQLAlchemyError:
            return {}

    def _scan_table(self, table: TableScan, reflected: list[Any], fk_columns: set[tuple[str, str]]) -> None:
        info = [(c["name"], c["type"], family(c["type"]), bool(c.get("nullable", True))) for c in reflected]
        readable = [(name, fam) for name, _, fam, _ in info if fam in READ]
        rows: list[tuple[Any, ...]] = []
        if readable:
            try:
                rows, table.sampling = self._sample(table, readable)
            except SQLAlchemyError as exc:
                from connectors.sql import db_reason

                table.error = f"cannot read a sample: {db_reason(exc)}" if isinstance(exc, DBAPIError) else \
                    f"cannot read a sample ({type(exc).__name__})"
            except Exception as exc:  # a driver's conversion of a stored value: name the type only
                table.error = f"cannot read a sample ({type(exc).__name__})"
        table.sampled_rows = len(rows)
        position = {name: i for i, (name, _) in enumerate(readable)}
        single_keys = {tuple(table.primary_key)} | {tuple(u) for u in table.unique}
        for name, type_, fam, nullable in info:
            values = [r[position[name]] for r in rows] if name in position else []
            found = classify(name, table.name, fam, values)
            if table.error and name in position:
                found.evidence.append("no values read (see the table's error): name and type only")
            table.columns.append(ColumnScan(
                name=name, type=_type_name(type_, self.conn.dialect), family=fam, nullable=nullable,
                category=found.category, confidence=found.confidence, personal=found.personal(self.threshold),
                evidence=found.evidence, sampled=found.sampled))
            if fam in KEYS and (table.name, name) not in fk_columns and (name,) not in single_keys \
                    and _could_refer(name, found.category):
                distinct = {v for v in values if v is not None and v != ""}
                if len(distinct) >= 3:
                    self._candidates[(table.name, name)] = distinct
        del rows  # the sample is gone with this frame; only the candidates' distinct values remain

    def _sample(self, table: TableScan, readable: list[tuple[str, str]]) -> tuple[list[tuple[Any, ...]], str]:
        base = sa.table(table.name, *(sa.column(c) for c, _ in readable))
        estimate = table.rows_estimate or 0
        if self.dialect == "postgresql" and estimate > self.sample * 40:
            # a SYSTEM sample reads whole pages: aim at ~20 times the rows wanted, so a few pages suffice
            percent = min(100.0, max(0.0001, 100.0 * self.sample * 20 / estimate))
            sampled = sa.tablesample(base, sa.func.system(percent), name="s")
            rows = self._select(sampled, readable)
            if len(rows) >= min(self.sample, estimate) // 2:
                return rows, f"TABLESAMPLE SYSTEM ({percent:.4g}%) LIMIT {self.sample}"
        return self._select(base, readable), f"LIMIT {self.sample}"

    def _select(self, source: Any, readable: list[tuple[str, str]]) -> list[tuple[Any, ...]]:
        cols = []
        for name, fam in readable:
            col = source.c[name]
            if fam in ("text", "enum"):
                col = sa.func.substr(sa.cast(col, sa.Text() if self.dialect == "postgresql" else sa.String()),
                                     1, TEXT_PREFIX)
            cols.append(col)
        query = sa.select(*cols).select_from(source).limit(self.sample)
        return [tuple(r) for r in self.conn.execute(query).all()]

    # -- overlap ---------------------------------------------------------------------------------

    def holds(self, table: str, column: str, values: set[Any]) -> int:
        """How many of `values` the column holds (one bounded IN query; the values never leave the process)."""
        t = sa.table(table, sa.column(column))
        query = sa.select(sa.func.count(sa.distinct(t.c[column]))).where(t.c[column].in_(sorted(values, key=str)))
        try:
            return int(self.conn.execute(query).scalar() or 0)
        except SQLAlchemyError:
            return 0


def _could_refer(column: str, category: str) -> bool:
    if category not in (n.NONE, n.ONLINE_ID):
        return False
    joined = "".join(n.words(column))
    return joined.endswith(REF_WORDS)


def stem(name: str) -> str:
    """`customer_ref` -> customer, `kundenummer` -> kunde, `Kunder` -> kunde, `customers` -> customer."""
    word = "".join(w for w in n.words(name) if not w.isdigit())
    for suffix in REF_WORDS:
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            word = word[: -len(suffix)]
            break
    for plural in ("ies", "es", "er", "s"):
        if word.endswith(plural) and len(word) > len(plural) + 3:
            word = word[: -len(plural)] + ("y" if plural == "ies" else "e" if plural == "er" else "")
            break
    return word


def _name_match(column: str, table: str, target_column: str) -> int:
    """How well the column's name points at the target: 3 its column's stem (`kundenummer` -> kundenr), 2 its
    table's (`customer_ref` -> customers), 1 a prefix of either; 0 not at all."""
    mine = stem(column)
    if len(mine) < 3:
        return 0
    by_column = stem(target_column) if target_column.lower() != "id" else ""
    by_table = stem(table)
    if by_column == mine:
        return 3
    if by_table == mine:
        return 2
    return int(any(t and len(t) >= 4 and len(mine) >= 4 and (t.startswith(mine) or mine.startswith(t))
                   for t in (by_column, by_table)))


def infer_references(scanners: list[tuple[SqlScanner, SqlScan]]) -> None:
    """Add references the databases do not declare: a column whose name points at another table (`customer_ref`
    -> customers, `kundenummer` -> Kunder.kundenr) and whose every sampled value that table's key holds. Across
    two databases too, where no foreign key can exist."""
    targets = [(scanner, scan.system, t.name, key[0], col.family)
               for scanner, scan in scanners for t in scan.tables if not t.error
               for key in [t.primary_key, *t.unique] if len(key) == 1
               for col in [t.column(key[0])] if col is not None and col.family in KEYS]
    for scanner, scan in scanners:
        for (table, column), values in sorted(scanner._candidates.items()):
            fam = next((c.family for t in scan.tables if t.name == table for c in t.columns if c.name == column), "")
            ranked = sorted(((m, i) for i, (_o, system, to_table, to_column, to_family) in enumerate(targets)
                             if (system, to_table) != (scan.system, table) and _same_family(fam, to_family)
                             and (m := _name_match(column, to_table, to_column))), key=lambda x: (-x[0], x[1]))
            for _match, i in ranked:
                owner, system, to_table, to_column, _family = targets[i]
                found = owner.holds(to_table, to_column, values)
                if found >= len(values):
                    where = "" if system == scan.system else f"{system}."
                    scan.references.append(InferredReference(
                        scan.system, table, column, system, to_table, to_column, "inferred: name and values",
                        f"{found}/{len(values)} distinct sampled values found in {where}{to_table}.{to_column}"))
                    break


def _same_family(a: str, b: str) -> bool:
    numbers = {"int", "numeric"}
    return a == b or {a, b} <= numbers

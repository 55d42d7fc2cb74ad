"""A connector for any SQL database, driven entirely by its data-map entry (connectors.sql_map).

A person's rows are found by identity columns (e-mail compared as lower(trim(col)), so an
expression index on that makes the lookup an index scan) and by following references from
rows already found, any number of hops, as nested sub-selects: the database does the joins
and nothing is pulled into memory to find it. An erasure then reads the keys of every row it
will change before it changes any (so the order of changes cannot change what is found), and
changes them by key, deleting rows that hold a foreign key before the rows it points at.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, NoSuchTableError, OperationalError, SQLAlchemyError

from connectors import sql_driver
from connectors.base import (
    N_,
    Connector,
    ConnectorContext,
    EntityPolicy,
    Health,
    Hits,
    Hold,
    Identities,
    Identity,
    IdentityType,
    Note,
    PermanentError,
    Receipt,
    Record,
    TransientError,
    UnsupportedAction,
    note,
)
from connectors.emails import InvalidEmail, email_forms, normalise_email
from connectors.redact import redact
from connectors.retention import (
    MECHANISM_HOLD_END,
    MECHANISM_INACTIVITY,
    MECHANISM_RUN,
    Due,
    Keep,
    Period,
    RetentionRule,
    RetentionSpec,
    cutoff_moment,
    rule_note,
)
from connectors.s3_files import RESTRICTED_TAG, S3Files
from connectors.sql_check import check_system
from connectors.sql_map import EntitySpec, Fixed, HoldSpec, Reference, SqlSystemSpec, parse_system, topological
from connectors.sql_pool import autocommit_engine, pooled_engine
from connectors.sql_values import (
    ValueProblem,
    as_datetime,
    bound_for,
    carries,
    jsonable,
    marker_value,
    mask_value,
    python_type,
    same,
)

# Expression indexes (lower(trim(email))) are not reflected, and say so on every table. A process-wide
# filter: catch_warnings() is not thread-safe, and connectors reflect tables from several threads.
# Types SQLAlchemy does not know (point, xml ...) are named by sql_values' reflection listener right after.
warnings.filterwarnings("ignore", message="Did not recognize type", category=sa.exc.SAWarning)
warnings.filterwarnings("ignore", message="Skipped unsupported reflection of expression-based index",
                        category=sa.exc.SAWarning)

NAMES_SOMEONE_ELSE = N_("an identity column names someone else")
RELATED_NOT_OWNED = N_("related through a relation, not owned")
# a row several tables own (an address of customers and orders) that someone else's row owns too
OWNED_BY_SOMEONE_ELSE = N_("also owned through someone else's record")

# why a retention run left a row alone (the receipt's `skipped`)
KEPT_HOLD = N_("kept under a legal hold that has not ended")
KEPT_REQUEST = N_("kept: the person has an open request")
KEPT_RESTRICTED = N_("kept: processing restricted (Art. 18)")

# keys changed per statement when an erasure acts on the keys it read
KEY_CHUNK = 500

Key = tuple[Any, ...]
_Q = TypeVar("_Q")


@dataclass(frozen=True)
class _Reach:
    """WHERE clauses for one entity: the person's rows, those matched by a non-shared identifier, those
    owned through a declared ownership reference, rows reached but naming someone else, rows tied to the
    person's by a relation (`linked`, counted as left alone) and those of them the map exports (`related`)."""

    mine: sa.ColumnElement[bool]
    strong: sa.ColumnElement[bool] | None
    owned: sa.ColumnElement[bool] | None
    others: sa.ColumnElement[bool] | None
    related: sa.ColumnElement[bool] | None
    linked: sa.ColumnElement[bool] | None = None
    # owned rows that someone else's row owns too (left alone)
    contested: sa.ColumnElement[bool] | None = None
    # the person's rows are exactly those matched by a non-shared identifier (no owned or shared path)
    mine_is_strong: bool = False


@dataclass
class _Erasure:
    """What an erasure will do to one entity, read before anything changes: keys of the rows to erase, of
    those restricted under the entity's own hold and of those kept with a held owner, and the receipt's
    `held` entries for the latter two."""

    erase: list[Key] = field(default_factory=list)
    held: list[Key] = field(default_factory=list)
    kept: int = 0  # rows of an entity the map keeps (erase: keep)
    entries: list[dict[str, Any]] = field(default_factory=list)
    notes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    hold_date: sa.ColumnElement[Any] | None = None  # the own hold's date (for the files' tags)
    marks: dict[str, Any] = field(default_factory=dict)  # the restriction written to held rows, typed


class _Values:
    """The person's identifiers as a query names them.

    Literal (erasure, restriction, retention: rare): the values are in the statement, built for this one call. Bound
    (locate, export: every request): each identity type, per kind of column it is compared with, is one bind
    parameter (an array on PostgreSQL, an expanding IN elsewhere), so those statements are built once per `shape`
    (which parameters have values) and executed with `params`: building and keying a fresh expression tree per
    request cost more CPU than running it (issue 15)."""

    def __init__(self, identities: Identities, bound: bool = False, arrays: bool = False) -> None:
        self.identities = identities
        self.bound = bound
        # PostgreSQL: `= ANY(array)` instead of an expanding IN, so the SQL text is the same whatever the number of
        # values (compiled once, runnable on the driver, prepared by psycopg); indexes serve both alike.
        self.arrays = arrays
        self.params: dict[str, list[Any]] = {}
        if bound:
            for type_ in identities.types():
                email = type_ == IdentityType.EMAIL
                for as_int in (False,) if email else (False, True):
                    if values := self._values(type_, email, as_int):
                        self.params[self._key(type_, email, as_int)] = values
        self.shape = tuple(sorted(self.params))

    def match(self, col: sa.Column[Any], type_: IdentityType) -> sa.ColumnElement[bool] | None:
        """The column holds one of the person's identifiers of this type; None when they have none it could hold.
        E-mails compare as lower(trim(col)); other values in the column's own type (keeps indexes usable)."""
        email = type_ == IdentityType.EMAIL
        as_int = not email and python_type(col) is int
        expr = sa.func.lower(sa.func.trim(col)) if email else col
        if self.bound:
            key = self._key(type_, email, as_int)
            if key not in self.params:
                return None
            if self.arrays and (email or python_type(col) in (int, str)):
                return expr == sa.any_(sa.bindparam(key, type_=ARRAY(sa.String() if email else col.type)))
            return expr.in_(sa.bindparam(key, expanding=True))
        values = self._values(type_, email, as_int)
        return expr.in_(values) if values else None

    @staticmethod
    def _key(type_: IdentityType, email: bool, as_int: bool) -> str:
        return f"id_{type_.value}" if email else f"id_{type_.value}_{'int' if as_int else 'str'}"

    def _values(self, type_: IdentityType, email: bool, as_int: bool) -> list[Any]:
        """Identity values arrive as text: every stored form of an e-mail; for an integer column those that are
        integers; else as they are."""
        values = self.identities.of(type_)
        if email:
            return sorted({f for v in values for f in email_forms(v)})
        return [int(v) for v in values if v.lstrip("-").isdigit()] if as_int else values


class SqlConnector(Connector):
    def __init__(self, name: str, spec: SqlSystemSpec, engine: Engine, ctx: ConnectorContext) -> None:
        self.name = name
        self.spec = spec
        self.engine = engine
        self.ctx = ctx
        self.order = topological(spec.entities)
        self.entities = tuple(self.order)
        self._tables: dict[str, sa.Table] = {}
        self._tables_lock = threading.Lock()
        self._shapes: dict[tuple[str, ...], dict[str, _Reach | None]] = {}  # _reaches
        self._queries: dict[tuple[Any, ...], Any] = {}  # _query
        self._reader = autocommit_engine(engine)  # locate and export (see _connect)
        self.s3 = S3Files(name, spec.s3, ctx) if spec.s3 else None
        # Queries on our own database run where they are planned; a system with files in S3 (invoices: a download
        # per file) is handed on like the vendors', so the discovery's thread is not held for it.
        self.runs_inline = self.s3 is None

    @classmethod
    def from_settings(cls, name: str, settings: dict[str, Any], ctx: ConnectorContext) -> SqlConnector:
        spec = parse_system(name, dict(settings))
        url = ctx.secret(name, "url_env", spec.url_env)
        try:
            engine = pooled_engine(url, connect_args=_connect_args(url))  # LIFO, pinged when idle (sql_pool.py)
        except (SQLAlchemyError, ValueError) as exc:
            raise PermanentError(name, f"bad database URL in {spec.url_env}: {redact(str(exc))[:200]}") from None
        return cls(name, spec, engine, ctx)

    # -- planner view ---------------------------------------------------------------------

    def policies(self) -> dict[str, EntityPolicy]:
        out = {}
        for name, e in self.spec.entities.items():
            if e.erase.strategy == "delete":
                erase = Note(N_("delete rows"))
            elif e.erase.strategy == "keep":
                erase = note(N_("kept, never erased: {reason}"), reason=_text(e.erase.reason))
            else:
                erase = note(N_("mask {columns}"), columns=[note(N_("{column} ({method})"), column=c,
                                                                 method=_method_name(m))
                                                            for c, m in e.erase.mask.items()])
            restrict = note(N_("set {values}"), values=[note(N_("{column} to {value}"), column=c, value=repr(v))
                                                        for c, v in e.restrict.set.items()]) if e.restrict else None
            hold = None
            if e.hold and e.hold.with_ is None:
                assert e.hold.years is not None and e.hold.from_ is not None
                hold = Hold(e.hold.years, e.hold.from_, e.hold.reason_text(),
                            reasons=dict(e.hold.reason) if isinstance(e.hold.reason, dict) else None)
            held_with = sorted({r.entity for _, r in self.spec.held_parents(name)})
            if held_with and e.erase.strategy != "keep":
                # nothing is written to these rows: they wait for their owner's hold, and go with it
                erase = note(N_("{how}, except records kept while the {parents} record owning them is held"),
                             how=erase, parents=", ".join(held_with))
            out[name] = EntityPolicy.of(erase, restrict, hold=hold,
                                     categories=tuple(sorted(set(e.fields.values()))),
                                     provided_by_subject=e.provided_by_subject)
        return out

    def accepts(self) -> set[IdentityType]:
        return {t for e in self.spec.entities.values() for t in e.identities}

    # -- operations -----------------------------------------------------------------------

    def locate(self, identities: Identities) -> Hits:
        hits = Hits(system=self.name, found=False)
        vals = self._bound(identities)
        with self._connect(read_only=True) as conn:
            reaches = self._reaches(vals, conn)
            counts = self._census(conn, reaches, vals)
            for name in self.order:
                reach = reaches[name]
                if reach is None:
                    continue
                table = self._table(name, conn)
                count = counts[(name, "")]
                for why, _cond in self._skipped(reach):
                    if counts.get((name, why)):
                        hits.skipped.setdefault(name, {})[why] = counts[(name, why)]
                if not count:
                    continue
                hits.counts[name] = int(count)
                hits.found = True
                self._learn(conn, table, name, reach, hits, vals)
                if not reach.mine_is_strong:  # else _learn read the same rows' identifiers
                    self._touches(conn, table, name, reach, hits, vals)
        return hits

    def _census(self, conn: Connection, reaches: dict[str, _Reach | None], vals: _Values) -> dict[tuple[str, str], int]:
        """Every entity's count of the person's rows and of the rows reached but left alone (and why), in one
        statement of scalar subqueries: a round trip per count cost more than the counts on an indexed schema.
        Keys: (entity, "") for the person's rows, (entity, why) for the rows left alone."""
        counted: list[tuple[str, str, sa.ColumnElement[bool]]] = []  # entity, why ("": the person's), condition
        for name in self.order:
            reach = reaches[name]
            if reach is None:
                continue
            counted.append((name, "", reach.mine))
            counted.extend((name, why, cond) for why, cond in self._skipped(reach) if cond is not None)
        if not counted:
            return {}

        def build() -> sa.Select[Any]:
            return sa.select(*(sa.select(sa.func.count()).select_from(self._table(name, conn)).where(cond)
                               .scalar_subquery().label(f"n{i}") for i, (name, _why, cond) in enumerate(counted)))

        row = self._run(conn, self._query(vals, ("census",), build), vals).one()
        return {(name, why): int(n or 0) for (name, why, _cond), n in zip(counted, row, strict=True)}

    @staticmethod
    def _skipped(reach: _Reach) -> tuple[tuple[str, sa.ColumnElement[bool] | None], ...]:
        """The rows a request reaches but leaves alone, by why: someone else's, related only, owned by another."""
        return ((NAMES_SOMEONE_ELSE, reach.others), (RELATED_NOT_OWNED, reach.linked),
                (OWNED_BY_SOMEONE_ELSE, reach.contested))

    def _touches(self, conn: Connection, table: sa.Table, name: str, reach: _Reach, hits: Hits,
                 vals: _Values) -> None:
        """The identifiers on the rows a change would touch, normalised in Python: a second look, independent
        of the SQL that picked the rows, which the plan compares with everything known of the person."""
        entity = self.spec.entities[name]
        columns = entity.identity_columns()
        if not columns:
            return
        touched: set[Identity] = set()
        query = self._query(vals, (name, "touches"), lambda: sa.select(*(table.c[c] for _, c in columns))
                            .where(reach.mine).distinct().limit(1000))
        for row in self._run(conn, query, vals):
            for (type_, _column), value in zip(columns, row, strict=True):
                found = _identity_value(type_, value)
                if found:
                    touched.add(Identity(type_, found, source=self.name))
        if touched:
            hits.touches[name] = touched

    def _learn(self, conn: Connection, table: sa.Table, name: str, reach: _Reach, hits: Hits,
               vals: _Values) -> None:
        """Identifiers from rows that are the person's: all identity columns of rows matched directly by a
        non-shared identifier, and the `learn` columns of rows owned through a declared ownership path."""
        entity = self.spec.entities[name]
        sources: list[tuple[str, sa.ColumnElement[bool], list[tuple[IdentityType, str]], Note]] = []
        if reach.strong is not None and entity.identities:
            sources.append(("strong", reach.strong, entity.identity_columns(),
                            note(N_("{table} (matched directly)"), table=entity.table)))
        learn = [(t, c) for t, c in entity.identity_columns() if t in entity.learn]
        if reach.owned is not None and learn:
            sources.append(("owned", sa.and_(reach.owned, reach.mine), learn, self._path(name)))
        for how, cond, columns, path in sources:
            query = self._query(vals, (name, "learn", how), lambda cond, columns: sa.select(
                *(table.c[c] for _, c in columns)).where(cond).distinct().limit(1000), cond, columns)
            for row in self._run(conn, query, vals):
                for (type_, column), value in zip(columns, row, strict=True):
                    learned = _identity_value(type_, value)
                    if learned and reach.mine_is_strong:  # these rows are all a change would touch here
                        hits.touches.setdefault(name, set()).add(Identity(type_, learned, source=self.name))
                    if learned:
                        hits.learned.append(Identity.learned(type_, learned, self.name, note(
                            N_("{system}: {path}, column {column}"), system=self.name, path=path, column=column)))

    def _path(self, name: str) -> Note:
        """How a row of `name` is reached from a directly matched row, along ownership only (the first
        owning reference, when there are several)."""
        entity = self.spec.entities[name]
        column, ref = entity.owners()[0]
        parent = self.spec.entities[ref.entity]
        start = note(N_("{table} (matched directly)"), table=parent.table) if parent.identities \
            else self._path(ref.entity)
        return note(N_("{start} -> {table} (owned through {column})"), start=start, table=entity.table, column=column)

    def export(self, identities: Identities, entities: Iterable[str] | None = None) -> Iterator[Record]:
        wanted = self._wanted(entities)
        vals = self._bound(identities)
        with self._connect(read_only=True) as conn:
            reaches = self._reaches(vals, conn)
            for name in self.order:
                reach = reaches[name]
                if name not in wanted or reach is None:
                    continue
                entity = self.spec.entities[name]
                table = self._table(name, conn)
                keys = entity.key_columns()
                shown = [*keys, *(c for c in entity.fields if c not in keys)]
                if reach.related is not None:
                    yield from self._export_related(conn, table, name, reach.related, shown, vals)
                extra = [c for c in (entity.files.template().fields if entity.files else ()) if c not in shown]
                paged = self._query(vals, (name, "export"), lambda t, cond, cols, k: _Paged.of(
                    sa.select(*(t.c[c] for c in cols)).where(cond).order_by(*(t.c[c] for c in k))),
                    table, reach.mine, (*shown, *extra), keys)
                for row in _rows(conn, paged, vals.params):
                    values = dict(row._mapping)
                    data = {k: jsonable(values[k], table.c[k]) for k in shown}
                    record = Record(entity=name, record_id=record_id(data[k] for k in keys), fields=data)
                    if entity.files and self.s3:
                        bucket = self._bucket(entity)
                        record.attachments = [self.s3.attachment(bucket, obj.key, obj.key)
                                              for obj in self.s3.find(bucket, entity.files.template(), values)]
                    yield record

    def _export_related(self, conn: Connection, table: sa.Table, name: str, related: sa.ColumnElement[bool],
                        shown: list[str], vals: _Values) -> Iterator[Record]:
        """Rows tied to the person by a relation the map exports (`export: true`): someone else's rows, so
        their identity columns are left out (Art. 15(4): the copy must not disclose other people)."""
        entity = self.spec.entities[name]
        hidden = {c for _, c in entity.identity_columns()}
        cols = [c for c in shown if c not in hidden]
        keys = entity.key_columns()
        paged = self._query(vals, (name, "related"), lambda: _Paged.of(
            sa.select(*(table.c[c] for c in (*cols, *(k for k in keys if k not in cols)))).where(related)
            .order_by(*(table.c[k] for k in keys))))
        for n, row in enumerate(_rows(conn, paged, vals.params), 1):
            values = dict(row._mapping)
            data = {k: jsonable(values[k], table.c[k]) for k in cols}
            # a key that is an identity column would disclose the other person: number the rows instead
            rid = str(n) if hidden & set(keys) else record_id(jsonable(values[k], table.c[k]) for k in keys)
            yield Record(entity=f"{name}.related", record_id=rid, fields=data)

    def erase(self, identities: Identities, entities: Iterable[str] | None = None) -> Receipt:
        receipt = Receipt(system=self.name, action="erase")
        wanted = self._wanted(entities)
        now = self.ctx.clock()
        memo: dict[str, _Reach | None] = {}
        vals = _Values(identities)
        with self._begin() as conn:
            # Every row is found before anything changes: masking or deleting one table changes what the
            # clauses of another find (an address is found through the customer row pointing at it).
            plans: dict[str, _Erasure] = {}
            for name in self.order:
                if name in wanted and (reach := self._reach(name, vals, conn, memo)) is not None:
                    table = self._table(name, conn)
                    self._count_skipped(conn, table, name, reach, receipt.skipped, vals)
                    plans[name] = self._plan_erasure(conn, name, table, reach.mine, now)
            for name in self._change_order(conn, plans):
                try:
                    self._apply_erasure(conn, name, plans[name], receipt)
                except DBAPIError as exc:
                    if isinstance(exc, OperationalError):
                        raise
                    raise PermanentError.of(self.name, note(
                        N_("entity {entity} (table {table}): the database refused the change, nothing was "
                           "changed: {reason}"), entity=name, table=self.spec.entities[name].table,
                        reason=db_reason(exc))) from None
        return receipt

    def _plan_erasure(self, conn: Connection, name: str, table: sa.Table, cond: sa.ColumnElement[bool],
                      now: datetime) -> _Erasure:
        """The keys an erasure will change, and what it keeps and why, read before anything changes."""
        entity = self.spec.entities[name]
        plan = _Erasure()
        if entity.erase.strategy == "keep":
            plan.kept = int(conn.execute(sa.select(sa.func.count()).select_from(table).where(cond)).scalar_one())
            return plan
        if entity.hold and entity.hold.with_ is None:
            assert entity.hold.years is not None and entity.restrict is not None
            own = self._held(name, table, entity, now, conn)
            expr, _col = self._hold_date(name, table, entity, conn)
            entry = self._hold_entry(conn, name, expr, sa.and_(cond, own), entity.hold.years, entity.hold.reason)
            if entry:
                # written typed as the column is ('now' is this erasure's time); the receipt names the map's rule
                plan.marks = {c: marker_value(table.c[c], v, now) for c, v in entity.restrict.set.items()}
                entry["restricted_with"] = {c: jsonable(v) for c, v in entity.restrict.set.items()}
                plan.entries.append(entry)
                plan.held = self._keys(conn, table, entity, sa.and_(cond, own))
                plan.hold_date = expr
            cond = sa.and_(cond, sa.not_(own))
        # A row owned by a held row is kept, and not written, while that row is held (whatever the map says).
        by_parent = self._held_by_parent(name, table, now, conn)
        if by_parent is not None:
            source = self._parent_hold_source(name, table, conn)
            if source is not None:
                expr, root, parent = source
                reason = entity.hold.reason if entity.hold and entity.hold.reason else root.reason
                assert root.years is not None and reason is not None
                entry = self._hold_entry(conn, name, expr, sa.and_(cond, by_parent), root.years, reason)
                if entry:
                    entry["kept_with"] = parent
                    plan.entries.append(entry)
                    plan.notes.append((N_("{entity}: {count} kept unchanged while the {parent} record owning them "
                                          "is held ({reason})"),
                                       {"entity": name, "count": entry["records"], "parent": parent,
                                        "reason": _text(reason)}))
            cond = sa.and_(cond, sa.not_(by_parent))
        plan.erase = self._keys(conn, table, entity, cond)
        return plan

    def _apply_erasure(self, conn: Connection, name: str, plan: _Erasure, receipt: Receipt) -> None:
        entity = self.spec.entities[name]
        table = self._table(name, conn)
        if entity.erase.strategy == "keep":
            if plan.kept:
                receipt.note(N_("{entity}: {count} kept, never erased ({reason})"), entity=name, count=plan.kept,
                             reason=_text(entity.erase.reason))
            return
        for entry in plan.entries:
            if "kept_with" in entry:
                receipt.held.append(entry)
                continue
            assert entity.hold is not None and entity.restrict is not None and plan.hold_date is not None
            held = _keys_in(table, entity, plan.held)
            files = self._restrict_files(conn, table, entity, held, plan.hold_date)
            conn.execute(sa.update(table).where(held).values(**_sql(plan.marks)))
            if entity.files:
                entry["files"] = files
                entry["restricted_files_with"] = {"tag": RESTRICTED_TAG, "value": "the date the hold ends"}
            receipt.held.append(entry)
            reason = _text(entity.hold.reason)
            if files:
                receipt.note(N_("{entity}: {count} kept and restricted under hold ({reason}), with {files} file(s) "
                                "tagged {tag}"), entity=name, count=entry["records"], reason=reason, files=files,
                             tag=RESTRICTED_TAG)
            else:
                receipt.note(N_("{entity}: {count} kept and restricted under hold ({reason})"), entity=name,
                             count=entry["records"], reason=reason)
        for msgid, params in plan.notes:
            receipt.note(msgid, **params)
        if not plan.erase:
            return
        # Files go before their rows: once a row is gone, nothing says which files were its.
        files = self._delete_files(conn, table, entity, _keys_in(table, entity, plan.erase))
        if files:
            receipt.changed[f"{name}.files"] = files
            receipt.note(N_("{entity}: {count} file(s) deleted from S3"), entity=name, count=files)
        changed = self._erase_rows(conn, name, table, entity, plan.erase)
        if changed:
            receipt.changed[name] = changed
            if entity.erase.strategy == "delete":
                receipt.note(N_("{entity}: {count} deleted"), entity=name, count=changed)
            else:
                receipt.note(N_("{entity}: {count} masked"), entity=name, count=changed)

    def _keys(self, conn: Connection, table: sa.Table, entity: EntitySpec, cond: sa.ColumnElement[bool]) -> list[Key]:
        cols = [table.c[k] for k in entity.key_columns()]
        return list(dict.fromkeys(tuple(row) for row in conn.execute(sa.select(*cols).where(cond))))

    def _change_order(self, conn: Connection, plans: dict[str, _Erasure]) -> list[str]:
        """Children first (the map's order reversed), and a table holding a foreign key before the table it
        points at, by the database's own foreign keys (an address after the customers pointing at it)."""
        names = [n for n in reversed(self.order) if n in plans]
        by_table: dict[str, list[str]] = {}
        for n in names:
            by_table.setdefault(self._table(n, conn).name, []).append(n)
        after: dict[str, set[str]] = {n: set() for n in names}  # entity -> entities to change before it
        for n in names:
            for fk in self._table(n, conn).foreign_keys:
                for target in by_table.get(fk.target_fullname.split(".")[-2], []):
                    if target != n:
                        after[target].add(n)
        out: list[str] = []
        left = list(names)
        while left:
            # a cycle of foreign keys falls back to the map's order
            pick = next((n for n in left if not after[n] & set(left)), left[0])
            out.append(pick)
            left.remove(pick)
        return out

    def restrict(self, identities: Identities, entities: Iterable[str] | None = None) -> Receipt:
        return self._set_flags(identities, entities, "restrict")

    def lift_restriction(self, identities: Identities, entities: Iterable[str] | None = None) -> Receipt:
        return self._set_flags(identities, entities, "lift")

    def check(self) -> Health:
        return check_system(self)

    def close(self) -> None:
        self.engine.dispose()

    # -- internals ------------------------------------------------------------------------

    def _wanted(self, entities: Iterable[str] | None) -> set[str]:
        if entities is None:
            return set(self.order)
        wanted = set(entities)
        unknown = wanted - set(self.order)
        if unknown:
            raise PermanentError(self.name, f"unknown entities: {', '.join(sorted(unknown))}")
        return wanted

    def _connect(self, read_only: bool = False) -> Any:
        """A connection, in a transaction of its own; `read_only`: on PostgreSQL, in autocommit. A reader gains
        nothing from the transaction (under READ COMMITTED each statement sees its own snapshot either way) but
        pays its BEGIN and ROLLBACK, a round trip each, which psycopg does not send with the statements."""
        if read_only and self._reader is not None:
            return _DbErrors(self.name, self._reader.connect)
        return _DbErrors(self.name, self.engine.connect)

    def _begin(self) -> Any:
        return _DbErrors(self.name, self.engine.begin)

    def _table(self, name: str, conn: Connection) -> sa.Table:
        table = self._tables.get(name)
        if table is not None:
            return table
        # One reflection per table and process: two threads reflecting at once would each build their own Table,
        # and a query joining both copies names the table twice (PostgreSQL refuses it).
        with self._tables_lock:
            return self._reflect(name, conn)

    def _reflect(self, name: str, conn: Connection) -> sa.Table:
        if name not in self._tables:
            entity = self.spec.entities[name]
            try:
                table = sa.Table(entity.table, sa.MetaData(), autoload_with=conn)
            except NoSuchTableError:
                raise PermanentError(self.name, f"entity {name}: table '{entity.table}' does not exist") from None
            missing = sorted(entity.columns() - set(table.c.keys()))
            if missing:
                raise PermanentError(
                    self.name, f"entity {name}: unknown column(s) {', '.join(missing)} in table {entity.table}"
                )
            self._tables[name] = table
        return self._tables[name]

    def _reaches(self, vals: _Values, conn: Connection) -> dict[str, _Reach | None]:
        """Every entity's clauses for identifiers bound as parameters: built once per shape, shared by all calls."""
        reaches = self._shapes.get(vals.shape)
        if reaches is None:
            memo: dict[str, _Reach | None] = {}
            for name in self.order:
                self._reach(name, vals, conn, memo)
            # published whole: a thread never sees the placeholder _reach leaves while an entity is half built
            self._shapes[vals.shape] = reaches = memo
        return reaches

    def _bound(self, identities: Identities) -> _Values:
        return _Values(identities, bound=True, arrays=self.engine.dialect.name == "postgresql")

    @staticmethod
    def _run(conn: Connection, query: Any, vals: _Values) -> Any:
        """A statement of `_query`: a kept one (bound values) on the driver's cursor where it can (sql_driver),
        one built for this call through SQLAlchemy."""
        return sql_driver.execute(conn, query, vals.params) if vals.bound else conn.execute(query, vals.params)

    def _query(self, vals: _Values, key: tuple[Any, ...], build: Callable[..., _Q], *args: Any) -> _Q:
        """`build(*args)`: a statement over the person's identifiers, for bound ones built once per shape and kept
        under `key` (two threads may both build it: the same statement), for literal ones built for this call."""
        if not vals.bound:
            return build(*args)
        key = (vals.shape, *key)
        query = self._queries.get(key)
        if query is None:
            query = self._queries[key] = build(*args)
        return query

    def _reach(self, name: str, vals: _Values, conn: Connection,
               memo: dict[str, _Reach | None] | None = None) -> _Reach | None:
        """How this person's request reaches rows of `name`, as WHERE clauses; None if nothing can match.

        A row is the person's (`mine`) when matched directly by a non-shared identifier, or when it is
        owned by one of their rows or matched by a shared identifier (a household phone) and none of its
        identity columns names someone else. Rows reached through a relation are never the person's.
        """
        memo = {} if memo is None else memo  # one parent's clause serves all its children in this call
        if name in memo:
            return memo[name]
        entity = self.spec.entities[name]
        table = self._table(name, conn)
        strong: list[sa.ColumnElement[bool]] = []
        shared: list[sa.ColumnElement[bool]] = []
        for type_, column in entity.identity_columns():
            cond = vals.match(table.c[column], type_)
            if cond is not None:
                (shared if type_ in entity.shared_types() else strong).append(cond)
        owned = _any(cond for _, _, cond in self._via(entity.owners(), vals, conn, table, memo))
        contested = self._contested(name, table, vals, conn, memo) if owned is not None else None
        mine_parts: list[sa.ColumnElement[bool]] = []
        if strong:
            mine_parts.append(sa.or_(*strong))
        learnable = set(entity.learn)
        if owned is not None:
            ok = [owned, sa.not_(self._names_other(table, entity, vals, learnable))]
            mine_parts.append(sa.and_(*ok, sa.not_(contested)) if contested is not None else sa.and_(*ok))
        if shared:
            mine_parts.append(sa.and_(sa.or_(*shared), sa.not_(self._names_other(table, entity, vals, set()))))
        reached = [c for c in (*strong, *shared, owned) if c is not None]
        mine = sa.or_(*mine_parts) if reached else sa.false()
        # `mine` is NULL, not false, on a row whose identity column is NULL: negate it only NULL-safe.
        not_mine = sa.not_(sa.func.coalesce(mine, sa.false()))
        # Relations are resolved once this entity's own rows are known: a relation may point back at it.
        memo[name] = _Reach(mine=mine, strong=None, owned=None, others=None, related=None)
        tied = self._via(entity.relations(), vals, conn, table, memo)
        related = _any(cond for _, ref, cond in tied if ref.export)
        linked = _any(cond for _, _, cond in tied)
        result = None
        if reached:
            owned_too = sa.and_(owned, contested) if owned is not None and contested is not None else None
            others = None
            # Only an owned row or a shared-identifier match can name someone else: counting is skipped
            # where it cannot (a table without identity columns, or reached only by its own).
            if entity.identities and (owned is not None or shared):
                others = sa.and_(sa.or_(*reached), not_mine)
                if owned_too is not None:  # counted once, as owned by someone else too
                    others = sa.and_(others, sa.not_(owned_too))
            result = _Reach(
                mine=mine,
                strong=sa.or_(*strong) if strong else None,
                owned=owned,
                others=others,
                related=sa.and_(related, not_mine) if related is not None else None,
                linked=sa.and_(linked, not_mine) if linked is not None else None,
                mine_is_strong=bool(strong) and owned is None and not shared,
                contested=sa.and_(owned_too, not_mine) if owned_too is not None else None,
            )
        elif linked is not None:
            result = _Reach(mine=sa.false(), strong=None, owned=None, others=None, related=related, linked=linked)
        memo[name] = result
        return result

    def _via(self, refs: list[tuple[str, Reference]], vals: _Values, conn: Connection, table: sa.Table,
             memo: dict[str, _Reach | None]) -> list[tuple[str, Reference, sa.ColumnElement[bool]]]:
        """Per reference: this table's rows whose column holds the value of the other entity's column on a
        row that is the person's (whichever table holds the foreign key: the clause is the same)."""
        conds: list[tuple[str, Reference, sa.ColumnElement[bool]]] = []
        for column, ref in refs:
            parent_reach = self._reach(ref.entity, vals, conn, memo)
            if parent_reach is None:
                continue
            parent = self._table(ref.entity, conn)
            conds.append((column, ref, table.c[column].in_(sa.select(parent.c[ref.column]).where(parent_reach.mine))))
        return conds

    def _contested(self, name: str, table: sa.Table, vals: _Values, conn: Connection,
                   memo: dict[str, _Reach | None]) -> sa.ColumnElement[bool] | None:
        """Rows an owning reference ties to a row that is not the person's: an address their customer row
        and someone else's order both point at is someone else's too, and left alone. None where no such row
        can exist: a reference to the other entity's whole key names one row, the person's."""
        conds: list[sa.ColumnElement[bool]] = []
        for column, ref in self.spec.entities[name].owners():
            if self.spec.entities[ref.entity].key_columns() == [ref.column]:
                continue
            parent_reach = self._reach(ref.entity, vals, conn, memo)
            parent = self._table(ref.entity, conn)
            target = parent.c[ref.column]
            theirs = sa.not_(sa.func.coalesce(parent_reach.mine, sa.false())) if parent_reach else sa.true()
            conds.append(table.c[column].in_(sa.select(target).where(target.is_not(None), theirs)))
        return sa.func.coalesce(sa.or_(*conds), sa.false()) if conds else None

    def _names_other(self, table: sa.Table, entity: EntitySpec, vals: _Values,
                     exempt: set[IdentityType]) -> sa.ColumnElement[bool]:
        """The row holds, in an identity column not in `exempt`, an identifier that is not the person's."""
        conds: list[sa.ColumnElement[bool]] = []
        for type_, column in entity.identity_columns():
            if type_ in exempt:
                continue
            col = table.c[column]
            present: sa.ColumnElement[bool] = col.is_not(None)
            if python_type(col) is str:
                present = sa.and_(present, sa.func.trim(col) != "")
            theirs = vals.match(col, type_)
            conds.append(sa.and_(present, sa.not_(theirs)) if theirs is not None else present)
        return sa.or_(*conds) if conds else sa.false()

    def _count_skipped(self, conn: Connection, table: sa.Table, name: str, reach: _Reach,
                       into: dict[str, dict[str, int]], vals: _Values) -> None:
        """How many rows the request reached but left alone, and why (counts only, never values)."""
        for why, cond in self._skipped(reach):
            if cond is None:
                continue
            query = self._query(vals, (name, "skipped", why),
                                lambda c: sa.select(sa.func.count()).select_from(table).where(c), cond)
            n = int(self._run(conn, query, vals).scalar_one())
            if n:
                into.setdefault(name, {})[why] = n

    def _hold_date(self, name: str, table: sa.Table, entity: EntitySpec,
                   conn: Connection) -> tuple[sa.ColumnElement[Any], sa.Column[Any]]:
        """The date a row's own hold runs from (its own column, or its referenced parent's), and that column."""
        assert entity.hold is not None and entity.hold.from_ is not None
        parent = entity.hold.parent()
        if parent is None:
            return table.c[entity.hold.from_], table.c[entity.hold.from_]
        parent_name, parent_col = parent
        ref_col, ref = next((c, r) for c, r in entity.owners() if r.entity == parent_name)
        parent_table = self._table(parent_name, conn)
        if parent_col not in parent_table.c:
            raise PermanentError(self.name, f"entity {name}: hold.from column {parent_col} not in {parent_table.name}")
        col = parent_table.c[parent_col]
        expr = sa.select(col).where(parent_table.c[ref.column] == table.c[ref_col]).limit(1).scalar_subquery()
        return expr, col

    def _held(self, name: str, table: sa.Table, entity: EntitySpec, now: datetime,
              conn: Connection) -> sa.ColumnElement[bool]:
        """Rows within their own dated hold."""
        assert entity.hold is not None and entity.hold.years is not None
        expr, col = self._hold_date(name, table, entity, conn)
        bound = bound_for(col, _years_before(now, entity.hold.years))
        # A row without the date cannot be shown to be past its hold: keep it.
        return sa.or_(expr >= bound, expr.is_(None))

    def _held_any(self, name: str, table: sa.Table, now: datetime, conn: Connection) -> sa.ColumnElement[bool]:
        """Rows held, by a hold of their own or because a row owning them is held."""
        entity = self.spec.entities[name]
        parts = [self._held(name, table, entity, now, conn)] if entity.hold and entity.hold.with_ is None else []
        by_parent = self._held_by_parent(name, table, now, conn)
        if by_parent is not None:
            parts.append(by_parent)
        return sa.or_(*parts) if parts else sa.false()

    def _held_by_parent(self, name: str, table: sa.Table, now: datetime,
                        conn: Connection) -> sa.ColumnElement[bool] | None:
        """Rows an owning reference ties to a held row (never NULL: a row without the reference is not)."""
        parts: list[sa.ColumnElement[bool]] = []
        for column, ref in self.spec.held_parents(name):
            parent = self._table(ref.entity, conn)
            target = parent.c[ref.column]
            held = sa.select(target).where(target.is_not(None), self._held_any(ref.entity, parent, now, conn))
            parts.append(sa.and_(table.c[column].is_not(None), table.c[column].in_(held)))
        return sa.or_(*parts) if parts else None

    def _parent_hold_source(self, name: str, table: sa.Table,
                            conn: Connection) -> tuple[sa.ColumnElement[Any], HoldSpec, str] | None:
        """For rows kept with a held owner: the date their hold ends from (the owner's hold date), the dated
        hold it follows, and the owner. The `with` parent when declared, else the first held owner."""
        entity = self.spec.entities[name]
        refs = sorted(self.spec.held_parents(name),
                      key=lambda cr: not (entity.hold is not None and cr[1].entity == entity.hold.with_))
        if not refs:
            return None
        column, ref = refs[0]
        parent_table, parent = self._table(ref.entity, conn), self.spec.entities[ref.entity]
        if parent.hold and parent.hold.with_ is None:
            expr, _col = self._hold_date(ref.entity, parent_table, parent, conn)
            root = parent.hold
        else:
            found = self._parent_hold_source(ref.entity, parent_table, conn)
            if found is None:
                return None
            expr, root, _ = found
        date = sa.select(expr).where(parent_table.c[ref.column] == table.c[column]).limit(1).scalar_subquery()
        return date, root, ref.entity

    def _hold_entry(self, conn: Connection, name: str, expr: sa.ColumnElement[Any], cond: sa.ColumnElement[bool],
                    years: int, reason: str | dict[str, str] | None) -> dict[str, Any] | None:
        """The receipt's `held` entry for the rows `cond` keeps: how many, and each day their hold ends (a
        scheduled erasure re-runs then); None when there are none."""
        dated = sa.select(expr.label("d")).where(cond).subquery()
        groups = conn.execute(sa.select(dated.c.d, sa.func.count()).group_by(dated.c.d)).all()
        count = sum(int(n) for _, n in groups)
        if not count:
            return None
        # Each day a hold ends is a scheduled erasure later; rows without a date are kept with no end.
        ends: dict[date, list[Any]] = {}
        for day, n in groups:
            if day is None:
                continue
            end = _add_years(as_datetime(day), years)
            slot = ends.setdefault(end.date(), [end, 0])
            slot[0], slot[1] = max(slot[0], end), slot[1] + int(n)
        until = max((end for end, _ in ends.values()), default=None)
        return {
            "entity": name,
            "records": count,
            "until": until.isoformat() if until else None,
            "reason": _english(reason),
            # every language's text, for the bundle page written in the person's language
            **({"reasons": dict(reason)} if isinstance(reason, dict) else {}),
            "ends": [{"until": end.isoformat(), "records": n} for _, (end, n) in sorted(ends.items())],
        }

    def _bucket(self, entity: EntitySpec) -> str:
        assert entity.files is not None and self.spec.s3 is not None
        return entity.files.bucket or self.spec.s3.bucket

    def _file_rows(self, conn: Connection, table: sa.Table, entity: EntitySpec, cond: sa.ColumnElement[bool],
                   *extra: sa.ColumnElement[Any]) -> Iterator[dict[str, Any]]:
        assert entity.files is not None
        cols = [table.c[c] for c in entity.files.template().fields]
        for row in conn.execute(sa.select(*cols, *(e.label(f"_x{i}") for i, e in enumerate(extra))).where(cond)):
            yield dict(row._mapping)

    def _restrict_files(self, conn: Connection, table: sa.Table, entity: EntitySpec,
                        cond: sa.ColumnElement[bool], hold_date: sa.ColumnElement[Any]) -> int:
        """Tag the files of held rows `dsar-restricted=<the day the row's hold ends>`; how many are kept."""
        if not entity.files or self.s3 is None:
            return 0
        assert entity.hold is not None and entity.hold.years is not None
        bucket, template, kept = self._bucket(entity), entity.files.template(), 0
        for row in self._file_rows(conn, table, entity, cond, hold_date):
            day = row["_x0"]
            value = _add_years(as_datetime(day), entity.hold.years).date().isoformat() if day else "held"
            for obj in self.s3.find(bucket, template, row):
                self.s3.set_restricted(bucket, obj.key, value)
                kept += 1
        return kept

    def _delete_files(self, conn: Connection, table: sa.Table, entity: EntitySpec,
                      cond: sa.ColumnElement[bool]) -> int:
        if not entity.files or self.s3 is None:
            return 0
        bucket, template, deleted = self._bucket(entity), entity.files.template(), 0
        for row in self._file_rows(conn, table, entity, cond):
            for obj in self.s3.find(bucket, template, row):
                self.s3.delete(bucket, obj.key)
                deleted += 1
        return deleted

    def _flag_files(self, conn: Connection, table: sa.Table, entity: EntitySpec, cond: sa.ColumnElement[bool],
                    which: str) -> int:
        """Art. 18 restriction tags the files `dsar-restricted=yes` (a hold's date stays); lifting removes it."""
        if not entity.files or self.s3 is None:
            return 0
        bucket, template, changed = self._bucket(entity), entity.files.template(), 0
        for row in self._file_rows(conn, table, entity, cond):
            for obj in self.s3.find(bucket, template, row):
                if which == "restrict":
                    changed += self.s3.set_restricted(bucket, obj.key, "yes", only_if_absent=True)
                else:
                    changed += self.s3.set_restricted(bucket, obj.key, None)
        return changed

    # -- inactivity -----------------------------------------------------------------------

    def inactive_subjects(self, cutoff: datetime) -> Iterator[tuple[str, datetime | None]]:
        """(e-mail, last activity) of everyone whose last activity is before `cutoff`.

        Rows whose restriction flags are set are left alone (a restriction may mean the person needs
        the data kept), and rows whose e-mail is no longer an address (already erased) are skipped.
        """
        spec = self.spec.inactivity
        if spec is None:
            raise PermanentError(self.name, "the data map names no 'inactivity' entity and last-activity column")
        entity = self.spec.entities[spec.entity]
        with self._connect() as conn:
            table = self._table(spec.entity, conn)
            activity, col = self._activity(table)
            conds = [activity < bound_for(col, cutoff)]
            for column, value in (entity.restrict.set.items() if entity.restrict else ()):
                conds.append(sa.not_(carries(table.c[column], value)))
            # the first e-mail column: the address the account is told at (a second one, alt_email, is not)
            email = table.c[next(c for t, c in entity.identity_columns() if t == IdentityType.EMAIL)]
            query = sa.select(email, activity).where(*conds).order_by(*(table.c[k] for k in entity.key_columns())) \
                .execution_options(yield_per=500)
            for stored, last in conn.execute(query):
                try:
                    yield normalise_email(str(stored)), as_datetime(last) if last is not None else None
                except InvalidEmail:
                    continue

    def last_activity(self, identities: Identities) -> datetime | None:
        """The person's latest activity in the inactivity entity; None if they are not there (or never active)."""
        spec = self.spec.inactivity
        if spec is None:
            raise PermanentError(self.name, "the data map names no 'inactivity' entity and last-activity column")
        with self._connect() as conn:
            reach = self._reach(spec.entity, _Values(identities), conn)
            if reach is None:
                return None
            cond = reach.mine
            activity, _col = self._activity(self._table(spec.entity, conn))
            latest = conn.execute(sa.select(sa.func.max(activity)).where(cond)).scalar_one()
        return as_datetime(latest) if latest is not None else None

    def _activity(self, table: sa.Table) -> tuple[sa.ColumnElement[Any], sa.Column[Any]]:
        spec = self.spec.inactivity
        assert spec is not None
        for column in (spec.last_activity, spec.fallback):
            if column and column not in table.c:
                raise PermanentError(self.name, f"inactivity: column '{column}' does not exist in table {table.name}")
        col = table.c[spec.last_activity]
        return (sa.func.coalesce(col, table.c[spec.fallback]) if spec.fallback else col), col

    def _erase_rows(self, conn: Connection, name: str, table: sa.Table, entity: EntitySpec, keys: list[Key]) -> int:
        """Delete or mask the rows of `keys`; a key matching several rows (a primary_key that is not the
        table's whole key) stops the erasure, which is rolled back: it could reach someone else's rows."""
        cols = [table.c[k] for k in entity.key_columns()]
        if entity.erase.strategy == "delete":
            deleted = 0
            for start in range(0, len(keys), KEY_CHUNK):
                chunk = keys[start:start + KEY_CHUNK]
                done = int(conn.execute(sa.delete(table).where(_keys_in(table, entity, chunk))).rowcount or 0)
                if done > len(chunk):
                    raise self._not_unique(name, entity)
                deleted += done
            return deleted
        changed = 0
        for key in keys:
            where = sa.and_(*(c == v for c, v in zip(cols, key, strict=True)))
            values = {col: mask_value(table.c[col], how, row=f"{entity.table}:{record_id(key)}",
                                      secret_key=self.ctx.secret_key)
                      for col, how in entity.erase.mask.items()}
            current = conn.execute(sa.select(*(table.c[c] for c in values)).where(where).limit(2)).all()
            if len(current) > 1:
                raise self._not_unique(name, entity)
            if not current or all(same(a, b) for a, b in zip(current[0], values.values(), strict=True)):
                continue  # already erased: a re-run changes nothing
            conn.execute(sa.update(table).where(where).values(**_sql(values)))
            changed += 1
        return changed

    def _not_unique(self, name: str, entity: EntitySpec) -> PermanentError:
        return PermanentError(self.name, f"entity {name}: primary_key ({', '.join(entity.key_columns())}) matches "
                                         f"several rows of table {entity.table}; declare the whole key (a list of "
                                         "columns); nothing was changed")

    def _set_flags(self, identities: Identities, entities: Iterable[str] | None, which: str) -> Receipt:
        receipt = Receipt(system=self.name, action="restrict" if which == "restrict" else "lift_restriction")
        wanted = self._wanted(entities)
        now = self.ctx.clock()
        memo: dict[str, _Reach | None] = {}
        vals = _Values(identities)
        with self._begin() as conn:
            for name in self.order:
                entity = self.spec.entities[name]
                spec = entity.restrict if which == "restrict" else entity.lift
                if name not in wanted or spec is None:
                    continue
                reach = self._reach(name, vals, conn, memo)
                if reach is None:
                    continue
                cond = reach.mine
                table = self._table(name, conn)
                self._count_skipped(conn, table, name, reach, receipt.skipped, vals)
                marks = {c: marker_value(table.c[c], v, now) for c, v in spec.set.items()}
                differs = sa.or_(*(sa.not_(carries(table.c[c], v)) for c, v in spec.set.items()))
                files = self._flag_files(conn, table, entity, cond, which)
                update = sa.update(table).where(sa.and_(cond, differs)).values(**_sql(marks))
                changed = int(conn.execute(update).rowcount)
                if changed:
                    receipt.changed[name] = changed
                    if which == "restrict":
                        receipt.note(N_("{entity}: {count} restricted"), entity=name, count=changed)
                    else:
                        receipt.note(N_("{entity}: {count} lifted"), entity=name, count=changed)
                if files:
                    receipt.changed[f"{name}.files"] = files
                    if which == "restrict":
                        receipt.note(N_("{entity}: {count} file(s) tagged {tag}"), entity=name, count=files,
                                     tag=RESTRICTED_TAG)
                    else:
                        receipt.note(N_("{entity}: {count} file(s) untagged {tag}"), entity=name, count=files,
                                     tag=RESTRICTED_TAG)
        return receipt

    # -- retention (connectors.retention; docs/retention.md) ------------------------------------------

    def retention_rules(self) -> list[RetentionRule]:
        """The map's `retention:` rules (a `then: notice` rule is the inactivity sweep's), and every dated
        hold as the rule `hold ends` keeps (rows an erasure restricted go when their hold ends)."""
        rules = []
        for name, spec in self.spec.retention_rules():
            rules.append(RetentionRule(
                system=self.name, entity=name, text=rule_note(name, spec), period=spec.period, from_field=spec.from_,
                mechanism=MECHANISM_INACTIVITY if spec.then == "notice" else MECHANISM_RUN, then=spec.then,
                unless=tuple(spec.unless), reason=_text(spec.reason), spec=spec))
        for name in self.order:
            hold = self.spec.entities[name].hold
            if hold is None or hold.with_ is not None:
                continue
            assert hold.years is not None and hold.from_ is not None
            rules.append(RetentionRule(
                system=self.name, entity=name, mechanism=MECHANISM_HOLD_END, then="erase",
                period=Period(hold.years, "years"), from_field=hold.from_, unless=(), reason=_text(hold.reason),
                text=note(N_("{what}: when you ask for erasure, kept and restricted for {period} after {start} "
                             "({reason}), then erased"), what=name, period=Period(hold.years, "years").note(),
                          start=hold.from_, reason=_text(hold.reason))))
        return rules

    def retention_due(self, rule: RetentionRule, now: datetime, keep: Keep) -> Due:
        name, spec = self._retention_spec(rule)
        out = Due()
        with self._connect() as conn:
            table = self._table(name, conn)
            expr, due, kept = self._retention_clauses(conn, name, table, spec, now, keep)
            out.undated = int(conn.execute(sa.select(sa.func.count()).select_from(table)
                                           .where(expr.is_(None))).scalar_one())
            left = due
            for attr, _why, cond in kept:
                n = conn.execute(sa.select(sa.func.count()).select_from(table).where(left, cond)).scalar_one()
                setattr(out, attr, int(n))
                left = sa.and_(left, sa.not_(cond))
            count, oldest = conn.execute(sa.select(sa.func.count(), sa.func.min(expr)).select_from(table)
                                         .where(left)).one()
            out.due, out.oldest = int(count), as_datetime(oldest) if oldest is not None else None
        return out

    def retention_apply(self, rule: RetentionRule, now: datetime, keep: Keep, batch: int = 1000,
                        cursor: Any = None, checkpoint: Any = None) -> Receipt:
        """Erase or anonymise the rows due, `batch` keys per transaction in key order; what they own goes with
        them (children first, as an erasure does it). A batch commits whole or not at all, and the cursor (the
        last key done) moves only after its commit: resuming from it touches no row twice."""
        name, spec = self._retention_spec(rule)
        if spec.then == "notice":
            raise UnsupportedAction(self.name, f"entity {name}: then notice is carried out by the inactivity sweep")
        entity = self.spec.entities[name]
        receipt = Receipt(system=self.name, action="retention")
        with self._connect() as conn:
            table = self._table(name, conn)
            cols = [table.c[k] for k in entity.key_columns()]
            _expr, due, kept = self._retention_clauses(conn, name, table, spec, now, keep)
            left = due
            for _attr, why, cond in kept:
                n = int(conn.execute(sa.select(sa.func.count()).select_from(table).where(left, cond)).scalar_one())
                if n:
                    receipt.skipped.setdefault(name, {})[why] = n
                left = sa.and_(left, sa.not_(cond))
            below = [] if spec.then == "anonymise" else self._owned_below(name)
        last = tuple(cursor) if cursor is not None else None
        while True:
            with self._begin() as conn:
                table = self._table(name, conn)
                page = sa.select(*cols).where(left).order_by(*cols).limit(batch)
                if last is not None:
                    page = page.where((sa.tuple_(*cols) if len(cols) > 1 else cols[0]) >
                                      (sa.tuple_(*last) if len(cols) > 1 else last[0]))
                keys: list[Key] = [tuple(r) for r in conn.execute(page)]
                if not keys:
                    break
                self._retention_batch(conn, name, table, entity, keys, below, spec, receipt)
            last = keys[-1]
            if checkpoint is not None:
                checkpoint([jsonable(v) for v in last], receipt)
            if len(keys) < batch:
                break
        for what, changed in receipt.changed.items():
            verb = N_("{entity}: {count} anonymised") if spec.then == "anonymise" else N_("{entity}: {count} erased")
            receipt.note(verb, entity=what, count=changed)
        return receipt

    def _retention_batch(self, conn: Connection, name: str, table: sa.Table, entity: EntitySpec, keys: list[Key],
                         below: list[tuple[str, sa.ColumnElement[bool] | None]], spec: RetentionSpec,
                         receipt: Receipt) -> None:
        if spec.then == "anonymise":
            changed = self._mask_rows(conn, name, table, entity, keys, entity.retention_mask())
            if changed:
                receipt.changed[name] = receipt.changed.get(name, 0) + changed
            return
        # the rows this batch's rows own, any number of hops down; read before any changes
        plans: dict[str, list[Key]] = {name: keys}
        for child, _ in below:
            ctable = self._table(child, conn)
            plans[child] = self._keys(conn, ctable, self.spec.entities[child],
                                      self._owned_by(conn, child, ctable, name, keys))
        for n in self._change_order(conn, {n: _Erasure() for n in plans}):
            if not plans[n]:
                continue
            e, t = self.spec.entities[n], self._table(n, conn)
            files = self._delete_files(conn, t, e, _keys_in(t, e, plans[n]))
            if files:
                receipt.changed[f"{n}.files"] = receipt.changed.get(f"{n}.files", 0) + files
            changed = self._erase_rows(conn, n, t, e, plans[n])
            if changed:
                receipt.changed[n] = receipt.changed.get(n, 0) + changed

    def _mask_rows(self, conn: Connection, name: str, table: sa.Table, entity: EntitySpec, keys: list[Key],
                   mask: dict[str, Any]) -> int:
        """Anonymise rows by key with `mask` (a row already masked is left as it is: a re-run changes nothing)."""
        cols = [table.c[k] for k in entity.key_columns()]
        changed = 0
        for key in keys:
            where = sa.and_(*(c == v for c, v in zip(cols, key, strict=True)))
            values = {col: mask_value(table.c[col], how, row=f"{entity.table}:{record_id(key)}",
                                      secret_key=self.ctx.secret_key) for col, how in mask.items()}
            current = conn.execute(sa.select(*(table.c[c] for c in values)).where(where).limit(2)).all()
            if len(current) > 1:
                raise self._not_unique(name, entity)
            if not current or all(same(a, b) for a, b in zip(current[0], values.values(), strict=True)):
                continue
            conn.execute(sa.update(table).where(where).values(**_sql(values)))
            changed += 1
        return changed

    def _retention_spec(self, rule: RetentionRule) -> tuple[str, RetentionSpec]:
        entity = self.spec.entities.get(rule.entity)
        if entity is None or entity.retention is None or rule.mechanism not in (MECHANISM_RUN, MECHANISM_INACTIVITY):
            raise UnsupportedAction(self.name, f"no retention rule for {rule.entity}")
        return rule.entity, entity.retention

    def _retention_clauses(self, conn: Connection, name: str, table: sa.Table, spec: RetentionSpec, now: datetime,
                           keep: Keep) -> tuple[sa.ColumnElement[Any], sa.ColumnElement[bool],
                                                list[tuple[str, str, sa.ColumnElement[bool]]]]:
        """The rule's date, the rows past retention (connectors.retention's boundary, in the column's own type),
        and what keeps some of them, in the order they are counted: (Due attribute, receipt reason, rows) for a
        hold, an open request and a restriction (Art. 18)."""
        entity = self.spec.entities[name]
        parent = spec.parent()
        if parent is None:
            col = table.c[spec.from_]
            expr: sa.ColumnElement[Any] = col
        else:
            parent_name, parent_col = parent
            ref_col, ref = next((c, r) for c, r in entity.owners() if r.entity == parent_name)
            parent_table = self._table(parent_name, conn)
            if parent_col not in parent_table.c:
                raise PermanentError(self.name, f"entity {name}: retention.from column {parent_col} not in "
                                                f"{parent_table.name}")
            col = parent_table.c[parent_col]
            expr = sa.select(col).where(parent_table.c[ref.column] == table.c[ref_col]).limit(1).scalar_subquery()
        if spec.fallback:
            expr = sa.func.coalesce(expr, table.c[spec.fallback])
        due = sa.and_(expr.is_not(None), expr < bound_for(col, cutoff_moment(spec.period, now)))
        if spec.then == "notice":  # as the sweep: a restricted account is not told (it may need its data)
            for column, value in (entity.restrict.set.items() if entity.restrict else ()):
                due = sa.and_(due, sa.not_(carries(table.c[column], value)))
        kept: list[tuple[str, str, sa.ColumnElement[bool]]] = []
        if keep.holds and "hold" in spec.unless:
            held = [self._held_any(name, table, now, conn), *self._held_below(name, table, now, conn)]
            kept.append(("kept_hold", KEPT_HOLD, sa.func.coalesce(sa.or_(*held), sa.false())))
        if keep.requests and "open_request" in spec.unless and keep.identities is not None and len(keep.identities):
            reach = self._reach(name, _Values(keep.identities), conn)
            if reach is not None:
                kept.append(("kept_request", KEPT_REQUEST, sa.func.coalesce(reach.mine, sa.false())))
        # Art. 18 whatever `unless` says: erasing or masking a restricted row is processing it. A marker a hold
        # wrote looks the same as an Art. 18 one; such a row goes at its hold end (the `hold ends` mechanism).
        restricted = self._restricted(name, table, conn)
        if keep.restricted is not None and len(keep.restricted):
            reach = self._reach(name, _Values(keep.restricted), conn)
            if reach is not None:
                restricted.append(sa.func.coalesce(reach.mine, sa.false()))
        if restricted:
            kept.append(("kept_restricted", KEPT_RESTRICTED, sa.or_(*restricted)))
        return expr, due, kept

    def _restricted(self, name: str, table: sa.Table, conn: Connection,
                    seen: frozenset[str] = frozenset()) -> list[sa.ColumnElement[bool]]:
        """Rows carrying the entity's restriction marker, and rows owning such a row further down (erasing them
        would take it along)."""
        entity = self.spec.entities[name]
        out: list[sa.ColumnElement[bool]] = []
        if entity.restrict is not None and entity.restrict.set:
            out.append(sa.and_(*(carries(table.c[c], v) for c, v in entity.restrict.set.items())))
        for child in self.order:
            if child in seen or child == name:
                continue
            for column, ref in self.spec.entities[child].owners():
                if ref.entity != name:
                    continue
                ctable = self._table(child, conn)
                below = self._restricted(child, ctable, conn, seen | {name})
                if below:
                    target = ctable.c[column]
                    out.append(table.c[ref.column].in_(
                        sa.select(target).where(target.is_not(None), sa.or_(*below))))
        return out

    def _owned_below(self, name: str) -> list[tuple[str, sa.ColumnElement[bool] | None]]:
        """Every entity owned by `name`'s rows, directly or further down, owners first."""
        found: list[str] = []
        frontier = [name]
        while frontier:
            here = frontier.pop(0)
            for child in self.order:
                if child not in found and child != name and \
                        any(r.entity == here for _, r in self.spec.entities[child].owners()):
                    found.append(child)
                    frontier.append(child)
        return [(n, None) for n in self.order if n in found]

    def _owned_by(self, conn: Connection, child: str, ctable: sa.Table, root: str,
                  keys: list[Key]) -> sa.ColumnElement[bool]:
        """Rows of `child` owned (through any chain of owning references) by the `root` rows of `keys`."""
        conds: list[sa.ColumnElement[bool]] = []
        for column, ref in self.spec.entities[child].owners():
            parent_table = self._table(ref.entity, conn)
            if ref.entity == root:
                parents = sa.select(parent_table.c[ref.column]).where(
                    _keys_in(parent_table, self.spec.entities[root], keys))
            elif any(ref.entity == n for n, _ in self._owned_below(root)):
                parents = sa.select(parent_table.c[ref.column]).where(
                    self._owned_by(conn, ref.entity, parent_table, root, keys))
            else:
                continue
            conds.append(ctable.c[column].in_(parents))
        return sa.or_(*conds) if conds else sa.false()

    def _held_below(self, name: str, table: sa.Table, now: datetime, conn: Connection) -> list[sa.ColumnElement[bool]]:
        """Rows owning a held row further down (an order whose invoice is held): erasing them would take it along."""
        out: list[sa.ColumnElement[bool]] = []
        for child in self.order:
            centity = self.spec.entities[child]
            for column, ref in centity.owners():
                if ref.entity != name or (centity.hold is None and not self._has_hold_below(child)):
                    continue
                ctable = self._table(child, conn)
                held = [self._held_any(child, ctable, now, conn), *self._held_below(child, ctable, now, conn)]
                target = ctable.c[column]
                out.append(table.c[ref.column].in_(sa.select(target).where(target.is_not(None), sa.or_(*held))))
        return out

    def _has_hold_below(self, name: str) -> bool:
        return any(r.entity == name and (self.spec.entities[c].hold is not None or self._has_hold_below(c))
                   for c in self.order for _, r in self.spec.entities[c].owners())


class _DbErrors:
    """Context manager that turns driver errors into connector errors without leaking values."""

    def __init__(self, system: str, opener: Any) -> None:
        self.system = system
        try:  # Engine.connect() connects at once: an unreachable database fails here, not in __enter__
            self._cm = opener()
        except OperationalError as exc:
            raise TransientError.of(self.system, note(N_("database unreachable: {reason}"),
                                                      reason=db_reason(exc))) from None

    def __enter__(self) -> Connection:
        try:
            return self._cm.__enter__()  # type: ignore[no-any-return]
        except OperationalError as exc:
            raise TransientError.of(self.system, note(N_("database unreachable: {reason}"),
                                                      reason=db_reason(exc))) from None

    def __exit__(self, *exc: Any) -> Any:
        try:
            handled = self._cm.__exit__(*exc)
        except OperationalError as err:
            raise TransientError.of(self.system, note(N_("database error: {reason}"), reason=db_reason(err))) from None
        # A driver error raised inside the block (the transaction is rolled back by now) carries the
        # statement and its parameters, personal data among them: only its first line goes on, scrubbed.
        error = exc[1] if len(exc) > 1 else None
        if isinstance(error, OperationalError) and _transient(error):
            raise TransientError.of(self.system, note(N_("database error: {reason}"),
                                                      reason=db_reason(error))) from None
        if isinstance(error, ValueProblem):  # a mask or marker `dsar check` would have refused
            raise PermanentError.of(self.system, note(N_("a value in the data map cannot be stored, nothing was "
                                                         "changed: {reason}"), reason=str(error))) from None
        # a refused value (MariaDB reports some as OperationalError) or one the driver could not convert
        # (StatementError) is the same next time: fail once
        if isinstance(error, SQLAlchemyError):
            raise PermanentError.of(self.system, note(N_("the database refused the change, nothing was changed: "
                                                         "{reason}"), reason=db_reason(error))) from None
        return handled

    def __getattr__(self, item: str) -> Any:
        return getattr(self._cm, item)


# MySQL/MariaDB error codes that pass: client-side connection errors (2000-2999), too many connections,
# shutdown, lock wait timeout, deadlock, connection killed. Others (1292 a wrong value ...) do not.
_MYSQL_TRANSIENT = frozenset({1040, 1053, 1205, 1213, 1927})


EXPORT_BATCH = 500


@dataclass(frozen=True)
class _Paged:
    """An export query as _rows runs it, both forms built once and kept (the first may run on the driver's cursor,
    sql_driver): a first page one row longer than a batch, and the whole query streamed `batch` rows at a time."""

    first: sa.Select[Any]
    streamed: sa.Select[Any]
    batch: int

    @classmethod
    def of(cls, query: sa.Select[Any], batch: int = EXPORT_BATCH) -> _Paged:
        return cls(query.limit(batch + 1), query.execution_options(yield_per=batch), batch)


def _rows(conn: Connection, paged: _Paged, params: dict[str, Any] | None = None) -> Iterator[sa.Row[Any]]:
    """An export query's rows in order: in one plain round trip when they fit in a batch (most people's rows do), else
    streamed through a server-side cursor, a batch at a time, so a person with a million rows is never held in
    memory at once. A cursor costs three round trips (declare, fetch, close) where the plain query costs one."""
    first = sql_driver.execute(conn, paged.first, params or {}).all()  # kept statements only (see _Paged)
    if len(first) <= paged.batch:
        yield from first
        return
    yield from conn.execute(paged.streamed, params)


def _transient(exc: OperationalError) -> bool:
    code = getattr(exc.orig, "args", (None,))[0] if exc.orig is not None else None
    if not isinstance(code, int) or type(exc.orig).__module__.split(".")[0] not in ("pymysql", "MySQLdb"):
        return True  # psycopg and others raise OperationalError for connection trouble
    return code >= 2000 or code in _MYSQL_TRANSIENT


def _sql(values: dict[str, Any]) -> dict[str, Any]:
    """Values for an UPDATE: None is SQL NULL (a JSON column would store the JSON text 'null')."""
    return {c: sa.null() if v is None else v for c, v in values.items()}


# An unreachable database must fail a locate or export in seconds, not after the TCP timeout.
CONNECT_TIMEOUT_SECONDS = 10


def _connect_args(url: str) -> dict[str, Any]:
    driver = sa.engine.make_url(url).get_backend_name()
    if driver in ("mysql", "mariadb"):
        # TIMESTAMP columns are shown and compared in the session's zone: UTC, as the retention boundary and every
        # timestamp without a zone are read (the server's own zone may be anything)
        return {"connect_timeout": CONNECT_TIMEOUT_SECONDS, "init_command": "SET time_zone = '+00:00'"}
    return {"connect_timeout": CONNECT_TIMEOUT_SECONDS} if driver == "postgresql" else {}


def db_reason(exc: SQLAlchemyError) -> str:
    text = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return redact(text)[:200]


# how a column is masked, as a word the bundle page translates (the data map's names, in English)
MASK_METHODS = {"null": N_("null"), "hash": N_("hash"), "redact": N_("redact")}
FIXED_VALUE = N_("fixed value")


def _method_name(method: Any) -> Note:
    return Note(FIXED_VALUE if isinstance(method, Fixed) else MASK_METHODS.get(str(method), str(method)))


def record_id(values: Iterable[Any]) -> str:
    """A row's id in exports and receipts: its key's value; a composite key's values in key order, each
    percent-encoded (so no part can contain the separator) and joined by '/': `17/3`."""
    parts = [str(v) for v in values]
    return parts[0] if len(parts) == 1 else "/".join(quote(p, safe="") for p in parts)


def _keys_in(table: sa.Table, entity: EntitySpec, keys: Sequence[Key]) -> sa.ColumnElement[bool]:
    """The rows whose key is one of `keys` (a row value comparison for a composite key)."""
    if not keys:
        return sa.false()
    cols = [table.c[k] for k in entity.key_columns()]
    chunks = [keys[i:i + KEY_CHUNK] for i in range(0, len(keys), KEY_CHUNK)]
    if len(cols) == 1:
        return sa.or_(*(cols[0].in_([k[0] for k in chunk]) for chunk in chunks))
    return sa.or_(*(sa.tuple_(*cols).in_(list(chunk)) for chunk in chunks))


def _text(value: str | dict[str, str] | None) -> str | dict[str, str]:
    """A map text as a Note parameter: one text, or every language's (the page picks the person's)."""
    return dict(value) if isinstance(value, dict) else value or ""


def _english(value: str | dict[str, str] | None) -> str:
    if isinstance(value, dict):
        return value.get("en") or next(iter(value.values()))
    return value or ""


def _any(conds: Iterable[sa.ColumnElement[bool]]) -> sa.ColumnElement[bool] | None:
    """OR of the clauses, or None when there are none (nothing reaches the rows that way)."""
    found = list(conds)
    return sa.or_(*found) if found else None






def _identity_value(type_: IdentityType, value: Any) -> str | None:
    if value is None or value == "":
        return None
    if type_ == IdentityType.EMAIL:
        try:
            return normalise_email(str(value))
        except InvalidEmail:
            return None
    return str(value).strip() or None








def _add_years(moment: datetime, years: int) -> datetime:
    try:
        return moment.replace(year=moment.year + years)
    except ValueError:  # 29 February
        return moment.replace(year=moment.year + years, day=28)


def _years_before(moment: datetime, years: int) -> datetime:
    return _add_years(moment, -years)

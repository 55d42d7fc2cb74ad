"""A connector for any SQL database, driven entirely by its data-map entry (connectors.sql_map).

A person's rows are found by identity columns (e-mail compared as lower(trim(col)), so an
expression index on that makes the lookup an index scan) and by following references from
rows already found, any number of hops, as nested sub-selects: the database does the joins
and nothing is pulled into memory to find it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, NoSuchTableError, OperationalError, SQLAlchemyError

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
    note,
)
from connectors.emails import InvalidEmail, email_forms, normalise_email
from connectors.redact import redact
from connectors.s3_files import RESTRICTED_TAG, S3Files
from connectors.sql_check import check_system
from connectors.sql_map import EntitySpec, Fixed, Reference, SqlSystemSpec, parse_system, topological
from connectors.sql_values import (
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
warnings.filterwarnings("ignore", message="Skipped unsupported reflection of expression-based index",
                        category=sa.exc.SAWarning)

NAMES_SOMEONE_ELSE = N_("an identity column names someone else")
RELATED_NOT_OWNED = N_("related through a relation, not owned")


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
    # the person's rows are exactly those matched by a non-shared identifier (no owned or shared path)
    mine_is_strong: bool = False


class SqlConnector(Connector):
    def __init__(self, name: str, spec: SqlSystemSpec, engine: Engine, ctx: ConnectorContext) -> None:
        self.name = name
        self.spec = spec
        self.engine = engine
        self.ctx = ctx
        self.order = topological(spec.entities)
        self.entities = tuple(self.order)
        self._tables: dict[str, sa.Table] = {}
        self.s3 = S3Files(name, spec.s3, ctx) if spec.s3 else None

    @classmethod
    def from_settings(cls, name: str, settings: dict[str, Any], ctx: ConnectorContext) -> SqlConnector:
        spec = parse_system(name, dict(settings))
        url = ctx.secret(name, "url_env", spec.url_env)
        try:
            engine = sa.create_engine(url, pool_pre_ping=True, connect_args=_connect_args(url))
        except (SQLAlchemyError, ValueError) as exc:
            raise PermanentError(name, f"bad database URL in {spec.url_env}: {redact(str(exc))[:200]}") from None
        return cls(name, spec, engine, ctx)

    # -- planner view ---------------------------------------------------------------------

    def policies(self) -> dict[str, EntityPolicy]:
        out = {}
        for name, e in self.spec.entities.items():
            if e.erase.strategy == "delete":
                erase = Note(N_("delete rows"))
            else:
                erase = note(N_("mask {columns}"), columns=[note(N_("{column} ({method})"), column=c,
                                                                 method=_method_name(m))
                                                            for c, m in e.erase.mask.items()])
            restrict = note(N_("set {values}"), values=[note(N_("{column} to {value}"), column=c, value=repr(v))
                                                        for c, v in e.restrict.set.items()]) if e.restrict else None
            hold = Hold(e.hold.years, e.hold.from_, e.hold.reason_text(),
                        reasons=dict(e.hold.reason) if isinstance(e.hold.reason, dict) else None) if e.hold else None
            out[name] = EntityPolicy.of(erase, restrict, hold=hold,
                                     categories=tuple(sorted(set(e.fields.values()))),
                                     provided_by_subject=e.provided_by_subject)
        return out

    def accepts(self) -> set[IdentityType]:
        return {t for e in self.spec.entities.values() for t in e.identities}

    # -- operations -----------------------------------------------------------------------

    def locate(self, identities: Identities) -> Hits:
        hits = Hits(system=self.name, found=False)
        memo: dict[str, _Reach | None] = {}  # each entity's clauses, built once and shared by its children
        with self._connect() as conn:
            for name in self.order:
                reach = self._reach(name, identities, conn, memo)
                if reach is None:
                    continue
                table = self._table(name, conn)
                count = conn.execute(sa.select(sa.func.count()).select_from(table).where(reach.mine)).scalar_one()
                self._count_skipped(conn, table, name, reach, hits.skipped)
                if not count:
                    continue
                hits.counts[name] = int(count)
                hits.found = True
                self._learn(conn, table, name, reach, hits)
                if not reach.mine_is_strong:  # else _learn read the same rows' identifiers
                    self._touches(conn, table, name, reach, hits)
        return hits

    def _touches(self, conn: Connection, table: sa.Table, name: str, reach: _Reach, hits: Hits) -> None:
        """The identifiers on the rows a change would touch, normalised in Python: a second look, independent
        of the SQL that picked the rows, which the plan compares with everything known of the person."""
        entity = self.spec.entities[name]
        if not entity.identities:
            return
        columns = list(entity.identities.items())
        touched: set[Identity] = set()
        query = sa.select(*(table.c[c] for _, c in columns)).where(reach.mine).distinct().limit(1000)
        for row in conn.execute(query):
            for (type_, _column), value in zip(columns, row, strict=True):
                found = _identity_value(type_, value)
                if found:
                    touched.add(Identity(type_, found, source=self.name))
        if touched:
            hits.touches[name] = touched

    def _learn(self, conn: Connection, table: sa.Table, name: str, reach: _Reach, hits: Hits) -> None:
        """Identifiers from rows that are the person's: all identity columns of rows matched directly by a
        non-shared identifier, and the `learn` columns of rows owned through a declared ownership path."""
        entity = self.spec.entities[name]
        sources: list[tuple[sa.ColumnElement[bool], dict[IdentityType, str], Note]] = []
        if reach.strong is not None and entity.identities:
            sources.append((reach.strong, dict(entity.identities), note(N_("{table} (matched directly)"),
                                                                        table=entity.table)))
        learn = {t: entity.identities[t] for t in entity.learn}
        if reach.owned is not None and learn:
            sources.append((sa.and_(reach.owned, reach.mine), learn, self._path(name)))
        for cond, columns, path in sources:
            cols = [table.c[c] for c in columns.values()]
            for row in conn.execute(sa.select(*cols).where(cond).distinct().limit(1000)):
                for (type_, column), value in zip(columns.items(), row, strict=True):
                    learned = _identity_value(type_, value)
                    if learned and reach.mine_is_strong:  # these rows are all a change would touch here
                        hits.touches.setdefault(name, set()).add(Identity(type_, learned, source=self.name))
                    if learned:
                        hits.learned.append(Identity.learned(type_, learned, self.name, note(
                            N_("{system}: {path}, column {column}"), system=self.name, path=path, column=column)))

    def _path(self, name: str) -> Note:
        """How a row of `name` is reached from a directly matched row, along ownership only."""
        entity = self.spec.entities[name]
        column, ref = next(iter(entity.owners().items()))
        parent = self.spec.entities[ref.entity]
        start = note(N_("{table} (matched directly)"), table=parent.table) if parent.identities \
            else self._path(ref.entity)
        return note(N_("{start} -> {table} (owned through {column})"), start=start, table=entity.table, column=column)

    def export(self, identities: Identities, entities: Iterable[str] | None = None) -> Iterator[Record]:
        wanted = self._wanted(entities)
        memo: dict[str, _Reach | None] = {}
        with self._connect() as conn:
            for name in self.order:
                if name not in wanted:
                    continue
                reach = self._reach(name, identities, conn, memo)
                if reach is None:
                    continue
                entity = self.spec.entities[name]
                table = self._table(name, conn)
                pk = table.c[entity.primary_key]
                shown = [entity.primary_key, *(c for c in entity.fields if c != entity.primary_key)]
                if reach.related is not None:
                    yield from self._export_related(conn, table, name, reach.related, shown)
                cond = reach.mine
                extra = [c for c in (entity.files.template().fields if entity.files else ()) if c not in shown]
                query = sa.select(*(table.c[c] for c in (*shown, *extra))).where(cond).order_by(pk) \
                    .execution_options(yield_per=500)
                for row in conn.execute(query):
                    values = dict(row._mapping)
                    data = {k: jsonable(values[k], table.c[k]) for k in shown}
                    record = Record(entity=name, record_id=str(data[entity.primary_key]), fields=data)
                    if entity.files and self.s3:
                        bucket = self._bucket(entity)
                        record.attachments = [self.s3.attachment(bucket, obj.key, obj.key)
                                              for obj in self.s3.find(bucket, entity.files.template(), values)]
                    yield record

    def _export_related(self, conn: Connection, table: sa.Table, name: str, related: sa.ColumnElement[bool],
                        shown: list[str]) -> Iterator[Record]:
        """Rows tied to the person by a relation the map exports (`export: true`): someone else's rows, so
        their identity columns are left out (Art. 15(4): the copy must not disclose other people)."""
        entity = self.spec.entities[name]
        hidden = set(entity.identities.values())
        cols = [c for c in shown if c not in hidden]
        query = sa.select(*(table.c[c] for c in cols)).where(related).order_by(table.c[entity.primary_key]) \
            .execution_options(yield_per=500)
        for row in conn.execute(query):
            data = {k: jsonable(v, table.c[k]) for k, v in row._mapping.items()}
            yield Record(entity=f"{name}.related", record_id=str(data[entity.primary_key]), fields=data)

    def erase(self, identities: Identities, entities: Iterable[str] | None = None) -> Receipt:
        receipt = Receipt(system=self.name, action="erase")
        wanted = self._wanted(entities)
        now = self.ctx.clock()
        memo: dict[str, _Reach | None] = {}  # clauses, not rows: the database evaluates them at each statement
        with self._begin() as conn:
            # Counted before anything changes: masking one table changes what reaches another.
            for name in self.order:
                if name in wanted and (first := self._reach(name, identities, conn, memo)) is not None:
                    self._count_skipped(conn, self._table(name, conn), name, first, receipt.skipped)
            # Children first: a parent's identity columns must stay intact while its children are found.
            for name in reversed(self.order):
                if name not in wanted:
                    continue
                reach = self._reach(name, identities, conn, memo)
                if reach is None:
                    continue
                cond = reach.mine
                entity = self.spec.entities[name]
                table = self._table(name, conn)
                if entity.hold:
                    held = self._held(name, table, entity, now, conn)
                    self._record_hold(conn, table, entity, sa.and_(cond, held), now, receipt, name)
                    cond = sa.and_(cond, sa.not_(held))
                # Files go before their rows: once a row is gone, nothing says which files were its.
                files = self._delete_files(conn, table, entity, cond)
                if files:
                    receipt.changed[f"{name}.files"] = files
                    receipt.note(N_("{entity}: {count} file(s) deleted from S3"), entity=name, count=files)
                changed = self._erase_rows(conn, table, entity, cond)
                if changed:
                    receipt.changed[name] = changed
                    if entity.erase.strategy == "delete":
                        receipt.note(N_("{entity}: {count} deleted"), entity=name, count=changed)
                    else:
                        receipt.note(N_("{entity}: {count} masked"), entity=name, count=changed)
        return receipt

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

    def _connect(self) -> Any:
        return _DbErrors(self.name, self.engine.connect)

    def _begin(self) -> Any:
        return _DbErrors(self.name, self.engine.begin)

    def _table(self, name: str, conn: Connection) -> sa.Table:
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

    def _reach(self, name: str, identities: Identities, conn: Connection,
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
        for type_, column in entity.identities.items():
            cond = self._identity_in(table.c[column], type_, identities.of(type_))
            if cond is not None:
                (shared if type_ in entity.shared_types() else strong).append(cond)
        owned = _any(self._via(entity.owners(), identities, conn, table, memo).values())
        mine_parts: list[sa.ColumnElement[bool]] = []
        if strong:
            mine_parts.append(sa.or_(*strong))
        learnable = set(entity.learn)
        if owned is not None:
            mine_parts.append(sa.and_(owned, sa.not_(self._names_other(table, entity, identities, learnable))))
        if shared:
            mine_parts.append(sa.and_(sa.or_(*shared), sa.not_(self._names_other(table, entity, identities, set()))))
        reached = [c for c in (*strong, *shared, owned) if c is not None]
        mine = sa.or_(*mine_parts) if reached else sa.false()
        # `mine` is NULL, not false, on a row whose identity column is NULL: negate it only NULL-safe.
        not_mine = sa.not_(sa.func.coalesce(mine, sa.false()))
        # Relations are resolved once this entity's own rows are known: a relation may point back at it.
        memo[name] = _Reach(mine=mine, strong=None, owned=None, others=None, related=None)
        tied = self._via(entity.relations(), identities, conn, table, memo)
        related = _any(cond for column, cond in tied.items() if entity.references[column].export)
        linked = _any(tied.values())
        result = None
        if reached:
            result = _Reach(
                mine=mine,
                strong=sa.or_(*strong) if strong else None,
                owned=owned,
                # Only an owned row or a shared-identifier match can name someone else: counting is skipped
                # where it cannot (a table without identity columns, or reached only by its own).
                others=sa.and_(sa.or_(*reached), not_mine) if entity.identities and (owned is not None or shared)
                else None,
                related=sa.and_(related, not_mine) if related is not None else None,
                linked=sa.and_(linked, not_mine) if linked is not None else None,
                mine_is_strong=bool(strong) and owned is None and not shared,
            )
        elif linked is not None:
            result = _Reach(mine=sa.false(), strong=None, owned=None, others=None, related=related, linked=linked)
        memo[name] = result
        return result

    def _via(self, refs: dict[str, Reference], identities: Identities, conn: Connection, table: sa.Table,
             memo: dict[str, _Reach | None]) -> dict[str, sa.ColumnElement[bool]]:
        """Per reference column: its rows that point at a row that is the person's."""
        conds: dict[str, sa.ColumnElement[bool]] = {}
        for column, ref in refs.items():
            parent_reach = self._reach(ref.entity, identities, conn, memo)
            if parent_reach is None:
                continue
            parent = self._table(ref.entity, conn)
            conds[column] = table.c[column].in_(sa.select(parent.c[ref.column]).where(parent_reach.mine))
        return conds

    @staticmethod
    def _identity_in(col: sa.Column[Any], type_: IdentityType, values: list[str]) -> sa.ColumnElement[bool] | None:
        if not values:
            return None
        if type_ == IdentityType.EMAIL:
            forms = sorted({f for v in values for f in email_forms(v)})
            return sa.func.lower(sa.func.trim(col)).in_(forms)
        typed = _coerce(col, values)
        return col.in_(typed) if typed else None

    def _names_other(self, table: sa.Table, entity: EntitySpec, identities: Identities,
                     exempt: set[IdentityType]) -> sa.ColumnElement[bool]:
        """The row holds, in an identity column not in `exempt`, an identifier that is not the person's."""
        conds: list[sa.ColumnElement[bool]] = []
        for type_, column in entity.identities.items():
            if type_ in exempt:
                continue
            col = table.c[column]
            present: sa.ColumnElement[bool] = col.is_not(None)
            if python_type(col) is str:
                present = sa.and_(present, sa.func.trim(col) != "")
            theirs = self._identity_in(col, type_, identities.of(type_))
            conds.append(sa.and_(present, sa.not_(theirs)) if theirs is not None else present)
        return sa.or_(*conds) if conds else sa.false()

    def _count_skipped(self, conn: Connection, table: sa.Table, name: str, reach: _Reach,
                       into: dict[str, dict[str, int]]) -> None:
        """How many rows the request reached but left alone, and why (counts only, never values)."""
        for why, cond in ((NAMES_SOMEONE_ELSE, reach.others), (RELATED_NOT_OWNED, reach.linked)):
            if cond is None:
                continue
            n = int(conn.execute(sa.select(sa.func.count()).select_from(table).where(cond)).scalar_one())
            if n:
                into.setdefault(name, {})[why] = n

    def _hold_date(self, name: str, table: sa.Table, entity: EntitySpec,
                   conn: Connection) -> tuple[sa.ColumnElement[Any], sa.Column[Any]]:
        """The date a row's hold runs from (its own column, or its referenced parent's), and that column."""
        assert entity.hold is not None
        parent = entity.hold.parent()
        if parent is None:
            return table.c[entity.hold.from_], table.c[entity.hold.from_]
        parent_name, parent_col = parent
        ref_col, target = next((c, r.to) for c, r in entity.owners().items() if r.entity == parent_name)
        parent_table = self._table(parent_name, conn)
        if parent_col not in parent_table.c:
            raise PermanentError(self.name, f"entity {name}: hold.from column {parent_col} not in {parent_table.name}")
        col = parent_table.c[parent_col]
        expr = sa.select(col).where(parent_table.c[target.split(".")[1]] == table.c[ref_col]).scalar_subquery()
        return expr, col

    def _held(self, name: str, table: sa.Table, entity: EntitySpec, now: datetime,
              conn: Connection) -> sa.ColumnElement[bool]:
        assert entity.hold is not None
        expr, col = self._hold_date(name, table, entity, conn)
        bound = bound_for(col, _years_before(now, entity.hold.years))
        # A row without the date cannot be shown to be past its hold: keep it.
        return sa.or_(expr >= bound, expr.is_(None))

    def _record_hold(self, conn: Connection, table: sa.Table, entity: EntitySpec,
                     cond: sa.ColumnElement[bool], now: datetime, receipt: Receipt, name: str) -> None:
        assert entity.hold is not None and entity.restrict is not None
        expr, _col = self._hold_date(name, table, entity, conn)
        dated = sa.select(expr.label("d")).where(cond).subquery()
        groups = conn.execute(sa.select(dated.c.d, sa.func.count()).group_by(dated.c.d)).all()
        count = sum(int(n) for _, n in groups)
        if not count:
            return
        # Each day a hold ends is a scheduled erasure later; rows without a date are kept with no end.
        ends: dict[date, list[Any]] = {}
        for day, n in groups:
            if day is None:
                continue
            end = _add_years(as_datetime(day), entity.hold.years)
            slot = ends.setdefault(end.date(), [end, 0])
            slot[0], slot[1] = max(slot[0], end), slot[1] + int(n)
        files = self._restrict_files(conn, table, entity, cond, expr)
        conn.execute(sa.update(table).where(cond).values(**entity.restrict.set))
        until = max((end for end, _ in ends.values()), default=None)
        entry: dict[str, Any] = {
            "entity": name,
            "records": count,
            "until": until.isoformat() if until else None,
            "reason": entity.hold.reason_text(),
            # every language's text, for the bundle page written in the person's language
            **({"reasons": dict(entity.hold.reason)} if isinstance(entity.hold.reason, dict) else {}),
            "restricted_with": dict(entity.restrict.set),
            "ends": [{"until": end.isoformat(), "records": n} for _, (end, n) in sorted(ends.items())],
        }
        if entity.files:
            entry["files"] = files
            entry["restricted_files_with"] = {"tag": RESTRICTED_TAG, "value": "the date the hold ends"}
        receipt.held.append(entry)
        reason = dict(entity.hold.reason) if isinstance(entity.hold.reason, dict) else entity.hold.reason
        if files:
            receipt.note(N_("{entity}: {count} kept and restricted under hold ({reason}), with {files} file(s) "
                            "tagged {tag}"), entity=name, count=count, reason=reason, files=files, tag=RESTRICTED_TAG)
        else:
            receipt.note(N_("{entity}: {count} kept and restricted under hold ({reason})"), entity=name, count=count,
                         reason=reason)

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
        assert entity.hold is not None
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
            email = table.c[entity.identities[IdentityType.EMAIL]]
            query = sa.select(email, activity).where(*conds).order_by(table.c[entity.primary_key]) \
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
            reach = self._reach(spec.entity, identities, conn)
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

    def _erase_rows(self, conn: Connection, table: sa.Table, entity: EntitySpec,
                    cond: sa.ColumnElement[bool]) -> int:
        if entity.erase.strategy == "delete":
            return int(conn.execute(sa.delete(table).where(cond)).rowcount or 0)
        pk = table.c[entity.primary_key]
        pks = [row[0] for row in conn.execute(sa.select(pk).where(cond))]
        changed = 0
        for key in pks:
            values = {col: mask_value(table.c[col], how, row=f"{entity.table}:{key}", secret_key=self.ctx.secret_key)
                      for col, how in entity.erase.mask.items()}
            current = conn.execute(sa.select(*(table.c[c] for c in values)).where(pk == key)).one()
            if all(same(a, b) for a, b in zip(current, values.values(), strict=True)):
                continue  # already erased: a re-run changes nothing
            conn.execute(sa.update(table).where(pk == key).values(**values))
            changed += 1
        return changed

    def _set_flags(self, identities: Identities, entities: Iterable[str] | None, which: str) -> Receipt:
        receipt = Receipt(system=self.name, action="restrict" if which == "restrict" else "lift_restriction")
        wanted = self._wanted(entities)
        now = self.ctx.clock()
        memo: dict[str, _Reach | None] = {}
        with self._begin() as conn:
            for name in self.order:
                entity = self.spec.entities[name]
                spec = entity.restrict if which == "restrict" else entity.lift
                if name not in wanted or spec is None:
                    continue
                reach = self._reach(name, identities, conn, memo)
                if reach is None:
                    continue
                cond = reach.mine
                table = self._table(name, conn)
                self._count_skipped(conn, table, name, reach, receipt.skipped)
                marks = {c: marker_value(table.c[c], v, now) for c, v in spec.set.items()}
                differs = sa.or_(*(sa.not_(carries(table.c[c], v)) for c, v in spec.set.items()))
                files = self._flag_files(conn, table, entity, cond, which)
                changed = int(conn.execute(sa.update(table).where(sa.and_(cond, differs)).values(**marks)).rowcount)
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

class _DbErrors:
    """Context manager that turns driver errors into connector errors without leaking values."""

    def __init__(self, system: str, opener: Any) -> None:
        self.system = system
        self._cm = opener()

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
        if isinstance(error, OperationalError):
            raise TransientError.of(self.system, note(N_("database error: {reason}"),
                                                      reason=db_reason(error))) from None
        if isinstance(error, DBAPIError):
            raise PermanentError.of(self.system, note(N_("the database refused the change, nothing was changed: "
                                                         "{reason}"), reason=db_reason(error))) from None
        return handled

    def __getattr__(self, item: str) -> Any:
        return getattr(self._cm, item)


# An unreachable database must fail a locate or export in seconds, not after the TCP timeout.
CONNECT_TIMEOUT_SECONDS = 10


def _connect_args(url: str) -> dict[str, Any]:
    driver = sa.engine.make_url(url).get_backend_name()
    return {"connect_timeout": CONNECT_TIMEOUT_SECONDS} if driver in ("postgresql", "mysql", "mariadb") else {}


def db_reason(exc: SQLAlchemyError) -> str:
    text = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return redact(text)[:200]


# how a column is masked, as a word the bundle page translates (the data map's names, in English)
MASK_METHODS = {"null": N_("null"), "hash": N_("hash"), "redact": N_("redact")}
FIXED_VALUE = N_("fixed value")


def _method_name(method: Any) -> Note:
    return Note(FIXED_VALUE if isinstance(method, Fixed) else MASK_METHODS.get(str(method), str(method)))


def _any(conds: Iterable[sa.ColumnElement[bool]]) -> sa.ColumnElement[bool] | None:
    """OR of the clauses, or None when there are none (nothing reaches the rows that way)."""
    found = list(conds)
    return sa.or_(*found) if found else None






def _coerce(col: sa.Column[Any], values: list[str]) -> list[Any]:
    """Identity values arrive as text; compare them in the column's own type (keeps indexes usable)."""
    kind = python_type(col)
    out: list[Any] = []
    for v in values:
        if kind is int:
            if v.lstrip("-").isdigit():
                out.append(int(v))
        else:
            out.append(v)
    return out


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

"""A connector for any SQL database, driven entirely by its data-map entry (connectors.sql_map).

A person's rows are found by identity columns (e-mail compared as lower(trim(col)), so an
expression index on that makes the lookup an index scan) and by following references from
rows already found, any number of hops, as nested sub-selects: the database does the joins
and nothing is pulled into memory to find it.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
import warnings
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import NoSuchTableError, OperationalError, SQLAlchemyError

from connectors.base import (
    Connector,
    ConnectorContext,
    EntityPolicy,
    Health,
    Hits,
    Hold,
    Identities,
    Identity,
    IdentityType,
    PermanentError,
    Receipt,
    Record,
    TransientError,
)
from connectors.emails import InvalidEmail, email_forms, normalise_email
from connectors.redact import redact
from connectors.sql_map import EntitySpec, Fixed, SqlSystemSpec, parse_system, topological

REDACTED = "[redacted]"


class SqlConnector(Connector):
    def __init__(self, name: str, spec: SqlSystemSpec, engine: Engine, ctx: ConnectorContext) -> None:
        self.name = name
        self.spec = spec
        self.engine = engine
        self.ctx = ctx
        self.order = topological(spec.entities)
        self.entities = tuple(self.order)
        self._tables: dict[str, sa.Table] = {}

    @classmethod
    def from_settings(cls, name: str, settings: dict[str, Any], ctx: ConnectorContext) -> SqlConnector:
        spec = parse_system(name, dict(settings))
        url = ctx.secret(name, "url_env", spec.url_env)
        try:
            engine = sa.create_engine(url, pool_pre_ping=True)
        except (SQLAlchemyError, ValueError) as exc:
            raise PermanentError(name, f"bad database URL in {spec.url_env}: {redact(str(exc))[:200]}") from None
        return cls(name, spec, engine, ctx)

    # -- planner view ---------------------------------------------------------------------

    def policies(self) -> dict[str, EntityPolicy]:
        out = {}
        for name, e in self.spec.entities.items():
            if e.erase.strategy == "delete":
                erase = "delete rows"
            else:
                erase = "mask " + ", ".join(f"{c} ({_method_name(m)})" for c, m in e.erase.mask.items())
            restrict = ", ".join(f"set {c}={v!r}" for c, v in e.restrict.set.items()) if e.restrict else None
            hold = Hold(e.hold.years, e.hold.from_, e.hold.reason) if e.hold else None
            out[name] = EntityPolicy(erase=erase, restrict=restrict, hold=hold,
                                     categories=tuple(sorted(set(e.fields.values()))),
                                     provided_by_subject=e.provided_by_subject)
        return out

    def accepts(self) -> set[IdentityType]:
        return {t for e in self.spec.entities.values() for t in e.identities}

    # -- operations -----------------------------------------------------------------------

    def locate(self, identities: Identities) -> Hits:
        hits = Hits(system=self.name, found=False)
        with self._connect() as conn:
            for name in self.order:
                cond = self._matched(name, identities, conn)
                if cond is None:
                    continue
                table = self._table(name, conn)
                count = conn.execute(sa.select(sa.func.count()).select_from(table).where(cond)).scalar_one()
                if not count:
                    continue
                hits.counts[name] = int(count)
                hits.found = True
                entity = self.spec.entities[name]
                if entity.identities:
                    cols = [table.c[c] for c in entity.identities.values()]
                    rows = conn.execute(sa.select(*cols).where(cond).distinct().limit(1000))
                    for row in rows:
                        for (type_, _col), value in zip(entity.identities.items(), row, strict=True):
                            learned = _identity_value(type_, value)
                            if learned:
                                hits.learned.append(Identity(type_, learned, source=self.name))
        return hits

    def export(self, identities: Identities, entities: Iterable[str] | None = None) -> Iterator[Record]:
        wanted = self._wanted(entities)
        with self._connect() as conn:
            for name in self.order:
                if name not in wanted:
                    continue
                cond = self._matched(name, identities, conn)
                if cond is None:
                    continue
                entity = self.spec.entities[name]
                table = self._table(name, conn)
                pk = table.c[entity.primary_key]
                cols = [pk, *(table.c[c] for c in entity.fields if c != entity.primary_key)]
                query = sa.select(*cols).where(cond).order_by(pk).execution_options(yield_per=500)
                for row in conn.execute(query):
                    data = {k: _jsonable(v) for k, v in row._mapping.items()}
                    yield Record(entity=name, record_id=str(data[entity.primary_key]), fields=data)

    def erase(self, identities: Identities, entities: Iterable[str] | None = None) -> Receipt:
        receipt = Receipt(system=self.name, action="erase")
        wanted = self._wanted(entities)
        now = self.ctx.clock()
        with self._begin() as conn:
            # Children first: a parent's identity columns must stay intact while its children are found.
            for name in reversed(self.order):
                if name not in wanted:
                    continue
                cond = self._matched(name, identities, conn)
                if cond is None:
                    continue
                entity = self.spec.entities[name]
                table = self._table(name, conn)
                if entity.hold:
                    held = self._held(table, entity, now)
                    self._record_hold(conn, table, entity, sa.and_(cond, held), now, receipt, name)
                    cond = sa.and_(cond, sa.not_(held))
                changed = self._erase_rows(conn, table, entity, cond)
                if changed:
                    receipt.changed[name] = changed
                    how = "deleted" if entity.erase.strategy == "delete" else "masked"
                    receipt.details.append(f"{name}: {changed} {how}")
        return receipt

    def restrict(self, identities: Identities, entities: Iterable[str] | None = None) -> Receipt:
        return self._set_flags(identities, entities, "restrict")

    def lift_restriction(self, identities: Identities, entities: Iterable[str] | None = None) -> Receipt:
        return self._set_flags(identities, entities, "lift")

    def check(self) -> Health:
        health = Health(system=self.name, ok=True)
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
                inspector = sa.inspect(conn)
                for name, entity in self.spec.entities.items():
                    self._check_entity(inspector, name, entity, health)
        except OperationalError as exc:
            health.problems.append(f"cannot connect to the database: {_db_reason(exc)}")
        health.ok = not health.problems
        return health

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
                with warnings.catch_warnings():  # expression indexes (lower(trim(email))) are not reflected
                    warnings.simplefilter("ignore", sa.exc.SAWarning)
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

    def _matched(self, name: str, identities: Identities, conn: Connection) -> sa.ColumnElement[bool] | None:
        """The WHERE clause selecting this person's rows of `name`, or None if nothing can match."""
        entity = self.spec.entities[name]
        table = self._table(name, conn)
        conds: list[sa.ColumnElement[bool]] = []
        for type_, column in entity.identities.items():
            values = identities.of(type_)
            if not values:
                continue
            col = table.c[column]
            if type_ == IdentityType.EMAIL:
                forms = sorted({f for v in values for f in email_forms(v)})
                conds.append(sa.func.lower(sa.func.trim(col)).in_(forms))
            else:
                typed = _coerce(col, values)
                if typed:
                    conds.append(col.in_(typed))
        for column, target in entity.references.items():
            parent_name, parent_col = target.split(".")
            parent_cond = self._matched(parent_name, identities, conn)
            if parent_cond is None:
                continue
            parent = self._table(parent_name, conn)
            conds.append(table.c[column].in_(sa.select(parent.c[parent_col]).where(parent_cond)))
        return sa.or_(*conds) if conds else None

    def _held(self, table: sa.Table, entity: EntitySpec, now: datetime) -> sa.ColumnElement[bool]:
        assert entity.hold is not None
        col = table.c[entity.hold.from_]
        cutoff = _years_before(now, entity.hold.years)
        bound: date | datetime = cutoff
        python_type = _python_type(col)
        if python_type is date:
            bound = cutoff.date()
        elif python_type is datetime and not getattr(col.type, "timezone", False):
            bound = cutoff.astimezone(UTC).replace(tzinfo=None)
        # A row without the date cannot be shown to be past its hold: keep it.
        return sa.or_(col >= bound, col.is_(None))

    def _record_hold(self, conn: Connection, table: sa.Table, entity: EntitySpec,
                     cond: sa.ColumnElement[bool], now: datetime, receipt: Receipt, name: str) -> None:
        assert entity.hold is not None and entity.restrict is not None
        col = table.c[entity.hold.from_]
        count, latest = conn.execute(sa.select(sa.func.count(), sa.func.max(col)).where(cond)).one()
        if not count:
            return
        conn.execute(sa.update(table).where(cond).values(**entity.restrict.set))
        until = _add_years(_as_datetime(latest), entity.hold.years) if latest is not None else None
        receipt.held.append({
            "entity": name,
            "records": int(count),
            "until": until.isoformat() if until else None,
            "reason": entity.hold.reason,
            "restricted_with": dict(entity.restrict.set),
        })
        receipt.details.append(f"{name}: {count} kept and restricted under hold ({entity.hold.reason})")

    def _erase_rows(self, conn: Connection, table: sa.Table, entity: EntitySpec,
                    cond: sa.ColumnElement[bool]) -> int:
        if entity.erase.strategy == "delete":
            return int(conn.execute(sa.delete(table).where(cond)).rowcount or 0)
        pk = table.c[entity.primary_key]
        pks = [row[0] for row in conn.execute(sa.select(pk).where(cond))]
        changed = 0
        for key in pks:
            values = {col: self._mask_value(table, entity, col, how, key) for col, how in entity.erase.mask.items()}
            current = conn.execute(sa.select(*(table.c[c] for c in values)).where(pk == key)).one()
            if all(_same(a, b) for a, b in zip(current, values.values(), strict=True)):
                continue  # already erased: a re-run changes nothing
            conn.execute(sa.update(table).where(pk == key).values(**values))
            changed += 1
        return changed

    def _mask_value(self, table: sa.Table, entity: EntitySpec, column: str, method: Any, key: Any) -> Any:
        if isinstance(method, Fixed):
            return method.fixed
        if method == "null":
            return None
        if method == "redact":
            return REDACTED
        # Keyed by row and column, not by the old value, so masking twice gives the same result
        # and the value cannot be reversed by hashing guesses.
        digest = hmac.new(self.ctx.secret_key, f"{entity.table}:{key}:{column}".encode(), hashlib.sha256)
        value = f"erased-{digest.hexdigest()[:24]}"
        length = getattr(table.c[column].type, "length", None)
        return value[:length] if length else value

    def _set_flags(self, identities: Identities, entities: Iterable[str] | None, which: str) -> Receipt:
        receipt = Receipt(system=self.name, action="restrict" if which == "restrict" else "lift_restriction")
        wanted = self._wanted(entities)
        with self._begin() as conn:
            for name in self.order:
                entity = self.spec.entities[name]
                spec = entity.restrict if which == "restrict" else entity.lift
                if name not in wanted or spec is None:
                    continue
                cond = self._matched(name, identities, conn)
                if cond is None:
                    continue
                table = self._table(name, conn)
                differs = sa.or_(*(sa.or_(table.c[c].is_(None), table.c[c] != v) for c, v in spec.set.items()))
                changed = int(conn.execute(sa.update(table).where(sa.and_(cond, differs)).values(**spec.set)).rowcount)
                if changed:
                    receipt.changed[name] = changed
                    receipt.details.append(f"{name}: {changed} {'restricted' if which == 'restrict' else 'lifted'}")
        return receipt

    def _check_entity(self, inspector: Any, name: str, entity: EntitySpec, health: Health) -> None:
        if not inspector.has_table(entity.table):
            health.problems.append(f"entity {name}: table '{entity.table}' does not exist")
            return
        columns = {c["name"]: c for c in inspector.get_columns(entity.table)}
        for col in sorted(entity.columns() - set(columns)):
            health.problems.append(f"entity {name}: column '{col}' does not exist in table {entity.table}")
        unique_cols = {tuple(u["column_names"]) for u in inspector.get_unique_constraints(entity.table)}
        unique_cols |= {tuple(i["column_names"]) for i in inspector.get_indexes(entity.table) if i.get("unique")}
        for col, method in entity.erase.mask.items():
            info = columns.get(col)
            if info is None:
                continue
            if method == "null" and not info.get("nullable", True):
                health.problems.append(f"entity {name}: masks NOT NULL column {col} with null")
            if (isinstance(method, Fixed) or method == "redact") and (col,) in unique_cols:
                health.problems.append(f"entity {name}: column {col} is unique; mask it with 'hash', not one value")
        mapped = entity.columns()
        for col in sorted(set(columns) - mapped):
            health.warnings.append(f"entity {name}: column {entity.table}.{col} is not in the data map (not exported)")
        if self.engine.dialect.name == "postgresql":
            email_col = entity.identities.get(IdentityType.EMAIL)
            if email_col:
                indexed = any(
                    email_col in (expr or "") and "lower" in (expr or "")
                    for i in inspector.get_indexes(entity.table) for expr in i.get("expressions") or []
                )
                if not indexed:
                    health.warnings.append(
                        f"entity {name}: no index on lower(trim({email_col})); locating will scan {entity.table}"
                    )


class _DbErrors:
    """Context manager that turns driver errors into connector errors without leaking values."""

    def __init__(self, system: str, opener: Any) -> None:
        self.system = system
        self._cm = opener()

    def __enter__(self) -> Connection:
        try:
            return self._cm.__enter__()  # type: ignore[no-any-return]
        except OperationalError as exc:
            raise TransientError(self.system, f"database unreachable: {_db_reason(exc)}") from None

    def __exit__(self, *exc: Any) -> Any:
        try:
            return self._cm.__exit__(*exc)
        except OperationalError as err:
            raise TransientError(self.system, f"database error: {_db_reason(err)}") from None

    def __getattr__(self, item: str) -> Any:
        return getattr(self._cm, item)


def _db_reason(exc: SQLAlchemyError) -> str:
    text = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return redact(text)[:200]


def _method_name(method: Any) -> str:
    return "fixed value" if isinstance(method, Fixed) else str(method)


def _python_type(col: sa.Column[Any]) -> type | None:
    try:
        return col.type.python_type  # type: ignore[no-any-return]
    except NotImplementedError:
        return None


def _coerce(col: sa.Column[Any], values: list[str]) -> list[Any]:
    """Identity values arrive as text; compare them in the column's own type (keeps indexes usable)."""
    python_type = _python_type(col)
    out: list[Any] = []
    for v in values:
        if python_type is int:
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


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _same(current: Any, new: Any) -> bool:
    return current == new or (current is not None and new is not None and str(current) == str(new))


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


def _add_years(moment: datetime, years: int) -> datetime:
    try:
        return moment.replace(year=moment.year + years)
    except ValueError:  # 29 February
        return moment.replace(year=moment.year + years, day=28)


def _years_before(moment: datetime, years: int) -> datetime:
    return _add_years(moment, -years)

"""Issue 9 as a property, on PostgreSQL: for random schemas and data, one person's access and erasure requests
never export or change a row that is someone else's (or nobody's).

The generator decides whose each row is while it makes it: a row that carries a person's e-mail is that
person's; one that carries only a phone number is everyone's who has that number (a household); one that
carries no identifier is its owning parent row's; anything else is nobody's. The connector's answers are only
ever compared with that.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from connectors.base import ConnectorContext, Identities, Identity, IdentityType
from connectors.sql import SqlConnector
from connectors.sql_map import parse_system
from connectors.sql_values import REDACTED
from discovery.engine.discover import discover

pytestmark = pytest.mark.integration

SYSTEM = "random"
_example = itertools.count()


@dataclass
class Table:
    index: int
    has_email: bool
    has_phone: bool
    owner: int | None  # index of the table whose rows own this table's rows (ownership forms a forest)
    relations: list[tuple[int, bool]]  # (target table, export)
    learn: list[str]
    strategy: str = "delete"
    rows: list[dict[str, Any]] = field(default_factory=list)
    owners: dict[int, frozenset[int]] = field(default_factory=dict)  # row id -> people whose row it is

    def name(self, prefix: str) -> str:
        return f"{prefix}_t{self.index}"

    @property
    def owner_column(self) -> str:
        return f"own_{self.owner}"

    @property
    def relation_columns(self) -> list[str]:
        return [f"rel{k}_{target}" for k, (target, _export) in enumerate(self.relations)]

    @property
    def identities(self) -> dict[str, str]:
        return {t: t for t, present in (("email", self.has_email), ("phone", self.has_phone)) if present}


@dataclass
class World:
    emails: list[str]
    phones: list[str | None]
    tables: list[Table]
    person: int  # who asks

    def identifiers(self, person: int) -> set[tuple[str, str]]:
        phone = self.phones[person]
        return {("email", self.emails[person])} | ({("phone", phone)} if phone else set())


def _email_variant(email: str, style: int) -> str:
    return [email, email.upper(), f"  {email.capitalize()} "][style]


@st.composite
def worlds(draw: st.DrawFn) -> World:
    n_people = draw(st.integers(2, 5))
    emails = [f"p{i}@example.com" for i in range(n_people)]
    # a small pool of numbers, so households (two people, one number) are common
    phones = [draw(st.one_of(st.none(), st.sampled_from(["+4790000001", "+4790000002", "+4790000003"])))
              for _ in range(n_people)]
    asker = draw(st.integers(0, n_people - 1))
    n_tables = draw(st.integers(2, 5))
    tables: list[Table] = []
    for i in range(n_tables):
        owner = draw(st.one_of(st.none(), st.integers(0, i - 1))) if i else None
        relations = draw(st.lists(st.tuples(st.integers(0, n_tables - 1), st.booleans()), max_size=2))
        has_email, has_phone = draw(st.booleans()), draw(st.booleans())
        if not (has_email or has_phone or owner is not None or relations):
            has_email = True
        present = [t for t, p in (("email", has_email), ("phone", has_phone)) if p]
        learn = draw(st.lists(st.sampled_from(present), unique=True)) if owner is not None and present else []
        tables.append(Table(i, has_email, has_phone, owner, relations, learn,
                            draw(st.sampled_from(["delete", "mask"]))))
    # a parent erased by delete while rows it owns stay (masked, or kept because they name someone else)
    # would leave them pointing nowhere: mask such a parent
    for table in reversed(tables):
        if table.owner is not None and (table.strategy == "mask" or set(table.identities) - set(table.learn)):
            tables[table.owner].strategy = "mask"

    def holders(phone: str) -> frozenset[int]:
        return frozenset(p for p in range(n_people) if phones[p] == phone)

    next_id = itertools.count(1)
    for table in tables:
        for _ in range(draw(st.integers(0, 6))):
            row: dict[str, Any] = {"id": next(next_id), "note": f"row of table {table.index}"}
            parent_owners: frozenset[int] = frozenset()
            if table.owner is not None:
                parents = tables[table.owner].rows
                parent = draw(st.one_of(st.none(), st.sampled_from(parents))) if parents else None
                row[table.owner_column] = parent["id"] if parent else None
                parent_owners = tables[table.owner].owners[parent["id"]] if parent else frozenset()
            # whom the row names: nobody, or one person (often the one who asks)
            named = draw(st.one_of(st.none(), st.just(asker), st.integers(0, n_people - 1)))
            sole_owner = next(iter(parent_owners)) if len(parent_owners) == 1 else None
            for type_ in table.identities:
                value = None
                if named is not None and draw(st.booleans()):
                    value = (_email_variant(emails[named], draw(st.integers(0, 2))) if type_ == "email"
                             else phones[named])
                elif named is None and type_ == "phone" and table.owner is None and draw(st.booleans()):
                    value = "+4799999999"  # a number nobody in the world has
                # `learn` promises the column always holds the owner's own identifier: keep that promise
                if type_ in table.learn and value is not None and named != sole_owner:
                    value = None
                row[type_] = value
            email, phone = row.get("email"), row.get("phone")
            if email is not None:
                whose = frozenset({emails.index(email.strip().lower())})
            elif phone is not None:
                whose = holders(phone)
            else:
                whose = parent_owners
            table.rows.append(row)
            table.owners[row["id"]] = whose
    # relations point at nothing, at any row of their target, or (often, so related rows get exported) at a
    # row of the person who asks
    for table in tables:
        for row in table.rows:
            for column, (target, _export) in zip(table.relation_columns, table.relations, strict=True):
                ids = [r["id"] for r in tables[target].rows]
                askers = [k for k in ids if asker in tables[target].owners[k]]
                pick = draw(st.sampled_from(["nothing", "any", "asker"]))
                row[column] = (draw(st.sampled_from(askers)) if pick == "asker" and askers else
                               draw(st.sampled_from(ids)) if pick != "nothing" and ids else None)
    return World(emails, phones, tables, asker)


def data_map(world: World, prefix: str) -> dict[str, Any]:
    entities = {}
    for t in world.tables:
        references: dict[str, Any] = {}
        if t.owner is not None:
            references[t.owner_column] = f"{world.tables[t.owner].name(prefix)}.id"
        for column, (target, export) in zip(t.relation_columns, t.relations, strict=True):
            references[column] = {"to": f"{world.tables[target].name(prefix)}.id", "owner": False, "export": export}
        columns = ["id", "note", *t.identities, *references]
        mask = {"note": "redact", **({"email": "hash"} if t.has_email else {}),
                **({"phone": "null"} if t.has_phone else {})}
        entity: dict[str, Any] = {
            "table": t.name(prefix), "identities": t.identities, "references": references,
            "fields": dict.fromkeys(columns, "data"),
            "erase": {"strategy": "mask", "mask": mask} if t.strategy == "mask" else {"strategy": "delete"},
        }
        if t.learn:
            entity["learn"] = t.learn
        entities[t.name(prefix)] = entity
    return {"kind": "sql", "url_env": "UNUSED", "entities": entities}


def create(engine: sa.Engine, world: World, prefix: str) -> sa.MetaData:
    """Tables without foreign-key constraints (relation values may point nowhere), with the world's rows."""
    md = sa.MetaData()
    for t in world.tables:
        columns = [sa.Column("id", sa.Integer, primary_key=True, autoincrement=False), sa.Column("note", sa.String(80))]
        columns += [sa.Column(c, sa.String(80)) for c in t.identities]
        if t.owner is not None:
            columns.append(sa.Column(t.owner_column, sa.Integer))
        columns += [sa.Column(c, sa.Integer) for c in t.relation_columns]
        sa.Table(t.name(prefix), md, *columns)
    md.create_all(engine)
    with engine.begin() as conn:
        for t in world.tables:
            if t.rows:
                conn.execute(md.tables[t.name(prefix)].insert(), [_full(t, r) for r in t.rows])
    return md


def _full(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    columns = ["id", "note", *table.identities, *([table.owner_column] if table.owner is not None else []),
               *table.relation_columns]
    return {c: row.get(c) for c in columns}


def snapshot(engine: sa.Engine, md: sa.MetaData) -> dict[str, dict[int, dict[str, Any]]]:
    with engine.connect() as conn:
        return {name: {r["id"]: dict(r) for r in conn.execute(sa.select(t)).mappings()}
                for name, t in md.tables.items()}


def surely_mine(world: World, table: Table, row: dict[str, Any], person: int) -> bool:
    """Rows the rules must find: the person's e-mail on them, or no identifier and owned by such a row."""
    if row.get("email") is not None:
        return str(row["email"]).strip().lower() == world.emails[person]
    if row.get("phone") is not None or table.owner is None:
        return False
    parent_id = row.get(table.owner_column)
    parent_table = world.tables[table.owner]
    parent = next((r for r in parent_table.rows if r["id"] == parent_id), None)
    return parent is not None and surely_mine(world, parent_table, parent, person)


@pytest.fixture(scope="module")
def pg_url(pg_admin: sa.Engine) -> Iterator[str]:
    import uuid

    name = f"dsar_t_{uuid.uuid4().hex[:12]}"
    with pg_admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield pg_admin.url.set(database=name).render_as_string(hide_password=False)
    with pg_admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def engine(pg_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(pg_url)
    yield engine
    engine.dispose()


@settings(max_examples=25, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(world=worlds())
def test_a_request_never_reaches_another_persons_rows(engine: sa.Engine, world: World) -> None:
    prefix = f"h{next(_example)}"
    note(describe(world))
    md = create(engine, world, prefix)
    recursed = False
    try:
        check(engine, md, world, prefix)
    except RecursionError:  # one clear failure, not the tracebacks of whatever depth it was hit at
        recursed = True
    finally:
        md.drop_all(engine)
    assert not recursed, "the connector recursed without end (relations with export: true forming a cycle?)"


def describe(world: World) -> str:
    """The world in a few lines, for a failing example."""
    lines = [f"person asking: p{world.person}; phones: {world.phones}"]
    for t in world.tables:
        refs = ([f"{t.owner_column} -> t{t.owner} (owner)"] if t.owner is not None else []) + [
            f"{c} -> t{target} (relation{', export' if export else ''})"
            for c, (target, export) in zip(t.relation_columns, t.relations, strict=True)]
        lines.append(f"t{t.index}: identities {list(t.identities)}, learn {t.learn}, erase {t.strategy}; "
                     f"{'; '.join(refs) or 'no references'}")
        for row in t.rows:
            shown = {k: v for k, v in row.items() if k != "note"}
            lines.append(f"    {shown} whose: {sorted(f'p{p}' for p in t.owners[row['id']]) or 'nobody'}")
    return "\n".join(lines)


def check(engine: sa.Engine, md: sa.MetaData, world: World, prefix: str) -> None:
    person = world.person
    spec = parse_system(SYSTEM, data_map(world, prefix))
    connector = SqlConnector(SYSTEM, spec, engine, ConnectorContext(env={}, secret_key=b"property"))
    tables = {t.name(prefix): t for t in world.tables}

    def theirs(name: str, row_id: int) -> bool:
        return person in tables[name].owners[row_id]

    found = discover({SYSTEM: connector}, Identities([Identity(IdentityType.EMAIL, world.emails[person])]))
    assert not found.errors
    learned = {(str(i.type), i.value) for i in found.identities}
    assert learned <= world.identifiers(person), "learned someone else's identifier"
    hits = found.hits.get(SYSTEM)  # not asked at all when no table has an e-mail column
    assert hits is None or all(i.via for i in hits.learned)

    before = snapshot(engine, md)
    exported: dict[str, set[int]] = {}
    for record in connector.export(found.identities):
        exported.setdefault(record.entity, set()).add(int(record.record_id))
        if record.entity.endswith(".related"):
            table = tables[record.entity.removesuffix(".related")]
            assert not set(record.fields) & set(table.identities), "a related row kept its identity columns"
    for entity, ids in exported.items():
        if entity.endswith(".related"):
            name = entity.removesuffix(".related")
            table = tables[name]
            allowed = set()
            for row in table.rows:
                for column, (target, export) in zip(table.relation_columns, table.relations, strict=True):
                    target_name = world.tables[target].name(prefix)
                    if export and row[column] in before[target_name] and theirs(target_name, row[column]):
                        allowed.add(row["id"])
            assert ids <= allowed, f"{entity}: rows related to nobody's or someone else's rows exported"
        else:
            others = {i for i in ids if not theirs(entity, i)}
            assert not others, f"{entity}: exported rows {sorted(others)} that are not the person's"
    for name, table in tables.items():
        must = {r["id"] for r in table.rows if surely_mine(world, table, r, person)}
        assert must <= exported.get(name, set()), f"{name}: the person's rows {sorted(must)} not exported"

    connector.erase(found.identities)
    after = snapshot(engine, md)
    for name, table in tables.items():
        for row_id, row in before[name].items():
            if not theirs(name, row_id):
                assert after[name].get(row_id) == row, f"{name} row {row_id} (not the person's) changed"
            elif surely_mine(world, table, row, person):
                assert row_id not in after[name] or after[name][row_id]["note"] == REDACTED, \
                    f"{name} row {row_id} of the person not erased"

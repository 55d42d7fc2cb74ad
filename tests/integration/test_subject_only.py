"""Issue 9, "only the subject's data", for the SQL connector on PostgreSQL and MariaDB.

For every person of every fixture schema (tests/subject_schemas.py): discovery learns exactly their identifiers
(each with its provenance), an access request exports exactly their rows, and an erasure changes exactly their
rows: every other person's row, and rows that are nobody's (a company, an address), stay byte for byte the same.
What is expected comes from the fixture data (who each row belongs to is written by hand), never from the
connector.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa

from connectors.base import Identities, Identity, IdentityType, PermanentError, Receipt, Record
from connectors.sql import RELATED_NOT_OWNED, SqlConnector
from connectors.sql_map import parse_system
from connectors.sql_values import REDACTED
from discovery.engine.discover import discover
from tests.subject_schemas import (
    SCENARIOS,
    SYSTEM,
    Scenario,
    fixture_reach,
    identity_sets,
    matches,
    referrals,
    service_desk,
    tickets,
)

pytestmark = pytest.mark.integration

Snapshot = dict[str, dict[Any, dict[str, Any]]]  # table -> primary key -> column -> value


@pytest.fixture(params=["postgresql", "mariadb"])
def database(request: pytest.FixtureRequest) -> Callable[[], str]:
    """A factory of fresh, empty databases (dropped after the test) on each dialect."""
    return request.getfixturevalue("pg_database" if request.param == "postgresql" else "mariadb_database")  # type: ignore[no-any-return]


@contextmanager
def built(database: Callable[[], str], scenario: Scenario) -> Iterator[tuple[SqlConnector, sa.Engine]]:
    url = database()
    engine = sa.create_engine(url)
    scenario.build(engine)
    connector = scenario.connector(url)
    try:
        yield connector, engine
    finally:
        connector.close()
        engine.dispose()


def snapshot(engine: sa.Engine, scenario: Scenario) -> Snapshot:
    out: Snapshot = {}
    with engine.connect() as conn:
        for table in scenario.metadata.sorted_tables:
            rows = conn.execute(sa.select(table).order_by(*table.primary_key.columns)).mappings()
            out[table.name] = {row["id"]: dict(row) for row in rows}
    return out


def seed(scenario: Scenario, person: str) -> Identities:
    return Identities([Identity(IdentityType.EMAIL, scenario.people[person].seed)])


def records_by_entity(records: list[Record]) -> dict[str, dict[str, Record]]:
    out: dict[str, dict[str, Record]] = {}
    for record in records:
        assert record.record_id not in out.get(record.entity, {}), f"{record.entity}/{record.record_id} twice"
        out.setdefault(record.entity, {})[record.record_id] = record
    return out


def shown_columns(scenario: Scenario, entity: str) -> list[str]:
    spec = scenario.entities[entity]
    pk = scenario.pk(entity)
    return [pk, *(c for c in spec.get("fields", {}) if c != pk)]


def assert_learned_with_provenance(scenario: Scenario, person: str, learned: list[Identity]) -> None:
    """Each learned identifier is the person's, and its `via` names a table and column that hold it in one of
    the person's rows."""
    mine = scenario.rows_of(person)
    for ident in learned:
        assert (str(ident.type), ident.value) in scenario.people[person].identifiers, ident
        assert ident.source == SYSTEM
        assert ident.via, f"{ident} was learned without provenance"
        sources = set()
        for entity, keys in mine.items():
            column = scenario.identity_columns(entity).get(str(ident.type))
            rows = [row for _who, row in scenario.rows[scenario.table(entity)] if row[scenario.pk(entity)] in keys]
            if column and any(matches(str(ident.type), row[column], {str(ident.type): {ident.value}}) for row in rows):
                sources.add((scenario.table(entity), column))
        assert any(table in ident.via and f"column {column}" in ident.via for table, column in sources), \
            f"{ident.type}={ident.value}: via {ident.via!r} names none of {sorted(sources)}"


def assert_erased_only_theirs(scenario: Scenario, person: str, before: Snapshot, after: Snapshot,
                              receipt: Receipt) -> None:
    for entity, spec in scenario.entities.items():
        table = scenario.table(entity)
        owners = scenario.owners(entity)
        erase = spec["erase"]
        changed = 0
        for key, row in before[table].items():
            if person not in owners[key]:
                assert after[table].get(key) == row, f"{table} {key} ({sorted(owners[key]) or 'nobody'}'s) changed"
                continue
            changed += 1
            if erase["strategy"] == "delete":
                assert key not in after[table], f"{table} {key} of {person} was not deleted"
                continue
            now = after[table][key]
            for column, value in row.items():
                method = erase["mask"].get(column)
                if method is None:
                    assert now[column] == value, f"{table} {key}: unmasked column {column} changed"
                elif method == "hash":
                    assert str(now[column]).startswith("erased-"), (table, key, column, now[column])
                elif method == "null":
                    assert now[column] is None, (table, key, column)
                elif method == "redact":
                    assert now[column] == REDACTED, (table, key, column)
                else:
                    assert now[column] == method["fixed"], (table, key, column)
        assert set(after[table]) - set(before[table]) == set(), f"rows appeared in {table}"
        assert receipt.changed.get(entity, 0) == changed, entity


CASES = [(name, person) for name, make in SCENARIOS.items() for person in make().people]


@pytest.mark.parametrize(("scenario_name", "person"), CASES, ids=[f"{s}-{p}" for s, p in CASES])
def test_each_person_finds_gets_and_loses_only_their_own_rows(database: Callable[[], str], scenario_name: str,
                                                              person: str) -> None:
    scenario = SCENARIOS[scenario_name]()
    expected_rows = scenario.rows_of(person)
    with built(database, scenario) as (connector, engine):
        # discovery: exactly the person's identifiers, each learned one with its provenance
        found = discover({SYSTEM: connector}, seed(scenario, person))
        assert not found.errors
        assert {(str(i.type), i.value) for i in found.identities} == scenario.people[person].identifiers
        hits = found.hits[SYSTEM]
        assert_learned_with_provenance(scenario, person, hits.learned)
        first = fixture_reach(scenario, identity_sets(seed(scenario, person)))
        assert hits.counts == first.counts()
        assert hits.skipped == first.skipped()

        # with every identifier found: the rules pick exactly the rows written down as the person's ...
        final = fixture_reach(scenario, identity_sets(found.identities))
        assert {e: keys for e, keys in final.mine.items() if keys} == expected_rows, "fixture and rules disagree"
        again = connector.locate(found.identities)
        assert again.counts == {e: len(keys) for e, keys in expected_rows.items()}
        assert again.skipped == final.skipped()
        assert_learned_with_provenance(scenario, person, again.learned)

        # ... and access exports exactly those, with the mapped fields as stored
        before = snapshot(engine, scenario)
        exported = records_by_entity(list(connector.export(found.identities)))
        own = {e: set(recs) for e, recs in exported.items() if not e.endswith(".related")}
        assert own == {e: {str(k) for k in keys} for e, keys in expected_rows.items()}
        for entity, recs in own.items():
            table, columns = scenario.table(entity), shown_columns(scenario, entity)
            for record_id in recs:
                row = next(r for k, r in before[table].items() if str(k) == record_id)
                assert dict(exported[entity][record_id].fields) == {c: row[c] for c in columns}
        related = {e.removesuffix(".related"): set(recs) for e, recs in exported.items() if e.endswith(".related")}
        assert related == {e: {str(k) for k in keys} for e, keys in final.related.items() if keys}

        # erasure changes exactly the person's rows; everyone else's and nobody's rows stay as they were
        receipt = connector.erase(found.identities)
        assert_erased_only_theirs(scenario, person, before, snapshot(engine, scenario), receipt)
        assert receipt.skipped == final.skipped()


@pytest.mark.parametrize("scenario_name", list(SCENARIOS))
def test_one_connector_serves_every_person_in_turn_each_only_their_own(database: Callable[[], str],
                                                                      scenario_name: str) -> None:
    """locate and export build their statements once per shape of identifiers and keep them, the values bound as
    parameters: a connector that served one person gives the next exactly their own identifiers and rows, never
    the previous person's, and the second round builds no statement anew."""
    scenario = SCENARIOS[scenario_name]()
    with built(database, scenario) as (connector, _engine):
        kept = 0
        for round_ in (1, 2):
            for person in scenario.people:
                found = discover({SYSTEM: connector}, seed(scenario, person))
                assert {(str(i.type), i.value) for i in found.identities} == scenario.people[person].identifiers
                expected = scenario.rows_of(person)
                assert connector.locate(found.identities).counts == {e: len(k) for e, k in expected.items()}
                exported = records_by_entity(list(connector.export(found.identities)))
                own = {e: set(recs) for e, recs in exported.items() if not e.endswith(".related")}
                assert own == {e: {str(k) for k in keys} for e, keys in expected.items()}, (round_, person)
            if round_ == 1:
                kept = len(connector._queries)
        assert kept and len(connector._queries) == kept


def test_an_employees_access_and_erasure_leave_the_customers_they_served_alone(
        database: Callable[[], str]) -> None:
    """The case reported in issue 9: Eve handled service requests of Ann, Bob and Frank. Her access request
    exported the customers' cards and her erasure erased them."""
    scenario = service_desk()
    with built(database, scenario) as (connector, engine):
        found = discover({SYSTEM: connector}, seed(scenario, "eve"))
        assert {(str(i.type), i.value) for i in found.identities} == {
            ("email", "eve@staff.example.com"), ("phone", "+4711111111")}
        records = list(connector.export(found.identities))
        assert [(r.entity, r.record_id) for r in records] == [("employees", "1")]
        assert not any(r.entity == "customer_cards" for r in records)

        before = snapshot(engine, scenario)
        receipt = connector.erase(found.identities)
        after = snapshot(engine, scenario)
        assert receipt.changed == {"employees": 1}
        for table in ("customers", "service_requests", "customer_cards", "visits", "logins", "orders"):
            assert after[table] == before[table], table
        assert after["employees"][2] == before["employees"][2]  # Frank, the other employee
        assert after["employees"][1]["name"] == "former employee"


def test_a_relation_with_export_gives_the_related_rows_without_their_identity_columns(
        database: Callable[[], str]) -> None:
    scenario = service_desk(handled_export=True)
    with built(database, scenario) as (connector, engine):
        found = discover({SYSTEM: connector}, seed(scenario, "eve"))
        assert found.hits[SYSTEM].skipped == {"service_requests": {RELATED_NOT_OWNED: 5}}
        exported = records_by_entity(list(connector.export(found.identities)))
        assert set(exported) == {"employees", "service_requests.related"}
        handled = exported["service_requests.related"]
        assert set(handled) == {"100", "102", "103", "104", "106"}
        for record in handled.values():
            assert set(record.fields) == {"id", "employee_id", "subject"}  # no customer_email
            assert record.fields["employee_id"] == 1
        text = repr([r.fields for r in handled.values()]).lower()
        assert "@" not in text

        # Frank handled one request of Ann's and one of his own: his own is his, not related
        franks = records_by_entity(list(connector.export(discover({SYSTEM: connector},
                                                                  seed(scenario, "frank")).identities)))
        assert set(franks["service_requests.related"]) == {"101"}
        assert set(franks["service_requests"]) == {"104", "105"}

        # related rows are never erased for the related person
        before = snapshot(engine, scenario)
        receipt = connector.erase(found.identities)
        after = snapshot(engine, scenario)
        assert after["service_requests"] == before["service_requests"]
        assert receipt.changed == {"employees": 1}
        assert receipt.skipped == {"service_requests": {RELATED_NOT_OWNED: 5}}


def test_a_self_reference_with_export_lists_the_people_referred_without_their_identities(
        database: Callable[[], str]) -> None:
    """users.referred_by -> users.id is a relation (a cycle of one entity) with `export: true`."""
    scenario = referrals(referred_export=True)
    with built(database, scenario) as (connector, engine):
        found = discover({SYSTEM: connector}, seed(scenario, "quinn"))
        assert not found.errors
        assert {(str(i.type), i.value) for i in found.identities} == {("email", "quinn@example.com")}
        exported = records_by_entity(list(connector.export(found.identities)))
        assert {e: set(r) for e, r in exported.items()} == {
            "users": {"1"}, "rewards": {"10"}, "users.related": {"2"}}
        assert dict(exported["users.related"]["2"].fields) == {"id": 2, "name": "Rita", "referred_by": 1}
        before = snapshot(engine, scenario)
        receipt = connector.erase(found.identities)
        after = snapshot(engine, scenario)
        assert receipt.changed == {"users": 1, "rewards": 1}
        assert after["users"][2] == before["users"][2] and after["users"][3] == before["users"][3]


def test_deleting_a_parent_never_breaks_on_owned_rows_kept_because_they_name_someone_else(
        database: Callable[[], str]) -> None:
    """Tickets erased by delete: Nia's ticket 1 owns CC rows naming Oli and Pam, which are theirs and stay.
    Either the data map is refused up front (as it is for a deleted parent whose children are masked), or the
    erasure keeps Oli's and Pam's rows without a database error."""
    scenario = tickets(delete_tickets=True)
    try:
        parse_system(SYSTEM, scenario.settings())
    except PermanentError:
        return  # refused by the data-map validation: fine
    with built(database, scenario) as (connector, engine):
        found = discover({SYSTEM: connector}, seed(scenario, "nia"))
        before = snapshot(engine, scenario)
        connector.erase(found.identities)
        after = snapshot(engine, scenario)
        assert after["ticket_cc"][10] == before["ticket_cc"][10]
        assert after["ticket_cc"][11] == before["ticket_cc"][11]


def test_check_warns_about_relations_to_rows_with_identity_columns_and_about_reference_cycles(
        database: Callable[[], str]) -> None:
    with built(database, service_desk()) as (connector, _engine):
        health = connector.check()
        assert health.ok, health.problems
        assert any("service_requests" in w and "employee_id -> employees.id" in w and "customer_email" in w
                   for w in health.warnings), health.warnings
    with built(database, referrals()) as (connector, _engine):
        health = connector.check()
        assert health.ok, health.problems
        assert any(w.startswith("reference cycle users -> users") for w in health.warnings), health.warnings
        assert any("users" in w and "referred_by -> users.id" in w for w in health.warnings), health.warnings


"""Fixture schemas for issue 9 ("only the subject's data"): the shapes in which one person's request used to
reach other people's rows, with data for several people.

Each `Scenario` holds the tables (SQLAlchemy Core, so the same code builds them on PostgreSQL and MariaDB),
the data-map `entities` in the format `connectors.sql_map.parse_system` reads, every row with the people it
belongs to (written by hand, never asked of the connector), and each person's identifiers. `expect_reach` is
a plain-Python reading of the data-map rules over the fixture rows; the tests compare it with the hand-written
owners (so the fixtures and the rules agree) and use it for what the labels cannot say (the `skipped` counts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from connectors.base import ConnectorContext, Identities
from connectors.sql import NAMES_SOMEONE_ELSE, RELATED_NOT_OWNED, SqlConnector

SYSTEM = "shop"
URL_ENV = "DSAR_SUBJECT_DB_URL"
SECRET_KEY = b"subject-only-test-key"
SHARED_BY_DEFAULT = ("phone", "matomo_visitor_id")

Owners = str | tuple[str, ...] | None  # a person, several people (a household's phone), or nobody
Row = dict[str, Any]


@dataclass(frozen=True)
class Person:
    seed: str  # the e-mail address the request comes with
    identifiers: frozenset[tuple[str, str]]  # (type, value): all of theirs in the schema, what discovery must find


@dataclass
class Scenario:
    name: str
    define: Callable[[sa.MetaData], None]
    entities: dict[str, dict[str, Any]]
    rows: dict[str, list[tuple[Owners, Row]]]  # table -> rows in insert order, each with whose it is
    people: dict[str, Person]
    metadata: sa.MetaData = field(init=False)

    def __post_init__(self) -> None:
        self.metadata = sa.MetaData()
        self.define(self.metadata)

    # -- building -------------------------------------------------------------------------------------------

    def build(self, engine: sa.Engine) -> None:
        self.metadata.create_all(engine)
        with engine.begin() as conn:
            for table in self.metadata.sorted_tables:
                rows = [row for _, row in self.rows.get(table.name, [])]
                if rows:
                    conn.execute(table.insert(), rows)

    def settings(self) -> dict[str, Any]:
        return {"kind": "sql", "url_env": URL_ENV, "entities": self.entities}

    def connector(self, url: str) -> SqlConnector:
        ctx = ConnectorContext(env={URL_ENV: url}, secret_key=SECRET_KEY)
        return SqlConnector.from_settings(SYSTEM, self.settings(), ctx)

    # -- ground truth ---------------------------------------------------------------------------------------

    def pk(self, entity: str) -> str:
        return str(self.entities[entity].get("primary_key", "id"))

    def table(self, entity: str) -> str:
        return str(self.entities[entity]["table"])

    def owners(self, entity: str) -> dict[Any, frozenset[str]]:
        """primary key -> the people the row belongs to (empty: nobody's, like a shared address)."""
        pk = self.pk(entity)
        return {row[pk]: _as_set(who) for who, row in self.rows.get(self.table(entity), [])}

    def rows_of(self, person: str) -> dict[str, set[Any]]:
        """entity -> primary keys of the person's rows (entities without any left out)."""
        out = {}
        for entity in self.entities:
            keys = {k for k, who in self.owners(entity).items() if person in who}
            if keys:
                out[entity] = keys
        return out

    def identity_columns(self, entity: str) -> dict[str, str]:
        return dict(self.entities[entity].get("identities", {}))


def _as_set(who: Owners) -> frozenset[str]:
    if who is None:
        return frozenset()
    return frozenset([who]) if isinstance(who, str) else frozenset(who)


def _person(seed: str, *identifiers: tuple[str, str]) -> Person:
    return Person(seed, frozenset({("email", seed), *identifiers}))


# -- the data-map rules, in plain Python ----------------------------------------------------------------------


@dataclass
class Reach:
    mine: dict[str, set[Any]]  # rows that are the person's
    others: dict[str, set[Any]]  # reached (identity match or ownership) but naming someone else
    related: dict[str, set[Any]]  # tied to the person's rows by an exported relation, not theirs
    linked: dict[str, set[Any]] = field(default_factory=dict)  # tied by any relation, not theirs: left alone

    def counts(self) -> dict[str, int]:
        return {e: len(keys) for e, keys in self.mine.items() if keys}

    def skipped(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for why, per_entity in ((NAMES_SOMEONE_ELSE, self.others), (RELATED_NOT_OWNED, self.linked)):
            for entity, keys in per_entity.items():
                if keys:
                    out.setdefault(entity, {})[why] = len(keys)
        return out


def identity_sets(identities: Identities | Iterable[tuple[str, str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for item in identities:
        type_, value = (str(item.type), item.value) if not isinstance(item, tuple) else item
        out.setdefault(type_, set()).add(value)
    return out


def matches(type_: str, value: Any, ids: Mapping[str, set[str]]) -> bool:
    if value is None:
        return False
    if type_ == "email":
        return str(value).strip(" ").lower() in ids.get("email", set())
    return str(value) in ids.get(type_, set())


def present(value: Any) -> bool:
    return value is not None and (not isinstance(value, str) or value.strip(" ") != "")


def references(spec: Mapping[str, Any]) -> dict[str, tuple[str, str, bool, bool]]:
    """column -> (entity, column, owner, export), the shorthand `entity.column` being ownership."""
    out = {}
    for column, ref in spec.get("references", {}).items():
        if isinstance(ref, str):
            entity, target = ref.split(".")
            out[column] = (entity, target, True, False)
        else:
            entity, target = ref["to"].split(".")
            out[column] = (entity, target, bool(ref["owner"]), bool(ref.get("export", False)))
    return out


def owners_first(entities: Mapping[str, Mapping[str, Any]]) -> list[str]:
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        for entity, _col, owner, _export in references(entities[name]).values():
            if owner:
                visit(entity)
        order.append(name)

    for name in entities:
        visit(name)
    return order


def expect_reach(entities: Mapping[str, Mapping[str, Any]], tables: Mapping[str, list[Row]],
                 ids: Mapping[str, set[str]]) -> Reach:
    """The data-map rules (issue 9) applied to rows in memory: which rows are the person's, which were reached
    but name someone else, which are related through an exported relation."""
    reach = Reach({}, {}, {})

    def values_of(entity: str, column: str) -> set[Any]:
        target = entities[entity]
        key = target.get("primary_key", "id")
        return {r[column] for r in tables[target["table"]] if r[key] in reach.mine[entity]}

    for name in owners_first(entities):  # owners before what they own
        spec = entities[name]
        pk = spec.get("primary_key", "id")
        idents: dict[str, str] = dict(spec.get("identities", {}))
        shared = set(spec.get("shared", SHARED_BY_DEFAULT))
        learn = set(spec.get("learn", ()))
        owned_in = {c: values_of(e, col) for c, (e, col, owner, _x) in references(spec).items() if owner}
        mine, others = set(), set()
        for row in tables[spec["table"]]:
            def names_other(exempt: set[str], row: Row = row, idents: dict[str, str] = idents) -> bool:
                return any(present(row[c]) and not matches(t, row[c], ids) for t, c in idents.items()
                           if t not in exempt)

            strong = any(matches(t, row[c], ids) for t, c in idents.items() if t not in shared)
            by_shared = any(matches(t, row[c], ids) for t, c in idents.items() if t in shared)
            owned = any(row[c] is not None and row[c] in vals for c, vals in owned_in.items())
            if strong or (owned and not names_other(learn)) or (by_shared and not names_other(set())):
                mine.add(row[pk])
            elif strong or by_shared or owned:
                others.add(row[pk])
        reach.mine[name], reach.others[name] = mine, others
    for name, spec in entities.items():  # relations (possibly cyclic) need every entity's rows first
        pk = spec.get("primary_key", "id")
        linked_in = {c: (export, values_of(e, col)) for c, (e, col, owner, export) in references(spec).items()
                     if not owner}

        def tied(row: Mapping[str, Any], exported_only: bool,
                 linked_in: Mapping[str, tuple[bool, set[Any]]] = linked_in) -> bool:
            return any(row[c] is not None and row[c] in vals for c, (export, vals) in linked_in.items()
                       if export or not exported_only)

        rows = [row for row in tables[spec["table"]] if row[pk] not in reach.mine[name]]
        reach.related[name] = {row[pk] for row in rows if tied(row, exported_only=True)}
        reach.linked[name] = {row[pk] for row in rows if tied(row, exported_only=False)}
    return reach


def fixture_reach(scenario: Scenario, ids: Mapping[str, set[str]]) -> Reach:
    tables = {scenario.table(e): [row for _, row in scenario.rows.get(scenario.table(e), [])]
              for e in scenario.entities}
    return expect_reach(scenario.entities, tables, ids)


# -- table helpers ----------------------------------------------------------------------------------------------


def _id() -> sa.Column[Any]:
    return sa.Column("id", sa.Integer, primary_key=True, autoincrement=False)


def _text(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.String(200), nullable=True)


def _ref(name: str, target: str) -> sa.Column[Any]:
    return sa.Column(name, sa.Integer, sa.ForeignKey(target), nullable=True)


def _mask(**columns: Any) -> dict[str, Any]:
    return {"strategy": "mask", "mask": columns}


DELETE = {"strategy": "delete"}


def _fields(*columns: str, category: str = "data") -> dict[str, str]:
    return dict.fromkeys(columns, category)


# -- (a) customers, employees and the service requests between them ------------------------------------------


def service_desk(handled_export: bool = False) -> Scenario:
    """An employee handles customers' service requests (a relation, exported to the employee only with
    `handled_export`); each request is owned by a customer and carries the customer's e-mail. Frank is both an
    employee and a customer; request 106 sits on Ann's account but names Bob (so it is Bob's)."""

    def define(md: sa.MetaData) -> None:
        sa.Table("customers", md, _id(), _text("email"), _text("phone"), _text("name"))
        sa.Table("employees", md, _id(), _text("email"), _text("phone"), _text("name"))
        sa.Table("service_requests", md, _id(), _ref("customer_id", "customers.id"),
                 _ref("employee_id", "employees.id"), _text("customer_email"), _text("subject"))
        sa.Table("customer_cards", md, _id(), _ref("customer_id", "customers.id"), _text("card_last4"),
                 _text("holder_name"))
        sa.Table("visits", md, _id(), _ref("customer_id", "customers.id"), _text("page"), _text("visited_on"))
        sa.Table("logins", md, _id(), _ref("customer_id", "customers.id"), _text("ip_address"))
        sa.Table("orders", md, _id(), _ref("customer_id", "customers.id"), _text("invoice_email"),
                 sa.Column("total", sa.Integer))

    owned_by_customer = {"customer_id": "customers.id"}
    # employees come last: a relation's target may come after the entity that refers to it in the map
    entities: dict[str, dict[str, Any]] = {
        "customers": {"table": "customers", "identities": {"email": "email", "phone": "phone", "account_id": "id"},
                      "fields": _fields("id", "email", "phone", "name"),
                      "erase": _mask(email="hash", phone="null", name="redact")},
        "service_requests": {"table": "service_requests", "identities": {"email": "customer_email"},
                             "references": {"customer_id": "customers.id",
                                            "employee_id": {"to": "employees.id", "owner": False,
                                                            "export": handled_export}},
                             "fields": _fields("id", "employee_id", "customer_email", "subject"), "erase": DELETE},
        "customer_cards": {"table": "customer_cards", "references": owned_by_customer,
                           "fields": _fields("id", "card_last4", "holder_name"), "erase": DELETE},
        "visits": {"table": "visits", "references": owned_by_customer, "fields": _fields("id", "page", "visited_on"),
                   "erase": DELETE},
        "logins": {"table": "logins", "references": owned_by_customer, "fields": _fields("id", "ip_address"),
                   "erase": DELETE},
        "orders": {"table": "orders", "identities": {"email": "invoice_email"}, "learn": ["email"],
                   "references": owned_by_customer, "fields": _fields("id", "invoice_email", "total"),
                   "erase": _mask(invoice_email="hash")},
        "employees": {"table": "employees", "identities": {"email": "email", "phone": "phone"},
                      "fields": _fields("id", "email", "phone", "name"),
                      "erase": _mask(email="hash", phone="null", name={"fixed": "former employee"})},
    }
    rows: dict[str, list[tuple[Owners, Row]]] = {
        "customers": [
            ("ann", {"id": 10, "email": " Ann@Example.COM ", "phone": "+4733333333", "name": "Ann Customer"}),
            ("bob", {"id": 11, "email": "bob@example.com", "phone": "+4744444444", "name": "Bob Customer"}),
            ("frank", {"id": 12, "email": "frank@example.org", "phone": "+4722222222", "name": "Frank Both"}),
        ],
        "employees": [
            ("eve", {"id": 1, "email": "eve@staff.example.com", "phone": "+4711111111", "name": "Eve Employee"}),
            ("frank", {"id": 2, "email": "Frank@example.org", "phone": "+4722222222", "name": "Frank Both"}),
        ],
        "service_requests": [
            ("ann", {"id": 100, "customer_id": 10, "employee_id": 1, "customer_email": "ann@example.com",
                     "subject": "printer on fire"}),
            ("ann", {"id": 101, "customer_id": 10, "employee_id": 2, "customer_email": None, "subject": "invoice"}),
            ("bob", {"id": 102, "customer_id": 11, "employee_id": 1, "customer_email": "BOB@example.com",
                     "subject": "password"}),
            ("bob", {"id": 103, "customer_id": 11, "employee_id": 1, "customer_email": "", "subject": "refund"}),
            ("frank", {"id": 104, "customer_id": 12, "employee_id": 1, "customer_email": "frank@example.org",
                       "subject": "upgrade"}),
            ("frank", {"id": 105, "customer_id": 12, "employee_id": 2, "customer_email": None,
                       "subject": "handled my own"}),
            ("bob", {"id": 106, "customer_id": 10, "employee_id": 1, "customer_email": "bob@example.com",
                     "subject": "filed by Bob on Ann's account"}),
        ],
        "customer_cards": [
            ("ann", {"id": 200, "customer_id": 10, "card_last4": "1111", "holder_name": "ANN CUSTOMER"}),
            ("ann", {"id": 201, "customer_id": 10, "card_last4": "2222", "holder_name": "ANN CUSTOMER"}),
            ("bob", {"id": 202, "customer_id": 11, "card_last4": "3333", "holder_name": "BOB CUSTOMER"}),
            ("frank", {"id": 203, "customer_id": 12, "card_last4": "4444", "holder_name": "FRANK BOTH"}),
        ],
        "visits": [
            ("ann", {"id": 300, "customer_id": 10, "page": "/pricing", "visited_on": "2024-01-02"}),
            ("bob", {"id": 301, "customer_id": 11, "page": "/", "visited_on": "2024-01-03"}),
            ("bob", {"id": 302, "customer_id": 11, "page": "/help", "visited_on": "2024-01-04"}),
            ("frank", {"id": 303, "customer_id": 12, "page": "/jobs", "visited_on": "2024-01-05"}),
        ],
        "logins": [
            ("ann", {"id": 400, "customer_id": 10, "ip_address": "192.0.2.10"}),
            ("bob", {"id": 401, "customer_id": 11, "ip_address": "192.0.2.11"}),
            ("frank", {"id": 402, "customer_id": 12, "ip_address": "192.0.2.12"}),
        ],
        "orders": [
            ("ann", {"id": 500, "customer_id": 10, "invoice_email": "ann.work@corp.example.net", "total": 100}),
            ("ann", {"id": 501, "customer_id": 10, "invoice_email": None, "total": 200}),
            ("bob", {"id": 502, "customer_id": 11, "invoice_email": "bob@example.com", "total": 300}),
            ("frank", {"id": 503, "customer_id": 12, "invoice_email": "frank@example.org", "total": 400}),
        ],
    }
    people = {
        "ann": _person("ann@example.com", ("email", "ann.work@corp.example.net"), ("phone", "+4733333333"),
                       ("account_id", "10")),
        "bob": _person("bob@example.com", ("phone", "+4744444444"), ("account_id", "11")),
        "eve": _person("eve@staff.example.com", ("phone", "+4711111111")),
        "frank": _person("frank@example.org", ("phone", "+4722222222"), ("account_id", "12")),
    }
    return Scenario("service_desk" + ("_handled_exported" if handled_export else ""), define, entities, rows, people)


# -- (b) a company several contacts share ---------------------------------------------------------------------


def companies() -> Scenario:
    """Contacts relate to a company (not owned by it); the company has its own billing e-mail. Acme's switchboard
    phone is on two contacts' rows. Gus is a sole trader: his company's billing address is his own e-mail."""

    def define(md: sa.MetaData) -> None:
        sa.Table("companies", md, _id(), _text("name"), _text("billing_email"))
        sa.Table("company_invoices", md, _id(), _ref("company_id", "companies.id"), sa.Column("amount", sa.Integer))
        sa.Table("contacts", md, _id(), _ref("company_id", "companies.id"), _text("email"), _text("phone"),
                 _text("name"))
        sa.Table("contact_notes", md, _id(), _ref("contact_id", "contacts.id"), _text("note"))

    entities: dict[str, dict[str, Any]] = {
        "companies": {"table": "companies", "identities": {"email": "billing_email"},
                      "fields": _fields("id", "name", "billing_email"),
                      "erase": _mask(billing_email="hash", name="redact")},
        "company_invoices": {"table": "company_invoices", "references": {"company_id": "companies.id"},
                             "fields": _fields("id", "amount"), "erase": DELETE},
        "contacts": {"table": "contacts", "identities": {"email": "email", "phone": "phone"},
                     "references": {"company_id": {"to": "companies.id", "owner": False}},
                     "fields": _fields("id", "company_id", "email", "phone", "name"),
                     "erase": _mask(email="hash", phone="null", name="redact")},
        "contact_notes": {"table": "contact_notes", "references": {"contact_id": "contacts.id"},
                          "fields": _fields("id", "note"), "erase": DELETE},
    }
    rows: dict[str, list[tuple[Owners, Row]]] = {
        "companies": [
            (None, {"id": 1, "name": "Acme AS", "billing_email": "billing@acme.example.com"}),
            ("gus", {"id": 2, "name": "Gus Consulting", "billing_email": "gus@gus.example.com"}),
        ],
        "company_invoices": [
            (None, {"id": 10, "company_id": 1, "amount": 1000}),
            (None, {"id": 11, "company_id": 1, "amount": 2000}),
            ("gus", {"id": 12, "company_id": 2, "amount": 300}),
        ],
        "contacts": [
            ("carol", {"id": 1, "company_id": 1, "email": "carol@acme.example.com", "phone": "+4750000000",
                       "name": "Carol"}),
            ("dave", {"id": 2, "company_id": 1, "email": "dave@acme.example.com", "phone": "+4750000000",
                      "name": "Dave"}),
            ("erin", {"id": 3, "company_id": 1, "email": "Erin@Acme.example.com", "phone": "+4751111111",
                      "name": "Erin"}),
            ("gus", {"id": 4, "company_id": 2, "email": "gus@gus.example.com", "phone": "+4759999999",
                     "name": "Gus"}),
        ],
        "contact_notes": [
            ("carol", {"id": 20, "contact_id": 1, "note": "prefers e-mail"}),
            ("dave", {"id": 21, "contact_id": 2, "note": "call after 10"}),
            ("dave", {"id": 22, "contact_id": 2, "note": "decision maker"}),
            ("erin", {"id": 23, "contact_id": 3, "note": "on leave in May"}),
            ("gus", {"id": 24, "contact_id": 4, "note": "pays late"}),
        ],
    }
    people = {
        "carol": _person("carol@acme.example.com", ("phone", "+4750000000")),
        "dave": _person("dave@acme.example.com", ("phone", "+4750000000")),
        "erin": _person("erin@acme.example.com", ("phone", "+4751111111")),
        "gus": _person("gus@gus.example.com", ("phone", "+4759999999")),
    }
    return Scenario("companies", define, entities, rows, people)


# -- (c) a postal address two people's rows refer to ------------------------------------------------------------


def addresses() -> Scenario:
    """Hal and Ida live at the same address; addresses are nobody's (relations both ways form a cycle)."""

    def define(md: sa.MetaData) -> None:
        sa.Table("addresses", md, _id(), _text("street"), _text("city"),
                 sa.Column("registered_by", sa.Integer, nullable=True))
        sa.Table("people", md, _id(), _text("email"), _text("name"), _ref("address_id", "addresses.id"))
        sa.Table("deliveries", md, _id(), _ref("person_id", "people.id"), _ref("address_id", "addresses.id"),
                 _text("item"))

    entities: dict[str, dict[str, Any]] = {
        "addresses": {"table": "addresses", "references": {"registered_by": {"to": "people.id", "owner": False}},
                      "fields": _fields("id", "street", "city"), "erase": _mask(street="redact")},
        "people": {"table": "people", "identities": {"email": "email"},
                   "references": {"address_id": {"to": "addresses.id", "owner": False}},
                   "fields": _fields("id", "email", "name", "address_id"),
                   "erase": _mask(email="hash", name="redact")},
        "deliveries": {"table": "deliveries",
                       "references": {"person_id": "people.id",
                                      "address_id": {"to": "addresses.id", "owner": False}},
                       "fields": _fields("id", "address_id", "item"), "erase": DELETE},
    }
    rows: dict[str, list[tuple[Owners, Row]]] = {
        "addresses": [
            (None, {"id": 1, "street": "Storgata 1", "city": "Oslo", "registered_by": 1}),
            (None, {"id": 2, "street": "Elm Street 5", "city": "Bergen", "registered_by": 3}),
        ],
        "people": [
            ("hal", {"id": 1, "email": "hal@example.com", "name": "Hal", "address_id": 1}),
            ("ida", {"id": 2, "email": "ida@example.com", "name": "Ida", "address_id": 1}),
            ("jon", {"id": 3, "email": "jon@example.com", "name": "Jon", "address_id": 2}),
        ],
        "deliveries": [
            ("hal", {"id": 30, "person_id": 1, "address_id": 1, "item": "books"}),
            ("hal", {"id": 31, "person_id": 1, "address_id": 1, "item": "lamp"}),
            ("ida", {"id": 32, "person_id": 2, "address_id": 1, "item": "shoes"}),
            ("jon", {"id": 33, "person_id": 3, "address_id": 2, "item": "bike"}),
        ],
    }
    people = {name: _person(f"{name}@example.com") for name in ("hal", "ida", "jon")}
    return Scenario("addresses", define, entities, rows, people)


# -- (d) a household: two accounts with one phone number ----------------------------------------------------------


def household() -> Scenario:
    """Kim and Lea share the household phone (shared by default). A call-back request logged only under that
    number names nobody else, so it is both Kim's and Lea's; one under an unknown number is nobody's."""

    def define(md: sa.MetaData) -> None:
        sa.Table("accounts", md, _id(), _text("email"), _text("phone"), _text("name"))
        sa.Table("subscriptions", md, _id(), _ref("account_id", "accounts.id"), _text("plan"))
        sa.Table("callback_requests", md, _id(), _text("phone"), _text("topic"))

    entities: dict[str, dict[str, Any]] = {
        "accounts": {"table": "accounts", "identities": {"email": "email", "phone": "phone", "account_id": "id"},
                     "fields": _fields("id", "email", "phone", "name"),
                     "erase": _mask(email="hash", phone="null", name="redact")},
        "subscriptions": {"table": "subscriptions", "references": {"account_id": "accounts.id"},
                          "fields": _fields("id", "plan"), "erase": DELETE},
        "callback_requests": {"table": "callback_requests", "identities": {"phone": "phone"},
                              "fields": _fields("id", "phone", "topic"), "erase": DELETE},
    }
    rows: dict[str, list[tuple[Owners, Row]]] = {
        "accounts": [
            ("kim", {"id": 1, "email": "kim@home.example.com", "phone": "+4760000000", "name": "Kim"}),
            ("lea", {"id": 2, "email": "lea@home.example.com", "phone": "+4760000000", "name": "Lea"}),
            ("max", {"id": 3, "email": "max@example.com", "phone": "+4761111111", "name": "Max"}),
        ],
        "subscriptions": [
            ("kim", {"id": 40, "account_id": 1, "plan": "basic"}),
            ("lea", {"id": 41, "account_id": 2, "plan": "pro"}),
            ("max", {"id": 42, "account_id": 3, "plan": "basic"}),
        ],
        "callback_requests": [
            (("kim", "lea"), {"id": 50, "phone": "+4760000000", "topic": "router"}),
            ("max", {"id": 51, "phone": "+4761111111", "topic": "billing"}),
            (None, {"id": 52, "phone": "+4769999999", "topic": "sales"}),
        ],
    }
    people = {
        "kim": _person("kim@home.example.com", ("phone", "+4760000000"), ("account_id", "1")),
        "lea": _person("lea@home.example.com", ("phone", "+4760000000"), ("account_id", "2")),
        "max": _person("max@example.com", ("phone", "+4761111111"), ("account_id", "3")),
    }
    return Scenario("household", define, entities, rows, people)


# -- (e) a support ticket and the people copied on it -----------------------------------------------------------------


def tickets(delete_tickets: bool = False) -> Scenario:
    """CC rows are owned by the ticket and each carries the CC'd person's e-mail: a CC row is the CC'd
    person's, not the requester's. With `delete_tickets` tickets are erased by delete (see the test)."""

    def define(md: sa.MetaData) -> None:
        sa.Table("tickets", md, _id(), _text("requester_email"), _text("subject"))
        sa.Table("ticket_cc", md, _id(), _ref("ticket_id", "tickets.id"), _text("email"))
        sa.Table("ticket_messages", md, _id(), _ref("ticket_id", "tickets.id"), _text("body"))

    owned_by_ticket = {"ticket_id": "tickets.id"}
    entities: dict[str, dict[str, Any]] = {
        "tickets": {"table": "tickets", "identities": {"email": "requester_email"},
                    "fields": _fields("id", "requester_email", "subject"),
                    "erase": DELETE if delete_tickets else _mask(requester_email="hash", subject="redact")},
        "ticket_cc": {"table": "ticket_cc", "identities": {"email": "email"}, "references": owned_by_ticket,
                      "fields": _fields("id", "ticket_id", "email"), "erase": DELETE},
        "ticket_messages": {"table": "ticket_messages", "references": owned_by_ticket,
                            "fields": _fields("id", "body"), "erase": DELETE},
    }
    rows: dict[str, list[tuple[Owners, Row]]] = {
        "tickets": [
            ("nia", {"id": 1, "requester_email": "nia@example.com", "subject": "VPN down"}),
            ("oli", {"id": 2, "requester_email": "oli@example.com", "subject": "new laptop"}),
            ("nia", {"id": 3, "requester_email": " NIA@example.com", "subject": "still down"}),
        ],
        "ticket_cc": [
            ("oli", {"id": 10, "ticket_id": 1, "email": "oli@example.com"}),
            ("pam", {"id": 11, "ticket_id": 1, "email": "pam@example.com"}),
            ("nia", {"id": 12, "ticket_id": 1, "email": None}),
            ("nia", {"id": 13, "ticket_id": 2, "email": "nia@example.com"}),
            ("nia", {"id": 14, "ticket_id": 3, "email": "   "}),
            ("oli", {"id": 15, "ticket_id": 2, "email": " Oli@Example.com"}),
        ],
        "ticket_messages": [
            ("nia", {"id": 20, "ticket_id": 1, "body": "it is down"}),
            ("oli", {"id": 21, "ticket_id": 2, "body": "mine is old"}),
            ("nia", {"id": 22, "ticket_id": 3, "body": "again"}),
            ("oli", {"id": 23, "ticket_id": 2, "body": "thanks"}),
        ],
    }
    people = {name: _person(f"{name}@example.com") for name in ("nia", "oli", "pam")}
    return Scenario("tickets" + ("_deleted" if delete_tickets else ""), define, entities, rows, people)


# -- (f) a self-reference: who referred whom ----------------------------------------------------------------------


def referrals(referred_export: bool = False) -> Scenario:
    """users.referred_by -> users.id is a relation (a cycle of one); rewards are owned by the referrer and
    relate to the referred user. With `referred_export` the people someone referred are exported to them."""

    def define(md: sa.MetaData) -> None:
        sa.Table("users", md, _id(), _text("email"), _text("name"), _ref("referred_by", "users.id"))
        sa.Table("rewards", md, _id(), _ref("user_id", "users.id"), _ref("referred_user_id", "users.id"),
                 sa.Column("amount", sa.Integer))

    entities: dict[str, dict[str, Any]] = {
        "users": {"table": "users", "identities": {"email": "email"},
                  "references": {"referred_by": {"to": "users.id", "owner": False, "export": referred_export}},
                  "fields": _fields("id", "email", "name", "referred_by"),
                  "erase": _mask(email="hash", name="redact")},
        "rewards": {"table": "rewards",
                    "references": {"user_id": "users.id", "referred_user_id": {"to": "users.id", "owner": False}},
                    "fields": _fields("id", "referred_user_id", "amount"), "erase": DELETE},
    }
    rows: dict[str, list[tuple[Owners, Row]]] = {
        "users": [
            ("quinn", {"id": 1, "email": "quinn@example.com", "name": "Quinn", "referred_by": None}),
            ("rita", {"id": 2, "email": "rita@example.com", "name": "Rita", "referred_by": 1}),
            ("sam", {"id": 3, "email": "sam@example.com", "name": "Sam", "referred_by": 2}),
        ],
        "rewards": [
            ("quinn", {"id": 10, "user_id": 1, "referred_user_id": 2, "amount": 50}),
            ("rita", {"id": 11, "user_id": 2, "referred_user_id": 3, "amount": 50}),
        ],
    }
    people = {name: _person(f"{name}@example.com") for name in ("quinn", "rita", "sam")}
    return Scenario("referrals" + ("_exported" if referred_export else ""), define, entities, rows, people)


SCENARIOS: dict[str, Callable[[], Scenario]] = {
    "service_desk": service_desk,
    "service_desk_handled_exported": lambda: service_desk(handled_export=True),
    "companies": companies,
    "addresses": addresses,
    "household": household,
    "tickets": tickets,
    "referrals": referrals,
}

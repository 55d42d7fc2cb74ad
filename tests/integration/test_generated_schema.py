"""Issue 10: generated schemas on PostgreSQL and MariaDB, with every column type the connector supports.

A seeded generator (one seed per test case, so a failure reproduces from its id) makes 1-4 tables with quoted,
mixed-case, reserved-word and non-ASCII names, extra columns of random types, an e-mail identity column stored
untrimmed and in mixed case, ownership chains of depth 1-3, and a second database (a second SQL system) whose
table holds an account id, and sometimes an e-mail, with no foreign key: discovery learns the account id in
system 1 and finds the rows in system 2. Everything is written as SQL literals, and every expectation comes
from the generator (whose row is whose, and the documented export representation of each literal), never
from the connector. For one random subject: access exports exactly the subject's rows and values, restriction
marks exactly the subject's rows (and lifting restores them), erasure changes only the subject's rows.

More seeds locally: DSAR_SCHEMA_SEEDS=40 .venv/bin/pytest tests/integration/test_generated_schema.py
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from connectors.base import ConnectorContext, Identities, Identity, IdentityType
from connectors.sql import SqlConnector
from connectors.sql_values import REDACTED
from discovery.engine.discover import discover

pytestmark = pytest.mark.integration

SEEDS = range(int(os.environ.get("DSAR_SCHEMA_SEEDS", "16")))
NOW = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)  # the connectors' clock
SECRET_KEY = b"generated-schema-key"
Gen = Callable[[random.Random], tuple[str, Any]]  # -> (SQL literal, documented export representation)


def lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# -- values of each type: the literal written, and what the export must show ---------------------------------


def _int(lo: int, hi: int) -> Gen:
    def gen(r: random.Random) -> tuple[str, Any]:
        n = r.choice([lo, hi, 0, r.randint(lo, hi)])
        return str(n), n
    return gen


def _decimal(r: random.Random) -> tuple[str, Any]:
    whole, frac = r.randint(-99999, 99999), r.randint(0, 999)
    sign = "-" if whole < 0 else ""
    digits = f"{abs(whole)}.{frac:03d}"
    text = f"{sign}{digits}"
    return lit(text.rstrip("0") if r.random() < 0.3 else text), text  # stored with the column's 3 decimals


WORDS = ["Ærlig", "blå", "O'Brien", "select", "kunde", "straße", "🙂", "tab\there", "  spaced ", "", "z"]


def _text(r: random.Random) -> tuple[str, Any]:
    text = " ".join(r.choice(WORDS) for _ in range(r.randint(1, 3)))[:40]
    return lit(text), text


def _char5(r: random.Random) -> tuple[str, Any]:
    text = "".join(r.choice("abcæøå") for _ in range(5))  # full length: no padding question
    return lit(text), text


def _bytes(r: random.Random) -> tuple[str, Any]:
    data = bytes(r.randrange(256) for _ in range(r.randint(0, 12)))
    return data.hex(), {"base64": base64.b64encode(data).decode()}  # literal finished per engine


def _date(r: random.Random) -> tuple[str, Any]:
    day = date(r.randint(1971, 2037), r.randint(1, 12), r.randint(1, 28)) if r.random() < 0.8 else date(2024, 2, 29)
    return lit(day.isoformat()), day.isoformat()


def _time(r: random.Random) -> tuple[str, Any]:
    h, m, s, us = r.randint(0, 23), r.randint(0, 59), r.randint(0, 59), r.choice([0, 500000, 123456])
    text = f"{h:02d}:{m:02d}:{s:02d}" + (f".{us:06d}" if us else "")
    return lit(text), text


def _datetime(fraction: bool) -> Gen:
    def gen(r: random.Random) -> tuple[str, Any]:
        moment = datetime(r.randint(1971, 2037), r.randint(1, 12), r.randint(1, 28), r.randint(0, 23),
                          r.randint(0, 59), r.randint(0, 59), r.choice([0, 250000]) if fraction else 0)
        return lit(moment.isoformat(sep=" ")), moment.isoformat()
    return gen


def _timestamptz(r: random.Random) -> tuple[str, Any]:
    moment = datetime(r.randint(1971, 2037), r.randint(1, 12), r.randint(1, 28), r.randint(0, 23), r.randint(0, 59),
                      tzinfo=UTC)
    offset = r.choice([0, 2, -5])
    local = moment + timedelta(hours=offset)
    return lit(f"{local:%Y-%m-%d %H:%M:%S}{offset:+03d}"), moment.isoformat()  # an instant: shown in UTC


def _timetz(r: random.Random) -> tuple[str, Any]:
    h, m, offset = r.randint(0, 23), r.randint(0, 59), r.choice([0, 2, -5])
    return lit(f"{h:02d}:{m:02d}:00{offset:+03d}"), f"{h:02d}:{m:02d}:00{offset:+03d}:00"


def _interval(r: random.Random) -> tuple[str, Any]:
    days, h, m, s = (r.choice([0, r.randint(1, 40)]), r.choice([0, r.randint(1, 23)]), r.choice([0, r.randint(1, 59)]),
                     r.choice([0, r.randint(1, 59)]))
    clock = "".join(f"{n}{unit}" for n, unit in ((h, "H"), (m, "M"), (s, "S")) if n)
    iso = "P" + (f"{days}D" if days else "") + (f"T{clock}" if clock else "") if days or clock else "PT0S"
    return lit(f"{days} days {h:02d}:{m:02d}:{s:02d}"), iso  # ISO 8601 duration, zero parts left out


def _uuid(r: random.Random) -> tuple[str, Any]:
    value = str(uuid.UUID(int=r.getrandbits(128)))
    return lit(value.upper() if r.random() < 0.5 else value), value


def _json(r: random.Random) -> tuple[str, Any]:
    value: Any = r.choice([{"navn": "Åse", "n": [1, 2.5, None], "ok": True}, [], "tekst", 42, {"a": {"b": "c"}}, None])
    return lit(json.dumps(value, ensure_ascii=False)), value


def _int_array(r: random.Random) -> tuple[str, Any]:
    items = [r.choice([r.randint(-9, 99), None]) for _ in range(r.randint(0, 4))]
    return lit("{" + ",".join("NULL" if i is None else str(i) for i in items) + "}"), items


def _text_array(r: random.Random) -> tuple[str, Any]:
    items = [r.choice(["a", "b c", "æøå", ""]) for _ in range(r.randint(0, 3))]
    return lit("{" + ",".join(json.dumps(i, ensure_ascii=False) for i in items) + "}"), items


def _choice(*values: str) -> Gen:
    def gen(r: random.Random) -> tuple[str, Any]:
        value = r.choice(values)
        return lit(value), value
    return gen


def _inet(r: random.Random) -> tuple[str, Any]:
    if r.random() < 0.5:
        host, bits = f"192.0.2.{r.randint(1, 254)}", r.choice([24, 32])
        return lit(f"{host}/{bits}"), host if bits == 32 else f"{host}/{bits}"  # PostgreSQL's own text form
    host = f"2001:db8::{r.randint(1, 0xffff):x}"
    return lit(f"{host}/64"), f"{host}/64"


def _cidr(r: random.Random) -> tuple[str, Any]:
    net = f"10.{r.randint(0, 255)}.{r.randint(0, 255)}.0/24"
    return lit(net), net


def _macaddr(r: random.Random) -> tuple[str, Any]:
    octets = [f"{r.randrange(256):02x}" for _ in range(6)]
    return lit("-".join(octets).upper()), ":".join(octets)  # stored (and shown) lower case with colons


def _bits(n: int, varying: bool) -> Gen:
    def gen(r: random.Random) -> tuple[str, Any]:
        bits = "".join(r.choice("01") for _ in range(r.randint(0, n) if varying else n))
        return f"B'{bits}'", bits
    return gen


def _tsvector(r: random.Random) -> tuple[str, Any]:
    words = [r.choice(["cat", "dog", "fat", "rat", "sat"]) for _ in range(r.randint(1, 4))]
    return lit(" ".join(words)), " ".join(f"'{w}'" for w in sorted(set(words)))  # sorted, unique, quoted


def _int4range(r: random.Random) -> tuple[str, Any]:
    lo, hi = sorted(r.sample(range(-50, 50), 2))
    lower, upper = r.choice("[("), r.choice("])")
    first, last = lo + (lower == "("), hi + (upper == "]")  # integer ranges are stored as [first,last)
    shown = {"lower": None, "upper": None, "bounds": None, "empty": True} if first >= last else \
        {"lower": first, "upper": last, "bounds": "[)", "empty": False}
    return lit(f"{lower}{lo},{hi}{upper}"), shown


def _point(r: random.Random) -> tuple[str, Any]:
    x, y = r.choice([0, 1.5, -2, 10]), r.choice([3, -0.5, 7])
    shown = f"({x:g},{y:g})"
    return lit(shown), shown


def _xml(r: random.Random) -> tuple[str, Any]:
    text = f"<kunde navn=\"{r.choice(['Åse', 'Bo'])}\">{r.randint(0, 9)}</kunde>"
    return lit(text), text


def _money(r: random.Random) -> tuple[str, Any]:
    cents = r.randint(-99999, 99999)
    amount = f"{'-' if cents < 0 else ''}{abs(cents) // 100}.{abs(cents) % 100:02d}"
    return lit(amount), amount  # the amount as a decimal text, without the locale's currency sign


def _bool(r: random.Random) -> tuple[str, Any]:
    value = r.random() < 0.5
    return ("TRUE" if value else "FALSE"), value


def _year(r: random.Random) -> tuple[str, Any]:
    year = r.randint(1901, 2155)
    return str(year), year


def _mariadb_set(r: random.Random) -> tuple[str, Any]:
    members = [m for m in ("rød", "grønn", "blå") if r.random() < 0.5]
    return lit(",".join(reversed(members))), members  # shown as a list in the SET's own order


def _mariadb_time(r: random.Random) -> tuple[str, Any]:
    # TIME is a duration in MariaDB: -838:59:59 to 838:59:59
    sign, h, m, s = r.choice(["", "-"]), r.choice([0, 5, 23, 24, 100, 838]), r.randint(0, 59), r.randint(0, 59)
    text = f"{sign}{h:02d}:{m:02d}:{s:02d}"
    return lit(text), "00:00:00" if text == "-00:00:00" else text


def _mariadb_json(r: random.Random) -> tuple[str, Any]:
    value = r.choice([{"navn": "Åse", "n": [1, 2.5, None], "ok": True}, [], "tekst", 42])
    return lit(json.dumps(value, ensure_ascii=False)), value  # the JSON value, not its text


@dataclass(frozen=True)
class ColType:
    ddl: str
    gen: Gen
    text: bool = False  # a text column: a 'hash' or 'redact' mask fits


PG_TYPES = [
    ColType("smallint", _int(-32768, 32767)), ColType("integer", _int(-2**31, 2**31 - 1)),
    ColType("bigint", _int(-2**63, 2**63 - 1)), ColType("numeric(12,3)", _decimal), ColType("money", _money),
    ColType("text", _text, text=True), ColType("varchar(40)", _text, text=True), ColType("char(5)", _char5),
    ColType("bytea", _bytes), ColType("boolean", _bool), ColType("date", _date), ColType("time", _time),
    ColType("timetz", _timetz), ColType("timestamp", _datetime(True)), ColType("timestamptz", _timestamptz),
    ColType("interval", _interval), ColType("uuid", _uuid), ColType("json", _json), ColType("jsonb", _json),
    ColType("integer[]", _int_array), ColType("text[]", _text_array),
    ColType('"Humør"', _choice("glad", "trist", "æøå")), ColType("inet", _inet), ColType("cidr", _cidr),
    ColType("macaddr", _macaddr), ColType("bit(6)", _bits(6, False)), ColType("varbit(10)", _bits(10, True)),
    ColType("tsvector", _tsvector), ColType("int4range", _int4range), ColType("point", _point),
    ColType("xml", _xml),
]
MARIADB_TYPES = [
    ColType("INT", _int(-2**31, 2**31 - 1)), ColType("BIGINT", _int(-2**63, 2**63 - 1)),
    ColType("DECIMAL(12,3)", _decimal), ColType("BIT(6)", _bits(6, False)), ColType("YEAR", _year),
    ColType("ENUM('glad','trist','æøå')", _choice("glad", "trist", "æøå")),
    ColType("SET('rød','grønn','blå')", _mariadb_set), ColType("JSON", _mariadb_json),
    ColType("BLOB", _bytes), ColType("VARBINARY(16)", _bytes), ColType("TIME", _mariadb_time),
    ColType("DATETIME", _datetime(False)), ColType("DATETIME(6)", _datetime(True)),
    ColType("TIMESTAMP NULL DEFAULT NULL", _datetime(False)), ColType("DATE", _date),
    ColType("VARCHAR(40)", _text, text=True), ColType("TEXT", _text, text=True), ColType("CHAR(5)", _char5),
]
PG_SETUP = ["CREATE TYPE \"Humør\" AS ENUM ('glad', 'trist', 'æøå')"]

# restriction markers: column type, the `restrict` value, the `lift` value (also the rows' starting value),
# and what a restricted row then holds
Marker = tuple[str, Any, Any, Any]
MARKERS: dict[str, list[Marker]] = {
    "postgresql": [("boolean", True, False, True), ("timestamp", "now", None, NOW.replace(tzinfo=None)),
                   ("timestamptz", "now", None, NOW), ("date", "today", None, NOW.date()),
                   ("varchar(20)", "restricted", None, "restricted")],
    # MariaDB BOOLEAN is TINYINT(1): an integer column, exported as 0 and 1
    "mariadb": [("BOOLEAN", True, False, 1), ("DATETIME", "now", None, NOW.replace(tzinfo=None)),
                ("DATE", "today", None, NOW.date()), ("VARCHAR(20)", "restricted", None, "restricted")],
}

TABLE_NAMES = ["order", "user", "select", "Kunde", "bestillinger", "adresse_æøå", "Order Lines", "group",
               "Fakturaer", "kunde data", "Ønskeliste", "table"]
COLUMN_NAMES = ["from", "Select", "user", "navn æøå", "E-post kopi", "where", "Beløp", "dato", "Straße", "key",
                "desc", "Sum", "limit", "ÆØÅ", "value", "order"]


# -- the generated world -------------------------------------------------------------------------------------


@dataclass
class Col:
    name: str
    ddl: str
    text: bool = False
    length: int | None = None


@dataclass
class Tbl:
    name: str
    pk: Col
    cols: list[Col]  # every column, the primary key first
    email: str = ""  # the e-mail identity column, if any
    account: str = ""  # the account id identity column, if any
    parent: int | None = None
    ref: str = ""  # the column holding the parent's primary key
    marker: str = ""
    marker_kind: Marker = ("", None, None, None)
    strategy: str = "delete"
    mask: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, tuple[str, Any]]] = field(default_factory=list)  # column -> (literal, export)
    owners: list[int | None] = field(default_factory=list)  # per row: whose (a person's index) or nobody's

    def entity(self) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "table": self.name, "primary_key": self.pk.name,
            "fields": {c.name: "data" for c in self.cols},
            "erase": {"strategy": "mask", "mask": self.mask} if self.strategy == "mask" else {"strategy": "delete"},
            "restrict": {"set": {self.marker: self.marker_kind[1]}},
            "lift": {"set": {self.marker: self.marker_kind[2]}},
        }
        identities = {t: c for t, c in (("email", self.email), ("account_id", self.account)) if c}
        if identities:
            spec["identities"] = identities
        return spec


@dataclass
class World:
    engine: str
    emails: list[str]
    subject: int
    system1: list[Tbl]
    system2: list[Tbl]
    setup: list[str]

    def settings(self, tables: list[Tbl], url_env: str) -> dict[str, Any]:
        entities = {}
        for t in tables:
            spec = t.entity()
            if t.parent is not None:
                parent = tables[t.parent]
                spec["references"] = {t.ref: f"{parent.name}.{parent.pk.name}"}
            entities[t.name] = spec
        return {"kind": "sql", "url_env": url_env, "entities": entities}

    def describe(self) -> str:
        lines = [f"{self.engine}: subject p{self.subject} ({self.emails[self.subject]})"]
        for label, tables in (("system 1", self.system1), ("system 2", self.system2)):
            for t in tables:
                parent = f" owned by {tables[t.parent].name!r} via {t.ref!r}" if t.parent is not None else ""
                lines.append(f"{label} {t.name!r}{parent}, erase {t.strategy} {t.mask}, marker {t.marker_kind[0]}: "
                             + ", ".join(f"{c.name!r} {c.ddl}" for c in t.cols))
                for row, who in zip(t.rows, t.owners, strict=True):
                    lines.append(f"    p{who}: " + ", ".join(f"{k}={v[0]}" for k, v in row.items()))
        return "\n".join(lines)


def _names(r: random.Random, pool: list[str], n: int, taken: set[str]) -> list[str]:
    """n names from the pool, unique ignoring case (MariaDB column names are case-insensitive)."""
    out = []
    for name in r.sample(pool, len(pool)):
        if name.lower() not in taken:
            taken.add(name.lower())
            out.append(name)
            if len(out) == n:
                break
    return out


def generate(seed: int, engine: str) -> World:
    r = random.Random(f"{engine}-{seed}")
    types = PG_TYPES if engine == "postgresql" else MARIADB_TYPES
    text_type, int_type = ("varchar(120)", "integer") if engine == "postgresql" else ("VARCHAR(120)", "INT")
    n_people = r.randint(2, 5)
    emails = [f"p{i}.{r.choice(['kunde', 'user', 'o'])}@example.{r.choice(['com', 'no'])}" for i in range(n_people)]
    subject = r.randrange(n_people)
    taken: set[str] = set()
    depth = seed % 3 + 1  # the longest ownership chain: 1, 2 or 3 references
    n_tables = min(4, depth + 1 + r.randint(0, 1)) if r.random() < 0.9 else 1
    names = _names(r, TABLE_NAMES, n_tables + 1, taken)
    account_ids = iter(r.sample(range(1000, 99999), 60))

    def table(name: str, pk_text: bool) -> Tbl:
        col_taken: set[str] = set()
        pk = Col(_names(r, COLUMN_NAMES, 1, col_taken)[0], text_type if pk_text else int_type)
        kind = r.choice(MARKERS[engine])
        marker = Col(_names(r, COLUMN_NAMES, 1, col_taken)[0], kind[0])
        note = Col(_names(r, COLUMN_NAMES, 1, col_taken)[0], text_type.replace("120", "40"), text=True)
        extras = [Col(n, t.ddl, t.text) for n, t in zip(_names(r, COLUMN_NAMES, r.randint(0, 4), col_taken),
                                                         r.choices(types, k=4), strict=False)]
        return Tbl(name, pk, [pk, note, *extras, marker], marker=marker.name, marker_kind=kind)

    def extra_values(t: Tbl) -> dict[str, tuple[str, Any]]:
        by_ddl = {c.ddl: c for c in types}
        row: dict[str, tuple[str, Any]] = {}
        for col in t.cols:
            if col.ddl in by_ddl and col.name not in (t.email, t.account, t.ref, t.pk.name):
                literal, shown = ("NULL", None) if r.random() < 0.15 else by_ddl[col.ddl].gen(r)
                if by_ddl[col.ddl].gen is _bytes and literal != "NULL":
                    literal = f"'\\x{literal}'" if engine == "postgresql" else f"x'{literal}'"
                row[col.name] = (literal, shown)
        start = t.marker_kind[2]
        row[t.marker] = (_sql(start), int(start) if engine == "mariadb" and isinstance(start, bool) else start)
        return row

    def key(t: Tbl, n: int) -> tuple[str, Any]:
        return (lit(f"K-{n}"), f"K-{n}") if "120" in t.pk.ddl else (str(n), n)

    # system 1: a root with the e-mail and account id, and tables owned through chains of references
    system1: list[Tbl] = []
    for i in range(n_tables):
        t = table(names[i], pk_text=r.random() < 0.3)
        if i == 0:
            t.email, t.account = _names(r, ["E-post", "Email", "mail adresse", "ePost"], 1, {c.name.lower()
                                                                                            for c in t.cols})[0], \
                _names(r, ["Account ID", "konto_id", "userId"], 1, {c.name.lower() for c in t.cols})[0]
            t.cols[1:1] = [Col(t.email, text_type, text=True, length=120), Col(t.account, int_type)]
        else:
            t.parent = i - 1 if i <= depth else r.randrange(i)
            parent = system1[t.parent]
            t.ref = _names(r, ["Forelder", "owner id", "parent", "æøå_id"], 1, {c.name.lower() for c in t.cols})[0]
            t.cols[1:1] = [Col(t.ref, parent.pk.ddl)]
        t.strategy = r.choice(["delete", "mask"])
        system1.append(t)
    for t in reversed(system1):  # a parent erased by delete cannot keep masked children
        if t.parent is not None and t.strategy == "mask":
            system1[t.parent].strategy = "mask"
    counter = iter(range(1, 10_000))
    person_accounts: dict[int, list[int]] = {p: [] for p in range(n_people)}
    for i, t in enumerate(system1):
        if i == 0:
            for person in [*range(n_people), *range(n_people), None, None, -1]:
                if person is not None and person >= 0 and person_accounts[person] and r.random() < 0.5:
                    continue  # most people have one row, some two
                row = {t.pk.name: key(t, next(counter)), **extra_values(t)}
                account = next(account_ids)
                if person is None:
                    email: str | None = None
                elif person == -1:  # only looks like the subject's
                    email = r.choice([f"x{emails[subject]}", f"{emails[subject]}.evil.test"])
                else:
                    email = r.choice([emails[person], emails[person].upper(), f"  {emails[person].title()} "])
                    person_accounts[person].append(account)
                row[t.email] = (lit(email) if email else "NULL", email)
                row[t.account] = (str(account), account)
                t.rows.append(row)
                t.owners.append(person if person is not None and person >= 0 else None)
        else:
            parent = system1[t.parent]  # type: ignore[index]
            for _ in range(r.randint(0, 5)):
                row = {t.pk.name: key(t, next(counter)), **extra_values(t)}
                if parent.rows and r.random() < 0.9:
                    k = r.randrange(len(parent.rows))
                    row[t.ref] = parent.rows[k][parent.pk.name]
                    t.owners.append(parent.owners[k])
                else:
                    row[t.ref] = ("NULL", None)
                    t.owners.append(None)
                t.rows.append(row)
        if t.strategy == "mask":
            t.mask = _masks(r, t, engine)

    # system 2: another database whose table names people by account id (and sometimes e-mail), no foreign key
    t2 = table(names[-1], pk_text=False)
    t2.account = _names(r, ["kunde_nr", "Account", "accountId"], 1, {c.name.lower() for c in t2.cols})[0]
    account_text = r.random() < 0.4
    t2.cols[1:1] = [Col(t2.account, text_type if account_text else int_type)]
    if r.random() < 0.5:
        t2.email = _names(r, ["E-post", "Email"], 1, {c.name.lower() for c in t2.cols})[0]
        t2.cols[2:2] = [Col(t2.email, text_type, text=True, length=120)]
    t2.strategy = r.choice(["delete", "mask"])
    for _ in range(r.randint(2, 7)):
        person = r.choice([*range(n_people), subject, None])
        accounts = person_accounts[person] if person is not None else []
        account = r.choice(accounts) if accounts else next(account_ids)
        row = {t2.pk.name: key(t2, next(counter)), **extra_values(t2)}
        row[t2.account] = (lit(str(account)), str(account)) if account_text else (str(account), account)
        if t2.email:
            email = emails[person] if person is not None and r.random() < 0.5 else None
            row[t2.email] = (lit(email.upper()) if email else "NULL", email.upper() if email else None)
        t2.rows.append(row)
        t2.owners.append(person if accounts else None)
    if t2.strategy == "mask":
        t2.mask = _masks(r, t2, engine)
    return World(engine, emails, subject, system1, [t2], PG_SETUP if engine == "postgresql" else [])


def _masks(r: random.Random, t: Tbl, engine: str) -> dict[str, Any]:
    """Mask methods that fit each column: the e-mail hashed, text redacted or hashed, others nulled or fixed."""
    mask: dict[str, Any] = {}
    if t.email:
        mask[t.email] = "hash"
    for col in t.cols:
        if col.name in (t.pk.name, t.email, t.ref, t.marker) or r.random() < 0.4:
            continue
        if col.text:
            mask[col.name] = r.choice(["redact", "hash", "null"])
        elif col.ddl.lower() in ("int", "integer", "bigint", "smallint") and col.name != t.account:
            mask[col.name] = r.choice(["null", {"fixed": 0}])
        else:
            mask[col.name] = "null"
    if not any(how in ("hash", "redact") for how in mask.values()):  # one column that surely changes
        mask[next(c.name for c in t.cols if c.text and c.name != t.email)] = "redact"
    return mask


def _sql(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    return lit(str(value))


# -- building and reading -----------------------------------------------------------------------------------


def build(url: str, tables: list[Tbl], setup: list[str]) -> sa.Engine:
    engine = sa.create_engine(url)
    q = engine.dialect.identifier_preparer.quote_identifier
    with engine.begin() as conn:
        for statement in setup:
            conn.exec_driver_sql(statement)
        for t in tables:
            columns = [f"{q(c.name)} {c.ddl}" for c in t.cols]
            columns.append(f"PRIMARY KEY ({q(t.pk.name)})")
            if t.parent is not None:
                parent = tables[t.parent]
                columns.append(f"FOREIGN KEY ({q(t.ref)}) REFERENCES {q(parent.name)} ({q(parent.pk.name)})")
            conn.exec_driver_sql(f"CREATE TABLE {q(t.name)} ({', '.join(columns)})")
            for row in t.rows:
                names = [c.name for c in t.cols]
                conn.exec_driver_sql(f"INSERT INTO {q(t.name)} ({', '.join(q(n) for n in names)}) VALUES "
                                     f"({', '.join(row[n][0] for n in names)})")
    return engine


Snapshot = dict[str, dict[Any, dict[str, Any]]]


def snapshot(engine: sa.Engine, tables: list[Tbl]) -> Snapshot:
    """Every row as the driver returns it (no SQLAlchemy type processing), by primary key, with whether each
    column IS NULL (the driver shows a JSON null and an SQL NULL alike)."""
    q = engine.dialect.identifier_preparer.quote_identifier
    out: Snapshot = {}
    with engine.connect() as conn:
        for t in tables:
            nulls = ", ".join(f"CASE WHEN {q(c.name)} IS NULL THEN 1 ELSE 0 END AS {q(f'{c.name} IS NULL')}"
                              for c in t.cols)
            rows = conn.exec_driver_sql(f"SELECT *, {nulls} FROM {q(t.name)}").mappings()
            out[t.name] = {row[t.pk.name]: dict(row) for row in rows}
    return out


def subject_keys(world: World, t: Tbl) -> set[Any]:
    return {row[t.pk.name][1] for row, who in zip(t.rows, t.owners, strict=True) if who == world.subject}


def connector(name: str, url: str, settings: dict[str, Any]) -> SqlConnector:
    ctx = ConnectorContext(env={settings["url_env"]: url}, secret_key=SECRET_KEY, now=lambda: NOW)
    return SqlConnector.from_settings(name, settings, ctx)


def as_json(value: Any) -> str:
    """Type-strict comparison: true is not 1, "1" is not 1, key order does not matter."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, indent=1)


def masked(t: Tbl, key: Any, column: Col, method: Any) -> Any:
    if isinstance(method, dict):
        return method["fixed"]
    if method == "null":
        return None
    if method == "redact":
        return REDACTED
    digest = hmac.new(SECRET_KEY, f"{t.name}:{key}:{column.name}".encode(), hashlib.sha256).hexdigest()[:24]
    value = f"erased-{digest}"
    return value[:column.length] if column.length else value


# -- the test ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("engine_name", ["postgresql", "mariadb"])
def test_a_generated_schema_exports_restricts_and_erases_exactly_the_subjects_rows(
        request: pytest.FixtureRequest, engine_name: str, seed: int) -> None:
    world = generate(seed, engine_name)
    request.node.add_report_section("call", "world", world.describe())
    make: Callable[[], str] = request.getfixturevalue("pg_database" if engine_name == "postgresql"
                                                      else "mariadb_database")
    systems = {"sys1": (world.system1, make()), "sys2": (world.system2, make())}
    engines = {name: build(url, tables, world.setup) for name, (tables, url) in systems.items()}
    connectors = {name: connector(name, url, world.settings(tables, f"DSAR_GEN_{name.upper()}_URL"))
                  for name, (tables, url) in systems.items()}
    try:
        check(world, systems, engines, connectors)
    finally:
        for c in connectors.values():
            c.close()
        for e in engines.values():
            e.dispose()


def check(world: World, systems: dict[str, tuple[list[Tbl], str]], engines: dict[str, sa.Engine],
          connectors: dict[str, SqlConnector]) -> None:
    subject = world.subject
    found = discover(dict(connectors), Identities([Identity(IdentityType.EMAIL, world.emails[subject])]))
    assert not found.errors, found.errors
    root = world.system1[0]
    accounts = {str(row[root.account][1]) for row, who in zip(root.rows, root.owners, strict=True) if who == subject}
    assert set(found.identities.of(IdentityType.ACCOUNT_ID)) == accounts
    identities = found.identities

    # access: exactly the subject's rows, each value in its documented representation
    for name, (tables, _url) in systems.items():
        got: dict[str, dict[str, Any]] = {}
        for record in connectors[name].export(identities):
            assert record.record_id not in got.get(record.entity, {}), f"{record.entity}/{record.record_id} twice"
            got.setdefault(record.entity, {})[record.record_id] = dict(record.fields)
        expected = {
            t.name: {str(row[t.pk.name][1]): {c.name: row[c.name][1] for c in t.cols}
                     for row, who in zip(t.rows, t.owners, strict=True) if who == subject}
            for t in tables}
        assert as_json(got) == as_json({e: rows for e, rows in expected.items() if rows}), f"{name}: export"

    # restriction marks exactly the subject's rows; lifting puts back what was there
    for name, (tables, _url) in systems.items():
        before = snapshot(engines[name], tables)
        receipt = connectors[name].restrict(identities)
        after = snapshot(engines[name], tables)
        for t in tables:
            mine = subject_keys(world, t)
            assert receipt.changed.get(t.name, 0) == len(mine), f"{name}: {t.name} restricted count"
            for key, row in before[t.name].items():
                want = {**row, t.marker: t.marker_kind[3], f"{t.marker} IS NULL": 0} if key in mine else row
                assert after[t.name][key] == want, f"{name}: {t.name} row {key} after restriction"
            assert set(after[t.name]) == set(before[t.name])
        lifted = connectors[name].lift_restriction(identities)
        assert snapshot(engines[name], tables) == before, f"{name}: lifting did not restore the rows"
        assert lifted.changed == receipt.changed

    # erasure: the subject's rows deleted or masked as mapped, every other row unchanged
    for name, (tables, _url) in systems.items():
        before = snapshot(engines[name], tables)
        receipt = connectors[name].erase(identities)
        after = snapshot(engines[name], tables)
        for t in tables:
            mine = subject_keys(world, t)
            assert receipt.changed.get(t.name, 0) == len(mine), f"{name}: {t.name} erased count"
            assert set(after[t.name]) == set(before[t.name]) - (mine if t.strategy == "delete" else set())
            columns = {c.name: c for c in t.cols}
            for key, row in after[t.name].items():
                want = before[t.name][key]
                if key in mine:
                    values = {c: masked(t, key, columns[c], how) for c, how in t.mask.items()}
                    want = {**want, **values, **{f"{c} IS NULL": int(v is None) for c, v in values.items()}}
                assert row == want, f"{name}: {t.name} row {key} after erasure"

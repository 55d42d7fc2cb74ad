"""A labelled schema for `dsar datamap scan` (issue 13): English and Norwegian names, decoys, generated rows.

Each column carries the category a careful person would give it (docs/mapping.md); `score` measures a scan
against the labels: precision and recall of "personal or not" and of the category, and the confusion table.
Decoys a name rule alone gets wrong: `email_template_id`, `ip_allowlist_note`, `phone_model`, a `notes` column
full of e-mail addresses, a `kundenr` that is an account number (8-digit values that are valid phone numbers),
an 11-digit `sporingsnummer` whose values fail the fødselsnummer checksum, a product's `name`, an organisation
number. Values are made up (example.* addresses, checksummed numbers built here).
"""

from __future__ import annotations

import ipaddress
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from stdnum import iban, luhn
from stdnum.no import fodselsnummer, kontonr, orgnr

R = random.Random(13)
FIRST = ["Kari", "Ola", "Ingrid", "Lars", "Nora", "Emma", "Jakob", "Sofie", "John", "Mary", "David", "Sarah",
         "Astrid", "Henrik", "Thea", "Magnus", "Tobias", "Selma", "Ylva", "Oskar"]
LAST = ["Nordmann", "Hansen", "Johansen", "Olsen", "Larsen", "Smith", "Brown", "Berg", "Haugen", "Dahl"]
STREETS = ["Storgata", "Kirkeveien", "Strandgata", "Main Street", "Bygdøy allé", "Thorvald Meyers gate"]
CITIES = ["Oslo", "Bergen", "Trondheim", "Tromsø", "Stavanger", "London"]


def email() -> str:
    return f"{R.choice(FIRST).lower()}.{R.choice(LAST).lower()}{R.randrange(100)}@example.{R.choice(['no', 'com'])}"


def full_name() -> str:
    return f"{R.choice(FIRST)} {R.choice(LAST)}"


def phone() -> str:
    return f"+47 {R.choice('49')}{R.randrange(10)}{R.randrange(10)} {R.randrange(10, 99)} {R.randrange(100, 999)}"


def phone_bare() -> str:
    return f"{R.choice('49')}{R.randrange(1000000, 9999999)}"


def fnr(d_number: bool = False) -> str:
    while True:
        born = date(1940, 1, 1) + timedelta(days=R.randrange(25000))
        day = born.day + (40 if d_number else 0)
        individual = R.randrange(0, 499) if born.year < 2000 else R.randrange(500, 999)
        head = f"{day:02d}{born.month:02d}{born.year % 100:02d}{individual:03d}"
        first = fodselsnummer.calc_check_digit1(head)
        number = head + first + fodselsnummer.calc_check_digit2(head + first)
        if len(number) == 11 and fodselsnummer.is_valid(number):
            return number


def not_fnr() -> str:
    while True:
        number = str(R.randrange(10**10, 10**11))
        if not fodselsnummer.is_valid(number):
            return number


def konto() -> str:
    while True:
        head = f"{R.randrange(10**9, 10**10)}"
        total = sum(int(n) * w for n, w in zip(head, (5, 4, 3, 2, 7, 6, 5, 4, 3, 2), strict=True))
        check = (11 - total % 11) % 11  # mod 11 with the kontonummer weights
        if check < 10:
            number = head + str(check)
            if kontonr.is_valid(number) and not fodselsnummer.is_valid(number):
                return f"{number[:4]}.{number[4:6]}.{number[6:]}"


def org() -> str:
    while True:
        head = f"{R.randrange(10**7, 10**8)}"
        total = sum(int(n) * w for n, w in zip(head, (3, 2, 7, 6, 5, 4, 3, 2), strict=True))
        check = (11 - total % 11) % 11
        number = head + str(check)
        if check < 10 and orgnr.is_valid(number):
            return number


def iban_no() -> str:
    bban = konto().replace(".", "")
    return f"NO{iban.calc_check_digits('NO00' + bban)}{bban}"


def card() -> str:
    head = "4" + "".join(str(R.randrange(10)) for _ in range(14))
    return head + luhn.calc_check_digit(head)


def ipv4() -> str:
    return str(ipaddress.IPv4Address(R.randrange(0x01000000, 0xDF000000)))


def ipv6() -> str:
    return str(ipaddress.IPv6Address(R.randrange(2**125, 2**126)))


def prose_with_pii() -> str:
    return R.choice([f"Kunden ringte fra {phone()} og ba om ny faktura",
                     f"Please send the invoice to {email()} before Friday",
                     f"Ny kontaktperson: {full_name()}, e-post {email()}",
                     "Ticket closed after the customer confirmed the fix",
                     "Server flyttet til nytt datasenter, ingen nedetid"])


def prose_plain() -> str:
    return R.choice(["Standard VPS with 2 vCPU and 4 GB memory", "Backup every night, kept for 14 days",
                     "Managed database, daily snapshots", "Object storage billed per GB stored"])


def when() -> datetime:
    return datetime(2024, 1, 1, tzinfo=UTC) + timedelta(minutes=R.randrange(10**6))


def born() -> date:
    return date(1950, 1, 1) + timedelta(days=R.randrange(20000))


TEXT, SHORT, INT, BIG, DATE, TS, BOOL, NUM = (sa.Text(), sa.String(255), sa.Integer(), sa.BigInteger(), sa.Date(),
                                              sa.DateTime(timezone=True), sa.Boolean(), sa.Numeric(12, 2))
INET = sa.String(45).with_variant(postgresql.INET(), "postgresql")
UUID = sa.Uuid()

Gen = Callable[[], Any]
C = tuple[str, sa.types.TypeEngine[Any], Gen, str]  # column, type, generator, label

# table -> its columns (the first is the primary key)
SCHEMA: dict[str, list[C]] = {
    "customers": [
        ("id", INT, lambda: None, "none"), ("email", SHORT, email, "email"),
        ("first_name", SHORT, lambda: R.choice(FIRST), "name"), ("last_name", SHORT, lambda: R.choice(LAST), "name"),
        ("phone", SHORT, phone, "phone"), ("billing_address", SHORT, lambda: f"{R.choice(STREETS)} {R.randrange(99)}",
                                         "address"),
        ("postal_code", SHORT, lambda: f"{R.randrange(1, 9999):04d}", "address"), ("city", SHORT,
                                                                                 lambda: R.choice(CITIES), "address"),
        ("date_of_birth", DATE, born, "birth_date"), ("created_at", TS, when, "none"),
        ("email_verified_at", TS, when, "none"), ("email_template_id", INT, lambda: R.randrange(1, 9), "none"),
        ("newsletter", BOOL, lambda: R.random() < 0.5, "none"), ("last_login_ip", INET, ipv4, "ip_address"),
        ("notes", TEXT, email, "email"), ("status", SHORT, lambda: R.choice(["active", "closed"]), "none"),
    ],
    "kunder": [
        ("kundenr", INT, lambda: None, "online_id"), ("epost", SHORT, email, "email"),
        ("fornavn", SHORT, lambda: R.choice(FIRST), "name"), ("etternavn", SHORT, lambda: R.choice(LAST), "name"),
        ("telefon", SHORT, phone, "phone"), ("mobil", SHORT, phone_bare, "phone"),
        ("adresse", SHORT, lambda: f"{R.choice(STREETS)} {R.randrange(99)}", "address"),
        ("postnr", SHORT, lambda: f"{R.randrange(1, 9999):04d}", "address"),
        ("poststed", SHORT, lambda: R.choice(CITIES), "address"), ("fodselsnummer", SHORT, fnr, "national_id"),
        ("fodselsdato", DATE, born, "birth_date"), ("kontonummer", SHORT, konto, "bank_account"),
        ("opprettet", TS, when, "none"), ("aktiv", BOOL, lambda: True, "none"),
        ("kundetype", SHORT, lambda: R.choice(["privat", "bedrift"]), "none"),
        ("kommentar", TEXT, prose_with_pii, "free_text"),
    ],
    "kunde_kontakter": [
        ("id", INT, lambda: None, "none"), ("kundenr", INT, lambda: R.randrange(1, 61), "online_id"),
        ("kontaktperson", SHORT, full_name, "name"), ("e_post", SHORT, email, "email"),
        ("mobilnummer", SHORT, phone, "phone"), ("rolle", SHORT, lambda: R.choice(["teknisk", "faktura"]), "none"),
        ("dnummer", SHORT, lambda: fnr(True), "national_id"), ("merknad", TEXT, prose_with_pii, "free_text"),
    ],
    "orders": [
        ("id", INT, lambda: None, "none"), ("customer_ref", INT, lambda: R.randrange(1, 61), "none"),
        ("order_number", SHORT, lambda: f"ORD-{R.randrange(10**6)}", "none"), ("total", NUM,
                                                                            lambda: R.randrange(100, 9999), "none"),
        ("currency", SHORT, lambda: "NOK", "none"), ("ordered_at", TS, when, "none"),
        ("shipping_name", SHORT, full_name, "name"), ("shipping_street", SHORT,
                                                      lambda: f"{R.choice(STREETS)} {R.randrange(99)}", "address"),
        ("shipping_zip", SHORT, lambda: f"{R.randrange(1, 9999):04d}", "address"),
        ("sporingsnummer", SHORT, not_fnr, "none"), ("status", SHORT, lambda: "shipped", "none"),
    ],
    "payments": [
        ("id", INT, lambda: None, "none"), ("order_id", INT, lambda: R.randrange(1, 61), "none"),
        ("card_number", SHORT, card, "payment_card"), ("iban", SHORT, iban_no, "bank_account"),
        ("amount", NUM, lambda: R.randrange(100, 9999), "none"), ("paid_at", TS, when, "none"),
        ("provider", SHORT, lambda: R.choice(["stripe", "vipps"]), "none"),
        ("provider_ref", SHORT, lambda: uuid.UUID(int=R.getrandbits(128)).hex, "none"),
    ],
    "products": [
        ("id", INT, lambda: None, "none"), ("name", SHORT, lambda: R.choice(["Cloud VPS S", "Cloud VPS M", "Backup"]),
                                           "none"),
        ("sku", SHORT, lambda: f"SKU-{R.randrange(10**5)}", "none"), ("price", NUM, lambda: R.randrange(50, 999),
                                                                     "none"),
        ("description", TEXT, prose_plain, "none"), ("active", BOOL, lambda: True, "none"),
        ("email_template_id", INT, lambda: R.randrange(1, 5), "none"),
    ],
    "companies": [
        ("id", INT, lambda: None, "none"), ("company_name", SHORT, lambda: f"{R.choice(LAST)} AS", "none"),
        ("organisasjonsnummer", SHORT, org, "none"), ("vat_number", SHORT, lambda: f"NO{org()}MVA", "none"),
        ("contact_email", SHORT, email, "email"), ("contact_phone", SHORT, phone, "phone"),
        ("firmaadresse", SHORT, lambda: f"{R.choice(STREETS)} {R.randrange(99)}", "address"),
    ],
    "servers": [
        ("id", INT, lambda: None, "none"), ("customer_ref", INT, lambda: R.randrange(1, 61), "none"),
        ("hostname", SHORT, lambda: f"vps{R.randrange(10**4)}.example.net", "none"),
        ("public_ip", INET, ipv4, "ip_address"), ("ipv6_address", SHORT, ipv6, "ip_address"),
        ("ip_allowlist_note", TEXT, lambda: f"office range 10.{R.randrange(255)}.0.0/16 approved by ops",
         "none"), ("plan", SHORT, lambda: R.choice(["s", "m", "l"]), "none"), ("created_at", TS, when, "none"),
        ("mail_server", SHORT, lambda: "smtp.example.net", "none"),
    ],
    "devices": [
        ("id", INT, lambda: None, "none"), ("customer_ref", INT, lambda: R.randrange(1, 61), "none"),
        ("device_id", SHORT, lambda: uuid.UUID(int=R.getrandbits(128)).hex, "online_id"),
        ("phone_model", SHORT, lambda: R.choice(["iPhone 13", "Pixel 8", "Galaxy S23"]), "none"),
        ("os_version", SHORT, lambda: R.choice(["17.1", "14"]), "none"),
        ("user_agent", TEXT, lambda: "Mozilla/5.0 (X11; Linux x86_64) Firefox/121.0", "online_id"),
        ("last_seen", TS, when, "none"),
    ],
    "visits": [
        ("id", INT, lambda: None, "none"), ("visitor_id", SHORT, lambda: f"{R.getrandbits(64):016x}", "online_id"),
        ("ip_address", SHORT, ipv4, "ip_address"), ("page_url", SHORT, lambda: "/pricing", "none"),
        ("referrer", SHORT, lambda: "https://www.example.org/", "none"), ("visited_at", TS, when, "none"),
        ("duration_s", INT, lambda: R.randrange(600), "none"),
    ],
    "tickets": [
        ("id", INT, lambda: None, "none"), ("customer_ref", INT, lambda: R.randrange(1, 61), "none"),
        ("subject", SHORT, lambda: R.choice(["Invoice question", "Server down"]), "none"),
        ("body", TEXT, prose_with_pii, "free_text"), ("requester_email", SHORT, email, "email"),
        ("priority", SHORT, lambda: "normal", "none"), ("opened_at", TS, when, "none"),
        ("email_sent_count", INT, lambda: R.randrange(5), "none"),
    ],
    "henvendelser": [
        ("id", INT, lambda: None, "none"), ("kundenummer", INT, lambda: R.randrange(1, 61), "online_id"),
        ("emne", SHORT, lambda: "Faktura", "none"), ("melding", TEXT, prose_with_pii, "free_text"),
        ("innsender_navn", SHORT, full_name, "name"), ("innsender_tlf", SHORT, phone, "phone"),
        ("mottatt", TS, when, "none"),
    ],
    "employees": [
        ("id", INT, lambda: None, "none"), ("full_name", SHORT, full_name, "name"),
        ("work_email", SHORT, email, "email"), ("personnummer", SHORT, fnr, "national_id"),
        ("bank_account", SHORT, konto, "bank_account"), ("birthday", DATE, born, "birth_date"),
        ("department", SHORT, lambda: "Ops", "none"), ("salary", NUM, lambda: R.randrange(400, 900) * 1000, "none"),
        ("home_address", SHORT, lambda: f"{R.choice(STREETS)} {R.randrange(99)}", "address"),
    ],
    "newsletter": [
        ("id", INT, lambda: None, "none"), ("mailadresse", SHORT, email, "email"),
        ("navn", SHORT, full_name, "name"), ("subscribed_at", TS, when, "none"),
        ("consent_text_version", INT, lambda: 3, "none"), ("source", SHORT, lambda: "footer", "none"),
        ("signup_ip", INET, ipv4, "ip_address"), ("cookie_id", SHORT, lambda: uuid.UUID(int=R.getrandbits(128)).hex,
                                                  "online_id"),
    ],
    "audit_log": [
        ("id", BIG, lambda: None, "none"), ("actor_username", SHORT,
                                            lambda: f"{R.choice(FIRST).lower()}{R.randrange(99)}", "online_id"),
        ("action", SHORT, lambda: R.choice(["login", "logout"]), "none"), ("remote_addr", SHORT, ipv4, "ip_address"),
        ("at", TS, when, "none"), ("details", TEXT, lambda: '{"ok": true}', "none"),
    ],
    "invoices": [
        ("id", INT, lambda: None, "none"), ("customer_ref", INT, lambda: R.randrange(1, 61), "none"),
        ("fakturanr", SHORT, lambda: f"{R.randrange(10**6)}", "none"), ("fakturadato", DATE, born, "none"),
        ("belop", NUM, lambda: R.randrange(100, 9999), "none"), ("mva", NUM, lambda: 25, "none"),
        ("fakturaadresse", SHORT, lambda: f"{R.choice(STREETS)} {R.randrange(99)}", "address"),
        ("betalt", BOOL, lambda: True, "none"),
    ],
    "settings": [
        ("id", INT, lambda: None, "none"), ("key", SHORT, lambda: "theme", "none"),
        ("value", SHORT, lambda: "dark", "none"), ("updated_at", TS, when, "none"),
        ("smtp_host", SHORT, lambda: "smtp.example.net", "none"),
        ("support_phone_format", SHORT, lambda: "+47 ### ## ###", "none"),
    ],
    "chat_messages": [
        ("id", INT, lambda: None, "none"), ("conversation", SHORT, lambda: uuid.UUID(int=R.getrandbits(128)).hex,
                                            "none"),
        ("sender_name", SHORT, full_name, "name"), ("text", TEXT, prose_with_pii, "free_text"),
        ("sent_at", TS, when, "none"), ("channel", SHORT, lambda: "web", "none"),
    ],
}
# the primary key columns get 1..rows; these reference another table's key without a foreign key
INFERRED = {("orders", "customer_ref"): ("customers", "id"), ("servers", "customer_ref"): ("customers", "id")}
FOREIGN_KEYS = {("payments", "order_id"): ("orders", "id"), ("kunde_kontakter", "kundenr"): ("kunder", "kundenr")}


@dataclass
class Labelled:
    table: str
    column: str
    category: str

    @property
    def personal(self) -> bool:
        return self.category != "none"


def labels() -> list[Labelled]:
    return [Labelled(t, c, label) for t, cols in SCHEMA.items() for c, _, _, label in cols]


def build(engine: sa.Engine, rows: int = 60, seed: int = 13) -> list[Labelled]:
    """Create and fill the labelled tables in an empty database."""
    R.seed(seed)
    metadata = sa.MetaData()
    tables = {}
    for name, cols in SCHEMA.items():
        columns = []
        for i, (col, type_, _gen, _label) in enumerate(cols):
            fk = FOREIGN_KEYS.get((name, col))
            args: list[Any] = [sa.ForeignKey(f"{fk[0]}.{fk[1]}")] if fk else []
            columns.append(sa.Column(col, type_, *args, primary_key=i == 0, autoincrement=False))
        tables[name] = sa.Table(name, metadata, *columns)
    metadata.create_all(engine)
    with engine.begin() as conn:
        for name in SCHEMA:  # dict order: parents before children
            cols = SCHEMA[name]
            conn.execute(tables[name].insert(), [
                {col: (i + 1 if j == 0 else gen()) for j, (col, _t, gen, _l) in enumerate(cols)}
                for i in range(rows)])
    return labels()


def score(scan: Any, truth: list[Labelled]) -> dict[str, Any]:
    """Precision and recall of "personal or not" and of the category, and a confusion table (true -> found)."""
    found = {(t.name, c.name): c for t in scan.tables for c in t.columns}
    tp = fp = fn = tn = cat_ok = 0
    confusion: dict[str, dict[str, int]] = {}
    misses = []
    for label in truth:
        col = found[(label.table, label.column)]
        guess = col.category if col.personal else "none"
        confusion.setdefault(label.category, {}).setdefault(guess, 0)
        confusion[label.category][guess] += 1
        if label.personal and col.personal:
            tp += 1
            cat_ok += guess == label.category
        elif col.personal:
            fp += 1
        elif label.personal:
            fn += 1
        else:
            tn += 1
        if guess != label.category:
            misses.append(f"{label.table}.{label.column}: labelled {label.category}, found {guess}")
    predicted, actual = tp + fp, tp + fn
    return {"columns": len(truth), "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "precision": tp / predicted if predicted else 1.0, "recall": tp / actual if actual else 1.0,
            "category_precision": cat_ok / predicted if predicted else 1.0,
            "category_recall": cat_ok / actual if actual else 1.0, "confusion": confusion, "misses": misses}

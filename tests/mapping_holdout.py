"""A second labelled schema for `dsar datamap scan` (issue 13), held out: written after the rules, never used to
tune them. Other names than tests/mapping_fixture.py (English and Norwegian, compounds, camelCase, abbreviations)
and other value shapes (upper-case e-mail, phone numbers written 0047 / (+47) / with dots, "Surname, Given"
names, post boxes, fødselsnummer with a space, IBANs in groups, IPv6 compressed), with decoys: counts, hashes,
templates, a `mobile_app_version`, a `kontonr_faktura` of invoice numbers, a `postnr` of a warehouse, an
11-digit tracking number, a `notat` of internal prose. Labels are what a careful person would give the column.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

import sqlalchemy as sa

from tests import mapping_fixture as f

R = random.Random(1913)
GIVEN = ["Ingeborg", "Sverre", "Marte", "Håkon", "Liv", "Peter", "Emily", "Oliver", "Sigrid", "Trond"]
FAMILY = ["Solberg", "Bakke", "Lund", "Moe", "Jacobsen", "Taylor", "Wilson", "Strand", "Aas", "Eide"]


def upper_email() -> str:
    return f"{R.choice(GIVEN)}.{R.choice(FAMILY)}@Firma{R.randrange(50)}.NO".upper()


def surname_first() -> str:
    return f"{R.choice(FAMILY)}, {R.choice(GIVEN)}"


def phone_0047() -> str:
    return f"0047 {R.choice('49')}{R.randrange(1000000, 9999999)}"


def phone_paren() -> str:
    return f"(+47) {R.choice('49')}{R.randrange(10, 99)} {R.randrange(10, 99)} {R.randrange(100, 999)}"


def phone_dots() -> str:
    return f"{R.choice('49')}{R.randrange(10, 99)}.{R.randrange(10, 99)}.{R.randrange(100, 999)}"


def uk_phone() -> str:
    return f"+44 20 7946 {R.randrange(1000, 9999)}"


def fnr_spaced() -> str:
    n = f.fnr()
    return f"{n[:6]} {n[6:]}"


def iban_grouped() -> str:
    n = f.iban_no()
    return " ".join(n[i:i + 4] for i in range(0, len(n), 4))


def postbox() -> str:
    return f"Postboks {R.randrange(1, 9999)} {R.choice(['Sentrum', 'Majorstuen', 'Bryn'])}"


def ipv6_short() -> str:
    return f"2001:db8::{R.randrange(1, 0xffff):x}"


def tracking11() -> str:
    return f.not_fnr()


def internal_prose() -> str:
    return R.choice(["Lageret flyttet til ny hall i mars", "Rebuilt the index after the upgrade last week",
                     "Ingen endring i rutinene for varemottak", "Quarterly stock count done, no deviations"])


def chat_prose() -> str:
    return R.choice([f"Hei, jeg heter {R.choice(GIVEN)} og nås på {phone_paren()}",
                     f"My new address for invoices is {f.email()} thanks",
                     f"Ring meg på {phone_0047()} etter klokken fire",
                     "Thanks, that solved it"])


S, T, INT, D, TS, B, N = f.SHORT, f.TEXT, f.INT, f.DATE, f.TS, f.BOOL, f.NUM
C = f.C

SCHEMA: dict[str, list[C]] = {
    "medlemmer": [
        ("medlemsnr", INT, lambda: None, "online_id"), ("epostadresse_privat", S, f.email, "email"),
        ("fulltNavn", S, f.full_name, "name"), ("mobiltelefon", S, phone_0047, "phone"),
        ("hjemmeadresse", S, lambda: f"{R.choice(f.STREETS)} {R.randrange(99)}", "address"),
        ("postboks", S, postbox, "address"), ("fnr", S, fnr_spaced, "national_id"),
        ("foedt", D, f.born, "birth_date"), ("innmeldt", TS, f.when, "none"),
        ("antall_innlogginger", INT, lambda: R.randrange(300), "none"),
        ("passord_hash", S, lambda: uuid.UUID(int=R.getrandbits(128)).hex * 2, "none"),
        ("medlemstype", S, lambda: R.choice(["gull", "solv"]), "none"),
    ],
    "leverandorer": [
        ("id", INT, lambda: None, "none"), ("leverandornavn", S, lambda: f"{R.choice(FAMILY)} Engros AS", "none"),
        ("orgnr", S, f.org, "none"), ("kontaktperson_navn", S, f.full_name, "name"),
        ("kontaktperson_epost", S, f.email, "email"), ("sentralbord", S, phone_dots, "phone"),
        ("betalingsbetingelser", S, lambda: "30 dager netto", "none"),
    ],
    "lager": [
        ("id", INT, lambda: None, "none"), ("lagernavn", S, lambda: R.choice(["Alnabru", "Berg"]), "none"),
        ("postnr", S, lambda: f"{R.randrange(1, 9999):04d}", "none"),  # a warehouse's post code: not a person's
        ("notat", T, internal_prose, "none"), ("kapasitet_paller", INT, lambda: R.randrange(5000), "none"),
    ],
    "subscribers": [
        ("subscriberId", INT, lambda: None, "none"), ("EmailAddress", S, upper_email, "email"),
        ("DisplayName", S, surname_first, "name"), ("MobileNo", S, uk_phone, "phone"),
        ("SignupIp", S, ipv6_short, "ip_address"), ("OptInDate", TS, f.when, "none"),
        ("EmailOpenCount", INT, lambda: R.randrange(40), "none"), ("UnsubscribeToken", S,
                                                                 lambda: uuid.uuid4().hex, "none"),
        ("PreferredLanguage", S, lambda: R.choice(["nb", "en"]), "none"),
    ],
    "shipments": [
        ("id", INT, lambda: None, "none"), ("recipient", S, f.full_name, "name"),
        ("deliveryAddress", S, lambda: f"{R.choice(f.STREETS)} {R.randrange(99)}", "address"),
        ("deliveryPostcode", S, lambda: f"{R.randrange(1, 9999):04d}", "address"),
        ("deliveryTown", S, lambda: R.choice(f.CITIES), "address"), ("tracking_no", S, tracking11, "none"),
        ("carrier", S, lambda: R.choice(["Posten", "Bring"]), "none"), ("weight_kg", N, lambda: R.randrange(1, 30),
                                                                           "none"),
        ("shipped", TS, f.when, "none"),
    ],
    "refunds": [
        ("id", INT, lambda: None, "none"), ("payee_iban", S, iban_grouped, "bank_account"),
        ("kontonr_utbetaling", S, f.konto, "bank_account"), ("amount", N, lambda: R.randrange(10, 999), "none"),
        ("kontonr_faktura", S, lambda: f"F{R.randrange(10**6)}", "none"),  # an invoice number, not an account
        ("reason_code", S, lambda: R.choice(["R1", "R2"]), "none"), ("refunded_at", TS, f.when, "none"),
    ],
    "app_sessions": [
        ("id", f.BIG, lambda: None, "none"), ("member_no", INT, lambda: R.randrange(1, 61), "online_id"),
        ("client_ip_address", S, f.ipv4, "ip_address"), ("mobile_app_version", S,
                                                         lambda: R.choice(["3.2.1", "3.3.0"]), "none"),
        ("device_fingerprint", S, lambda: uuid.UUID(int=R.getrandbits(128)).hex, "online_id"),
        ("started", TS, f.when, "none"), ("duration_ms", INT, lambda: R.randrange(10**6), "none"),
    ],
    "support_chat": [
        ("id", INT, lambda: None, "none"), ("henvendelse_tekst", T, chat_prose, "free_text"),
        ("agent_alias", S, lambda: R.choice(["agent7", "agent9"]), "none"),
        ("customer_email_addr", S, f.email, "email"), ("opened", TS, f.when, "none"),
        ("chat_template_id", INT, lambda: R.randrange(1, 6), "none"), ("csat_score", INT, lambda: R.randrange(1, 6),
                                                                    "none"),
    ],
    "ansatte": [
        ("ansattnr", INT, lambda: None, "none"), ("etternavn", S, lambda: R.choice(FAMILY), "name"),
        ("fornavn", S, lambda: R.choice(GIVEN), "name"), ("personnr", S, f.fnr, "national_id"),
        ("lonnskonto", S, f.konto, "bank_account"), ("fodselsdato", D, f.born, "birth_date"),
        ("stilling", S, lambda: R.choice(["lagerarbeider", "sjafor"]), "none"),
        ("privat_tlf", S, f.phone, "phone"), ("bosted_kommune", S, lambda: R.choice(f.CITIES), "address"),
    ],
    "card_tokens": [
        ("id", INT, lambda: None, "none"), ("masked_pan", S, lambda: f"**** **** **** {R.randrange(1000, 9999)}",
                                          "none"),  # a masked card number: not the card (decoy)
        ("full_card_no", S, f.card, "payment_card"), ("card_brand", S, lambda: "VISA", "none"),
        ("expires", S, lambda: f"{R.randrange(1, 12):02d}/{R.randrange(26, 31)}", "none"),
    ],
}
HOLDOUT_INFERRED: dict[tuple[str, str], tuple[str, str]] = {}


def labels() -> list[f.Labelled]:
    return [f.Labelled(t, c, label) for t, cols in SCHEMA.items() for c, _, _, label in cols]


def build(engine: sa.Engine, rows: int = 60, seed: int = 1913) -> list[f.Labelled]:
    """Create and fill the held-out tables in an empty database (tests.mapping_fixture.build's way)."""
    R.seed(seed)
    f.R.seed(seed)
    metadata = sa.MetaData()
    tables = {name: sa.Table(name, metadata, *(sa.Column(c, t, primary_key=i == 0, autoincrement=False)
                                               for i, (c, t, _g, _l) in enumerate(cols)))
              for name, cols in SCHEMA.items()}
    metadata.create_all(engine)
    with engine.begin() as conn:
        for name, cols in SCHEMA.items():
            conn.execute(tables[name].insert(), [
                {c: (i + 1 if j == 0 else g()) for j, (c, _t, g, _l) in enumerate(cols)} for i in range(rows)])
    return labels()


def score(scan: Any) -> dict[str, Any]:
    return f.score(scan, labels())

"""Each value detector of `dsar datamap scan` on its own cases, and the name rules on the decoys (issue 13)."""

from __future__ import annotations

import pytest

from discovery.mapping import detectors as d
from discovery.mapping.classify import classify
from discovery.mapping.names import hint


@pytest.mark.parametrize(("value", "ok"), [
    ("15108695088", True),      # fødselsnummer, both mod-11 digits right
    ("151086 95088", True),     # written with a space
    ("55108695096", False),     # D-number day, wrong check digits
    ("15108695089", False),     # last check digit wrong
    ("15138695088", False),     # month 13
    ("1510869508", False),      # 10 digits
    ("abcdefghijk", False),
])
def test_fodselsnummer(value: str, ok: bool) -> None:
    assert d.is_fodselsnummer(value) is ok


def test_d_number_is_a_fodselsnummer() -> None:
    assert d.is_fodselsnummer("41018036736")  # day + 40


@pytest.mark.parametrize(("value", "ok"), [
    ("86011117947", True), ("8601.11.17947", True), ("8601 11 17947", True), ("86011117948", False),
    ("8601111794", False)])
def test_kontonummer(value: str, ok: bool) -> None:
    assert d.is_kontonummer(value) is ok


@pytest.mark.parametrize(("value", "ok"), [("988077917", True), ("988 077 917", True), ("988077918", False),
                                           ("98807791", False)])
def test_organisation_number(value: str, ok: bool) -> None:
    assert d.is_orgnr(value) is ok


@pytest.mark.parametrize(("value", "ok"), [
    ("NO9386011117947", True), ("NO93 8601 1117 947", True), ("GB82WEST12345698765432", True),
    ("NO9386011117948", False), ("86011117947", False)])
def test_iban(value: str, ok: bool) -> None:
    assert d.is_iban(value) is ok


@pytest.mark.parametrize(("value", "ok"), [
    ("4111111111111111", True), ("4111 1111 1111 1111", True), ("5555-5555-5555-4444", True),
    ("4111111111111112", False),  # Luhn fails
    ("1111111111111117", False),  # no issuer starts with 1
    ("411111111111", False)])     # too short
def test_card_numbers_by_luhn(value: str, ok: bool) -> None:
    assert d.is_card(value) is ok


@pytest.mark.parametrize(("value", "ok", "formatted"), [
    ("+47 912 34 567", True, True), ("91234567", True, False), ("22 22 22 22", True, True),
    ("+44 20 7946 0958", True, True), ("004791234567", True, True), ("12345678", False, False),
    ("+47 123", False, False), ("phone", False, False)])
def test_phone_numbers_norwegian_and_international(value: str, ok: bool, formatted: bool) -> None:
    assert d.is_phone(value) is ok
    assert d.is_formatted_phone(value) is formatted


@pytest.mark.parametrize(("value", "ok"), [
    ("192.0.2.10", True), ("2001:db8::1", True), ("::ffff:192.0.2.1", True), ("10.0.0.0/8", False),
    ("999.1.1.1", False), ("1.2.3", False)])
def test_ip_addresses(value: str, ok: bool) -> None:
    assert d.is_ip(value) is ok


@pytest.mark.parametrize(("value", "ok"), [
    ("kari.nordmann@example.no", True), ("o'brien+news@example.co.uk", True), ("kari@localhost", False),
    ("not an address", False), ("a@b@example.com", False)])
def test_email(value: str, ok: bool) -> None:
    assert d.is_email(value) is ok


def test_embedded_in_free_text() -> None:
    assert d.embedded("Ring meg på 912 34 567 etter kl 16") == {"phone"}
    assert d.embedded("send it to kari@example.no please") == {"email"}
    assert d.embedded("fnr 15108695088 oppgitt i telefonen") == {"fodselsnummer"}
    assert d.embedded("office range 10.0.0.0/8 approved by ops") == set()


def test_text_never_reads_bytes_or_booleans() -> None:
    assert d.text(b"kari@example.no") is None and d.text(True) is None and d.text(12) == "12"


@pytest.mark.parametrize(("column", "table", "category"), [
    ("email_template_id", "", "none"), ("phone_model", "", "none"), ("email_verified_at", "", "none"),
    ("company_name", "", "none"), ("name", "products", "none"), ("mail_server", "", "none"),
    ("epost", "", "email"), ("E-post", "Kunder", "email"), ("fornavn", "", "name"), ("etternavn", "", "name"),
    ("telefon", "", "phone"), ("mobil", "", "phone"), ("adresse", "", "address"), ("postnr", "", "address"),
    ("fodselsnummer", "", "national_id"), ("personnummer", "", "national_id"), ("kontonummer", "", "bank_account"),
    ("fakturaadresse", "", "address"), ("firmanavn", "", "none"), ("firstName", "", "name"),
])
def test_name_rules(column: str, table: str, category: str) -> None:
    found = hint(column, table)
    assert found is not None and found.category == category


def test_values_beat_a_misleading_name() -> None:
    emails = [f"user{i}@example.com" for i in range(50)]
    assert classify("notes", "customers", "text", emails).category == "email"
    eleven = [str(10**10 + i * 7919) for i in range(50)]  # 11 digits, (almost all) failing the check
    assert classify("sporingsnummer", "pakker", "text", eleven).category == "none"
    accounts = [str(91234560 + i) for i in range(50)]  # valid Norwegian mobile numbers, but account numbers
    assert classify("kundenr", "kunder", "text", accounts).category == "online_id"
    allow = [f"office range 10.{i}.0.0/16 approved by ops" for i in range(50)]
    assert not classify("ip_allowlist_note", "servers", "text", allow).personal()


def test_evidence_holds_counts_not_values() -> None:
    found = classify("epost", "kunder", "text", ["kari@example.no"] * 10)
    assert found.personal() and not any("kari" in e for e in found.evidence)

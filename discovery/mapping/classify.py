"""A column's category and confidence, from its name, its type and a sample of its values.

The name rules (names.py) and the value detectors (detectors.py) each give a category with a score; when both
speak, agreeing raises the confidence and disagreeing lets the stronger win (a `notes` column whose values are
all e-mail addresses is an e-mail column; an `kundenr` of bare 8-digit numbers stays an account number even
though such numbers are valid Norwegian phone numbers). A column is personal when its category is one and the
confidence reaches the threshold. Evidence is words and counts, never a value.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from discovery.mapping import THRESHOLD as THRESHOLD
from discovery.mapping import detectors as d
from discovery.mapping import names as n

MIN_VALUES = 3  # fewer sampled values than this: the name decides alone
# the type families (connectors.sql_values.kind) whose values the detectors read
TEXTUAL = frozenset({"text", "enum", "other"})
NUMERIC = frozenset({"int", "numeric"})
NEEDS_TEXT = frozenset({n.EMAIL, n.NAME, n.FREE_TEXT})
# categories a value detector can confirm; a sample of such a column matching none of it weakens the name
DETECTABLE = {n.EMAIL: "email", n.PHONE: "phone", n.IP: "ip", n.NATIONAL_ID: "fodselsnummer",
              n.PAYMENT_CARD: "card", n.BANK_ACCOUNT: "bank"}
_WHAT = {"email": "e-mail syntax", "fodselsnummer": "pass the fødselsnummer/D-number check (mod 11)",
         "iban": "valid IBAN (mod 97)", "card": "card numbers passing Luhn", "ip": "IPv4/IPv6 addresses",
         "kontonummer": "pass the kontonummer check (mod 11)", "orgnr": "pass the organisation number check (mod 11)",
         "phone": "valid phone numbers", "bank": "pass the IBAN or kontonummer check",
         "formatted_phone": "written as phone numbers",
         "eleven_digits": "11-digit numbers", "names": "start with a common given name",
         "embedded": "free text holding an e-mail, phone or identity number"}


@dataclass
class Classification:
    category: str
    confidence: float
    evidence: list[str] = field(default_factory=list)
    sampled: int = 0  # non-empty values looked at

    def personal(self, threshold: float = THRESHOLD) -> bool:
        return self.category != n.NONE and self.confidence >= threshold


def _share(found: int, total: int, what: str) -> str:
    return f"values: {found}/{total} {_WHAT[what]}"


def value_hint(family: str, values: Iterable[Any]) -> tuple[str | None, float, list[str], int]:
    """(category or None, score, evidence, values looked at) from the sampled values alone."""
    if family in ("inet", "cidr"):
        return n.IP, 0.9, ["type: inet (an IP address column)"], 0
    if family == "mac":
        return n.ONLINE_ID, 0.8, ["type: macaddr (a device's hardware address)"], 0
    if family not in TEXTUAL | NUMERIC:
        return None, 0.0, [], 0
    texts = [t for v in values if (t := d.text(v)) is not None]
    total = len(texts)
    if total < MIN_VALUES:
        return None, 0.0, [f"values: {total} non-empty sampled"] if total else ["values: none sampled"], total
    numeric = family in NUMERIC
    wanted = ("fodselsnummer", "kontonummer", "orgnr", "card", "eleven_digits") if numeric else tuple(d.DETECTORS)
    counts = {name: sum(1 for t in texts if d.DETECTORS[name](t)) for name in wanted}
    share = {k: v / total for k, v in counts.items()}
    evidence: list[str] = []

    def seen(name: str) -> float:
        evidence.append(_share(counts[name], total, name))
        return share[name]

    for name, category, base in (("email", n.EMAIL, 0.55), ("fodselsnummer", n.NATIONAL_ID, 0.55),
                                 ("iban", n.BANK_ACCOUNT, 0.55), ("card", n.PAYMENT_CARD, 0.5), ("ip", n.IP, 0.55)):
        if share.get(name, 0) >= 0.6:
            return category, base + 0.4 * seen(name), evidence, total
    if share.get("kontonummer", 0) >= 0.6:
        return n.BANK_ACCOUNT, 0.45 + 0.35 * seen("kontonummer"), evidence, total
    if share.get("orgnr", 0) >= 0.6:
        return n.NONE, 0.5 + 0.3 * seen("orgnr"), [*evidence, "an organisation's number, not a person's"], total
    if share.get("formatted_phone", 0) >= 0.6:
        return n.PHONE, 0.55 + 0.4 * seen("formatted_phone"), evidence, total
    if share.get("phone", 0) >= 0.6:
        return n.PHONE, 0.4 + 0.3 * seen("phone"), [*evidence, "bare digits: could be any number"], total
    if share.get("eleven_digits", 0) >= 0.8:
        seen("eleven_digits")
        seen("fodselsnummer")
        return n.NONE, 0.6, evidence, total
    if numeric:
        return None, 0.0, evidence, total
    people = sum(1 for t in texts if n.looks_like_person_name(t)) / total
    if people >= 0.3:
        evidence.append(f"values: {round(people * total)}/{total} {_WHAT['names']}")
        return n.NAME, 0.5 + 0.45 * min(1.0, people / 0.6), evidence, total
    prose = [t for t in texts if d.is_prose(t) or "@" in t]
    if prose:
        holding = sum(1 for t in prose if d.embedded(t))
        if holding and holding / total >= 0.05:
            evidence.append(f"values: {holding}/{total} {_WHAT['embedded']}")
            return n.FREE_TEXT, 0.55 + 0.4 * min(1.0, holding / total / 0.3), evidence, total
    return None, 0.0, evidence, total


def classify(column: str, table: str, family: str, values: Iterable[Any] = (), *,
             threshold: float = THRESHOLD) -> Classification:
    """The column's category and confidence. `family` is connectors.sql_values.kind of its type."""
    del threshold  # the caller applies it (Classification.personal); kept for a symmetric signature
    if family == "bool":
        return Classification(n.NONE, 0.95, ["type: boolean"])
    values = list(values)
    name = n.hint(column, table)
    v_cat, v_score, v_evidence, total = value_hint(family, values)
    evidence = ([name.evidence] if name else []) + v_evidence

    def out(category: str, confidence: float) -> Classification:
        if category in NEEDS_TEXT and family not in TEXTUAL:
            return Classification(n.NONE, 0.7, [*evidence, f"type: {family}, not text"], total)
        if category == n.BIRTH_DATE and family not in ("date", "datetime", "text", "int"):
            return Classification(n.NONE, 0.6, [*evidence, f"type: {family}, not a date"], total)
        return Classification(category, round(min(confidence, 0.99), 2), evidence, total)

    if name is None:
        if v_cat is None:
            return Classification(n.NONE, 0.9 if total >= MIN_VALUES or family not in TEXTUAL else 0.75,
                                  evidence or ["no name rule or value detector matched"], total)
        return out(v_cat, v_score)
    if name.category == n.NONE:
        if v_cat not in (None, n.NONE) and v_score >= 0.9:
            return out(v_cat, v_score)  # the name misleads: the values are plainly personal
        return out(n.NONE, max(name.weight, v_score))
    if v_cat is None:
        weight = name.weight
        detector = DETECTABLE.get(name.category)
        if detector and total >= 10 and family in TEXTUAL:
            check = d.is_bank_account if detector == "bank" else d.DETECTORS[detector]
            hits = sum(1 for v in values if (t := d.text(v)) is not None and check(t))
            evidence.append(_share(hits, total, detector))
            if hits == 0:
                weight -= 0.1  # the name says so, the values do not: still proposed, with less confidence
        return out(name.category, weight)
    if v_cat == name.category:
        return out(v_cat, 1 - (1 - name.weight) * (1 - v_score))
    if v_cat == n.NONE:
        # 11-digit numbers failing the check under a name saying identity number: keep the name, less sure
        return out(name.category, name.weight - 0.15) if name.weight >= 0.75 else out(n.NONE, v_score)
    if name.category == n.FREE_TEXT and v_cat in (n.EMAIL, n.PHONE, n.NATIONAL_ID, n.NAME):
        return out(v_cat, max(v_score, 0.7))  # `notes` full of e-mail addresses: the values say what it is
    if name.category == n.BANK_ACCOUNT and v_cat == n.NATIONAL_ID and v_score < 0.9:
        return out(name.category, name.weight)  # a valid fødselsnummer also passes the kontonummer check
    return out(v_cat, v_score) if v_score > name.weight else out(name.category, name.weight)

"""Value detectors: does one sampled value look like an e-mail, a phone number, a Norwegian identity number ...?

Each detector takes one value (any type the driver returns) and answers True or False; none keeps or logs the
value. Checksums do the work where one exists (fødselsnummer and D-number, kontonummer and organisation number
by mod 11 through python-stdnum, IBAN by mod 97, card numbers by Luhn), so an 11-digit order number is not taken
for a person's identity number. `embedded` finds the same things inside free text.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

# phonenumbers and python-stdnum (~4 MB and 150 modules, most of it number metadata) are imported by the detectors
# that use them, when a scan first asks: `dsar check` and `dsar serve` import this module through
# discovery.mapping.diff and the CLI without ever looking at a sampled value.

_EMAIL = re.compile(r"^[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}$")
_EMAIL_IN = re.compile(r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_PHONE_SHAPE = re.compile(r"^\+?[0-9][0-9 ().-]{6,18}[0-9]$")
# in free text: an international number, or a Norwegian 8-digit one (often written 2+2+2+2 or 3+2+3)
_PHONE_IN = re.compile(r"(?<![\w+])(?:\+|00)[1-9][0-9 ()-]{6,16}[0-9](?!\w)|(?<!\w)[2-9]\d(?: ?\d){6}(?!\w)")
_DIGITS_IN = re.compile(r"(?<!\d)\d{6} ?\d{5}(?!\d)")
_SEPARATORS = re.compile(r"[\s.-]")
_CARD_SHAPE = re.compile(r"^[0-9][0-9 -]{11,21}[0-9]$")


def text(value: Any) -> str | None:
    """The value as text when it could hold what the detectors look for (strings, integers); else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return None
    if isinstance(value, str):
        return value.strip() or None
    return None


def digits(value: str) -> str:
    return _SEPARATORS.sub("", value)


def is_email(value: str) -> bool:
    return len(value) <= 254 and bool(_EMAIL.match(value))


def is_phone(value: str) -> bool:
    """A valid number for its country (Norway when no +country code is given)."""
    if not _PHONE_SHAPE.match(value):
        return False
    import phonenumbers

    try:
        number = phonenumbers.parse(value, "NO")
    except phonenumbers.NumberParseException:
        return False
    return bool(phonenumbers.is_valid_number(number))


def is_formatted_phone(value: str) -> bool:
    """A phone number written as one (a + country code, or separators): bare digits might be any id."""
    return is_phone(value) and (value.startswith(("+", "00")) or not value.isdigit())


def is_fodselsnummer(value: str) -> bool:
    """Norwegian fødselsnummer or D-number (python-stdnum: birth date and both mod-11 check digits)."""
    from stdnum.no import fodselsnummer

    number = digits(value)
    return len(number) == 11 and number.isdigit() and bool(fodselsnummer.is_valid(number))


def is_kontonummer(value: str) -> bool:
    """Norwegian bank account number (11 digits, mod 11). Every valid fødselsnummer passes this check too, so
    the classifier asks is_fodselsnummer first."""
    from stdnum.no import kontonr

    number = digits(value)
    return len(number) == 11 and number.isdigit() and bool(kontonr.is_valid(number))


def is_orgnr(value: str) -> bool:
    """Norwegian organisation number (9 digits, mod 11): a company's, not a person's."""
    from stdnum.no import orgnr

    number = digits(value)
    return len(number) == 9 and number.isdigit() and bool(orgnr.is_valid(number))


def is_iban(value: str) -> bool:
    from stdnum import iban

    compact = value.replace(" ", "")
    return 15 <= len(compact) <= 34 and compact[:2].isalpha() and bool(iban.is_valid(compact))


def is_card(value: str) -> bool:
    """A payment card number: 13 to 19 digits, an issuer's first digit (2-6), Luhn check."""
    if not _CARD_SHAPE.match(value):
        return False
    from stdnum import luhn

    number = value.replace(" ", "").replace("-", "")
    return 13 <= len(number) <= 19 and number[0] in "23456" and bool(luhn.is_valid(number))


def is_ip(value: str) -> bool:
    """One host address, IPv4 or IPv6 (a network such as 10.0.0.0/8 is not a person's)."""
    if "/" in value or len(value) > 45:
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def is_bank_account(value: str) -> bool:
    """An IBAN or a Norwegian kontonummer (what a column named for a bank account should hold)."""
    return is_iban(value) or is_kontonummer(value)


def is_eleven_digits(value: str) -> bool:
    number = digits(value)
    return len(number) == 11 and number.isdigit()


# name -> detector, in the order the classifier prefers them (the most specific first)
DETECTORS: dict[str, Callable[[str], bool]] = {
    "email": is_email,
    "fodselsnummer": is_fodselsnummer,
    "iban": is_iban,
    "card": is_card,
    "ip": is_ip,
    "kontonummer": is_kontonummer,
    "orgnr": is_orgnr,
    "phone": is_phone,
    "formatted_phone": is_formatted_phone,
    "eleven_digits": is_eleven_digits,
}


def embedded(value: str) -> set[str]:
    """What free text holds: 'email', 'phone', 'fodselsnummer' found inside it (an empty set when nothing)."""
    found: set[str] = set()
    if "@" in value and _EMAIL_IN.search(value):
        found.add("email")
    for match in _PHONE_IN.finditer(value):
        if is_phone(match.group(0).strip()):
            found.add("phone")
            break
    for match in _DIGITS_IN.finditer(value):
        if is_fodselsnummer(match.group(0)):
            found.add("fodselsnummer")
            break
    return found


def is_prose(value: str) -> bool:
    """Text a person wrote rather than a code: several words."""
    return len(value) >= 20 and value.count(" ") >= 3

"""The languages dsar speaks to people in, and how their texts and numbers are written.

Texts are gettext messages (msgid = the English text) in `locales/<code>/LC_MESSAGES/dsar.po`, compiled
in memory with Babel when first used: the .po files are the only form kept in the repository and the wheel,
so a fresh clone, `make demo` and an installed package need no build step. `make messages` re-extracts the
messages from the source and updates every catalogue; tests/unit/test_i18n.py fails on a message missing,
empty or fuzzy in any language.

Adding a language: add its code to LanguageCode and its Babel locale to LANGUAGES, run
`make messages NEW=<code>`, translate
the new .po file, and give the data map's texts a `<code>:` entry.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Babel is imported where a text is translated or a date or number written, not here: the data map's validation
# imports this module (LANGUAGES, Text) in every process, most of which never write to a person (the API, a worker
# until it builds a bundle page).
if TYPE_CHECKING:
    from babel import Locale
    from babel.support import Translations


# code (what requests, settings and the data map say) -> Babel locale (how dates and numbers are written).
# en_GB rather than en_US: "30 November 2026", the order the Norwegian texts use too.
class LanguageCode(StrEnum):
    EN = "en"
    NB = "nb"  # Norwegian bokmål


LANGUAGES: dict[str, str] = {LanguageCode.EN.value: "en_GB", LanguageCode.NB.value: "nb_NO"}
SOURCE = "en"  # the language of the msgids, and the last resort for a data-map text
DOMAIN = "dsar"
LOCALES = Path(__file__).resolve().parent / "locales"
# what people and helpdesks write for these languages
_ALIASES = {"no": "nb", "nob": "nb", "norsk": "nb", "bokmal": "nb", "bokmål": "nb", "norwegian": "nb",
            "eng": "en", "english": "en"}

# A data-map text: one string for every language, or one per language code ({en: ..., nb: ...}).
Text = str | dict[str, str]


class UnknownLanguage(ValueError):
    pass


def language_code(value: str) -> str:
    """'nb', 'NB', 'nb-NO', 'nb_NO', 'no', 'Norsk' -> 'nb'; an unknown language raises UnknownLanguage."""
    key = value.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in LANGUAGES:
        key = _ALIASES.get(key.split("_")[0], key.split("_")[0])
    if key not in LANGUAGES:
        raise UnknownLanguage(f"unknown language '{value[:20]}' (one of: {', '.join(LANGUAGES)})")
    return key


def catalogue_path(code: str) -> Path:
    return LOCALES / code / "LC_MESSAGES" / f"{DOMAIN}.po"


@functools.cache
def _translations(code: str) -> Translations:
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po
    from babel.support import Translations

    with catalogue_path(code).open("rb") as po:
        catalog = read_po(po, locale=LANGUAGES[code], domain=DOMAIN)
    mo = io.BytesIO()
    write_mo(mo, catalog, use_fuzzy=False)  # a fuzzy entry is a guess: the English text shows instead
    mo.seek(0)
    return Translations(mo, domain=DOMAIN)


@dataclass(frozen=True)
class Language:
    """One language's texts and formats; `language(code)` gives the shared instance."""

    code: str

    @property
    def locale(self) -> str:
        return LANGUAGES[self.code]

    @property
    def babel(self) -> Locale:
        """Babel's Locale, parsed once: given as a string, every format call parses it again."""
        return _babel_locale(self.locale)

    def gettext(self, message: str) -> str:
        return _translations(self.code).gettext(message)

    def known(self, text: str) -> str:
        """Free text from elsewhere (a reason the planner wrote): translated when the catalogue has it, else as is."""
        return _translations(self.code).gettext(text) if text else ""

    def ngettext(self, singular: str, plural: str, n: int) -> str:
        return _translations(self.code).ngettext(singular, plural, n)

    def text(self, value: Text | None) -> str:
        """A data-map text in this language, else in the source language, else the first one given."""
        if value is None:
            return ""
        if isinstance(value, str):
            return value
        return value.get(self.code) or value.get(SOURCE) or next(iter(value.values()), "")

    def date(self, value: date | str | None) -> str:
        """30. november 2026 / 30 November 2026; '' for nothing; text that is no date is shown as it is."""
        moment = _moment(value)
        if moment is None:
            return "" if value is None else str(value)
        from babel.dates import format_date

        return format_date(moment, "long", locale=self.babel)

    def datetime(self, value: datetime | str | None) -> str:
        """A moment in UTC: 2. mai 2024 kl. 12:00 UTC / 2 May 2024 at 12:00 UTC."""
        moment = _moment(value)
        if not isinstance(moment, datetime):
            return self.date(moment) if moment else ("" if value is None else str(value))
        moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
        from babel.dates import format_date, format_time

        return self.gettext("{date} at {time} UTC").format(
            date=format_date(moment, "long", locale=self.babel),
            time=format_time(moment, "HH:mm", tzinfo=UTC, locale=self.babel))

    def number(self, value: int | float | Decimal | None) -> str:
        """1 234 / 1,234."""
        if value is None:
            return ""
        if type(value) is int:  # counts: a bundle page writes the same few dozen of them for every request
            return _integer(self.locale, value)
        from babel.numbers import format_decimal

        return format_decimal(value, locale=self.babel)

    def money(self, amount: int | float | Decimal, currency: str = "NOK") -> str:
        """1 234,50 kr / NOK 1,234.50."""
        from babel.numbers import format_currency

        return format_currency(amount, currency, locale=self.babel)


@functools.cache
def _babel_locale(locale: str) -> Locale:
    from babel import Locale

    return Locale.parse(locale)


@functools.lru_cache(maxsize=4096)
def _integer(locale: str, value: int) -> str:
    from babel.numbers import format_decimal

    return format_decimal(value, locale=_babel_locale(locale))


@functools.cache
def language(code: str) -> Language:
    return Language(language_code(code))


def missing_texts(value: Any, code: str) -> bool:
    """True when a per-language data-map text has nothing for `code` (a plain string counts for every language)."""
    return isinstance(value, Mapping) and not value.get(code)


def _moment(value: date | str | None) -> date | None:
    if isinstance(value, date):
        return value
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None

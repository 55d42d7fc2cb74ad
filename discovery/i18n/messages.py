"""The catalogue's messages, extracted from the source with Babel's extractor: what `make messages` writes
into every .po file and what tests/unit/test_i18n.py checks each language against.

A translatable text is a string literal in a call of one of KEYWORDS; `N_` marks texts defined in one
place (a table of statuses, a planner reason) and translated where they are shown.
"""

from __future__ import annotations

from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po, write_po

from discovery.i18n.languages import DOMAIN, LANGUAGES, SOURCE, catalogue_path

ROOT = Path(__file__).resolve().parents[2]
# the CLI's own messages (workers/) stay English, for the operator; connectors mark (N_) the receipt texts,
# skipped reasons and provenance they write as Notes, which the bundle page translates
SOURCES = ("discovery", "connectors")
KEYWORDS: dict[str, tuple[int, ...] | None] = {"_": None, "gettext": None, "N_": None, "tr": None,
                                               "ngettext": (1, 2), "tr_n": (1, 2)}
HEADER = "Messages dsar shows to people and helpdesks"


def extract() -> Catalog:
    """Every message in the source, with the files and lines that use it."""
    template = Catalog(domain=DOMAIN, project="dsar", msgid_bugs_address="", header_comment=f"# {HEADER}")
    for top in SOURCES:
        for filename, line, message, comments, context in extract_from_dir(
                ROOT / top, method_map=[("**.py", "python")], keywords=KEYWORDS, comment_tags=("TRANSLATORS:",),
                strip_comment_tags=True):
            if isinstance(message, tuple | list) and not all(message):
                continue
            if not message:
                continue
            template.add(message, locations=[(f"{top}/{filename}", line)], auto_comments=comments, context=context)
    return template


def update_catalogues(new: tuple[str, ...] = ()) -> list[Path]:
    """Bring every language's .po file up to the source (new messages empty, gone ones dropped); `new`
    languages get a file. English is complete by construction: its translation is the msgid."""
    written = []
    for code in LANGUAGES:
        template = extract()  # afresh: Catalog.update adopts the template's new message objects
        path = catalogue_path(code)
        if path.exists():
            with path.open("rb") as f:
                catalog = read_po(f, locale=LANGUAGES[code], domain=DOMAIN)
        elif code in new or code == SOURCE:
            catalog = Catalog(locale=LANGUAGES[code], domain=DOMAIN, project="dsar")
        else:
            continue
        catalog.update(template, no_fuzzy_matching=True)
        catalog.obsolete.clear()
        catalog.fuzzy = False  # the header: a fuzzy header marks the whole file as a draft
        if code == SOURCE:
            for message in catalog:
                forms = message.string if isinstance(message.string, tuple | list) else [message.string]
                if message.id and not all(forms):
                    message.string = message.id
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            write_po(f, catalog, width=116, sort_output=True, no_location=True, include_previous=False)
        written.append(path)
    return written

"""The record of processing activities (GDPR Art. 30(1)), written from the data map: `dsar ropa`.

One processing activity per system, enabled or not (a disabled system is one dsar does not reach, but the
company still processes its data). Each holds the Art. 30(1) items: (a) the controller, its DPO,
representative and joint controllers; (b) purpose (and legal basis); (c) categories of data subjects and of
personal data; (d) recipients and processors; (e) transfers to third countries with their safeguards;
(f) time limits for erasure; (g) the security measures, the controller's, repeated on every CSV row so a
spreadsheet row stands alone.

The texts come from the data map in the chosen language through the access answer's own view
(`bundle_view`), and a SQL system's categories of personal data are its entities' `fields` categories, as
the access answer lists them. Headings come from the gettext catalogue. Every output escapes what it shows:
HTML escapes, Markdown escapes its markup, CSV neutralises spreadsheet formulas.
"""

from __future__ import annotations

import csv
import html
import io
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import orjson

from connectors.base import N_, ConnectorError, EntityPolicy
from connectors.sql_map import SqlSystemSpec, parse_system
from discovery.bundle.build import neutralise
from discovery.engine.bundles import bundle_view
from discovery.engine.datamap import DataMap, DataMapError, Party, System
from discovery.i18n.languages import Language, language

FORMATS = ("html", "csv", "json", "md")

TITLE = N_("Record of processing activities")
INTRO = N_("The controller's record of processing activities (GDPR Art. 30(1)), written from the data map.")
GENERATED = N_("Written on {date}.")
CONTROLLER = N_("Controller")
NAME = N_("Name")
CONTACT = N_("Contact details")
DPO = N_("Data protection officer")
REPRESENTATIVE = N_("Representative (Art. 27)")
JOINT = N_("Joint controllers (Art. 26)")
AUTHORITY = N_("Supervisory authority")
ACTIVITIES = N_("Processing activities")
SECURITY = N_("Technical and organisational security measures (Art. 32(1))")
NONE = N_("none")
NOT_GIVEN = N_("not given")
REACHED = N_("answered by dsar")
NOT_REACHED = N_("not reached by dsar (handled by hand)")

# (JSON/CSV key, heading) in the order of Art. 30(1); the CSV's columns are these after `system`
COLUMNS: tuple[tuple[str, str], ...] = (
    ("title", N_("Processing activity")),
    ("purpose", N_("Purpose of the processing")),
    ("legal_basis", N_("Legal basis")),
    ("data_subjects", N_("Categories of data subjects")),
    ("personal_data", N_("Categories of personal data")),
    ("recipients", N_("Categories of recipients")),
    ("processors", N_("Processors")),
    ("transfers", N_("Transfers to third countries and their safeguards")),
    ("retention", N_("Time limits for erasure")),
    ("location", N_("Where the data is stored")),
    ("source", N_("Where the data comes from")),
    ("dsar", N_("Data-subject requests")),
)
CSV_EXTRA: tuple[tuple[str, str], ...] = (
    ("controller", CONTROLLER), ("dpo", DPO), ("security_measures", SECURITY))
SYSTEM = N_("System")

# The usual `fields` categories of a SQL entity, named for the reader; any other category shows as written.
CATEGORY_NAMES = {
    "account": N_("account data"), "billing": N_("billing and payment data"), "contact": N_("contact details"),
    "identity": N_("identity (name)"), "preferences": N_("preferences"), "security": N_("security logs"),
    "service": N_("service data (servers ordered)"), "usage": N_("usage data"),
}

HEADINGS = (TITLE, INTRO, CONTROLLER, NAME, CONTACT, DPO, REPRESENTATIVE, JOINT, AUTHORITY, ACTIVITIES, SECURITY,
            SYSTEM, *(h for _, h in COLUMNS))


# -- the record ----------------------------------------------------------------------------------


def build_record(data_map: DataMap, language_code: str, now: datetime) -> dict[str, Any]:
    """The record as plain data in one language: what the JSON output is, and what the others are written from."""
    lang = language(language_code)
    specs = {name: _sql_spec(data_map, s) for name, s in data_map.systems.items() if s.info.kind == "sql"}
    policies = {name: {entity: EntityPolicy(categories=tuple(sorted(set(e.fields.values()))))
                       for entity, e in spec.entities.items()} for name, spec in specs.items()}
    view = bundle_view(data_map, policies, "access", lang.code)
    c = data_map.controller
    controller = {
        "name": view.controller["name"], "contact": c.contact, "dpo": _party(lang, c.dpo),
        "representative": _party(lang, c.representative),
        "joint_controllers": [_party(lang, p) for p in c.joint_controllers],
        "supervisory_authority": view.controller["supervisory_authority"],
        "supervisory_authority_address": view.controller["supervisory_authority_address"],
    }
    activities = []
    for name, system in data_map.systems.items():
        about, info = view.systems[name], system.info
        by_entity: dict[str, list[str]] = about.get("categories") or {}
        codes = sorted({code for entity in by_entity.values() for code in entity})
        activities.append({
            "system": name, "kind": info.kind, "enabled": info.enabled,
            "title": about["title"] or name,
            "purpose": about["purpose"], "legal_basis": about["legal_basis"],
            "data_subjects": [lang.text(t) for t in info.data_subjects],
            "personal_data": [lang.text(t) for t in info.data_categories] + [_category(lang, c) for c in codes],
            "personal_data_by_entity": by_entity,
            "holds": about["holds"],
            "recipients": [lang.text(t) for t in info.recipients],
            "processors": about["processors"],
            "transfers": [{"country": lang.text(t.country), "safeguard": lang.text(t.safeguard),
                           "recipient": lang.text(t.recipient), "documentation": lang.text(t.documentation)}
                          for t in info.transfers],
            "retention": about["retention"],
            "retention_rules": about.get("retention_rules") or [],
            "retention_by_entity": _holds(lang, specs[name]) if name in specs else [],
            "location": about["location"], "source": about["source"],
        })
    return {"title": lang.gettext(TITLE), "language": lang.code, "generated_at": now.isoformat(),
            "controller": controller, "security_measures": [lang.text(t) for t in c.security_measures],
            "activities": activities}


def _sql_spec(data_map: DataMap, system: System) -> SqlSystemSpec:
    try:
        return parse_system(system.name, dict(system.settings))
    except ConnectorError as exc:
        why = exc.message.removeprefix("data map: ")
        raise DataMapError(f"data map {data_map.path}: systems.{system.name}: {why}") from None


def _party(lang: Language, party: Party | None) -> dict[str, str] | None:
    if party is None:
        return None
    return {"name": lang.text(party.name), "contact": party.contact, "address": lang.text(party.address)}


def _category(lang: Language, code: str) -> str:
    return lang.gettext(CATEGORY_NAMES[code]) if code in CATEGORY_NAMES else code


def _holds(lang: Language, spec: SqlSystemSpec) -> list[dict[str, Any]]:
    """Per SQL entity with a hold: how long it is kept whatever a request asks, and why (Art. 30(1)(f))."""
    out: list[dict[str, Any]] = []
    for entity, e in spec.entities.items():
        if e.hold is None:
            continue
        if e.hold.with_:
            text = lang.gettext(N_("{entity}: kept as long as the {parent} record it belongs to")).format(
                entity=entity, parent=e.hold.with_)
        else:
            years = e.hold.years or 0
            text = lang.ngettext("{entity}: {years} year from {date} ({reason})",
                                 "{entity}: {years} years from {date} ({reason})", years).format(
                entity=entity, years=years, date=e.hold.from_, reason=lang.text(e.hold.reason))
        out.append({"entity": entity, "years": e.hold.years, "from": e.hold.from_, "with": e.hold.with_,
                    "text": text})
    return out


# -- outputs --------------------------------------------------------------------------------------


def to_json(record: Mapping[str, Any]) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_INDENT_2) + b"\n"


def _transfer(lang: Language, t: Mapping[str, str]) -> str:
    text = lang.gettext(N_("{country}: {safeguard}")).format(country=t["country"], safeguard=t["safeguard"])
    if t["recipient"]:
        text += "; " + lang.gettext(N_("recipient: {recipient}")).format(recipient=t["recipient"])
    if t["documentation"]:
        text += "; " + lang.gettext(N_("documented in: {documentation}")).format(documentation=t["documentation"])
    return text


def _party_text(p: Mapping[str, str] | None) -> str:
    return ", ".join(v for v in (p["name"], p["contact"], p["address"]) if v) if p else ""


def _cells(lang: Language, a: Mapping[str, Any]) -> dict[str, list[str]]:
    """Each column of an activity as its lines of text (an empty list reads "none" or "not given")."""
    # (f) the machine-readable rules where the map declares them (the same sentences as the bundle page and
    # `dsar retention report`), else the system's free text; then each legal hold
    retention = list(a.get("retention_rules") or []) or ([a["retention"]] if a["retention"] else [])
    return {
        "title": [a["title"]], "purpose": [a["purpose"]], "legal_basis": [a["legal_basis"]],
        "data_subjects": a["data_subjects"],
        "personal_data": a["personal_data"] or ([a["holds"]] if a["holds"] else []),
        "recipients": a["recipients"], "processors": a["processors"],
        "transfers": [_transfer(lang, t) for t in a["transfers"]],
        "retention": retention + [h["text"] for h in a["retention_by_entity"]],
        "location": [a["location"]], "source": [a["source"]],
        "dsar": [lang.gettext(REACHED if a["enabled"] else NOT_REACHED)],
    }


# what an empty column means: nothing there ("none"), or nothing written in the map ("not given")
_EMPTY_IS_NONE = {"recipients", "processors", "transfers"}


def _empty(lang: Language, key: str) -> str:
    return lang.gettext(NONE if key in _EMPTY_IS_NONE else NOT_GIVEN)


def to_csv(record: Mapping[str, Any]) -> str:
    """One row per processing activity; several values in a cell are joined by '; '."""
    lang = language(record["language"])
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([lang.gettext(SYSTEM)] + [lang.gettext(h) for _, h in COLUMNS + CSV_EXTRA])
    c = record["controller"]
    extra = [_party_text({"name": c["name"], "contact": c["contact"], "address": ""}),
             _party_text(c["dpo"]), "; ".join(record["security_measures"])]
    for a in record["activities"]:
        cells = _cells(lang, a)
        row = [a["system"]] + ["; ".join(v for v in cells[key] if v) or _empty(lang, key) for key, _ in COLUMNS]
        writer.writerow([neutralise(v) for v in row + extra])
    return out.getvalue()


# inline markup; `<`, `>` and `&` become entities, since Markdown passes HTML through
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def _md(text: str) -> str:
    """Text shown as itself in Markdown, on one line (every use follows a list marker or a heading's `#`)."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(" ".join(str(text).split()), quote=False))


def to_markdown(record: Mapping[str, Any]) -> str:
    lang = language(record["language"])
    _ = lang.gettext
    lines = [f"# {_md(record['title'])}", "", _md(_(INTRO)), "",
             _md(_(GENERATED).format(date=lang.date(record["generated_at"]))), "", f"## {_md(_(CONTROLLER))}", ""]
    for label, value in _controller_rows(lang, record["controller"]):
        lines.append(f"- **{_md(label)}:** {_md(value)}")
    lines += ["", f"## {_md(_(ACTIVITIES))}"]
    for a in record["activities"]:
        cells = _cells(lang, a)
        lines += ["", f"### {_md(a['title'])} ({_md(a['system'])})", ""]
        for key, heading in COLUMNS[1:]:
            values = [v for v in cells[key] if v] or [_empty(lang, key)]
            if len(values) == 1:
                lines.append(f"- **{_md(_(heading))}:** {_md(values[0])}")
            else:
                lines.append(f"- **{_md(_(heading))}:**")
                lines += [f"  - {_md(v)}" for v in values]
    lines += ["", f"## {_md(_(SECURITY))}", ""]
    lines += [f"- {_md(m)}" for m in record["security_measures"]] or [_md(_(NOT_GIVEN))]
    return "\n".join(lines) + "\n"


def _controller_rows(lang: Language, c: Mapping[str, Any]) -> list[tuple[str, str]]:
    _ = lang.gettext
    rows = [(_(NAME), c["name"]), (_(CONTACT), c["contact"]), (_(DPO), _party_text(c["dpo"]) or _(NOT_GIVEN))]
    if c["representative"]:
        rows.append((_(REPRESENTATIVE), _party_text(c["representative"])))
    if c["joint_controllers"]:
        rows.append((_(JOINT), "; ".join(_party_text(p) for p in c["joint_controllers"])))
    rows.append((_(AUTHORITY), ", ".join(v for v in (c["supervisory_authority"],
                                                     c["supervisory_authority_address"]) if v)))
    return rows


STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:62rem;margin:2rem auto;padding:0 1rem;
color:#1b1b1b;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.3rem;margin-top:2rem;border-bottom:1px solid #ccc}
h3{font-size:1.1rem;margin:1.6rem 0 .4rem}table{border-collapse:collapse;width:100%;font-size:.92rem}
th,td{border:1px solid #ccc;padding:.3rem .5rem;text-align:left;vertical-align:top}th{background:#f3f3f3;width:16rem}
ul{margin:0;padding-left:1.1rem}.small{font-size:.85rem;color:#555}.empty{color:#777;font-style:italic}
@page{size:A4;margin:15mm}
@media print{body{margin:0;max-width:none;font-size:10pt}section{break-inside:avoid}h2{break-after:avoid}
th{background:#eee;-webkit-print-color-adjust:exact;print-color-adjust:exact}}
"""


def to_html(record: Mapping[str, Any]) -> str:
    """One self-contained, printable page: no scripts, no external assets (a CSP forbids both), every text escaped."""
    lang = language(record["language"])
    _ = lang.gettext
    e = _esc
    out = [
        "<!DOCTYPE html>", f'<html lang="{e(lang.code)}"><head><meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(record['title'])}: {e(record['controller']['name'])}</title><style>{STYLE}</style></head><body>",
        f"<h1>{e(record['title'])}</h1>",
        f"<p>{e(_(INTRO))}<br><span class=\"small\">"
        f"{e(_(GENERATED).format(date=lang.date(record['generated_at'])))}</span></p>",
        f"<h2>{e(_(CONTROLLER))}</h2><table>",
    ]
    out += [f"<tr><th>{e(label)}</th><td>{e(value)}</td></tr>"
            for label, value in _controller_rows(lang, record["controller"])]
    out += ["</table>", f"<h2>{e(_(ACTIVITIES))}</h2>"]
    for a in record["activities"]:
        cells = _cells(lang, a)
        out.append(f'<section id="system-{e(a["system"])}"><h3>{e(a["title"])} '
                   f'<span class="small">({e(a["system"])})</span></h3><table>')
        for key, heading in COLUMNS[1:]:
            out.append(f"<tr><th>{e(_(heading))}</th><td>{_html_values(cells[key], _empty(lang, key))}</td></tr>")
        out.append("</table></section>")
    out.append(f"<section><h2>{e(_(SECURITY))}</h2>{_html_values(record['security_measures'], _(NOT_GIVEN))}"
               "</section></body></html>")
    return "\n".join(out) + "\n"


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _html_values(values: list[str], empty: str) -> str:
    values = [v for v in values if v]
    if not values:
        return f'<span class="empty">{_esc(empty)}</span>'
    if len(values) == 1:
        return _esc(values[0])
    return "<ul>" + "".join(f"<li>{_esc(v)}</li>" for v in values) + "</ul>"


WRITERS: dict[str, Callable[[Mapping[str, Any]], str | bytes]] = {
    "html": to_html, "csv": to_csv, "json": to_json, "md": to_markdown}


def render(record: Mapping[str, Any], fmt: str) -> bytes:
    """The record in one of FORMATS, as the bytes of the file (UTF-8)."""
    out = WRITERS[fmt](record)
    return out if isinstance(out, bytes) else out.encode("utf-8")

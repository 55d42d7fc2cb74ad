"""index.html: the page a person opens first. Self-contained (no scripts, no external assets).

Everything it shows comes from the manifest (and so from the data map and the ledger) and is
escaped: a name such as `<script>` stays text. A Content-Security-Policy forbids scripts anyway.
Written in the manifest's `language`: the page's own texts come from the gettext catalogue
(discovery/i18n), dates and numbers are formatted for that locale.
"""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import quote

import orjson

from connectors.base import N_, is_note
from discovery.i18n.languages import SOURCE, Language, Text, language

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;
color:#1b1b1b;line-height:1.5}
h1{font-size:1.6rem}h2{font-size:1.3rem;margin-top:2.2rem;border-bottom:1px solid #ccc}h3{font-size:1.05rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.92rem}td,th{border:1px solid #ccc;padding:.25rem .5rem;
text-align:left;vertical-align:top}th{background:#f3f3f3}dt{font-weight:600}dd{margin:0 0 .5rem 0}
.note{background:#fff4e5;border-left:4px solid #e69500;padding:.5rem 1rem}.ok{color:#1d6b2c}.bad{color:#a30000}
.small{font-size:.85rem;color:#555}code{background:#f3f3f3;padding:0 .2rem}
"""

TYPE_INTRO = {
    "access": N_("This is a copy of the personal data we hold about you (GDPR Art. 15), with what we do with it "
                 "and why."),
    "portability": N_("This is the personal data you gave us or created by using our service, in formats other "
                      "services can read (GDPR Art. 20): JSON, and CSV for tables."),
    "erasure": N_("This is the record of how we erased your personal data (GDPR Art. 17): what was done where, "
                  "when, and what the law requires us to keep for now."),
    "restriction": N_("This is the record of how we restricted the processing of your personal data "
                      "(GDPR Art. 18)."),
    "lift_restriction": N_("This is the record of how we lifted the restriction of processing of your personal "
                           "data."),
}

TYPE_NAME = {"access": N_("access"), "portability": N_("portability"), "erasure": N_("erasure"),
             "restriction": N_("restriction"), "lift_restriction": N_("lifting a restriction")}

ACTION_NAME = {"export": N_("export"), "erase": N_("erase"), "restrict": N_("restrict"),
               "lift_restriction": N_("lift the restriction"), "skip": N_("skip"), "refused": N_("refused")}

IDENTIFIER_NAME = {"email": N_("e-mail address"), "phone": N_("phone number"), "account_id": N_("account id"),
                   "freshchat_user_id": N_("FreshChat user id"), "mautic_contact_id": N_("Mautic contact id"),
                   "salesmanago_contact_id": N_("SALESmanago contact id"),
                   "matomo_visitor_id": N_("Matomo visitor id"), "matomo_user_id": N_("Matomo user id")}

RIGHTS = [
    (N_("Access (Art. 15)"), N_("a copy of your data and how we use it: this bundle.")),
    (N_("Rectification (Art. 16)"), N_("have wrong or incomplete data corrected.")),
    (N_("Erasure (Art. 17)"), N_("have your data deleted, unless the law requires us to keep it (we then tell you "
                                 "why and until when).")),
    (N_("Restriction (Art. 18)"), N_("have us keep your data but stop using it, for example while a correction is "
                                     "checked.")),
    (N_("Objection (Art. 21)"), N_("object to processing based on our legitimate interest, and to direct marketing "
                                   "at any time.")),
    (N_("Portability (Art. 20)"), N_("receive the data you gave us in a machine-readable format, or have it sent to "
                                     "another service.")),
    (N_("Withdraw consent (Art. 7(3))"), N_("where we rely on your consent, withdraw it at any time.")),
]

STATUS_TEXT = {
    "done": N_("done"), "failed": N_("failed"), "unsupported": N_("not possible in this system"),
    "awaiting_manual": N_("waiting for a manual step"), "skipped": N_("not found / not included"),
}


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _link(path: str, label: str | None = None) -> str:
    return f'<a href="{esc(quote(path))}">{esc(label or path)}</a>'


class _Page:
    """The page's language: `tr` escapes a translated text and fills in `{name}` with HTML already escaped."""

    def __init__(self, lang: Language) -> None:
        self.lang = lang
        self._ = lang.gettext
        self.shared_titles: set[str] = set()  # titles two systems show alike (two of one kind): named apart

    def tr(self, message: str, **html_parts: str) -> str:
        return esc(self._(message)).format(**html_parts)

    def tr_n(self, singular: str, plural: str, n: int, **html_parts: str) -> str:
        return esc(self.lang.ngettext(singular, plural, n)).format(**html_parts)

    def known(self, names: dict[str, str], key: Any) -> str:
        """A fixed word (status, action, type) in this language; anything else as it is."""
        return self._(names[key]) if key in names else str(key or "").replace("_", " ")

    def status(self, key: Any) -> str:
        return self.known(STATUS_TEXT, key)

    def reason(self, text: Any) -> str:
        """Reasons from the engine are English; the fixed ones are in the catalogue (marked where they are made)."""
        return self.lang.known(str(text)) if text else ""

    def note(self, note: Any, fallback: Any = "") -> str:
        """A Note (connectors.base, serialised as {"msgid", "params"}) in this language: its template from the
        catalogue, its values as they are (numbers per locale, data-map texts in this language, Notes in turn).
        Without a note (an older bundle, a text written without one): the plain `fallback`, as `reason` shows it."""
        if not is_note(note):
            return self.reason(fallback)
        params = {k: self._value(v) for k, v in (note.get("params") or {}).items()}
        try:
            return self._(note["msgid"]).format(**params)
        except (KeyError, IndexError, ValueError):  # a translation that does not fit its values
            return str(note["msgid"]).format(**params)

    def _value(self, value: Any) -> Any:
        if is_note(value):
            return self.note(value)
        if isinstance(value, dict):
            return self.lang.text(value)
        if isinstance(value, list):  # several values (masked columns, say), each in turn
            return ", ".join(str(self._value(v)) for v in value)
        if isinstance(value, int) and not isinstance(value, bool):
            return self.lang.number(value)
        return value

    def notes(self, notes: Any, plain: Any) -> list[str]:
        """Lines written as Notes in this language, else the plain (English) lines."""
        if notes and len(notes) == len(plain or []):
            return [self.note(n) for n in notes]
        return [str(line) for line in plain or []]


def render_index(manifest: dict[str, Any], samples: dict[tuple[str, str], list[dict[str, Any]]]) -> str:
    p = _Page(language(manifest.get("language") or SOURCE))
    _, lang = p._, p.lang
    ctl = manifest.get("controller") or {}
    req = manifest["request"]
    rtype = req.get("type", "")
    name = esc(lang.text(ctl.get("name", "")))
    title = p.tr("Your personal data at {name}", name=name)
    out: list[str] = [
        "<!doctype html>",
        f'<html lang="{esc(lang.code)}"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        f"<title>{title}</title><style>{STYLE}</style></head><body>",
        f"<h1>{title}</h1>",
        f"<p>{esc(_(TYPE_INTRO[rtype]) if rtype in TYPE_INTRO else '')}</p>",
        "<table>",
        "<tr><th>" + p.tr("Request") + f"</th><td>{esc(req.get('id'))} ({esc(p.known(TYPE_NAME, rtype))})</td></tr>",
        "<tr><th>" + p.tr("Received") + f"</th><td>{esc(lang.datetime(req.get('received_at')))}</td></tr>",
        "<tr><th>" + p.tr("Prepared") + f"</th><td>{esc(lang.datetime(manifest.get('generated_at')))}</td></tr>",
        "</table>",
    ]
    titles = [_title(p, system, entry.get("about") or {}) for system, entry in manifest.get("systems", {}).items()]
    p.shared_titles = {t for t in titles if titles.count(t) > 1}
    out += _identifiers(p, manifest)
    out += _summary(p, manifest, rtype)
    for system, entry in manifest.get("systems", {}).items():
        out += _system(p, system, entry, samples, rtype)
    out += _rights(p, ctl)
    out += _about(p, manifest)
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _identifiers(p: _Page, manifest: dict[str, Any]) -> list[str]:
    ids = manifest.get("subject", {}).get("identifiers", [])
    if not ids:
        return []
    rows = "".join(f"<tr><td>{esc(p.known(IDENTIFIER_NAME, i.get('type', '')))}</td><td>{esc(i.get('value'))}</td>"
                   f"<td>{_learned_from(p, i)}</td></tr>" for i in ids)
    return ["<h2>" + p.tr("How we found you") + "</h2>",
            "<p>" + p.tr("We searched every system for your e-mail address, and then for the other identifiers each "
                        "system told us about you:") + "</p>",
            "<table><tr><th>" + p.tr("Identifier") + "</th><th>" + p.tr("Value") + "</th><th>"
            + p.tr("Learned from") + f"</th></tr>{rows}</table>"]


def _learned_from(p: _Page, identifier: dict[str, Any]) -> str:
    if identifier.get("source") == "request":
        return p.tr("your request")
    if is_note(identifier.get("via_note")):
        return esc(p.note(identifier["via_note"]))
    return esc(identifier.get("via") or identifier.get("source"))


def _exports(rtype: str) -> bool:
    return rtype in ("access", "portability")


def _title(p: _Page, system: str, about: dict[str, Any]) -> str:
    """The system's title in the page's language, else its data-map name; where two systems (say two Mautic
    instances) show the same title, the data-map name follows it, so the person can tell them apart."""
    title = p.lang.text(about.get("title")) or system
    return f"{title} ({system})" if title in p.shared_titles and title != system else title


def _summary(p: _Page, manifest: dict[str, Any], rtype: str) -> list[str]:
    rows = []
    count_key = "records" if _exports(rtype) else "changed"
    for system, entry in manifest.get("systems", {}).items():
        records = sum(e.get(count_key, 0) or 0 for e in entry.get("entities", {}).values())
        status = entry.get("status", "")
        cls = "ok" if status == "done" else ("bad" if status == "failed" else "")
        rows.append(f'<tr><td><a href="#sys-{esc(quote(system))}">{esc(_title(p, system, entry.get("about") or {}))}'
                    f'</a></td><td class="{cls}">{esc(p.status(status))}</td><td>{esc(p.lang.number(records))}</td>'
                    "</tr>")
    label = p.tr("Records") if _exports(rtype) else p.tr("Records changed")
    return ["<h2>" + p.tr("Summary") + "</h2>",
            "<table><tr><th>" + p.tr("System") + "</th><th>" + p.tr("Status") + f"</th><th>{label}</th></tr>",
            *rows, "</table>"]


def _system(p: _Page, system: str, entry: dict[str, Any], samples: dict[tuple[str, str], list[dict[str, Any]]],
            rtype: str) -> list[str]:
    about = entry.get("about") or {}
    status = entry.get("status", "")
    text = p.lang.text
    out = [f'<h2 id="sys-{esc(quote(system))}">{esc(_title(p, system, about))}</h2>']
    if status != "done":
        notes = entry.get("reason_notes") or {}
        reasons = "; ".join(p.note(notes.get(r), r) for r in entry.get("reasons") or []) or p.status(status)
        label = p.tr("Not complete") if status in ("failed", "awaiting_manual") else p.tr("Note")
        out.append(f'<p class="note"><strong>{label} ({esc(p.status(status))}):</strong> {esc(reasons)}</p>')
    processors: list[Text] = about.get("processors") or []
    facts = [(N_("What it holds about people"), text(about.get("holds"))),
             (N_("Why we use it"), text(about.get("purpose"))),
             (N_("Legal basis"), text(about.get("legal_basis"))),
             (N_("How long we keep it"), text(about.get("retention"))),
             # the data map's machine-readable rules, already in this language (engine.bundles.bundle_view)
             (N_("Retention rules"), "; ".join(str(r) for r in about.get("retention_rules") or [])),
             (N_("Who processes it"), ", ".join(text(x) for x in processors) or (p._("Only us") if about else "")),
             (N_("Where"), text(about.get("location"))),
             (N_("Where the data comes from"), text(about.get("source")))]
    out.append("<dl>" + "".join(f"<dt>{p.tr(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts if v) + "</dl>")
    entities = entry.get("entities", {})
    if entities:
        out += _entities(p, system, entities, about.get("categories") or {}, samples, rtype)
    if entry.get("receipts"):
        out += _receipts(p, entry["receipts"])
    if entry.get("files"):
        out.append("<h3>" + p.tr("Files") + "</h3><ul>" + "".join(
            f"<li>{_link(f['file'])} ({esc(f.get('content_type'))}, "
            + p.tr("{size} bytes", size=esc(p.lang.number(f.get("size", 0)))) + ")</li>"
            for f in entry["files"]) + "</ul>")
    if _exports(rtype) and not any(e.get("records") for e in entities.values()) \
            and status == "done":
        out.append("<p>" + p.tr("We hold no records about you in this system.") + "</p>")
    return out


def _entities(p: _Page, system: str, entities: dict[str, Any], categories: dict[str, list[str]],
              samples: dict[tuple[str, str], list[dict[str, Any]]], rtype: str) -> list[str]:
    lang = p.lang
    rows = []
    for name, e in entities.items():
        links = []
        if e.get("file"):
            links.append(_link(e["file"], "JSON"))
        if e.get("csv"):
            links.append(_link(e["csv"]["file"], "CSV"))
        steps = "; ".join(f"{p.known(ACTION_NAME, s['action'])}: {p.note(s.get('note'), s['reason'])}"
                          for s in e.get("steps", []) if s.get("reason"))
        left_out = e.get("fields_left_out")
        extra = ('<br><span class="small">' + p.tr("Left out (not provided by you): {fields}",
                                                   fields=esc(", ".join(left_out))) + "</span>") if left_out else ""
        held = "".join('<br><span class="small">' + p.tr(
            "Kept: {records} until {until} ({reason})", records=esc(lang.number(h.get("records"))),
            until=esc(lang.date(h.get("until"))), reason=esc(_hold_reason(p, h))) + "</span>"
            for h in e.get("held") or [])
        count = e.get("records") if "records" in e else e.get("changed", "")
        rows.append(f"<tr><td>{esc(name)}</td><td>{esc(', '.join(categories.get(name, [])))}</td>"
                    f"<td>{esc(lang.number(count) if isinstance(count, int) else count)}</td>"
                    f"<td>{esc(p.status(e.get('status', '')))}{extra}{held}</td><td>{' '.join(links)}</td>"
                    f"<td class=\"small\">{esc(steps)}</td></tr>")
    heading, count = (p.tr("What we hold about you"), p.tr("Records")) if _exports(rtype) \
        else (p.tr("Per kind of record"), p.tr("Changed"))
    out = [f"<h3>{heading}</h3>",
           "<table><tr><th>" + p.tr("Kind of record") + "</th><th>" + p.tr("Categories") + f"</th><th>{count}</th>"
           "<th>" + p.tr("Status") + "</th><th>" + p.tr("Files") + "</th><th>" + p.tr("What we did") + "</th></tr>",
           *rows, "</table>"]
    for name in entities:
        preview = samples.get((system, name)) or []
        if preview:
            out += _preview(p, name, preview, entities[name].get("records", len(preview)))
    return out


def _hold_reason(p: _Page, held: dict[str, Any]) -> str:
    """The data map's reason for a hold, in this language when it gave one per language."""
    return p.lang.text(held.get("reasons") or held.get("reason"))


def _preview(p: _Page, name: str, rows: list[dict[str, Any]], total: int) -> list[str]:
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{esc(_cell(row.get(c)))}</td>" for c in columns) + "</tr>" for row in rows)
    summary = p.tr("{name}: a look at the records", name=esc(name))
    if total > len(rows):
        summary = p.tr("{name}: a look at the records (the first {shown} of {total}; all of them are in the files)",
                      name=esc(name), shown=esc(p.lang.number(len(rows))), total=esc(p.lang.number(total)))
    return [f"<details><summary>{summary}</summary>", f"<table><tr>{head}</tr>{body}</table></details>"]


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    return text if len(text) <= 300 else text[:300] + "..."


def _receipts(p: _Page, receipts: list[dict[str, Any]]) -> list[str]:
    lang = p.lang
    out = ["<h3>" + p.tr("What we did") + "</h3>"]
    receipt = p._("receipt")
    for r in receipts:
        changed = ", ".join(f"{k}: {lang.number(v) if isinstance(v, int) else v}"
                            for k, v in (r.get("changed") or {}).items()) or p._("nothing to change")
        out.append(f"<p><strong>{esc(p.known(ACTION_NAME, r.get('action', '')))}</strong>, "
                   f"{esc(p.status(r.get('status', '')))}, "
                   f"{esc(lang.datetime(r.get('finished_at')))}: {esc(changed)} "
                   f"({_link(r['file'], receipt)})</p><ul>")
        for h in r.get("held") or []:
            count = int(h.get("records") or 0)
            until = esc(lang.date(h.get("until"))) if h.get("until") else p.tr("the hold ends")
            out.append("<li>" + p.tr_n(
                "Kept for now: {records} {entity} record until {until}, because of {reason}. Its processing is "
                "restricted until then.",
                "Kept for now: {records} {entity} records until {until}, because of {reason}. Their processing is "
                "restricted until then.", count, records=esc(lang.number(count)), entity=esc(h.get("entity")),
                until=until, reason=esc(_hold_reason(p, h))) + "</li>")
        for ref in r.get("vendor_refs") or []:
            out.append("<li>" + p.tr("Reference at the provider: {ref}", ref=esc(ref)) + "</li>")
        todo = p._("confirmed done, see below") if r.get("confirmations") else p._("still to be done by a person")
        for step in p.notes(r.get("manual_notes"), r.get("manual_steps")):
            out.append("<li>" + p.tr("Manual step ({todo}): {step}", todo=esc(todo), step=esc(step)) + "</li>")
        for c in r.get("confirmations") or []:
            out.append("<li>" + p.tr("Confirmed {at}: {note}", at=esc(lang.datetime(c.get("at"))),
                                    note=esc(c.get("note"))) + "</li>")
        for line in p.notes(r.get("notes"), r.get("details")):
            out.append(f"<li class=\"small\">{esc(line)}</li>")
        out.append("</ul>")
    return out


def _rights(p: _Page, ctl: dict[str, Any]) -> list[str]:
    text = p.lang.text
    authority = text(ctl.get("supervisory_authority")) or p._("the data protection authority")
    parts = [esc(authority)]
    if ctl.get("supervisory_authority_address"):
        parts.append(esc(text(ctl["supervisory_authority_address"])))
    authority_html = ", ".join(parts)
    if ctl.get("supervisory_authority_url"):
        authority_html += f" ({_external(text(ctl['supervisory_authority_url']))})"
    contact = ctl.get("contact")
    out = ["<h2>" + p.tr("Your rights") + "</h2>", "<p>" + p.tr("You can ask us at any time for:") + "</p><ul>"]
    out += [f"<li><strong>{p.tr(name)}</strong>: {p.tr(what)}</li>" for name, what in RIGHTS]
    out.append("</ul>")
    if contact:
        strong = "<strong>" + esc(contact) + "</strong>"
        out.append("<p>" + p.tr("Write to {name} at {contact} to use any of them; we answer within one month "
                                "(GDPR Art. 12(3)).", name=esc(text(ctl.get("name"))), contact=strong) + "</p>")
    if ctl.get("privacy_policy_url"):
        out.append("<p>" + p.tr("Our privacy policy: {url}", url=_external(text(ctl["privacy_policy_url"]))) + "</p>")
    out.append("<p>" + p.tr("If you think we process your data unlawfully, you can complain to {authority} "
                           "(GDPR Art. 77).", authority=authority_html) + "</p>")
    return out


def _external(url: str) -> str:
    """An address shown as text to copy, not a link: the page loads and opens nothing by itself."""
    return f"<code>{esc(url)}</code>"


def _about(p: _Page, manifest: dict[str, Any]) -> list[str]:
    return ["<h2>" + p.tr("About this bundle") + "</h2>",
            "<p class=\"small\">" + p.tr(
                "{manifest} lists every file with its SHA-256 checksum and size, and for each system what was done "
                "and why. {data} holds your records as JSON (and CSV where they form a table); {files} holds "
                "documents; {receipts} records erasure and restriction.", manifest="<code>manifest.json</code>",
                data="<code>data/</code>", files="<code>files/</code>", receipts="<code>receipts/</code>")
            + (f" {p.tr(manifest['csv_note'])}." if manifest.get("csv_note") else "") + "</p>"]

"""index.html: the page a person opens first. Self-contained (no scripts, no external assets).

Everything it shows comes from the manifest (and so from the data map and the ledger) and is
escaped: a name such as `<script>` stays text. A Content-Security-Policy forbids scripts anyway.
"""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import quote

import orjson

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
    "access": "This is a copy of the personal data we hold about you (GDPR Art. 15), with what we do with it and "
              "why.",
    "portability": "This is the personal data you gave us or created by using our service, in formats other "
                   "services can read (GDPR Art. 20): JSON, and CSV for tables.",
    "erasure": "This is the record of how we erased your personal data (GDPR Art. 17): what was done where, when, "
               "and what the law requires us to keep for now.",
    "restriction": "This is the record of how we restricted the processing of your personal data (GDPR Art. 18).",
    "lift_restriction": "This is the record of how we lifted the restriction of processing of your personal data.",
}

RIGHTS = [
    ("Access (Art. 15)", "a copy of your data and how we use it: this bundle."),
    ("Rectification (Art. 16)", "have wrong or incomplete data corrected."),
    ("Erasure (Art. 17)", "have your data deleted, unless the law requires us to keep it (we then tell you why "
                          "and until when)."),
    ("Restriction (Art. 18)", "have us keep your data but stop using it, for example while a correction is "
                              "checked."),
    ("Objection (Art. 21)", "object to processing based on our legitimate interest, and to direct marketing at any "
                            "time."),
    ("Portability (Art. 20)", "receive the data you gave us in a machine-readable format, or have it sent to "
                              "another service."),
    ("Withdraw consent (Art. 7(3))", "where we rely on your consent, withdraw it at any time."),
]

STATUS_TEXT = {
    "done": "done", "failed": "failed", "unsupported": "not possible in this system",
    "awaiting_manual": "waiting for a manual step", "skipped": "not found / not included",
}


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _link(path: str, label: str | None = None) -> str:
    return f'<a href="{esc(quote(path))}">{esc(label or path)}</a>'


def render_index(manifest: dict[str, Any], samples: dict[tuple[str, str], list[dict[str, Any]]]) -> str:
    ctl = manifest.get("controller") or {}
    req = manifest["request"]
    rtype = req.get("type", "")
    out: list[str] = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        f"<title>Your personal data at {esc(ctl.get('name', ''))}</title><style>{STYLE}</style></head><body>",
        f"<h1>Your personal data at {esc(ctl.get('name', ''))}</h1>",
        f"<p>{esc(TYPE_INTRO.get(rtype, ''))}</p>",
        "<table>",
        f"<tr><th>Request</th><td>{esc(req.get('id'))} ({esc(rtype.replace('_', ' '))})</td></tr>",
        f"<tr><th>Received</th><td>{esc(_date(req.get('received_at')))}</td></tr>",
        f"<tr><th>Prepared</th><td>{esc(_date(manifest.get('generated_at')))}</td></tr>",
        "</table>",
    ]
    out += _identifiers(manifest)
    out += _summary(manifest, rtype)
    for system, entry in manifest.get("systems", {}).items():
        out += _system(system, entry, samples, rtype)
    out += _rights(ctl)
    out += _about(manifest)
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _date(value: Any) -> str:
    return str(value or "")[:16].replace("T", " ") + (" UTC" if value else "")


def _identifiers(manifest: dict[str, Any]) -> list[str]:
    ids = manifest.get("subject", {}).get("identifiers", [])
    if not ids:
        return []
    rows = "".join(f"<tr><td>{esc(i.get('type', '').replace('_', ' '))}</td><td>{esc(i.get('value'))}</td>"
                   f"<td>{esc('your request' if i.get('source') == 'request' else i.get('via') or i.get('source'))}"
                   "</td></tr>"
                   for i in ids)
    return ["<h2>How we found you</h2>",
            "<p>We searched every system for your e-mail address, and then for the other identifiers each system "
            "told us about you:</p>",
            f"<table><tr><th>Identifier</th><th>Value</th><th>Learned from</th></tr>{rows}</table>"]


def _exports(rtype: str) -> bool:
    return rtype in ("access", "portability")


def _summary(manifest: dict[str, Any], rtype: str) -> list[str]:
    rows = []
    count_key = "records" if _exports(rtype) else "changed"
    for system, entry in manifest.get("systems", {}).items():
        title = (entry.get("about") or {}).get("title") or system
        records = sum(e.get(count_key, 0) or 0 for e in entry.get("entities", {}).values())
        status = entry.get("status", "")
        cls = "ok" if status == "done" else ("bad" if status == "failed" else "")
        rows.append(f'<tr><td><a href="#sys-{esc(quote(system))}">{esc(title)}</a></td>'
                    f'<td class="{cls}">{esc(STATUS_TEXT.get(status, status))}</td><td>{records}</td></tr>')
    label = "Records" if _exports(rtype) else "Records changed"
    return ["<h2>Summary</h2>", f"<table><tr><th>System</th><th>Status</th><th>{label}</th></tr>", *rows,
            "</table>"]


def _system(system: str, entry: dict[str, Any], samples: dict[tuple[str, str], list[dict[str, Any]]],
            rtype: str) -> list[str]:
    about = entry.get("about") or {}
    status = entry.get("status", "")
    out = [f'<h2 id="sys-{esc(quote(system))}">{esc(about.get("title") or system)}</h2>']
    if status != "done":
        reasons = "; ".join(entry.get("reasons") or []) or STATUS_TEXT.get(status, status)
        label = "Not complete" if status in ("failed", "awaiting_manual") else "Note"
        out.append(f'<p class="note"><strong>{esc(label)} ({esc(STATUS_TEXT.get(status, status))}):</strong> '
                   f"{esc(reasons)}</p>")
    facts = [("What it holds about people", about.get("holds")), ("Why we use it", about.get("purpose")),
             ("Legal basis", about.get("legal_basis")), ("How long we keep it", about.get("retention")),
             ("Who processes it", ", ".join(about.get("processors") or []) or
              ("Only us" if about else "")), ("Where", about.get("location")),
             ("Where the data comes from", about.get("source"))]
    out.append("<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts if v) + "</dl>")
    entities = entry.get("entities", {})
    if entities:
        out += _entities(system, entities, about.get("categories") or {}, samples, rtype)
    if entry.get("receipts"):
        out += _receipts(entry["receipts"])
    if entry.get("files"):
        out.append("<h3>Files</h3><ul>" + "".join(
            f"<li>{_link(f['file'])} ({esc(f.get('content_type'))}, {f.get('size', 0)} bytes)</li>"
            for f in entry["files"]) + "</ul>")
    if _exports(rtype) and not any(e.get("records") for e in entities.values()) \
            and status == "done":
        out.append("<p>We hold no records about you in this system.</p>")
    return out


def _entities(system: str, entities: dict[str, Any], categories: dict[str, list[str]],
              samples: dict[tuple[str, str], list[dict[str, Any]]], rtype: str) -> list[str]:
    rows = []
    for name, e in entities.items():
        links = []
        if e.get("file"):
            links.append(_link(e["file"], "JSON"))
        if e.get("csv"):
            links.append(_link(e["csv"]["file"], "CSV"))
        steps = "; ".join(f"{s['action']}: {s['reason']}" for s in e.get("steps", []) if s.get("reason"))
        left_out = e.get("fields_left_out")
        extra = f"<br><span class=\"small\">Left out (not provided by you): {esc(', '.join(left_out))}</span>" \
            if left_out else ""
        held = "".join(f"<br><span class=\"small\">Kept: {esc(h.get('records'))} until {esc(_date(h.get('until')))}"
                       f" ({esc(h.get('reason'))})</span>" for h in e.get("held") or [])
        count = e.get("records") if "records" in e else e.get("changed", "")
        rows.append(f"<tr><td>{esc(name)}</td><td>{esc(', '.join(categories.get(name, [])))}</td>"
                    f"<td>{esc(count)}</td><td>{esc(STATUS_TEXT.get(e.get('status', ''), e.get('status')))}"
                    f"{extra}{held}</td><td>{' '.join(links)}</td>"
                    f"<td class=\"small\">{esc(steps)}</td></tr>")
    heading, count = ("What we hold about you", "Records") if _exports(rtype) else ("Per kind of record", "Changed")
    out = [f"<h3>{heading}</h3>",
           f"<table><tr><th>Kind of record</th><th>Categories</th><th>{count}</th><th>Status</th><th>Files</th>"
           "<th>What we did</th></tr>", *rows, "</table>"]
    for name in entities:
        preview = samples.get((system, name)) or []
        if preview:
            out += _preview(name, preview, entities[name].get("records", len(preview)))
    return out


def _preview(name: str, rows: list[dict[str, Any]], total: int) -> list[str]:
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{esc(_cell(row.get(c)))}</td>" for c in columns) + "</tr>" for row in rows)
    more = f" (the first {len(rows)} of {total}; all of them are in the files)" if total > len(rows) else ""
    return [f"<details><summary>{esc(name)}: a look at the records{esc(more)}</summary>",
            f"<table><tr>{head}</tr>{body}</table></details>"]


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    return text if len(text) <= 300 else text[:300] + "..."


def _receipts(receipts: list[dict[str, Any]]) -> list[str]:
    out = ["<h3>What we did</h3>"]
    for r in receipts:
        changed = ", ".join(f"{k}: {v}" for k, v in (r.get("changed") or {}).items()) or "nothing to change"
        out.append(f"<p><strong>{esc(str(r.get('action', '')).replace('_', ' '))}</strong>, "
                   f"{esc(STATUS_TEXT.get(r.get('status', ''), r.get('status')))}, "
                   f"{esc(_date(r.get('finished_at')))}: {esc(changed)} ({_link(r['file'], 'receipt')})</p><ul>")
        for h in r.get("held") or []:
            out.append(f"<li>Kept for now: {esc(h.get('records'))} {esc(h.get('entity'))} record(s) until "
                       f"{esc(_date(h.get('until')) or 'the hold ends')}, because of {esc(h.get('reason'))}. "
                       "Their processing is restricted until then.</li>")
        for ref in r.get("vendor_refs") or []:
            out.append(f"<li>Reference at the provider: {esc(ref)}</li>")
        todo = "confirmed done, see below" if r.get("confirmations") else "still to be done by a person"
        for step in r.get("manual_steps") or []:
            out.append(f"<li>Manual step ({todo}): {esc(step)}</li>")
        for c in r.get("confirmations") or []:
            out.append(f"<li>Confirmed {esc(_date(c.get('at')))}: {esc(c.get('note'))}</li>")
        for line in r.get("details") or []:
            out.append(f"<li class=\"small\">{esc(line)}</li>")
        out.append("</ul>")
    return out


def _rights(ctl: dict[str, Any]) -> list[str]:
    authority = ctl.get("supervisory_authority") or "the data protection authority"
    url = ctl.get("supervisory_authority_url")
    authority_html = f"{esc(authority)} ({_external(url)})" if url else esc(authority)
    contact = ctl.get("contact")
    out = ["<h2>Your rights</h2>", "<p>You can ask us at any time for:</p><ul>"]
    out += [f"<li><strong>{esc(name)}</strong>: {esc(text)}</li>" for name, text in RIGHTS]
    out.append("</ul>")
    if contact:
        out.append(f"<p>Write to {esc(ctl.get('name'))} at <strong>{esc(contact)}</strong> to use any of them; "
                   "we answer within one month.</p>")
    if ctl.get("privacy_policy_url"):
        out.append(f"<p>Our privacy policy: {_external(ctl['privacy_policy_url'])}</p>")
    out.append(f"<p>If you think we process your data unlawfully, you can complain to {authority_html}.</p>")
    return out


def _external(url: str) -> str:
    """An address shown as text to copy, not a link: the page loads and opens nothing by itself."""
    return f"<code>{esc(url)}</code>"


def _about(manifest: dict[str, Any]) -> list[str]:
    return ["<h2>About this bundle</h2>",
            "<p class=\"small\"><code>manifest.json</code> lists every file with its SHA-256 checksum and size, and "
            "for each system what was done and why. <code>data/</code> holds your records as JSON (and CSV where "
            "they form a table); <code>files/</code> holds documents; <code>receipts/</code> records erasure and "
            f"restriction. {esc(manifest.get('csv_note', ''))}.</p>"]

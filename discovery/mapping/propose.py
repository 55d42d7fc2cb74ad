"""A data-map fragment for review, from a scan: entities, identity columns, categories, references.

The fragment parses as a data-map system (connectors.sql_map.parse_system) and every line a person must judge
carries a comment: the category's confidence and evidence, whether a reference is a foreign key or inferred
from names and values, which tables were left out and why. Erasure is proposed conservatively: rows with
identity columns are masked (their personal columns hashed or nulled), rows reached only through a reference are
deleted when nothing below them stays, and everything else is kept with a reason to write.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from connectors.sql_map import parse_system
from discovery.mapping import names as n
from discovery.mapping.scan_sql import ColumnScan, InferredReference, SqlScan, TableScan

# category -> the data-map field category (what the bundle page groups by)
FIELD_CATEGORY = {n.EMAIL: "contact", n.PHONE: "contact", n.ADDRESS: "contact", n.NAME: "identity",
                  n.NATIONAL_ID: "identity", n.BIRTH_DATE: "identity", n.IP: "usage", n.ONLINE_ID: "usage",
                  n.BANK_ACCOUNT: "billing", n.PAYMENT_CARD: "billing", n.FREE_TEXT: "content"}
ACCOUNT_WORDS = ("kunde", "customer", "account", "client", "klient", "member", "medlem")
_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def q(value: str) -> str:
    """A YAML scalar for a name: plain when safe, else double-quoted (JSON strings are YAML)."""
    if _PLAIN.match(value) and value.lower() not in ("yes", "no", "on", "off", "true", "false", "null", "y", "n"):
        return value
    return json.dumps(value, ensure_ascii=False)


@dataclass
class _Entity:
    name: str
    table: TableScan
    identities: dict[str, list[ColumnScan]] = field(default_factory=dict)
    references: dict[str, tuple[str, str, bool, str]] = field(default_factory=dict)  # col -> entity, col, owner, why
    fields: list[ColumnScan] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _identity_type(col: ColumnScan) -> str | None:
    if col.category == n.EMAIL:
        return "email"
    if col.category == n.PHONE:
        return "phone"
    if col.category == n.ONLINE_ID and any(w in "".join(n.words(col.name)) for w in ACCOUNT_WORDS):
        return "account_id"
    return None


def _why(col: ColumnScan) -> str:
    return f"{col.category}, {col.confidence:.2f}: " + "; ".join(col.evidence)


def _entity_name(table: str, taken: set[str]) -> str:
    base = "_".join(n.words(table)) or "table"
    if base[0].isdigit():
        base = f"t_{base}"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def propose(scan: SqlScan, url_env: str, *, linked: list[InferredReference] | None = None) -> str:
    """The YAML fragment for one system. `linked` adds references from other systems' scans into this one
    (their columns holding this system's keys): both ends become `account_id` identities."""
    refs = [r for r in scan.references + list(linked or []) if r.system == scan.system or r.to_system == scan.system]
    tables = {t.name: t for t in scan.tables}
    local = [r for r in refs if r.system == r.to_system == scan.system and r.table != r.to_table
             and r.table in tables and r.to_table in tables]
    chosen = {t.name for t in scan.tables if t.personal()}
    # tables owned by a chosen table (its orders, their lines) hold the person's data too
    for _ in range(len(tables)):
        more = {r.table for r in local if r.to_table in chosen} - chosen
        if not more:
            break
        chosen |= more
    # a personal column holding another system's key, or a key another system's column holds: account_id
    cross_ids: dict[tuple[str, str], str] = {}
    for r in refs:
        if r.system != r.to_system:
            mine = (r.table, r.column) if r.system == scan.system else (r.to_table, r.to_column)
            other = f"{r.to_system}.{r.to_table}.{r.to_column}" if r.system == scan.system else \
                f"{r.system}.{r.table}.{r.column}"
            cross_ids[mine] = f"links to {other} ({r.evidence}): the shared type links the two systems"
            chosen.add(mine[0])
    taken: set[str] = set()
    entities = {t: _Entity(_entity_name(t, taken), tables[t]) for t in sorted(chosen) if t in tables}
    for table, entity in entities.items():
        t = entity.table
        for col in t.columns:
            kind = _identity_type(col) if col.personal else None
            if (table, col.name) in cross_ids:
                kind = kind or "account_id"
            if kind:
                entity.identities.setdefault(kind, []).append(col)
            if col.personal:
                entity.fields.append(col)
    owners = _owner_edges(local, entities)
    for r in local:
        if r.table in entities and r.to_table in entities:
            owner = (r.table, r.to_table) in owners
            entity = entities[r.table]
            if r.column not in entity.references:
                entity.references[r.column] = (entities[r.to_table].name, r.to_column, owner, r.how + (
                    f": {r.evidence}" if r.how != "foreign key" else ""))
    # usable: entities with identity columns, and those owned or related to a usable one; references to the
    # others are dropped (those are proposed commented out, for a person to tie to someone)
    by_name = {e.name: table for table, e in entities.items()}
    usable = {table for table, e in entities.items() if e.identities}
    while more := {table for table, e in entities.items() if table not in usable
                   and any(by_name[target] in usable for target, *_ in e.references.values())}:
        usable |= more
    for e in entities.values():
        e.references = {c: r for c, r in e.references.items() if by_name[r[0]] in usable}
    strategies = _strategies({t: e for t, e in entities.items() if t in usable})
    lines = [f"# Proposed by `dsar datamap scan {scan.system}`: review every line before adding it to the data map.",
             f"# {len(scan.tables)} tables scanned in {scan.seconds}s; a column is personal at confidence >= "
             f"{scan.threshold}; sampled values were never stored.",
             *([f"# PARTIAL: {p}" for p in scan.problems]),
             "systems:", f"  {q(scan.system)}:", "    kind: sql", f"    url_env: {q(url_env)}", "    entities:"]
    left_out = sorted(set(tables) - set(entities))
    for table, entity in entities.items():
        block = _entity_lines(entity, strategies.get(table, {"strategy": "keep", "reason": "-"}), cross_ids)
        if table in usable:
            lines += block
        else:
            lines.append(f"      # {q(entity.name)}: table {table} holds personal columns, but nothing ties a row to a "
                         "person (no e-mail, phone or account column, no reference): add identities or references")
            lines += ["      # " + line[6:] for line in block]
    if left_out:
        lines.append(f"# not proposed (no personal column, no reference to a proposed table): {', '.join(left_out)}")
    if not usable:
        lines.append("      {}")
    text = "\n".join(lines) + "\n"
    if usable:
        check(scan.system, text)
    return text


def check(system: str, text: str) -> None:
    """The fragment must be a valid data-map system: raises connectors.base.PermanentError naming the key."""
    parsed = yaml.safe_load(text)
    parse_system(system, parsed["systems"][system])


def _owner_edges(local: list[InferredReference], entities: dict[str, _Entity]) -> set[tuple[str, str]]:
    """(child, parent) ownership edges, leaving out any that would close a cycle (those become relations)."""
    edges: set[tuple[str, str]] = set()
    parents: dict[str, set[str]] = {}

    def reaches(a: str, b: str) -> bool:
        seen, todo = set(), [a]
        while todo:
            x = todo.pop()
            if x == b:
                return True
            if x not in seen:
                seen.add(x)
                todo += parents.get(x, ())
        return False

    for r in sorted(local, key=lambda r: (r.how != "foreign key", r.table, r.column)):
        if r.table in entities and r.to_table in entities and not reaches(r.to_table, r.table):
            edges.add((r.table, r.to_table))
            parents.setdefault(r.table, set()).add(r.to_table)
    return edges


def _mask(entity: _Entity) -> dict[str, str]:
    keys = set(entity.table.primary_key) | set(entity.references)
    out = {}
    for col in entity.fields:
        if col.name in keys:
            continue
        if col.family == "text":
            out[col.name] = "hash"
        elif col.nullable:
            out[col.name] = "null"
    return out


def _strategies(entities: dict[str, _Entity]) -> dict[str, dict[str, Any]]:
    children: dict[str, list[str]] = {t: [] for t in entities}
    for table, e in entities.items():
        for target_entity, _col, owner, _why in e.references.values():
            if owner:
                parent = next(t for t, x in entities.items() if x.name == target_entity)
                children[parent].append(table)
    out: dict[str, dict[str, Any]] = {}

    def decide(table: str) -> dict[str, Any]:
        if table in out:
            return out[table]
        out[table] = {"strategy": "keep"}  # a guard against cycles; replaced below
        e = entities[table]
        below = [decide(c) for c in children[table]]
        mask = _mask(e)
        if not e.identities and all(b["strategy"] == "delete" for b in below):
            out[table] = {"strategy": "delete"}
        elif mask:
            out[table] = {"strategy": "mask", "mask": mask}
        else:
            out[table] = {"strategy": "keep",
                          "reason": "proposed by dsar datamap scan: decide how these rows are erased"}
        return out[table]

    for table in entities:
        decide(table)
    return out


def _entity_lines(e: _Entity, erase: dict[str, Any], cross: dict[tuple[str, str], str]) -> list[str]:
    t = e.table
    personal = t.personal()
    rows = f"~{t.rows_estimate} rows" if t.rows_estimate is not None else "rows unknown"
    lines = [f"      {q(e.name)}:  # {len(personal)} personal of {len(t.columns)} columns; {rows}; "
             f"sampled {t.sampled_rows} ({t.sampling or 'no sample'})" + (f"; PARTIAL: {t.error}" if t.error else ""),
             f"        table: {q(t.name)}"]
    key = t.primary_key or next((u for u in t.unique if u), [])
    if not key:
        lines.append("        primary_key: id  # NO primary key or unique constraint in the database: give one")
    elif len(key) == 1:
        lines.append(f"        primary_key: {q(key[0])}")
    else:
        lines.append(f"        primary_key: [{', '.join(q(c) for c in key)}]")
    if e.identities:
        lines.append("        identities:")
        for kind, cols in e.identities.items():
            value = q(cols[0].name) if len(cols) == 1 else f"[{', '.join(q(c.name) for c in cols)}]"
            why = "; ".join(cross.get((t.name, c.name)) or _why(c) for c in cols)
            lines.append(f"          {kind}: {value}  # {why}")
    if e.references:
        lines.append("        references:")
        for col, (entity, to_col, owner, why) in e.references.items():
            target = f"{entity}.{to_col}"
            value = target if owner else f"{{to: {target}, owner: false}}"
            note = why if owner else f"{why}; a relation, not ownership (ownership here would close a cycle)"
            lines.append(f"          {q(col)}: {value}  # {note}")
    if e.fields:
        lines.append("        fields:")
        for field_col in e.fields:
            lines.append(f"          {q(field_col.name)}: {FIELD_CATEGORY[field_col.category]}  # {_why(field_col)}")
    others = [c.name for c in t.columns if not c.personal]
    if others:
        lines.append(f"        # not personal: {', '.join(others)}")
    if erase["strategy"] == "mask":
        mask = ", ".join(f"{q(c)}: {json.dumps(m)}" for c, m in erase["mask"].items())
        lines.append(f"        erase: {{strategy: mask, mask: {{{mask}}}}}  # review: the row stays, these go")
    elif erase["strategy"] == "delete":
        lines.append("        erase: {strategy: delete}  # reached through its owner; review")
    else:
        lines.append(f"        erase: {{strategy: keep, reason: {json.dumps(erase['reason'])}}}  # review")
    return lines

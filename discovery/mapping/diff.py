"""What the live SQL systems hold that the data map does not (`dsar datamap diff`, and warnings in `dsar check`).

Three kinds of drift, each a problem a deploy gate should stop on:
- `unmapped`: a column classified as personal in a table the data map does not list, or in a mapped table but
  not among the entity's columns: it would be left out of every access and erasure;
- `dropped`: a mapped table or column that no longer exists: requests on that entity would fail;
- `type_break`: a mask or restriction marker the column's current type cannot hold (connectors.sql_values says
  why), e.g. a `hash` mask on a column that became an integer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from connectors import sql_values
from connectors.base import ConnectorError
from connectors.sql_map import EntitySpec, SqlSystemSpec, parse_system
from discovery.engine.datamap import DataMap
from discovery.mapping.scan_sql import SqlScan, SqlScanner, Unreachable


@dataclass
class Finding:
    system: str
    kind: str  # unmapped | dropped | type_break
    table: str
    column: str | None
    detail: str

    def line(self) -> str:
        where = f"{self.table}.{self.column}" if self.column else self.table
        return f"{self.system}: {self.kind}: {where}: {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sql_systems(data_map: DataMap) -> dict[str, SqlSystemSpec]:
    """The enabled SQL systems of the data map, parsed (a bad entry raises ConnectorError naming it)."""
    return {s.name: parse_system(s.name, dict(s.settings)) for s in data_map.enabled() if s.info.kind == "sql"}


def diff_scan(spec: SqlSystemSpec, scan: SqlScan, scanner: SqlScanner | None = None) -> list[Finding]:
    """Drift between one system's data map entry and its scan (with `scanner`, type breaks too)."""
    out: list[Finding] = []
    system = scan.system
    mapped: dict[str, list[tuple[str, EntitySpec]]] = {}
    for name, entity in spec.entities.items():
        mapped.setdefault(entity.table, []).append((name, entity))
    for table in scan.tables:
        entities = mapped.get(table.name)
        covered = set().union(*(e.columns() for _, e in entities)) if entities else set()
        for col in table.personal():
            if col.name in covered:
                continue
            where = "table not in the data map" if not entities else \
                f"not a column of entity {', '.join(n for n, _ in entities)}"
            out.append(Finding(system, "unmapped", table.name, col.name,
                               f"{col.category} (confidence {col.confidence:.2f}), {where}"))
    for table_name, entities in mapped.items():
        live = scan.table(table_name)
        if live is None:
            if not scan.partial:
                out += [Finding(system, "dropped", table_name, None, f"entity {n}: the table no longer exists")
                        for n, _ in entities]
            continue
        present = {c.name for c in live.columns}
        for name, entity in entities:
            for column in sorted(entity.columns() - present):
                out.append(Finding(system, "dropped", table_name, column,
                                   f"entity {name}: mapped column no longer exists"))
            if scanner is not None:
                out += _type_breaks(system, scanner, name, entity, present)
    return out


def _type_breaks(system: str, scanner: SqlScanner, name: str, entity: EntitySpec, present: set[str]) -> list[Finding]:
    try:
        table = sa.Table(entity.table, sa.MetaData(), autoload_with=scanner.conn)  # sql_values' reflection types
    except SQLAlchemyError:
        return []
    out = []
    for column, method in entity.erase.mask.items():
        if column in present and column in table.c and (why := sql_values.mask_problem(table.c[column], method)):
            out.append(Finding(system, "type_break", entity.table, column, f"entity {name}: erase.mask: {why}"))
    for action, spec in (("restrict", entity.restrict), ("lift", entity.lift)):
        for column, marker in (spec.set.items() if spec else ()):
            if column in present and column in table.c and (why := sql_values.marker_problem(table.c[column], marker)):
                out.append(Finding(system, "type_break", entity.table, column, f"entity {name}: {action}: {why}"))
    return out


def check_warnings(data_map: DataMap, system: str, env: Mapping[str, str], *, sample: int = 20) -> list[str]:
    """`dsar check`'s drift warnings for one SQL system; never raises (the check reports connectivity itself)."""
    try:
        spec = parse_system(system, dict(data_map.systems[system].settings))
        url = env.get(spec.url_env)
        if not url:
            return []
        with SqlScanner(system, url, sample=sample) as scanner:
            scan = scanner.scan()
            findings = diff_scan(spec, scan, scanner)
    except (Unreachable, ConnectorError, SQLAlchemyError, KeyError):
        return []
    except Exception as exc:  # a drift check must never break `dsar check`
        return [f"schema drift not checked ({type(exc).__name__})"]
    lines = [f"drift: {f.kind}: {f.table}{'.' + f.column if f.column else ''}: {f.detail}" for f in findings]
    if scan.partial:
        lines.append("drift: partial scan: " + "; ".join(scan.problems)[:300])
    return lines

"""`dsar check` for a SQL system: the data map against the live schema, before any request runs.

Problems make the system unhealthy (a request would fail or do harm); warnings deserve a look.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from connectors.base import Health, IdentityType, PermanentError
from connectors.sql_map import EntitySpec, Fixed, risks

if TYPE_CHECKING:
    from connectors.sql import SqlConnector


def check_system(self: SqlConnector) -> Health:
    health = Health(system=self.name, ok=True)
    try:
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
            inspector = sa.inspect(conn)
            for name, entity in self.spec.entities.items():
                _check_entity(self, inspector, name, entity, health)
            health.warnings += risks(self.spec)
            if self.spec.inactivity and inspector.has_table(self.spec.entities[self.spec.inactivity.entity].table):
                try:
                    self._activity(self._table(self.spec.inactivity.entity, conn))
                except PermanentError as exc:
                    health.problems.append(exc.message)
    except OperationalError as exc:
        from connectors.sql import db_reason

        health.problems.append(f"cannot connect to the database: {db_reason(exc)}")
    if self.s3:
        health.problems += self.s3.problems({self._bucket(e) for e in self.spec.entities.values() if e.files})
    health.ok = not health.problems
    return health

def _check_entity(self: SqlConnector, inspector: Any, name: str, entity: EntitySpec, health: Health) -> None:
    if not inspector.has_table(entity.table):
        health.problems.append(f"entity {name}: table '{entity.table}' does not exist")
        return
    columns = {c["name"]: c for c in inspector.get_columns(entity.table)}
    for col in sorted(entity.columns() - set(columns)):
        health.problems.append(f"entity {name}: column '{col}' does not exist in table {entity.table}")
    unique_cols = {tuple(u["column_names"]) for u in inspector.get_unique_constraints(entity.table)}
    unique_cols |= {tuple(i["column_names"]) for i in inspector.get_indexes(entity.table) if i.get("unique")}
    for col, method in entity.erase.mask.items():
        info = columns.get(col)
        if info is None:
            continue
        if method == "null" and not info.get("nullable", True):
            health.problems.append(f"entity {name}: masks NOT NULL column {col} with null")
        if (isinstance(method, Fixed) or method == "redact") and (col,) in unique_cols:
            health.problems.append(f"entity {name}: column {col} is unique; mask it with 'hash', not one value")
    mapped = entity.columns()
    for col in sorted(set(columns) - mapped):
        health.warnings.append(f"entity {name}: column {entity.table}.{col} is not in the data map (not exported)")
    _check_identity_indexes(self, inspector, name, entity, health)

def _check_identity_indexes(self: SqlConnector, inspector: Any, name: str, entity: EntitySpec, health: Health) -> None:
    """Every identity column is searched on every request: without an index each search scans the table."""
    indexes = inspector.get_indexes(entity.table)
    leading = {i["column_names"][0] for i in indexes if i.get("column_names") and i["column_names"][0]}
    leading |= {entity.primary_key}
    leading |= {c for u in inspector.get_unique_constraints(entity.table) for c in u["column_names"][:1]}
    for type_, column in entity.identities.items():
        if type_ == IdentityType.EMAIL:
            if self.engine.dialect.name != "postgresql":
                continue  # SQLite does not report expression indexes
            indexed = any(column in (expr or "") and "lower" in (expr or "")
                          for i in indexes for expr in i.get("expressions") or [])
            if not indexed:
                health.warnings.append(
                    f"entity {name}: no index on lower(trim({column})); locating will scan {entity.table}")
        elif column not in leading:
            health.warnings.append(f"entity {name}: identity column {column} ({type_}) has no index; "
                                   f"locating will scan {entity.table}")

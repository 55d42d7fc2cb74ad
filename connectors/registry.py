"""The one explicit list of connector kinds. A new system is one line here plus its module."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from connectors.base import Connector, ConnectorContext, PermanentError

KINDS: dict[str, str] = {
    "sql": "connectors.sql:SqlConnector",
    "freshchat": "connectors.freshchat:FreshchatConnector",
    "mautic": "connectors.mautic:MauticConnector",
    "salesmanago": "connectors.salesmanago:SalesmanagoConnector",
    "matomo": "connectors.matomo:MatomoConnector",
}


def connector_class(kind: str) -> type[Connector]:
    target = KINDS.get(kind)
    if target is None:
        known = ", ".join(sorted(KINDS))
        raise PermanentError(kind, f"unknown connector kind '{kind}'; known kinds: {known} "
                                   "(add the module and a line to connectors/registry.py KINDS)")
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)  # type: ignore[no-any-return]


def build(name: str, kind: str, settings: Mapping[str, Any], ctx: ConnectorContext) -> Connector:
    """Instantiate the connector for one configured system."""
    cls = connector_class(kind)
    return cls.from_settings(name, settings, ctx)  # type: ignore[attr-defined, no-any-return]

"""Issue 19 point 5: the bundle page's retention text (discovery/bundle/page.py shows `retention_rules` of every
system's view) comes from the same declarations as the report, for every
system: a SQL entity's `retention:`, a vendor's `retention_rules:` (Matomo's visits kept five years, FreshChat's
chat until the person asks, SALESmanago's setting confirmed by hand) and Mautic's marketing-sweep promises."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from connectors.base import ConnectorContext
from connectors.registry import build
from connectors.retention import render
from discovery.engine.bundles import bundle_view, declared_retention
from discovery.engine.datamap import load_data_map
from tests.conftest import ROOT

PROJECT_MAP = ROOT / "config" / "datamap.yaml"


@pytest.mark.parametrize("code", ["en", "nb"])
def test_every_systems_rules_reach_the_bundle_view(code: str) -> None:
    view = bundle_view(load_data_map(PROJECT_MAP), {}, "access", code)
    rules = {name: about["retention_rules"] for name, about in view.systems.items()}
    expected = {
        "en": {"matomo": "visits: erased 5 years after the visit's last action",
               "freshchat": "conversations: kept until you ask us to delete it",
               "salesmanago": "contact: erased when you withdraw your consent",
               "mautic": "newsletter: kept while you are subscribed; erased 0 day(s) after you unsubscribe",
               "accounts": "orders: erased 5 years after ordered_at"},
        "nb": {"matomo": "visits: slettes 5 år etter besøkets siste handling",
               "freshchat": "conversations: lagres til du ber oss slette det",
               "salesmanago": "contact: slettes når du trekker tilbake samtykket ditt",
               "mautic": "newsletter: lagres så lenge du abonnerer; slettes 0 dag(er)",
               "accounts": "orders: slettes 5 år etter ordered_at"},
    }[code]
    for system, start in expected.items():
        assert any(r.startswith(start) for r in rules[system]), (system, rules[system])


def test_the_texts_are_the_connectors_own(tmp_path: Path) -> None:
    """The page reads the declarations without a connection; what it says equals what each vendor connector
    states to `dsar retention plan|report` (built here from the same entry, offline)."""
    dm = load_data_map(PROJECT_MAP)
    env = {"MATOMO_TOKEN": "t", "FRESHCHAT_TOKEN": "t", "SALESMANAGO_CLIENT_ID": "c", "SALESMANAGO_API_SECRET": "s",
           "SALESMANAGO_API_KEY": "k", "MAUTIC_USERNAME": "u", "MAUTIC_PASSWORD": "p"}
    for name in ("matomo", "freshchat", "salesmanago"):
        entry = dm.systems[name]
        settings: dict[str, Any] = dict(entry.settings)
        env.update({v: "x" for k, v in settings.items() if k.endswith("_env") and isinstance(v, str)})
        conn = build(name, entry.info.kind, settings, ConnectorContext(env=env))
        try:
            stated = [render(r.text) for r in conn.retention_rules()]
        finally:
            conn.close()
        assert [render(t) for t in declared_retention(name, entry.info.kind, settings)] == stated, name


def test_a_declaration_the_connector_refuses_shows_nothing(tmp_path: Path) -> None:
    raw = yaml.safe_load(PROJECT_MAP.read_text(encoding="utf-8"))
    raw["systems"]["freshchat"]["retention_rules"] = [{"entity": "conversations", "by": "dsar", "after": "1 year",
                                                       "reason": "not possible through FreshChat's API"}]
    path = tmp_path / "datamap.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    entry = load_data_map(path).systems["freshchat"]
    assert declared_retention("freshchat", "freshchat", entry.settings) == []

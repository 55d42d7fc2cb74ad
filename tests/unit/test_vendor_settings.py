"""The vendor connectors' settings models: what they accept and refuse, and that docs/datamap.md shows them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from connectors.base import IdentityType, PermanentError
from connectors.matomo import FIND_CAP
from connectors.vendor_settings import (
    DISCOVERY_KEYS,
    MODELS,
    FreshchatSettings,
    MatomoSettings,
    MauticSettings,
    SalesmanagoSettings,
    VendorSettings,
    parse,
    render_doc,
)
from discovery.engine.datamap import SystemInfo, load_data_map

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "datamap.md"

VALID: dict[str, dict[str, Any]] = {
    "freshchat": {"kind": "freshchat", "base_url": "https://acme.freshchat.com/v2", "token_env": "DSAR_FC_TOKEN",
                  "reference_id_identity": None, "items_per_page": 20},
    "mautic": {"kind": "mautic", "base_url": "https://mautic.example.com/", "auth": "OAuth2",
               "client_id_env": "DSAR_M_ID", "client_secret_env": "DSAR_M_SECRET", "rate_per_second": 0,
               "page_size": "25", "dnc_channels": ["email", "sms"], "trial_field": "trial_ends_at"},
    "salesmanago": {"kind": "salesmanago", "base_url": "https://app3.salesmanago.com/api", "owner": " m@example.no ",
                    "client_id_env": "A", "api_key_env": "B", "api_secret_env": "C", "paths": None,
                    "export_data_types": ["CONTACT"]},
    "matomo": {"kind": "matomo", "base_url": "https://analytics.example.com/index.php", "token_env": "DSAR_MT",
               "id_sites": [3, "1", 3], "user_id_identity": "account_id"},
}

# (kind, change to the valid settings, the key the error must name); None removes the key.
INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("freshchat", {"base_url": "acme.freshchat.com/v2"}, "base_url"),
    ("freshchat", {"token_env": None}, "token_env"),
    ("freshchat", {"items_per_page": 101}, "items_per_page"),
    ("freshchat", {"items_per_page": 51}, "items_per_page"),  # above FreshChat's cap of 50 messages a page
    ("freshchat", {"timeout_s": True}, "timeout_s"),
    ("freshchat", {"reference_id_identity": "shoe_size"}, "reference_id_identity"),
    ("freshchat", {"suports_user_delete": False}, "suports_user_delete"),
    ("mautic", {"base_url": "https://mautic.example.com/api"}, "base_url"),
    ("mautic", {"auth": "apikey"}, "auth"),
    ("mautic", {"timeout_s": "soon"}, "timeout_s"),
    ("mautic", {"page_size": True}, "page_size"),
    ("mautic", {"dnc_channels": "email"}, "dnc_channels"),
    ("mautic", {"dnc_comment": "ask jane.doe@example.com"}, "dnc_comment"),
    ("mautic", {"trial_field": "Trial Ends"}, "trial_field"),
    ("salesmanago", {"owner": None}, "owner"),
    ("salesmanago", {"owner": "marketing"}, "owner"),
    ("salesmanago", {"poll_timeout_s": 0}, "poll_timeout_s"),
    ("salesmanago", {"paths": {"erase": "contact/remove"}}, "paths"),
    ("salesmanago", {"export_data_types": "CONTACT"}, "export_data_types"),
    ("salesmanago", {"delete_permanently": "no"}, "delete_permanently"),
    ("matomo", {"base_url": None}, "base_url"),
    ("matomo", {"id_sites": "shop"}, "id_sites"),
    ("matomo", {"chunk_size": "100"}, "chunk_size"),
    ("matomo", {"user_id_identity": "phone"}, "user_id_identity"),
]


def test_valid_settings_are_read_with_their_defaults() -> None:
    fc = parse(FreshchatSettings, "freshchat", VALID["freshchat"])
    assert (fc.reference_id_identity, fc.items_per_page, fc.timeout_s, fc.parallel_calls) == (None, 20, 30, 4)
    assert FreshchatSettings.model_fields["reference_id_identity"].default is IdentityType.ACCOUNT_ID
    m = parse(MauticSettings, "mautic", VALID["mautic"])
    assert (m.base_url, m.auth, m.rate_per_second, m.page_size) == ("https://mautic.example.com", "oauth2", None, 25)
    assert (m.dnc_channels, m.dnc_table, m.trial_field) == (("email", "sms"), "lead_donotcontact", "trial_ends_at")
    sm = parse(SalesmanagoSettings, "salesmanago", VALID["salesmanago"])
    assert (sm.owner, sm.paths, sm.export_data_types, sm.delete_permanently) == ("m@example.no", {}, ("CONTACT",), True)
    mt = parse(MatomoSettings, "matomo", VALID["matomo"])
    assert (mt.base_url, mt.id_sites, mt.filter_limit) == ("https://analytics.example.com", "3,1", FIND_CAP)


def test_salesmanago_addressee_types_are_lower_case_as_on_the_wire() -> None:
    # Issue 18 point 3 (vendor-source-check.md S9): every addresseeType seen on the wire is lower case.
    sm = parse(SalesmanagoSettings, "salesmanago", VALID["salesmanago"])
    assert (sm.monitoring_addressee_type, sm.export_addressee_type, sm.stop_monitoring_on_erase) == (
        "email", "email", True)


def test_freshchat_defaults_follow_its_sources() -> None:
    # Issue 18 points 5 and 6 (vendor-source-check.md F7, F6): no FreshChat source has a user DELETE; FreshChat
    # answers at most 50 messages a page.
    fc = parse(FreshchatSettings, "freshchat", {k: v for k, v in VALID["freshchat"].items() if k != "items_per_page"})
    assert (fc.supports_user_delete, fc.items_per_page) == (False, 50)


def test_a_message_page_above_freshchats_cap_is_refused_saying_why() -> None:
    with pytest.raises(PermanentError) as err:
        parse(FreshchatSettings, "freshchat", {**VALID["freshchat"], "items_per_page": 100})
    assert str(err.value) == (
        "freshchat: data map: items_per_page: must be at most 50: FreshChat answers no more than 50 messages a "
        "page, so a larger page looks like the last one and the export would stop after page 1")


@pytest.mark.parametrize(("kind", "change", "key"), INVALID)
def test_a_bad_setting_is_one_line_naming_the_key(kind: str, change: dict[str, Any], key: str) -> None:
    settings = {k: v for k, v in {**VALID[kind], **change}.items() if v is not None or k not in change}
    with pytest.raises(PermanentError) as err:
        parse(MODELS[kind], kind, settings)
    assert str(err.value).startswith(f"{kind}: data map: {key}: ")
    assert "\n" not in str(err.value) and "jane" not in str(err.value)


def test_discovery_keys_are_never_unknown_settings() -> None:
    assert set(SystemInfo.model_fields) == DISCOVERY_KEYS
    entry = {**VALID["freshchat"], "enabled": True, "title": "Chat", "processors": ["Freshworks"], "holds": "x"}
    assert parse(FreshchatSettings, "freshchat", entry).token_env == "DSAR_FC_TOKEN"


def test_the_project_data_map_and_the_sandbox_settings_are_accepted() -> None:
    from sandbox.launch import make_sims

    dm = load_data_map(ROOT / "config" / "datamap.yaml")
    for name, sim in make_sims().items():
        system = dm.systems[name]
        parse(MODELS[system.info.kind], name, system.settings)
        parse(MODELS[system.info.kind], name, {"kind": system.info.kind, **sim.settings("http://127.0.0.1:1")})


def test_secrets_are_only_named() -> None:
    for model in MODELS.values():
        for key, field in model.model_fields.items():
            secret = isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("secret") is True
            assert secret == key.endswith("_env"), f"{model.__name__}.{key}"
            assert field.description, f"{model.__name__}.{key} has no description"


# -- docs/datamap.md ----------------------------------------------------------------------


def doc_keys(kind: str) -> list[str]:
    block = re.search(rf"<!-- settings:{kind} -->\n(.*?)<!-- /settings -->", DOC.read_text(), re.S)
    assert block, f"docs/datamap.md has no settings table for {kind}"
    return re.findall(r"^\| `(\w+)` \|", block.group(1), re.M)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_the_doc_lists_exactly_the_models_keys(kind: str) -> None:
    model: type[VendorSettings] = MODELS[kind]
    assert doc_keys(kind) == list(model.model_fields)


def test_the_doc_tables_are_the_generated_ones() -> None:
    text = DOC.read_text()
    assert render_doc(text) == text, "run: .venv/bin/python -m connectors.vendor_settings docs/datamap.md"


def test_every_connector_kind_is_documented() -> None:
    kinds = re.findall(r"^### `kind: (\w+)`", DOC.read_text(), re.M)
    assert set(kinds) == set(MODELS)

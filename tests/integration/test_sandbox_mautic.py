"""The Mautic connector against MauticSim over a real socket."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from connectors.base import ConnectorContext, Identities, Identity, IdentityType, PermanentError
from connectors.mautic import MauticConnector
from sandbox.mautic import UNSUBSCRIBED_EMAIL, MauticSim
from sandbox.people import DECOY_EMAIL, JANE, JOHN, OLA
from sandbox.server import Served

RESIDUE = ("email_stats", "page_hits", "form_submissions")


@pytest.fixture
def sim() -> MauticSim:
    sim = MauticSim()
    sim.seed_demo()
    return sim


@pytest.fixture
def served(sim: MauticSim) -> Iterator[Served]:
    with Served(sim.app) as server:
        yield server


def make(sim: MauticSim, served: Served, auth: str = "oauth2", **extra: Any) -> MauticConnector:
    settings = {**sim.settings(served.url, auth=auth), "activity_page_size": 2, "page_size": 2, **extra}
    return MauticConnector.from_settings("mautic", settings, ConnectorContext(env=sim.env()),
                                         request_id="REQ-1")


def email(value: str) -> Identities:
    return Identities([Identity(IdentityType.EMAIL, value)])


@pytest.mark.parametrize("auth", ["oauth2", "basic"])
def test_locate_and_export_both_of_janes_contacts_and_nobody_else(sim: MauticSim, served: Served, auth: str) -> None:
    conn = make(sim, served, auth)
    jane_ids = sim.contact_ids(JANE.email)
    assert len(jane_ids) == 2

    hits = conn.locate(email(JANE.email))
    assert hits.found and hits.counts == {"contact": 2}
    learned = {(i.type, i.value) for i in hits.learned}
    assert {v for t, v in learned if t == IdentityType.MAUTIC_CONTACT_ID} == {str(i) for i in jane_ids}
    assert (IdentityType.PHONE, JANE.phone) in learned

    held = sim.holdings(JANE.email)
    records = list(conn.export(email(JANE.email)))
    counts = Counter(r.entity for r in records)
    assert counts["contact"] == 2
    # every timeline source of hers, over several pages of two
    assert counts["activity"] == held["activity"] + held["email_stats"] + held["page_hits"] + held["form_submissions"]
    assert counts["activity"] > 4
    for entity in ("notes", "segments", "campaigns", "companies", "devices"):
        assert counts[entity] == held[entity] > 0, entity
    assert {r.fields["contact_id"] for r in records if r.entity != "contact"} == set(jane_ids)
    assert len({(r.entity, r.record_id) for r in records}) == len(records)

    dump = orjson.dumps([r.fields for r in records]).decode().lower()
    for other in (JOHN.email, OLA.email, DECOY_EMAIL, "janet", JOHN.last_name.lower()):
        assert other not in dump


def test_decoy_finds_only_the_decoy(sim: MauticSim, served: Served) -> None:
    hits = make(sim, served).locate(email(DECOY_EMAIL))
    found = {i.value for i in hits.learned if i.type == IdentityType.MAUTIC_CONTACT_ID}
    assert found == {str(i) for i in sim.contact_ids(DECOY_EMAIL)}
    assert not found & {str(i) for i in sim.contact_ids(JANE.email)}


def test_erase_leaves_only_the_residue_the_manual_step_names(sim: MauticSim, served: Served) -> None:
    others = {p: sim.holdings(p) for p in (JOHN.email, OLA.email, DECOY_EMAIL)}
    conn = make(sim, served, "basic")
    receipt = conn.erase(email(JANE.email))
    assert receipt.changed == {"contact": 2}

    left = sim.holdings(JANE.email)
    assert {kind: n for kind, n in left.items() if n} == {kind: left[kind] for kind in RESIDUE}
    assert all(left[kind] > 0 for kind in RESIDUE)
    step = " ".join(receipt.manual_steps)
    assert all(kind in step for kind in RESIDUE)

    assert conn.locate(email(JANE.email)).found is False
    assert {p: sim.holdings(p) for p in others} == others


def test_restrict_then_lift(sim: MauticSim, served: Served) -> None:
    conn = make(sim, served)
    jane_ids = sim.contact_ids(JANE.email)
    john_ids = sim.contact_ids(JOHN.email)

    assert conn.restrict(email(JANE.email)).changed == {"contact": 2}
    for cid in jane_ids:
        (entry,) = sim.dnc_entries(cid)
        assert entry["reason"] == 3 and entry["comments"] == "dsar restriction REQ-1"
    assert all(sim.dnc_entries(cid) == [] for cid in john_ids)

    assert conn.lift_restriction(email(JANE.email)).changed == {"contact": 2}
    assert all(sim.dnc_entries(cid) == [] for cid in jane_ids)
    assert conn.lift_restriction(email(JANE.email)).changed == {}


def test_oauth2_token_is_reused_and_renewed_after_the_vendor_expires_it(sim: MauticSim, served: Served) -> None:
    conn = make(sim, served)
    conn.locate(email(JANE.email))
    conn.locate(email(JOHN.email))
    assert sim.token_requests == 1
    sim.expire_tokens()  # our clock still trusts the token: the 401 must trigger one renewal
    assert conn.locate(email(JANE.email)).found
    assert sim.token_requests == 2


@pytest.mark.parametrize(
    ("auth", "setup", "expected"),
    [
        ("oauth2", lambda s: setattr(s, "api_enabled", False), "API is disabled"),
        ("basic", lambda s: setattr(s, "basic_auth_enabled", False), "basic auth is disabled"),
        ("basic", lambda s: setattr(s, "PASSWORD", "changed"), "user name or password"),
        ("oauth2", lambda s: setattr(s, "CLIENT_SECRET", "changed"), "invalid_client"),
    ],
)
def test_check(sim: MauticSim, served: Served, auth: str, setup: Any, expected: str) -> None:
    conn = make(sim, served, auth)
    assert conn.check().ok
    conn = make(sim, served, auth)  # a fresh connector: no cached token
    setup(sim)
    health = conn.check()
    assert health.ok is False and expected in health.problems[0]


def test_the_company_jane_shares_with_another_contact_is_never_learned_from_or_deleted(
    sim: MauticSim, served: Served
) -> None:
    (acme,) = [cid for cid, c in sim.companies.items() if c["companyname"] == "Acme AS"]
    members = {m["lead_id"] for m in sim.company_members if m["company_id"] == acme}
    jane_ids = set(sim.contact_ids(JANE.email))
    (decoy,) = sim.contact_ids(DECOY_EMAIL)
    assert decoy in members and members & jane_ids  # seed_demo: one company, two people
    conn = make(sim, served)

    hits = conn.locate(email(JANE.email))
    assert all(i.via.startswith("mautic: contact ") for i in hits.learned)
    assert {i.value for i in hits.learned} & {DECOY_EMAIL, str(decoy), "+61412345678"} == set()

    companies = [r for r in conn.export(email(JANE.email), entities=["companies"])]
    assert [r.fields["companyname"] for r in companies] == ["Acme AS"]
    assert DECOY_EMAIL not in orjson.dumps([r.fields for r in companies]).decode()

    receipt = conn.erase(email(JANE.email))
    assert receipt.skipped == {"companies": {
        "company left alone: an organisation other contacts may share (only the contact's link goes)": 1}}
    assert acme in sim.companies and sim.companies[acme]["companyname"] == "Acme AS"
    assert {m["lead_id"] for m in sim.company_members if m["company_id"] == acme} == {decoy}


# -- issue 18: vendor behaviour as Mautic's own source has it ------------------------------------


def test_the_retention_sweep_reads_the_stats_rows_and_finds_the_unsubscribed(sim: MauticSim, served: Served) -> None:
    # The sim answers GET /api/stats/{table} under `stats` as Mautic does (StatsApiController.php L27, L48-49);
    # before issue 18 the connector read the table-named key and the sweep found nobody.
    assert make(sim, served).unsubscribed_contacts() == [UNSUBSCRIBED_EMAIL]


def test_the_retention_sweep_fails_loudly_on_a_table_mautic_does_not_serve(sim: MauticSim, served: Served) -> None:
    with pytest.raises(PermanentError, match="serves no stats table 'mautic_lead_dnc'"):
        make(sim, served, dnc_table="mautic_lead_dnc").unsubscribed_contacts()


def test_restrict_then_lift_keeps_the_persons_own_unsubscribe_and_a_bounce(sim: MauticSim, served: Served) -> None:
    conn = make(sim, served)
    (kari,) = sim.contact_ids(UNSUBSCRIBED_EMAIL)  # unsubscribed herself (reason 1) in seed_demo
    bounced = sim.add_contact("bo.unce@example.org", "Bo", "Unce")
    sim.add_dnc(bounced, "email", 2, "hard bounce")

    for address in (UNSUBSCRIBED_EMAIL, "bo.unce@example.org"):
        restricted = conn.restrict(email(address))
        assert restricted.changed == {} and "already has do-not-contact on email" in " ".join(restricted.details)
        lifted = conn.lift_restriction(email(address))
        assert lifted.changed == {} and "kept the do-not-contact on email" in " ".join(lifted.details)

    # Both entries are as Mautic set them: before issue 18 the lift deleted them (re-subscribing Kari).
    assert [(e["reason"], e["comments"]) for e in sim.dnc_entries(kari)] == [
        (1, "unsubscribed via the newsletter footer")]
    assert [(e["reason"], e["comments"]) for e in sim.dnc_entries(bounced)] == [(2, "hard bounce")]
    assert conn.is_unsubscribed(UNSUBSCRIBED_EMAIL)


@pytest.mark.parametrize("address", ["o'brien&co@example.com", "mary_o'neil@example.com"])
def test_an_address_with_characters_mautic_encodes_in_where_is_found(
    sim: MauticSim, served: Served, address: str
) -> None:
    # The sim HTML-encodes `where` values as Mautic does (InputHelper::cleanArray): `where ... eq` cannot
    # match these; the strict search command and the exact client-side check can.
    cid = sim.add_contact(address, "Pat", "OBrien")
    lookalike = sim.add_contact(address.replace("_", "x").replace("&", "_"), "Not", "Pat")
    conn = make(sim, served)
    hits = conn.locate(email(address))
    assert {i.value for i in hits.learned if i.type == IdentityType.MAUTIC_CONTACT_ID} == {str(cid)}
    assert conn.erase(email(address)).changed == {"contact": 1}
    assert sim.contact_ids(address) == [] and lookalike in sim.contacts


def test_check_names_oauth2_credentials_not_created_by_an_admin(sim: MauticSim, served: Served) -> None:
    sim.client_created_by_admin = False
    health = make(sim, served).check()
    assert health.ok is False and "unauthorized_client" in health.problems[0]
    assert "created by an admin user" in health.problems[0]

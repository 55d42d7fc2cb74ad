"""The SALESmanago connector against its simulator over a real socket."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from connectors.base import ConnectorContext, Identities, Identity, IdentityType, PermanentError
from connectors.salesmanago import SalesmanagoConnector
from sandbox.people import DECOY_EMAIL, JANE, JOHN, OLA
from sandbox.salesmanago import SalesmanagoSim
from sandbox.server import Served


@pytest.fixture
def sim() -> SalesmanagoSim:
    sim = SalesmanagoSim()
    sim.seed_demo()
    return sim


@pytest.fixture
def served(sim: SalesmanagoSim) -> Iterator[Served]:
    with Served(sim.app) as served:
        yield served


@pytest.fixture
def connector(sim: SalesmanagoSim, served: Served) -> Iterator[SalesmanagoConnector]:
    connector = SalesmanagoConnector.from_settings(
        "salesmanago", sim.settings(served.url), ConnectorContext(env=sim.env())
    )
    yield connector
    connector.close()


def email(address: str) -> Identities:
    return Identities([Identity(IdentityType.EMAIL, address)])


def test_locate_finds_jane_and_learns_her_ids(sim: SalesmanagoSim, connector: SalesmanagoConnector) -> None:
    hits = connector.locate(email(JANE.email))

    assert hits.found and hits.counts == {"contact": 1}
    learned = {(i.type, i.value) for i in hits.learned}
    assert learned == {(IdentityType.SALESMANAGO_CONTACT_ID, sim.contact_id(JANE.email)),
                       (IdentityType.PHONE, JANE.phone)}
    assert connector.locate(email("nobody@example.com")).found is False


def test_export_runs_the_job_and_holds_jane_only(sim: SalesmanagoSim, connector: SalesmanagoConnector) -> None:
    records = list(connector.export(email(JANE.email)))

    assert sim.status_polls == SalesmanagoSim.POLLS_UNTIL_READY + 1  # "not ready" first, then the file
    entities = sorted({r.entity for r in records})
    assert entities == ["contact", "export_contact", "export_ext_event", "export_file", "export_tag", "export_visits"]
    (file_record,) = [r for r in records if r.entity == "export_file"]
    raw = b"".join(file_record.attachments[0].open())
    assert orjson.loads(raw)[0].keys() == {sim.contact_id(JANE.email)}
    dumped = orjson.dumps([r.fields for r in records]).decode().lower() + raw.decode().lower()
    assert JANE.email in dumped and JANE.phone in dumped
    for other in (JOHN, OLA):
        assert other.email not in dumped and other.phone not in dumped and other.last_name.lower() not in dumped
    assert DECOY_EMAIL not in dumped
    assert {r.fields["tagName"] for r in records if r.entity == "export_tag"} == {"NEWSLETTER", "CUSTOMER_JANE"}


def test_erase_leaves_nothing_of_jane_and_everyone_else_intact(
    sim: SalesmanagoSim, connector: SalesmanagoConnector
) -> None:
    assert sim.holdings(JANE.email)
    before = {p: sim.holdings(p) for p in (JOHN.email, OLA.email, DECOY_EMAIL)}

    receipt = connector.erase(email(JANE.email))

    assert receipt.changed == {"contact": 1}
    assert sim.holdings(JANE.email) == {}
    assert {p: sim.holdings(p) for p in before} == before
    assert connector.erase(email(JANE.email)).changed == {"contact": 0}  # a second run finds nothing


def test_restrict_and_lift_flip_the_flags(sim: SalesmanagoSim, connector: SalesmanagoConnector) -> None:
    assert sim.flags(JANE.email) == {"optedOut": False, "optedOutPhone": False, "monitored": True, "deleted": False}

    assert connector.restrict(email(JANE.email)).changed == {"contact": 1}
    assert sim.flags(JANE.email) == {"optedOut": True, "optedOutPhone": True, "monitored": False, "deleted": False}
    assert sim.flags(JOHN.email)["monitored"] is True and sim.flags(DECOY_EMAIL)["optedOut"] is False

    assert connector.lift_restriction(email(JANE.email)).changed == {"contact": 1}
    assert sim.flags(JANE.email) == {"optedOut": False, "optedOutPhone": False, "monitored": True, "deleted": False}


def test_check_and_wrong_credentials(sim: SalesmanagoSim, served: Served, connector: SalesmanagoConnector) -> None:
    assert connector.check().ok is True

    env = {**sim.env(), "DSAR_SM_SIM_API_SECRET": "wrong-secret"}
    wrong = SalesmanagoConnector.from_settings("salesmanago", sim.settings(served.url), ConnectorContext(env=env))
    health = wrong.check()
    assert health.ok is False and "refused the credentials" in health.problems[0]
    with pytest.raises(PermanentError, match="User not authenticated"):
        wrong.locate(email(JANE.email))
    wrong.close()


def test_a_contact_two_owners_hold_is_deleted_for_ours_and_the_rest_is_named(
    sim: SalesmanagoSim, connector: SalesmanagoConnector
) -> None:
    sim.seed_shared()  # another SALESmanago user also holds Jane's contact
    hits = connector.locate(email(JANE.email))
    learned = repr([i.to_dict() for i in hits.learned])
    assert SalesmanagoSim.OTHER_OWNER not in learned and SalesmanagoSim.OWNER not in learned
    assert all(i.via for i in hits.learned)

    receipt = connector.erase(email(JANE.email))

    assert receipt.changed == {"contact": 1}
    assert sim.owners(JANE.email) == [SalesmanagoSim.OTHER_OWNER]  # [U] per-owner delete, modelled pessimistically
    assert receipt.manual_steps == []
    (step,) = [line for line in receipt.details if "other SALESmanago users (owners)" in line]
    assert "other SALESmanago users (owners)" in step and str(sim.contact_id(JANE.email)) in step
    assert connector.locate(email(JANE.email)).found is False  # gone for the configured owner


def test_erase_deletes_even_when_stop_monitoring_is_refused(sim: SalesmanagoSim, served: Served) -> None:
    # The simulator refuses an addresseeType not spelt as on the wire ("EMAIL"; sso-util LoyaltyProgramModel.php
    # L9-18 has `email`): the erasure must still delete the contact and say what failed (issue 18 point 3).
    settings = {**sim.settings(served.url), "monitoring_addressee_type": "EMAIL"}
    connector = SalesmanagoConnector.from_settings("salesmanago", settings, ConnectorContext(env=sim.env()))
    contact_id = sim.contact_id(JANE.email)

    receipt = connector.erase(email(JANE.email))
    connector.close()

    assert receipt.changed == {"contact": 1}
    assert sim.holdings(JANE.email) == {}
    assert sim.calls[-2:] == ["contact/stopMonitoring", "contact/delete"]
    (step,) = receipt.manual_steps
    assert str(contact_id) in step and "no longer monitors" in step
    assert any("success=false" in line and "deleted all the same" in line for line in receipt.details)


def test_two_owners_find_jane_under_the_second_and_erase_her_there(sim: SalesmanagoSim, served: Served) -> None:
    # Issue 10 point 8: Jane's contact belongs to the second owner's sales team only.
    sim.move_to(JANE.email, SalesmanagoSim.OTHER_OWNER)
    settings = sim.settings(served.url, owners=SalesmanagoSim.OWNERS)
    connector = SalesmanagoConnector.from_settings("salesmanago", settings, ConnectorContext(env=sim.env()))

    hits = connector.locate(email(JANE.email))
    assert hits.counts == {"contact": 1}
    assert all("under owner 2 of the data map's owners" in i.via for i in hits.learned)
    assert SalesmanagoSim.OTHER_OWNER not in repr([i.to_dict() for i in hits.learned])

    receipt = connector.erase(email(JANE.email))
    connector.close()

    assert receipt.changed == {"contact": 1}
    assert sim.holdings(JANE.email) == {} and sim.holdings(JOHN.email)


def test_a_contact_both_listed_owners_hold_is_gone_for_both(sim: SalesmanagoSim, served: Served) -> None:
    sim.seed_shared()
    settings = sim.settings(served.url, owners=SalesmanagoSim.OWNERS)
    connector = SalesmanagoConnector.from_settings("salesmanago", settings, ConnectorContext(env=sim.env()))

    receipt = connector.erase(email(JANE.email))
    connector.close()

    assert receipt.changed == {"contact": 1}
    assert sim.owners(JANE.email) == [] and sim.holdings(JANE.email) == {}
    assert sim.calls.count("contact/delete") == 2  # once under each owner holding her

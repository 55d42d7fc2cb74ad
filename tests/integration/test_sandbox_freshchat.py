"""FreshchatConnector against FreshchatSim over a real socket."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from connectors.base import ConnectorContext, Identities, Identity, IdentityType
from connectors.freshchat import FreshchatConnector
from sandbox.freshchat import FreshchatSim
from sandbox.people import DECOY_EMAIL, JANE, JOHN
from sandbox.server import Served


def _served(sim: FreshchatSim) -> Iterator[tuple[FreshchatSim, Served]]:
    sim.seed_demo()
    served = Served(sim.app)
    try:
        yield sim, served
    finally:
        served.stop()


@pytest.fixture
def sandbox() -> Iterator[tuple[FreshchatSim, Served]]:
    """FreshChat as its sources show it: no user delete (vendor-source-check.md F7)."""
    yield from _served(FreshchatSim())


@pytest.fixture
def sandbox_with_delete() -> Iterator[tuple[FreshchatSim, Served]]:
    """A tenant that has DELETE /users/{id} [U], should one exist."""
    yield from _served(FreshchatSim(user_delete=True))


def _connector(sim: FreshchatSim, served: Served, **overrides: Any) -> FreshchatConnector:
    settings = {**sim.settings(served.url), **overrides}
    return FreshchatConnector.from_settings("freshchat", settings, ConnectorContext(env=sim.env()))


def _jane_by_email() -> Identities:
    return Identities([Identity(IdentityType.EMAIL, JANE.email)])


def _jane_uid(sim: FreshchatSim) -> str:
    (uid,) = sim.user_ids(JANE.email)
    return uid


def test_locate_by_email_learns_user_id_and_phone_and_skips_the_prefix_decoy(sandbox: Any) -> None:
    sim, served = sandbox
    hits = _connector(sim, served).locate(_jane_by_email())
    assert hits.found
    assert hits.counts == {"user": 1, "conversations": 2}
    learned = {(i.type, i.value) for i in hits.learned}
    assert learned == {(IdentityType.FRESHCHAT_USER_ID, _jane_uid(sim)), (IdentityType.PHONE, JANE.phone)}


def test_locate_by_account_id_learns_the_email(sandbox: Any) -> None:
    sim, served = sandbox
    hits = _connector(sim, served).locate(Identities([Identity(IdentityType.ACCOUNT_ID, JANE.account_id)]))
    assert hits.found and hits.counts["user"] == 1
    assert Identity(IdentityType.EMAIL, JANE.email) in hits.learned
    assert all(i.value != DECOY_EMAIL for i in hits.learned)


def test_export_jane_gets_all_her_conversations_and_paged_messages_and_nothing_of_john(sandbox: Any) -> None:
    sim, served = sandbox
    jane = _jane_uid(sim)
    before = len(sim.requests)
    records = list(_connector(sim, served).export(_jane_by_email()))
    by_entity: dict[str, list[Any]] = {}
    for record in records:
        by_entity.setdefault(record.entity, []).append(record)

    assert [r.record_id for r in by_entity["user"]] == [jane]
    assert by_entity["user"][0].fields["first_name"] == JANE.first_name
    expected = sim.holdings(JANE.email)
    assert len(by_entity["conversations"]) == expected["conversations"] == 2
    assert {r.fields["user_id"] for r in by_entity["conversations"]} == {jane}
    assert len(by_entity["messages"]) == expected["messages"] == 127
    assert len({r.record_id for r in by_entity["messages"]}) == 127
    assert {r.fields["user_id"] for r in by_entity["messages"]} == {jane}
    # 120 messages at 50 a page: three pages for the long conversation, one for the short one.
    message_calls = [p for m, p in sim.requests[before:] if p.endswith("/messages")]
    assert len(message_calls) == 4
    dump = repr([r.fields for r in records])
    assert JOHN.email not in dump.lower() and JOHN.phone not in dump and DECOY_EMAIL not in dump.lower()


def test_erase_with_user_delete_leaves_nothing(sandbox_with_delete: Any) -> None:
    sim, served = sandbox_with_delete
    john_before = sim.holdings(JOHN.email)
    receipt = _connector(sim, served).erase(_jane_by_email())
    assert receipt.changed == {"user": 1}
    assert receipt.manual_steps == []
    assert len(receipt.vendor_refs) == 1 and "requested" in receipt.vendor_refs[0]
    assert sim.holdings(JANE.email) == {"contacts": 0, "profile_fields": 0, "conversations": 0, "messages": 0}
    assert sim.holdings(JOHN.email) == john_before
    assert sim.holdings(DECOY_EMAIL)["contacts"] == 1


def test_erase_without_user_delete_blanks_profile_and_names_the_rest_in_a_manual_step(sandbox: Any) -> None:
    sim, served = sandbox
    jane = _jane_uid(sim)
    before = sim.holdings(JANE.email)
    # The setting says true, but the tenant has no delete: its 405 makes the connector fall back.
    receipt = _connector(sim, served, supports_user_delete=True).erase(_jane_by_email())
    after = sim.holdings(JANE.email)
    assert before["profile_fields"] > 0
    assert after == {"contacts": 1, "profile_fields": 0, "conversations": before["conversations"],
                     "messages": before["messages"]}
    assert len(receipt.manual_steps) == 1
    step = receipt.manual_steps[0]
    assert step.startswith("Forget the contact in FreshChat (Contacts > Forget)")
    assert jane in step and "conversations and messages" in step
    assert ("DELETE", f"/v2/users/{jane}") in sim.requests
    assert JANE.email not in repr(receipt.to_dict()).lower()


def test_erase_by_default_never_calls_delete_and_asks_to_forget(sandbox: Any) -> None:
    # Issue 18 point 5: the default no longer tries a user delete no FreshChat source lists.
    sim, served = sandbox
    settings = {k: v for k, v in sim.settings(served.url).items() if k != "supports_user_delete"}
    connector = FreshchatConnector.from_settings("freshchat", settings, ConnectorContext(env=sim.env()))
    receipt = connector.erase(_jane_by_email())
    assert receipt.changed == {"user": 1}
    assert not any(method == "DELETE" for method, _ in sim.requests)
    assert sim.holdings(JANE.email)["profile_fields"] == 0
    (step,) = receipt.manual_steps
    assert step.startswith("Forget the contact in FreshChat (Contacts > Forget)") and _jane_uid(sim) in step


def test_the_messages_answer_has_no_pagination_and_is_capped_at_50(sandbox: Any) -> None:
    # FreshChat's transcript_message_response is {link, messages} (idjoo/freshchat-sdk openapi @ afe30a08), at
    # most 50 a page (getkarta/freshchat-downloader freshchat_client.py L107).
    sim, served = sandbox
    http = _connector(sim, served).http
    conversations = http.json("GET", f"users/{_jane_uid(sim)}/conversations")["conversations"]
    (cid,) = [c["id"] for c in conversations if c["status"] == "assigned"]  # the one with 120 messages
    page = http.json("GET", f"conversations/{cid}/messages", params={"page": 1, "items_per_page": 100})
    assert set(page) == {"link", "messages"} and len(page["messages"]) == 50

    # Issue 18 point 6: asking for 100 made that full page of 50 look like the last; the connector never asks
    # above the cap, even when constructed past the settings check.
    connector = FreshchatConnector("freshchat", http, items_per_page=100)
    assert len(list(connector.export(_jane_by_email(), entities=["messages"]))) == 127


def test_restrict_then_lift(sandbox: Any) -> None:
    sim, served = sandbox
    jane = _jane_uid(sim)
    connector = _connector(sim, served)
    assert sim.conversation_statuses(JANE.email) == ["assigned", "resolved"]

    receipt = connector.restrict(_jane_by_email())
    assert receipt.changed == {"conversations": 1, "user": 1}
    assert sim.conversation_statuses(JANE.email) == ["resolved", "resolved"]
    assert sim.conversation_statuses(JOHN.email) == ["new"]
    props = {p["name"]: p["value"] for p in sim.user(jane)["properties"]}  # type: ignore[index]
    assert props == {"plan": "pro", "city": "Oslo", "gdpr_restricted": "true"}

    lifted = connector.lift_restriction(_jane_by_email())
    assert lifted.changed == {"user": 1}
    props = {p["name"]: p["value"] for p in sim.user(jane)["properties"]}  # type: ignore[index]
    assert props["gdpr_restricted"] == "false" and props["plan"] == "pro"


def test_check_ok_and_wrong_token(sandbox: Any) -> None:
    sim, served = sandbox
    assert _connector(sim, served).check().ok
    bad = FreshchatConnector.from_settings(
        "freshchat", sim.settings(served.url), ConnectorContext(env={sim.TOKEN_ENV: "wrong-token"})
    )
    health = bad.check()
    assert not health.ok
    assert "401" in health.problems[0] and "wrong-token" not in health.problems[0]


def test_a_conversation_shared_with_john_is_never_learned_from_exported_as_his_or_deleted(sandbox: Any) -> None:
    sim, served = sandbox
    shared = sim.seed_shared()  # Jane and John both write in it
    jane = _jane_uid(sim)
    (john,) = sim.user_ids(JOHN.email)
    connector = _connector(sim, served)

    hits = connector.locate(_jane_by_email())
    assert {(i.type, i.value) for i in hits.learned} == {(IdentityType.FRESHCHAT_USER_ID, jane),
                                                         (IdentityType.PHONE, JANE.phone)}
    assert Identity(IdentityType.FRESHCHAT_USER_ID, john) in hits.touches["conversations"]  # the plan refuses
    assert hits.skipped == {"messages": {"another user's message in a conversation shared with the subject": 2}}

    records = list(connector.export(_jane_by_email()))
    assert shared in {r.record_id for r in records if r.entity == "conversations"}
    dump = repr([r.fields for r in records])
    assert john not in dump and JOHN.email not in dump.lower() and JOHN.phone not in dump

    john_wrote = sim.messages_by(john)
    receipt = connector.erase(_jane_by_email())  # the user delete would take the shared conversation along
    assert not any(method == "DELETE" for method, _ in sim.requests)
    assert receipt.skipped == {"conversations": {
        "holds another user's messages; not deleted or changed (only the subject's part is theirs)": 1}}
    assert sim.messages_by(john) == john_wrote and shared in receipt.manual_steps[0]
    assert sim.holdings(JANE.email)["profile_fields"] == 0

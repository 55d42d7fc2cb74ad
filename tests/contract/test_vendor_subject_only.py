"""Issue 9: only the subject's data. The shared-record shapes of the four vendor connectors, mocked strictly.

Every identifier a connector learns says where it came from (`Identity.via`), and only the subject's own
records teach one. Records shared with another person are never learned from, never deleted or changed, and
are named in `Hits.skipped` / `Receipt.skipped` (counts only) or, where an erasure would change them, in
`Hits.touches` so the plan refuses. Response bodies follow shared/vendor-apis.md (and vendor-source-check.md):
Mautic `GET /api/contacts/{id}/companies` -> `{total, companies}` with `comp.*` columns (CompanyLeadRepository
::getCompaniesByLeadId); Freshchat `conversation.users[]` (user objects) and `message.actor_type/actor_id`
(Freshchat's openapi schemas); SALESmanago `contact/basic` fields (the official util); Matomo findDataSubjects
rows (PrivacyManager/API.php).
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import responses
from responses import matchers

from connectors.base import ConnectorContext, Hits, Identities, Identity, IdentityType
from connectors.freshchat import OTHER_USERS_MESSAGE, SHARED_CONVERSATION
from connectors.matomo import OTHER_USER_ID, MatomoConnector
from connectors.mautic import COMPANY_LEFT, MauticConnector
from connectors.salesmanago import SalesmanagoConnector
from tests.contract import test_freshchat as fc
from tests.contract import test_matomo as mt
from tests.contract import test_mautic as mc
from tests.contract import test_salesmanago as sm
from tests.contract.conftest import FAST_RETRY


def _subject_only(hits: Hits, subject: Identities) -> None:
    """Every learned identifier has provenance, and nothing touched is anyone else's."""
    assert hits.learned and all(i.via for i in hits.learned)
    final = Identities([*subject, *hits.learned])
    assert all(i in final for ids in hits.touches.values() for i in ids)


# ---------------------------------------------------------------------------- Mautic: a shared company

ACME = {
    # GET /api/contacts/{id}/companies: cl.company_id, cl.date_added AS date_associated, cl.is_primary, comp.*
    "company_id": 3, "date_associated": "2024-03-08 09:00:00", "is_primary": 1, "id": 3, "owner_id": None,
    "companyname": "Acme AS", "companyemail": "post@acme.example", "companyphone": "+4722000000",
    "companycity": "Oslo", "companycountry": "Norway", "companywebsite": "https://acme.example",
}


def _mautic(ctx: ConnectorContext) -> MauticConnector:
    return mc.connector(ctx)


def test_mautic_locate_learns_from_the_contact_only_never_its_company(vendor, ctx) -> None:
    jane = mc.contact(47, mc.JANE, phone="+47 912 34 567")
    jane["fields"]["all"]["company"] = "Acme AS"  # the core `company` field: a name, no identifier
    mc.search(vendor, mc.JANE, [jane])
    # Nothing else is registered: a read of the company or of its other contacts would fail the test.

    hits = _mautic(ctx).locate(mc.ids(mc.JANE))

    assert {(i.type, i.value, i.via) for i in hits.learned} == {
        (IdentityType.MAUTIC_CONTACT_ID, "47", "mautic: contact 47 (matched by e-mail), field id"),
        (IdentityType.PHONE, "+4791234567", "mautic: contact 47 (matched by e-mail), field phone"),
    }
    _subject_only(hits, mc.ids(mc.JANE))
    assert hits.skipped == {}


def test_mautic_locate_by_contact_id_says_so_in_via(vendor, ctx) -> None:
    vendor.get(f"{mc.BASE}/api/contacts/47", json={"contact": mc.contact(47, mc.JANE)}, match=[mc.auth()])

    hits = _mautic(ctx).locate(mc.ids("47", kind=IdentityType.MAUTIC_CONTACT_ID))

    assert [(i.type, i.via) for i in hits.learned] == [
        (IdentityType.EMAIL, "mautic: contact 47 (matched by contact id), field email")]


def test_mautic_export_has_the_company_as_related_data_without_other_contacts(vendor, ctx) -> None:
    mc.search(vendor, mc.JANE, [mc.contact(47, mc.JANE)])
    mc.plain(vendor, 47, "companies", {"total": 1, "companies": [ACME]})

    records = list(_mautic(ctx).export(mc.ids(mc.JANE), entities=["companies"]))

    assert [(r.entity, r.record_id) for r in records] == [("companies", "47:3")]
    assert records[0].fields["companyname"] == "Acme AS" and records[0].fields["contact_id"] == 47
    # The company's other contacts are never read: no /api/companies call, no search by company.
    assert {str(c.request.url).split("?")[0] for c in vendor.calls} == {
        f"{mc.BASE}/api/contacts", f"{mc.BASE}/api/contacts/47/companies"}
    assert _mautic(ctx).policies()["companies"].provided_by_subject is False


def test_mautic_erase_deletes_the_contact_and_leaves_the_company_alone(vendor, ctx) -> None:
    mc.search(vendor, mc.JANE, [mc.contact(47, mc.JANE)])
    mc.plain(vendor, 47, "companies", {"total": 1, "companies": [ACME]})
    vendor.delete(f"{mc.BASE}/api/contacts/47/delete", json={"contact": mc.contact(47, mc.JANE)},
                  match=[matchers.query_param_matcher({}), mc.auth()])
    # No DELETE/PATCH/PUT on /api/companies/3 is registered: any would fail the test.

    receipt = _mautic(ctx).erase(mc.ids(mc.JANE))

    assert receipt.changed == {"contact": 1}
    assert receipt.skipped == {"companies": {COMPANY_LEFT: 1}}
    assert any("companies themselves were left alone" in d for d in receipt.details)
    assert not any("/api/companies" in str(c.request.url) for c in vendor.calls)
    assert "acme" not in repr(receipt.to_dict()).lower()


# ---------------------------------------------------------------------------- SALESmanago: several owners

OTHER_OWNER = "sales2@shop.example"  # another SALESmanago user who also holds Jane's contact


@pytest.fixture
def salesmanago(ctx: ConnectorContext) -> SalesmanagoConnector:
    fixed = ConnectorContext(env=ctx.env, secret_key=ctx.secret_key, now=lambda: sm.FIXED_NOW)
    return SalesmanagoConnector.from_settings("salesmanago", sm.SETTINGS, fixed, retry=FAST_RETRY)


def test_salesmanago_learns_the_contacts_own_fields_never_an_owner(vendor, salesmanago) -> None:
    sm.add_basic(vendor, [sm.jane_contact()])

    hits = salesmanago.locate(sm.jane())

    via = f"salesmanago: contact {sm.JANE_ID} (matched by e-mail under owner 1 of the data map's owners), field "
    assert {(i.type, i.value, i.via) for i in hits.learned} == {
        (IdentityType.SALESMANAGO_CONTACT_ID, sm.JANE_ID, via + "contactId"),
        (IdentityType.PHONE, "+4791234567", via + "phone"),
    }
    _subject_only(hits, sm.jane())
    learned = repr([i.to_dict() for i in hits.learned])
    assert sm.OWNER not in learned and OTHER_OWNER not in learned


def test_salesmanago_erase_deletes_for_the_configured_owner_and_names_what_may_remain(vendor, salesmanago) -> None:
    sm.add_basic(vendor, [sm.jane_contact()])
    vendor.post(f"{sm.BASE}/contact/stopMonitoring", match=sm.monitoring(),  # addresseeType `email`, as on the wire
                json={"success": True, "message": []})
    # owner = the configured owner (in sm.body): the delete is scoped to it, as every v2 call is.
    vendor.post(f"{sm.BASE}/contact/delete", match=sm.body(email="Jane.Doe@Example.com", permanently=True),
                json={"success": True, "message": []})

    receipt = salesmanago.erase(sm.jane())

    assert receipt.changed == {"contact": 1}
    assert receipt.manual_steps == []
    (step,) = [line for line in receipt.details if "owner" in line]
    assert "ran under each owner of the data map holding the contact" in step and sm.JANE_ID in step
    assert f"{sm.JANE_ID}: 1" in step  # the owner by its place in `owners`, never its e-mail
    assert "other SALESmanago users (owners)" in step
    assert "jane" not in step.lower() and OTHER_OWNER not in step


# ---------------------------------------------------------------------------- FreshChat: a two-user conversation

JOHN_ID = "5a0c1e2d-3b4f-4a6b-8c7d-9e0f1a2b3c4d"
AGENT_ID = "a9e11000-0000-4000-8000-000000000002"


def _john() -> dict[str, Any]:
    return fc._user(id=JOHN_ID, email="john.smith@example.com", first_name="John", last_name="Smith",
                    phone="+4792345678", reference_id="1002")


def _shared_conversation(cid: str = "c9", status: str = "new") -> dict[str, Any]:
    # Freshchat's conversation model: `users` is a list of user objects.
    return {**fc._conversation(cid, status), "users": [fc._user(), _john()]}


def _shared_messages(cid: str = "c9") -> dict[str, Any]:
    def message(n: int, actor_type: str, actor_id: str) -> dict[str, Any]:
        return {"id": f"{cid}-m{n}", "conversation_id": cid, "actor_type": actor_type, "actor_id": actor_id,
                "user_id": fc.JANE_ID, "message_type": "normal", "app_id": "app-1", "channel_id": "ch-1",
                "message_parts": [{"text": {"content": f"line {n}"}}], "created_time": "2024-03-01T10:00:00.000Z"}

    return {"messages": [message(0, "user", fc.JANE_ID), message(1, "agent", AGENT_ID),
                         message(2, "user", JOHN_ID), message(3, "user", JOHN_ID)]}


def _freshchat_reads(vendor: responses.RequestsMock, *, status: str = "new") -> None:
    fc._get(vendor, f"/users/{fc.JANE_ID}/conversations", {"conversations": [{"id": "c9"}]})
    fc._get(vendor, "/conversations/c9", _shared_conversation(status=status))
    fc._get(vendor, "/conversations/c9/messages", _shared_messages(), query={"page": "1", "items_per_page": "50"})


def test_freshchat_locate_learns_only_the_subject_and_touches_name_the_other_user(vendor, ctx) -> None:
    fc._get(vendor, "/users", fc._users_page(fc._user()), query={"email": fc.JANE_EMAIL})
    _freshchat_reads(vendor)

    hits = fc._connector(ctx).locate(fc._email())

    assert {(i.type, i.value) for i in hits.learned} == {
        (IdentityType.FRESHCHAT_USER_ID, fc.JANE_ID), (IdentityType.PHONE, fc.JANE_PHONE)}
    assert all(i.via.startswith(f"freshchat: user {fc.JANE_ID} (matched by e-mail), field ") for i in hits.learned)
    assert JOHN_ID not in repr([i.to_dict() for i in hits.learned])
    # Erasing would delete a conversation holding John's messages: his id is what the plan counts and refuses on.
    subject = Identities([*fc._email(), *hits.learned])
    others = {i for ids in hits.touches.values() for i in ids if i not in subject}
    assert others == {Identity(IdentityType.FRESHCHAT_USER_ID, JOHN_ID)}
    assert hits.skipped == {"messages": {OTHER_USERS_MESSAGE: 2}}
    assert hits.counts == {"user": 1, "conversations": 1}


def test_freshchat_export_gives_her_part_without_the_other_users_identifiers(vendor, ctx) -> None:
    fc._get(vendor, f"/users/{fc.JANE_ID}", fc._user())
    _freshchat_reads(vendor)

    records = list(fc._connector(ctx).export(fc._uid(), entities=["conversations", "messages"]))

    (conversation,) = [r for r in records if r.entity == "conversations"]
    assert [u["id"] for u in conversation.fields["users"]] == [fc.JANE_ID]
    assert conversation.fields["other_participants_left_out"] == 1
    assert [r.record_id for r in records if r.entity == "messages"] == ["c9-m0", "c9-m1"]  # hers and the agent's
    dump = repr([r.fields for r in records])
    assert JOHN_ID not in dump and "john" not in dump.lower() and "+4792345678" not in dump


@pytest.mark.parametrize("supports_user_delete", [True, False])
def test_freshchat_erase_never_deletes_the_shared_conversation(vendor, ctx, supports_user_delete: bool) -> None:
    fc._get(vendor, f"/users/{fc.JANE_ID}", fc._user())
    _freshchat_reads(vendor)
    blanked = {"first_name": "", "last_name": "", "email": "", "phone": "", "reference_id": "",
               "properties": [{"name": "plan", "value": ""}]}
    fc._send(vendor, responses.PUT, f"/users/{fc.JANE_ID}", fc._user(**blanked), sent=blanked)
    # No DELETE of the user (it may take the shared conversation with it) and none of the conversation.

    receipt = fc._connector(ctx, supports_user_delete=supports_user_delete).erase(fc._uid())

    assert receipt.changed == {"user": 1}
    assert receipt.skipped == {"conversations": {SHARED_CONVERSATION: 1}}
    assert not any(c.request.method == "DELETE" for c in vendor.calls)
    (step,) = receipt.manual_steps
    assert fc.JANE_ID in step and "c9" in step and "another user's messages" in step
    assert JOHN_ID not in repr(receipt.to_dict())


def test_freshchat_restrict_leaves_the_shared_conversation_open(vendor, ctx) -> None:
    fc._get(vendor, f"/users/{fc.JANE_ID}", fc._user())
    _freshchat_reads(vendor, status="assigned")
    props = [{"name": "plan", "value": "pro"}, {"name": "gdpr_restricted", "value": "true"}]
    fc._send(vendor, responses.PUT, f"/users/{fc.JANE_ID}", fc._user(properties=props), sent={"properties": props})
    # No PUT /conversations/c9: resolving it would change John's conversation too.

    receipt = fc._connector(ctx).restrict(fc._uid())

    assert receipt.changed == {"user": 1}
    assert receipt.skipped == {"conversations": {SHARED_CONVERSATION: 1}}


# ---------------------------------------------------------------------------- Matomo: a shared visitor id

JOHN = "john.smith@example.com"
api = mt.api  # the Matomo vendor mock: every call a form POST with token_auth in the body only


def _matomo(ctx: ConnectorContext) -> MatomoConnector:
    return MatomoConnector.from_settings("matomo", mt.settings(), ctx, retry=FAST_RETRY)


def _shared_rows() -> list[dict[str, Any]]:
    # One computer: Jane's pre-login visitor id carries her anonymous visit and John's logged-in visit
    # (a site with enable_userid_overwrites_visitorid=0 keeps the cookie's visitor id after login).
    return [mt.visit(4759), mt.visit(4700, visitor_id=mt.JANE_PRELOGIN, user_id=None),
            mt.visit(4800, visitor_id=mt.JANE_PRELOGIN, user_id=JOHN),
            mt.visit(4801, visitor_id="77aa77aa77aa77aa", user_id=JOHN)]


def test_matomo_learns_visitor_ids_only_from_her_own_userid_visits(api, ctx) -> None:
    mt.expect(api, "PrivacyManager.findDataSubjects", mt.find_body(), _shared_rows())

    hits = _matomo(ctx).locate(mt.jane())

    assert [(i.type, i.value, i.via) for i in hits.learned] == [
        (IdentityType.MATOMO_VISITOR_ID, mt.JANE_HASH,
         "matomo: visit 1/4759 (its userId is the subject's), field visitorId")]
    learned = {i.value for i in hits.learned}
    assert "77aa77aa77aa77aa" not in learned and JOHN not in learned
    hashed_john = hashlib.sha1(JOHN.encode()).hexdigest()[:16]
    assert hashed_john not in learned
    assert hits.counts == {"visits": 2}
    assert hits.skipped == {"visits": {OTHER_USER_ID: 2}}


def test_matomo_export_and_erase_leave_the_other_users_visits_alone(api, ctx) -> None:
    mt.expect(api, "PrivacyManager.findDataSubjects", mt.find_body(), _shared_rows())
    mt.expect(api, "PrivacyManager.exportDataSubjects", mt.visits_body((1, 4759), (1, 4700)),
              {"log_visit": [{"idvisit": "4759"}, {"idvisit": "4700"}]})
    mt.expect(api, "PrivacyManager.findDataSubjects", mt.find_body(), _shared_rows())
    mt.expect(api, "PrivacyManager.deleteDataSubjects", mt.visits_body((1, 4759), (1, 4700)),
              {"log_visit": 2, "log_link_visit_action": 3})
    connector = _matomo(ctx)

    exported = [r.record_id for r in connector.export(mt.jane())]
    receipt = connector.erase(mt.jane())

    assert exported == ["4759", "4700"]
    assert receipt.changed == {"log_visit": 2, "log_link_visit_action": 3}
    assert receipt.skipped == {"visits": {OTHER_USER_ID: 2}}
    assert JOHN not in repr(receipt.to_dict())

"""Contract tests for the Mautic connector: every vendor call mocked strictly (vendor-apis.md section 2)."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import responses
from responses import matchers

from connectors.base import (
    ConnectorContext,
    Identities,
    Identity,
    IdentityType,
    PermanentError,
    TransientError,
    UnsupportedAction,
)
from connectors.mautic import MauticConnector
from tests.contract.conftest import FAST_RETRY

BASE = "https://mautic.example.com"
JANE = "jane.doe@example.com"
DECOY = "jane.doe@example.com.au"
BASIC = "Basic " + base64.b64encode(b"api-user:api-pass").decode()
NOT_FOUND = {"errors": [{"code": 404, "message": "Item was not found.", "details": [], "type": None}]}
VERSION = {"Mautic-Version": "5.1.0"}


def settings(**extra: Any) -> dict[str, Any]:
    base = {
        "base_url": BASE,
        "auth": "basic",
        "user_env": "DSAR_MAUTIC_USER",
        "password_env": "DSAR_MAUTIC_PASSWORD",
        "client_id_env": "DSAR_MAUTIC_CLIENT_ID",
        "client_secret_env": "DSAR_MAUTIC_CLIENT_SECRET",
        "rate_per_second": 0,
        "page_size": 2,
        "activity_page_size": 2,
    }
    return {**base, **extra}


def connector(ctx: ConnectorContext, **extra: Any) -> MauticConnector:
    request_id = extra.pop("request_id", None)
    clock = extra.pop("clock", time.monotonic)
    return MauticConnector.from_settings("mautic", settings(**extra), ctx, retry=FAST_RETRY,
                                         request_id=request_id, clock=clock)


def ids(*values: str, kind: IdentityType = IdentityType.EMAIL) -> Identities:
    return Identities(Identity(kind, v) for v in values)


def contact(cid: int, email: str, first: str = "Jane", phone: str | None = None) -> dict[str, Any]:
    """A contact as GET /api/contacts returns it (vendor-apis.md 2.8)."""
    return {
        "id": cid,
        "dateAdded": "2024-03-01T09:12:03+00:00",
        "points": 10,
        "lastActive": "2024-05-02T14:19:37+00:00",
        "ipAddresses": {"203.0.113.7": {"ipAddress": "203.0.113.7", "ipDetails": {"city": "", "country": ""}}},
        "fields": {
            "core": {"email": {"alias": "email", "value": email}},
            "all": {"id": cid, "firstname": first, "lastname": "Doe", "email": email, "phone": phone},
        },
        "tags": [{"tag": "newsletter"}],
        "utmtags": [],
        "doNotContact": [],
    }


def auth(header: str = BASIC) -> Any:
    return matchers.header_matcher({"Authorization": header})


def search(vendor: responses.RequestsMock, email: str, found: list[dict[str, Any]], *, start: int = 0,
           total: int | None = None, header: str = BASIC, status: int = 200, body: Any = None,
           headers: dict[str, str] | None = None) -> None:
    params = {"where[0][col]": "email", "where[0][expr]": "eq", "where[0][val]": email,
              "start": str(start), "limit": "2"}
    payload = body if body is not None else {
        "total": str(len(found) if total is None else total),
        # keyed by id; PHP serialises an empty result as []
        "contacts": {str(c["id"]): c for c in found} or [],
    }
    vendor.get(f"{BASE}/api/contacts", json=payload, status=status, headers={**VERSION, **(headers or {})},
               match=[matchers.query_param_matcher(params), auth(header)])


def jane_two_contacts(vendor: responses.RequestsMock, header: str = BASIC) -> None:
    search(vendor, JANE, [contact(47, "Jane.Doe@Example.com", phone="+47 912 34 567"), contact(52, JANE)],
           header=header)


def event(n: int) -> dict[str, Any]:
    # The documented activity event shape (contacts.rst): no id of its own.
    return {"event": "page.hit", "icon": "fa-link", "eventType": "Page hit", "eventPriority": 0,
            "timestamp": f"2024-03-0{n}T10:00:00+00:00", "featured": False}


def activity(vendor: responses.RequestsMock, cid: int, pages: list[list[dict[str, Any]]]) -> None:
    total = sum(len(p) for p in pages)
    for number, events in enumerate(pages, start=1):
        params = {"page": str(number), "limit": "2", "order[0]": "timestamp", "order[1]": "ASC"}
        body = {"events": events, "filters": {"search": "", "includeEvents": [], "excludeEvents": []},
                "order": ["timestamp", "ASC"], "types": {"page.hit": "Page hit"}, "total": total,
                "page": number, "limit": 2, "maxPages": len(pages)}
        vendor.get(f"{BASE}/api/contacts/{cid}/activity", json=body,
                   match=[matchers.query_param_matcher(params), auth()])


def offset_list(vendor: responses.RequestsMock, cid: int, key: str, items: list[dict[str, Any]]) -> None:
    vendor.get(f"{BASE}/api/contacts/{cid}/{key}", json={"total": len(items), key: items},
               match=[matchers.query_param_matcher({"start": "0", "limit": "2"}), auth()])


def plain(vendor: responses.RequestsMock, cid: int, path: str, body: dict[str, Any]) -> None:
    vendor.get(f"{BASE}/api/contacts/{cid}/{path}", json=body, match=[matchers.query_param_matcher({}), auth()])


# -- locate ---------------------------------------------------------------------------------


def test_locate_exact_email_finds_every_contact_and_learns_ids_and_phone(vendor, ctx) -> None:
    jane_two_contacts(vendor)
    hits = connector(ctx).locate(ids(JANE))
    assert hits.found is True
    assert hits.counts == {"contact": 2}
    learned = {(i.type, i.value) for i in hits.learned}
    assert (IdentityType.MAUTIC_CONTACT_ID, "47") in learned
    assert (IdentityType.MAUTIC_CONTACT_ID, "52") in learned
    assert (IdentityType.PHONE, "+4791234567") in learned
    assert all(i.source == "mautic" for i in hits.learned)
    # the e-mail we searched with is not "learned" again
    assert (IdentityType.EMAIL, JANE) not in learned


def test_locate_nothing_found_when_vendor_returns_empty_array(vendor, ctx) -> None:
    search(vendor, JANE, [])
    hits = connector(ctx).locate(ids(JANE))
    assert hits.found is False and hits.counts == {} and hits.learned == []


def test_decoy_is_dropped_even_if_the_vendor_returned_it(vendor, ctx) -> None:
    # The query is the exact `where eq` filter (strict matcher); a server that ignored it and
    # answered like the prefix `search=` would must still not make the decoy Jane's.
    search(vendor, JANE, [contact(47, JANE), contact(90, DECOY, first="Janet")])
    hits = connector(ctx).locate(ids(JANE))
    assert hits.counts == {"contact": 1}
    assert {i.value for i in hits.learned if i.type == IdentityType.MAUTIC_CONTACT_ID} == {"47"}


def test_decoy_address_does_not_find_jane(vendor, ctx) -> None:
    search(vendor, DECOY, [contact(90, DECOY, first="Janet")])
    hits = connector(ctx).locate(ids(DECOY))
    assert [i.value for i in hits.learned if i.type == IdentityType.MAUTIC_CONTACT_ID] == ["90"]


def test_search_pages_by_offset_until_total(vendor, ctx) -> None:
    search(vendor, JANE, [contact(1, JANE), contact(2, JANE)], total=3)
    search(vendor, JANE, [contact(3, JANE)], start=2, total=3)
    hits = connector(ctx).locate(ids(JANE))
    assert hits.counts == {"contact": 3}


def test_an_address_mautic_where_cannot_match_is_found_by_the_strict_search_command(vendor, ctx) -> None:
    # Regression (issue 18, point 7): `where` values are HTML-entity-encoded before the SQL `=`
    # (FetchCommonApiController.php L256 -> InputHelper::cleanArray, InputHelper.php L163-176), stored e-mails
    # keep `'` and `&` (InputHelper::email L333-343): `o'neil` would be searched as `o&#39;neil`. The search
    # command is `l.email LIKE` (LeadRepository.php L753-756; `+` = strict, no trailing %), where `_` matches
    # any character: the look-alike it returns is dropped client-side. No `where` call is registered.
    address = "mary_o'neil&co@example.com"
    params = {"search": f"email:+{address}", "start": "0", "limit": "2"}
    found = [contact(61, " Mary_O'Neil&Co@Example.com", first="Mary"), contact(62, "maryxo'neil&co@example.com")]
    vendor.get(f"{BASE}/api/contacts", json={"total": "2", "contacts": {str(c["id"]): c for c in found}},
               headers=VERSION, match=[matchers.query_param_matcher(params), auth()])
    hits = connector(ctx).locate(ids(address))
    assert hits.counts == {"contact": 1}
    assert [i.value for i in hits.learned if i.type == IdentityType.MAUTIC_CONTACT_ID] == ["61"]


@pytest.mark.parametrize("char", ["'", '"', "&", "<", ">"])
def test_every_character_mautic_encodes_sends_the_search_command(vendor, ctx, char: str) -> None:
    address = f"a{char}b@example.com"
    vendor.get(f"{BASE}/api/contacts", json={"total": "0", "contacts": []}, headers=VERSION,
               match=[matchers.query_param_matcher({"search": f"email:+{address}", "start": "0", "limit": "2"}),
                      auth()])
    conn = connector(ctx)
    assert conn._search_email(address) == {}  # the address need not be valid: only the query shape is tested


def test_locate_by_contact_id_learns_email_and_404_is_not_found(vendor, ctx) -> None:
    vendor.get(f"{BASE}/api/contacts/47", json={"contact": contact(47, "Jane.Doe@Example.com")},
               match=[matchers.query_param_matcher({}), auth()])
    vendor.get(f"{BASE}/api/contacts/99", json=NOT_FOUND, status=404,
               match=[matchers.query_param_matcher({}), auth()])
    hits = connector(ctx).locate(ids("47", "99", kind=IdentityType.MAUTIC_CONTACT_ID))
    assert hits.counts == {"contact": 1}
    assert {(i.type, i.value) for i in hits.learned} == {(IdentityType.EMAIL, JANE)}


def test_401_is_a_permanent_error_naming_the_call_without_the_email(vendor, ctx) -> None:
    body = {"errors": [{"code": 401, "message": "API authorization denied.", "details": [], "type": "access_denied"}]}
    search(vendor, JANE, [], status=401, body=body)
    with pytest.raises(PermanentError) as err:
        connector(ctx).locate(ids(JANE))
    text = str(err.value)
    assert "GET https://mautic.example.com/api/contacts" in text and "401" in text
    assert "jane" not in text.lower()


# -- retries and rate limits ----------------------------------------------------------------


def test_429_waits_for_x_ratelimit_reset_then_succeeds(vendor, ctx, sleeps) -> None:
    body = {"errors": [{"code": 429, "message": "You exceeded the rate limit of 100 API calls per hour.",
                        "details": []}]}
    reset = str(int(time.time()) + 3)  # epoch seconds, as the rate-limit bundle sends it
    search(vendor, JANE, [], status=429, body=body,
           headers={"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset})
    search(vendor, JANE, [contact(47, JANE)])
    hits = connector(ctx).locate(ids(JANE))
    assert hits.counts == {"contact": 1}
    assert len(sleeps) == 1 and 1.0 < sleeps[0] <= 3.0


def test_500_then_success(vendor, ctx, sleeps) -> None:
    search(vendor, JANE, [], status=500, body={"errors": [{"code": 500, "message": "Internal error", "details": []}]})
    search(vendor, JANE, [contact(47, JANE)])
    assert connector(ctx).locate(ids(JANE)).counts == {"contact": 1}
    assert len(sleeps) == 1


def test_500_until_retries_run_out_is_transient_and_names_the_call(vendor, ctx, sleeps) -> None:
    for _ in range(FAST_RETRY.attempts):
        search(vendor, JANE, [], status=500, body={"errors": [{"code": 500, "message": "boom", "details": []}]})
    with pytest.raises(TransientError) as err:
        connector(ctx).locate(ids(JANE))
    text = str(err.value)
    assert "GET https://mautic.example.com/api/contacts" in text
    assert f"after {FAST_RETRY.attempts} attempts" in text and "HTTP 500" in text
    assert "jane" not in text.lower()
    assert len(sleeps) == FAST_RETRY.attempts - 1


# -- export ---------------------------------------------------------------------------------


def test_export_every_entity_for_both_contacts(vendor, ctx) -> None:
    jane_two_contacts(vendor)
    activity(vendor, 47, [[event(1), event(2)], [event(3), event(4)], [event(5)]])
    offset_list(vendor, 47, "notes", [{"id": 1, "text": "Called", "type": "general",
                                       "dateTime": "2024-03-01T10:00:00+00:00"}])
    plain(vendor, 47, "segments", {"total": 2, "lists": {"3": {"id": 3, "name": "Newsletter", "alias": "nl"},
                                                         "4": {"id": 4, "name": "Customers", "alias": "cu"}}})
    plain(vendor, 47, "campaigns", {"total": 1, "campaigns": {"1": {"id": 1, "name": "Welcome Campaign",
                                                                    "dateAdded": "2024-03-02T10:00:00+00:00",
                                                                    "manuallyRemoved": False,
                                                                    "manuallyAdded": False,
                                                                    "listMembership": [3]}}})
    plain(vendor, 47, "companies", {"total": 1, "companies": [{"id": 5, "companyname": "Acme AS",
                                                               "is_primary": True}]})
    offset_list(vendor, 47, "devices", [{"id": 8, "device": "desktop", "deviceOsName": "Android"}])
    activity(vendor, 52, [[event(6)]])
    offset_list(vendor, 52, "notes", [])
    plain(vendor, 52, "segments", {"total": 0, "lists": []})
    plain(vendor, 52, "campaigns", {"total": 0, "campaigns": []})
    plain(vendor, 52, "companies", {"total": 0, "companies": []})
    offset_list(vendor, 52, "devices", [])

    records = list(connector(ctx).export(ids(JANE)))
    by_entity: dict[str, list[str]] = {}
    for r in records:
        by_entity.setdefault(r.entity, []).append(r.record_id)
    assert by_entity == {
        "contact": ["47", "52"],
        "activity": ["47:#1", "47:#2", "47:#3", "47:#4", "47:#5", "52:#1"],
        "notes": ["47:1"],
        "segments": ["47:3", "47:4"],
        "campaigns": ["47:1"],
        "companies": ["47:5"],
        "devices": ["47:8"],
    }
    profile = next(r for r in records if r.record_id == "47")
    assert profile.fields["fields"]["all"]["email"] == "Jane.Doe@Example.com"
    segments = [r.fields for r in records if r.entity == "segments"]
    assert [s["name"] for s in segments] == ["Newsletter", "Customers"]
    assert all(s["contact_id"] == 47 for s in segments)
    assert [r.fields["timestamp"][:10] for r in records if r.entity == "activity"][:5] == [
        f"2024-03-0{n}" for n in range(1, 6)]


def test_activity_pages_until_max_pages(vendor, ctx) -> None:
    search(vendor, JANE, [contact(47, JANE)])
    pages = [[event(1), event(2)], [event(3), event(4)], [event(5), event(6)], [event(7)]]
    activity(vendor, 47, pages)
    records = list(connector(ctx).export(ids(JANE), entities=["activity"]))
    assert len(records) == 7
    assert len([c for c in vendor.calls if "/activity" in c.request.url]) == 4


def test_segments_documented_root_key_is_read_as_fallback(vendor, ctx) -> None:
    # contacts.rst shows `segments`; the 5.1 code answers `lists` (covered above).
    search(vendor, JANE, [contact(47, JANE)])
    plain(vendor, 47, "segments", {"total": 1, "segments": {"3": {"id": 3, "name": "New Contacts",
                                                                  "alias": "newcontacts"}}})
    records = list(connector(ctx).export(ids(JANE), entities=["segments"]))
    assert [(r.record_id, r.fields["alias"]) for r in records] == [("47:3", "newcontacts")]


def test_notes_page_by_offset(vendor, ctx) -> None:
    search(vendor, JANE, [contact(47, JANE)])
    notes = [{"id": n, "text": f"note {n}", "type": "general", "dateTime": "2024-03-01T10:00:00+00:00"}
             for n in (1, 2, 3)]
    vendor.get(f"{BASE}/api/contacts/47/notes", json={"total": 3, "notes": notes[:2]},
               match=[matchers.query_param_matcher({"start": "0", "limit": "2"}), auth()])
    vendor.get(f"{BASE}/api/contacts/47/notes", json={"total": 3, "notes": notes[2:]},
               match=[matchers.query_param_matcher({"start": "2", "limit": "2"}), auth()])
    records = list(connector(ctx).export(ids(JANE), entities=["notes"]))
    assert [r.record_id for r in records] == ["47:1", "47:2", "47:3"]


def test_unknown_entity_is_refused(ctx) -> None:
    with pytest.raises(PermanentError, match="unknown entities"):
        list(connector(ctx).export(ids(JANE), entities=["tickets"]))


# -- erase ----------------------------------------------------------------------------------


def test_erase_deletes_both_contacts_and_names_the_residue(vendor, ctx) -> None:
    jane_two_contacts(vendor)
    for cid in (47, 52):
        plain(vendor, cid, "companies", {"total": 0, "companies": []})
        deleted = contact(cid, JANE)
        deleted["id"] = None  # Doctrine has cleared the id by the time the view is built
        vendor.delete(f"{BASE}/api/contacts/{cid}/delete", json={"contact": deleted},
                      match=[matchers.query_param_matcher({}), auth()])
    receipt = connector(ctx).erase(ids(JANE))
    assert receipt.changed == {"contact": 2}
    assert receipt.vendor_refs == ["mautic contact 47 deleted", "mautic contact 52 deleted"]
    assert len(receipt.manual_steps) == 1
    step = receipt.manual_steps[0]
    for residue in ("email_stats", "page_hits", "form_submissions", "47, 52"):
        assert residue in step
    assert "jane" not in str(receipt.to_dict()).lower()
    assert receipt.skipped == {}  # no company to leave alone


def test_erase_of_a_contact_already_gone_changes_nothing(vendor, ctx) -> None:
    search(vendor, JANE, [contact(47, JANE)])
    plain(vendor, 47, "companies", {"total": 0, "companies": []})
    vendor.delete(f"{BASE}/api/contacts/47/delete", json=NOT_FOUND, status=404, match=[auth()])
    receipt = connector(ctx).erase(ids(JANE))
    assert receipt.changed == {} and receipt.manual_steps == []
    assert any("already gone" in d for d in receipt.details)


def test_erase_needs_the_contact_entity(ctx) -> None:
    with pytest.raises(UnsupportedAction):
        connector(ctx).erase(ids(JANE), entities=["notes"])


# -- restrict / lift ------------------------------------------------------------------------


def test_restrict_adds_manual_dnc_on_email_for_each_contact_with_request_id(vendor, ctx) -> None:
    jane_two_contacts(vendor)
    for cid in (47, 52):
        # The reply is the contact with doNotContact now populated (LeadApiController::addDncAction, vendor-apis 2.5).
        vendor.post(f"{BASE}/api/contacts/{cid}/dnc/email/add",
                    json={"contact": with_entries(contact(cid, JANE), dnc(3, comments=OURS))},
                    match=[matchers.json_params_matcher({"reason": 3, "comments": "dsar restriction REQ-2024-7"}),
                           auth()])
    receipt = connector(ctx, request_id="REQ-2024-7").restrict(ids(JANE))
    assert receipt.changed == {"contact": 2}
    assert len(receipt.vendor_refs) == 2


def test_restrict_without_request_id_uses_the_fixed_comment(vendor, ctx) -> None:
    search(vendor, JANE, [contact(47, JANE)])
    vendor.post(f"{BASE}/api/contacts/47/dnc/email/add",
                json={"contact": with_entries(contact(47, JANE), dnc(3, comments="dsar restriction"))},
                match=[matchers.json_params_matcher({"reason": 3, "comments": "dsar restriction"}), auth()])
    assert connector(ctx).restrict(ids(JANE)).changed == {"contact": 1}


def dnc(reason: int, channel: str = "email", comments: str = "", n: int = 1) -> dict[str, Any]:
    """A `doNotContact` entry as every contact view carries it: LeadApiController.php L81 serialises
    `doNotContactList`, whose fields are LeadBundle/Entity/DoNotContact.php L96-107 (mautic/mautic @ 24271492)."""
    return {"id": n, "dateAdded": "2025-12-01T10:00:00+00:00", "reason": reason, "comments": comments,
            "channel": channel, "channelId": None}


OURS = "dsar restriction REQ-2024-7"  # the comment restrict() set (request id appended)


def test_lift_removes_only_our_own_dnc_and_counts_only_records_found(vendor, ctx) -> None:
    # Before issue 18 lift called remove on every contact and channel. Mautic's remove deletes the first DNC
    # entry on the channel whatever its reason (LeadBundle/Model/DoNotContact.php L28-51, no reason passed by
    # LeadApiController.php L463-486), so it is called only where the channel holds our entry alone.
    search(vendor, JANE, [with_entries(contact(47, JANE), dnc(3, comments=OURS)), contact(52, JANE)])
    vendor.post(f"{BASE}/api/contacts/47/dnc/email/remove", json={"recordFound": True, "contact": contact(47, JANE)},
                match=[auth()])
    # No remove for 52: it has no do-not-contact entry (the strict mock fails on any other call).
    receipt = connector(ctx).lift_restriction(ids(JANE))
    assert receipt.changed == {"contact": 1}
    assert receipt.vendor_refs == ["mautic contact 47 do-not-contact email removed"]
    assert all(c.request.body is None for c in vendor.calls if "/dnc/" in c.request.url)


def test_lift_never_removes_the_persons_own_unsubscribe_or_a_bounce(vendor, ctx) -> None:
    # Regression (issue 18, point 2): 47 unsubscribed herself (reason 1), 52 bounced (reason 2) on e-mail and has
    # our restriction on sms, 53 has a manual entry a Mautic user set (reason 3, another comment).
    search(vendor, JANE, [
        with_entries(contact(47, JANE), dnc(1, comments="User unsubscribed.")),
        with_entries(contact(52, JANE), dnc(2, comments="bounce"), dnc(3, "sms", "dsar restriction REQ-9", n=2)),
        with_entries(contact(53, JANE), dnc(3, comments="asked on the phone")),
    ])
    vendor.post(f"{BASE}/api/contacts/52/dnc/sms/remove", json={"recordFound": True, "contact": contact(52, JANE)},
                match=[auth()])
    # Registered nowhere else: a remove on e-mail for any of them would fail the test.
    receipt = connector(ctx, dnc_channels=["email", "sms"]).lift_restriction(ids(JANE))
    assert receipt.changed == {"contact": 1}
    assert receipt.vendor_refs == ["mautic contact 52 do-not-contact sms removed"]
    text = " ".join(receipt.details)
    assert "contact 47: kept the do-not-contact on email (unsubscribed)" in text
    assert "contact 52: kept the do-not-contact on email (bounced)" in text
    assert "contact 53: kept the do-not-contact on email (manual, set by someone else)" in text
    assert "phone" not in text and "REQ-9" not in text  # reasons in words, never the comments


def test_restrict_leaves_an_existing_unsubscribe_or_bounce_alone(vendor, ctx) -> None:
    # Adding reason 3 over a bounce replaces it (DoNotContact.php L92-110, $allowOverride at L98), and a lift
    # would then delete it: a channel already not contactable is left as it is.
    search(vendor, JANE, [with_entries(contact(47, JANE), dnc(2)), contact(52, JANE)])
    vendor.post(f"{BASE}/api/contacts/52/dnc/email/add",
                json={"contact": with_entries(contact(52, JANE), dnc(3, comments="dsar restriction"))},
                match=[matchers.json_params_matcher({"reason": 3, "comments": "dsar restriction"}), auth()])
    receipt = connector(ctx).restrict(ids(JANE))
    assert receipt.changed == {"contact": 1}
    assert any("contact 47 already has do-not-contact on email (bounced)" in d for d in receipt.details)


# -- a write that did nothing fails (issue 10 point 9) ---------------------------------------------------


def nothing_changed(call: str, answer: str) -> str:
    return f"{call} answered that it changed nothing ({answer}); the task is not done"


@pytest.mark.parametrize("reply, words", [
    ({}, "no contact in the reply"),
    ({"errors": [{"code": 500, "message": "Could not delete jane@example.com", "details": []}]},
     "errors: Could not delete <email>"),
], ids=["no_contact", "errors_at_200"])
def test_a_delete_whose_reply_holds_no_deleted_contact_fails(vendor, ctx, reply: dict[str, Any], words: str) -> None:
    # A 200 answers {"contact": <the deleted entity>} (CommonApiController::deleteEntityAction, vendor-apis.md 2.4).
    search(vendor, JANE, [contact(47, JANE)])
    plain(vendor, 47, "companies", {"total": 0, "companies": []})
    vendor.delete(f"{BASE}/api/contacts/47/delete", json=reply, match=[matchers.query_param_matcher({}), auth()])
    with pytest.raises(PermanentError) as info:
        connector(ctx).erase(ids(JANE))
    assert info.value.message == nothing_changed("DELETE api/contacts/47/delete", words)
    assert info.value.note is not None and info.value.note.params["answer"] == words


def test_a_dnc_add_whose_reply_shows_no_entry_fails(vendor, ctx) -> None:
    search(vendor, JANE, [contact(47, JANE)])
    vendor.post(f"{BASE}/api/contacts/47/dnc/email/add", json={"contact": contact(47, JANE)},
                match=[matchers.json_params_matcher({"reason": 3, "comments": "dsar restriction"}), auth()])
    with pytest.raises(PermanentError) as info:
        connector(ctx).restrict(ids(JANE))
    assert info.value.message == nothing_changed(
        "POST api/contacts/47/dnc/email/add", "the contact in the reply has no do-not-contact entry on email")


def test_a_dnc_remove_answering_record_not_found_fails(vendor, ctx) -> None:
    # {"recordFound": false, "contact": ...} is Mautic's reply when nothing was removed (vendor-apis.md 2.5).
    search(vendor, JANE, [with_entries(contact(47, JANE), dnc(3, comments=OURS))])
    vendor.post(f"{BASE}/api/contacts/47/dnc/email/remove", json={"recordFound": False, "contact": contact(47, JANE)},
                match=[matchers.query_param_matcher({}), auth()])
    with pytest.raises(PermanentError) as info:
        connector(ctx).lift_restriction(ids(JANE))
    assert info.value.message == nothing_changed("POST api/contacts/47/dnc/email/remove", "recordFound=false")


# -- check ----------------------------------------------------------------------------------


def check_call(vendor: responses.RequestsMock, status: int, body: Any, header: str = BASIC) -> None:
    vendor.get(f"{BASE}/api/contacts", json=body, status=status, headers=VERSION,
               match=[matchers.query_param_matcher({"limit": "1"}), auth(header)])


def test_check_ok(vendor, ctx) -> None:
    check_call(vendor, 200, {"total": "0", "contacts": []})
    health = connector(ctx).check()
    assert health.ok and health.problems == [] and health.warnings == []


@pytest.mark.parametrize(
    ("status", "kind", "expected"),
    [
        (403, "api_disabled", "API is disabled"),
        (403, "access_denied", "basic auth is disabled"),
        (401, "access_denied", "rejected the API user name or password"),
    ],
)
def test_check_names_the_cause(vendor, ctx, status: int, kind: str, expected: str) -> None:
    check_call(vendor, status, {"errors": [{"code": status, "message": "denied", "details": [], "type": kind}]})
    health = connector(ctx).check()
    assert health.ok is False
    assert len(health.problems) == 1 and expected in health.problems[0]
    assert "api-pass" not in health.problems[0]


# -- OAuth2 ---------------------------------------------------------------------------------

TOKEN_FORM = {"client_id": "mautic-client", "client_secret": "mautic-secret", "grant_type": "client_credentials"}


def token(vendor: responses.RequestsMock, value: str, expires_in: int = 3600) -> None:
    vendor.post(f"{BASE}/oauth/v2/token", match=[matchers.urlencoded_params_matcher(TOKEN_FORM)],
                json={"access_token": value, "expires_in": expires_in, "token_type": "bearer", "scope": ""})


def token_calls(vendor: responses.RequestsMock) -> int:
    return len([c for c in vendor.calls if c.request.url.endswith("/oauth/v2/token")])


def test_oauth2_fetches_a_token_once_and_reuses_it(vendor, ctx) -> None:
    token(vendor, "tok-1")
    jane_two_contacts(vendor, header="Bearer tok-1")
    vendor.get(f"{BASE}/api/contacts/47", json={"contact": contact(47, JANE)},
               match=[matchers.query_param_matcher({}), auth("Bearer tok-1")])
    conn = connector(ctx, auth="oauth2")
    conn.locate(ids(JANE))
    conn.locate(ids("47", kind=IdentityType.MAUTIC_CONTACT_ID))
    assert token_calls(vendor) == 1
    assert "Authorization" not in vendor.calls[0].request.headers  # no credentials on the token call header


def test_a_failed_token_call_fails_the_threads_behind_it_at_once_then_is_tried_again(vendor, ctx, sleeps) -> None:
    # Fault campaign: a Mautic answering 500 made every worker thread retry the token call in turn, each holding
    # the lock for the whole retry sequence. The first caller retries; the next ones get its error at once.
    now = [1000.0]
    for _ in range(FAST_RETRY.attempts):
        vendor.post(f"{BASE}/oauth/v2/token", status=500, match=[matchers.urlencoded_params_matcher(TOKEN_FORM)])
    conn = connector(ctx, auth="oauth2", clock=lambda: now[0])
    with pytest.raises(TransientError) as first:
        conn.locate(ids(JANE))
    with pytest.raises(TransientError) as second:
        conn.locate(ids(JANE))
    assert second.value is first.value and token_calls(vendor) == FAST_RETRY.attempts
    now[0] += 31  # the hold is over: the next caller asks Mautic again
    token(vendor, "tok-1")
    search(vendor, JANE, [], header="Bearer tok-1")
    assert conn.locate(ids(JANE)).found is False and token_calls(vendor) == FAST_RETRY.attempts + 1


def test_oauth2_renews_an_expired_token(vendor, ctx) -> None:
    now = [1000.0]
    token(vendor, "tok-1", expires_in=3600)
    token(vendor, "tok-2", expires_in=3600)
    search(vendor, JANE, [], header="Bearer tok-1")
    search(vendor, JANE, [], header="Bearer tok-2")
    conn = connector(ctx, auth="oauth2", clock=lambda: now[0])
    conn.locate(ids(JANE))
    now[0] += 3600  # an hour later the token has expired
    conn.locate(ids(JANE))
    assert token_calls(vendor) == 2


def test_oauth2_refreshes_once_on_401(vendor, ctx) -> None:
    expired = {"error": "invalid_grant", "error_description": "The access token provided has expired."}
    token(vendor, "tok-1")
    token(vendor, "tok-2")
    search(vendor, JANE, [], header="Bearer tok-1", status=401, body=expired)
    search(vendor, JANE, [contact(47, JANE)], header="Bearer tok-2")
    assert connector(ctx, auth="oauth2").locate(ids(JANE)).counts == {"contact": 1}
    assert token_calls(vendor) == 2


def test_oauth2_second_401_is_permanent(vendor, ctx) -> None:
    denied = {"error": "invalid_grant", "error_description": "The access token provided is invalid."}
    token(vendor, "tok-1")
    token(vendor, "tok-2")
    search(vendor, JANE, [], header="Bearer tok-1", status=401, body=denied)
    search(vendor, JANE, [], header="Bearer tok-2", status=401, body=denied)
    with pytest.raises(PermanentError, match="HTTP 401"):
        connector(ctx, auth="oauth2").locate(ids(JANE))


def test_oauth2_bad_client_shows_in_check(vendor, ctx) -> None:
    vendor.post(f"{BASE}/oauth/v2/token", status=400, match=[matchers.urlencoded_params_matcher(TOKEN_FORM)],
                json={"error": "invalid_client", "error_description": "The client credentials are invalid"})
    health = connector(ctx, auth="oauth2").check()
    assert health.ok is False
    assert "oauth/v2/token" in health.problems[0] and "invalid_client" in health.problems[0]
    assert "mautic-secret" not in health.problems[0]


def test_oauth2_credentials_not_created_by_an_admin_are_named_in_check(vendor, ctx) -> None:
    # ApiBundle/Controller/ClientController.php L233-238: only credentials an admin creates get the
    # client_credentials grant; the OAuth2 server then answers 400 unauthorized_client.
    vendor.post(f"{BASE}/oauth/v2/token", status=400, match=[matchers.urlencoded_params_matcher(TOKEN_FORM)],
                json={"error": "unauthorized_client",
                      "error_description": "The grant type is unauthorized for this client_id"})
    health = connector(ctx, auth="oauth2").check()
    assert health.ok is False and len(health.problems) == 1
    problem = health.problems[0]
    assert "unauthorized_client" in problem and "created by an admin user" in problem
    assert "mautic-secret" not in problem


# -- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"base_url": ""}, "base_url"),
        ({"base_url": BASE + "/api"}, "base_url"),
        ({"auth": "apikey"}, "auth"),
        ({"activity_page_size": 0}, "activity_page_size"),
        ({"timeout_s": "soon"}, "timeout_s"),
        ({"dnc_comment": "ask jane.doe@example.com"}, "dnc_comment"),
        ({"password_env": "DSAR_MISSING"}, "password_env"),
        ({"auth": "oauth2", "client_secret_env": None}, "client_secret_env"),
    ],
)
def test_bad_settings_name_the_key(ctx, change: dict[str, Any], named: str) -> None:
    with pytest.raises(PermanentError) as err:
        MauticConnector.from_settings("mautic", settings(**change), ctx)
    assert named in str(err.value)
    assert "jane" not in str(err.value)


# -- marketing retention (unsubscribed, ended trials) ---------------------------------------

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def dnc_rows(vendor: responses.RequestsMock, lead_ids: list[int | None], *, start: int = 0, total: int) -> None:
    params = {"where[0][col]": "reason", "where[0][expr]": "eq", "where[0][val]": "1",
              "where[1][col]": "channel", "where[1][expr]": "eq", "where[1][val]": "email",
              "start": str(start), "limit": "2"}
    rows = [{"id": 100 + n, "lead_id": lid, "date_added": "2025-12-01 10:00:00", "reason": 1, "channel": "email",
             "channel_id": None, "comments": "User unsubscribed."} for n, lid in enumerate(lead_ids, start=start)]
    # Rows come under `stats`, not under the table name: CoreBundle/Controller/Api/StatsApiController.php L27
    # ($itemsName = 'stats') and L48-49; Mautic's own EmailApiControllerFunctionalTest.php L319-336 reads ['stats'].
    # (Until issue 18 this fixture used the table name, the same wrong key as the connector.)
    vendor.get(f"{BASE}/api/stats/lead_donotcontact", json={"total": total, "stats": rows},
               match=[matchers.query_param_matcher(params), auth()])


def with_trial(c: dict[str, Any], ends: str | None) -> dict[str, Any]:
    c["fields"]["all"]["trial_ends_at"] = ends
    return c


def with_entries(c: dict[str, Any], *entries: dict[str, Any]) -> dict[str, Any]:
    c["doNotContact"] = list(entries)
    return c


def with_dnc(c: dict[str, Any], *entries: tuple[int, str]) -> dict[str, Any]:
    c["doNotContact"] = [{"id": n, "reason": reason, "comments": "", "channel": channel, "channelId": None}
                         for n, (reason, channel) in enumerate(entries, start=1)]
    return c


def test_unsubscribed_contacts_pages_the_dnc_table_and_reads_each_contacts_email(vendor, ctx) -> None:
    dnc_rows(vendor, [47, None], total=3)  # a row whose contact is gone (lead_id NULL) is skipped
    dnc_rows(vendor, [99], start=2, total=3)
    vendor.get(f"{BASE}/api/contacts/47", json={"contact": contact(47, " Kari.Hansen@Example.NET ")},
               match=[matchers.query_param_matcher({}), auth()])
    vendor.get(f"{BASE}/api/contacts/99", json=NOT_FOUND, status=404,  # deleted since: nobody to erase
               match=[matchers.query_param_matcher({}), auth()])
    assert connector(ctx).unsubscribed_contacts() == ["kari.hansen@example.net"]


def test_unsubscribed_contacts_reads_another_dnc_table_when_configured(vendor, ctx) -> None:
    vendor.get(f"{BASE}/api/stats/mautic_lead_donotcontact", json={"total": 0, "stats": []},
               match=[matchers.query_param_matcher({
                   "where[0][col]": "reason", "where[0][expr]": "eq", "where[0][val]": "1",
                   "where[1][col]": "channel", "where[1][expr]": "eq", "where[1][val]": "email",
                   "start": "0", "limit": "2"}), auth()])
    assert connector(ctx, dnc_table="mautic_lead_donotcontact").unsubscribed_contacts() == []


STATS_PARAMS = {"where[0][col]": "reason", "where[0][expr]": "eq", "where[0][val]": "1",
                "where[1][col]": "channel", "where[1][expr]": "eq", "where[1][val]": "email",
                "start": "0", "limit": "2"}


def test_unsubscribed_contacts_fails_loudly_on_an_errors_body_at_http_200(vendor, ctx) -> None:
    # StatsApiController.php L51-58: an exception becomes {"errors": [{"message", "code"}]} with HTTP 200.
    body = {"errors": [{"message": "SQLSTATE[42S22]: Column not found: 1054 Unknown column 'channel'", "code": 0}]}
    vendor.get(f"{BASE}/api/stats/lead_donotcontact", json=body,
               match=[matchers.query_param_matcher(STATS_PARAMS), auth()])
    with pytest.raises(PermanentError) as err:
        connector(ctx).unsubscribed_contacts()
    assert "api/stats/lead_donotcontact failed" in str(err.value) and "Unknown column" in str(err.value)


def test_unsubscribed_contacts_fails_loudly_when_mautic_does_not_serve_the_table(vendor, ctx) -> None:
    # StatsApiController.php L43-45: no subscriber served the table -> availableTables/tableColumns, no rows.
    body = {"availableTables": ["email_stats", "lead_donotcontact", "page_hits"], "tableColumns": {}}
    vendor.get(f"{BASE}/api/stats/lead_dnc", json=body, match=[matchers.query_param_matcher(STATS_PARAMS), auth()])
    with pytest.raises(PermanentError, match=r"serves no stats table 'lead_dnc'.*lead_donotcontact"):
        connector(ctx, dnc_table="lead_dnc").unsubscribed_contacts()


def test_expired_trials_filter_with_lt_now_and_drop_what_the_server_should_not_have_returned(vendor, ctx) -> None:
    params = {"where[0][col]": "trial_ends_at", "where[0][expr]": "lt", "where[0][val]": "2026-01-02 03:04:05",
              "start": "0", "limit": "2"}
    found = [with_trial(contact(7, "per.olsen@example.org", "Per"), "2025-12-31 23:59:59"),
             with_trial(contact(8, "liv.berg@example.org", "Liv"), "2099-01-01 00:00:00")]
    vendor.get(f"{BASE}/api/contacts", json={"total": "2", "contacts": {str(c["id"]): c for c in found}},
               match=[matchers.query_param_matcher(params), auth()])
    conn = connector(ctx, trial_field="trial_ends_at")
    assert conn.expired_trials(NOW) == ["per.olsen@example.org"]


def test_expired_trials_without_a_trial_field_asks_nothing(vendor, ctx) -> None:
    assert connector(ctx).expired_trials(NOW) == []  # strict mock: any call would fail the test


@pytest.mark.parametrize(("entries", "expected"), [
    ([[(1, "email")], [(1, "email"), (3, "sms")]], True),
    ([[(1, "email")], [(3, "email")]], False),  # one contact is only manually blocked: still subscribed
    ([[(1, "sms")], [(1, "email")]], False),
])
def test_is_unsubscribed_needs_every_contact_unsubscribed_from_email(vendor, ctx, entries, expected) -> None:
    search(vendor, JANE, [with_dnc(contact(47, JANE), *entries[0]), with_dnc(contact(52, JANE), *entries[1])])
    assert connector(ctx).is_unsubscribed(JANE) is expected


def test_is_unsubscribed_is_false_without_a_contact(vendor, ctx) -> None:
    search(vendor, JANE, [])
    assert connector(ctx).is_unsubscribed(JANE) is False


@pytest.mark.parametrize(("ends", "expected"), [
    (["2025-12-31 23:59:59", "2025-06-01"], True),
    (["2025-12-31T23:59:59+00:00", "2026-01-02T04:00:00+01:00"], True),  # 03:00 UTC
    (["2025-12-31 23:59:59", "2026-02-01 00:00:00"], False),  # one trial was extended
    (["2025-12-31 23:59:59", None], False),
])
def test_trial_ended_needs_every_contact_past_its_trial(vendor, ctx, ends, expected) -> None:
    search(vendor, JANE, [with_trial(contact(47, JANE), ends[0]), with_trial(contact(52, JANE), ends[1])])
    assert connector(ctx, trial_field="trial_ends_at").trial_ended(JANE, NOW) is expected


@pytest.mark.parametrize(("key", "value"), [("trial_field", "Trial Ends"), ("dnc_table", "x;drop"),
                                            ("newsletter_erasure_delay_days", -1)])
def test_bad_marketing_settings_are_refused_naming_the_key(ctx, key, value) -> None:
    with pytest.raises(PermanentError, match=key):
        connector(ctx, **{key: value})


def test_a_contact_id_another_mautic_instance_learned_is_never_looked_up_here(vendor, ctx) -> None:
    # Two systems of kind mautic (issue 10 point 8): contact 52 is the other instance's row id, someone else here.
    from connectors.base import Note
    from connectors.mautic import LEARNED_VIA

    theirs = Identity.learned(IdentityType.MAUTIC_CONTACT_ID, "52", "mautic_eu", Note(LEARNED_VIA, {
        "system": "mautic_eu", "id": "52", "how": "matched by e-mail", "field": "id"}))
    given = Identity(IdentityType.MAUTIC_CONTACT_ID, "47")  # in the request, or from an account table: looked up
    search(vendor, JANE, [])
    vendor.get(f"{BASE}/api/contacts/47", json={"contact": contact(47, JANE)}, match=[auth()])
    hits = connector(ctx).locate(Identities([Identity(IdentityType.EMAIL, JANE), theirs, given]))
    assert hits.counts == {"contact": 1}  # no GET /api/contacts/52 (the strict mock fails on one)

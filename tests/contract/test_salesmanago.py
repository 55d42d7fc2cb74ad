"""SALESmanago connector against mocked v2 calls (shapes from shared/vendor-apis.md section 3).

addresseeType is spelt in lower case, as every value seen on the wire (`email`, `tag`, `contact_id`:
SALESmanago's own sanis/salesmanago-api-sso-util @ 3bce697c, src/Model/LoyaltyProgramModel.php L9-18;
vendor-source-check.md S9). The fixtures used to send "EMAIL", which has no wire-level evidence.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson
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
)
from connectors.salesmanago import DEFAULT_DATA_TYPES, SalesmanagoConnector
from tests.contract.conftest import FAST_RETRY

BASE = "https://app3.salesmanago.com/api"
OWNER = "owner@shop.example"
JANE = "jane.doe@example.com"
JANE_ID = "8b1f6a52-1c9e-4d1a-9b7e-2f0d3c4e5a6b"
FIXED_NOW = datetime(2024, 5, 31, 16, 8, 37, 250_000, tzinfo=UTC)
REQUEST_TIME = 1717171717250  # FIXED_NOW in milliseconds
FILE_URL = "https://files.salesmanago.com/export/8f2c.json"
SETTINGS: dict[str, Any] = {
    "base_url": BASE,
    "client_id_env": "DSAR_SALESMANAGO_CLIENT_ID",
    "api_key_env": "DSAR_SALESMANAGO_API_KEY",
    "api_secret_env": "DSAR_SALESMANAGO_API_SECRET",
    "owner": OWNER,
    "poll_interval_s": 5,
    "poll_timeout_s": 60,
}


class FakeClock:
    """Monotonic time that only moves when the connector sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def fixed_ctx(ctx: ConnectorContext) -> ConnectorContext:
    return ConnectorContext(env=ctx.env, secret_key=ctx.secret_key, now=lambda: FIXED_NOW)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def connector(fixed_ctx: ConnectorContext, clock: FakeClock) -> SalesmanagoConnector:
    return SalesmanagoConnector.from_settings(
        "salesmanago", SETTINGS, fixed_ctx, retry=FAST_RETRY, sleep=clock.sleep, monotonic=clock.monotonic
    )


def auth(owner: str = OWNER) -> dict[str, Any]:
    # Computed here from the test credentials, independently of the connector: sha1(apiKey + clientId + apiSecret).
    return {
        "clientId": "sm-client",
        "apiKey": "sm-key",
        "requestTime": REQUEST_TIME,
        "sha": hashlib.sha1(b"sm-key" + b"sm-client" + b"sm-secret").hexdigest(),
        "owner": owner,
    }


def body(owner: str = OWNER, **fields: Any) -> list[Any]:
    """Strict matchers for one v2 call under `owner`: the exact JSON body and the documented Content-Type."""
    return [
        matchers.json_params_matcher({**auth(owner), **fields}, strict_match=True),
        matchers.header_matcher({"Content-Type": "application/json;charset=UTF-8"}),
    ]


def jane() -> Identities:
    return Identities([Identity(IdentityType.EMAIL, JANE)])


def jane_contact(**overrides: Any) -> dict[str, Any]:
    contact = {
        "contactId": JANE_ID, "name": "Jane Doe", "email": "Jane.Doe@Example.com", "phone": "+47 912 34 567",
        "company": "", "externalId": "app-user-8812", "state": "CUSTOMER", "score": 12, "optedOut": False,
        "optedOutPhone": False, "deleted": False, "invalid": False, "createdOn": 1700000000000,
        "modifiedOn": 1714650000000, "lastVisit": 1714650000000,
        "address": {"streetAddress": "", "zipCode": "", "city": "Oslo", "country": "NO"},
    }
    return {**contact, **overrides}


def monitoring(email: str = "Jane.Doe@Example.com", owner: str = OWNER) -> list[Any]:
    """Matchers of contact/stopMonitoring or restoreMonitoring for one e-mail, `addresseeType` in lower case as on
    the wire (sso-util src/Model/LoyaltyProgramModel.php L9-18)."""
    return body(owner, contacts=[{"addresseeType": "email", "value": email}])


def add_basic(vendor: responses.RequestsMock, contacts: list[dict[str, Any]], email: str = JANE,
              owner: str = OWNER) -> None:
    vendor.post(f"{BASE}/contact/basic", match=body(owner, email=[email]),
                json={"success": True, "message": [], "contacts": contacts})


# ---------------------------------------------------------------------- locate


def test_locate_signs_the_body_and_learns_the_contact_id_and_phone(
    vendor: responses.RequestsMock, connector: SalesmanagoConnector
) -> None:
    decoy = jane_contact(contactId="0000-decoy", email="jane.doe@example.com.au", phone="+61412345678")
    add_basic(vendor, [jane_contact(), decoy])

    hits = connector.locate(jane())

    assert hits.found is True
    assert hits.counts == {"contact": 1}  # the neighbour with a longer domain is not Jane
    assert {(i.type, i.value, i.source) for i in hits.learned} == {
        (IdentityType.SALESMANAGO_CONTACT_ID, JANE_ID, "salesmanago"),
        (IdentityType.PHONE, "+4791234567", "salesmanago"),
    }


def test_locate_nothing_found(vendor: responses.RequestsMock, connector: SalesmanagoConnector) -> None:
    add_basic(vendor, [])

    hits = connector.locate(jane())

    assert hits.found is False and hits.counts == {} and hits.learned == []


def test_locate_searches_both_spellings_of_an_international_domain(
    vendor: responses.RequestsMock, connector: SalesmanagoConnector
) -> None:
    vendor.post(f"{BASE}/contact/basic", match=body(email=["ola@räksmörgås.no", "ola@xn--rksmrgs-5wao1o.no"]),
                json={"success": True, "message": [],
                      "contacts": [jane_contact(email="ola@xn--rksmrgs-5wao1o.no", phone="")]})

    hits = connector.locate(Identities([Identity(IdentityType.EMAIL, "ola@räksmörgås.no")]))

    assert hits.counts == {"contact": 1}
    assert [i.type for i in hits.learned] == [IdentityType.SALESMANAGO_CONTACT_ID]  # empty phone is not learned


# ---------------------------------------------------------------------- export


def add_export_start(vendor: responses.RequestsMock, request_id: str = "req-77") -> None:
    vendor.post(
        f"{BASE}/contact/export/data",
        match=body(contacts=[{"addresseeType": "email", "value": "Jane.Doe@Example.com"}],
                   data=[{"dataType": t} for t in DEFAULT_DATA_TYPES]),
        json={"success": True, "message": [], "requestId": request_id},
    )


def add_status(vendor: responses.RequestsMock, answer: dict[str, Any], request_id: str = "req-77") -> None:
    vendor.post(f"{BASE}/job/status", match=body(requestId=request_id), json=answer)


EXPORT_FILE = orjson.dumps([
    {JANE_ID: {
        "contactData": {"contactId": JANE_ID, "email": "Jane.Doe@Example.com", "name": "Jane Doe"},
        "tagData": [{"tagName": "NEWSLETTER", "createdOn": 1700000000000},
                    {"tagName": "VIP", "createdOn": 1700000500000}],
        "extEventData": [{"contactExtEventType": "PURCHASE", "value": 49.0}],
    }}
])


def test_export_polls_the_job_until_a_file_url_then_downloads_and_parses_it(
    vendor: responses.RequestsMock, connector: SalesmanagoConnector, clock: FakeClock
) -> None:
    add_basic(vendor, [jane_contact()])
    add_export_start(vendor)
    add_status(vendor, {"success": True, "message": ["Export in progress"]})
    add_status(vendor, {"success": True, "message": ["Export in progress"]})
    add_status(vendor, {"success": True, "message": [], "fileUrl": FILE_URL})
    vendor.get(FILE_URL, body=EXPORT_FILE, content_type="application/json", match=[matchers.query_param_matcher({})])

    records = list(connector.export(jane()))

    by_entity: dict[str, list[Any]] = {}
    for record in records:
        by_entity.setdefault(record.entity, []).append(record)
    assert set(by_entity) == {"contact", "export_contact", "export_tag", "export_ext_event", "export_file"}
    assert by_entity["contact"][0].record_id == JANE_ID
    assert by_entity["contact"][0].fields["externalId"] == "app-user-8812"
    assert by_entity["export_contact"][0].fields["name"] == "Jane Doe"
    assert [r.fields["tagName"] for r in by_entity["export_tag"]] == ["NEWSLETTER", "VIP"]
    assert [r.record_id for r in by_entity["export_tag"]] == [f"{JANE_ID}:0", f"{JANE_ID}:1"]
    (file_record,) = by_entity["export_file"]
    assert file_record.record_id == "req-77"
    assert file_record.fields["parsed_records"] == 4
    assert file_record.fields["size_bytes"] == len(EXPORT_FILE)
    (attachment,) = file_record.attachments
    assert attachment.name == "salesmanago-export-req-77.json"
    assert attachment.content_type == "application/json"
    assert b"".join(attachment.open()) == EXPORT_FILE
    assert clock.slept == [5.0, 5.0]  # two "not ready" answers, one wait after each
    assert "https://files" not in orjson.dumps([r.fields for r in records]).decode()  # the link stays out


def test_export_keeps_a_file_that_is_not_json_as_the_raw_attachment_only(
    vendor: responses.RequestsMock, connector: SalesmanagoConnector
) -> None:
    csv = b"contactId;email\n" + JANE_ID.encode() + b";jane.doe@example.com\n"
    add_basic(vendor, [jane_contact()])
    add_export_start(vendor)
    add_status(vendor, {"success": True, "message": [], "fileUrl": "https://files.salesmanago.com/export/8f2c.csv"})
    vendor.get("https://files.salesmanago.com/export/8f2c.csv", body=csv, content_type="text/csv")

    records = list(connector.export(jane()))

    assert [r.entity for r in records] == ["contact", "export_file"]
    assert records[1].fields["parsed_records"] == 0
    assert records[1].attachments[0].name == "salesmanago-export-req-77.csv"
    assert b"".join(records[1].attachments[0].open()) == csv


def test_export_refuses_a_file_that_holds_someone_else(
    vendor: responses.RequestsMock, connector: SalesmanagoConnector
) -> None:
    other = orjson.dumps([{JANE_ID: {"contactData": {}}}, {"ffff-john": {"contactData": {"name": "John"}}}])
    add_basic(vendor, [jane_contact()])
    add_export_start(vendor)
    add_status(vendor, {"success": True, "message": [], "fileUrl": FILE_URL})
    vendor.get(FILE_URL, body=other, content_type="application/json")

    with pytest.raises(PermanentError, match="1 contact\\(s\\) that were not asked for"):
        list(connector.export(jane()))


def test_export_of_contact_entity_only_starts_no_job(
    vendor: responses.RequestsMock, connector: SalesmanagoConnector
) -> None:
    add_basic(vendor, [jane_contact()])

    records = list(connector.export(jane(), entities=["contact"]))

    assert [r.entity for r in records] == ["contact"]


@pytest.mark.timeout(10)  # an unbounded poll loop fails here instead of hanging
def test_export_poll_timeout_is_transient_and_names_the_job(
    vendor: responses.RequestsMock, connector: SalesmanagoConnector, clock: FakeClock
) -> None:
    add_basic(vendor, [jane_contact()])
    add_export_start(vendor)
    add_status(vendor, {"success": True, "message": ["Export in progress"]})  # repeats for every poll

    with pytest.raises(TransientError, match="export job req-77 had no file after 13 polls") as info:
        list(connector.export(jane()))

    status_calls = [c for c in vendor.calls if c.request.url == f"{BASE}/job/status"]
    assert len(status_calls) == 13  # at 0, 5, ... 60 s: bounded by the budget, never endless
    assert clock.now <= 60
    assert "job/status" in info.value.message


def test_export_file_gone_is_transient(vendor: responses.RequestsMock, connector: SalesmanagoConnector) -> None:
    add_basic(vendor, [jane_contact()])
    add_export_start(vendor)
    add_status(vendor, {"success": True, "message": [], "fileUrl": FILE_URL})
    vendor.get(FILE_URL, status=404)

    with pytest.raises(TransientError, match="export file of job req-77 is gone"):
        list(connector.export(jane()))


# ---------------------------------------------------------------------- erase / restrict / lift


@pytest.mark.parametrize("answer, refs", [
    ({"success": True, "message": []}, []),
    ({"success": True, "message": [], "result": "OK", "requestId": "del-5"}, ["del-5"]),
])
def test_erase_stops_monitoring_then_deletes_permanently(
    vendor: responses.RequestsMock, connector: SalesmanagoConnector, answer: dict[str, Any], refs: list[str]
) -> None:
    add_basic(vendor, [jane_contact()])
    vendor.post(f"{BASE}/contact/stopMonitoring",
                match=monitoring(),
                json={"success": True, "message": []})
    vendor.post(f"{BASE}/contact/delete", match=body(email="Jane.Doe@Example.com", permanently=True), json=answer)

    receipt = connector.erase(jane())

    assert receipt.changed == {"contact": 1}
    assert receipt.vendor_refs == refs
    # The delete is per owner; other SALESmanago users may still hold the contact (vendor-apis.md 3.1, 3.4).
    assert receipt.manual_steps == []
    (owners,) = [line for line in receipt.details if "other SALESmanago users (owners)" in line]
    assert JANE_ID in owners
    assert any("nightly" in line for line in receipt.details)
    assert "jane" not in " ".join(receipt.details).lower()
    assert [str(c.request.url).rsplit("/api/", 1)[1] for c in vendor.calls] == [
        "contact/basic", "contact/stopMonitoring", "contact/delete"]


@pytest.mark.parametrize("failure", [
    {"json": {"success": False, "message": ["Invalid addresseeType"]}},  # refused at HTTP 200, as v2 calls are
    {"status": 500, "body": "<html>Internal Server Error</html>"},  # until the retries run out
], ids=["success_false", "http_500"])
def test_erase_deletes_even_when_stop_monitoring_fails_and_says_so(
    vendor: responses.RequestsMock, connector: SalesmanagoConnector, failure: dict[str, Any], sleeps: list[float]
) -> None:
    # Issue 18 point 3: a failed stopMonitoring used to abort the erasure before contact/delete ran.
    add_basic(vendor, [jane_contact()])
    vendor.post(f"{BASE}/contact/stopMonitoring", match=monitoring(), **failure)
    vendor.post(f"{BASE}/contact/delete", match=body(email="Jane.Doe@Example.com", permanently=True),
                json={"success": True, "message": []})

    receipt = connector.erase(jane())

    assert receipt.changed == {"contact": 1}
    assert [str(c.request.url).rsplit("/api/", 1)[1] for c in vendor.calls][-1] == "contact/delete"
    assert "contact/stopMonitoring: web monitoring stopped for 0 contact(s)" in receipt.details
    (failed,) = [line for line in receipt.details if "deleted all the same" in line]
    assert failed.startswith(f"contact {JANE_ID}: ") and "contact/stopMonitoring" in failed
    (step,) = receipt.manual_steps
    assert JANE_ID in step and "no longer monitors" in step
    assert "jane" not in repr(receipt.to_dict()).lower()


def test_erase_of_an_unknown_person_deletes_nothing(
    vendor: responses.RequestsMock, connector: SalesmanagoConnector
) -> None:
    add_basic(vendor, [])

    receipt = connector.erase(jane())  # any delete call would be unregistered and fail the test

    assert receipt.changed == {"contact": 0}


def test_standard_removal_leaves_a_manual_step(
    vendor: responses.RequestsMock, fixed_ctx: ConnectorContext
) -> None:
    connector = SalesmanagoConnector.from_settings(
        "salesmanago", {**SETTINGS, "delete_permanently": False, "stop_monitoring_on_erase": False}, fixed_ctx,
        retry=FAST_RETRY)
    add_basic(vendor, [jane_contact()])
    vendor.post(f"{BASE}/contact/delete", match=body(email="Jane.Doe@Example.com", permanently=False),
                json={"success": True, "message": []})

    receipt = connector.erase(jane())

    assert receipt.changed == {"contact": 1}
    assert len(receipt.manual_steps) == 1 and "permanently" in receipt.manual_steps[0]


def test_restrict_opts_out_of_email_and_phone_and_stops_monitoring(
    vendor: responses.RequestsMock, connector: SalesmanagoConnector
) -> None:
    add_basic(vendor, [jane_contact()])
    vendor.post(f"{BASE}/contact/optout", match=body(email="Jane.Doe@Example.com"),
                json={"success": True, "message": [], "contactId": JANE_ID})
    vendor.post(f"{BASE}/contact/phoneoptout", match=body(email="Jane.Doe@Example.com"),
                json={"success": True, "message": [], "contactId": JANE_ID})
    vendor.post(f"{BASE}/contact/stopMonitoring",
                match=monitoring(),
                json={"success": True, "message": []})

    receipt = connector.restrict(jane())

    assert receipt.action == "restrict"
    assert receipt.changed == {"contact": 1}
    assert "contact/optout" in receipt.details[0] and "contact/stopMonitoring" in receipt.details[0]


def test_lift_opts_back_in_and_restores_monitoring(
    vendor: responses.RequestsMock, connector: SalesmanagoConnector
) -> None:
    add_basic(vendor, [jane_contact(optedOut=True, optedOutPhone=True)])
    vendor.post(f"{BASE}/contact/optin", match=body(email="Jane.Doe@Example.com"),
                json={"success": True, "message": [], "contactId": JANE_ID})
    vendor.post(f"{BASE}/contact/phoneoptin", match=body(email="Jane.Doe@Example.com"),
                json={"success": True, "message": [], "contactId": JANE_ID})
    vendor.post(f"{BASE}/contact/restoreMonitoring",
                match=monitoring(),
                json={"success": True, "message": []})

    receipt = connector.lift_restriction(jane())

    assert receipt.action == "lift_restriction" and receipt.changed == {"contact": 1}
    assert receipt.manual_steps == []


def test_lift_without_opt_in_only_restores_monitoring(
    vendor: responses.RequestsMock, fixed_ctx: ConnectorContext
) -> None:
    connector = SalesmanagoConnector.from_settings(
        "salesmanago", {**SETTINGS, "lift_opt_in": False, "paths": {"restore_monitoring": "v2/contact/monitor"}},
        fixed_ctx, retry=FAST_RETRY)
    add_basic(vendor, [jane_contact()])
    vendor.post(f"{BASE}/v2/contact/monitor",
                match=monitoring(),
                json={"success": True, "message": []})

    receipt = connector.lift_restriction(jane())

    assert receipt.changed == {"contact": 1}
    assert "fresh consent" in receipt.manual_steps[0]


# ---------------------------------------------------------------------- several owners (issue 10 point 8)

SECOND = "sales2@shop.example"


@pytest.fixture
def two_owners(fixed_ctx: ConnectorContext) -> SalesmanagoConnector:
    settings = {**{k: v for k, v in SETTINGS.items() if k != "owner"}, "owners": [OWNER, SECOND]}
    return SalesmanagoConnector.from_settings("salesmanago", settings, fixed_ctx, retry=FAST_RETRY)


def test_two_owners_locate_the_contact_under_the_second_and_say_so(
    vendor: responses.RequestsMock, two_owners: SalesmanagoConnector
) -> None:
    add_basic(vendor, [])  # the first owner holds no Jane
    add_basic(vendor, [jane_contact()], owner=SECOND)

    hits = two_owners.locate(jane())

    assert hits.counts == {"contact": 1}
    via = f"salesmanago: contact {JANE_ID} (matched by e-mail under owner 2 of the data map's owners), field "
    assert {(i.type, i.via) for i in hits.learned} == {
        (IdentityType.SALESMANAGO_CONTACT_ID, via + "contactId"), (IdentityType.PHONE, via + "phone")}
    assert SECOND not in repr([i.to_dict() for i in hits.learned])  # a staff e-mail is never provenance


def test_two_owners_erase_under_the_owner_holding_the_contact(
    vendor: responses.RequestsMock, two_owners: SalesmanagoConnector
) -> None:
    add_basic(vendor, [])
    add_basic(vendor, [jane_contact()], owner=SECOND)
    vendor.post(f"{BASE}/contact/stopMonitoring", match=monitoring(owner=SECOND), json={"success": True, "message": []})
    vendor.post(f"{BASE}/contact/delete", match=body(SECOND, email="Jane.Doe@Example.com", permanently=True),
                json={"success": True, "message": [], "result": "OK"})

    receipt = two_owners.erase(jane())

    assert receipt.changed == {"contact": 1}
    (where,) = [line for line in receipt.details if "ran under each owner" in line]
    assert f"{JANE_ID}: 2" in where and SECOND not in where
    assert [orjson.loads(c.request.body)["owner"] for c in vendor.calls] == [OWNER, SECOND, SECOND, SECOND]


def test_a_contact_both_owners_hold_is_erased_under_each_and_exported_once(
    vendor: responses.RequestsMock, two_owners: SalesmanagoConnector
) -> None:
    add_basic(vendor, [jane_contact()])
    add_basic(vendor, [jane_contact()], owner=SECOND)
    for owner in (OWNER, SECOND):
        vendor.post(f"{BASE}/contact/optout", match=body(owner, email="Jane.Doe@Example.com"),
                    json={"success": True, "message": [], "contactId": JANE_ID})
        vendor.post(f"{BASE}/contact/phoneoptout", match=body(owner, email="Jane.Doe@Example.com"),
                    json={"success": True, "message": [], "contactId": JANE_ID})
        vendor.post(f"{BASE}/contact/stopMonitoring", match=monitoring(owner=owner),
                    json={"success": True, "message": []})

    receipt = two_owners.restrict(jane())

    assert receipt.changed == {"contact": 1}  # one contact, restricted under both owners
    assert sorted(orjson.loads(c.request.body)["owner"] for c in vendor.calls
                  if c.request.url.endswith("/contact/optout")) == sorted([OWNER, SECOND])


@pytest.mark.parametrize("change, problem", [
    ({"owners": [OWNER, SECOND]}, "either owner or owners"),
    ({"owner": None, "owners": []}, "owner: required"),
    ({"owner": None, "owners": OWNER}, "must be a list"),
    ({"owner": None, "owners": [OWNER, OWNER.upper()]}, "listed twice"),
    ({"owner": None, "owners": [OWNER, "sales-team"]}, "owners.1"),
])
def test_bad_owner_lists_are_named(fixed_ctx: ConnectorContext, change: dict[str, Any], problem: str) -> None:
    settings = {k: v for k, v in {**SETTINGS, **change}.items() if v is not None}

    with pytest.raises(PermanentError, match=problem):
        SalesmanagoConnector.from_settings("salesmanago", settings, fixed_ctx)


# ---------------------------------------------------------------------- a write that did nothing (issue 10 point 9)


@pytest.mark.parametrize("answer, words", [
    ({"success": True, "message": [], "result": False}, "success=true, result=false"),
    ({"success": True, "message": ["Contact not deleted"], "result": "false"},
     'success=true, result="false", message: Contact not deleted'),
    ({"success": True, "message": [], "contactIds": []}, "success=true, contactIds=[]"),
], ids=["result_false", "result_false_text", "contact_ids_empty"])
def test_a_delete_that_did_nothing_fails_with_the_replys_words(
    vendor: responses.RequestsMock, connector: SalesmanagoConnector, answer: dict[str, Any], words: str
) -> None:
    add_basic(vendor, [jane_contact()])
    vendor.post(f"{BASE}/contact/stopMonitoring", match=monitoring(), json={"success": True, "message": []})
    vendor.post(f"{BASE}/contact/delete", match=body(email="Jane.Doe@Example.com", permanently=True), json=answer)

    with pytest.raises(PermanentError) as info:
        connector.erase(jane())

    assert info.value.message == ("contact/delete under owner 1 answered that it changed nothing for contact "
                                  f"{JANE_ID} ({words}); the task is not done")
    assert info.value.note is not None and info.value.note.params["answer"] == words
    assert "\n" not in info.value.message


@pytest.mark.parametrize("call, answer", [
    ("optout", {"success": True, "message": [], "contactId": None}),
    ("optout", {"success": True, "message": [], "contactId": "0000-someone-else"}),
    ("phoneoptout", {"success": True, "message": [], "contactId": ""}),
    ("stopMonitoring", {"success": False, "message": ["Contact Jane.Doe@Example.com not found"]}),
])
def test_a_restriction_call_that_did_nothing_fails_with_the_replys_words(
    vendor: responses.RequestsMock, connector: SalesmanagoConnector, call: str, answer: dict[str, Any]
) -> None:
    add_basic(vendor, [jane_contact()])
    done = {"success": True, "message": [], "contactId": JANE_ID}
    order = ["optout", "phoneoptout", "stopMonitoring"]
    for earlier in order[:order.index(call)]:
        match = monitoring() if earlier == "stopMonitoring" else body(email="Jane.Doe@Example.com")
        vendor.post(f"{BASE}/contact/{earlier}", match=match, json=done)
    match = monitoring() if call == "stopMonitoring" else body(email="Jane.Doe@Example.com")
    vendor.post(f"{BASE}/contact/{call}", match=match, json=answer)

    with pytest.raises(PermanentError) as info:
        connector.restrict(jane())

    assert info.value.message.startswith(f"contact/{call} ")
    if answer["success"]:
        assert f"changed nothing for contact {JANE_ID} (success=true, contactId=" in info.value.message
    else:
        assert info.value.message == "contact/stopMonitoring answered success=false (Contact <email> not found)"
    assert "jane" not in info.value.message.lower()


@pytest.mark.parametrize("call", ["optin", "phoneoptin"])
def test_a_lift_call_that_did_nothing_fails(
    vendor: responses.RequestsMock, connector: SalesmanagoConnector, call: str
) -> None:
    add_basic(vendor, [jane_contact(optedOut=True, optedOutPhone=True)])
    if call == "phoneoptin":
        vendor.post(f"{BASE}/contact/optin", match=body(email="Jane.Doe@Example.com"),
                    json={"success": True, "message": [], "contactId": JANE_ID})
    vendor.post(f"{BASE}/contact/{call}", match=body(email="Jane.Doe@Example.com"),
                json={"success": True, "message": [], "contactIds": {}})

    with pytest.raises(PermanentError, match=f"contact/{call} under owner 1 answered that it changed nothing"):
        connector.lift_restriction(jane())


# ---------------------------------------------------------------------- check and errors


def test_check_probes_with_a_non_personal_address(
    vendor: responses.RequestsMock, connector: SalesmanagoConnector
) -> None:
    add_basic(vendor, [], email="dsar-healthcheck@example.invalid")

    health = connector.check()

    assert health.ok is True and health.problems == [] and health.warnings == []


def test_bad_credentials_answer_success_false_at_200(
    vendor: responses.RequestsMock, connector: SalesmanagoConnector
) -> None:
    vendor.post(f"{BASE}/contact/basic", match=body(email=["dsar-healthcheck@example.invalid"]),
                json={"success": False, "message": ["User not authenticated"]})

    health = connector.check()

    assert health.ok is False
    assert "contact/basic refused the credentials (User not authenticated)" in health.problems[0]
    assert "sm-key" not in health.problems[0] and "sm-secret" not in health.problems[0]


def test_http_401_is_permanent(vendor: responses.RequestsMock, connector: SalesmanagoConnector) -> None:
    vendor.post(f"{BASE}/contact/basic", match=body(email=[JANE]), status=401,
                json={"success": False, "message": ["Not authenticated"]})

    with pytest.raises(PermanentError, match="HTTP 401") as info:
        connector.locate(jane())
    assert "check the credentials" in info.value.message


def test_http_404_points_at_the_base_url(vendor: responses.RequestsMock, connector: SalesmanagoConnector) -> None:
    vendor.post(f"{BASE}/contact/basic", match=body(email=[JANE]), status=404, body="<html>Not Found</html>")

    with pytest.raises(PermanentError, match="check base_url") as info:
        connector.locate(jane())
    assert not isinstance(info.value, TransientError)


def test_success_false_at_200_is_permanent_and_redacted(
    vendor: responses.RequestsMock, connector: SalesmanagoConnector
) -> None:
    add_basic(vendor, [jane_contact()])
    vendor.post(f"{BASE}/contact/stopMonitoring",
                match=monitoring(),
                json={"success": True, "message": []})
    vendor.post(f"{BASE}/contact/delete", match=body(email="Jane.Doe@Example.com", permanently=True),
                json={"success": False, "message": ["Contact Jane.Doe@Example.com could not be deleted"]})

    with pytest.raises(PermanentError) as info:
        connector.erase(jane())

    assert info.value.message == "contact/delete answered success=false (Contact <email> could not be deleted)"


def test_429_then_success(
    vendor: responses.RequestsMock, connector: SalesmanagoConnector, sleeps: list[float]
) -> None:
    vendor.post(f"{BASE}/contact/basic", match=body(email=[JANE]), status=429, headers={"Retry-After": "2"})
    add_basic(vendor, [jane_contact()])

    assert connector.locate(jane()).found is True
    assert sleeps == [2.0]


def test_500_then_success(vendor: responses.RequestsMock, connector: SalesmanagoConnector, sleeps: list[float]) -> None:
    vendor.post(f"{BASE}/contact/basic", match=body(email=[JANE]), status=500)
    add_basic(vendor, [jane_contact()])

    assert connector.locate(jane()).counts == {"contact": 1}
    assert len(sleeps) == 1


def test_500_until_retries_run_out(
    vendor: responses.RequestsMock, connector: SalesmanagoConnector, sleeps: list[float]
) -> None:
    vendor.post(f"{BASE}/contact/basic", match=body(email=[JANE]), status=500)  # repeats

    with pytest.raises(TransientError, match="failed after 3 attempts: HTTP 500"):
        connector.locate(jane())
    assert len(vendor.calls) == FAST_RETRY.attempts
    assert len(sleeps) == FAST_RETRY.attempts - 1


def test_428_is_transient(vendor: responses.RequestsMock, connector: SalesmanagoConnector) -> None:
    vendor.post(f"{BASE}/contact/basic", match=body(email=[JANE]), status=428,
                json={"success": False, "message": []})

    with pytest.raises(TransientError, match="contact/basic answered HTTP 428"):
        connector.locate(jane())


# ---------------------------------------------------------------------- settings


@pytest.mark.parametrize("change, key", [
    ({"owner": None}, "owner"),
    ({"owner": "not-an-email"}, "owner"),
    ({"base_url": "app3.salesmanago.com/api"}, "base_url"),
    ({"poll_timeout_s": 0}, "poll_timeout_s"),
    ({"paths": {"erase": "contact/remove"}}, "paths"),
    ({"export_data_types": "CONTACT"}, "export_data_types"),
    ({"api_secret_env": None}, "api_secret_env"),
])
def test_bad_settings_name_the_key(fixed_ctx: ConnectorContext, change: dict[str, Any], key: str) -> None:
    settings = {k: v for k, v in {**SETTINGS, **change}.items() if v is not None}

    with pytest.raises(PermanentError, match=key):
        SalesmanagoConnector.from_settings("salesmanago", settings, fixed_ctx)


def test_missing_secret_names_the_variable_not_a_value() -> None:
    ctx = ConnectorContext(env={"DSAR_SALESMANAGO_CLIENT_ID": "sm-client", "DSAR_SALESMANAGO_API_KEY": "sm-key"})

    with pytest.raises(PermanentError, match="DSAR_SALESMANAGO_API_SECRET"):
        SalesmanagoConnector.from_settings("salesmanago", SETTINGS, ctx)

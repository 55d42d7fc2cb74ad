"""A small SALESmanago v2 API simulator, written from shared/vendor-apis.md section 3.

What it models: POST-only JSON calls under /api/ with the credentials in the body (any apiKey
whose sha = sha1(apiKey + clientId + apiSecret) matches, as clients that send a fresh apiKey per
call rely on); failures at HTTP 200 as {"success": false, "message": [...]}; contacts held by one
or more SALESmanago users (owners, `OWNERS`), every call scoped by the body's `owner` (an owner
holding no such contact answers as if it did not exist); the asynchronous GDPR export job
(job/status answers "not ready" for the first polls, then a fileUrl served under /files/);
delete (permanent: gone at once; standard: flagged `deleted`, kept until `nightly_purge`; one
owner of several: gone for that owner only [U]); e-mail/phone opt-out/in and web monitoring
stop/restore. An addressee is `{addresseeType, value}` with the type spelt as on the
wire, lower case (`email`, `contact_id`: SALESmanago's own sanis/salesmanago-api-sso-util @ 3bce697c,
src/Model/LoyaltyProgramModel.php L9-18; vendor-source-check.md S9); any other spelling, such as
"EMAIL", answers success=false. Unknown paths answer 404, other methods 405.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from sandbox.people import DECOY_EMAIL, JANE, PEOPLE

_NOW_MS = 1_714_650_000_000
# dataType asked for -> section of the export file ([L] for contactData/tagData; the rest assumed).
# Calls that read (an export job is a read the vendor runs later); every other method changes a contact.
_READS = frozenset({"contact/basic", "contact/export/data", "job/status"})
_SECTIONS = {"CONTACT": "contactData", "TAG": "tagData", "EXT_EVENT": "extEventData", "VISITS": "visitsData"}
_BASIC_FIELDS = (
    "contactId", "name", "email", "phone", "fax", "score", "state", "company", "externalId", "optedOut",
    "optedOutPhone", "deleted", "invalid", "createdOn", "modifiedOn", "lastVisit", "address",
)


def _key(email: str) -> str:
    return email.strip().lower()


class SalesmanagoSim:
    CLIENT_ID = "sim-client-id"
    API_KEY = "sim-api-key"
    API_SECRET = "sim-api-secret"
    OWNER = "owner@shop.example"
    OTHER_OWNER = "sales2@shop.example"  # a second SALESmanago user account of the same client
    OWNERS = (OWNER, OTHER_OWNER)
    POLLS_UNTIL_READY = 2  # job/status answers "not ready" this many times first

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.contacts: dict[str, dict[str, Any]] = {}  # contactId -> contact (basic fields + tags/events/visits)
        self.monitored: dict[str, bool] = {}  # contactId -> web monitoring on
        self.jobs: dict[str, dict[str, Any]] = {}  # requestId -> job
        self.files: dict[str, dict[str, Any]] = {}  # token -> {"body": bytes, "emails": set}
        self.status_polls = 0
        self.calls: list[str] = []
        # Every call that changes state, as (method, contactId or lower-cased e-mail), answered or not
        # (sandbox.launch.Sandbox.writes).
        self.writes: list[tuple[str, str]] = []
        self._map = Map([
            Rule("/api/<path:method>", endpoint="api", methods=["POST"]),
            Rule("/files/<name>", endpoint="file", methods=["GET"]),
        ])
        self._handlers: dict[str, Callable[[dict[str, Any], Request], dict[str, Any]]] = {
            "contact/basic": self._basic,
            "contact/delete": self._delete,
            "contact/optout": lambda body, _r: self._opt(body, "optedOut", True),
            "contact/optin": lambda body, _r: self._opt(body, "optedOut", False),
            "contact/phoneoptout": lambda body, _r: self._opt(body, "optedOutPhone", True),
            "contact/phoneoptin": lambda body, _r: self._opt(body, "optedOutPhone", False),
            "contact/stopMonitoring": lambda body, _r: self._monitoring(body, False),
            "contact/restoreMonitoring": lambda body, _r: self._monitoring(body, True),
            "contact/export/data": self._export,
            "job/status": self._job_status,
        }

    # ------------------------------------------------------------------ seeding and inspection

    def add_contact(self, email: str, name: str, phone: str = "", *, contact_id: str | None = None,
                    tags: Iterable[str] = (), events: Iterable[dict[str, Any]] = (),
                    visits: Iterable[str] = (), owners: Iterable[str] = (OWNER,)) -> str:
        contact_id = contact_id or str(uuid.uuid4())
        with self._lock:
            self.contacts[contact_id] = {
                "contactId": contact_id, "name": name, "email": email, "phone": phone, "fax": "", "score": 12,
                "state": "CUSTOMER", "company": "", "externalId": "", "optedOut": False, "optedOutPhone": False,
                "deleted": False, "invalid": False, "createdOn": _NOW_MS - 86_400_000, "modifiedOn": _NOW_MS,
                "lastVisit": _NOW_MS, "address": {"streetAddress": "", "zipCode": "", "city": "Oslo", "country": "NO"},
                "tags": [{"tagName": tag, "createdOn": _NOW_MS} for tag in tags],
                "events": [dict(event) for event in events],
                "visits": [{"url": url, "date": _NOW_MS} for url in visits],
                # The SALESmanago users (owners) holding the contact; never part of an answer (no vendor
                # text shows owners in contact/basic).
                "owners": list(owners),
            }
            self.monitored[contact_id] = True
        return contact_id

    def seed_demo(self) -> None:
        for person in PEOPLE:
            # Jane is stored in mixed case, as people type it; the vendor matches case-insensitively.
            email = "Jane.Doe@Example.com" if person.key == "jane" else person.email
            self.add_contact(
                email, f"{person.first_name} {person.last_name}", person.phone,
                contact_id=str(uuid.uuid5(uuid.NAMESPACE_DNS, f"salesmanago.{person.key}")),
                tags=("NEWSLETTER", f"CUSTOMER_{person.key.upper()}"),
                events=[{"eventId": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"event.{person.key}")),
                         "contactExtEventType": "PURCHASE", "description": f"order {person.account_id}",
                         "value": 49.0, "date": _NOW_MS}],
                visits=(f"https://shop.example/account/{person.account_id}",),
            )
        self.add_contact(DECOY_EMAIL, "Jane Doe-Smith", "+61412345678",
                         contact_id=str(uuid.uuid5(uuid.NAMESPACE_DNS, "salesmanago.decoy")), tags=("NEWSLETTER",))

    def seed_shared(self) -> None:
        """After seed_demo: Jane's contact is also held by a second owner (another SALESmanago user)."""
        with self._lock:
            found = self._by_email(JANE.email, self.OWNER)
            assert found is not None
            found["owners"].append(self.OTHER_OWNER)

    def move_to(self, email: str, owner: str) -> None:
        """The contact with this e-mail is held by `owner` alone (e.g. the second owner's sales team)."""
        with self._lock:
            found = self._by_email(email)
            assert found is not None and owner in self.OWNERS
            found["owners"] = [owner]

    def owners(self, email: str) -> list[str]:
        """The owners still holding the contact with this e-mail ([] when none)."""
        with self._lock:
            found = self._by_email(email)
            return list(found["owners"]) if found else []

    def contact_id(self, email: str) -> str | None:
        with self._lock:
            found = self._by_email(email)
            return found["contactId"] if found else None

    def flags(self, email: str) -> dict[str, bool]:
        """Opt-out, monitoring and removal flags of the contact with this e-mail ({} when none)."""
        with self._lock:
            found = self._by_email(email)
            if not found:
                return {}
            return {"optedOut": found["optedOut"], "optedOutPhone": found["optedOutPhone"],
                    "monitored": self.monitored[found["contactId"]], "deleted": found["deleted"]}

    def holdings(self, email: str) -> dict[str, int]:
        with self._lock:
            counts: dict[str, int] = {}
            found = self._by_email(email)
            if found:
                counts["contacts"] = 1
                for kind in ("tags", "events", "visits"):
                    if found[kind]:
                        counts[kind] = len(found[kind])
            files = sum(1 for f in self.files.values() if _key(email) in f["emails"])
            if files:
                counts["export_files"] = files
            return counts

    def nightly_purge(self) -> int:
        """The vendor's 2-4 a.m. run: contacts removed the standard way are deleted for good."""
        with self._lock:
            gone = [cid for cid, c in self.contacts.items() if c["deleted"]]
            for cid in gone:
                del self.contacts[cid]
                del self.monitored[cid]
            return len(gone)

    def settings(self, base_url: str, owners: Iterable[str] | None = None) -> dict[str, Any]:
        """Data-map settings: the one `owner` by default, or an `owners` list."""
        return {
            "base_url": f"{base_url.rstrip('/')}/api",
            "client_id_env": "DSAR_SM_SIM_CLIENT_ID",
            "api_key_env": "DSAR_SM_SIM_API_KEY",
            "api_secret_env": "DSAR_SM_SIM_API_SECRET",
            **({"owner": self.OWNER} if owners is None else {"owners": list(owners)}),
            "poll_interval_s": 0.01,
            "poll_timeout_s": 5.0,
        }

    def env(self) -> dict[str, str]:
        return {
            "DSAR_SM_SIM_CLIENT_ID": self.CLIENT_ID,
            "DSAR_SM_SIM_API_KEY": self.API_KEY,
            "DSAR_SM_SIM_API_SECRET": self.API_SECRET,
        }

    # ------------------------------------------------------------------ WSGI

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        return self.wsgi(Request(environ))(environ, start_response)

    @property
    def app(self) -> SalesmanagoSim:
        return self

    def wsgi(self, request: Request) -> Response:
        try:
            endpoint, args = self._map.bind_to_environ(request.environ).match()
        except HTTPException as exc:
            return Response(f"<html><body>{exc.code}</body></html>", status=exc.code, content_type="text/html")
        if endpoint == "file":
            with self._lock:
                stored = self.files.get(args["name"].removesuffix(".json"))
            if stored is None:
                return Response("<html><body>404</body></html>", status=404, content_type="text/html")
            return Response(stored["body"], content_type="application/json")
        method = args["method"]
        handler = self._handlers.get(method)
        if handler is None:
            return Response("<html><body>404</body></html>", status=404, content_type="text/html")
        try:
            body = orjson.loads(request.get_data())
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return _answer(False, ["Invalid request body"], status=400)
        if not self._authenticated(body):
            return _answer(False, ["User not authenticated"])
        if body.get("owner") not in self.OWNERS:
            return _answer(False, ["Owner not found"])
        with self._lock:
            self.calls.append(method)
            if method not in _READS:
                self.writes.extend((method, target) for target in _targets(body))
            result = handler(body, request)
        return Response(orjson.dumps(result), content_type="application/json")

    def _authenticated(self, body: dict[str, Any]) -> bool:
        api_key, client_id, sha = body.get("apiKey"), body.get("clientId"), body.get("sha")
        if client_id != self.CLIENT_ID or not isinstance(api_key, str) or not api_key or not isinstance(sha, str):
            return False
        if not isinstance(body.get("requestTime"), int):
            return False
        expected = hashlib.sha1((api_key + client_id + self.API_SECRET).encode("utf-8")).hexdigest()
        return sha.lower() == expected

    # ------------------------------------------------------------------ handlers (called under the lock)

    def _by_email(self, email: str, owner: str | None = None) -> dict[str, Any] | None:
        """The contact with this e-mail (any case); with `owner`, only one that owner holds."""
        wanted = _key(email)
        return next((c for c in self.contacts.values()
                     if _key(c["email"]) == wanted and (owner is None or owner in c["owners"])), None)

    def _target(self, body: dict[str, Any]) -> dict[str, Any] | None:
        owner = str(body.get("owner"))
        if isinstance(body.get("contactId"), str):
            found = self.contacts.get(body["contactId"])
            return found if found and owner in found["owners"] else None
        return self._by_email(body["email"], owner) if isinstance(body.get("email"), str) else None

    def _basic(self, body: dict[str, Any], _request: Request) -> dict[str, Any]:
        emails = body.get("email")
        emails = [emails] if isinstance(emails, str) else emails
        if not isinstance(emails, list):
            return _fail("email is required")
        found: list[dict[str, Any]] = []
        for email in emails:
            contact = self._by_email(str(email), str(body.get("owner")))
            if contact and contact not in found:
                found.append(contact)
        return {"success": True, "message": [], "contacts": [{k: c[k] for k in _BASIC_FIELDS} for c in found]}

    def _delete(self, body: dict[str, Any], _request: Request) -> dict[str, Any]:
        contact = self._target(body)
        if contact is None:
            return _fail("Contact not found")
        if len(contact["owners"]) > 1:
            # [U] whether a delete reaches a contact other owners hold too: pessimistically, it removes it
            # for the calling owner only, and the contact stays with the others.
            contact["owners"].remove(body["owner"])
            return {"success": True, "message": []}
        if body.get("permanently") is True:
            del self.contacts[contact["contactId"]]
            del self.monitored[contact["contactId"]]
        else:
            contact["deleted"] = True
        return {"success": True, "message": []}

    def _opt(self, body: dict[str, Any], flag: str, value: bool) -> dict[str, Any]:
        contact = self._target(body)
        if contact is None:
            return _fail("Contact not found")
        contact[flag] = value
        contact["modifiedOn"] = _NOW_MS
        return {"success": True, "message": [], "contactId": contact["contactId"]}

    def _addressed(self, body: dict[str, Any]) -> list[dict[str, Any]] | None:
        addressees = body.get("contacts")
        if not isinstance(addressees, list):
            return None
        found: list[dict[str, Any]] = []
        for addressee in addressees:
            if not isinstance(addressee, dict) or not isinstance(addressee.get("value"), str):
                return None
            kind = addressee.get("addresseeType")  # lower case, as on the wire (LoyaltyProgramModel.php L9-18)
            if kind == "email":
                contact = self._by_email(addressee["value"], str(body.get("owner")))
            elif kind == "contact_id":
                contact = self.contacts.get(addressee["value"])
                contact = contact if contact and body.get("owner") in contact["owners"] else None
            else:
                return None
            if contact is not None:
                found.append(contact)
        return found

    def _monitoring(self, body: dict[str, Any], value: bool) -> dict[str, Any]:
        found = self._addressed(body)
        if found is None:
            return _fail("contacts must be a list of {addresseeType, value}, addresseeType email or contact_id")
        for contact in found:
            self.monitored[contact["contactId"]] = value
        return {"success": True, "message": []}

    def _export(self, body: dict[str, Any], _request: Request) -> dict[str, Any]:
        found = self._addressed(body)
        data = body.get("data")
        if found is None or not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
            return _fail("contacts and data are required")
        request_id = str(uuid.uuid4())
        self.jobs[request_id] = {"contacts": [c["contactId"] for c in found], "polls": 0,
                                 "types": [str(d.get("dataType")) for d in data], "file": None}
        return {"success": True, "message": [], "requestId": request_id}

    def _job_status(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        self.status_polls += 1
        job = self.jobs.get(str(body.get("requestId")))
        if job is None:
            return _fail("Request not found")
        job["polls"] += 1
        if job["polls"] <= self.POLLS_UNTIL_READY:
            return {"success": True, "message": ["Export in progress"]}
        if job["file"] is None:
            job["file"] = self._build_file(job)
        return {"success": True, "message": [], "fileUrl": f"{request.host_url}files/{job['file']}.json"}

    def _build_file(self, job: dict[str, Any]) -> str:
        document: list[dict[str, Any]] = []
        emails: set[str] = set()
        for contact_id in job["contacts"]:
            contact = self.contacts.get(contact_id)
            if contact is None:
                continue
            emails.add(_key(contact["email"]))
            sections: dict[str, Any] = {}
            for data_type in job["types"]:
                section = _SECTIONS.get(data_type)
                if section == "contactData":
                    sections[section] = {k: contact[k] for k in _BASIC_FIELDS}  # owners are never exported
                elif section == "tagData":
                    sections[section] = list(contact["tags"])
                elif section == "extEventData":
                    sections[section] = list(contact["events"])
                elif section == "visitsData":
                    sections[section] = list(contact["visits"])
            document.append({contact_id: sections})
        token = uuid.uuid4().hex
        self.files[token] = {"body": orjson.dumps(document), "emails": emails}
        return token


def _fail(message: str) -> dict[str, Any]:
    return {"success": False, "message": [message]}


def _targets(body: dict[str, Any]) -> list[str]:
    """Whom a write names: its contactId or e-mail (lower-cased), or each addressee of a `contacts` list."""
    named = [body.get("contactId") or body.get("email")]
    named += [a.get("value") for a in body.get("contacts") or [] if isinstance(a, dict)]
    return [str(n).strip().lower() for n in named if isinstance(n, str) and n.strip()]


def _answer(success: bool, message: list[str], status: int = 200) -> Response:
    return Response(orjson.dumps({"success": success, "message": message}), status=status,
                    content_type="application/json")

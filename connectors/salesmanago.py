"""SALESmanago connector (v2 JSON-POST API): contacts by e-mail, the GDPR export job, delete, opt-outs.

Every v2 call is a POST whose JSON body carries the credentials (clientId, apiKey, requestTime in
ms, sha = sha1(apiKey + clientId + apiSecret), owner) and whose answer says `success` in the body,
at HTTP 200 even when the call failed; the checks for that live here, not in `HttpClient`.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
import structlog

from connectors.base import (
    N_,
    Attachment,
    Connector,
    ConnectorContext,
    ConnectorError,
    EntityPolicy,
    Health,
    Hits,
    Identities,
    Identity,
    IdentityType,
    Note,
    PermanentError,
    Receipt,
    Record,
    TransientError,
    note,
)
from connectors.emails import email_forms
from connectors.http import HttpClient, NotFound, RetryPolicy
from connectors.ratelimit import make_rate_limiter
from connectors.redact import redact, safe_url
from connectors.retention import RetentionRule, VendorRetentionSpec, vendor_rule
from connectors.vendor_settings import SALESMANAGO_DATA_TYPES as DEFAULT_DATA_TYPES  # defaults live with the model
from connectors.vendor_settings import SALESMANAGO_PATHS as DEFAULT_PATHS
from connectors.vendor_settings import SALESMANAGO_PROBE_EMAIL as PROBE_EMAIL
from connectors.vendor_settings import SalesmanagoSettings, parse

log = structlog.get_logger(__name__)

CONTENT_TYPE = "application/json;charset=UTF-8"  # as the vendor docs ask
_CHUNK = 64 * 1024
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_-]+")
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")
_PHONE_JUNK = re.compile(r"[\s().-]")


@dataclass(frozen=True)
class _Held:
    """A contact as one owner (SALESmanago user) holds it. `place` is the owner's 1-based position in the data
    map's `owners`: texts a person reads name the owner by it, never by the staff member's e-mail."""

    owner: str
    place: int
    contact: dict[str, Any]

    @property
    def key(self) -> str:
        return str(self.contact.get("contactId") or _stored(self.contact).lower())


class SalesmanagoConnector(Connector):
    """SALESmanago v2 API, keyed by e-mail within each owner (the SALESmanago users owning contacts).

    Settings: `SalesmanagoSettings` in connectors.vendor_settings (tables in docs/datamap.md); the
    vendor paths (DEFAULT_PATHS) and export data types (DEFAULT_DATA_TYPES) are defined there too.

    Behaviours resting on unverified [U] or client-library-only [L] facts, and their switches:
    - every endpoint except contact/basic is known from client libraries [L]: `paths` overrides any.
    - export job: the job is ready when job/status answers a `fileUrl`; any successful answer
      without one counts as "not yet" [L/U]; bounded by poll_interval_s / poll_timeout_s.
    - addresseeType "email" in contact/export/data [L/U]: `export_addressee_type`.
    - the export file's layout (a list of objects keyed by contactId, sections `contactData`,
      `tagData`, ...) [L]: sections become records `export_<section>`; anything unparseable
      still arrives as the raw `export_file` attachment. A file naming contacts we did not
      ask for is refused (`verify_export_contacts` turns this off).
    - the file link is downloaded without credentials (a pre-signed link) [U].
    - `permanently: true` may purge at once or in the vendor's nightly run [U]:
      `delete_permanently`; with false, the receipt asks for a manual purge.
    - addresseeType "email" in stopMonitoring/restoreMonitoring [L]: `monitoring_addressee_type`. Every
      value seen on the wire is lower case (SALESmanago's own sso-util, src/Model/LoyaltyProgramModel.php
      L9-18); the upper-case C# enum name "EMAIL" is never sent as a string (vendor-source-check.md S9).
    - erase stops web monitoring first (`stop_monitoring_on_erase`); when stopMonitoring fails, the contact
      is still deleted and the receipt names the failure and asks for the monitoring to be checked.
    - lift opts the person back in to e-mail and phone [L endpoints]: `lift_opt_in: false` only
      restores monitoring (use it where consent must be re-collected instead).
    - no rate limit is documented [U]: `rate_per_second`; HTTP 428 ("timeout on SM api" in the
      official util) is a TransientError.
    - lookups by phone or externalId do not exist [U]: only e-mail is accepted.
    - several owners (`owners`): every v2 call is scoped by `owner`, so each owner's contacts are searched in
      turn; a contact is exported once (the export job runs under the first owner holding it) and erased,
      restricted and lifted under every listed owner holding it. What contact/delete does for owners not
      listed is not documented [U]: the erase receipt always says (a detail line) to check them. Only the
      contact's own fields (contactId, phone) are learned, with the owner's place in `owners` as provenance,
      never an owner's e-mail.
    - a write that did nothing fails the task (`_acted`): beyond `success: true`, the reply shapes are known
      from client libraries only [L], so a field that is absent says nothing; one that is present and says
      "nothing" (result false, an empty contactId or contactIds) is a no-op.
    """

    entities = ("contact", "export_file", "export_contact", "export_tag")

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        client_id: str,
        api_key: str,
        api_secret: str,
        owners: Iterable[str],
        ctx: ConnectorContext,
        poll_interval_s: float = 5.0,
        poll_timeout_s: float = 300.0,
        timeout_s: float = 30.0,
        rate_per_second: float | None = None,
        max_export_bytes: int = 100_000_000,
        export_data_types: Iterable[str] = DEFAULT_DATA_TYPES,
        export_addressee_type: str = "email",
        monitoring_addressee_type: str = "email",
        delete_permanently: bool = True,
        stop_monitoring_on_erase: bool = True,
        lift_opt_in: bool = True,
        verify_export_contacts: bool = True,
        probe_email: str = PROBE_EMAIL,
        paths: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] | None = None,
        monotonic: Callable[[], float] | None = None,
        retention: Iterable[VendorRetentionSpec] = (),
    ) -> None:
        self.name = name
        self.ctx = ctx
        self.retention = tuple(retention)
        self.owners = tuple(owners)
        if not self.owners:
            raise PermanentError(name, "data map: owners: at least one SALESmanago owner e-mail is required")
        self._client_id = client_id
        self._api_key = api_key
        # requestTime is not part of the hash, so the sha is fixed for the connector's life.
        self._sha = hashlib.sha1((api_key + client_id + api_secret).encode("utf-8")).hexdigest()
        self.poll_interval_s = poll_interval_s
        self.poll_timeout_s = poll_timeout_s
        self.max_export_bytes = max_export_bytes
        self.export_data_types = tuple(export_data_types)
        self.export_addressee_type = export_addressee_type
        self.monitoring_addressee_type = monitoring_addressee_type
        self.delete_permanently = delete_permanently
        self.stop_monitoring_on_erase = stop_monitoring_on_erase
        self.lift_opt_in = lift_opt_in
        self.verify_export_contacts = verify_export_contacts
        self.probe_email = probe_email
        self.paths = {**DEFAULT_PATHS, **(paths or {})}
        self._https = base_url.lower().startswith("https://")
        # Waits between job/status polls; HTTP backoff sleeps stay HttpClient's own.
        self._sleep = sleep  # None: time.sleep, looked up at call time so tests can patch it
        self._monotonic = monotonic or time.monotonic
        self.http = HttpClient(
            name,
            base_url,
            timeout=(5.0, timeout_s),
            retry=retry,
            rate_limiter=make_rate_limiter(f"salesmanago:{name}", rate_per_second, ctx.redis_url, ctx.namespace),
        )

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_settings(
        cls,
        name: str,
        settings: Mapping[str, Any],
        ctx: ConnectorContext,
        *,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] | None = None,
        monotonic: Callable[[], float] | None = None,
    ) -> SalesmanagoConnector:
        config = parse(SalesmanagoSettings, name, settings)
        return cls(
            name,
            base_url=config.base_url,
            client_id=ctx.secret(name, "client_id_env", config.client_id_env),
            api_key=ctx.secret(name, "api_key_env", config.api_key_env),
            api_secret=ctx.secret(name, "api_secret_env", config.api_secret_env),
            owners=config.owners,
            ctx=ctx,
            poll_interval_s=config.poll_interval_s,
            poll_timeout_s=config.poll_timeout_s,
            timeout_s=config.timeout_s,
            rate_per_second=config.rate_per_second,
            max_export_bytes=int(config.max_export_bytes),
            export_data_types=config.export_data_types,
            export_addressee_type=config.export_addressee_type,
            monitoring_addressee_type=config.monitoring_addressee_type,
            delete_permanently=config.delete_permanently,
            stop_monitoring_on_erase=config.stop_monitoring_on_erase,
            lift_opt_in=config.lift_opt_in,
            verify_export_contacts=config.verify_export_contacts,
            probe_email=config.probe_email,
            paths=config.paths,
            retention=config.retention_rules,
            retry=retry,
            sleep=sleep,
            monotonic=monotonic,
        )

    def accepts(self) -> set[IdentityType]:
        return {IdentityType.EMAIL}

    def policies(self) -> dict[str, EntityPolicy]:
        whole = Note(N_("contact/delete (the whole contact, with everything the vendor holds about it)"))
        return {
            "contact": EntityPolicy.of(whole, Note(N_("opt-out of e-mail and phone, stop monitoring"))),
            "export_file": EntityPolicy.of(whole, None, provided_by_subject=False),
            "export_contact": EntityPolicy.of(whole),
            "export_tag": EntityPolicy.of(whole, provided_by_subject=False),
        }

    def close(self) -> None:
        self.http.close()

    # ------------------------------------------------------------------ calls

    def _auth(self, owner: str) -> dict[str, Any]:
        now = self.ctx.clock()
        request_time = int(now.timestamp()) * 1000 + now.microsecond // 1000  # ms, no float rounding
        return {
            "clientId": self._client_id,
            "apiKey": self._api_key,
            "requestTime": request_time,
            "sha": self._sha,
            "owner": owner,
        }

    def _post(self, call: str, body: Mapping[str, Any], owner: str) -> dict[str, Any]:
        """POST one v2 call under `owner`; return its body when `success` is true, else raise naming the call."""
        path = self.paths[call]
        try:
            resp = self.http.request(
                "POST", path, json={**self._auth(owner), **body}, headers={"Content-Type": CONTENT_TYPE},
                ok=(200, 201, 428),
            )
        except NotFound as exc:
            hint = "check base_url: server id and /api prefix"
            raise PermanentError(self.name, f"{path}: {exc.message} ({hint})") from exc
        if resp.status_code == 428:
            # The official util retries 428 as "timeout on SM api"; our retries already ran out.
            raise TransientError(self.name, f"{path} answered HTTP 428 (SALESmanago timed out); retry later")
        try:
            payload = orjson.loads(resp.content) if resp.content else None
        except orjson.JSONDecodeError:
            raise PermanentError(self.name, f"{path} returned a body that is not JSON") from None
        if not isinstance(payload, dict):
            raise PermanentError(self.name, f"{path} returned no JSON object")
        if payload.get("success") is not True:
            message = _vendor_messages(payload)
            if "not authenticated" in message.lower():
                hint = "check clientId, apiKey, apiSecret and owner"
                raise PermanentError(self.name, f"{path} refused the credentials ({message}); {hint}")
            raise PermanentError.of(self.name, note(N_("{call} answered success=false ({message})"), call=path,
                                                    message=message or "no message"))
        return payload

    def _write(self, call: str, body: Mapping[str, Any], held: _Held) -> dict[str, Any]:
        """A write call under the owner holding the contact, failing when the reply says it changed nothing."""
        answer = self._post(call, body, held.owner)
        self._acted(call, answer, held)
        return answer

    def _acted(self, call: str, answer: Mapping[str, Any], held: _Held) -> None:
        """Raise when a write's reply says it changed nothing for the contact `held`.

        What a successful reply carries (vendor-apis.md 3.4-3.5, each known from client libraries only [L]):
        contact/delete `{"success": true, "message": [], "result": ...}` (tomaszcekalo ResultResponse has
        `result` as a string, the vendor-apis example has none); contact/optout, optin and the phone variants
        `{"success": true, "message": [], "contactId": "<uuid>"}`; stop/restoreMonitoring only `success` and
        `message` (tomaszcekalo BaseResponse). The shapes are unsure, so this is lenient where they are: a
        field that is absent says nothing. A field that is present and says "nothing" fails: `result` false,
        `contactId` empty or another contact's, `contactIds` (tomaszcekalo ContactIdsResponse, "unique IDs of
        updated contacts") empty.
        """
        problem = None
        result = answer.get("result", True)
        if result is False or result is None or (isinstance(result, str) and result.strip().lower() in ("false", "")):
            problem = "result"
        if "contactId" in answer:
            said = answer.get("contactId")
            ours = held.contact.get("contactId")
            if not said or (ours and str(said) != str(ours)):
                problem = problem or "contactId"
        if "contactIds" in answer and not answer.get("contactIds"):
            problem = problem or "contactIds"
        if problem is None:
            return
        raise PermanentError.of(self.name, note(
            N_("{call} under owner {owner} answered that it changed nothing for contact {id} ({answer}); the task "
               "is not done"), call=self.paths[call], owner=held.place, id=_contact_id(held.contact),
            answer=_answer_words(answer)))

    def _find(self, identities: Identities) -> list[_Held]:
        """Each owner's contacts whose stored e-mail is exactly one of the subject's (any case), owner by owner
        in the order of `owners`; a contact several owners hold comes once per owner."""
        forms: set[str] = set()
        for value in identities.of(IdentityType.EMAIL):
            text = value.strip().lower()
            if text:
                forms.update(email_forms(text))
        ordered = sorted(forms)
        held: list[_Held] = []
        for place, owner in enumerate(self.owners, start=1):
            found: dict[str, dict[str, Any]] = {}
            for start in range(0, len(ordered), 50):  # the vendor's per-call e-mail limit on list calls [L]
                payload = self._post("basic", {"email": ordered[start:start + 50]}, owner)
                contacts = payload.get("contacts") or []
                if not isinstance(contacts, list):
                    raise PermanentError(self.name, f"{self.paths['basic']} returned 'contacts' that is not a list")
                for contact in contacts:
                    # The vendor's own matching is not documented: keep exact matches only, so a
                    # neighbour such as jane.doe@example.com.au is never taken for Jane.
                    if not isinstance(contact, dict):
                        continue
                    email = _stored(contact).lower()
                    if email in forms:
                        found.setdefault(str(contact.get("contactId") or email), contact)
            held.extend(_Held(owner, place, found[key]) for key in sorted(found))
        return held

    @staticmethod
    def _distinct(held: list[_Held]) -> dict[str, list[_Held]]:
        """The holdings by contact, in the order first found: one contact, every owner holding it."""
        by_contact: dict[str, list[_Held]] = {}
        for item in held:
            by_contact.setdefault(item.key, []).append(item)
        return by_contact

    # ------------------------------------------------------------------ locate / export

    def locate(self, identities: Identities) -> Hits:
        contacts = self._distinct(self._find(identities))
        learned: list[Identity] = []
        touches: set[Identity] = set()
        for holdings in contacts.values():
            # Only the contact's own fields (contactId, phone; the e-mail is what found it). A contact may be
            # visible to several SALESmanago users (owners): their e-mails are staff accounts, never learned,
            # and the provenance names an owner by its place in the data map's `owners`.
            contact = holdings[0].contact
            contact_id = contact.get("contactId")
            key = contact_id if isinstance(contact_id, str) and contact_id else "?"
            places = ", ".join(str(h.place) for h in holdings)

            def via(field: str, key: str = key, places: str = places) -> Note:
                return note(N_("{system}: contact {id} (matched by e-mail under owner {owners} of the data map's "
                               "owners), field {field}"), system=self.name, id=key, owners=places, field=field)

            if isinstance(contact_id, str) and contact_id:
                learned.append(Identity.learned(IdentityType.SALESMANAGO_CONTACT_ID, contact_id, self.name,
                                                via("contactId")))
            phone = _PHONE_JUNK.sub("", str(contact.get("phone") or ""))
            if len(phone.lstrip("+")) >= 5:
                learned.append(Identity.learned(IdentityType.PHONE, phone, self.name, via("phone")))
            touches.update(learned)
            touches.update(i for i in identities if i.type == IdentityType.EMAIL
                           and i.value.lower() == _stored(contact).lower())
        learned = list(dict.fromkeys(learned))
        hits = Hits(self.name, found=bool(contacts), counts={"contact": len(contacts)} if contacts else {},
                    learned=learned)
        if touches:
            hits.touches["contact"] = touches  # erasure deletes the contact, restriction opts it out
        return hits

    def export(self, identities: Identities, entities: Iterable[str] | None = None) -> Iterator[Record]:
        wanted = set(entities) if entities is not None else None
        # Each contact once, with the first owner holding it: the export job is owner-scoped like every call.
        firsts = [holdings[0] for holdings in self._distinct(self._find(identities)).values()]
        if not firsts:
            return
        if wanted is None or "contact" in wanted:
            for index, item in enumerate(firsts):
                yield Record("contact", str(item.contact.get("contactId") or f"contact-{index}"), item.contact)
        if wanted is not None and not any(entity.startswith("export_") for entity in wanted):
            return
        for owner in self.owners:
            contacts = [item.contact for item in firsts if item.owner == owner]
            if contacts:
                yield from self._export_job(contacts, wanted, owner)

    def _export_job(self, contacts: list[dict[str, Any]], wanted: set[str] | None, owner: str) -> Iterator[Record]:
        emails = sorted({_stored(c) for c in contacts if _stored(c)})
        started = self._post("export", {
            "contacts": [{"addresseeType": self.export_addressee_type, "value": email} for email in emails],
            "data": [{"dataType": data_type} for data_type in self.export_data_types],
        }, owner)
        request_id = started.get("requestId")
        if not isinstance(request_id, str | int) or request_id == "":
            raise PermanentError(self.name, f"{self.paths['export']} returned no requestId")
        request_id = str(request_id)
        file_url = self._wait_for_file(request_id, owner)
        content, content_type = self._download(file_url, request_id)

        records: list[Record] = []
        if content_type == "application/json" or content[:1] in (b"[", b"{"):
            known_ids = {str(c["contactId"]) for c in contacts if c.get("contactId")}
            records = self._parse_export_file(content, request_id, known_ids)
        for record in records:
            if wanted is None or record.entity in wanted:
                yield record
        if wanted is None or "export_file" in wanted:
            ext = "json" if content_type == "application/json" else _extension(file_url)
            file_name = f"salesmanago-export-{_SAFE_NAME.sub('_', request_id)}.{ext}"
            yield Record("export_file", request_id, {
                "request_id": request_id,
                "file_name": file_name,
                "content_type": content_type,
                "size_bytes": len(content),
                "sha256": hashlib.sha256(content).hexdigest(),
                "parsed_records": len(records),
                "data_types": list(self.export_data_types),
            }, attachments=[Attachment(file_name, content_type, lambda: _chunks(content))])

    def _wait_for_file(self, request_id: str, owner: str) -> str:
        """Poll job/status until it names a fileUrl, within poll_timeout_s."""
        deadline = self._monotonic() + self.poll_timeout_s
        polls = 0
        while True:
            status = self._post("job_status", {"requestId": request_id}, owner)
            polls += 1
            file_url = status.get("fileUrl")
            if isinstance(file_url, str) and file_url:
                return file_url
            if self._monotonic() + self.poll_interval_s > deadline:
                raise TransientError(
                    self.name,
                    f"{self.paths['job_status']}: export job {request_id} had no file after {polls} polls "
                    f"({self.poll_timeout_s:g}s); retry later",
                )
            log.info("salesmanago.export_pending", system=self.name, job=request_id, polls=polls)
            (self._sleep or time.sleep)(self.poll_interval_s)

    def _download(self, file_url: str, request_id: str) -> tuple[bytes, str]:
        if self._https and not file_url.lower().startswith("https://"):
            raise PermanentError(self.name, f"export job {request_id} named a file link that is not https; not fetched")
        try:
            resp = self.http.request("GET", file_url, headers={"Accept": "*/*"})
        except NotFound:
            # A new job makes a new link, so running the export again can succeed.
            raise TransientError(
                self.name, f"export file of job {request_id} is gone ({safe_url(file_url)} answered 404); retry later"
            ) from None
        content = resp.content
        if len(content) > self.max_export_bytes:
            raise PermanentError(
                self.name, f"export file of job {request_id} is {len(content)} bytes, over max_export_bytes"
            )
        content_type = (resp.headers.get("Content-Type") or "application/octet-stream").split(";")[0].strip().lower()
        return content, content_type

    def _parse_export_file(self, content: bytes, request_id: str, known_ids: set[str]) -> list[Record]:
        """Records from the JSON export file: one per object in each section of each contact."""
        try:
            document = orjson.loads(content)
        except orjson.JSONDecodeError:
            return []  # not JSON after all: the raw attachment carries it
        items = document if isinstance(document, list) else [document]
        pairs: list[tuple[str | None, dict[str, Any]]] = []
        for item in items:
            if not isinstance(item, dict):
                continue
            if any(str(key).endswith("Data") for key in item):
                contact_data = item.get("contactData")
                nested_id = contact_data.get("contactId") if isinstance(contact_data, dict) else None
                own_id = item.get("contactId") or nested_id
                pairs.append((str(own_id) if own_id else None, item))
            else:  # {contactId: {section: ...}}
                pairs.extend((str(key), value) for key, value in item.items() if isinstance(value, dict))
        if self.verify_export_contacts and known_ids:
            strangers = {cid for cid, _ in pairs if cid is not None and cid not in known_ids}
            if strangers:
                raise PermanentError(
                    self.name,
                    f"export file of job {request_id} holds {len(strangers)} contact(s) that were not asked for; "
                    "nothing of it is included (setting 'verify_export_contacts')",
                )
        records: list[Record] = []
        for position, (contact_id, sections) in enumerate(pairs):
            owner_key = contact_id or f"item-{position}"
            for section, value in sections.items():
                entity = f"export_{_CAMEL.sub('_', str(section).removesuffix('Data')).lower()}"
                if isinstance(value, dict):
                    records.append(Record(entity, owner_key, value))
                elif isinstance(value, list):
                    for index, element in enumerate(value):
                        fields = element if isinstance(element, dict) else {"value": element}
                        records.append(Record(entity, f"{owner_key}:{index}", fields))
                # Scalars (a contactId next to the sections) are keys, not data of their own.
        return records

    # ------------------------------------------------------------------ erase / restrict / lift

    def erase(self, identities: Identities, entities: Iterable[str] | None = None) -> Receipt:
        receipt = Receipt(self.name, "erase")
        if entities is not None and "contact" not in set(entities):
            receipt.note(N_("nothing erased: SALESmanago erases whole contacts only (entity 'contact')"))
            return receipt
        held = self._find(identities)
        receipt.changed["contact"] = 0
        if not held:
            receipt.note(N_("no contact with these e-mail addresses under the data map's owners; nothing to erase"))
            return receipt
        stopped = 0
        not_stopped: list[tuple[str, str]] = []  # (contactId, why) where stopMonitoring failed
        for item in held:
            email = _stored(item.contact)
            if self.stop_monitoring_on_erase:
                # A removed contact that is still monitored keeps being tracked (vendor article). A failure
                # here must never keep the contact from being deleted: it is reported instead.
                try:
                    self._write("stop_monitoring", {"contacts": [{"addresseeType": self.monitoring_addressee_type,
                                                                  "value": email}]}, item)
                    stopped += 1
                except ConnectorError as exc:
                    log.warning("salesmanago.stop_monitoring_failed", system=self.name, error=exc.message)
                    not_stopped.append((_contact_id(item.contact), exc.message))
            # Under the owner holding it: contact/delete is owner-scoped like every v2 call.
            answer = self._write("delete", {"email": email, "permanently": self.delete_permanently}, item)
            request_id = answer.get("requestId")
            if isinstance(request_id, str | int) and str(request_id):
                receipt.vendor_refs.append(str(request_id))
        contacts = self._distinct(held)
        count = receipt.changed["contact"] = len(contacts)
        if self.stop_monitoring_on_erase:
            receipt.note(N_("{call}: web monitoring stopped for {count} contact(s)"),
                         call=self.paths["stop_monitoring"], count=stopped)
        for contact_id, why in not_stopped:
            receipt.note(N_("contact {id}: {error}; the contact was deleted all the same"), id=contact_id, error=why)
        if not_stopped:
            ids = ", ".join(contact_id for contact_id, _ in not_stopped)
            receipt.manual(N_("web monitoring was not stopped for contact(s) {ids} before the delete ({call} failed, "
                              "see the details): make sure SALESmanago no longer monitors the person, e.g. by running "
                              "contact/stopMonitoring for the e-mail again once the cause is fixed"),
                           ids=ids, call=self.paths["stop_monitoring"])
        receipt.note(N_("{call} permanently={permanently} for {count} contact(s)"), call=self.paths["delete"],
                     permanently=str(self.delete_permanently).lower(), count=count)
        receipt.note(N_("SALESmanago purges removed contacts in its nightly job (02:00-04:00); until then a re-import, "
                        "an API upsert or a new sign-up can restore the contact"))
        receipt.note(N_("export files made earlier by contact/export/data are not deleted by this call; their links "
                        "expire on the vendor's schedule"))
        # Every v2 call is scoped by `owner` (vendor-apis.md 3.1), and what contact/delete does to a contact
        # that SALESmanago users not in `owners` also hold is not documented: say what may remain. A detail, not
        # a manual step: those users are unknown here, and a step on every erasure would hold each one open.
        where = "; ".join(f"{key}: {', '.join(str(h.place) for h in items)}" for key, items in contacts.items())
        receipt.note(N_("SALESmanago: contact/delete acts for one owner at a time and ran under each owner of the "
                        "data map holding the contact (contact: owner place in `owners`: {where}); if other "
                        "SALESmanago users (owners) also hold the contact(s) {ids}, check under each of them that it "
                        "is gone and delete it there too (Contacts, or contact/delete with that owner)"),
                     where=where, ids=", ".join(_contact_id(items[0].contact) for items in contacts.values()))
        if not self.delete_permanently:
            receipt.manual(N_("standard removal only (delete_permanently is false): delete the contact permanently in "
                              "SALESmanago (Contacts > removed contacts) or wait for the nightly purge and confirm it"))
        return receipt

    def restrict(self, identities: Identities, entities: Iterable[str] | None = None) -> Receipt:
        return self._flip(identities, "restrict", ("optout", "phone_optout", "stop_monitoring"),
                          N_("e-mail and phone opted out, web monitoring stopped"))

    def lift_restriction(self, identities: Identities, entities: Iterable[str] | None = None) -> Receipt:
        calls = ("optin", "phone_optin", "restore_monitoring") if self.lift_opt_in else ("restore_monitoring",)
        receipt = self._flip(identities, "lift_restriction", calls,
                             N_("e-mail and phone opted in, web monitoring restored") if self.lift_opt_in
                             else N_("web monitoring restored"))
        if not self.lift_opt_in and receipt.changed.get("contact"):
            receipt.manual(N_("e-mail and phone stay opted out (lift_opt_in is false): opt the person in again only "
                              "with fresh consent"))
        return receipt

    def _flip(self, identities: Identities, action: str, calls: tuple[str, ...], summary: str) -> Receipt:
        receipt = Receipt(self.name, action, changed={"contact": 0})
        held = self._find(identities)
        if not held:
            receipt.note(N_("no contact with these e-mail addresses under the data map's owners; nothing changed"))
            return receipt
        for item in held:  # under every owner holding the contact: opt-outs and monitoring are owner-scoped too
            email = _stored(item.contact)
            for call in calls:
                if call in ("stop_monitoring", "restore_monitoring"):
                    body: dict[str, Any] = {"contacts": [{"addresseeType": self.monitoring_addressee_type,
                                                          "value": email}]}
                else:
                    body = {"email": email}
                self._write(call, body, item)
        receipt.changed["contact"] = len(self._distinct(held))
        receipt.note(N_("{calls}: {summary} for {count} contact(s)"), calls=", ".join(self.paths[c] for c in calls),
                     summary=Note(summary), count=receipt.changed["contact"])
        return receipt

    # ------------------------------------------------------------------ health

    def custom_fields(self) -> list[dict[str, Any]]:
        """SALESmanago contact properties cannot be listed: no source in shared/vendor-apis.md names a call that
        lists them (the export job's PROPERTIES data type is per contact). Said plainly rather than guessed."""
        raise PermanentError(self.name, "no known SALESmanago API call lists contact properties; review them in "
                                        "SALESmanago (contact properties) and describe them in the data map's holds")

    # -- retention (docs/retention.md) -------------------------------------------------------------------
    # No SALESmanago call reads or lists contacts by age or consent state, nor an account retention setting (the
    # v2/v3 clients in vendor-apis.md 3): a rule is `by: vendor_setting`, confirmed by hand, or `by: request`.

    def retention_rules(self) -> list[RetentionRule]:
        return [vendor_rule(self.name, spec) for spec in self.retention]

    def check(self) -> Health:
        health = Health(self.name, ok=True)
        if not self._https:
            health.warnings.append("base_url is not https: credentials travel in clear text")
        for place, owner in enumerate(self.owners, start=1):  # each owner: a misspelt one is refused here
            try:
                self._post("basic", {"email": [self.probe_email]}, owner)
            except ConnectorError as exc:
                health.ok = False
                prefix = f"owner {place} of owners: " if len(self.owners) > 1 else ""
                health.problems.append(prefix + exc.message)
        return health


# ---------------------------------------------------------------------- helpers


def _vendor_messages(payload: Mapping[str, Any]) -> str:
    """The `message` list of a v2 answer, joined, shortened and scrubbed of personal data."""
    raw = payload.get("message")
    parts = [str(m) for m in raw] if isinstance(raw, list) else ([str(raw)] if raw else [])
    return redact("; ".join(parts))[:200]


def _answer_words(payload: Mapping[str, Any]) -> str:
    """The reply's own words for an error: its result and id fields and its messages, scrubbed and short."""
    parts = [f"{key}={orjson.dumps(payload[key]).decode()}" for key in ("success", "result", "contactId", "contactIds")
             if key in payload]
    message = _vendor_messages(payload)
    if message:
        parts.append(f"message: {message}")
    return redact(", ".join(parts))[:200]


def _stored(contact: Mapping[str, Any]) -> str:
    """The contact's stored e-mail, as SALESmanago holds it."""
    return str(contact.get("email") or "").strip()


def _contact_id(contact: Mapping[str, Any]) -> str:
    """The contact's vendor id, for receipts (never its e-mail address)."""
    return str(contact.get("contactId") or "(no contactId)")


def _chunks(content: bytes) -> Iterator[bytes]:
    for start in range(0, len(content), _CHUNK):
        yield content[start:start + _CHUNK]


def _extension(url: str) -> str:
    suffix = urlsplit(url).path.rpartition("/")[2].rpartition(".")[2]
    return suffix.lower() if suffix and suffix.isalnum() and len(suffix) <= 5 else "bin"

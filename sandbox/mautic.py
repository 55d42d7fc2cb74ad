"""A small stateful Mautic REST API (5.x) simulator, written from shared/vendor-apis.md section 2.

What it models: the API switch and basic-auth switch (403 `api_disabled` / `access_denied`),
HTTP basic auth and OAuth2 client credentials (`POST /oauth/v2/token`, bearer tokens that
expire), the contact list with `where[...]` filters (MySQL-like case-insensitive `eq`) and the
prefix `search=email:` command, offset paging (`start`/`limit`, `total` as a string, contacts
keyed by id, `[]` when empty), the page-based activity timeline, notes, segments (root key
`lists`), campaigns, companies, devices, hard delete with the residue Mautic leaves (e-mail
stats, page hits and form submissions survive with lead_id NULL), do-not-contact add/remove, a
custom date field (`trial_ends_at`, compared with `lt`/`gt`/... as MySQL compares the stored
'Y-m-d H:i:s' text) and the raw stats table `lead_donotcontact` (`GET /api/stats/{table}`).
Errors use Mautic's envelope `{"errors":[{"code","message","details","type"}]}`.

Behaviour as Mautic 5.1's own source has it (shared/vendor-source-check.md, mautic/mautic @ 24271492):
- `where[...][val]` is HTML-entity-encoded before the SQL comparison (InputHelper::cleanArray ->
  FILTER_SANITIZE_SPECIAL_CHARS, FetchCommonApiController.php L256, InputHelper.php L163-176), so an
  e-mail holding `'"&<>` is never found that way; `search=email:` is a LIKE (`+` = no trailing `%`).
- the stats API answers rows under `stats` (StatsApiController.php L27, L48-49), an unknown table with
  `availableTables` (L43-45) and an exception with HTTP 200 `{"errors":[{"message","code"}]}` (L51-58).
- DNC add with a reason replaces an existing entry of another reason except an unsubscribe, and does
  nothing when the reason is the same (LeadBundle/Model/DoNotContact.php L92-110); DNC remove deletes
  the first entry on the channel whatever its reason (L28-51; LeadApiController.php L463-486).
- client_credentials is granted only to API credentials an admin created (ApiBundle/Controller/
  ClientController.php L233-238): others get 400 `unauthorized_client` from the token call.
"""

from __future__ import annotations

import base64
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from sandbox.people import DECOY_EMAIL, JANE, JOHN, OLA, Person

VERSION = "5.1.0"
DEFAULT_PAGELIMIT = 30  # Mautic default_pagelimit
FIELD_ALIASES = ("firstname", "lastname", "email", "phone", "mobile", "company", "city", "country")
CUSTOM_FIELDS = ("trial_ends_at",)  # a custom datetime field ('Y-m-d H:i:s'), group professional
DNC_COLUMNS = ("id", "lead_id", "date_added", "reason", "channel", "channel_id", "comments")
# Marketing retention (seed_demo): unsubscribed from the newsletter; trial ended; trial running (and a
# manual do-not-contact, which is no unsubscribe). None of them is anyone else in sandbox.people.
UNSUBSCRIBED_EMAIL = "kari.hansen@example.net"
TRIAL_ENDED_EMAIL = "per.olsen@example.org"
TRIAL_ACTIVE_EMAIL = "liv.berg@example.org"
WHERE_KEY = re.compile(r"^where\[(\d+)\]\[(col|expr|val)\]$")
DNC_UNSUBSCRIBED = 1  # DoNotContact::UNSUBSCRIBED, never replaced by an add
COMPARE: dict[str, Callable[[str, str], bool]] = {
    "lt": lambda a, b: a < b, "lte": lambda a, b: a <= b, "gt": lambda a, b: a > b, "gte": lambda a, b: a >= b}


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    resp = Response(orjson.dumps(payload), status=status, mimetype="application/json")
    resp.headers["Mautic-Version"] = VERSION
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    return resp


def _error(status: int, message: str, kind: str | None = None, details: list[str] | None = None) -> Response:
    return _json({"errors": [{"code": status, "message": message, "details": details or [], "type": kind}]}, status)


def _ts(day: int, hour: int = 9) -> str:
    return f"2024-03-{day:02d}T{hour:02d}:00:00+00:00"


def _special_chars(value: str) -> str:
    """PHP's filter_var(FILTER_SANITIZE_SPECIAL_CHARS): '"<>& and characters below 32 as &#NN;."""
    return "".join(f"&#{ord(c)};" if c in "'\"<>&" or ord(c) < 32 else c for c in value)


def _like(pattern: str, value: Any) -> bool:
    """MySQL `value LIKE pattern` under the default collation: `%` any run, `_` one character, no case."""
    regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in _norm(pattern))
    return re.fullmatch(regex, _norm(value), flags=re.DOTALL) is not None


def _norm(value: Any) -> str:
    """MySQL's default collation compares case-insensitively and ignores trailing spaces."""
    return str(value if value is not None else "").rstrip().lower()


class MauticSim:
    USER = "sandbox-api"
    PASSWORD = "sandbox-api-pass"
    CLIENT_ID = "1_sandboxclient"
    CLIENT_SECRET = "sandbox-client-secret"
    TOKEN_LIFETIME_S = 3600

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.api_enabled = True
        self.basic_auth_enabled = True
        self.client_created_by_admin = True  # False: the OAuth2 credentials lack the client_credentials grant
        self.tokens: dict[str, float] = {}  # access token -> expiry (time.time())
        self.token_requests = 0
        self._ids: dict[str, int] = {}
        self.contacts: dict[int, dict[str, Any]] = {}
        self.notes: dict[int, dict[str, Any]] = {}
        self.segments: dict[int, dict[str, Any]] = {}
        self.segment_members: list[dict[str, Any]] = []
        self.campaigns: dict[int, dict[str, Any]] = {}
        self.campaign_members: list[dict[str, Any]] = []
        self.companies: dict[int, dict[str, Any]] = {}
        self.company_members: list[dict[str, Any]] = []
        self.devices: dict[int, dict[str, Any]] = {}
        self.event_log: list[dict[str, Any]] = []  # lead_event_log: deleted with the contact
        # Every call that changes state, as (call, contact id), answered or not (sandbox.launch.Sandbox.writes).
        self.writes: list[tuple[str, str]] = []
        self.dnc: list[dict[str, Any]] = []
        # ON DELETE SET NULL tables; `_subject` is the sim's own ground truth for holdings().
        self.email_stats: list[dict[str, Any]] = []
        self.page_hits: list[dict[str, Any]] = []
        self.form_submissions: list[dict[str, Any]] = []
        self.url_map = Map([
            Rule("/oauth/v2/token", endpoint="token", methods=["POST"]),
            Rule("/api/contacts", endpoint="list_contacts", methods=["GET"]),
            Rule("/api/contacts/<int:cid>", endpoint="get_contact", methods=["GET"]),
            Rule("/api/contacts/<int:cid>/activity", endpoint="activity", methods=["GET"]),
            Rule("/api/contacts/<int:cid>/notes", endpoint="notes", methods=["GET"]),
            Rule("/api/contacts/<int:cid>/devices", endpoint="devices", methods=["GET"]),
            Rule("/api/contacts/<int:cid>/segments", endpoint="contact_segments", methods=["GET"]),
            Rule("/api/contacts/<int:cid>/campaigns", endpoint="contact_campaigns", methods=["GET"]),
            Rule("/api/contacts/<int:cid>/companies", endpoint="contact_companies", methods=["GET"]),
            Rule("/api/contacts/<int:cid>/delete", endpoint="delete_contact", methods=["DELETE"]),
            Rule("/api/contacts/<int:cid>/dnc/<channel>/add", endpoint="dnc_add", methods=["POST"]),
            Rule("/api/contacts/<int:cid>/dnc/<channel>/remove", endpoint="dnc_remove", methods=["POST"]),
            Rule("/api/stats/<table>", endpoint="stats", methods=["GET"]),
        ])

    # -- test/demo helpers -----------------------------------------------------------------

    def settings(self, base_url: str, auth: str = "oauth2") -> dict[str, Any]:
        return {
            "base_url": base_url,
            "auth": auth,
            "user_env": "DSAR_MAUTIC_USER",
            "password_env": "DSAR_MAUTIC_PASSWORD",
            "client_id_env": "DSAR_MAUTIC_CLIENT_ID",
            "client_secret_env": "DSAR_MAUTIC_CLIENT_SECRET",
            "rate_per_second": 50,
            "timeout_s": 10,
            "trial_field": "trial_ends_at",
        }

    def env(self) -> dict[str, str]:
        return {
            "DSAR_MAUTIC_USER": self.USER,
            "DSAR_MAUTIC_PASSWORD": self.PASSWORD,
            "DSAR_MAUTIC_CLIENT_ID": self.CLIENT_ID,
            "DSAR_MAUTIC_CLIENT_SECRET": self.CLIENT_SECRET,
        }

    def expire_tokens(self) -> None:
        """Make every issued access token expired, as after an hour."""
        with self._lock:
            for token in self.tokens:
                self.tokens[token] = 0.0

    def seed_demo(self) -> None:
        """Jane as two contacts (Mautic does not force unique e-mails), John, Ola and the decoy."""
        with self._lock:
            newsletter = self._add(self.segments, "segment", {"name": "Newsletter", "alias": "newsletter"})
            customers = self._add(self.segments, "segment", {"name": "Customers", "alias": "customers"})
            welcome = self._add(self.campaigns, "campaign", {"name": "Welcome Campaign"})
            acme = self._add(self.companies, "company", {"companyname": "Acme AS", "companycity": "Oslo"})
            jane_a = self._seed_person(JANE, "Jane.Doe@Example.com", day=1, events=7)
            jane_b = self._seed_person(JANE, JANE.email, day=10, events=2, phone=False)
            john = self._seed_person(JOHN, JOHN.email, day=3, events=3)
            self._seed_person(OLA, OLA.email, day=4, events=1)
            decoy = self._seed_contact(DECOY_EMAIL, "Janet", "Doe-Smith", "+61412345678", day=5)
            self._seed_activity(decoy, DECOY_EMAIL, day=5, count=2)
            for cid, seg, day in ((jane_a, newsletter, 2), (jane_a, customers, 6), (jane_b, newsletter, 11),
                                  (john, newsletter, 3), (decoy, newsletter, 5)):
                self.segment_members.append({"segment_id": seg, "lead_id": cid, "dateAdded": _ts(day),
                                             "manuallyAdded": False, "manuallyRemoved": False})
            for cid in (jane_a, john):
                self.campaign_members.append({"campaign_id": welcome, "lead_id": cid, "dateAdded": _ts(7),
                                              "manuallyAdded": False, "manuallyRemoved": False})
            for cid in (jane_a, decoy):
                self.company_members.append({"company_id": acme, "lead_id": cid, "dateAdded": _ts(8),
                                             "is_primary": True})
            for cid, text in ((jane_a, "Called about the invoice; prefers e-mail."), (jane_a, "Asked for a demo."),
                              (john, "Met at the trade fair."), (decoy, "Australian office lead.")):
                self._add(self.notes, "note", {"lead_id": cid, "text": text, "type": "general", "dateTime": _ts(9)})
            for cid, os_name in ((jane_a, "Android"), (jane_b, "Windows"), (john, "iOS")):
                self._add(self.devices, "device", {"lead_id": cid, "device": "desktop", "deviceOsName": os_name,
                                                   "deviceBrand": "", "deviceModel": "", "dateAdded": _ts(2)})
            # Added last, so everyone else keeps their contact id.
            kari = self._seed_contact(UNSUBSCRIBED_EMAIL, "Kari", "Hansen", None, day=12)
            self._add_dnc(kari, "email", 1, "unsubscribed via the newsletter footer")
            self._seed_contact(TRIAL_ENDED_EMAIL, "Per", "Olsen", None, day=13, trial_ends_at="2024-04-01 00:00:00")
            liv = self._seed_contact(TRIAL_ACTIVE_EMAIL, "Liv", "Berg", None, day=14,
                                     trial_ends_at="2099-01-01 00:00:00")
            self._add_dnc(liv, "email", 3, "asked for no e-mails")

    def add_contact(self, email: str, first: str, last: str, **fields: Any) -> int:
        """A new contact (e.g. someone signing up again), with any other field values; its id."""
        with self._lock:
            cid = self._seed_contact(email, first, last, None, day=20)
            self.contacts[cid]["fields"].update(fields)
            return cid

    def resubscribe(self, contact_id: int) -> None:
        """The person subscribed again: their e-mail do-not-contact entries go."""
        with self._lock:
            self.dnc = [d for d in self.dnc if not (d["lead_id"] == contact_id and d["channel"] == "email")]

    def holdings(self, email: str) -> dict[str, int]:
        """What the sim still holds about whoever uses exactly this e-mail, per kind."""
        want = email.strip().lower()
        with self._lock:
            ids = {cid for cid, c in self.contacts.items() if c["fields"]["email"].strip().lower() == want}
            return {
                "contacts": len(ids),
                "activity": sum(1 for e in self.event_log if e["lead_id"] in ids),
                "notes": sum(1 for n in self.notes.values() if n["lead_id"] in ids),
                "segments": sum(1 for m in self.segment_members if m["lead_id"] in ids),
                "campaigns": sum(1 for m in self.campaign_members if m["lead_id"] in ids),
                "companies": sum(1 for m in self.company_members if m["lead_id"] in ids),
                "devices": sum(1 for d in self.devices.values() if d["lead_id"] in ids),
                "dnc": sum(1 for d in self.dnc if d["lead_id"] in ids),
                "email_stats": sum(1 for s in self.email_stats if s["email_address"].strip().lower() == want),
                "page_hits": sum(1 for h in self.page_hits if h["_subject"] == want),
                "form_submissions": sum(1 for f in self.form_submissions if f["_subject"] == want),
            }

    def add_dnc(self, contact_id: int, channel: str, reason: int, comments: str = "") -> None:
        """A do-not-contact entry set by Mautic itself (1 unsubscribe link, 2 bounce) or a Mautic user (3)."""
        with self._lock:
            self._add_dnc(contact_id, channel, reason, comments)

    def dnc_entries(self, contact_id: int, channel: str = "email") -> list[dict[str, Any]]:
        with self._lock:
            return [dict(d) for d in self.dnc if d["lead_id"] == contact_id and d["channel"] == channel]

    def contact_ids(self, email: str) -> list[int]:
        want = email.strip().lower()
        with self._lock:
            return sorted(cid for cid, c in self.contacts.items() if c["fields"]["email"].strip().lower() == want)

    # -- seeding ---------------------------------------------------------------------------

    def _add(self, table: dict[int, dict[str, Any]], kind: str, row: dict[str, Any]) -> int:
        new_id = self._ids.get(kind, 0) + 1
        self._ids[kind] = new_id
        table[new_id] = {"id": new_id, **row}
        return new_id

    def _next(self, kind: str) -> int:
        self._ids[kind] = self._ids.get(kind, 0) + 1
        return self._ids[kind]

    def _add_dnc(self, cid: int, channel: str, reason: int, comments: str) -> None:
        self.dnc.append({"id": self._next("dnc"), "lead_id": cid, "channel": channel, "channelId": None,
                         "reason": reason, "comments": comments, "dateAdded": _ts(21)})

    def _seed_contact(self, email: str, first: str, last: str, phone: str | None, day: int,
                      trial_ends_at: str | None = None) -> int:
        fields = dict.fromkeys((*FIELD_ALIASES, *CUSTOM_FIELDS))
        fields.update({"firstname": first, "lastname": last, "email": email, "phone": phone, "city": "Oslo",
                       "trial_ends_at": trial_ends_at})
        return self._add(self.contacts, "contact", {
            "fields": fields, "dateAdded": _ts(day), "dateModified": _ts(day, 10), "lastActive": _ts(day, 11),
            "points": 10, "ip": f"203.0.113.{day}", "tags": ["newsletter"],
        })

    def _seed_person(self, person: Person, stored_email: str, day: int, events: int, phone: bool = True) -> int:
        cid = self._seed_contact(stored_email, person.first_name, person.last_name,
                                 person.phone if phone else None, day)
        self._seed_activity(cid, person.email, day, events)
        return cid

    def _seed_activity(self, cid: int, subject: str, day: int, count: int) -> None:
        """Timeline sources in turn: page hits, e-mail stats, form submissions, lead event log."""
        address = self.contacts[cid]["fields"]["email"]
        for n in range(count):
            when = _ts(day, 8 + n)
            kind = n % 4
            if kind == 0:
                self.page_hits.append({"id": self._next("hit"), "lead_id": cid, "url": f"https://shop.example/p/{n}",
                                       "ipAddress": f"203.0.113.{day}", "dateHit": when, "_subject": subject})
            elif kind == 1:
                self.email_stats.append({"id": self._next("stat"), "lead_id": cid, "email_id": 1,
                                         "email_address": address, "dateSent": when, "_subject": subject})
            elif kind == 2:
                self.form_submissions.append({"id": self._next("submission"), "lead_id": cid, "form_id": 1,
                                              "dateSubmitted": when, "results": {"email": address},
                                              "_subject": subject})
            else:
                self.event_log.append({"id": self._next("event"), "lead_id": cid, "action": "identified",
                                       "dateAdded": when})

    # -- views -----------------------------------------------------------------------------

    def _contact_view(self, cid: int, *, deleted: bool = False) -> dict[str, Any]:
        c = self.contacts[cid]
        fields = c["fields"]
        core = {alias: {"id": i + 1, "group": "core", "label": alias.title(), "alias": alias, "type": "text",
                        "value": fields[alias]} for i, alias in enumerate(FIELD_ALIASES)}
        return {
            "id": None if deleted else cid,
            "isPublished": True,
            "dateAdded": c["dateAdded"],
            "dateModified": c["dateModified"],
            "createdBy": 1,
            "owner": None,
            "points": c["points"],
            "lastActive": c["lastActive"],
            "dateIdentified": c["dateAdded"],
            "color": None,
            "ipAddresses": {c["ip"]: {"ipAddress": c["ip"], "ipDetails": {"city": "", "country": ""}}},
            "fields": {"core": core, "social": [], "personal": [], "professional": [],
                       "all": {"id": None if deleted else cid, **fields}},
            "tags": [{"tag": t} for t in c["tags"]],
            "utmtags": [],
            "stage": None,
            "doNotContact": [
                {"id": d["id"], "reason": d["reason"], "comments": d["comments"], "channel": d["channel"],
                 "channelId": d["channelId"]} for d in self.dnc if d["lead_id"] == cid
            ],
        }

    def _timeline(self, cid: int) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for h in self.page_hits:
            if h["lead_id"] == cid:
                events.append({"event": "page.hit", "eventId": f"page.hit{h['id']}", "eventType": "Page hit",
                               "eventLabel": {"label": h["url"], "href": h["url"]}, "timestamp": h["dateHit"],
                               "details": {"hit": {"url": h["url"], "ipAddress": h["ipAddress"]}}})
        for s in self.email_stats:
            if s["lead_id"] == cid:
                events.append({"event": "email.sent", "eventId": f"email.sent{s['id']}", "eventType": "Email sent",
                               "eventLabel": "Spring offers", "timestamp": s["dateSent"],
                               "details": {"stat": {"id": s["id"], "emailId": s["email_id"]}}})
        for f in self.form_submissions:
            if f["lead_id"] == cid:
                events.append({"event": "form.submitted", "eventId": f"form.submitted{f['id']}",
                               "eventType": "Form submitted", "eventLabel": "Contact us",
                               "timestamp": f["dateSubmitted"], "details": {"submission": {"id": f["id"]}}})
        for e in self.event_log:
            if e["lead_id"] == cid:
                events.append({"event": "lead.identified", "eventId": f"lead.identified{e['id']}",
                               "eventType": "Contact identified", "eventLabel": "Contact identified",
                               "timestamp": e["dateAdded"]})
        for d in self.dnc:
            if d["lead_id"] == cid:
                events.append({"event": "lead.donotcontact", "eventId": f"lead.donotcontact{d['id']}",
                               "eventType": "Do not contact", "eventLabel": d["channel"],
                               "timestamp": d["dateAdded"], "details": {"reason": d["reason"]}})
        for e in events:
            e["contactId"] = cid
        return events

    # -- WSGI ------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        return self.app(environ, start_response)

    def app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        try:
            endpoint, args = self.url_map.bind_to_environ(environ).match()
        except HTTPException as exc:
            code = exc.code or 404
            message = "Item was not found." if code == 404 else "Method not allowed."
            return _error(code, message)(environ, start_response)
        with self._lock:
            if endpoint == "token":
                response = self._token(request)
            else:
                response = self._authorise(request) or getattr(self, f"_{endpoint}")(request, **args)
        return response(environ, start_response)

    def _token(self, request: Request) -> Response:
        params = dict(request.form) if request.form else {}
        if not params and request.is_json:
            params = {k: str(v) for k, v in (request.get_json(silent=True) or {}).items()}
        if params.get("grant_type") != "client_credentials":
            return _json({"error": "unsupported_grant_type", "error_description": "Invalid grant_type parameter "
                                                                                  "or parameter missing"}, 400)
        if params.get("client_id") != self.CLIENT_ID or params.get("client_secret") != self.CLIENT_SECRET:
            return _json({"error": "invalid_client", "error_description": "The client credentials are invalid"}, 400)
        if not self.client_created_by_admin:  # OAuth2::grantAccessToken, checkRestrictedGrantType
            return _json({"error": "unauthorized_client",
                          "error_description": "The grant type is unauthorized for this client_id"}, 400)
        self.token_requests += 1
        token = secrets.token_urlsafe(24)
        self.tokens[token] = time.time() + self.TOKEN_LIFETIME_S
        return _json({"access_token": token, "expires_in": self.TOKEN_LIFETIME_S, "token_type": "bearer",
                      "scope": ""})

    def _authorise(self, request: Request) -> Response | None:
        if not self.api_enabled:
            return _error(403, "API disabled. You need to enable the API in the API settings of Mautic's "
                               "Configuration.", "api_disabled")
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "basic":
            if not self.basic_auth_enabled:
                return _error(403, "Basic authentication is disabled. Enable it in the API settings.",
                              "access_denied")
            try:
                user, _, password = base64.b64decode(value).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                user = password = ""
            if user == self.USER and password == self.PASSWORD:
                return None
            return _error(401, "API authorization denied.", "access_denied")
        token = value if scheme.lower() == "bearer" else request.args.get("access_token", "")
        if token:
            expiry = self.tokens.get(token)
            if expiry is None:
                return _json({"error": "invalid_grant", "error_description": "The access token provided is "
                                                                             "invalid."}, 401)
            if expiry <= time.time():
                return _json({"error": "invalid_grant", "error_description": "The access token provided has "
                                                                             "expired."}, 401)
            return None
        return _error(401, "API authorization denied.", "access_denied")

    def _list_contacts(self, request: Request) -> Response:
        where: dict[int, dict[str, str]] = {}
        for key, value in request.args.items():
            m = WHERE_KEY.match(key)
            if m:
                where.setdefault(int(m.group(1)), {})[m.group(2)] = value
        rows = list(self.contacts.items())
        for clause in where.values():
            # InputHelper::cleanArray: the value compared is HTML-encoded, the stored one is not.
            col, expr, val = clause.get("col", ""), clause.get("expr", ""), _special_chars(clause.get("val", ""))
            if col not in ("id", *FIELD_ALIASES, *CUSTOM_FIELDS):
                return _error(400, f"Invalid column {col!r}.")
            if expr not in ("eq", "neq", "like", *COMPARE, "isNull", "isNotNull"):
                return _error(400, f"Unsupported expression {expr!r}.")
            get = (lambda cid, c, col=col: cid if col == "id" else c["fields"][col])  # noqa: E731
            if expr in COMPARE:  # SQL: NULL never compares true
                rows = [(cid, c) for cid, c in rows
                        if get(cid, c) is not None and COMPARE[expr](_norm(get(cid, c)), _norm(val))]
            elif expr in ("isNull", "isNotNull"):
                rows = [(cid, c) for cid, c in rows if (get(cid, c) is None) == (expr == "isNull")]
            elif expr == "eq":
                rows = [(cid, c) for cid, c in rows if _norm(get(cid, c)) == _norm(val)]
            elif expr == "neq":
                rows = [(cid, c) for cid, c in rows if _norm(get(cid, c)) != _norm(val)]
            else:
                pattern = re.compile("^" + re.escape(_norm(val)).replace("%", ".*") + "$")
                rows = [(cid, c) for cid, c in rows if pattern.match(_norm(get(cid, c)))]
        search = request.args.get("search", "").strip()
        if search.startswith("email:"):
            # LeadRepository::addSearchCommandWhereClause: l.email LIKE term% (the decoy trap), or LIKE term
            # with `+` (strict); either way `_` and `%` in the term are wildcards.
            term = search[len("email:"):]
            pattern = term[1:] if term.startswith("+") else term + "%"
            rows = [(cid, c) for cid, c in rows if c["fields"]["email"] is not None
                    and _like(pattern, c["fields"]["email"])]
        elif search:
            rows = [(cid, c) for cid, c in rows
                    if any(_norm(c["fields"][a]).startswith(search.lower()) for a in ("email", "firstname",
                                                                                        "lastname"))]
        start, limit = _offset(request)
        page = rows[start:start + limit]
        contacts: Any = {str(cid): self._contact_view(cid) for cid, _ in page} or []
        return _json({"total": str(len(rows)), "contacts": contacts})

    def _get_contact(self, request: Request, cid: int) -> Response:
        if cid not in self.contacts:
            return _error(404, "Item was not found.")
        return _json({"contact": self._contact_view(cid)})

    def _activity(self, request: Request, cid: int) -> Response:
        if cid not in self.contacts:
            return _error(404, "Item was not found.")
        limit = _int_arg(request, "limit", 25)
        page = max(1, _int_arg(request, "page", 1))
        order_col = request.args.get("order[0]", "timestamp")
        order_dir = request.args.get("order[1]", "DESC")
        events = sorted(self._timeline(cid), key=lambda e: (str(e.get(order_col, "")), e["eventId"]),
                        reverse=order_dir.upper() == "DESC")
        total = len(events)
        max_pages = max(1, math.ceil(total / limit)) if limit else 1
        chunk = events[(page - 1) * limit:page * limit]
        types = {"page.hit": "Page hit", "email.sent": "Email sent", "form.submitted": "Form submitted",
                 "lead.identified": "Contact identified", "lead.donotcontact": "Do not contact"}
        return _json({"events": chunk, "filters": {"search": "", "includeEvents": [], "excludeEvents": []},
                      "order": [order_col, order_dir], "types": types, "total": total, "page": page,
                      "limit": limit, "maxPages": max_pages})

    def _notes(self, request: Request, cid: int) -> Response:
        if cid not in self.contacts:
            return _error(404, "Item was not found.")
        rows = sorted((n for n in self.notes.values() if n["lead_id"] == cid), key=lambda n: -n["id"])
        start, limit = _offset(request)
        notes = [{"id": n["id"], "text": n["text"], "type": n["type"], "dateTime": n["dateTime"]}
                 for n in rows[start:start + limit]]
        return _json({"total": len(rows), "notes": notes})

    def _devices(self, request: Request, cid: int) -> Response:
        if cid not in self.contacts:
            return _error(404, "Item was not found.")
        rows = sorted((d for d in self.devices.values() if d["lead_id"] == cid), key=lambda d: -d["id"])
        start, limit = _offset(request)
        devices = [{k: v for k, v in d.items() if k != "lead_id"} for d in rows[start:start + limit]]
        return _json({"total": len(rows), "devices": devices})

    def _contact_segments(self, request: Request, cid: int) -> Response:
        if cid not in self.contacts:
            return _error(404, "Item was not found.")
        lists = {}
        for m in self.segment_members:
            if m["lead_id"] == cid:
                seg = self.segments[m["segment_id"]]
                lists[str(seg["id"])] = {**seg, "dateAdded": m["dateAdded"], "manuallyAdded": m["manuallyAdded"],
                                         "manuallyRemoved": m["manuallyRemoved"]}
        return _json({"total": len(lists), "lists": lists or []})

    def _contact_campaigns(self, request: Request, cid: int) -> Response:
        if cid not in self.contacts:
            return _error(404, "Item was not found.")
        campaigns = {}
        for m in self.campaign_members:
            if m["lead_id"] == cid:
                camp = self.campaigns[m["campaign_id"]]
                campaigns[str(camp["id"])] = {**camp, "dateAdded": m["dateAdded"],
                                              "manuallyAdded": m["manuallyAdded"],
                                              "manuallyRemoved": m["manuallyRemoved"], "listMembership": []}
        return _json({"total": len(campaigns), "campaigns": campaigns or []})

    def _contact_companies(self, request: Request, cid: int) -> Response:
        if cid not in self.contacts:
            return _error(404, "Item was not found.")
        companies = [{**self.companies[m["company_id"]], "date_associated": m["dateAdded"],
                      "is_primary": m["is_primary"]} for m in self.company_members if m["lead_id"] == cid]
        return _json({"total": len(companies), "companies": companies})

    def _delete_contact(self, request: Request, cid: int) -> Response:
        self.writes.append(("DELETE /api/contacts/delete", str(cid)))
        if cid not in self.contacts:
            return _error(404, "Item was not found.")
        view = self._contact_view(cid, deleted=True)  # Doctrine has cleared the id by the time it is serialised
        del self.contacts[cid]
        self.notes = {k: n for k, n in self.notes.items() if n["lead_id"] != cid}
        self.devices = {k: d for k, d in self.devices.items() if d["lead_id"] != cid}
        self.segment_members = [m for m in self.segment_members if m["lead_id"] != cid]
        self.campaign_members = [m for m in self.campaign_members if m["lead_id"] != cid]
        self.company_members = [m for m in self.company_members if m["lead_id"] != cid]
        self.event_log = [e for e in self.event_log if e["lead_id"] != cid]
        self.dnc = [d for d in self.dnc if d["lead_id"] != cid]
        for table in (self.email_stats, self.page_hits, self.form_submissions):
            for row in table:
                if row["lead_id"] == cid:
                    row["lead_id"] = None  # ON DELETE SET NULL
        return _json({"contact": view})

    def _dnc_add(self, request: Request, cid: int, channel: str) -> Response:
        self.writes.append((f"POST /api/contacts/dnc/{channel}/add", str(cid)))
        if cid not in self.contacts:
            return _error(404, "Item was not found.")
        body: dict[str, Any] = dict(request.form) if request.form else {}
        if not body and request.is_json:
            body = request.get_json(silent=True) or {}
        try:
            reason = int(body.get("reason", 3))
            channel_id = int(body.get("channelId") or 0) or None
        except (TypeError, ValueError):
            reason, channel_id = 0, None
        if reason == 0:
            return _error(400, "Invalid reason code given", None,
                          ["Reason code needs to be an integer and higher than 0."])
        comments = _special_chars(str(body.get("comments") or ""))  # InputHelper::clean
        existing = [d for d in self.dnc if d["lead_id"] == cid and d["channel"] == channel]
        if existing:
            # DoNotContact::addDncForContact: same reason -> nothing; otherwise the first entry on the channel
            # that is not the contact's own unsubscribe takes the new reason and comment.
            if existing[0]["reason"] != reason:
                for entry in existing:
                    if entry["reason"] != DNC_UNSUBSCRIBED:
                        entry.update(reason=reason, comments=comments)
                        break
        else:
            self.dnc.append({"id": self._next("dnc"), "lead_id": cid, "channel": channel, "channelId": channel_id,
                             "reason": reason, "comments": comments, "dateAdded": _ts(20)})
        return _json({"contact": self._contact_view(cid)})

    def _stats(self, request: Request, table: str) -> Response:
        """GET /api/stats/{table}: raw rows under `stats`; only lead_donotcontact is modelled (eq filters,
        offset paging). An unknown table gets the list of tables, a bad filter an `errors` body, both HTTP 200."""
        if table.strip().lower() != "lead_donotcontact":
            return _json({"availableTables": ["email_stats", "lead_donotcontact", "page_hits"],
                          "tableColumns": {"lead_donotcontact": list(DNC_COLUMNS)}})
        rows = [{"id": d["id"], "lead_id": d["lead_id"], "date_added": d["dateAdded"], "reason": d["reason"],
                 "channel": d["channel"], "channel_id": d["channelId"], "comments": d["comments"]}
                for d in sorted(self.dnc, key=lambda d: d["id"])]
        for clause in _stats_where(request).values():
            col, expr, val = clause.get("col", ""), clause.get("expr", ""), _special_chars(clause.get("val", ""))
            if col not in DNC_COLUMNS or expr != "eq":
                return _json({"errors": [{"message": f"Invalid where clause on column {col!r}.", "code": 0}]})
            rows = [r for r in rows if _norm(r[col]) == _norm(val)]
        start, limit = _offset(request)
        return _json({"total": len(rows), "stats": rows[start:start + limit]})

    def _dnc_remove(self, request: Request, cid: int, channel: str) -> Response:
        self.writes.append((f"POST /api/contacts/dnc/{channel}/remove", str(cid)))
        if cid not in self.contacts:
            return _error(404, "Item was not found.")
        # DoNotContact::removeDncForContact without a reason: the first entry on the channel, whatever its reason.
        first = next((d for d in self.dnc if d["lead_id"] == cid and d["channel"] == channel), None)
        if first is not None:
            self.dnc.remove(first)
        return _json({"recordFound": first is not None, "contact": self._contact_view(cid)})


def _stats_where(request: Request) -> dict[int, dict[str, str]]:
    where: dict[int, dict[str, str]] = {}
    for key, value in request.args.items():
        m = WHERE_KEY.match(key)
        if m:
            where.setdefault(int(m.group(1)), {})[m.group(2)] = value
    return where


def _int_arg(request: Request, name: str, default: int) -> int:
    try:
        return int(request.args.get(name, default))
    except ValueError:
        return default


def _offset(request: Request) -> tuple[int, int]:
    start = max(0, _int_arg(request, "start", 0))
    limit = _int_arg(request, "limit", DEFAULT_PAGELIMIT)
    return start, limit if limit > 0 else DEFAULT_PAGELIMIT

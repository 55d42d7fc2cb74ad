"""A small Matomo: the HTTP Reporting API's PrivacyManager GDPR tools and Live visitor log.

Written from the vendor notes (shared/vendor-apis.md section 4), not from the connector:
- `index.php?module=API&method=<M>&format=JSON`; parameters from the query string and the
  form body alike (PHP's $_GET + $_POST);
- `token_auth` tokens are "secure only": accepted only in a POST body and absent from the URL,
  otherwise HTTP 401 with Matomo's message; a wrong token is 401 too, and so is a token
  without the access a method needs (NoAccessException);
- every other failure is `{"result":"error","message":...}` with HTTP 200;
- Live pages with `filter_limit` (HTTP default 100, -1 = all) and `filter_offset`, newest
  visit first; findDataSubjects asks Live for 401 visits whatever the request's `filter_limit`
  (PrivacyManager/API.php L100, core/API/Request.php L127, L579-592);
- segments: `userId`, `visitorId`, `visitIp`, `visitId`, and `visitEndServerDate` (the UTC date of the
  visit's last action: `DATE(log_visit.visit_last_action_time)`, CoreHome/Columns/VisitLastActionDate.php)
  with `==`, `!=` (which also matches an empty value: SegmentExpression.php L256-258, L329-334), `<`, `<=`,
  `>`, `>=` (compared as MySQL compares a DATE with 'YYYY-MM-DD'), `,` (OR) binding
  tighter than `;` (AND); values url-decoded three times, as Matomo does: the whole segment
  (core/Segment.php L149-177: when decoding changes it and both forms parse into as many
  conditions, the decoded one), each condition (core/Segment/SegmentExpression.php L120) and
  each value (L140), each time with PHP's urldecode (`+` is a space);
- SitesManager.getSitesIdWithAdminAccess is PHP's array_unique(array_merge(admin, superuser))
  (core/Access.php L399-407): keys survive, so a super user who also has an admin row gets a
  JSON object such as {"0": 1, "2": 2}, not a list;
- deleteDataSubjects deletes whole visits at once and answers per-table row counts; it
  leaves log_action rows (Matomo's cron removes unused ones later), and remembers the visits'
  dates per site for archive invalidation (PrivacyManager/Model/DataSubjects.php L121-146),
  kept in `invalidated` for tests.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import unquote_plus

import orjson
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from sandbox.people import DECOY_EMAIL, JANE, JOHN, PEOPLE, Person

MSG_TOKEN_INSECURE = (
    "Unable to authenticate with the provided token. It is either invalid, expired or is required to be sent "
    "as a POST parameter."
)
MSG_TOKEN_INVALID = "Unable to authenticate with the provided token. It is either invalid or expired."
_VISITS_KEY = re.compile(r"^visits\[(\d+)\]\[([a-z_]+)\]$")
_CONDITION = re.compile(r"^([A-Za-z_]+)(==|!=|>=|>|<=|<)(.*)$")  # SegmentExpression.php L122-131, in its order
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
FIND_CAP = 401  # PrivacyManager/API.php L100: findDataSubjects' own filter_limit, whatever the request says
_FIND_COLUMNS = (
    "lastActionDateTime", "idVisit", "idSite", "siteName", "visitorId", "visitIp", "userId", "deviceType",
    "deviceModel", "deviceTypeIcon", "operatingSystem", "operatingSystemIcon", "browser",
    "browserFamilyDescription", "browserIcon", "country", "region", "countryFlag",
)


class ApiError(Exception):
    """An exception as Matomo's JSON renderer shows it: HTTP 200 unless it carries an HTTP code."""

    def __init__(self, message: str, status: int = 200) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class Visit:
    idvisit: int
    idsite: int
    visitor_id: str  # 16 hex
    user_id: str | None
    ip: str
    first: datetime
    last: datetime
    actions: list[int] = field(default_factory=list)  # idlink_va


@dataclass
class Token:
    login: str
    secure_only: bool
    admin_sites: frozenset[int]
    view_sites: frozenset[int]
    superuser: bool = False
    admin_rows: tuple[int, ...] = ()  # explicit 'admin' access rows (a super user may keep old ones)


def user_id_hash(user_id: str) -> str:
    return hashlib.sha1(user_id.encode("utf-8")).hexdigest()[:16]


class MatomoSim:
    TOKEN = "matomo-sim-admin-token"  # a super user's token, created "secure only"
    VIEW_TOKEN = "matomo-sim-view-token"  # view access to site 1 only
    TOKEN_ENV = "DSAR_MATOMO_TOKEN"
    SITES = {1: "Shop", 2: "Blog"}
    VERSION = "5.2.0"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens = {
            self.TOKEN: Token("admin", True, frozenset(self.SITES), frozenset(self.SITES), superuser=True),
            self.VIEW_TOKEN: Token("viewer", False, frozenset(), frozenset({1})),
        }
        self._visits: dict[int, Visit] = {}
        self._link: dict[int, dict[str, Any]] = {}  # log_link_visit_action by idlink_va
        self._conversions: list[dict[str, Any]] = []
        self._log_action: dict[str, int] = {}  # name -> idaction (never deleted by deleteDataSubjects)
        self._next_visit = 4700
        self._next_link = 1
        self.calls: list[str] = []  # API methods called, for tests
        self.invalidated: dict[int, set[date]] = {}  # site -> visit dates remembered for invalidation
        self.delete_requests: list[list[tuple[int, int]]] = []  # (idsite, idvisit) asked per deleteDataSubjects
        # Every visit a state-changing call named, as (call, "idsite:idvisit") (sandbox.launch.Sandbox.writes).
        self.writes: list[tuple[str, str]] = []
        self._map = Map([Rule("/index.php", endpoint="api"), Rule("/", endpoint="api")])

    # -- seeding --------------------------------------------------------------------------------

    def add_visit(
        self, idsite: int, visitor_id: str, user_id: str | None, when: datetime,
        pages: Iterable[tuple[str, str]] = (("https://shop.example.com/", "Home"),),
        ip: str = "203.0.113.0", goal: bool = False,
    ) -> int:
        pages = list(pages)
        with self._lock:
            idvisit = self._next_visit
            self._next_visit += 1
            visit = Visit(idvisit, idsite, visitor_id, user_id, ip, when, when)
            for position, (url, title) in enumerate(pages, start=1):
                idlink = self._next_link
                self._next_link += 1
                self._link[idlink] = {
                    "idlink_va": idlink, "idsite": idsite, "idvisit": idvisit, "idvisitor": visitor_id,
                    "idaction_url": self._action(url), "idaction_name": self._action(title),
                    "server_time": when.replace(minute=min(59, when.minute + position)),
                    "pageview_position": position,
                }
                visit.actions.append(idlink)
                visit.last = self._link[idlink]["server_time"]
            if goal:
                self._conversions.append({
                    "idvisit": idvisit, "idsite": idsite, "idvisitor": visitor_id, "idgoal": 1, "buster": 0,
                    "server_time": visit.last, "url": pages[0][0], "revenue": 0,
                })
            self._visits[idvisit] = visit
            return idvisit

    def _action(self, name: str) -> int:
        return self._log_action.setdefault(name, len(self._log_action) + 1)

    def seed_demo(self) -> None:
        """Each person: visits by userId (visitorId = sha1(userId)[:16]) and pre-login anonymous visits."""
        for n, person in enumerate(PEOPLE):
            day = datetime(2024, 5, 2 + n, 10, 0, tzinfo=UTC)
            hashed = user_id_hash(person.email)
            self.add_visit(1, hashed, person.email, day,
                           [("https://shop.example.com/account", "Account"), ("https://shop.example.com/cart", "Cart")],
                           ip="203.0.113.0", goal=True)
            self.add_visit(2, hashed, person.email, day.replace(hour=12), [("https://blog.example.com/", "Blog")])
            for k in range(2):
                self.add_visit(1, person.matomo_visitor_id, None, day.replace(day=1, hour=8 + k),
                               [("https://shop.example.com/", "Home"), ("https://shop.example.com/pricing", "Pricing")])
        self.add_visit(1, user_id_hash(DECOY_EMAIL), DECOY_EMAIL, datetime(2024, 5, 6, 9, 0, tzinfo=UTC))
        for k in range(3):  # strangers nobody asks about
            self.add_visit(1, f"{k + 1:016x}", None, datetime(2024, 5, 7, 9 + k, 0, tzinfo=UTC))

    def seed_shared(self) -> int:
        """After seed_demo: John logs in on Jane's computer (her pre-login visitor id), as on a site with
        enable_userid_overwrites_visitorid=0, so one visitor id carries two userIds; the visit's id."""
        return self.add_visit(1, JANE.matomo_visitor_id, JOHN.email, datetime(2024, 5, 8, 20, 0, tzinfo=UTC),
                              [("https://shop.example.com/account", "Account")])

    # -- the test harness side ------------------------------------------------------------------

    def keep_admin_row(self, site: int) -> None:
        """The super user was an admin of `site` before promotion and keeps that access row."""
        with self._lock:
            token = self._tokens[self.TOKEN]
            token.admin_rows = (*token.admin_rows, site)

    def settings(self, base_url: str) -> dict[str, Any]:
        return {
            "base_url": base_url, "token_env": self.TOKEN_ENV, "id_sites": "all", "filter_limit": 401,
            "page_size": 100, "chunk_size": 100, "user_id_identity": "email", "timeout_s": 10,
        }

    def env(self) -> dict[str, str]:
        return {self.TOKEN_ENV: self.TOKEN}

    def holdings(self, email: str) -> dict[str, int]:
        """Visits, page views and conversions still linked to that person (non-zero kinds only)."""
        person: Person | None = next((p for p in PEOPLE if p.email == email), None)
        visitor_ids = {user_id_hash(email)} | ({person.matomo_visitor_id} if person else set())
        with self._lock:
            # A visit on one of the person's visitor ids but with another userId is someone else's (shared device).
            ids = {v.idvisit for v in self._visits.values()
                   if v.user_id == email or (v.visitor_id in visitor_ids and not v.user_id)}
            counts = {
                "visits": len(ids),
                "actions": sum(1 for row in self._link.values() if row["idvisit"] in ids),
                "conversions": sum(1 for row in self._conversions if row["idvisit"] in ids),
            }
        return {kind: n for kind, n in counts.items() if n}

    # -- WSGI -----------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        try:
            self._map.bind_to_environ(environ).match()
            response = self._dispatch(request)
        except HTTPException as exc:
            response = exc.get_response(environ)
        return response(environ, start_response)

    @property
    def app(self) -> MatomoSim:
        return self

    def _dispatch(self, request: Request) -> Response:
        params: dict[str, str] = {**request.form.to_dict(), **request.args.to_dict()}  # $_GET wins, as in PHP
        if params.get("module") != "API":
            return Response("not an API request", status=400, mimetype="text/plain")
        method = params.get("method", "")
        if params.get("format", "xml").lower() != "json":
            return _json({"result": "error", "message": "this simulator speaks format=JSON only"})
        try:
            token = self._authenticate(request)
            with self._lock:
                self.calls.append(method)
                handler = self._handlers().get(method)
                if handler is None:
                    module = method.split(".")[0]
                    raise ApiError(f"The method '{method}' does not exist or is not available in the module "
                                   f"'\\Piwik\\Plugins\\{module}\\API'.")
                return _json(handler(token, params, request))
        except ApiError as exc:
            return _json({"result": "error", "message": exc.message}, exc.status)

    def _authenticate(self, request: Request) -> Token | None:
        in_query = "token_auth" in request.args
        value = request.args.get("token_auth") if in_query else request.form.get("token_auth")
        if value is None or value == "anonymous":
            return None
        secure = not in_query and "token_auth" in request.form and request.method == "POST"
        token = self._tokens.get(value)
        if token is None or (token.secure_only and not secure):
            raise ApiError(MSG_TOKEN_INVALID if secure else MSG_TOKEN_INSECURE, 401)
        return token

    def _handlers(self) -> dict[str, Callable[[Token | None, dict[str, str], Request], Any]]:
        return {
            "API.getMatomoVersion": self._version,
            "SitesManager.getSitesIdWithAdminAccess": self._admin_sites,
            "PrivacyManager.findDataSubjects": self._find,
            "PrivacyManager.exportDataSubjects": self._export,
            "PrivacyManager.deleteDataSubjects": self._delete,
            "Live.getLastVisitsDetails": self._live,
        }

    # -- access checks (NoAccessException -> 401) ----------------------------------------------

    @staticmethod
    def _need_some(token: Token | None, level: str) -> Token:
        sites = (token.admin_sites if level == "admin" else token.view_sites) if token else frozenset()
        if token is None or not sites:
            raise ApiError(f"You can't access this resource as it requires '{level}' access for at least one "
                           "website.", 401)
        return token

    @staticmethod
    def _need_sites(token: Token | None, level: str, sites: Iterable[int]) -> None:
        allowed = (token.admin_sites if level == "admin" else token.view_sites) if token else frozenset()
        for site in sites:
            if site not in allowed:
                raise ApiError(f"You can't access this resource as it requires '{level}' access for the website "
                               f"id = {site}.", 401)

    def _site_ids(self, raw: str | None) -> list[int]:
        if raw is None or raw == "":
            raise ApiError("Please specify a value for 'idSite'.")
        if raw.strip().lower() == "all":
            return sorted(self.SITES)
        try:
            ids = [int(part) for part in raw.split(",")]
        except ValueError:
            raise ApiError("An unexpected website was found in the request: website id was set to "
                           f"'{raw[:20]}' .") from None
        return [i for i in ids if i in self.SITES]

    # -- methods --------------------------------------------------------------------------------

    def _version(self, token: Token | None, params: dict[str, str], request: Request) -> Any:
        self._need_some(token, "view")
        return {"value": self.VERSION}

    def _admin_sites(self, token: Token | None, params: dict[str, str], request: Request) -> Any:
        if token is None:
            return []
        merged = [*token.admin_rows, *(sorted(self.SITES) if token.superuser else sorted(token.admin_sites))]
        unique: dict[int, int] = {}  # PHP array_unique: the first key of each value survives
        for key, site in enumerate(merged):
            if site not in unique.values():
                unique[key] = site
        if list(unique) == list(range(len(unique))):
            return list(unique.values())
        return {str(k): v for k, v in unique.items()}  # json_encode of a non-list array

    def _find(self, token: Token | None, params: dict[str, str], request: Request) -> Any:
        self._need_some(token, "admin")
        if "segment" not in params:
            raise ApiError("Please specify a value for 'segment'.")
        sites = self._site_ids(params.get("idSite"))
        # The nested Live call gets filter_limit=401 and no offset; the request's own values do not count.
        rows = self._query(sites, params["segment"], None, {**params, "filter_limit": str(FIND_CAP),
                                                             "filter_offset": "0"})
        return [{k: row[k] for k in _FIND_COLUMNS if k in row} for row in rows]

    def _live(self, token: Token | None, params: dict[str, str], request: Request) -> Any:
        sites = self._site_ids(params.get("idSite"))
        self._need_some(token, "view")
        self._need_sites(token, "view", sites)
        span = _period(params.get("period"), params.get("date"))
        rows = self._query(sites, params.get("segment", ""), span, params)
        if params.get("doNotFetchActions") not in ("1", "true"):
            for row in rows:
                row["actionDetails"] = self._action_details(row["idVisit"])
        return rows

    def _query(self, sites: list[int], segment: str, span: tuple[date, date] | None,
               params: dict[str, str]) -> list[dict[str, Any]]:
        match = _segment(segment)
        visits = [
            v for v in self._visits.values()
            if v.idsite in sites and match(v) and (span is None or span[0] <= v.last.date() <= span[1])
        ]
        visits.sort(key=lambda v: (v.last, v.idvisit), reverse=True)
        limit = _int_param(params, "filter_limit", 100)  # the API controller's HTTP default
        offset = _int_param(params, "filter_offset", 0)
        visits = visits[offset:] if limit == -1 else visits[offset: offset + max(limit, 0)]
        return [self._visit_details(v) for v in visits]

    def _visit_details(self, v: Visit) -> dict[str, Any]:
        return {
            "idSite": v.idsite, "idVisit": v.idvisit, "visitIp": v.ip, "visitorId": v.visitor_id,
            "userId": v.user_id, "siteName": self.SITES[v.idsite], "visitorType": "returningCustomer",
            "serverDate": v.last.strftime("%Y-%m-%d"), "firstActionTimestamp": int(v.first.timestamp()),
            "lastActionTimestamp": int(v.last.timestamp()), "lastActionDateTime": v.last.strftime("%Y-%m-%d %H:%M:%S"),
            "actions": str(len(v.actions)), "deviceType": "Desktop", "deviceModel": "Generic Desktop",
            "deviceTypeIcon": "plugins/Morpheus/icons/dist/devices/desktop.png", "operatingSystem": "Windows 10",
            "operatingSystemIcon": "plugins/Morpheus/icons/dist/os/WIN.png", "browser": "Chrome 124.0",
            "browserFamilyDescription": "Blink (Chrome)", "browserIcon": "plugins/Morpheus/icons/dist/browsers/CH.png",
            "country": "Norway", "region": "Oslo", "countryFlag": "plugins/Morpheus/icons/dist/flags/no.png",
        }

    def _action_details(self, idvisit: int) -> list[dict[str, Any]]:
        names = {i: n for n, i in self._log_action.items()}
        return [
            {"type": "action", "url": names[row["idaction_url"]], "pageTitle": names[row["idaction_name"]],
             "pageIdAction": row["idaction_url"], "idpageview": str(row["idlink_va"]),
             "serverTimePretty": row["server_time"].strftime("%b %d, %Y %H:%M:%S")}
            for row in self._link.values() if row["idvisit"] == idvisit
        ]

    def _visits_param(self, token: Token | None, params: dict[str, str]) -> list[tuple[int, int]]:
        self._need_some(token, "admin")
        items: dict[int, dict[str, str]] = {}
        for key, value in params.items():
            m = _VISITS_KEY.match(key)
            if m:
                items.setdefault(int(m.group(1)), {})[m.group(2)] = value
        if not items:
            raise ApiError("Please specify a value for 'visits'.")
        pairs: list[tuple[int, int]] = []
        for index in sorted(items):
            for key in ("idsite", "idvisit"):
                if not items[index].get(key):
                    raise ApiError(f"No {key} key set for visit at index {index}")
            try:
                pairs.append((int(items[index]["idsite"]), int(items[index]["idvisit"])))
            except ValueError:
                raise ApiError(f"Invalid idsite or idvisit for visit at index {index}") from None
        self._need_sites(token, "admin", {site for site, _ in pairs})
        return pairs

    def _selected(self, pairs: list[tuple[int, int]]) -> list[Visit]:
        wanted = set(pairs)  # a visit is deleted only when both its site and its id match
        return [v for v in self._visits.values() if (v.idsite, v.idvisit) in wanted]

    def _export(self, token: Token | None, params: dict[str, str], request: Request) -> Any:
        visits = self._selected(self._visits_param(token, params))
        ids = {v.idvisit for v in visits}
        links = [row for row in self._link.values() if row["idvisit"] in ids]
        names = {i: n for n, i in self._log_action.items()}
        result: dict[str, Any] = {
            "log_visit": [_strings({
                "idvisit": v.idvisit, "idsite": self.SITES[v.idsite], "idvisitor": v.visitor_id,
                "user_id": v.user_id, "location_ip": v.ip, "config_browser_name": "Chrome",
                "config_os": "Windows", "location_country": "Norway",
                "visit_first_action_time": v.first.strftime("%Y-%m-%d %H:%M:%S"),
                "visit_last_action_time": v.last.strftime("%Y-%m-%d %H:%M:%S"),
                "visit_total_actions": len(v.actions),
                "visit_entry_idaction_url": self._link[v.actions[0]]["idaction_url"] if v.actions else None,
            }) for v in sorted(visits, key=lambda v: v.idvisit)],
            "log_link_visit_action": [_strings({**row, "server_time": row["server_time"].strftime(
                "%Y-%m-%d %H:%M:%S")}) for row in links],
            "log_conversion_item": [],
            "log_conversion": [_strings({**row, "server_time": row["server_time"].strftime("%Y-%m-%d %H:%M:%S"),
                                         "revenue": f"${row['revenue']}"})
                               for row in self._conversions if row["idvisit"] in ids],
        }
        for column in ("idaction_url", "idaction_name"):
            used = sorted({row[column] for row in links})
            if used:
                result[f"log_action_log_link_visit_action_{column}"] = [
                    {"idaction": str(i), "name": names[i]} for i in used
                ]
        return dict(sorted(result.items(), reverse=True))  # krsort, as Matomo orders it

    def _delete(self, token: Token | None, params: dict[str, str], request: Request) -> Any:
        pairs = self._visits_param(token, params)
        self.delete_requests.append(pairs)
        self.writes.extend(("PrivacyManager.deleteDataSubjects", f"{site}:{visit}") for site, visit in pairs)
        visits = self._selected(pairs)
        ids = {v.idvisit for v in visits}
        links = [k for k, row in self._link.items() if row["idvisit"] in ids]
        conversions = [row for row in self._conversions if row["idvisit"] in ids]
        for k in links:
            del self._link[k]
        self._conversions = [row for row in self._conversions if row["idvisit"] not in ids]
        for v in visits:
            self.invalidated.setdefault(v.idsite, set()).add(v.last.date())
        for idvisit in ids:
            del self._visits[idvisit]
        return {"log_visit": len(ids), "log_link_visit_action": len(links), "log_conversion_item": 0,
                "log_conversion": len(conversions)}


# -- helpers ------------------------------------------------------------------------------------


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status=status, content_type="application/json; charset=utf-8")


def _strings(row: dict[str, Any]) -> dict[str, str]:
    """Export rows: string values, null columns left out (as DataSubjects::exportDataSubjects does)."""
    return {k: str(v) for k, v in sorted(row.items()) if v is not None}


def _int_param(params: dict[str, str], key: str, default: int) -> int:
    try:
        return int(params.get(key, default))
    except ValueError:
        raise ApiError(f"The parameter '{key}' must be an integer.") from None


def _day(text: str) -> date:
    if text == "today":
        return datetime.now(UTC).date()
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ApiError(f"Date format must be: YYYY-MM-DD, or 'today' or 'yesterday' ({text[:20]})") from None


def _period(period: str | None, when: str | None) -> tuple[date, date] | None:
    if not period:
        return None
    if period == "range":
        start, _, end = (when or "").partition(",")
        return _day(start), _day(end or start)
    if period == "day":
        day = _day(when or "today")
        return day, day
    raise ApiError("this simulator supports period=range and period=day only")


def _segment(text: str) -> Callable[[Visit], bool]:
    """AND (`;`) of ORs (`,`) of conditions, decoded as core/Segment.php L149-177 decodes the whole segment."""
    if not text:
        return lambda v: True
    decoded = unquote_plus(text)
    if decoded != text:
        try:
            parsed = _parse(decoded)
        except ApiError:
            parsed = None
        try:
            raw = _parse(text)
        except ApiError:
            raw = None
        if raw is not None and (parsed is None or _count(raw) > _count(parsed)):
            groups = raw
        else:
            groups = parsed if parsed is not None else _parse(decoded)
    else:
        groups = _parse(text)
    return lambda v: all(any(test(v) for test in group) for group in groups)


def _count(groups: list[list[Callable[[Visit], bool]]]) -> int:
    return sum(len(group) for group in groups)


def _parse(text: str) -> list[list[Callable[[Visit], bool]]]:
    return [[_condition(part) for part in group.split(",")] for group in text.split(";")]


def _condition(text: str) -> Callable[[Visit], bool]:
    text = unquote_plus(text)  # SegmentExpression::parseOperand, L120
    m = _CONDITION.match(text)
    if not m:
        raise ApiError(f"The segment condition '{text[:60]}' is not valid.")
    name, operator, value = m.group(1), m.group(2), unquote_plus(m.group(3))  # L140
    getters: dict[str, Callable[[Visit], str]] = {
        "userId": lambda v: v.user_id or "",
        "visitorId": lambda v: v.visitor_id,
        "visitIp": lambda v: v.ip,
        "visitId": lambda v: str(v.idvisit),
        "visitEndServerDate": lambda v: v.last.astimezone(UTC).date().isoformat(),
    }
    if name not in getters:
        raise ApiError(f"Segment '{name}' is not a supported segment.")
    if name == "visitorId" and not _HEX16.match(value):
        raise ApiError("visitorId is expected to be a 16 hex char string")
    get = getters[name]
    tests: dict[str, Callable[[str], bool]] = {
        "==": lambda x: x == value, "!=": lambda x: x != value, "<": lambda x: x < value,
        "<=": lambda x: x <= value, ">": lambda x: x > value, ">=": lambda x: x >= value,
    }
    test = tests[operator]
    return lambda v: test(get(v))

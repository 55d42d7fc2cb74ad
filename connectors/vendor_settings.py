"""The data-map settings of the vendor connectors: one pydantic model per kind, one way to check them.

Each model declares every key its connector reads from the system's entry in the data map, with
type, default and meaning; `docs/datamap.md` carries tables generated from them
(`python -m connectors.vendor_settings docs/datamap.md` rewrites them, a unit test compares).
Secrets are never settings: a `*_env` key names the environment variable that holds one, read
with `ConnectorContext.secret`. A bad value is a `PermanentError(system, "data map: <key>: <message>")`,
formatted as the SQL data map's errors are (`first_error`).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin
from urllib.parse import urlsplit

import annotated_types
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic.json_schema import JsonDict
from pydantic_core import PydanticUndefined

from connectors.base import IdentityType, PermanentError
from connectors.redact import redact
from connectors.retention import VendorRetentionSpec

# The keys of a system entry that belong to discovery (discovery.engine.datamap.SystemInfo), not to
# the connector: never settings, so never "unknown" either. A unit test keeps the two lists equal.
DISCOVERY_KEYS = frozenset(
    {"kind", "enabled", "title", "purpose", "legal_basis", "retention", "processors", "location", "source", "holds",
     "data_subjects", "data_categories", "recipients", "transfers"}
)

# SALESmanago setting defaults. The vendor paths, relative to base_url (".../api"); `paths` overrides any.
SALESMANAGO_PATHS: dict[str, str] = {
    "basic": "contact/basic",  # [V] SSO util ContactService::getContactBasic
    "export": "contact/export/data",  # [L] salesmanago-toolkit
    "job_status": "job/status",  # [L] salesmanago-toolkit
    "delete": "contact/delete",  # [L] pixers, tomaszcekalo
    "optout": "contact/optout",  # [L] tomaszcekalo, pixers
    "phone_optout": "contact/phoneoptout",  # [L]
    "optin": "contact/optin",  # [L]
    "phone_optin": "contact/phoneoptin",  # [L]
    "stop_monitoring": "contact/stopMonitoring",  # [L] tomaszcekalo, docs anchor
    "restore_monitoring": "contact/restoreMonitoring",  # [L]
}
# The data types the export job is asked for [L: salesmanago-toolkit export_data].
SALESMANAGO_DATA_TYPES: tuple[str, ...] = (
    "CONTACT", "TAG", "EXT_EVENT", "VISITS", "EMAILS", "FUNNELS", "NOTES", "TASKS", "COUPONS", "SMS",
    "CONSENTS", "PROPERTIES", "DICTIONARY_PROPERTIES",
)
SALESMANAGO_PROBE_EMAIL = "dsar-healthcheck@example.invalid"  # no person: `check` asks for this address

_URL: JsonDict = {"type": "http(s) URL"}  # the type the docs show
_MAUTIC_ALIAS = re.compile(r"[a-z][a-z0-9_]{0,63}")


# ---------------------------------------------------------------------- shared value types


def _not_bool(value: Any) -> Any:
    # YAML `yes`/`true` must not pass as 1 where a number is meant (pydantic's lax mode would allow it).
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    return value


# A YAML number (not a string, not true/false).
PositiveNumber = Annotated[float, Strict(), Field(gt=0)]
PositiveInt = Annotated[int, Strict(), Field(ge=1)]
# Mautic's settings were always read leniently ("30" is 30): kept so.
LenientPositiveNumber = Annotated[float, BeforeValidator(_not_bool), Field(gt=0)]
LenientNonNegativeNumber = Annotated[float, BeforeValidator(_not_bool), Field(ge=0)]
LenientPositiveInt = Annotated[int, BeforeValidator(_not_bool), Field(ge=1)]
Text = Annotated[str, Strict(), StringConstraints(strip_whitespace=True, min_length=1)]  # non-empty, stripped


def _secret(description: str, *, required: bool = True) -> Any:
    """A `*_env` key: the name of the environment variable holding the secret, never the secret."""
    extra: JsonDict = {"secret": True}
    if required:
        return Field(min_length=1, description=description, json_schema_extra=extra)
    return Field(None, description=description, json_schema_extra=extra)


def _http_url(example: str) -> AfterValidator:
    def check(value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http(s) URL such as {example}")
        return value

    return AfterValidator(check)


class VendorSettings(BaseModel):
    """Keys a connector does not read are ignored, as before; FreshChat forbids them (a typo is caught)."""

    model_config = ConfigDict(extra="ignore", frozen=True)


def _rules_check(entities: tuple[str, ...], by_dsar: tuple[str, ...] = ()) -> AfterValidator:
    """The `retention_rules` key of a vendor: each rule names one of the connector's `entities`, `by: dsar` only
    where the connector deletes by age itself (`by_dsar`), one rule per entity."""

    def check(rules: tuple[VendorRetentionSpec, ...]) -> tuple[VendorRetentionSpec, ...]:
        seen: set[str] = set()
        for i, rule in enumerate(rules):
            if rule.entity not in entities:
                raise ValueError(f"[{i}].entity: '{rule.entity}' is not one of {', '.join(entities)}")
            if rule.by == "dsar" and rule.entity not in by_dsar:
                raise ValueError(f"[{i}].by: dsar cannot delete {rule.entity} by age through the vendor's API"
                                 + (f" (only {', '.join(by_dsar)})" if by_dsar else "")
                                 + "; use vendor_setting (confirmed by hand) or request")
            if rule.entity in seen:
                raise ValueError(f"[{i}].entity: {rule.entity} has two rules")
            seen.add(rule.entity)
        return rules

    return AfterValidator(check)


def _rules_field(by_dsar: str = "") -> Any:
    return Field((), json_schema_extra={"type": "list of rules"}, description=(
        "Retention promises: entity, by (" + ("dsar, " if by_dsar else "") + "vendor_setting or request), after "
        "or until, from, setting, reason (docs/retention.md)" + (f"; by: dsar for {by_dsar}" if by_dsar else "")))


# The entities a vendor rule may name: the connectors' own (`Connector.entities`; a unit test keeps them equal).
FRESHCHAT_ENTITIES = ("user", "conversations", "messages")
SALESMANAGO_ENTITIES = ("contact", "export_file", "export_contact", "export_tag")
MAUTIC_ENTITIES = ("contact", "activity", "notes", "segments", "campaigns", "companies", "devices")
MATOMO_ENTITIES = ("visits", "log_visit", "log_link_visit_action", "log_conversion", "log_conversion_item",
                   "log_action")


# ---------------------------------------------------------------------- FreshChat


# FreshChat answers at most 50 messages a page (getkarta/freshchat-downloader freshchat_client.py L107), and its
# messages answer has no pagination block, so a short page is the only end signal: asking for more than the cap
# makes page 1 look short and the export stop there (vendor-source-check.md F6).
FRESHCHAT_MAX_MESSAGES_PER_PAGE = 50


def _messages_page_cap(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and value > FRESHCHAT_MAX_MESSAGES_PER_PAGE:
        raise ValueError(
            f"must be at most {FRESHCHAT_MAX_MESSAGES_PER_PAGE}: FreshChat answers no more than "
            f"{FRESHCHAT_MAX_MESSAGES_PER_PAGE} messages a page, so a larger page looks like the last one and the "
            "export would stop after page 1"
        )
    return value


class FreshchatSettings(VendorSettings):
    model_config = ConfigDict(extra="forbid")  # as before: a misspelt key fails instead of silently defaulting

    base_url: Annotated[str, Strict(), _http_url("https://acme.freshchat.com/v2")] = Field(
        description="The FreshChat API v2 URL, e.g. https://acme.freshchat.com/v2", json_schema_extra=_URL
    )
    token_env: str = _secret("Variable holding the API token (sent as a Bearer token)")
    rate_per_second: PositiveNumber | None = Field(
        None, description="Calls per second, shared by every dsar process through Redis; null: no pacing"
    )
    timeout_s: PositiveNumber = Field(30.0, description="Read timeout of one call in seconds (connect: at most 5)")
    supports_user_delete: StrictBool = Field(
        False, description="Try DELETE /users/{id} (no FreshChat source lists it); false, or a 4xx answer other "
                           "than 429, blanks the profile with PUT and asks for the manual Forget step instead"
    )
    reference_id_identity: IdentityType | None = Field(
        IdentityType.ACCOUNT_ID,
        description="Identifier type the users' reference_id holds; null: no reference-id look-ups",
    )
    items_per_page: Annotated[int, BeforeValidator(_messages_page_cap), Strict(),
                              Field(ge=1, le=FRESHCHAT_MAX_MESSAGES_PER_PAGE)] = Field(
        FRESHCHAT_MAX_MESSAGES_PER_PAGE, description="Messages asked for per page (FreshChat's cap is 50)"
    )
    restricted_property: Text = Field(
        "gdpr_restricted", description="User property set to true while processing is restricted"
    )
    parallel_calls: Annotated[int, Strict(), Field(ge=1, le=16)] = Field(
        4, description="Conversations exported at once (still paced by rate_per_second)"
    )
    retention_rules: Annotated[tuple[VendorRetentionSpec, ...], _rules_check(FRESHCHAT_ENTITIES)] = _rules_field()


# ---------------------------------------------------------------------- Mautic


def _mautic_base_url(value: Any) -> str:
    url = str(value or "").strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", url):
        raise ValueError("must be the Mautic site URL, e.g. https://mautic.example.com")
    if url.endswith("/api"):
        raise ValueError("is the Mautic site URL without the trailing /api")
    return url


def _mautic_alias(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    if not _MAUTIC_ALIAS.fullmatch(text):
        raise ValueError("must be a Mautic alias such as trial_ends_at (lower-case letters, digits, _)")
    return text


class MauticSettings(VendorSettings):
    base_url: Annotated[str, BeforeValidator(_mautic_base_url)] = Field(
        description="The Mautic site URL without /api, e.g. https://mautic.example.com", json_schema_extra=_URL
    )
    auth: Annotated[Literal["basic", "oauth2"], BeforeValidator(lambda v: str(v).strip().lower())] = Field(
        "basic", description="basic (user_env, password_env) or oauth2 client credentials (client_id_env, "
                             "client_secret_env)"
    )
    user_env: str | None = _secret("With auth basic: variable holding the API user name", required=False)
    password_env: str | None = _secret("With auth basic: variable holding the API user's password", required=False)
    client_id_env: str | None = _secret("With auth oauth2: variable holding the OAuth2 client id", required=False)
    client_secret_env: str | None = _secret("With auth oauth2: variable holding the OAuth2 client secret",
                                            required=False)
    rate_per_second: LenientNonNegativeNumber | None = Field(
        10.0, description="Calls per second, shared through Redis; 0 or null: no pacing"
    )
    timeout_s: LenientPositiveNumber = Field(
        30.0, description="Read timeout of one call in seconds (connect: at most 5)"
    )
    activity_page_size: LenientPositiveInt = Field(100, description="Events asked for per page of a contact's activity")
    page_size: LenientPositiveInt = Field(
        100, description="Items per page of contact searches, notes, devices and the retention look-ups"
    )
    parallel_calls: LenientPositiveInt = Field(4, description="A contact's sub-resources fetched at once")
    dnc_channels: tuple[str, ...] = Field(
        ("email",), min_length=1, description="Channels set to do-not-contact while processing is restricted"
    )
    dnc_comment: str = Field(
        "dsar restriction",
        description="Comment on the do-not-contact entry (the request id is appended); no personal data",
    )
    trial_field: Annotated[str | None, BeforeValidator(_mautic_alias)] = Field(
        None, description="Contact field alias holding the trial end; null: no trial sweep (dsar sweep-marketing)"
    )
    dnc_table: Annotated[str, BeforeValidator(lambda v: _mautic_alias(v) or "lead_donotcontact")] = Field(
        "lead_donotcontact", description="Stats table the unsubscribes are read from (GET /api/stats/<table>)"
    )
    newsletter_erasure_delay_days: LenientNonNegativeNumber = Field(
        0.0, description="Days after the sweep that an unsubscribed person's erasure falls due"
    )
    trial_erasure_delay_days: LenientNonNegativeNumber = Field(
        0.0, description="Days after the sweep that an ended trial's erasure falls due"
    )
    retention_rules: Annotated[tuple[VendorRetentionSpec, ...], _rules_check(MAUTIC_ENTITIES)] = _rules_field()

    @field_validator("rate_per_second")
    @classmethod
    def _zero_is_unpaced(cls, value: float | None) -> float | None:
        return value or None

    @field_validator("dnc_channels", mode="before")
    @classmethod
    def _channel_names(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, str) or not isinstance(value, Iterable):
            raise ValueError("must be a list of channel names, e.g. [email]")
        channels = tuple(str(c).strip() for c in value)
        if not channels or not all(re.fullmatch(r"[a-z_]+", c) for c in channels):
            raise ValueError("must list channel names such as email, sms")
        return channels

    @field_validator("dnc_comment", mode="before")
    @classmethod
    def _no_personal_data(cls, value: Any) -> str:
        comment = str(value).strip()
        if not comment or redact(comment) != comment:
            raise ValueError("must be a short text without personal data")
        return comment


# ---------------------------------------------------------------------- SALESmanago


def _https_prefix(value: str) -> str:
    if not value.lower().startswith(("https://", "http://")):
        raise ValueError("must be an http(s) URL such as https://app3.salesmanago.com/api")
    return value


def _owner_email(value: str) -> str:
    if "@" not in value:
        raise ValueError("must be the e-mail of the SALESmanago user owning the contacts")
    return value


class SalesmanagoSettings(VendorSettings):
    base_url: Annotated[Text, AfterValidator(_https_prefix)] = Field(
        description="The API URL, e.g. https://app3.salesmanago.com/api", json_schema_extra=_URL
    )
    client_id_env: str = _secret("Variable holding the client id")
    api_key_env: str = _secret("Variable holding the API key")
    api_secret_env: str = _secret("Variable holding the API secret (only its hash is sent)")
    owner: Annotated[Text, AfterValidator(_owner_email)] | None = Field(
        None, description="E-mail of the one SALESmanago user owning the contacts (not a secret); the same as "
                          "`owners` with one entry"
    )
    owners: tuple[Annotated[Text, AfterValidator(_owner_email)], ...] = Field(
        (), description="E-mails of the SALESmanago users (owners) whose contacts are searched, in order; a person "
                        "is erased and restricted under each owner holding them. Give `owner` or `owners`",
        json_schema_extra={"type": "list of e-mails"},
    )
    poll_interval_s: PositiveNumber = Field(5.0, description="Seconds between polls of the export job")
    poll_timeout_s: PositiveNumber = Field(
        300.0, description="Seconds an export job may take before the export is retried later"
    )
    timeout_s: PositiveNumber = Field(30.0, description="Read timeout of one call in seconds (connect: 5)")
    rate_per_second: PositiveNumber | None = Field(
        None, description="Calls per second, shared through Redis; null: no pacing"
    )
    max_export_bytes: PositiveNumber = Field(100_000_000, description="Largest export file downloaded, in bytes")
    export_data_types: tuple[Annotated[str, Strict(), Field(min_length=1)], ...] = Field(
        SALESMANAGO_DATA_TYPES, min_length=1, description="dataType names the export job is asked for"
    )
    export_addressee_type: Text = Field("email", description="addresseeType sent to contact/export/data")
    monitoring_addressee_type: Text = Field(
        "email", description="addresseeType sent to contact/stopMonitoring and contact/restoreMonitoring "
                             "(every value seen on the wire is lower case)"
    )
    delete_permanently: StrictBool = Field(
        True, description="contact/delete with permanently=true; false adds a manual purge step"
    )
    stop_monitoring_on_erase: StrictBool = Field(
        True, description="Stop web monitoring before deleting a contact (a failure is reported; the delete still runs)"
    )
    lift_opt_in: StrictBool = Field(
        True, description="Lifting a restriction opts e-mail and phone in again; false only restores monitoring"
    )
    verify_export_contacts: StrictBool = Field(
        True, description="Refuse an export file that names contacts that were not asked for"
    )
    probe_email: Text = Field(SALESMANAGO_PROBE_EMAIL, description="Address `dsar check` looks up (nobody's)")
    retention_rules: Annotated[tuple[VendorRetentionSpec, ...], _rules_check(SALESMANAGO_ENTITIES)] = _rules_field()
    paths: Annotated[dict[str, Annotated[str, Strict(), Field(min_length=1)]], BeforeValidator(lambda v: v or {})] = (
        Field(default_factory=dict, json_schema_extra={"type": "mapping of call to path"},
              description="Overrides of the vendor paths, e.g. {delete: v2/contact/delete}; calls as in "
                          "connectors.vendor_settings.SALESMANAGO_PATHS")
    )

    @field_validator("paths")
    @classmethod
    def _known_calls(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(SALESMANAGO_PATHS))
        if unknown:
            raise ValueError(f"unknown call(s) {', '.join(unknown)}; known: {', '.join(sorted(SALESMANAGO_PATHS))}")
        return value

    @field_validator("owners", mode="before")
    @classmethod
    def _owner_list(cls, value: Any) -> Any:
        if isinstance(value, str) or not isinstance(value, Iterable):
            raise ValueError("must be a list of owner e-mails, e.g. [owner@shop.example]")
        return value

    @model_validator(mode="after")
    def _one_owner_list(self) -> SalesmanagoSettings:
        # `owner` (one user) is kept working as a one-element `owners`; giving both is ambiguous.
        if self.owner is not None and self.owners:
            raise ValueError("give either owner or owners, not both")
        owners = (self.owner,) if self.owner is not None else self.owners
        if not owners:
            raise ValueError("owner: required: the e-mail of the SALESmanago user owning the contacts (or owners, "
                             "a list of them)")
        folded = [o.lower() for o in owners]
        if len(set(folded)) < len(folded):
            raise ValueError("owners: an owner is listed twice")
        object.__setattr__(self, "owners", tuple(owners))  # the model is frozen: set once, here
        return self


# ---------------------------------------------------------------------- Matomo


def _matomo_base_url(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("is required (e.g. https://analytics.example.com)")
    url = value.strip().rstrip("/").removesuffix("/index.php")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.username:
        raise ValueError("must be an http(s) URL without query or credentials")
    return url


def _id_sites(value: Any) -> str:
    """'all' or a comma list of site ids, from a string, an int or a YAML list."""
    if isinstance(value, str) and value.strip().lower() == "all":
        return "all"
    problem = "must be 'all' or a list of site ids"
    if isinstance(value, bool):
        raise ValueError(problem)
    items = value if isinstance(value, list) else str(value).split(",")
    try:
        ids = [int(str(item).strip()) for item in items]
    except ValueError:
        raise ValueError(problem) from None
    if not ids or any(i <= 0 for i in ids):
        raise ValueError(problem)
    return ",".join(str(i) for i in dict.fromkeys(ids))


class MatomoSettings(VendorSettings):
    base_url: Annotated[str, BeforeValidator(_matomo_base_url)] = Field(
        description="The Matomo URL (a trailing /index.php is dropped), e.g. https://analytics.example.com",
        json_schema_extra=_URL,
    )
    token_env: str = _secret("Variable holding token_auth (a token with admin access to the sites)")
    id_sites: Annotated[str, BeforeValidator(_id_sites)] = Field(
        "all", description="Sites searched and erased in", json_schema_extra={"type": "`all` or list of site ids"}
    )
    user_id_identity: Literal["email", "account_id"] = Field(
        "email", description="Which identifier the site passes to setUserId"
    )
    # 401 is findDataSubjects' own cap (connectors.matomo.FIND_CAP; a unit test keeps them equal).
    filter_limit: PositiveInt = Field(401, description="filter_limit sent to PrivacyManager.findDataSubjects")
    page_size: PositiveInt = Field(100, description="Visits per page when a search was truncated")
    chunk_size: PositiveInt = Field(100, description="Visits per exportDataSubjects / deleteDataSubjects call")
    rate_per_second: PositiveNumber | None = Field(
        None, description="Calls per second, shared through Redis; null: no pacing (Matomo has no API limit)"
    )
    timeout_s: PositiveNumber = Field(60.0, description="Read timeout of one call in seconds (connect: at most 5)")
    retention_rules: Annotated[tuple[VendorRetentionSpec, ...], _rules_check(MATOMO_ENTITIES, ("visits",))] = (
        _rules_field("visits (their last action's UTC date)"))


# ---------------------------------------------------------------------- checking

MODELS: dict[str, type[VendorSettings]] = {
    "freshchat": FreshchatSettings,
    "mautic": MauticSettings,
    "salesmanago": SalesmanagoSettings,
    "matomo": MatomoSettings,
}

S = TypeVar("S", bound=BaseModel)


def parse(model: type[S], system: str, settings: Mapping[str, Any]) -> S:
    """The system's settings as `model`, or a PermanentError naming the first bad key."""
    own = {key: value for key, value in settings.items() if key not in DISCOVERY_KEYS}
    try:
        return model.model_validate(own)
    except ValidationError as exc:
        unknown = [str(e["loc"][0]) for e in exc.errors() if e["type"] == "extra_forbidden"]
        if unknown:
            known = ", ".join(model.model_fields)
            raise PermanentError(system, f"data map: {', '.join(unknown)}: unknown setting; known: {known}") from None
        raise PermanentError(system, f"data map: {first_error(exc)}") from None


def first_error(exc: ValidationError) -> str:
    """`<dotted key>: <message>` of the first error; pydantic's own wrapper names are left out."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"] if p not in ("function-after",))
    message = err["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


# ---------------------------------------------------------------------- documentation


def settings_table(model: type[BaseModel]) -> str:
    """The Markdown table docs/datamap.md shows for `model`: key, type, default, meaning, secret."""
    rows = ["| key | type | default | meaning | secret |", "|---|---|---|---|---|"]
    for key, field in model.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        secret = bool(extra.get("secret"))
        kind = str(extra.get("type") or ("environment variable name" if secret else _type_text(field)))
        cells = (f"`{key}`", kind, _default_text(field), field.description or "", "yes" if secret else "")
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


def _type_text(field: FieldInfo) -> str:
    return _annotation_text(field.annotation, list(field.metadata))


def _annotation_text(annotation: Any, metadata: list[Any]) -> str:
    args = get_args(annotation)
    if get_origin(annotation) is Annotated:
        return _annotation_text(args[0], [*annotation.__metadata__, *metadata])
    if get_origin(annotation) is Union or type(annotation).__name__ == "UnionType":
        members = [a for a in args if a is not type(None)]
        text = " or ".join(_annotation_text(a, metadata) for a in members)
        return f"{text} or null" if len(members) < len(args) else text
    if get_origin(annotation) is Literal:
        return " or ".join(f"`{a}`" for a in args)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return "one of " + ", ".join(f"`{m.value}`" for m in annotation)
    if get_origin(annotation) in (tuple, list):
        return f"list of {_annotation_text(args[0], [])}"
    if get_origin(annotation) is dict:
        return "mapping"
    names = {bool: "true or false", int: "integer", float: "number", str: "text"}
    return names.get(annotation, str(annotation)) + _bounds(metadata)


def _bounds(metadata: list[Any]) -> str:
    flat: list[Any] = []
    for item in metadata:
        flat.extend(item.metadata if isinstance(item, FieldInfo) else [item])
    low = next((f">= {m.ge}" for m in flat if isinstance(m, annotated_types.Ge)), None)
    low = low or next((f"> {m.gt}" for m in flat if isinstance(m, annotated_types.Gt)), None)
    high = next((m.le for m in flat if isinstance(m, annotated_types.Le)), None)
    if low and high is not None:
        return f" {low.removeprefix('>= ')} to {high}"
    return f" {low}" if low else ""


def _default_text(field: FieldInfo) -> str:
    if field.default is PydanticUndefined:
        return "`{}`" if field.default_factory is dict else "required"
    return f"`{_value_text(field.default)}`"


def _value_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_value_text(v) for v in value) + "]"
    return str(value)


_BLOCK = re.compile(r"(<!-- settings:(\w+) -->\n)(?:\|.*\n)*(<!-- /settings -->)")  # the table: lines starting |


def render_doc(text: str) -> str:
    """`text` with every `<!-- settings:<kind> -->` ... `<!-- /settings -->` block regenerated."""
    return _BLOCK.sub(lambda m: m.group(1) + settings_table(MODELS[m.group(2)]) + "\n" + m.group(3), text)


if __name__ == "__main__":  # python -m connectors.vendor_settings docs/datamap.md
    for name in sys.argv[1:]:
        path = Path(name)
        path.write_text(render_doc(path.read_text(encoding="utf-8")), encoding="utf-8")

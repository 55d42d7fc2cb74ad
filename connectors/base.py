"""The narrow contract every backend system implements.

Connectors know nothing of Dramatiq, the ledger or the bundle: they take the identities
known so far and answer in these plain types, so every path runs in-process in a test.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Self, TypeGuard

if TYPE_CHECKING:
    from connectors.retention import Due, Keep, RetentionRule


def N_(message: str) -> str:
    """Marks a text for the message catalogue (Babel's extractor finds `N_`); it is translated where it is shown."""
    return message


def _same(message: str) -> str:
    return message


@dataclass(frozen=True)
class Note:
    """A text a person may read, kept as its English template and its values so it can be shown in their
    language later (gettext's deferred translation): `msgid` is in the catalogue, `params` fill its {names}.

    A value is text or a number shown as it is (entity, system, column names, vendor ids), another Note
    (translated in turn), a per-language text from the data map ({"en": ..., "nb": ...}), or a list of
    these (shown joined with ", ").
    """

    msgid: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def render(self, translate: Callable[[str], str] = _same) -> str:
        """The text, translated with `translate` (the English template by default)."""
        return translate(self.msgid).format(**{k: _value(v, translate) for k, v in self.params.items()})

    def to_dict(self) -> dict[str, Any]:
        return {"msgid": self.msgid, "params": {k: _dump(v) for k, v in self.params.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Note:
        return cls(str(data["msgid"]), {k: _load(v) for k, v in (data.get("params") or {}).items()})

    def __str__(self) -> str:
        return self.render()


def is_note(value: Any) -> TypeGuard[Mapping[str, Any]]:
    """A Note as serialised by `Note.to_dict`."""
    return isinstance(value, Mapping) and isinstance(value.get("msgid"), str) and set(value) <= {"msgid", "params"}


def note(msgid: str, **params: Any) -> Note:
    return Note(msgid, params)


def _dump(value: Any) -> Any:
    if isinstance(value, Note):
        return value.to_dict()
    if isinstance(value, list | tuple):
        return [_dump(v) for v in value]
    return value


def _load(value: Any) -> Any:
    if is_note(value):
        return Note.from_dict(value)
    if isinstance(value, list):
        return [_load(v) for v in value]
    return value


def _value(value: Any, translate: Callable[[str], str]) -> Any:
    if isinstance(value, Note):
        return value.render(translate)
    if isinstance(value, list | tuple):
        return ", ".join(str(_value(v, translate)) for v in value)
    if isinstance(value, Mapping):  # a per-language text: the English one here
        return value.get("en") or next(iter(value.values()), "")
    return value


class IdentityType(enum.StrEnum):
    """Identifier types through which systems link one person."""

    EMAIL = "email"
    PHONE = "phone"
    ACCOUNT_ID = "account_id"
    FRESHCHAT_USER_ID = "freshchat_user_id"
    MAUTIC_CONTACT_ID = "mautic_contact_id"
    SALESMANAGO_CONTACT_ID = "salesmanago_contact_id"
    MATOMO_VISITOR_ID = "matomo_visitor_id"
    MATOMO_USER_ID = "matomo_user_id"


@dataclass(frozen=True, order=True)
class Identity:
    type: IdentityType
    value: str
    source: str = field(default="request", compare=False)
    # Provenance of a learned identifier: system, table, column and the row's path from a direct match
    # (e.g. "accounts: users (matched directly), column phone"). Discovery refuses a learned one without.
    via: str = field(default="", compare=False)
    # the same provenance as a Note, so the bundle page can show it in the person's language
    via_note: Note | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"type": str(self.type), "value": self.value, "source": self.source, "via": self.via,
                "via_note": self.via_note.to_dict() if self.via_note else None}

    @classmethod
    def learned(cls, type_: IdentityType, value: str, source: str, via: Note) -> Identity:
        """A learned identifier with its provenance, as English text and as a Note."""
        return cls(type_, value, source=source, via=via.render(), via_note=via)


class Identities:
    """A set of identities, searchable by type. Values are compared as given (already normalised)."""

    def __init__(self, items: Iterable[Identity] = ()) -> None:
        self._items: dict[tuple[IdentityType, str], Identity] = {}
        for item in items:
            self.add(item)

    def add(self, item: Identity) -> bool:
        key = (item.type, item.value)
        if key in self._items:
            return False
        self._items[key] = item
        return True

    def of(self, type_: IdentityType) -> list[str]:
        return sorted(v for (t, v) in self._items if t == type_)

    def types(self) -> set[IdentityType]:
        return {t for (t, _) in self._items}

    def __iter__(self) -> Iterator[Identity]:
        return iter(sorted(self._items.values()))

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item: object) -> bool:
        return isinstance(item, Identity) and (item.type, item.value) in self._items


@dataclass
class Hits:
    """Where a person was found in one system, and what new identifiers that taught us."""

    system: str
    found: bool
    counts: dict[str, int] = field(default_factory=dict)  # entity -> matching records
    learned: list[Identity] = field(default_factory=list)
    # entity -> why -> records reached but left alone because they are not this person's (counts only)
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)
    # entity -> identifiers on the records an erasure or restriction would change; kept in memory only,
    # so the plan can refuse one that would touch another person (compared with the final identity set)
    touches: dict[str, set[Identity]] = field(default_factory=dict)


@dataclass(frozen=True)
class Attachment:
    """A file a system holds about the person (an invoice PDF, a vendor export file).

    `open` returns an iterator of byte chunks, so a large file streams into the bundle.
    """

    name: str  # a relative file name, unique within the record's entity
    content_type: str
    open: Callable[[], Iterator[bytes]]


@dataclass
class Record:
    """One exported record; `fields` must be JSON-serialisable."""

    entity: str
    record_id: str
    fields: Mapping[str, Any]
    attachments: list[Attachment] = field(default_factory=list)


@dataclass
class Receipt:
    """What an erase/restrict/lift changed in one system: the proof a DPO keeps."""

    system: str
    action: str
    changed: dict[str, int] = field(default_factory=dict)  # entity -> records changed
    details: list[str] = field(default_factory=list)  # human-readable lines, no personal data
    vendor_refs: list[str] = field(default_factory=list)  # vendor job ids, deletion references
    manual_steps: list[str] = field(default_factory=list)  # what a person must still do by hand
    held: list[dict[str, Any]] = field(default_factory=list)  # kept under a legal hold, with until
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)  # entity -> why -> records left alone
    # `details` and `manual_steps` as Notes, for the bundle page in the person's language (see `note`)
    notes: list[Note] = field(default_factory=list)
    manual_notes: list[Note] = field(default_factory=list)

    def note(self, msgid: str, **params: Any) -> None:
        """A line of `details`: its English text, and the Note the bundle page translates."""
        text = Note(msgid, params)
        self.details.append(text.render())
        self.notes.append(text)

    def manual(self, msgid: str, **params: Any) -> None:
        """A manual step: its English text in `manual_steps`, and its Note."""
        text = Note(msgid, params)
        self.manual_steps.append(text.render())
        self.manual_notes.append(text)

    def to_dict(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "action": self.action,
            "changed": self.changed,
            "details": self.details,
            "vendor_refs": self.vendor_refs,
            "manual_steps": self.manual_steps,
            "held": self.held,
            "skipped": self.skipped,
            "notes": [n.to_dict() for n in self.notes],
            "manual_notes": [n.to_dict() for n in self.manual_notes],
        }


@dataclass
class Health:
    system: str
    ok: bool
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Hold:
    """Records kept for a legal reason for `years` after the date in `from_field`."""

    years: int
    from_field: str
    reason: str
    # the reason per language when the data map gives one ({"en": ..., "nb": ...}), for the bundle page
    reasons: Mapping[str, str] | None = field(default=None, compare=False)


RESTRICT = Note(N_("restrict"))


@dataclass(frozen=True)
class EntityPolicy:
    """What the planner needs to know about one entity of a system, for any kind of system."""

    erase: str = "erase"  # a short description of how erasure is done (delete, mask fields ...)
    restrict: str | None = "restrict"  # None: no restriction is possible or mapped
    hold: Hold | None = None
    categories: tuple[str, ...] = ()
    provided_by_subject: bool = True  # Art. 20: part of a portability export
    # `erase` and `restrict` as Notes, so the bundle page shows the plan's reasons in the person's language
    erase_note: Note | None = field(default=None, compare=False)
    restrict_note: Note | None = field(default=None, compare=False)

    @classmethod
    def of(cls, erase: Note, restrict: Note | None = RESTRICT, **rest: Any) -> EntityPolicy:
        """A policy whose descriptions are Notes: their English text in `erase`/`restrict`, the Notes beside."""
        return cls(erase=erase.render(), restrict=restrict.render() if restrict else None, erase_note=erase,
                   restrict_note=restrict, **rest)


class ConnectorError(Exception):
    """A failure that names the system and the call, with no personal data or secrets in it."""

    transient = False

    def __init__(self, system: str, message: str, note: Note | None = None) -> None:
        super().__init__(f"{system}: {message}")
        self.system = system
        self.message = message
        # the same text as a Note, where a person may read it (the bundle page shows a task's failure)
        self.note = note

    @classmethod
    def of(cls, system: str, text: Note) -> Self:
        """The error with its English text from `text` and the Note beside it."""
        return cls(system, text.render(), note=text)


class TransientError(ConnectorError):
    """Worth retrying: a timeout, a 5xx, a 429, a database that is briefly down.

    `retry_after`: seconds the system asked us to wait (a vendor's rate limit resets then); the engine parks the
    task until then instead of spending its attempts. None: retry with the usual backoff."""

    transient = True

    def __init__(self, system: str, message: str, note: Note | None = None, retry_after: float | None = None) -> None:
        super().__init__(system, message, note)
        self.retry_after = retry_after


class PermanentError(ConnectorError):
    """Retrying will not help: bad credentials, a 4xx, a data-map mismatch."""


class UnsupportedAction(PermanentError):
    """The system has no way to do this (e.g. Matomo has no per-person restriction)."""


class Connector(abc.ABC):
    """One backend system. `scope` limits erase/restrict to a subset (e.g. rows past a hold)."""

    name: str
    entities: tuple[str, ...] = ()
    # A task of this system is quick and local (a query on our own database: no vendor rate limit, no long call):
    # the worker that plans it runs it at once instead of handing it on through the broker.
    runs_inline: bool = False

    @abc.abstractmethod
    def locate(self, identities: Identities) -> Hits: ...

    @abc.abstractmethod
    def export(self, identities: Identities, entities: Iterable[str] | None = None) -> Iterator[Record]: ...

    @abc.abstractmethod
    def erase(self, identities: Identities, entities: Iterable[str] | None = None) -> Receipt: ...

    @abc.abstractmethod
    def restrict(self, identities: Identities, entities: Iterable[str] | None = None) -> Receipt: ...

    @abc.abstractmethod
    def lift_restriction(self, identities: Identities, entities: Iterable[str] | None = None) -> Receipt: ...

    @abc.abstractmethod
    def check(self) -> Health: ...

    def policies(self) -> dict[str, EntityPolicy]:
        """Per-entity policy for the planner; vendor systems use the defaults."""
        return {entity: EntityPolicy() for entity in self.entities}

    def accepts(self) -> set[IdentityType]:
        """Identifier types this system can search by; discovery re-asks it when one is learned."""
        return {IdentityType.EMAIL}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the default has nothing to release."""

    # -- retention (optional; docs/retention.md) ---------------------------------------------------
    # A connector that keeps a promise of the data map by itself declares it here; `dsar retention plan|run|
    # report` and the bundle page read these. The defaults say "this connector declares no retention rule".

    def retention_rules(self) -> list[RetentionRule]:
        """The retention promises this system keeps (connectors.retention.RetentionRule), each with its
        mechanism: `retention run` rules are carried out by `retention_apply`; others name the sweep that keeps
        them, or are a vendor setting to confirm by hand (`confirm_by_hand=True`). Default: none."""
        return []

    def retention_due(self, rule: RetentionRule, now: datetime, keep: Keep) -> Due:
        """Counts only, nothing changed: the records of `rule` past retention at `now` (connectors.retention's
        boundary: due from 00:00 UTC of the day after `from` + period), those `keep` protects (hold, open
        request), those without a date, and the oldest date past retention. Only `retention run` rules."""
        raise UnsupportedAction(self.name, f"no retention rule for {rule.entity}")

    def retention_apply(self, rule: RetentionRule, now: datetime, keep: Keep, batch: int = 1000,
                        cursor: Any = None, checkpoint: Callable[[Any, Receipt], None] | None = None) -> Receipt:
        """Carry out `rule` for the records due at `now`, leaving alone what `keep` protects, at most `batch`
        records per transaction. After each committed batch `checkpoint(cursor, receipt_so_far)` is called with
        a JSON-serialisable cursor; passing it back as `cursor` resumes after it (an interrupted run does
        nothing twice, and a second run finds nothing due). The receipt counts per entity (`changed`) and
        what was left alone (`skipped`: entity -> why -> records), with no personal data."""
        raise UnsupportedAction(self.name, f"no retention rule for {rule.entity}")


@dataclass
class ConnectorContext:
    """What a connector may use from its surroundings, handed in so tests can replace it.

    `env` is where secrets come from (settings name the variable, never hold the value);
    `redis_url` makes rate limits shared across worker processes, under keys prefixed with
    `namespace` (broker.namespace); `secret_key` keys hashes used for masking; `now` is the
    clock (holds and retention are tested with a fake one).
    """

    env: Mapping[str, str]
    redis_url: str | None = None
    namespace: str = "dsar"
    secret_key: bytes = b""
    now: Any = None  # Callable[[], datetime]; None means datetime.now(UTC)

    def secret(self, system: str, setting: str, variable: str | None) -> str:
        """Read a secret from the environment variable a setting names, or fail saying which."""
        if not variable:
            raise PermanentError(system, f"setting '{setting}' must name an environment variable")
        value = self.env.get(variable)
        if not value:
            raise PermanentError(system, f"environment variable {variable} (setting '{setting}') is not set")
        return value

    def clock(self) -> Any:
        from datetime import UTC, datetime

        return self.now() if self.now else datetime.now(UTC)

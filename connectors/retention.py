"""Retention rules: how long a kind of record is kept, from which date, and what happens at the end.

Shared by every connector (SQL entities declare them in the data map; a vendor connector states its own),
by `dsar retention plan|run|report`, the bundle page and the RoPA, so one declaration says the same thing
everywhere.

When a record becomes due (the only definition; docs/retention.md shows it with examples): a record whose
date `from` lies on day D (in UTC: a timestamp with a time zone is converted to UTC, a timestamp without one
is read as UTC, a date is its day) is kept through the whole of day D + period and is due from 00:00 UTC of
the day after. Calendar arithmetic: years and months keep the day of the month, or take the month's last day
when it has none (29 February + 1 year = 28 February; 31 January + 1 month = 28 or 29 February). A record
without the date is never due (nothing shows it is past its period); it is counted as undated.

So a run at any time of day removes the same records, and a daily run never removes one on its last day.
In SQL this is `from < cutoff(today, period)`, where `cutoff` is the first day whose records are not due yet.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from connectors.base import N_, Note, note

Then = Literal["erase", "anonymise", "notice"]
Unless = Literal["hold", "open_request"]
UNITS = {"year": "years", "years": "years", "y": "years", "month": "months", "months": "months", "mo": "months",
         "week": "weeks", "weeks": "weeks", "w": "weeks", "day": "days", "days": "days", "d": "days"}
_PERIOD = re.compile(r"^\s*(\d{1,4})\s*([a-z]+)\s*$")


@dataclass(frozen=True)
class Period:
    """A calendar period: `count` years, months, weeks or days."""

    count: int
    unit: Literal["years", "months", "weeks", "days"]

    @classmethod
    def parse(cls, text: str) -> Period:
        match = _PERIOD.match(str(text).lower())
        if not match or match.group(2) not in UNITS or int(match.group(1)) < 1:
            raise ValueError(f"'{text}' is not a period (e.g. 5 years, 24 months, 30 days)")
        return cls(int(match.group(1)), UNITS[match.group(2)])  # type: ignore[arg-type]

    def add(self, day: date) -> date:
        """`day` plus this period; a day the target month lacks becomes its last day."""
        if self.unit in ("days", "weeks"):
            return day + timedelta(days=self.count * (7 if self.unit == "weeks" else 1))
        months = self.count * (12 if self.unit == "years" else 1)
        index = day.year * 12 + day.month - 1 + months
        year, month = divmod(index, 12)
        return date(year, month + 1, min(day.day, calendar.monthrange(year, month + 1)[1]))

    def cutoff(self, today: date) -> date:
        """The first day D whose records are not due today: D + period >= today (records from earlier days are
        due). Found from a first guess, because adding a period is not always undone by subtracting it
        (28 February 2027 + 1 year is before 29 February 2028)."""
        if self.unit in ("days", "weeks"):
            return today - timedelta(days=self.count * (7 if self.unit == "weeks" else 1))
        months = self.count * (12 if self.unit == "years" else 1)
        index = today.year * 12 + today.month - 1 - months
        year, month = divmod(index, 12)
        guess = date(year, month + 1, min(today.day, calendar.monthrange(year, month + 1)[1]))
        while self.add(guess - timedelta(days=1)) >= today:
            guess -= timedelta(days=1)
        while self.add(guess) < today:
            guess += timedelta(days=1)
        return guess

    def note(self) -> Note:
        return note({"years": N_("{n} years"), "months": N_("{n} months"), "weeks": N_("{n} weeks"),
                     "days": N_("{n} days")}[self.unit], n=self.count)

    def __str__(self) -> str:
        return f"{self.count} {self.unit}"


def today_utc(now: datetime) -> date:
    return (now.astimezone(UTC) if now.tzinfo else now).date()


def is_due(start: date | datetime, period: Period, now: datetime) -> bool:
    """The definition above, for one value (tests and vendor connectors that filter in Python)."""
    day = start.astimezone(UTC).date() if isinstance(start, datetime) and start.tzinfo else (
        start.date() if isinstance(start, datetime) else start)
    return period.add(day) < today_utc(now)


def cutoff_moment(period: Period, now: datetime) -> datetime:
    """00:00 UTC of the cutoff day: a timestamp before it is due."""
    return datetime.combine(period.cutoff(today_utc(now)), time(0), UTC)


class RetentionSpec(BaseModel):
    """A data-map entity's `retention:` key.

        retention: {after: 5 years, from: ordered_at, then: erase, reason: {en: ..., nb: ...}}

    `from` is a date or timestamp column of the entity, or `entity.column` of the entity owning it;
    `fallback` a column read when `from` is empty (never logged in: created_at). `then`: erase (the entity's
    erase strategy, as an erasure request does it), anonymise (mask with `mask`, or the entity's mask),
    notice (hand the person to the inactivity sweep: told first, erased later). `unless` lists what stops
    it for a record: a legal hold that has not ended, an open request of the person (default both).
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    after: str
    from_: str = Field(alias="from")
    fallback: str | None = None
    then: Then = "erase"
    unless: list[Unless] = Field(default_factory=lambda: list[Unless](["hold", "open_request"]))
    reason: str | dict[str, str]
    mask: dict[str, Any] | None = None  # anonymise: column -> null | hash | redact | {fixed: value}

    @field_validator("after")
    @classmethod
    def _period(cls, value: str) -> str:
        Period.parse(value)
        return value

    @field_validator("from_", "fallback")
    @classmethod
    def _column(cls, value: str | None) -> str | None:
        if value is not None and (not value or value.count(".") > 1 or not all(value.split("."))):
            raise ValueError(f"'{value}' must be a column, or 'entity.column' of the owning entity")
        return value

    @field_validator("reason")
    @classmethod
    def _readable(cls, value: str | dict[str, str]) -> str | dict[str, str]:
        if any(len(text.strip()) < 3 for text in ([value] if isinstance(value, str) else value.values())) \
                or (isinstance(value, dict) and not value):
            raise ValueError("give the reason in words (3 characters at least)")
        return value

    @model_validator(mode="after")
    def _shape(self) -> RetentionSpec:
        if len(set(self.unless)) != len(self.unless):
            raise ValueError("unless: each of hold, open_request at most once")
        if self.mask is not None and self.then != "anonymise":
            raise ValueError("'mask' is only allowed with then: anonymise")
        if self.fallback is not None and "." in self.fallback:
            raise ValueError("fallback: a column of the entity itself")
        return self

    @property
    def period(self) -> Period:
        return Period.parse(self.after)

    def parent(self) -> tuple[str, str] | None:
        if "." not in self.from_:
            return None
        entity, column = self.from_.split(".", 1)
        return entity, column


# How a rule is carried out, as the report names it.
MECHANISM_RUN = "retention run"
MECHANISM_INACTIVITY = "sweep-inactive"
MECHANISM_MARKETING = "sweep-marketing"
MECHANISM_HOLD_END = "hold ends"
MECHANISM_CONFIRM = "vendor setting (confirmed by hand)"
MECHANISM_REQUEST = "on request"


@dataclass(frozen=True)
class RetentionRule:
    """One promise of the data map, whatever system holds it.

    `mechanism` says who keeps it: `retention run` (the connector's retention_apply, batched), an existing
    sweep (`sweep-inactive`, `sweep-marketing`, `hold ends`), a vendor's own setting that `dsar check` reads or
    a person confirms (`dsar retention confirm`), or `on request` (kept until the person asks). `text` is
    what the person and the auditor read, in any language (see `render`).
    """

    system: str
    entity: str
    mechanism: str
    text: Note
    period: Period | None = None
    from_field: str | None = None
    then: str = "erase"
    unless: tuple[str, ...] = ("hold", "open_request")
    reason: str | Mapping[str, str] = ""
    # a vendor setting dsar cannot read: the report lists it with the last time a person confirmed it
    confirm_by_hand: bool = False
    spec: RetentionSpec | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        return f"{self.system}.{self.entity}"

    def to_dict(self) -> dict[str, Any]:
        return {"system": self.system, "entity": self.entity, "mechanism": self.mechanism,
                "period": str(self.period) if self.period else None, "from": self.from_field, "then": self.then,
                "unless": list(self.unless), "reason": _english(self.reason), "text": self.text.render(),
                "confirm_by_hand": self.confirm_by_hand}


@dataclass
class Keep:
    """What a retention run must leave alone: records of people with an open request (their identities, as
    the connector searches them), records under a legal hold that has not ended, and records whose processing
    is restricted (Art. 18: kept, not processed; erasing them is processing). Restricted are the rows carrying
    the entity's restriction marker that no running hold explains, and every row of a person whose last
    completed restriction request was not lifted (`restricted`)."""

    identities: Any = None  # connectors.base.Identities of every open request's subject; None: nobody
    holds: bool = True
    requests: bool = True
    restricted: Any = None  # Identities of everyone whose processing is restricted (Art. 18); None: nobody


@dataclass
class Due:
    """A rule's state today, counts only: records past retention that a run would change, kept under a hold,
    for an open request or restricted (Art. 18), without a date, and the age in days of the oldest one past
    retention."""

    due: int = 0
    kept_hold: int = 0
    kept_request: int = 0
    kept_restricted: int = 0
    undated: int = 0
    oldest: datetime | None = None

    def to_dict(self, now: datetime) -> dict[str, Any]:
        return {"due": self.due, "kept_hold": self.kept_hold, "kept_request": self.kept_request,
                "kept_restricted": self.kept_restricted,
                "undated": self.undated, "oldest": self.oldest.isoformat() if self.oldest else None,
                "oldest_age_days": (today_utc(now) - today_utc(self.oldest)).days if self.oldest else None}


# A vendor system's promise (its data-map entry's `retention_rules:`), by who keeps it: dsar's own run (where the
# connector can delete by age through the vendor's API), a vendor setting dsar cannot read (a person confirms it,
# `dsar retention confirm`), or nobody until the person asks (no automatic deletion; reported, never run).
By = Literal["dsar", "vendor_setting", "request"]
BY_MECHANISM: dict[str, str] = {"dsar": MECHANISM_RUN, "vendor_setting": MECHANISM_CONFIRM,
                                "request": MECHANISM_REQUEST}
Words = str | dict[str, str]  # one text, or one per language ({en: ..., nb: ...})


def _words(value: Words | None, what: str) -> Words | None:
    if value is None:
        return None
    texts = [value] if isinstance(value, str) else list(value.values())
    if not texts or any(not isinstance(t, str) or len(t.strip()) < 3 for t in texts):
        raise ValueError(f"give the {what} in words (3 characters at least)")
    return value


class VendorRetentionSpec(BaseModel):
    """One rule of a vendor system, in its settings:

        retention_rules:
          - {entity: visits, after: 5 years, by: dsar, reason: {en: ..., nb: ...}}
          - {entity: conversations, by: request, reason: ...}
          - {entity: contacts, by: vendor_setting, until: {en: you withdraw your consent, ...},
             setting: "where a person checks it", reason: ...}

    `by: dsar` needs `after` and a connector that deletes by age (`retention_apply`); `by: vendor_setting` needs
    `setting` and one of `after` (with `from`) / `until`; `by: request` has neither (kept until the person asks).
    `from` names the date `after` counts from, in words (a `by: dsar` connector has its own default).
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)
    entity: str = Field(min_length=1)
    by: By
    after: str | None = None
    from_: Words | None = Field(None, alias="from")
    until: Words | None = None
    setting: str | None = None
    reason: Words

    @field_validator("after")
    @classmethod
    def _period(cls, value: str | None) -> str | None:
        if value is not None:
            Period.parse(value)
        return value

    @field_validator("reason", "from_", "until", "setting")
    @classmethod
    def _readable(cls, value: Words | None, info: Any) -> Words | None:
        return _words(value, info.field_name.rstrip("_"))

    @model_validator(mode="after")
    def _shape(self) -> VendorRetentionSpec:
        if self.by == "request" and (self.after or self.until or self.setting):
            raise ValueError("by: request takes no after, until or setting (kept until the person asks)")
        if self.by == "dsar" and (not self.after or self.until or self.setting):
            raise ValueError("by: dsar needs after (a period) and takes no until or setting")
        if self.by == "vendor_setting" and (not self.setting or bool(self.after) == bool(self.until)):
            raise ValueError("by: vendor_setting needs setting (where a person checks it) and one of after, until")
        if self.by == "vendor_setting" and self.after and self.from_ is None:
            raise ValueError("by: vendor_setting with after needs from (the date the vendor's setting counts from)")
        return self

    @property
    def period(self) -> Period | None:
        return Period.parse(self.after) if self.after else None


UNTIL_REQUEST_TEXT = N_("{what}: kept until you ask us to delete it ({reason})")
UNTIL_TEXT = N_("{what}: erased when {until} ({reason})")


def vendor_rule(system: str, spec: VendorRetentionSpec, start: Words | Note = "", from_field: str | None = None
                ) -> RetentionRule:
    """A vendor rule as the framework sees it. `start` is the connector's words for the date a period counts
    from (the rule's own `from` wins), `from_field` the vendor's field the connector reads it from."""
    reason = dict(spec.reason) if isinstance(spec.reason, dict) else spec.reason
    if spec.from_ is not None:
        start = dict(spec.from_) if isinstance(spec.from_, dict) else spec.from_
    if spec.by == "request":
        text = note(UNTIL_REQUEST_TEXT, what=spec.entity, reason=reason)
    elif spec.period is not None:
        text = note(THEN_TEXT["erase"], what=spec.entity, period=spec.period.note(), start=start, reason=reason)
    else:
        until = dict(spec.until) if isinstance(spec.until, dict) else spec.until
        text = note(UNTIL_TEXT, what=spec.entity, until=until, reason=reason)
    return RetentionRule(system=system, entity=spec.entity, mechanism=BY_MECHANISM[spec.by], text=text,
                         period=spec.period, from_field=from_field if spec.period else None,
                         then="keep" if spec.by == "request" else "erase",
                         unless=("open_request",) if spec.by == "dsar" else (), reason=reason,
                         confirm_by_hand=spec.by == "vendor_setting")


def marketing_rules(system: str, newsletter_days: float, trial_field: str | None, trial_days: float
                    ) -> list[RetentionRule]:
    """Mautic's two promises, kept by the marketing sweep (discovery.schedule.marketing): the newsletter while
    subscribed, trial data until the trial ends. Stated here so the report and the bundle page say the same."""
    newsletter_days, trial_days = _whole(newsletter_days), _whole(trial_days)
    out = [RetentionRule(system=system, entity="newsletter", mechanism=MECHANISM_MARKETING, from_field="unsubscribed",
                         text=note(N_("{what}: kept while you are subscribed; erased {days} day(s) after you "
                                      "unsubscribe"), what="newsletter", days=newsletter_days),
                         unless=("open_request",))]
    if trial_field:
        out.append(RetentionRule(system=system, entity="trial", mechanism=MECHANISM_MARKETING, from_field=trial_field,
                                 text=note(N_("{what}: erased {days} day(s) after the trial ends ({start})"),
                                           what="trial", days=trial_days, start=trial_field),
                                 unless=("open_request",)))
    return out


def _whole(days: float) -> float | int:
    """3.0 days read as 3 days (the settings accept a number)."""
    return int(days) if float(days).is_integer() else days


def _english(value: str | Mapping[str, str] | None) -> str:
    if isinstance(value, Mapping):
        return str(value.get("en") or next(iter(value.values()), ""))
    return value or ""


THEN_TEXT = {
    "erase": N_("{what}: erased {period} after {start} ({reason})"),
    "anonymise": N_("{what}: anonymised {period} after {start} ({reason})"),
    "notice": N_("{what}: erased {period} after {start}, after a notice ({reason})"),
}


def rule_note(entity: str, spec: RetentionSpec) -> Note:
    """A rule as a sentence the bundle page, the report and the RoPA render in any language."""
    reason = dict(spec.reason) if isinstance(spec.reason, dict) else spec.reason
    start = spec.from_ if spec.fallback is None else note(N_("{column} (or {fallback})"), column=spec.from_,
                                                         fallback=spec.fallback)
    return note(THEN_TEXT[spec.then], what=entity, period=spec.period.note(), start=start, reason=reason)


def render(text: Note, gettext: Callable[[str], str] = lambda m: m, code: str = "en") -> str:
    """A Note in one language: templates through `gettext` (discovery.i18n.languages.language(code).gettext),
    data-map texts given per language ({en: ..., nb: ...}) in `code`, else English."""

    def value(v: Any) -> Any:
        if isinstance(v, Note):
            return render(v, gettext, code)
        if isinstance(v, list | tuple):
            return ", ".join(str(value(x)) for x in v)
        if isinstance(v, Mapping):
            return v.get(code) or v.get("en") or next(iter(v.values()), "")
        return v

    params = {k: value(v) for k, v in text.params.items()}
    try:
        return gettext(text.msgid).format(**params)
    except (KeyError, IndexError, ValueError):  # a translation that does not fit its values
        return text.msgid.format(**params)

"""The data map: which systems hold personal data, why, for how long, and how to reach them.

The YAML file has a `systems` mapping. The keys below (`SYSTEM_KEYS`) describe a system for
the person and the planner; everything else in a system's entry is that connector's own
settings (a SQL system's tables and columns, a vendor's base URL and token variable), which
the connector validates itself.

What the person reads (a system's title, purpose, legal basis ..., the controller's texts) is a plain
string, the same in every language, or one per language code: `purpose: {en: ..., nb: ...}`.

The record of processing (Art. 30(1), `dsar ropa`) adds keys the person's bundle does not show (yet):
the controller's `dpo`, `representative`, `joint_controllers` and `security_measures`, and per system
`data_subjects`, `data_categories`, `recipients` and `transfers`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from connectors.base import Connector, ConnectorContext, ConnectorError
from connectors.registry import KINDS, build
from discovery.i18n.languages import LANGUAGES, Text, missing_texts


def _known_languages(value: Text) -> Text:
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(LANGUAGES))
        if unknown:
            raise ValueError(f"unknown language(s) {', '.join(unknown)} (known: {', '.join(LANGUAGES)})")
    return value


# a text for the person: one string, or {language code: string}
LocalText = Annotated[str | dict[str, str], AfterValidator(_known_languages)]


class DataMapError(Exception):
    """A one-line message naming the file, system and key."""


# pydantic's names for the branches of a union (a text is `str | dict[str, str]`): not keys of the map
_BRANCH = re.compile(r"^(str|int|bool|float|dict\[.*\]|list\[.*\]|function-.*)$")


def _where(loc: tuple[int | str, ...]) -> str:
    """An error's location as the map's keys: `transfers.0.safeguard`, without union branch names."""
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and _BRANCH.match(p)))


class Transfer(BaseModel):
    """A transfer of the system's data to a third country (outside the EU/EEA) and its safeguard (Art. 30(1)(e))."""

    model_config = ConfigDict(extra="forbid")
    country: LocalText
    safeguard: LocalText  # e.g. "SCCs (Art. 46(2)(c))", "adequacy decision (Art. 45)"
    recipient: LocalText = ""  # who receives it, when not obvious from the system's processors
    documentation: LocalText = ""  # where the safeguard is documented (required for Art. 49(1) second subparagraph)


class SystemInfo(BaseModel):
    """What index.html and the access answer tell a person about a system (Art. 15(1)), and what the record of
    processing adds (Art. 30(1)): excluded from model_dump, which the bundle renders as flat texts."""

    model_config = ConfigDict(extra="ignore")
    kind: str
    enabled: bool = True
    title: LocalText = ""
    purpose: LocalText = ""
    legal_basis: LocalText = ""
    retention: LocalText = ""
    processors: list[LocalText] = Field(default_factory=list)
    location: LocalText = ""
    source: LocalText = ""
    holds: LocalText = ""  # what the system holds about a person, in the privacy policy's words
    # Art. 30(1)(c)-(e); an empty list is "none" (a system without any transfer lists none)
    data_subjects: list[LocalText] = Field(default_factory=list, exclude=True)
    # categories of personal data; a SQL system's entities add their `fields` categories
    data_categories: list[LocalText] = Field(default_factory=list, exclude=True)
    recipients: list[LocalText] = Field(default_factory=list, exclude=True)  # besides the processors
    transfers: list[Transfer] = Field(default_factory=list, exclude=True)


# What the record of processing needs of every system; `dsar check` warns about each one missing (`record_gaps`).
RECORD_KEYS = ("purpose", "legal_basis", "data_subjects", "retention", "location")

SYSTEM_KEYS = set(SystemInfo.model_fields) - {"kind"}


class Party(BaseModel):
    """A data protection officer, representative (Art. 27) or joint controller (Art. 26): name and contact details."""

    model_config = ConfigDict(extra="forbid")
    name: LocalText
    contact: str  # e-mail address (or telephone)
    address: LocalText = ""


class Controller(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: LocalText
    contact: str  # an e-mail address: also the sender of notices
    # where a person complains (Art. 77): the same authority, address and site in every language
    supervisory_authority: LocalText = Field(default_factory=lambda: {
        "en": "Datatilsynet (the Norwegian Data Protection Authority)", "nb": "Datatilsynet"})
    supervisory_authority_address: LocalText = "Postboks 458 Sentrum, 0105 Oslo"
    supervisory_authority_url: str = "https://www.datatilsynet.no/"
    privacy_policy_url: LocalText = ""
    # Art. 30(1)(a) and (g), for the record of processing only
    dpo: Party | None = Field(default=None, exclude=True)
    representative: Party | None = Field(default=None, exclude=True)
    joint_controllers: list[Party] = Field(default_factory=list, exclude=True)
    security_measures: list[LocalText] = Field(default_factory=list, exclude=True)


CONTROLLER_TEXTS = ("name", "supervisory_authority", "supervisory_authority_address", "privacy_policy_url")


def _texts(value: Any) -> list[Any]:
    """Every text inside a value: itself, a list's items, a model's (Transfer, Party) fields."""
    if isinstance(value, list):
        return [t for item in value for t in _texts(item)]
    if isinstance(value, BaseModel):
        return [t for key in type(value).model_fields for t in _texts(getattr(value, key))]
    return [value]


def untranslated(data_map: DataMap, code: str) -> list[str]:
    """The data map's texts given per language but not in `code` (`dsar check` warns about them)."""
    found = [f"controller.{key}" for key in CONTROLLER_TEXTS
             if missing_texts(getattr(data_map.controller, key), code)]
    found += [f"controller.{key}" for key in ("dpo", "representative", "joint_controllers", "security_measures")
              if any(missing_texts(t, code) for t in _texts(getattr(data_map.controller, key)))]
    for name, system in data_map.systems.items():
        for key in sorted(SYSTEM_KEYS - {"enabled"}):
            if any(missing_texts(t, code) for t in _texts(getattr(system.info, key))):
                found.append(f"systems.{name}.{key}")
    return found


def record_gaps(data_map: DataMap) -> list[str]:
    """What the record of processing (Art. 30(1)) lacks, one line each (`dsar check` warns; `dsar ropa` still runs)."""
    found = [] if data_map.controller.dpo else ["controller.dpo: not given (Art. 30(1)(a): the data protection "
                                                 "officer's contact details, where one is designated)"]
    if not data_map.controller.security_measures:
        found.append("controller.security_measures: not given (Art. 30(1)(g): a general description of the "
                     "technical and organisational security measures)")
    for name, system in data_map.systems.items():
        missing = [key for key in RECORD_KEYS if not getattr(system.info, key)]
        if not (system.info.data_categories or system.info.holds or system.info.kind == "sql"):
            missing.append("data_categories")  # a SQL system's categories are its entities' fields
        found += [f"systems.{name}.{key}: not given (the record of processing, Art. 30(1), lists it)"
                  for key in missing]
    return found


class DataMapFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = 1
    controller: Controller
    systems: dict[str, dict[str, Any]] = Field(min_length=1)


@dataclass
class System:
    name: str
    info: SystemInfo
    settings: dict[str, Any]


@dataclass
class DataMap:
    path: Path
    controller: Controller
    systems: dict[str, System] = field(default_factory=dict)

    def enabled(self) -> list[System]:
        return [s for s in self.systems.values() if s.info.enabled]

    def connectors(self, ctx: ConnectorContext) -> dict[str, Connector]:
        """Build every enabled system's connector from its settings (validated, secrets read; nothing is
        connected to). A bad entry is one line naming the file, the system and the key."""
        out: dict[str, Connector] = {}
        for system in self.enabled():
            try:
                out[system.name] = build(system.name, system.info.kind, system.settings, ctx)
            except ConnectorError as exc:
                for c in out.values():
                    c.close()
                why = exc.message.removeprefix("data map: ")
                raise DataMapError(f"data map {self.path}: systems.{system.name}: {why}") from None
        return out


def load_data_map(path: Path) -> DataMap:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataMapError(f"data map not found: {path}") from None
    except yaml.YAMLError as exc:
        raise DataMapError(f"data map {path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    try:
        parsed = DataMapFile.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise DataMapError(f"data map {path}: {_where(err['loc'])}: {err['msg']}") from None
    dm = DataMap(path=path, controller=parsed.controller)
    for name, entry in parsed.systems.items():
        if not isinstance(entry, dict):
            raise DataMapError(f"data map {path}: systems.{name}: must be a mapping")
        try:
            info = SystemInfo.model_validate(entry)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise DataMapError(f"data map {path}: systems.{name}.{_where(err['loc'])}: {err['msg']}") from None
        if info.kind not in KINDS:
            raise DataMapError(
                f"data map {path}: systems.{name}.kind: unknown kind '{info.kind}' (known: {', '.join(sorted(KINDS))})"
            )
        settings = {k: v for k, v in entry.items() if k not in SYSTEM_KEYS}
        dm.systems[name] = System(name=name, info=info, settings=settings)
    return dm

"""The data map: which systems hold personal data, why, for how long, and how to reach them.

The YAML file has a `systems` mapping. The keys below (`SYSTEM_KEYS`) describe a system for
the person and the planner; everything else in a system's entry is that connector's own
settings (a SQL system's tables and columns, a vendor's base URL and token variable), which
the connector validates itself.

What the person reads (a system's title, purpose, legal basis ..., the controller's texts) is a plain
string, the same in every language, or one per language code: `purpose: {en: ..., nb: ...}`.
"""

from __future__ import annotations

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


class SystemInfo(BaseModel):
    """What index.html and the access answer tell a person about a system (Art. 15(1))."""

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


SYSTEM_KEYS = set(SystemInfo.model_fields) - {"kind"}


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


CONTROLLER_TEXTS = ("name", "supervisory_authority", "supervisory_authority_address", "privacy_policy_url")


def untranslated(data_map: DataMap, code: str) -> list[str]:
    """The data map's texts given per language but not in `code` (`dsar check` warns about them)."""
    found = [f"controller.{key}" for key in CONTROLLER_TEXTS
             if missing_texts(getattr(data_map.controller, key), code)]
    for name, system in data_map.systems.items():
        for key in sorted(SYSTEM_KEYS - {"enabled"}):
            value = getattr(system.info, key)
            items = value if isinstance(value, list) else [value]
            found += [f"systems.{name}.{key}" for item in items if missing_texts(item, code)][:1]
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
        """Build every enabled system's connector; a bad entry is named in the error."""
        out: dict[str, Connector] = {}
        for system in self.enabled():
            try:
                out[system.name] = build(system.name, system.info.kind, system.settings, ctx)
            except ConnectorError as exc:
                for c in out.values():
                    c.close()
                raise DataMapError(f"data map {self.path}: system {exc}") from None
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
        where = ".".join(str(p) for p in err["loc"])
        raise DataMapError(f"data map {path}: {where}: {err['msg']}") from None
    dm = DataMap(path=path, controller=parsed.controller)
    for name, entry in parsed.systems.items():
        if not isinstance(entry, dict):
            raise DataMapError(f"data map {path}: systems.{name}: must be a mapping")
        try:
            info = SystemInfo.model_validate(entry)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise DataMapError(f"data map {path}: systems.{name}.{err['loc'][0]}: {err['msg']}") from None
        if info.kind not in KINDS:
            raise DataMapError(
                f"data map {path}: systems.{name}.kind: unknown kind '{info.kind}' (known: {', '.join(sorted(KINDS))})"
            )
        settings = {k: v for k, v in entry.items() if k not in SYSTEM_KEYS}
        dm.systems[name] = System(name=name, info=info, settings=settings)
    return dm

"""The data map: which systems hold personal data, why, for how long, and how to reach them.

The YAML file has a `systems` mapping. The keys below (`SYSTEM_KEYS`) describe a system for
the person and the planner; everything else in a system's entry is that connector's own
settings (a SQL system's tables and columns, a vendor's base URL and token variable), which
the connector validates itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from connectors.base import Connector, ConnectorContext, ConnectorError
from connectors.registry import KINDS, build


class DataMapError(Exception):
    """A one-line message naming the file, system and key."""


class SystemInfo(BaseModel):
    """What index.html and the access answer tell a person about a system (Art. 15(1))."""

    model_config = ConfigDict(extra="ignore")
    kind: str
    enabled: bool = True
    title: str = ""
    purpose: str = ""
    legal_basis: str = ""
    retention: str = ""
    processors: list[str] = Field(default_factory=list)
    location: str = ""
    source: str = ""
    holds: str = ""  # what the system holds about a person, in the privacy policy's words


SYSTEM_KEYS = set(SystemInfo.model_fields) - {"kind"}


class Controller(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    contact: str
    supervisory_authority: str = "Datatilsynet (the Norwegian Data Protection Authority)"
    supervisory_authority_url: str = "https://www.datatilsynet.no/"
    privacy_policy_url: str = ""


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

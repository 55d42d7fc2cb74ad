"""The custom fields, properties and dimensions a vendor account holds, and which the data map does not describe.

Each vendor connector that can list them has a read-only `custom_fields()` (Mautic contact fields, Matomo custom
dimensions, FreshChat user property names; SALESmanago has no known listing call and says so). Each field is
classified by its name and label (values are never fetched); a field counts as covered when the system's `holds`
text in the data map names it (alias or label, any language).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from connectors.base import Connector, ConnectorError
from discovery.engine.datamap import System
from discovery.mapping import names as n
from discovery.mapping.classify import THRESHOLD, classify


@dataclass
class VendorField:
    name: str
    label: str
    type: str
    category: str
    confidence: float
    personal: bool
    covered: bool
    evidence: list[str]


@dataclass
class VendorScan:
    system: str
    kind: str
    fields: list[VendorField] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def uncovered(self) -> list[VendorField]:
        return [f for f in self.fields if f.personal and not f.covered]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _holds_text(system: System) -> str:
    holds = system.info.holds
    return " ".join(holds.values() if isinstance(holds, dict) else [holds]).lower()


def scan_vendor(system: System, connector: Connector, threshold: float = THRESHOLD) -> VendorScan:
    result = VendorScan(system.name, system.info.kind)
    lister = getattr(connector, "custom_fields", None)
    if lister is None:
        result.problems.append(f"kind {system.info.kind}: no way to list its fields")
        return result
    try:
        listed = lister()
    except ConnectorError as exc:
        result.problems.append(exc.message)
        return result
    holds = _holds_text(system)
    for item in listed:
        name, label = str(item.get("name") or ""), str(item.get("label") or "")
        by_name = classify(name, "", "text")
        by_label = classify(label, "", "text") if label and label != name else by_name
        best = max((by_name, by_label), key=lambda c: (c.category != n.NONE, c.confidence))
        covered = any(w and w.lower() in holds for w in (name, label, name.replace("_", " ")))
        result.fields.append(VendorField(name, label, str(item.get("type") or ""), best.category, best.confidence,
                                         best.personal(threshold), covered, best.evidence))
    return result

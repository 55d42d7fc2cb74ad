"""`dsar verify`: check a bundle against its manifest, so the person (or we) can show nothing changed.

Every member but manifest.json must be listed with its SHA-256 and size, every listed file must be
there, each system's entries must agree with the file index, and no member may have an unsafe path.
Members are read as streams, so a bundle of any size is checked in constant memory.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

CHUNK = 1024 * 1024


@dataclass
class Verification:
    ok: bool
    problems: list[str] = field(default_factory=list)
    checked: int = 0
    request_id: str | None = None
    format: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": self.problems, "checked": self.checked, "request_id": self.request_id,
                "format": self.format}


def verify_bundle(source: str | Path | BinaryIO) -> Verification:
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as exc:
        return Verification(False, [f"not a readable ZIP file ({type(exc).__name__})"])
    with zf:
        return _verify(zf)


def _verify(zf: zipfile.ZipFile) -> Verification:
    problems: list[str] = []
    members = [i for i in zf.infolist() if not i.is_dir()]
    names = [i.filename for i in members]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"{name}: appears more than once in the ZIP")
    for name in names:
        if name.startswith("/") or "\\" in name or ".." in name.split("/"):
            problems.append(f"{name}: unsafe path")
    if "manifest.json" not in names:
        return Verification(False, [*problems, "manifest.json is missing"])
    try:
        manifest = orjson.loads(zf.read("manifest.json"))
        listed = _listed(manifest)
    except (orjson.JSONDecodeError, zipfile.BadZipFile, TypeError, KeyError, AttributeError) as exc:
        return Verification(False, [*problems, f"manifest.json is not a valid manifest ({type(exc).__name__})"])
    result = Verification(False, problems, request_id=(manifest.get("request") or {}).get("id"),
                          format=manifest.get("format"))
    for name, entry in listed.items():
        problems.extend(f"{name}: {p}" for p in entry.pop("conflicts", []))
    for info in members:
        if info.filename == "manifest.json":
            continue
        expected = listed.get(info.filename)
        if expected is None:
            problems.append(f"{info.filename}: in the ZIP but not in the manifest")
            continue
        try:
            sha, size = _digest(zf, info)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            problems.append(f"{info.filename}: damaged ({exc})")
            continue
        result.checked += 1
        if size != expected["size"]:
            problems.append(f"{info.filename}: size {size} bytes, the manifest says {expected['size']}")
        if sha != expected["sha256"]:
            problems.append(f"{info.filename}: SHA-256 does not match the manifest")
    for name in sorted(set(listed) - set(names)):
        problems.append(f"{name}: listed in the manifest but missing from the ZIP")
    result.ok = not problems
    return result


def _digest(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[str, int]:
    sha = hashlib.sha256()
    size = 0
    with zf.open(info) as fh:  # reading to the end also checks the ZIP's CRC-32
        while chunk := fh.read(CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


def _listed(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """path -> {sha256, size}: the file index (format 2), and every file the systems name (both formats)."""
    listed: dict[str, dict[str, Any]] = {}

    def add(path: Any, sha: Any, size: Any) -> None:
        if not isinstance(path, str):
            return
        entry = listed.setdefault(path, {"sha256": sha, "size": size})
        if (entry["sha256"], entry["size"]) != (sha, size):
            entry.setdefault("conflicts", []).append("the system entry and the file index disagree")

    for path, meta in (manifest.get("files") or {}).items():
        add(path, meta.get("sha256"), meta.get("size"))
    for entry in (manifest.get("systems") or {}).values():
        for item in _system_files(entry):
            add(item.get("file"), item.get("sha256"), item.get("size"))
    return listed


def _system_files(entry: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for e in (entry.get("entities") or {}).values():
        if e.get("file"):
            yield e
        if e.get("csv"):
            yield e["csv"]
    yield from entry.get("files") or []
    yield from entry.get("receipts") or []

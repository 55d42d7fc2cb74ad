"""`dsar verify`: check a bundle against its manifest, so the person (or we) can show nothing changed.

Every member but manifest.json must be listed with its SHA-256 and size, every listed file must be
there, each system's entries must agree with the file index, and no member may have an unsafe path.
With the signing key the manifest's signature is checked too (discovery/bundle/signing.py): that is what
catches a bundle whose data and manifest were both changed. A damaged ZIP (bad central directory, corrupt
deflate stream, wrong CRC) is a problem in the result, never an exception.
Members are read as streams, so a bundle of any size is checked in constant memory.
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from discovery.bundle import signing

CHUNK = 1024 * 1024


@dataclass
class Verification:
    ok: bool
    problems: list[str] = field(default_factory=list)
    checked: int = 0
    request_id: str | None = None
    format: str | None = None
    signature: str = "not checked"  # valid | invalid | unsigned | not checked (no key)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": self.problems, "checked": self.checked, "request_id": self.request_id,
                "format": self.format, "signature": self.signature}


# What a damaged archive raises while being read: zipfile's own errors, the decompressor's, truncation,
# an unsupported method or an encrypted member (NotImplementedError, RuntimeError), absurd header values.
DAMAGE = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, OSError, EOFError, NotImplementedError,
          RuntimeError, ValueError, OverflowError)


def verify_bundle(source: str | Path | BinaryIO, key: bytes | None = None) -> Verification:
    """Check a bundle; `key`: the manifest signing key (None or b"": the signature is not checked)."""
    try:
        zf = zipfile.ZipFile(source)
    except DAMAGE as exc:
        return Verification(False, [f"not a readable ZIP file ({type(exc).__name__})"])
    with zf:
        try:
            return _verify(zf, key)
        except DAMAGE as exc:  # anything the per-member checks did not expect: still one line, no traceback
            return Verification(False, [f"damaged ZIP file ({type(exc).__name__}: {str(exc)[:200]})"])


def _verify(zf: zipfile.ZipFile, key: bytes | None = None) -> Verification:
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
        raw = zf.read("manifest.json")
    except DAMAGE as exc:
        return Verification(False, [*problems, f"manifest.json: damaged ({type(exc).__name__})"])
    try:
        manifest = orjson.loads(raw)
        listed = _listed(manifest)
    except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError) as exc:
        return Verification(False, [*problems, f"manifest.json is not a valid manifest ({type(exc).__name__})"])
    result = Verification(False, problems, request_id=(manifest.get("request") or {}).get("id"),
                          format=manifest.get("format"))
    result.signature, problem = signing.check(manifest, key)
    if problem:
        problems.append(problem)
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
        except DAMAGE as exc:  # a corrupt deflate stream raises zlib.error, a wrong CRC BadZipFile
            problems.append(f"{info.filename}: damaged ({type(exc).__name__}: {str(exc)[:200]})")
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

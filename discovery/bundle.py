"""The bundle: one ZIP per request, written as a stream (constant memory, Zip64).

Layout:
  manifest.json                 request, subject identifiers and their sources, per system and
                                entity the status, record counts, files with SHA-256 and size,
                                and anything failed, skipped or awaiting a manual step, with why
  data/<system>/<entity>.json   the records, a JSON array
  files/<system>/<entity>/...   files a system holds (invoices, vendor export files)
  receipts/<system>.json        for erasure and restriction: what was done, vendor references

The ZIP is written to a temporary name and renamed into place, so a reader never sees half a bundle.
"""

from __future__ import annotations

import hashlib
import os
import uuid
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from discovery.staging import Staging, safe_name

CHUNK = 1024 * 1024


@dataclass
class SystemPart:
    """One system's contribution: staged exports, a receipt, or just a status with its reason."""

    system: str
    status: str  # done | failed | unsupported | awaiting_manual | skipped
    action: str | None = None
    staged: dict[str, Any] | None = None  # Staging.write() result
    receipt: dict[str, Any] | None = None
    reason: str | None = None


@dataclass
class BuiltBundle:
    path: Path
    manifest: dict[str, Any]
    size: int = 0
    sha256: str = ""
    counts: dict[str, int] = field(default_factory=dict)


class _HashingWriter:
    def __init__(self, target: IO[bytes]) -> None:
        self.target = target
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.target.write(data)
        self.sha.update(data)
        self.size += len(data)


def build_bundle(out_path: Path, header: dict[str, Any], parts: Iterable[SystemPart], staging: Staging,
                 progress: Any = None) -> BuiltBundle:
    """Write the bundle for one request; `progress(system, entity, records)` is called as entities finish."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{uuid.uuid4().hex[:8]}.tmp")
    request_id = header["request"]["id"]
    systems: dict[str, Any] = {}
    totals: dict[str, int] = {}
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
            for part in parts:
                entry: dict[str, Any] = systems.setdefault(part.system, {"status": part.status, "entities": {},
                                                                         "files": [], "receipts": []})
                if part.status != "done" or entry["status"] != "done":
                    entry["status"] = part.status if entry["status"] == "done" else entry["status"]
                if part.reason:
                    entry.setdefault("reasons", []).append(part.reason)
                if part.staged:
                    _write_staged(zf, part, staging, request_id, entry, totals, progress)
                if part.receipt:
                    name = f"receipts/{safe_name(part.system)}-{safe_name(part.action or 'receipt')}.json"
                    body = orjson.dumps(part.receipt, option=orjson.OPT_INDENT_2)
                    zf.writestr(name, body)
                    entry["receipts"].append({"action": part.action, "file": name, "sha256": _sha(body),
                                              "size": len(body)})
            manifest = {**header, "systems": systems, "totals": {"records": sum(totals.values()), **totals}}
            zf.writestr("manifest.json", orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        with tmp.open("rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        size = tmp.stat().st_size
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return BuiltBundle(path=out_path, manifest=manifest, size=size, sha256=digest, counts=totals)


def _write_staged(zf: zipfile.ZipFile, part: SystemPart, staging: Staging, request_id: str,
                  entry: dict[str, Any], totals: dict[str, int], progress: Any) -> None:
    assert part.staged is not None
    system = safe_name(part.system)
    for entity, info in sorted(part.staged["entities"].items()):
        name = f"data/{system}/{safe_name(entity)}.json"
        count = 0
        with zf.open(name, "w", force_zip64=True) as raw:
            out = _HashingWriter(raw)
            out.write(b"[")
            for record in staging.read(request_id, part.system, info["file"]):
                out.write(b"\n  " if count == 0 else b",\n  ")
                out.write(orjson.dumps(record["fields"], option=orjson.OPT_NON_STR_KEYS))
                count += 1
            out.write(b"\n]\n" if count else b"]\n")
        entry["entities"][entity] = {"records": count, "file": name, "sha256": out.sha.hexdigest(), "size": out.size}
        totals[f"{part.system}.{entity}"] = count
        if progress:
            progress(part.system, entity, count)
    for f in part.staged.get("files", []):
        name = f"files/{system}/{f['path'].removeprefix('files/')}"
        with staging.path(request_id, part.system, f["path"]).open("rb") as src, \
                zf.open(name, "w", force_zip64=True) as raw:
            out = _HashingWriter(raw)
            while chunk := src.read(CHUNK):
                out.write(chunk)
        entry["files"].append({"file": name, "entity": f["entity"], "record_id": f["record_id"],
                               "content_type": f["content_type"], "sha256": out.sha.hexdigest(), "size": out.size})


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

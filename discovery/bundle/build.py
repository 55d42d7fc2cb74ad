"""The bundle: one ZIP per request, written as a stream into the archive store (constant memory, Zip64).

Layout (format dsar-bundle/2):
  index.html                    a self-contained page for the person: per system what we hold, why,
                                how long, who processes it and where, the source, and their rights
  manifest.json                 request, subject identifiers and their sources, per system and entity
                                the status, record counts, files with SHA-256 and size, anything
                                failed, skipped or awaiting a manual step with why, and `files`: the
                                SHA-256 and size of every other member (what `dsar verify` checks)
  data/<system>/<entity>.json   the records, a JSON array
  data/<system>/<entity>.csv    the same records (up to 500 columns); a nested value (a list, an
                                object) is its JSON text in the cell; cells a
                                spreadsheet would run as a formula are prefixed with '
  files/<system>/<entity>/...   files a system holds (invoices, vendor export files)
  receipts/<system>-<action>.json  for erasure and restriction: what was done, when, vendor references

Records stream from staging into the ZIP and out to the store: the ZIP goes to a non-seekable
writer (entries carry data descriptors), so nothing of the bundle is held whole or written twice.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import os
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any, Protocol

import orjson

from connectors.base import N_
from discovery.bundle import signing
from discovery.bundle.page import render_index
from discovery.bundle.staging import Staging, safe_name
from discovery.i18n.languages import SOURCE

FORMAT = "dsar-bundle/2"
CHUNK = 1024 * 1024
SAMPLES = 5  # records per entity previewed in index.html
MAX_CSV_COLUMNS = 500  # wider than this is not a table anyone reads: JSON only
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
CSV_NOTE = N_("CSV cells that begin with = + - @, a tab or a carriage return start with an added ' so that a "
               "spreadsheet shows them as text instead of running them as a formula; the JSON file has them as they "
               "are")

Progress = Callable[[str, str, int], None]


class Sink(Protocol):
    def write(self, data: bytes) -> int: ...


@dataclass
class SystemPart:
    """One system's contribution: staged exports, a receipt, or just a status with its reason."""

    system: str
    status: str  # done | failed | unsupported | awaiting_manual | skipped
    action: str | None = None
    staged: dict[str, Any] | None = None  # Staging.write() result
    receipt: dict[str, Any] | None = None
    reason: str | None = None
    reason_note: dict[str, Any] | None = None  # the reason as a Note (connectors.base), for the page's language
    finished_at: str | None = None
    confirmations: list[dict[str, Any]] = field(default_factory=list)  # manual steps confirmed by a person


@dataclass
class BundleView:
    """What the person is told, from the data map, in `language`: the controller, each system's description, and for a
    portability request the fields each entity may carry (system -> entity -> fields kept, fields left out)."""

    controller: dict[str, Any] = field(default_factory=dict)
    systems: dict[str, dict[str, Any]] = field(default_factory=dict)
    portable: dict[str, dict[str, tuple[frozenset[str], list[str]]]] = field(default_factory=dict)
    language: str = SOURCE  # what index.html is written in; recorded in the manifest


@dataclass
class BuiltBundle:
    manifest: dict[str, Any]
    size: int = 0
    sha256: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    uri: str = ""


def staged_size(staging: Staging, request_id: str, parts: Iterable[SystemPart]) -> int:
    """Bytes waiting in staging for this bundle: a size hint for the store's upload part size."""
    total = 0
    for part in parts:
        for info in (part.staged or {}).get("entities", {}).values():
            path = staging.path(request_id, part.system, info["file"])
            total += path.stat().st_size if path.exists() else 0
        total += sum(f.get("size", 0) for f in (part.staged or {}).get("files", []))
    return total


class _Hashing:
    """Counts and hashes what passes to the store; has no seek/tell, so zipfile streams (data descriptors)."""

    def __init__(self, target: Sink) -> None:
        self.target = target
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.target.write(data)
        self.sha.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:  # the store's writer commits; zipfile only ends its own stream
        pass


class _Member:
    """One ZIP entry being written: buffered into large writes, hashed and sized as plain content."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0
        self.buf = bytearray()

    def write(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) >= CHUNK:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            self.sha.update(self.buf)
            self.size += len(self.buf)
            self.raw.write(self.buf)
            self.buf = bytearray()


class _ParallelDeflate:
    """Deflate on every core, pigz-style: 1 MiB pieces compressed in threads (zlib releases the GIL), each
    primed with the previous 32 KiB and ended with a sync flush, so the pieces join into one deflate stream.

    Takes the place of zipfile's own compressor object (same compress/flush calls); the ZIP entry and
    its CRC are zipfile's as usual. Output is in order; at most two pieces per thread are in flight.
    """

    PIECE = 1024 * 1024
    WINDOW = 32 * 1024

    def __init__(self, pool: Callable[[], concurrent.futures.ThreadPoolExecutor], threads: int, level: int = 6,
                 ) -> None:
        self.pool, self.level, self.max_pending = pool, level, 2 * threads
        self.pending: collections.deque[concurrent.futures.Future[bytes]] = collections.deque()
        self.buf = bytearray()
        self.primer = b""

    def _deflate(self, data: bytes, primer: bytes, last: bool) -> bytes:
        c = zlib.compressobj(self.level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, *([primer] if primer else []))
        return c.compress(data) + c.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)

    def _submit(self, data: bytes, last: bool) -> None:
        self.pending.append(self.pool().submit(self._deflate, data, self.primer, last))
        self.primer = data[-self.WINDOW:]

    def compress(self, data: bytes) -> bytes:
        self.buf += data
        out = []
        while len(self.buf) >= self.PIECE:
            piece = bytes(self.buf[:self.PIECE])
            del self.buf[:self.PIECE]
            self._submit(piece, last=False)
            while len(self.pending) > self.max_pending:
                out.append(self.pending.popleft().result())
        while self.pending and self.pending[0].done():
            out.append(self.pending.popleft().result())
        return b"".join(out)

    def flush(self) -> bytes:
        if not self.pending:  # a member under one piece (most of them): deflated here, no hand-off to a thread
            data, self.buf = bytes(self.buf), bytearray()
            return self._deflate(data, self.primer, last=True)
        self._submit(bytes(self.buf), last=True)
        self.buf = bytearray()
        out = b"".join(f.result() for f in self.pending)
        self.pending.clear()
        return out


class _Writer:
    def __init__(self, zf: zipfile.ZipFile, when: datetime) -> None:
        self.zf = zf
        self.date_time = when.astimezone(UTC).timetuple()[:6]
        self.files: dict[str, dict[str, Any]] = {}
        self.threads = min(os.cpu_count() or 1, 4)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def pool(self) -> concurrent.futures.ThreadPoolExecutor:
        """Made when a member first grows past one piece: most bundles never need it (a pool per bundle cost more
        than deflating their few kilobytes)."""
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self.threads, thread_name_prefix="deflate")
        return self._pool

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def unique(self, name: str) -> str:
        if name not in self.files:
            return name
        stem, dot, ext = name.rpartition(".")
        base, suffix = (stem, f".{ext}") if dot and "/" not in ext else (name, "")
        n = 2
        while f"{base}-{n}{suffix}" in self.files:
            n += 1
        return f"{base}-{n}{suffix}"

    @contextmanager
    def member(self, name: str) -> Iterator[_Member]:
        info = zipfile.ZipInfo(name, date_time=self.date_time)  # type: ignore[arg-type]
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        with self.zf.open(info, "w", force_zip64=True) as raw:
            if self.threads > 1 and hasattr(raw, "_compressor"):  # zipfile's deflate object, if it still has one
                raw._compressor = _ParallelDeflate(lambda: self.pool, self.threads)
            out = _Member(raw)
            yield out
            out.flush()
        self.files[name] = {"sha256": out.sha.hexdigest(), "size": out.size}

    def bytes(self, name: str, body: bytes) -> dict[str, Any]:
        with self.member(name) as out:
            out.write(body)
        return {"file": name, **self.files[name]}


def build_bundle(out: Sink, header: dict[str, Any], parts: Iterable[SystemPart], staging: Staging,
                 view: BundleView | None = None, progress: Progress | None = None,
                 signing_key: bytes | None = None) -> BuiltBundle:
    """Write the bundle for one request into `out` (a store writer); `progress(system, entity, n)` as entities end.

    The manifest is signed with `signing_key` (None: the key from the environment, see bundle/signing.py).
    """
    view = view or BundleView()
    sink = _Hashing(out)
    request_id = header["request"]["id"]
    generated = datetime.fromisoformat(header["generated_at"]) if header.get("generated_at") else datetime.now(UTC)
    plan_by_system: dict[str, list[dict[str, Any]]] = {}
    for step in header.get("plan", []):
        plan_by_system.setdefault(step["system"], []).append(step)
    systems: dict[str, dict[str, Any]] = {}
    totals: dict[str, int] = {}
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf, \
            _Writer(zf, generated) as w:
        for part in parts:
            entry = systems.setdefault(part.system, _system_entry(part.system, view))
            _merge_status(entry, part)
            if part.staged:
                _write_staged(w, part, staging, request_id, entry, totals, samples, view, progress)
            if part.receipt is not None:
                _write_receipt(w, part, request_id, entry)
        for system, entry in systems.items():
            _entity_statuses(entry, plan_by_system.get(system, []))
        manifest = {**header, "format": FORMAT, "language": view.language, "controller": view.controller,
                    "systems": systems, "totals": {"records": sum(totals.values()), **totals}, "csv_note": CSV_NOTE}
        page = render_index(manifest, samples).encode()
        w.bytes("index.html", page)
        manifest["files"] = dict(sorted(w.files.items()))
        _sign(manifest, signing.key_from_environment() if signing_key is None else signing_key)
        w.bytes("manifest.json", orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    return BuiltBundle(manifest=manifest, size=sink.size, sha256=sink.sha.hexdigest(), counts=totals)


def _sign(manifest: dict[str, Any], key: bytes) -> None:
    if key:  # last: the signature covers everything else in the manifest, the file index included
        manifest[signing.FIELD] = signing.sign(manifest, key)


def _system_entry(system: str, view: BundleView) -> dict[str, Any]:
    return {"status": "done", "about": view.systems.get(system, {}), "actions": [], "entities": {}, "files": [],
            "receipts": []}


def _merge_status(entry: dict[str, Any], part: SystemPart) -> None:
    """A system is `done` only when every part is; otherwise it takes the first other status."""
    if part.status != "done" and entry["status"] == "done":
        entry["status"] = part.status
    if part.reason:
        entry.setdefault("reasons", []).append(part.reason)
        if part.reason_note:
            entry.setdefault("reason_notes", {})[part.reason] = part.reason_note
    if part.action:
        entry["actions"].append({"action": part.action, "status": part.status, "finished_at": part.finished_at,
                                 "reason": part.reason})


def _write_staged(w: _Writer, part: SystemPart, staging: Staging, request_id: str, entry: dict[str, Any],
                  totals: dict[str, int], samples: dict[tuple[str, str], list[dict[str, Any]]], view: BundleView,
                  progress: Progress | None) -> None:
    assert part.staged is not None
    system = safe_name(part.system)
    portable = view.portable.get(part.system, {})
    for entity, info in sorted(part.staged["entities"].items()):
        keep, left_out = portable.get(entity, (None, []))

        def records(entity_file: str = info["file"], keep: frozenset[str] | None = keep) -> Iterator[dict[str, Any]]:
            for record in staging.read(request_id, part.system, entity_file):
                fields = record["fields"]
                yield fields if keep is None else {k: v for k, v in fields.items() if k in keep}

        name = w.unique(f"data/{system}/{safe_name(entity)}.json")
        preview: list[dict[str, Any]] = []
        columns: dict[str, None] = {}
        narrow, count = True, 0
        with w.member(name) as out:
            out.write(b"[")
            for fields in records():
                out.write(b"\n  " if count == 0 else b",\n  ")
                out.write(orjson.dumps(fields, option=orjson.OPT_NON_STR_KEYS))
                count += 1
                if len(preview) < SAMPLES:
                    preview.append(fields)
                if narrow:  # nested values go in as their JSON text: only width makes a table unreadable
                    columns.update(dict.fromkeys(fields))
                    narrow = len(columns) <= MAX_CSV_COLUMNS
            out.write(b"\n]\n" if count else b"]\n")
        item: dict[str, Any] = {"records": count, "file": name, **w.files[name]}
        if narrow and count and columns:
            csv_name = w.unique(f"data/{system}/{safe_name(entity)}.csv")
            with w.member(csv_name) as out:
                write_csv(out, list(columns), records())
            item["csv"] = {"file": csv_name, **w.files[csv_name]}
        else:
            item["csv"] = None
            item["csv_skipped"] = "no records" if not count else f"more than {MAX_CSV_COLUMNS} columns: JSON only"
        if keep is not None:
            item["fields_left_out"] = left_out
        entry["entities"][entity] = item
        samples[(part.system, entity)] = preview
        totals[f"{part.system}.{entity}"] = count
        if progress:
            progress(part.system, entity, count)
    for f in part.staged.get("files", []):
        name = w.unique(f"files/{system}/{f['path'].removeprefix('files/')}")
        with staging.path(request_id, part.system, f["path"]).open("rb") as src, w.member(name) as out:
            while chunk := src.read(CHUNK):
                out.write(chunk)
        entry["files"].append({"file": name, "entity": f["entity"], "record_id": f["record_id"],
                               "content_type": f["content_type"], **w.files[name]})


def _write_receipt(w: _Writer, part: SystemPart, request_id: str, entry: dict[str, Any]) -> None:
    assert part.receipt is not None
    body = {"request_id": request_id, "system": part.system, "action": part.action, "status": part.status,
            "finished_at": part.finished_at, **part.receipt, "confirmations": part.confirmations}
    name = w.unique(f"receipts/{safe_name(part.system)}-{safe_name(part.action or 'receipt')}.json")
    written = w.bytes(name, orjson.dumps(body, option=orjson.OPT_INDENT_2))
    entry["receipts"].append({"action": part.action, "status": part.status, "finished_at": part.finished_at,
                              "changed": part.receipt.get("changed", {}), "held": part.receipt.get("held", []),
                              "vendor_refs": part.receipt.get("vendor_refs", []),
                              "manual_steps": part.receipt.get("manual_steps", []),
                              "details": part.receipt.get("details", []), "confirmations": part.confirmations,
                              "notes": part.receipt.get("notes", []),
                              "manual_notes": part.receipt.get("manual_notes", []),
                              **written})


def _entity_statuses(entry: dict[str, Any], steps: list[dict[str, Any]]) -> None:
    """Per entity: the planned steps with their reasons, and how each went (from the task that carried it)."""
    by_task = {a["action"]: a for a in entry["actions"]}
    changed: dict[str, int] = {}
    held: dict[str, list[dict[str, Any]]] = {}
    for receipt in entry["receipts"]:
        for name, n in (receipt.get("changed") or {}).items():
            changed[name] = changed.get(name, 0) + n
        for h in receipt.get("held") or []:
            held.setdefault(h.get("entity", ""), []).append(h)
    for step in steps:
        if step["entity"] == "*":
            if step.get("note"):  # a reason for the whole system (a refusal, say), for the page in the language
                entry.setdefault("reason_notes", {})[step["reason"]] = step["note"]
            continue
        entity = safe_name(step["entity"])  # staging names entities the same way
        item = entry["entities"].setdefault(entity, {})
        task = by_task.get(step.get("task") or "")
        status = "skipped" if step["action"] == "skip" else (task["status"] if task else entry["status"])
        item.setdefault("steps", []).append({"action": step["action"], "reason": step["reason"], "status": status,
                                             **({"note": step["note"]} if step.get("note") else {})})
        if step["action"] != "export" and entity in changed:
            item["changed"] = changed[entity]
        if entity in held:
            item["held"] = held[entity]
        if step["action"] == "export" and "records" not in item:
            item["records"] = 0  # exported, nothing there
    for item in entry["entities"].values():
        statuses = [s["status"] for s in item.get("steps", [])] or ["done"]
        item["status"] = next((s for s in statuses if s != "done"), "done")


# -- CSV ------------------------------------------------------------------------------------

def neutralise(value: Any) -> str:
    """A CSV cell's text: text that a spreadsheet would run as a formula gets a leading ' (numbers stay numbers)."""
    if type(value) is str:
        return "'" + value if value.startswith(FORMULA_START) else value
    if value is None:
        return ""
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, float) else str(value)
    # a list or object (a SQL array or json column, a chat message's parts): its JSON text, as in the .json file
    text = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode() if isinstance(value, dict | list) \
        else str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def csv_field(text: str) -> str:
    """RFC 4180 quoting, as csv.writer's QUOTE_MINIMAL does, with C-speed scans (long chat texts are the norm)."""
    if '"' in text:
        return '"' + text.replace('"', '""') + '"'
    if "," in text or "\n" in text or "\r" in text:
        return '"' + text + '"'
    return text


def write_csv(out: _Member, columns: list[str], rows: Iterable[Mapping[str, Any]], batch: int = 2000) -> None:
    """UTF-8 with a byte-order mark (so spreadsheets read the encoding), RFC 4180 quoting, CRLF lines."""
    lone = len(columns) == 1  # a row of one empty field must still be a row: ""
    lines = [",".join(csv_field(neutralise(c)) for c in columns)]
    out.write(b"\xef\xbb\xbf")
    for row in rows:
        line = ",".join([csv_field(neutralise(row.get(c))) for c in columns])
        lines.append('""' if lone and not line else line)
        if len(lines) >= batch:
            out.write(("\r\n".join(lines) + "\r\n").encode())
            lines = []
    if lines:
        out.write(("\r\n".join(lines) + "\r\n").encode())

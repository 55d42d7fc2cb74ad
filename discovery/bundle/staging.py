"""Where export tasks put records until the merge: one JSON-lines file per (system, entity).

Records stream from the connector to disk, so an export of any size runs in constant memory.
A task writes into a fresh folder and renames it into place when complete, so a task that
dies half-way leaves nothing the merge could mistake for a finished export. Staged records are
personal data: folders are created 0700 and files 0600, whatever the umask.
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from connectors.base import Record
from discovery.bundle.archive import private_dir, private_file

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    cleaned = _SAFE.sub("_", text).strip("._") or "_"
    return cleaned[:120]


class Staging:
    def __init__(self, root: Path) -> None:
        self.root = root

    def task_dir(self, request_id: str, system: str) -> Path:
        return self.root / safe_name(request_id) / safe_name(system)

    def write(self, request_id: str, system: str, records: Iterable[Record]) -> dict[str, Any]:
        """Stream records to the staging folder; return {entity: {records, file}} and attachments."""
        final = self.task_dir(request_id, system)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
        private_dir(tmp.parent)
        tmp.mkdir(0o700)
        tmp.chmod(0o700)  # mkdir's mode passes through the umask
        handles: dict[str, Any] = {}
        counts: dict[str, int] = {}
        files: list[dict[str, Any]] = []
        try:
            for record in records:
                entity = safe_name(record.entity)
                if entity not in handles:
                    handles[entity] = private_file(tmp / f"{entity}.jsonl")
                    counts[entity] = 0
                handles[entity].write(orjson.dumps(
                    {"id": record.record_id, "fields": record.fields}, option=orjson.OPT_NON_STR_KEYS
                ) + b"\n")
                counts[entity] += 1
                for attachment in record.attachments:
                    rel = Path("files") / entity / safe_name(attachment.name)
                    private_dir((tmp / rel).parent)
                    size = 0
                    with private_file(tmp / rel) as out:
                        for chunk in attachment.open():
                            out.write(chunk)
                            size += len(chunk)
                    files.append({"entity": entity, "record_id": record.record_id, "path": rel.as_posix(),
                                  "content_type": attachment.content_type, "size": size})
        except BaseException:
            for h in handles.values():
                h.close()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for h in handles.values():
            h.close()
        if final.exists():  # an earlier attempt finished but its ledger update was lost
            shutil.rmtree(final)
        tmp.rename(final)
        return {"entities": {e: {"records": n, "file": f"{e}.jsonl"} for e, n in counts.items()}, "files": files}

    def read(self, request_id: str, system: str, entity_file: str) -> Iterator[dict[str, Any]]:
        with (self.task_dir(request_id, system) / entity_file).open("rb") as fh:
            for line in fh:
                yield orjson.loads(line)

    def path(self, request_id: str, system: str, relative: str) -> Path:
        return self.task_dir(request_id, system) / relative

    def discard(self, request_id: str) -> None:
        shutil.rmtree(self.root / safe_name(request_id), ignore_errors=True)

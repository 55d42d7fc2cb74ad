"""Find the person in every system, learning identifiers round by round until nothing new appears.

Round 0 asks every system with the identifiers the request came with. Each later round asks
only the systems that accept a newly learned identifier type, with everything known so far.
Systems in a round are asked in parallel.

Only the subject's identifiers are learned: every learned identifier must say where it came from
(`Identity.via`: system, table, column and the row's path from a direct match). One without
provenance is refused, counted and never used, so a connector cannot teach an identifier it cannot
account for.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import structlog

from connectors.base import Connector, ConnectorError, Hits, Identities, Identity, IdentityType
from connectors.redact import redact

log = structlog.get_logger(__name__)


@dataclass
class Discovery:
    identities: Identities
    hits: dict[str, Hits] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    rounds: int = 0
    learned_in_round: dict[tuple[IdentityType, str], int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)  # system -> learned identifiers without provenance


def discover(connectors: dict[str, Connector], seed: Identities, max_rounds: int = 5,
             max_workers: int = 8) -> Discovery:
    result = Discovery(identities=Identities(seed))
    asked_with: dict[str, set[Identity]] = {}
    new_types: set[IdentityType] | None = None  # None: first round, ask everyone
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="locate") as pool:
        for round_no in range(max_rounds):
            due = []
            for name, conn in connectors.items():
                accepts = conn.accepts()
                # What a system taught us about itself is no reason to ask it again.
                relevant = {i for i in result.identities if i.type in accepts and i.source != name}
                if not relevant or relevant <= asked_with.get(name, set()):
                    continue
                if new_types is not None and not (accepts & new_types) and name not in result.errors:
                    continue
                due.append(name)
            if not due:
                break
            result.rounds = round_no + 1
            snapshot = Identities(result.identities)
            futures = {name: pool.submit(connectors[name].locate, snapshot) for name in due}
            new_types = set()
            for name, fut in futures.items():
                asked_with[name] = {i for i in snapshot if i.type in connectors[name].accepts() and i.source != name}
                try:
                    hits = fut.result()
                except Exception as exc:  # one system failing (even by an unwrapped driver error) stops no other
                    result.errors[name] = locate_error(exc)
                    log.warning("locate.failed", system=name, error=result.errors[name])
                    continue
                result.errors.pop(name, None)
                result.hits[name] = hits
                for ident in hits.learned:
                    if not ident.via:
                        result.refused[name] = result.refused.get(name, 0) + 1
                        continue
                    if result.identities.add(ident):
                        new_types.add(ident.type)
                        result.learned_in_round[(ident.type, ident.value)] = round_no + 1
            log.info("locate.round", round=round_no + 1, systems=len(due), new_identifier_types=len(new_types))
    for name, n in result.refused.items():
        log.warning("locate.refused", system=name, identifiers=n, why="learned without provenance")
    return result


def locate_error(exc: BaseException) -> str:
    """One scrubbed line saying why a locate failed. A connector should raise a ConnectorError; anything else
    (a driver error it let through, a bug) is named by its type and the first line of its own message only,
    since driver errors carry the statement and its parameters on later lines."""
    if isinstance(exc, ConnectorError):
        return redact(exc.message)[:300]
    cause = getattr(exc, "orig", None) or exc
    first = next((line.strip() for line in str(cause).splitlines() if line.strip()), "")
    return redact(f"{type(cause).__name__}: {first}" if first else type(cause).__name__)[:300]

"""Find the person in every system, learning identifiers round by round until nothing new appears.

Round 0 asks every system with the identifiers the request came with. Each later round asks
only the systems that accept a newly learned identifier type, with everything known so far.
Systems in a round are asked in parallel, each with its own deadline (`worker.locate_timeout`): a system that
hangs fails its own locate ("timed out") and is not asked again in this discovery, while the others go on. Its
call is abandoned, not waited for: each locate runs in a daemon thread, so neither the round nor the process's
exit waits on it (a ThreadPoolExecutor would, on leaving its `with` block and at interpreter exit).

Only the subject's identifiers are learned: every learned identifier must say where it came from
(`Identity.via`: system, table, column and the row's path from a direct match). One without
provenance is refused, counted and never used, so a connector cannot teach an identifier it cannot
account for.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, wait
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
             locate_timeout: float | None = None) -> Discovery:
    """Ask every system, round by round, until nothing new is learned. `locate_timeout`: seconds each system's
    locate may take (None: no deadline); one that passes it is that system's locate error."""
    result = Discovery(identities=Identities(seed))
    asked_with: dict[str, set[Identity]] = {}
    timed_out: set[str] = set()  # asking a hanging system again would only cost another deadline
    new_types: set[IdentityType] | None = None  # None: first round, ask everyone
    for round_no in range(max_rounds):
        due = []
        for name, conn in connectors.items():
            if name in timed_out:
                continue
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
        futures = {name: _in_thread(connectors[name].locate, snapshot, f"locate:{name}") for name in due}
        # Every locate of a round starts now, so one deadline covers them all; the round ends as soon as all
        # answered, or at the deadline with those that did not.
        wait(futures.values(), timeout=locate_timeout)
        new_types = set()
        for name, fut in futures.items():
            asked_with[name] = {i for i in snapshot if i.type in connectors[name].accepts() and i.source != name}
            if not fut.done():
                timed_out.add(name)
                result.errors[name] = f"locate timed out after {locate_timeout:g}s (worker.locate_timeout)"
                log.warning("locate.timed_out", system=name, seconds=locate_timeout)
                continue
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
        # debug: request.planned says how many rounds there were (issue 15: lines per request are a worker's CPU)
        log.debug("locate.round", round=round_no + 1, systems=len(due), new_identifier_types=len(new_types))
    for name, n in result.refused.items():
        log.warning("locate.refused", system=name, identifiers=n, why="learned without provenance")
    return result


def _in_thread(fn: Callable[[Identities], Hits], arg: Identities, name: str) -> Future[Hits]:
    """Run `fn(arg)` in a daemon thread of its own; the future holds its answer. Nobody joins the thread, so a
    call that never returns costs one idle thread and holds up nothing."""
    fut: Future[Hits] = Future()
    fut.set_running_or_notify_cancel()

    def run() -> None:
        try:
            fut.set_result(fn(arg))
        except BaseException as exc:  # handed to the waiting round, which records it as the system's error
            fut.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return fut


def locate_error(exc: BaseException) -> str:
    """One scrubbed line saying why a locate failed. A connector should raise a ConnectorError; anything else
    (a driver error it let through, a bug) is named by its type and the first line of its own message only,
    since driver errors carry the statement and its parameters on later lines."""
    if isinstance(exc, ConnectorError):
        return redact(exc.message)[:300]
    cause = getattr(exc, "orig", None) or exc
    first = next((line.strip() for line in str(cause).splitlines() if line.strip()), "")
    return redact(f"{type(cause).__name__}: {first}" if first else type(cause).__name__)[:300]

"""All five systems together over real sockets: the account database (SQLite) and the four vendor
simulators (sandbox.launch.Sandbox on 127.0.0.1), driven in-process through the pipeline."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from connectors.base import Identities, Identity, IdentityType
from discovery.bundle.archive import local_path
from discovery.engine import pipeline
from discovery.engine.ledger import AuditEvent, Request, Task
from sandbox.launch import Sandbox
from sandbox.matomo import user_id_hash
from sandbox.people import DECOY_EMAIL, JANE, JOHN, OLA
from tests.helpers import sandbox_world

pytestmark = pytest.mark.integration

SYSTEMS = {"accounts", "freshchat", "mautic", "salesmanago", "matomo"}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with sandbox_world(tmp_path) as world:
        assert set(world["rt"].connectors()) == SYSTEMS
        yield world


def run(world: dict[str, Any], request_type: str, email: str = JANE.email) -> Request:
    submitted = pipeline.submit(world["rt"], world["wake"], request_type, email,
                                ticket=f"T-ALL-{request_type}", actor="test")
    world["wake"].drain()
    return load(world, submitted.request.id)


def load(world: dict[str, Any], request_id: str) -> Request:
    with world["rt"].sessions() as s:
        req = s.get(Request, request_id)
        assert req is not None
        req.tasks  # noqa: B018 - load the tasks while the session is open
        return req


def bundle(uri: str) -> tuple[dict[str, Any], str]:
    """The manifest and the text of every member (data, files, receipts) of a bundle."""
    with zipfile.ZipFile(local_path(uri)) as zf:
        manifest = orjson.loads(zf.read("manifest.json"))
        text = "\n".join(zf.read(name).decode("utf-8", "replace") for name in zf.namelist())
    return manifest, text


def member(uri: str, name: str) -> Any:
    with zipfile.ZipFile(local_path(uri)) as zf:
        return orjson.loads(zf.read(name))


def others_markers(sandbox: Sandbox) -> set[str]:
    """Strings that would only appear in a bundle if someone else's data had leaked into it."""
    freshchat = sandbox.sims["freshchat"]
    salesmanago = sandbox.sims["salesmanago"]
    markers = {DECOY_EMAIL, "example.com.au", "Janet", "Doel", "Doe-Smith", "Decoy Person", "+61400000000",
               "+61412345678", "Australian office", user_id_hash(DECOY_EMAIL)}
    for person in (JOHN, OLA):
        markers |= {person.email, person.email.upper(), person.first_name, person.last_name, person.phone,
                    person.matomo_visitor_id, user_id_hash(person.email), f"account/{person.account_id}",
                    f"order {person.account_id}"}
        markers |= set(freshchat.user_ids(person.email))  # type: ignore[attr-defined]
        contact_id = salesmanago.contact_id(person.email)  # type: ignore[attr-defined]
        if contact_id:
            markers.add(contact_id)
    markers |= set(freshchat.user_ids(DECOY_EMAIL))  # type: ignore[attr-defined]
    markers.add("Met at the trade fair")  # John's Mautic note
    markers |= {f"{k + 1:016x}" for k in range(3)}  # Matomo visitors nobody asked about
    return markers


def test_access_bundle_holds_all_five_systems_of_jane_and_nothing_of_anyone_else(world: dict[str, Any]) -> None:
    sandbox: Sandbox = world["sandbox"]
    markers = others_markers(sandbox)
    req = run(world, "access")
    assert req.status == "completed", [(t.system, t.status, t.error) for t in req.tasks]
    manifest, text = bundle(req.bundle_path or "")

    # Every system contributed records.
    assert set(manifest["systems"]) == SYSTEMS
    for system, entry in manifest["systems"].items():
        assert entry["status"] == "done", system
        assert sum(e["records"] for e in entry["entities"].values()) > 0, system
    assert manifest["systems"]["freshchat"]["entities"]["messages"]["records"] == 127
    assert manifest["systems"]["mautic"]["entities"]["contact"]["records"] == 2  # Jane twice in Mautic
    assert JANE.phone in text and "Called about the invoice" in text

    # Nothing of John, Ola, the prefix decoy or anonymous strangers, anywhere in the bundle.
    leaked = sorted(m for m in markers if m in text)
    assert leaked == []

    # Identifiers with their sources: discovery ran rounds and learned from several systems.
    identifiers = {(i["type"], i["value"], i["source"]) for i in manifest["subject"]["identifiers"]}
    freshchat_uid, = sandbox.sims["freshchat"].user_ids(JANE.email)  # type: ignore[attr-defined]
    mautic_ids = {str(i) for i in sandbox.sims["mautic"].contact_ids(JANE.email)}  # type: ignore[attr-defined]
    assert ("email", JANE.email, "request") in identifiers
    assert ("matomo_visitor_id", JANE.matomo_visitor_id, "accounts") in identifiers
    assert ("account_id", JANE.account_id, "accounts") in identifiers
    assert ("freshchat_user_id", freshchat_uid, "freshchat") in identifiers
    assert {v for t, v, s in identifiers if t == "mautic_contact_id" and s == "mautic"} == mautic_ids
    assert {i["round"] for i in manifest["subject"]["identifiers"] if i["source"] != "request"} == {1}

    # Matomo's visits from before login are in the bundle: found through the visitor id the account DB stores.
    visits = member(req.bundle_path or "", "data/matomo/log_visit.json")
    prelogin = [v for v in visits if v["idvisitor"] == JANE.matomo_visitor_id]
    assert len(prelogin) == 2 and all("user_id" not in v for v in prelogin)
    assert len(visits) == 4
    matomo = world["rt"].connector("matomo")
    by_email_only = matomo.locate(Identities([Identity(IdentityType.EMAIL, JANE.email)]))
    assert by_email_only.counts == {"visits": 2}  # without the account DB's visitor id they stay hidden


def test_erasure_leaves_only_what_the_manual_steps_name_and_completes_once_confirmed(
        world: dict[str, Any]) -> None:
    sandbox: Sandbox = world["sandbox"]
    rt, wake = world["rt"], world["wake"]
    others_before = {p: sandbox.holdings(p) for p in (JOHN.email, OLA.email, DECOY_EMAIL)}
    assert all(sandbox.holdings(JANE.email).values())  # Jane is in all four vendors to begin with

    req = run(world, "erasure")
    assert req.status == "awaiting_manual"
    tasks = {t.system: t for t in req.tasks}
    assert set(tasks) == SYSTEMS
    manual = {s: t.result["manual_steps"] for s, t in tasks.items() if t.status == "awaiting_manual"}
    # FreshChat's Forget (no user delete in any FreshChat source), Mautic's NULL-lead residue. Matomo has none:
    # deleteDataSubjects invalidates the archived reports of the visits' dates itself (issue 18, point 8).
    assert set(manual) == {"freshchat", "mautic"}
    assert all(t.status == "done" for s, t in tasks.items() if s not in manual)
    assert any("no manual step is needed" in d for d in tasks["matomo"].result["details"])

    # Nothing of Jane is left in any simulator except what a manual step names.
    left = {system: kinds for system, kinds in sandbox.holdings(JANE.email).items() if kinds}
    assert left == {"freshchat": {"contacts": 1, "conversations": 2, "messages": 127},  # blanked, to be forgotten
                    "mautic": {"email_stats": 3, "page_hits": 3, "form_submissions": 2}}
    for system, kinds in left.items():
        steps = " ".join(manual[system]).lower()
        assert all(kind in steps for kind in kinds), (system, kinds, steps)
    assert {p: sandbox.holdings(p) for p in others_before} == others_before

    # Accounts: orders inside the bookkeeping hold are kept (restricted), and said so.
    held = tasks["accounts"].result["held"]
    assert held[0]["entity"] == "orders" and held[0]["records"] == 2

    # Confirming one manual step is not enough; the last completes the request, audited.
    with pytest.raises(pipeline.InvalidInput):
        pipeline.confirm_manual(rt, wake, req.id, "salesmanago", "nothing to do", actor="test")
    note_freshchat = "Forgot the contact in FreshChat (Contacts > Forget)"
    assert pipeline.confirm_manual(rt, wake, req.id, "freshchat", note_freshchat, actor="dpo") == 1
    wake.drain()
    assert load(world, req.id).status == "awaiting_manual"
    note_mautic = "Deleted the email_stats, page_hits and form_submissions rows of contacts 1, 2 in the Mautic DB"
    assert pipeline.confirm_manual(rt, wake, req.id, "mautic", note_mautic, actor="dpo") == 1
    wake.drain()
    done = load(world, req.id)
    assert done.status == "completed" and done.bundle_path
    with rt.sessions() as s:
        events = list(s.scalars(sa.select(AuditEvent).where(AuditEvent.request_id == req.id,
                                                            AuditEvent.actor == "dpo")))
        statuses = {t.system: t.status for t in s.scalars(sa.select(Task).where(Task.request_id == req.id))}
    assert {(e.event, e.details["system"], e.details["note"]) for e in events} == {
        ("task.done", "freshchat", note_freshchat), ("task.done", "mautic", note_mautic)}
    assert set(statuses.values()) == {"done"}
    manifest, _ = bundle(done.bundle_path)
    assert set(manifest["systems"]) == SYSTEMS
    receipt = member(done.bundle_path, "receipts/mautic-erase.json")
    assert receipt["manual_steps"] == manual["mautic"]


def test_restriction_everywhere_it_can_be_done(world: dict[str, Any]) -> None:
    sandbox: Sandbox = world["sandbox"]
    req = run(world, "restriction")
    assert req.status == "completed"
    tasks = {t.system: t for t in req.tasks}
    assert {s for s, t in tasks.items() if t.status == "done"} == {"accounts", "freshchat", "mautic", "salesmanago"}
    assert sandbox.sims["salesmanago"].flags(JANE.email)["optedOut"]  # type: ignore[attr-defined]
    assert sandbox.holdings(JANE.email)["mautic"]["dnc"] == 2
    assert sandbox.holdings(JANE.email)["matomo"]["visits"] == 4  # untouched: Matomo cannot restrict


def test_restriction_matomo_task_ends_unsupported_with_the_reason_in_the_manifest(world: dict[str, Any]) -> None:
    req = run(world, "restriction")
    matomo = [t for t in req.tasks if t.system == "matomo"]
    assert [t.status for t in matomo] == ["unsupported"]
    assert "no per-person server-side restriction" in (matomo[0].error or "")
    manifest, _ = bundle(req.bundle_path or "")
    entry = manifest["systems"]["matomo"]
    assert entry["status"] == "unsupported"
    assert any("no per-person server-side restriction" in r for r in entry["reasons"])

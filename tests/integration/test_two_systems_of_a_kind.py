"""Two systems of one kind side by side (issue 10 point 8): two Mautic instances, each its own simulator and its
own entry in the data map (keyed by name, `kind: mautic`), both located, exported and erased, named apart in the
bundle even when the data map gives them the same title."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from discovery.bundle.archive import local_path
from discovery.engine import pipeline
from discovery.engine.ledger import Request
from sandbox.launch import Sandbox
from sandbox.mautic import MauticSim
from sandbox.people import JANE, JOHN
from sandbox.server import Served
from tests.helpers import sandbox_world

pytestmark = pytest.mark.integration

SECOND = "mautic_eu"  # the second instance's name in the data map


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    second = MauticSim()
    second.add_contact(JANE.email, JANE.first_name, JANE.last_name)  # Jane once here (twice in the first)
    second.add_contact(JOHN.email, JOHN.first_name, JOHN.last_name)
    servers: list[Served] = []

    def add_second_mautic(sandbox: Sandbox) -> None:
        served = Served(second.app)
        servers.append(served)
        raw = yaml.safe_load(sandbox.datamap_path.read_text(encoding="utf-8"))
        first = raw["systems"]["mautic"]
        # The same kind and the same title as the first: only the data-map name tells them apart.
        raw["systems"][SECOND] = {"kind": "mautic", "enabled": True, "title": first["title"],
                                  "purpose": first.get("purpose", ""), **second.settings(served.url)}
        sandbox.datamap_path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")

    try:
        with sandbox_world(tmp_path, seed=add_second_mautic) as world:
            yield {**world, "second": second}
    finally:
        for served in servers:
            served.stop()


def run(world: dict[str, Any], request_type: str) -> Request:
    submitted = pipeline.submit(world["rt"], world["wake"], request_type, JANE.email,
                                ticket=f"T-TWO-{request_type}", actor="test")
    world["wake"].drain()
    with world["rt"].sessions() as s:
        req = s.get(Request, submitted.request.id)
        assert req is not None
        req.tasks  # noqa: B018 - load the tasks while the session is open
        return req


def test_two_mautic_instances_are_each_located_exported_and_named_apart(world: dict[str, Any]) -> None:
    first: MauticSim = world["sandbox"].sims["mautic"]  # type: ignore[assignment]
    second: MauticSim = world["second"]
    assert {"mautic", SECOND} <= set(world["rt"].connectors())

    req = run(world, "access")

    assert req.status == "completed", [(t.system, t.status, t.error) for t in req.tasks]
    with zipfile.ZipFile(local_path(req.bundle_path or "")) as zf:
        manifest = orjson.loads(zf.read("manifest.json"))
        page = zf.read("index.html").decode()
        names = zf.namelist()
    systems = manifest["systems"]
    assert systems["mautic"]["status"] == systems[SECOND]["status"] == "done"
    assert systems["mautic"]["entities"]["contact"]["records"] == len(first.contact_ids(JANE.email)) == 2
    assert systems[SECOND]["entities"]["contact"]["records"] == len(second.contact_ids(JANE.email)) == 1
    assert any(n.startswith(f"data/{SECOND}/") for n in names) and any(n.startswith("data/mautic/") for n in names)
    # The same title twice: each is followed by its data-map name, in the summary and as its section heading.
    title = "Newsletter, trials and demos (Mautic)"
    for name in ("mautic", SECOND):
        assert page.count(f"{title} ({name})") == 2, name

    erased = run(world, "erasure")

    # Each Mautic leaves its manual residue step (email_stats, page_hits, form results), so the erasure waits on it.
    statuses = {t.system: t.status for t in erased.tasks}
    assert statuses["mautic"] == statuses[SECOND] == "awaiting_manual", statuses
    assert first.contact_ids(JANE.email) == [] and second.contact_ids(JANE.email) == []
    assert second.contact_ids(JOHN.email) and first.contact_ids(JOHN.email)  # nobody else's contact goes

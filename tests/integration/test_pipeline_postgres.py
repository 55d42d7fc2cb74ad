"""The whole pipeline in-process on real PostgreSQL (ledger and account database), without a broker."""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from discovery.bundle.archive import local_path
from discovery.engine import pipeline
from discovery.engine.ledger import Request, Task
from discovery.engine.runtime import Runtime
from discovery.engine.settings import load_settings
from sandbox.people import JANE, JOHN
from tests.conftest import SECRET, seed_accounts, write_config
from tests.helpers import SyncWakeups, rows

pytestmark = pytest.mark.integration


@pytest.fixture
def env(tmp_path: Path, pg_database: Callable[[], str]) -> Iterator[dict[str, Any]]:
    ledger, accounts = pg_database(), pg_database()
    engine = seed_accounts(accounts)
    config = write_config(tmp_path, ledger)
    environ = {"DSAR_SECRET_KEY": SECRET, "DSAR_ACCOUNTS_DB_URL": accounts}
    rt = Runtime(load_settings(config, environ), env=environ)
    from discovery.engine import db

    db.upgrade(rt.engine)
    wake = SyncWakeups()
    wake.rt = rt
    yield {"rt": rt, "wake": wake, "accounts": engine}
    rt.close()
    engine.dispose()


def run(env: dict[str, Any], request_type: str, email: str = JANE.email) -> Request:
    submitted = pipeline.submit(env["rt"], env["wake"], request_type, email, ticket=f"T-{request_type}", actor="test")
    env["wake"].drain()
    with env["rt"].sessions() as s:
        req = s.get(Request, submitted.request.id)
        assert req is not None
        return req


def bundle_json(uri: str, name: str) -> Any:
    with zipfile.ZipFile(local_path(uri)) as zf:
        return orjson.loads(zf.read(name))


def test_access_returns_every_row_of_the_person_and_nobody_elses(env: dict[str, Any]) -> None:
    req = run(env, "access", " Jane.DOE@example.COM ")
    assert req.status == "completed"
    db = env["accounts"]
    jane_servers = {r["id"] for r in rows(db, f"SELECT id FROM servers WHERE user_id = {JANE.account_id}")}
    expected = {
        "users": {int(JANE.account_id)},
        "servers": jane_servers,
        # two hops: login_log.server_id -> servers.user_id -> users.id
        "login_log": {r["id"] for r in rows(db, "SELECT id FROM login_log WHERE server_id IN "
                                               f"({','.join(map(str, jane_servers))})")},
        "orders": {r["id"] for r in rows(db, f"SELECT id FROM orders WHERE user_id = {JANE.account_id}")},
    }
    manifest = bundle_json(req.bundle_path, "manifest.json")
    for entity, ids in expected.items():
        data = bundle_json(req.bundle_path, f"data/accounts/{entity}.json")
        assert {r["id"] for r in data} == ids, entity
        assert manifest["systems"]["accounts"]["entities"][entity]["records"] == len(ids)
    users = bundle_json(req.bundle_path, "data/accounts/users.json")
    assert "password_hash" not in users[0]  # withheld by the data map
    learned = {(i["type"], i["value"], i["source"]) for i in manifest["subject"]["identifiers"]}
    assert ("matomo_visitor_id", JANE.matomo_visitor_id, "accounts") in learned
    assert ("account_id", JANE.account_id, "accounts") in learned
    text = zipfile.ZipFile(local_path(req.bundle_path)).read("data/accounts/users.json").decode()
    assert JOHN.email not in text and "Decoy" not in text


def test_erasure_masks_and_deletes_as_mapped_keeps_held_orders_and_leaves_others(env: dict[str, Any]) -> None:
    db = env["accounts"]
    before_others = rows(db, f"SELECT * FROM users WHERE id <> {JANE.account_id} ORDER BY id")
    other_counts = rows(db, f"SELECT (SELECT count(*) FROM servers WHERE user_id <> {JANE.account_id}) s, "
                            f"(SELECT count(*) FROM orders WHERE user_id <> {JANE.account_id}) o, "
                            "(SELECT count(*) FROM login_log) l")[0]
    req = run(env, "erasure")
    assert req.status == "completed"
    jane = rows(db, f"SELECT * FROM users WHERE id = {JANE.account_id}")[0]
    assert jane["email"].startswith("erased-") and jane["full_name"] == "[redacted]"
    assert jane["phone"] is None and jane["matomo_visitor_id"] is None and jane["password_hash"] == "!erased"
    assert rows(db, f"SELECT id FROM servers WHERE user_id = {JANE.account_id}") == []
    orders = rows(db, f"SELECT ordered_at, processing_restricted FROM orders WHERE user_id = {JANE.account_id}")
    assert len(orders) == 2 and all(o["processing_restricted"] for o in orders)  # inside the 5-year hold
    assert rows(db, f"SELECT * FROM users WHERE id <> {JANE.account_id} ORDER BY id") == before_others
    after_counts = rows(db, f"SELECT (SELECT count(*) FROM servers WHERE user_id <> {JANE.account_id}) s, "
                            f"(SELECT count(*) FROM orders WHERE user_id <> {JANE.account_id}) o, "
                            "(SELECT count(*) FROM login_log) l")[0]
    assert after_counts["s"] == other_counts["s"] and after_counts["o"] == other_counts["o"]
    assert after_counts["l"] == other_counts["l"] - 6
    receipt = bundle_json(req.bundle_path, "receipts/accounts-erase.json")
    assert receipt["changed"] == {"orders": 1, "login_log": 6, "servers": 2, "users": 1}
    assert receipt["held"][0]["entity"] == "orders" and receipt["held"][0]["records"] == 2


def test_the_same_erasure_twice_is_harmless(env: dict[str, Any]) -> None:
    db = env["accounts"]
    run(env, "erasure")
    snapshot = [rows(db, f"SELECT * FROM {t} ORDER BY id") for t in ("users", "servers", "login_log", "orders")]
    second = run(env, "erasure")
    assert second.status == "completed"
    assert [rows(db, f"SELECT * FROM {t} ORDER BY id") for t in ("users", "servers", "login_log", "orders")] == \
        snapshot
    # Re-running the erase task itself with the identifiers learned the first time changes nothing either.
    rt, wake = env["rt"], env["wake"]
    with rt.sessions.begin() as s:
        task = s.scalars(sa.select(Task).where(Task.action == "erase").order_by(Task.id)).first()
        assert task is not None
        task.status = "pending"
    pipeline.execute_task(rt, wake, task.id)
    with rt.sessions() as s:
        again = s.get(Task, task.id)
        assert again is not None and again.status == "done"
        assert again.result is not None and again.result["changed"] == {}
    assert [rows(db, f"SELECT * FROM {t} ORDER BY id") for t in ("users", "servers", "login_log", "orders")] == \
        snapshot


def test_restriction_sets_the_flag_and_lifting_clears_it(env: dict[str, Any]) -> None:
    db = env["accounts"]
    req = run(env, "restriction")
    assert req.status == "completed"
    assert rows(db, f"SELECT processing_restricted p FROM users WHERE id = {JANE.account_id}") == [{"p": True}]
    assert {r["p"] for r in rows(db, f"SELECT processing_restricted p FROM orders WHERE user_id = {JANE.account_id}")} \
        == {True}
    assert rows(db, f"SELECT processing_restricted p FROM users WHERE id = {JOHN.account_id}") == [{"p": False}]
    run(env, "lift_restriction")
    assert rows(db, f"SELECT processing_restricted p FROM users WHERE id = {JANE.account_id}") == [{"p": False}]


def test_a_second_open_request_for_the_same_person_and_type_returns_the_first(env: dict[str, Any]) -> None:
    rt, wake = env["rt"], env["wake"]
    first = pipeline.submit(rt, wake, "access", JANE.email)
    again = pipeline.submit(rt, wake, "access", "  JANE.doe@Example.com")
    other = pipeline.submit(rt, wake, "erasure", JANE.email)
    assert first.created and not again.created and again.request.id == first.request.id
    assert other.created and other.request.id != first.request.id
    wake.drain()
    after = pipeline.submit(rt, wake, "access", JANE.email)  # the first is closed now
    assert after.created and after.request.id != first.request.id


def test_tasks_finishing_together_merge_exactly_once(env: dict[str, Any]) -> None:
    """Fan-in under concurrency: many finishers, one merge."""
    import threading

    rt, wake = env["rt"], env["wake"]
    submitted = pipeline.submit(rt, wake, "access", JANE.email)
    with rt.sessions.begin() as s:
        req = s.get(Request, submitted.request.id)
        assert req is not None
        req.status = "running"
        for n in range(8):
            s.add(Task(request_id=req.id, system=f"sys{n}", action="export", entities=[], status="running"))
    wake.queue.clear()
    with rt.sessions() as s:
        ids = list(s.scalars(sa.select(Task.id).where(Task.request_id == submitted.request.id)))
    barrier = threading.Barrier(len(ids))

    def finish(task_id: int) -> None:
        barrier.wait()
        pipeline.finish_task(rt, wake, task_id, pipeline.TaskStatus.DONE, None, {"entities": {}, "files": []})

    threads = [threading.Thread(target=finish, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [k for k, _ in wake.queue] == ["merge"]

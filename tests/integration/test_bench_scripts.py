"""The benchmarks reach into the connector for what they measure (bench/ is not imported by the code, so nothing
else notices when an internal it uses changes): `make bench`'s EXPLAIN of the SQL connector's own locate queries
broke that way once (the connector started binding identifiers as `_Values`). This runs that part on a test
database; the timings themselves are the benchmarks' business, not asserted here."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from discovery.engine.runtime import Runtime
from discovery.engine.settings import load_settings
from sandbox.people import JANE
from tests.conftest import ROOT, SECRET, seed_accounts, write_config

pytestmark = pytest.mark.integration


@pytest.fixture
def backbone(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # its siblings: own_redis, procs, stats
    spec = importlib.util.spec_from_file_location("bench_backbone_under_test", ROOT / "bench" / "bench_backbone.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_backbone_under_test", None)


def test_the_backbone_benchmark_explains_the_connectors_own_locate(
        backbone: ModuleType, tmp_path: Path, pg_database: Callable[[], str]) -> None:
    accounts = pg_database()
    seed_accounts(accounts).dispose()
    environ = {"DSAR_SECRET_KEY": SECRET, "DSAR_ACCOUNTS_DB_URL": accounts}
    rt = Runtime(load_settings(write_config(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}"), environ), env=environ)
    try:
        out = backbone.explain_locate(SimpleNamespace(rt=rt), JANE.email, [("account_id", "1")])
    finally:
        rt.close()
    assert {"round0_email.users", "round1_all_identifiers.users"} <= set(out), sorted(out)
    for label, got in out.items():
        assert got["plan"] and got["execution_ms"] is not None, label
        assert JANE.email not in got["sql"] and "<email>" in got["sql"], label  # written down without the e-mail

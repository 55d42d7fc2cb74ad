"""Portability (Art. 20): only what the person provided or generated, as JSON and CSV, from the data map."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import orjson
import pytest
import yaml

from connectors.base import PermanentError
from connectors.sql_map import parse_system
from discovery.bundle.verify import verify_bundle
from discovery.engine.bundles import bundle_view
from discovery.engine.datamap import load_data_map
from sandbox.people import JANE
from tests.conftest import ROOT, dsar_env, seed_accounts, write_config


def test_the_data_map_marks_portable_fields() -> None:
    dm = load_data_map(ROOT / "config" / "datamap.yaml")
    view = bundle_view(dm, {}, "portability")
    keep, left_out = view.portable["accounts"]["users"]
    assert "processing_restricted" not in keep and left_out == ["processing_restricted"]
    assert {"email", "full_name", "phone"} <= keep
    assert "servers" not in view.portable["accounts"]  # no marking: every exported field
    assert bundle_view(dm, {}, "access").portable == {}  # access shows everything
    assert view.systems["accounts"]["holds"] and view.controller["supervisory_authority_url"]


def test_a_portable_field_must_be_an_exported_field() -> None:
    dm = yaml.safe_load((ROOT / "config" / "datamap.yaml").read_text())
    accounts = dm["systems"]["accounts"]
    accounts["entities"]["users"]["portable"] = ["email", "password_hash"]
    with pytest.raises(PermanentError, match="portable: password_hash not in 'fields'"):
        parse_system("accounts", accounts)


def test_a_portability_request_end_to_end(tmp_path: Path) -> None:
    accounts = f"sqlite:///{tmp_path / 'accounts.db'}"
    seed_accounts(accounts).dispose()
    env = dsar_env(write_config(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}"), accounts)
    dsar = str(Path(sys.executable).parent / "dsar")
    done = subprocess.run([dsar, "request", "portability", "--email", JANE.email, "--wait", "--json"], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    request_id = orjson.loads(done.stdout)["id"]
    out = tmp_path / "p.zip"
    got = subprocess.run([dsar, "download", request_id, "-o", str(out)], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    assert verify_bundle(out).ok
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        users = orjson.loads(zf.read("data/accounts/users.json"))
        header = zf.read("data/accounts/users.csv").decode("utf-8-sig").splitlines()[0]
        manifest = orjson.loads(zf.read("manifest.json"))
        page = zf.read("index.html").decode()
    assert "data/accounts/login_log.json" not in names  # security log: not provided by the person
    assert users[0]["full_name"] == "Jane Doe" and "processing_restricted" not in users[0]
    assert header == "id,email,full_name,phone,created_at,last_login_at,newsletter"
    entities = manifest["systems"]["accounts"]["entities"]
    assert entities["users"]["fields_left_out"] == ["processing_restricted"]
    assert entities["login_log"]["status"] == "skipped" and "Art. 20" in entities["login_log"]["steps"][0]["reason"]
    assert "GDPR Art. 20" in page and "Left out (not provided by you): processing_restricted" in page

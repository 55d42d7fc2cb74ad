"""dsar's own data is protected (issue 11, point 6): bundle and staging files 0600 in 0700 folders whatever the
umask, a signed manifest that catches data and manifest changed together, and `dsar verify` that reports a
damaged ZIP in one line instead of a traceback."""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from connectors.base import Record
from discovery.bundle import signing
from discovery.bundle.archive import LocalStore
from discovery.bundle.staging import Staging
from discovery.bundle.verify import verify_bundle
from tests.conftest import ROOT
from tests.unit.test_bundle import build
from tests.unit.test_bundle_verify import rewrite

KEY = "manifest-key-for-tests-0123456789"


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)  # the worst case: everything created world-writable unless dsar says otherwise
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_bundles_and_staging_are_private_under_a_permissive_umask(tmp_path: Path, permissive_umask: None) -> None:
    bundle, _ = build(tmp_path)  # staging under tmp_path/staging, archive under tmp_path/archive
    assert mode(bundle) == 0o600
    for folder in (tmp_path / "archive", bundle.parent):
        assert mode(folder) == 0o700, folder
    staged = [p for p in (tmp_path / "staging").rglob("*")]
    assert any(p.suffix == ".jsonl" for p in staged) and any(p.parent.name == "users" for p in staged)
    for p in [tmp_path / "staging", *staged]:
        assert mode(p) == (0o700 if p.is_dir() else 0o600), (p, oct(mode(p)))


def test_a_nested_archive_prefix_and_a_rewritten_staging_are_private(tmp_path: Path, permissive_umask: None) -> None:
    shared = tmp_path / "srv"
    shared.mkdir()
    shared.chmod(0o755)
    store = LocalStore(shared / "deep" / "archive", prefix="dsar/bundles")
    with store.writer("r1.zip") as out:
        out.write(b"PK")
    path = shared / "deep" / "archive" / "dsar" / "bundles" / "r1.zip"
    assert mode(path) == 0o600
    for folder in (shared / "deep", shared / "deep" / "archive", path.parent.parent, path.parent):
        assert mode(folder) == 0o700, folder
    assert mode(shared) == 0o755  # a folder that was there already is the operator's: left as it is
    staging = Staging(tmp_path / "staging")
    for _ in range(2):  # a retried task replaces its earlier folder: still private
        staging.write("r1", "crm", iter([Record("contacts", "1", {"email": "jane@example.com"})]))
    for p in (tmp_path / "staging").rglob("*"):
        assert mode(p) == (0o700 if p.is_dir() else 0o600), p


# -- the signed manifest ---------------------------------------------------------------------------

@pytest.fixture
def signed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DSAR_MANIFEST_KEY", KEY)
    return build(tmp_path)[0]


def forged(good: Path, dst: Path) -> Path:
    """Data changed and the manifest's hashes changed to match: what only a signature can catch."""
    with zipfile.ZipFile(good) as zf:
        manifest = orjson.loads(zf.read("manifest.json"))
        body = zf.read("data/accounts/users.json").replace(b"example.no", b"example.ru")
    meta = {"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}
    manifest["files"]["data/accounts/users.json"] = meta
    manifest["systems"]["accounts"]["entities"]["users"].update(meta)
    return rewrite(good, dst, {"data/accounts/users.json": body, "manifest.json": orjson.dumps(manifest)})


def test_a_signed_bundle_verifies_with_the_key_and_a_forgery_does_not(signed: Path, tmp_path: Path) -> None:
    manifest = orjson.loads(zipfile.ZipFile(signed).read("manifest.json"))
    assert manifest["signature"]["alg"] == "HMAC-SHA256"
    good = verify_bundle(signed, KEY.encode())
    assert good.ok and good.signature == "valid", good.problems

    bad = forged(signed, tmp_path / "forged.zip")
    without_key = verify_bundle(bad)  # the hashes agree: without the key nothing can tell
    assert without_key.ok and without_key.signature == "not checked"
    with_key = verify_bundle(bad, KEY.encode())
    assert not with_key.ok and with_key.signature == "invalid"
    assert with_key.problems == ["manifest signature does not match: the manifest was changed"]
    other = verify_bundle(signed, b"another-key-0123456789")
    assert not other.ok and other.problems == ["manifest signature: made with another key"]


def test_with_the_key_an_unsigned_manifest_fails(signed: Path, tmp_path: Path) -> None:
    bad = forged(signed, tmp_path / "forged.zip")
    with zipfile.ZipFile(bad) as zf:
        manifest = orjson.loads(zf.read("manifest.json"))
    del manifest["signature"]  # a forger drops the signature too
    stripped = rewrite(bad, tmp_path / "stripped.zip", {"manifest.json": orjson.dumps(manifest)})
    result = verify_bundle(stripped, KEY.encode())
    assert not result.ok and result.signature == "unsigned"
    assert "manifest.json is not signed" in result.problems


def test_the_signature_does_not_depend_on_how_the_manifest_is_written(signed: Path, tmp_path: Path) -> None:
    manifest = orjson.loads(zipfile.ZipFile(signed).read("manifest.json"))
    reordered = dict(reversed(list(manifest.items())))
    again = rewrite(signed, tmp_path / "again.zip", {"manifest.json": orjson.dumps(reordered)})
    assert verify_bundle(again, KEY.encode()).signature == "valid"
    assert signing.check(manifest, KEY.encode()) == ("valid", None)


# -- the command --------------------------------------------------------------------------------

def dsar(args: list[str], **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSAR_")}
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], env={**env, **extra}, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def corrupt_deflate(good: Path, dst: Path, member: str) -> Path:
    """Garbage in the middle of one member's deflate stream (the ZIP's directory stays intact)."""
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as zf:
        info = zf.getinfo(member)
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len
    for i in range(min(info.compress_size, 64)):
        data[start + i] = 0xFF  # 0xFF...: block type 3, which deflate does not have
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("member", ["manifest.json", "data/accounts/users.json"])
def test_a_corrupt_deflate_stream_is_one_line_not_a_traceback(signed: Path, tmp_path: Path, member: str) -> None:
    bad = corrupt_deflate(signed, tmp_path / "bad.zip", member)
    with zipfile.ZipFile(bad) as zf, pytest.raises(Exception) as raised:
        zf.read(member)
    assert "zlib" in type(raised.value).__module__ or "Error" in type(raised.value).__name__
    result = dsar(["verify", str(bad)])
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert f"{member}: damaged" in result.stdout
    as_json = dsar(["verify", str(bad), "--json"])
    assert as_json.returncode == 1 and "Traceback" not in as_json.stderr
    assert not orjson.loads(as_json.stdout)["ok"]


def test_the_command_checks_the_signature_when_it_has_the_key(signed: Path, tmp_path: Path) -> None:
    ok = dsar(["verify", str(signed)], DSAR_MANIFEST_KEY=KEY)
    assert ok.returncode == 0 and "signature valid" in ok.stdout, ok.stdout + ok.stderr
    unchecked = dsar(["verify", str(signed)])
    assert unchecked.returncode == 0 and "signature not checked (no key)" in unchecked.stdout
    bad = forged(signed, tmp_path / "forged.zip")
    assert dsar(["verify", str(bad)]).returncode == 0  # without the key the forgery passes the hash checks ...
    failed = dsar(["verify", str(bad)], DSAR_MANIFEST_KEY=KEY)  # ... with it, it does not
    assert failed.returncode == 1 and "signature invalid" in failed.stdout
    assert "Traceback" not in failed.stderr
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(signed.read_bytes()[: signed.stat().st_size // 2])
    cut = dsar(["verify", str(truncated)])
    assert cut.returncode == 1 and "Traceback" not in cut.stderr and "not a readable ZIP" in cut.stdout

"""`dsar verify`: a bundle checks out against its manifest; any change to it does not."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import orjson
import pytest

from discovery.bundle.verify import verify_bundle
from tests.conftest import ROOT
from tests.unit.test_bundle import build


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return build(tmp_path)[0]


def rewrite(src: Path, dst: Path, change: dict[str, bytes | None] | None = None,
            add: dict[str, bytes] | None = None) -> Path:
    """A copy of a bundle with members replaced (bytes), dropped (None) or added."""
    change = change or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            body = change.get(info.filename, zin.read(info))
            if body is not None:
                zout.writestr(info.filename, body)
        for name, body in (add or {}).items():
            zout.writestr(name, body)
    return dst


def test_an_untouched_bundle_verifies(good: Path) -> None:
    result = verify_bundle(good)
    assert result.ok and result.problems == []
    assert result.checked == len(zipfile.ZipFile(good).namelist()) - 1  # all but the manifest itself
    assert result.format == "dsar-bundle/2"


def test_a_changed_record_is_caught(good: Path, tmp_path: Path) -> None:
    body = zipfile.ZipFile(good).read("data/accounts/users.json").replace(b"ase@example.no", b"eve@example.no")
    result = verify_bundle(rewrite(good, tmp_path / "t.zip", {"data/accounts/users.json": body}))
    assert not result.ok
    assert result.problems == ["data/accounts/users.json: SHA-256 does not match the manifest"]


def test_missing_added_and_resized_members_are_caught(good: Path, tmp_path: Path) -> None:
    bad = rewrite(good, tmp_path / "t.zip", {"data/accounts/servers.csv": None, "index.html": b"<p>hi</p>"},
                  add={"data/extra.json": b"[]"})
    problems = verify_bundle(bad).problems
    assert "data/extra.json: in the ZIP but not in the manifest" in problems
    assert "data/accounts/servers.csv: listed in the manifest but missing from the ZIP" in problems
    assert any(p.startswith("index.html: size 9 bytes, the manifest says") for p in problems)


def test_an_edited_manifest_is_caught(good: Path, tmp_path: Path) -> None:
    manifest = orjson.loads(zipfile.ZipFile(good).read("manifest.json"))
    manifest["files"]["data/accounts/servers.json"]["sha256"] = "0" * 64
    bad = rewrite(good, tmp_path / "t.zip", {"manifest.json": orjson.dumps(manifest)})
    problems = verify_bundle(bad).problems
    assert "data/accounts/servers.json: the system entry and the file index disagree" in problems
    assert "data/accounts/servers.json: SHA-256 does not match the manifest" in problems


def test_damaged_compressed_bytes_are_caught(good: Path, tmp_path: Path) -> None:
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as zf:
        info = zf.getinfo("files/accounts/users/invoice-1.pdf")
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)  # the local header's own
    data[info.header_offset + 30 + name_len + extra_len + 4] ^= 0xFF
    bad = tmp_path / "t.zip"
    bad.write_bytes(bytes(data))
    result = verify_bundle(bad)
    assert not result.ok
    assert any(p.startswith("files/accounts/users/invoice-1.pdf:") for p in result.problems), result.problems


def test_not_a_zip_and_unsafe_paths(good: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"PK\x03\x04 not really")
    assert verify_bundle(junk).problems == ["not a readable ZIP file (BadZipFile)"]
    bad = rewrite(good, tmp_path / "t.zip", add={"../evil.sh": b"rm -rf ~"})
    assert "../evil.sh: unsafe path" in verify_bundle(bad).problems


def run_dsar(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # The installed entry point: it sees the commands every part registers on workers.cli.main.
    dsar = Path(sys.executable).parent / "dsar"
    return subprocess.run([str(dsar), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_the_command_exits_0_1_or_2(good: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSAR_")}
    ok = run_dsar(["verify", str(good)], env)
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout
    data = orjson.loads(run_dsar(["verify", str(good), "--json"], env).stdout)
    assert data["ok"] is True and data["checked"] > 5

    body = zipfile.ZipFile(good).read("data/chat/messages.json") + b" "
    bad = rewrite(good, tmp_path / "t.zip", {"data/chat/messages.json": body})
    failed = run_dsar(["verify", str(bad), "--json"], env)
    assert failed.returncode == 1
    assert orjson.loads(failed.stdout)["problems"][0].startswith("data/chat/messages.json: size")

    missing = run_dsar(["verify", str(tmp_path / "nope.zip")], env)
    assert missing.returncode == 2 and missing.stderr == f"dsar: no such file: {tmp_path / 'nope.zip'}\n"

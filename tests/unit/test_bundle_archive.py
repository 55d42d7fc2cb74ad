"""The archive store (local folder; S3 request shapes) and bundle expiry."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
import sqlalchemy as sa
from botocore.stub import ANY, Stubber

from discovery.bundle.archive import (
    ArchiveError,
    ArchiveSettings,
    LocalStore,
    MiB,
    NotInArchive,
    S3Store,
    first_part_size,
    local_path,
    part_size,
)
from discovery.engine import db
from discovery.engine.bundles import bundle_unavailable, expire_bundles
from discovery.engine.ledger import AuditEvent, Request
from discovery.engine.runtime import Runtime
from discovery.engine.settings import load_settings
from tests.conftest import ROOT, SECRET, dsar_env, write_config

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def test_local_writer_commits_whole_or_nothing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "archive", prefix="bundles")
    with store.writer("a.zip") as out:
        out.write(b"hello ")
        assert not (tmp_path / "archive/bundles/a.zip").exists()  # not visible while being written
        out.write(b"world")
    assert out.uri == (tmp_path / "archive/bundles/a.zip").as_uri()
    assert local_path(out.uri).read_bytes() == b"hello world" and out.size == 11
    with pytest.raises(RuntimeError), store.writer("b.zip") as out:
        out.write(b"half")
        raise RuntimeError("the merge died")
    assert sorted(p.name for p in (tmp_path / "archive/bundles").iterdir()) == ["a.zip"]


def test_local_store_reads_deletes_and_refuses_paths_outside(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "archive")
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 * MiB + 7))
    uri = store.put_file("c.zip", src)
    with store.open_uri(uri) as fh:
        assert fh.read() == src.read_bytes()
    assert store.exists_uri(uri) and store.presign_uri(uri) is None
    store.delete_uri(uri)
    store.delete_uri(uri)  # already gone: fine
    assert not store.exists_uri(uri)
    with pytest.raises(NotInArchive):
        store.open_uri(uri)
    for outside in ((tmp_path / "src.bin").as_uri(), (tmp_path / "archive/../src.bin").as_uri(), "s3://b/k"):
        with pytest.raises(ArchiveError):
            store.open_uri(outside)
    with pytest.raises(ArchiveError):
        store.writer("../escape.zip").__enter__()


def test_part_size_scales_to_large_bundles() -> None:
    assert first_part_size(8, 512, 0) == 8 * MiB
    assert first_part_size(8, 512, 10 * 1024 * MiB) == 8 * MiB  # 10 GiB fits in 1280 parts of 8 MiB
    assert first_part_size(8, 512, 1024 * 1024 * MiB) == 315 * MiB  # 1 TiB: larger first parts
    sizes = [part_size(8 * MiB, 512 * MiB, n) for n in range(1, 10_001)]
    assert sizes[0] == sizes[999] == 8 * MiB and sizes[1000] == 16 * MiB and max(sizes) == 512 * MiB
    assert sum(sizes) > 2 * 1024**4  # the 10,000-part limit is reached only past 2 TiB


def s3_store(**settings: Any) -> tuple[S3Store, Stubber]:
    client = boto3.client("s3", region_name="eu-north-1", aws_access_key_id="x", aws_secret_access_key="y")
    a = ArchiveSettings(path=Path("/tmp"), staging_path=Path("/tmp"), store="s3", bucket="bundles", **settings)
    return S3Store(a, client), Stubber(client)


def test_s3_multipart_upload_with_kms_key() -> None:
    store, stub = s3_store(prefix="dsar/", sse="aws:kms", kms_key_id="arn:aws:kms:eu-north-1:1:key/k", part_size_mb=5)
    key, upload = "dsar/r1.zip", {"Bucket": "bundles", "Key": "dsar/r1.zip", "UploadId": "u1"}
    stub.add_response("create_multipart_upload", {"UploadId": "u1"}, {
        "Bucket": "bundles", "Key": key, "ContentType": "application/zip", "ServerSideEncryption": "aws:kms",
        "SSEKMSKeyId": "arn:aws:kms:eu-north-1:1:key/k"})
    stub.add_response("upload_part", {"ETag": '"e1"'}, {**upload, "PartNumber": 1, "Body": ANY})
    stub.add_response("upload_part", {"ETag": '"e2"'}, {**upload, "PartNumber": 2, "Body": ANY})
    stub.add_response("complete_multipart_upload", {}, {**upload, "MultipartUpload": {"Parts": [
        {"PartNumber": 1, "ETag": '"e1"'}, {"PartNumber": 2, "ETag": '"e2"'}]}})
    with stub, store.writer("r1.zip") as out:
        for _ in range(6):
            out.write(b"x" * MiB)
    stub.assert_no_pending_responses()
    assert out.uri == "s3://bundles/dsar/r1.zip" and out.size == 6 * MiB


def test_s3_small_bundle_is_one_encrypted_put_and_a_failure_aborts() -> None:
    store, stub = s3_store()
    stub.add_response("put_object", {}, {"Bucket": "bundles", "Key": "small.zip", "Body": ANY,
                                         "ContentType": "application/zip", "ServerSideEncryption": "AES256"})
    with stub, store.writer("small.zip") as out:
        out.write(b"tiny")
    stub.assert_no_pending_responses()

    store, stub = s3_store(part_size_mb=5)
    stub.add_response("create_multipart_upload", {"UploadId": "u9"})
    stub.add_client_error("upload_part", "InternalError", http_status_code=400)
    stub.add_response("abort_multipart_upload", {}, {"Bucket": "bundles", "Key": "big.zip", "UploadId": "u9"})
    with stub, pytest.raises(ArchiveError, match="upload part 1 in bucket bundles failed: InternalError"), \
            store.writer("big.zip") as out:
        for _ in range(12):
            out.write(b"y" * MiB)
    stub.assert_no_pending_responses()


def test_s3_uris_outside_the_bucket_are_refused() -> None:
    store, _ = s3_store()
    for uri in ("s3://other/r.zip", "file:///etc/passwd", "s3://bundles/../x", "s3://bundles/"):
        with pytest.raises(ArchiveError):
            store.key_of(uri)
    with pytest.raises(ArchiveError, match="7 days"):
        store.presign_uri("s3://bundles/r.zip", 8 * 24 * 3600)


# -- expiry ---------------------------------------------------------------------------------

@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[dict[str, Any]]:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}")
    env = {"DSAR_SECRET_KEY": SECRET, "DSAR_ACCOUNTS_DB_URL": f"sqlite:///{tmp_path / 'accounts.db'}"}
    rt = Runtime(load_settings(config, env), env=env, now=lambda: NOW)
    db.upgrade(rt.engine)
    yield {"rt": rt, "config": config, "tmp": tmp_path}
    rt.close()


def add_request(rt: Runtime, request_id: str, expires_at: datetime | None) -> str:
    store = LocalStore(rt.settings.archive.path)
    with store.writer(f"{request_id}.zip") as out, zipfile.ZipFile(out, "w") as zf:  # type: ignore[call-overload]
        zf.writestr("manifest.json", "{}")
    with rt.sessions.begin() as s:
        s.add(Request(id=request_id, type="access", subject_email="a@example.no", subject_hash="h" * 64,
                      status="completed", received_at=NOW - timedelta(days=40), due_at=NOW, updated_at=NOW,
                      completed_at=NOW - timedelta(days=31), bundle_path=out.uri, bundle_expires_at=expires_at))
    return out.uri


def test_expiry_deletes_due_bundles_once_and_audits(ledger: dict[str, Any]) -> None:
    rt: Runtime = ledger["rt"]
    old = add_request(rt, "old", NOW - timedelta(days=1))
    fresh = add_request(rt, "fresh", NOW + timedelta(days=5))
    never = add_request(rt, "never", None)  # made before bundles expired: kept
    done = expire_bundles(rt, actor="test")
    assert [(e.request_id, e.deleted) for e in done] == [("old", True)]
    assert not local_path(old).exists() and local_path(fresh).exists() and local_path(never).exists()
    assert expire_bundles(rt, actor="test") == []  # nothing twice
    with rt.sessions() as s:
        req = s.get(Request, "old")
        assert req is not None and req.bundle_deleted_at == NOW
        events = s.scalars(sa.select(AuditEvent).where(AuditEvent.event == "bundle.expired")).all()
        assert [(e.request_id, e.actor) for e in events] == [("old", "test")]
        assert "deleted on 2024-06-01" in (bundle_unavailable(req, NOW) or "")
        fresh_req = s.get(Request, "fresh")
        assert fresh_req is not None and bundle_unavailable(fresh_req, NOW) is None
        assert "expired on" in (bundle_unavailable(fresh_req, NOW + timedelta(days=6)) or "")


def test_download_of_an_expired_bundle_says_so(ledger: dict[str, Any]) -> None:
    rt: Runtime = ledger["rt"]
    add_request(rt, "gone", NOW - timedelta(days=1))
    add_request(rt, "kept", datetime.now(UTC) + timedelta(days=5))
    expire_bundles(rt)
    env = dsar_env(ledger["config"], f"sqlite:///{ledger['tmp'] / 'accounts.db'}")
    dsar = str(Path(sys.executable).parent / "dsar")
    out = ledger["tmp"] / "out.zip"
    gone = subprocess.run([dsar, "download", "gone", "-o", str(out)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert gone.returncode == 7
    assert gone.stderr == ("dsar: the bundle of request gone expired and was deleted on 2024-06-01; submit a new "
                           "request for a fresh copy\n")
    assert not out.exists()
    kept = subprocess.run([dsar, "download", "kept", "-o", str(out)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert kept.returncode == 0, kept.stderr
    assert zipfile.ZipFile(out).namelist() == ["manifest.json"]

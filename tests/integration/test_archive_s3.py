"""The S3 archive store on a real S3 server (SeaweedFS): multipart, encryption, presigned links, expiry."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import orjson
import pytest
import requests
import sqlalchemy as sa

from discovery.bundle.archive import MiB, NotInArchive, S3Store, archive_store
from discovery.bundle.build import SystemPart, build_bundle
from discovery.bundle.staging import Staging
from discovery.bundle.verify import verify_bundle
from discovery.engine.settings import Settings, load_settings
from tests.conftest import ROOT, _s3_client, dsar_env, seed_accounts, write_config
from tests.unit.test_bundle import REQUEST_ID, VIEW, header, messages, step, users

pytestmark = pytest.mark.integration


@pytest.fixture
def s3(tmp_path: Path, s3_server: dict[str, str], s3_bucket: str) -> dict[str, Any]:
    """A config whose archive is the test bucket, the environment that reaches it, and a raw client."""
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}")
    env = {"DSAR_SECRET_KEY": "test-secret-key-0123456789", "DSAR_ARCHIVE_STORE": "s3",
           "DSAR_ARCHIVE_BUCKET": s3_bucket, "DSAR_ARCHIVE_PREFIX": "bundles/",
           "DSAR_ARCHIVE_ENDPOINT_URL": s3_server["endpoint_url"], "DSAR_ARCHIVE_REGION": s3_server["region"],
           "DSAR_ARCHIVE_PART_SIZE_MB": "5",
           "AWS_ACCESS_KEY_ID": s3_server["access_key"], "AWS_SECRET_ACCESS_KEY": s3_server["secret_key"]}
    settings = load_settings(config, env)
    return {"settings": settings, "env": env, "config": config, "bucket": s3_bucket, "client": _s3_client(),
            "tmp": tmp_path}


def store_of(s3: dict[str, Any]) -> S3Store:
    settings: Settings = s3["settings"]
    store = archive_store(settings, s3["env"])
    assert isinstance(store, S3Store)
    return store


def pending_uploads(s3: dict[str, Any]) -> list[Any]:
    return list(s3["client"].list_multipart_uploads(Bucket=s3["bucket"]).get("Uploads", []))


def test_multipart_upload_is_encrypted_and_reads_back(s3: dict[str, Any]) -> None:
    store = store_of(s3)
    data = os.urandom(13 * MiB + 123)  # incompressible: three parts of 5, 5 and 3 MiB
    with store.writer("big.zip") as out:
        for i in range(0, len(data), 700_000):
            out.write(data[i:i + 700_000])
    assert out.uri == f"s3://{s3['bucket']}/bundles/big.zip"
    head = s3["client"].head_object(Bucket=s3["bucket"], Key="bundles/big.zip")
    assert head["ContentLength"] == len(data) and head["ServerSideEncryption"] == "AES256"
    assert head["ETag"].endswith('-3"')  # a multipart object of three parts
    with store.open_uri(out.uri) as fh:
        assert hashlib.sha256(fh.read()).digest() == hashlib.sha256(data).digest()
        fh.seek(7 * MiB)
        assert fh.read(1000) == data[7 * MiB:7 * MiB + 1000]
    assert store.exists_uri(out.uri) and pending_uploads(s3) == []


def test_a_failed_upload_leaves_nothing_behind(s3: dict[str, Any]) -> None:
    store = store_of(s3)
    with pytest.raises(RuntimeError), store.writer("broken.zip") as out:
        out.write(os.urandom(11 * MiB))  # two parts already sent
        raise RuntimeError("the merge died")
    assert not store.exists_uri(out.uri) and pending_uploads(s3) == []
    with pytest.raises(NotInArchive):
        store.open_uri(out.uri)


def test_a_bundle_streams_into_s3_and_verifies_there(s3: dict[str, Any]) -> None:
    store = store_of(s3)
    staging = Staging(s3["tmp"] / "staging")
    parts = [SystemPart("accounts", "done", "export", staged=staging.write(REQUEST_ID, "accounts", users())),
             SystemPart("chat", "done", "export", staged=staging.write(REQUEST_ID, "chat", messages()))]
    plan = [step("accounts", "users"), step("accounts", "servers"), step("chat", "messages")]
    with store.writer(f"{REQUEST_ID}.zip") as out:
        built = build_bundle(out, header("access", plan), parts, staging, VIEW)
    with store.open_uri(out.uri) as fh:
        assert hashlib.file_digest(fh, "sha256").hexdigest() == built.sha256  # type: ignore[arg-type]
    with store.open_uri(out.uri) as fh:
        result = verify_bundle(fh)
    assert result.ok, result.problems
    assert result.checked == len(built.manifest["files"])


def test_presigned_link_works_and_a_tampered_or_expired_one_is_refused(s3: dict[str, Any]) -> None:
    store = store_of(s3)
    body = b"PK-not-really-a-zip" * 1000
    with store.writer("linked.zip") as out:
        out.write(body)
    url = store.presign_uri(out.uri, 300)
    assert url is not None
    got = requests.get(url, timeout=10)
    assert got.status_code == 200 and got.content == body
    assert requests.get(url.replace("X-Amz-Signature=", "X-Amz-Signature=0"), timeout=10).status_code == 403
    assert requests.get(url.replace("linked.zip", "other.zip"), timeout=10).status_code == 403
    assert requests.get(url.replace("X-Amz-Expires=300", "X-Amz-Expires=604800"), timeout=10).status_code == 403
    # Signed two hours ago for 60 seconds: expired at the server.
    signed_at = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=2)
    with mock.patch("botocore.auth.get_current_datetime", lambda remove_tzinfo=True: signed_at):
        old = store.presign_uri(out.uri, 60)
    assert old is not None
    expired = requests.get(old, timeout=10)
    assert expired.status_code == 403 and b"expired" in expired.content.lower()


def dsar(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # The installed entry point (it carries the commands every part registers on workers.cli.main)
    return subprocess.run([str(Path(sys.executable).parent / "dsar"), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=180)


def test_request_to_link_to_expiry_through_the_cli(s3: dict[str, Any]) -> None:
    tmp: Path = s3["tmp"]
    accounts = f"sqlite:///{tmp / 'accounts.db'}"
    seed_accounts(accounts).dispose()
    env = dsar_env(s3["config"], accounts, **{k: v for k, v in s3["env"].items() if k != "DSAR_SECRET_KEY"})
    done = dsar(["request", "access", "--email", "jane.doe@example.com", "--wait", "--json"], env)
    assert done.returncode == 0, done.stderr
    status = orjson.loads(done.stdout)
    uri = status["bundle"]
    assert uri.startswith(f"s3://{s3['bucket']}/bundles/") and uri.endswith(".zip")

    out = tmp / "out.zip"
    assert dsar(["download", status["id"], "-o", str(out)], env).returncode == 0
    assert verify_bundle(out).ok
    assert "data/accounts/users.csv" in zipfile.ZipFile(out).namelist()

    link = dsar(["link", status["id"], "--expires", "600", "--json"], env)
    assert link.returncode == 0, link.stderr
    got = requests.get(orjson.loads(link.stdout)["url"], timeout=10)
    assert got.status_code == 200 and got.content == out.read_bytes()

    ledger = sa.create_engine(f"sqlite:///{tmp / 'ledger.db'}")
    with ledger.begin() as conn:
        conn.execute(sa.text("UPDATE requests SET bundle_expires_at = :t WHERE id = :id"),
                     {"t": datetime.now(UTC) - timedelta(minutes=1), "id": status["id"]})
    ledger.dispose()
    late = dsar(["download", status["id"], "-o", str(tmp / "late.zip")], env)
    assert late.returncode == 7 and "expired on" in late.stderr
    assert dsar(["link", status["id"]], env).returncode == 7

    expired = dsar(["bundles", "expire", "--json"], env)
    assert expired.returncode == 0, expired.stderr
    assert [(e["request_id"], e["deleted"]) for e in orjson.loads(expired.stdout)["expired"]] == [(status["id"], True)]
    key = uri.removeprefix(f"s3://{s3['bucket']}/")
    assert s3["client"].list_objects_v2(Bucket=s3["bucket"], Prefix=key).get("KeyCount") == 0
    gone = dsar(["download", status["id"], "-o", str(tmp / "late.zip")], env)
    assert gone.returncode == 7 and "expired and was deleted" in gone.stderr
    assert not (tmp / "late.zip").exists()

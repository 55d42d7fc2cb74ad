"""The archive store: where finished bundles are kept (a local folder, or S3) and for how long.

A bundle is written as a stream (`ArchiveStore.writer`). The local store writes a temporary
file and renames it into place; the S3 store uploads parts as they fill (multipart, server-side
encryption) and completes the upload only once the bundle is whole. Either way a reader never
sees half a bundle, and the bundle is never held whole in memory or written to local disk twice.
Requests record the store URI: file:///abs/<id>.zip or s3://bucket/<prefix><id>.zip.

When a request's bundle expires is the engine's business (discovery.engine.bundles); this module only stores.
"""

from __future__ import annotations

import abc
import concurrent.futures
import hashlib
import io
import os
import stat
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal, Protocol, cast
from urllib.parse import quote, urlsplit
from urllib.request import url2pathname

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

log = structlog.get_logger(__name__)

MiB = 1024 * 1024
MAX_PARTS = 10_000  # S3's limit per multipart upload
PARTS_PER_SIZE = 1000  # the part size doubles after this many parts, so any bundle size fits
READ_CHUNK = MiB


MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # SigV4 presigned URLs cannot live longer


class ArchiveSettings(BaseModel):
    """Where bundles are kept: a local folder (`path`), or S3 (credentials from the standard AWS_* variables).

    The `[archive]` section of the settings file; defined here so the store needs nothing above it.
    """

    model_config = ConfigDict(extra="forbid")

    path: Path
    staging_path: Path
    store: Literal["local", "s3"] = "local"
    bucket: str = Field("", validate_default=True)
    prefix: str = ""  # key prefix, e.g. "dsar/bundles/"
    endpoint_url: str = ""  # any S3-compatible server; empty: AWS
    region: str = ""
    sse: Literal["AES256", "aws:kms"] = "AES256"
    kms_key_id: str = ""  # with sse = "aws:kms"; empty: the account's default key
    presign_expiry_seconds: int = Field(24 * 3600, ge=60, le=MAX_PRESIGN_SECONDS)
    retention_days: int = Field(30, ge=1, le=3650)  # bundles are deleted this many days after completion
    part_size_mb: int = Field(8, ge=5, le=5120)  # first multipart part; S3 needs 5 MiB or more
    max_part_size_mb: int = Field(512, ge=5, le=5120, validate_default=True)  # parts double every 1000 parts up to this

    @field_validator("bucket")
    @classmethod
    def _s3_needs_a_bucket(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("store") == "s3" and not value:
            raise ValueError('store = "s3" needs a bucket')
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_is_http(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("max_part_size_mb")
    @classmethod
    def _max_not_below_first(cls, value: int, info: ValidationInfo) -> int:
        if value < info.data.get("part_size_mb", 5):
            raise ValueError("must be at least part_size_mb")
        return value


class HasArchive(Protocol):
    """The settings the stores read (dsar's Settings): only the `archive` section."""

    @property
    def archive(self) -> ArchiveSettings: ...


class ArchiveError(Exception):
    """A one-line message about the archive store (no credentials in it)."""


class NotInArchive(ArchiveError):
    """The bundle is not (or no longer) in the store."""


class ArchiveUnavailable(ArchiveError):
    """The store could not be reached; worth trying again later."""


class BundleWriter(abc.ABC):
    """A write-only byte stream into the store; `uri` is where the bundle will be once committed."""

    uri: str
    size: int = 0

    @abc.abstractmethod
    def write(self, data: bytes | bytearray | memoryview) -> int: ...

    def flush(self) -> None:  # zipfile calls it; parts are sent as they fill
        return None


class ArchiveStore(abc.ABC):
    """Where bundles live. `writer` streams a new bundle in; the rest act on a stored URI."""

    @abc.abstractmethod
    def uri_for(self, key: str) -> str: ...

    @abc.abstractmethod
    def writer(self, key: str, size_hint: int = 0) -> AbstractContextManager[BundleWriter]:
        """Stream a bundle to `key`: committed when the block ends cleanly, discarded on an exception."""

    def put_file(self, key: str, path: Path) -> str:
        """Copy a local file into the store (streamed); returns its URI."""
        with path.open("rb") as src, self.writer(key, size_hint=path.stat().st_size) as out:
            while chunk := src.read(READ_CHUNK):
                out.write(chunk)
        return out.uri

    @abc.abstractmethod
    def open_uri(self, uri: str) -> BinaryIO:
        """A readable, seekable stream of a stored bundle (zipfile can read it); NotInArchive if gone."""

    @abc.abstractmethod
    def presign_uri(self, uri: str, expires_s: int | None = None) -> str | None:
        """A time-limited download link, or None when the store has no such thing (local)."""

    @abc.abstractmethod
    def delete_uri(self, uri: str) -> None:
        """Remove a bundle; removing one that is already gone is not an error."""

    @abc.abstractmethod
    def exists_uri(self, uri: str) -> bool: ...


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ArchiveError(f"bad archive key '{key}'")
    return key


def _prefixed(prefix: str, key: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/{_check_key(key)}" if prefix else _check_key(key)


# -- local files: only dsar's user reads them -------------------------------------------------

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> Path:
    """mkdir -p where every folder dsar creates is 0700, whatever the umask (folders already there are left)."""
    missing: list[Path] = []
    at = path
    while not at.exists():
        missing.append(at)
        if at.parent == at:
            break
        at = at.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, DIR_MODE)
        except FileExistsError:  # another worker made it a moment ago (also 0700)
            if not folder.is_dir():
                raise
            continue
        os.chmod(folder, DIR_MODE)  # mkdir's mode passes through the umask; chmod does not
    return path


def private_file(path: Path) -> IO[bytes]:
    """A file open for writing (truncated), 0600 whatever the umask or the mode it had."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


def is_private(path: Path) -> bool:
    """No group or other permission bits (what `private_dir` and `private_file` leave)."""
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


class _LocalWriter(BundleWriter):
    def __init__(self, final: Path) -> None:
        self.final = final
        self.uri = final.as_uri()
        private_dir(final.parent)
        self.tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
        self._fh: IO[bytes] = private_file(self.tmp)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = self._fh.write(data)
        self.size += n
        return n

    def commit(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self.tmp, self.final)

    def abort(self) -> None:
        self._fh.close()
        self.tmp.unlink(missing_ok=True)


class LocalStore(ArchiveStore):
    def __init__(self, root: Path, prefix: str = "") -> None:
        self.root = root.resolve()
        self.prefix = prefix

    def _path(self, key: str) -> Path:
        return self.root / _prefixed(self.prefix, key)

    def uri_for(self, key: str) -> str:
        return self._path(key).as_uri()

    def path_of(self, uri: str) -> Path:
        """The file behind a URI; refuses anything outside the archive folder."""
        if uri.startswith("file://"):
            path = Path(url2pathname(urlsplit(uri).path))
        elif uri.startswith("/"):  # ledgers written before bundle_path held URIs
            path = Path(uri)
        else:
            raise ArchiveError(f"not a local archive URI: {uri}")
        resolved = path.resolve()
        if not resolved.is_relative_to(self.root):
            raise ArchiveError(f"{uri} is outside the archive folder {self.root}")
        return resolved

    @contextmanager
    def writer(self, key: str, size_hint: int = 0) -> Iterator[BundleWriter]:
        out = _LocalWriter(self._path(key))
        try:
            yield out
        except BaseException:
            out.abort()
            raise
        out.commit()

    def open_uri(self, uri: str) -> BinaryIO:
        try:
            return self.path_of(uri).open("rb")
        except FileNotFoundError:
            raise NotInArchive(f"{uri} is not in the archive") from None

    def presign_uri(self, uri: str, expires_s: int | None = None) -> str | None:
        return None

    def delete_uri(self, uri: str) -> None:
        self.path_of(uri).unlink(missing_ok=True)

    def exists_uri(self, uri: str) -> bool:
        return self.path_of(uri).is_file()


# -- S3 -------------------------------------------------------------------------------------

def first_part_size(part_size_mb: int, max_part_size_mb: int, size_hint: int) -> int:
    """The first part's size: the configured one, or larger when the expected bundle would not fit."""
    # With doubling every PARTS_PER_SIZE parts, a first part of P bytes carries at least
    # PARTS_PER_SIZE * P before the next size; aim the hint at a third of the parts.
    need = -(-size_hint // (MAX_PARTS // 3)) if size_hint else 0
    size = max(part_size_mb * MiB, -(-need // MiB) * MiB)
    return min(size, max_part_size_mb * MiB)


def part_size(first: int, max_size: int, part_number: int) -> int:
    """Part n's size: `first`, doubled every PARTS_PER_SIZE parts, capped at `max_size`."""
    return min(first * 2 ** ((part_number - 1) // PARTS_PER_SIZE), max_size)


class _MultipartWriter(BundleWriter):
    """Uploads parts as they fill, one in flight while the next fills (compression and upload overlap)."""

    def __init__(self, store: S3Store, key: str, size_hint: int) -> None:
        self.store, self.key = store, key
        self.uri = f"s3://{store.bucket}/{key}"
        a = store.settings
        self.first = first_part_size(a.part_size_mb, a.max_part_size_mb, size_hint)
        self.max_size = a.max_part_size_mb * MiB
        self.buf = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="s3-part")
        self._inflight: concurrent.futures.Future[dict[str, Any]] | None = None

    def _limit(self) -> int:
        return part_size(self.first, self.max_size, len(self.parts) + (self._inflight is not None) + 1)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.buf += data
        self.size += len(data)
        if len(self.buf) >= self._limit():
            self._ship()
        return len(data)

    def _ship(self) -> None:
        if self.upload_id is None:
            self.upload_id = self.store._call("start upload", lambda c: c.create_multipart_upload(
                Bucket=self.store.bucket, Key=self.key, ContentType="application/zip",
                **self.store.sse_args()))["UploadId"]
        self._wait()
        number = len(self.parts) + 1
        if number > MAX_PARTS:
            raise ArchiveError(f"bundle too large for {MAX_PARTS} parts; raise archive.max_part_size_mb")
        body, self.buf = bytes(self.buf), bytearray()
        upload_id = self.upload_id
        self._inflight = self._pool.submit(self.store._call, f"upload part {number}", lambda c: {
            "PartNumber": number, "ETag": c.upload_part(Bucket=self.store.bucket, Key=self.key, UploadId=upload_id,
                                                        PartNumber=number, Body=body)["ETag"]})

    def _wait(self) -> None:
        if self._inflight is not None:
            done, self._inflight = self._inflight, None
            self.parts.append(done.result())

    def commit(self) -> None:
        try:
            if self.upload_id is None:  # small enough for one request
                body = bytes(self.buf)
                self.store._call("upload", lambda c: c.put_object(
                    Bucket=self.store.bucket, Key=self.key, Body=body, ContentType="application/zip",
                    **self.store.sse_args()))
                return
            if self.buf:
                self._ship()
            self._wait()
            self.store._call("complete upload", lambda c: c.complete_multipart_upload(
                Bucket=self.store.bucket, Key=self.key, UploadId=self.upload_id,
                MultipartUpload={"Parts": self.parts}))
        finally:
            self._pool.shutdown(wait=True)

    def abort(self) -> None:
        if self._inflight is not None:
            concurrent.futures.wait([self._inflight])
            self._inflight = None
        self._pool.shutdown(wait=True)
        if self.upload_id is not None:
            try:
                self.store._call("abort upload", lambda c: c.abort_multipart_upload(
                    Bucket=self.store.bucket, Key=self.key, UploadId=self.upload_id))
            except ArchiveError:  # S3 lifecycle rules clean up what an abort could not
                log.warning("archive.abort_failed", key=self.key)


class _S3Reader(io.RawIOBase):
    """A seekable read stream over one object: one GET per run of sequential reads, a new one per seek."""

    def __init__(self, store: S3Store, key: str, size: int) -> None:
        self.store, self.key, self.size = store, key, size
        self._pos = 0
        self._body: Any = None
        self._body_pos = -1

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        if self._pos >= self.size:
            return 0
        if self._body is None or self._body_pos != self._pos:
            self._drop_body()
            got = self.store._call("read", lambda c: c.get_object(Bucket=self.store.bucket, Key=self.key,
                                                                    Range=f"bytes={self._pos}-"))
            self._body, self._body_pos = got["Body"], self._pos
        view = memoryview(buffer).cast("B")
        data = self._body.read(len(view))
        n = len(data)
        view[:n] = data
        self._pos += n
        self._body_pos += n
        return n

    def _drop_body(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None

    def close(self) -> None:
        self._drop_body()
        super().close()


class S3Store(ArchiveStore):
    def __init__(self, settings: ArchiveSettings, client: Any) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self.client = client

    def sse_args(self) -> dict[str, str]:
        args: dict[str, str] = {"ServerSideEncryption": self.settings.sse}
        if self.settings.sse == "aws:kms" and self.settings.kms_key_id:
            args["SSEKMSKeyId"] = self.settings.kms_key_id
        return args

    def _call(self, what: str, fn: Any) -> Any:
        """Run one S3 call; its errors become ArchiveErrors naming the call and the S3 error code."""
        from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

        try:
            return fn(self.client)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "error"))
            if code in ("NoSuchKey", "404", "NotFound"):
                raise NotInArchive(f"s3 {what}: s3://{self.bucket}: no such object") from None
            raise ArchiveError(f"s3 {what} in bucket {self.bucket} failed: {code}") from None
        except EndpointConnectionError:
            raise ArchiveUnavailable(f"s3 {what}: cannot reach {self.settings.endpoint_url or 'AWS S3'}") from None
        except BotoCoreError as exc:
            raise ArchiveUnavailable(f"s3 {what} failed: {type(exc).__name__}") from None

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{_prefixed(self.settings.prefix, key)}"

    def key_of(self, uri: str) -> str:
        parts = urlsplit(uri)
        key = parts.path.lstrip("/")
        if parts.scheme != "s3" or not key:
            raise ArchiveError(f"not an S3 archive URI: {uri}")
        if parts.netloc != self.bucket:
            raise ArchiveError(f"{uri} is not in the archive bucket {self.bucket}")
        return _check_key(key)

    @contextmanager
    def writer(self, key: str, size_hint: int = 0) -> Iterator[BundleWriter]:
        out = _MultipartWriter(self, _prefixed(self.settings.prefix, key), size_hint)
        try:
            yield out
        except BaseException:
            out.abort()
            raise
        try:
            out.commit()
        except BaseException:
            out.abort()
            raise

    def open_uri(self, uri: str) -> BinaryIO:
        key = self.key_of(uri)
        head = self._call("open", lambda c: c.head_object(Bucket=self.bucket, Key=key))
        raw = _S3Reader(self, key, int(head["ContentLength"]))
        return cast(BinaryIO, io.BufferedReader(raw, buffer_size=READ_CHUNK))

    def presign_uri(self, uri: str, expires_s: int | None = None) -> str | None:
        key = self.key_of(uri)
        expires = expires_s or self.settings.presign_expiry_seconds
        if not 1 <= expires <= MAX_PRESIGN_SECONDS:
            raise ArchiveError(f"a presigned link lives 1 second to 7 days, not {expires} seconds")
        name = quote(key.rsplit("/", 1)[-1])
        return cast(str, self._call("presign", lambda c: c.generate_presigned_url(
            "get_object", ExpiresIn=expires,
            Params={"Bucket": self.bucket, "Key": key,
                    "ResponseContentDisposition": f"attachment; filename=\"dsar-{name}\""})))

    def delete_uri(self, uri: str) -> None:
        key = self.key_of(uri)
        self._call("delete", lambda c: c.delete_object(Bucket=self.bucket, Key=key))

    def exists_uri(self, uri: str) -> bool:
        key = self.key_of(uri)
        try:
            self._call("head", lambda c: c.head_object(Bucket=self.bucket, Key=key))
        except NotInArchive:
            return False
        return True


_clients: dict[tuple[str, ...], Any] = {}
_clients_lock = threading.Lock()


def s3_client(settings: ArchiveSettings, env: Mapping[str, str] | None = None) -> Any:
    """A boto3 S3 client for the archive, cached per endpoint and credentials (clients are thread-safe).

    Credentials: the standard AWS_* variables of `env` when given, else boto3's default chain.
    """
    import boto3
    from botocore.config import Config

    source = os.environ if env is None else env
    region = settings.region or source.get("AWS_REGION") or source.get("AWS_DEFAULT_REGION") or "us-east-1"
    creds = {}
    if env is not None and env.get("AWS_ACCESS_KEY_ID"):
        creds = {"aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
                 "aws_secret_access_key": env.get("AWS_SECRET_ACCESS_KEY", ""),
                 "aws_session_token": env.get("AWS_SESSION_TOKEN") or None}
    fingerprint = hashlib.sha256(repr(sorted(creds.items())).encode()).hexdigest()
    cache_key = (settings.endpoint_url, region, fingerprint)
    with _clients_lock:
        if cache_key not in _clients:
            config = Config(signature_version="s3v4", retries={"mode": "standard", "max_attempts": 5},
                            connect_timeout=10, read_timeout=120,
                            s3={"addressing_style": "path" if settings.endpoint_url else "auto"})
            session = boto3.session.Session(region_name=region, **creds)  # type: ignore[arg-type]
            _clients[cache_key] = session.client("s3", endpoint_url=settings.endpoint_url or None, config=config)
        return _clients[cache_key]


def archive_store(settings: HasArchive, env: Mapping[str, str] | None = None) -> ArchiveStore:
    """The configured store: the local folder `archive.path`, or the S3 bucket `archive.bucket`."""
    a = settings.archive
    if a.store == "s3":
        return S3Store(a, s3_client(a, env))
    return LocalStore(a.path, a.prefix)


def store_for_uri(settings: HasArchive, uri: str, env: Mapping[str, str] | None = None) -> ArchiveStore:
    """The store that holds `uri`: bundles made before `archive.store` changed stay readable and expire."""
    if uri.startswith("s3://"):
        return archive_store(settings, env) if settings.archive.store == "s3" else S3Store(
            settings.archive.model_copy(update={"bucket": urlsplit(uri).netloc}), s3_client(settings.archive, env))
    return LocalStore(settings.archive.path, settings.archive.prefix)


def local_path(uri: str) -> Path:
    """The file behind a file:// URI (tests and tools that read a local archive directly)."""
    if not uri.startswith("file://"):
        raise ArchiveError(f"not a local archive URI: {uri}")
    return Path(url2pathname(urlsplit(uri).path))

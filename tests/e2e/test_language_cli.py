"""The person's language end to end: `dsar request --language nb` writes a Norwegian bundle, checked in Chromium.

Chromium is Debian's package (`/usr/bin/chromium`, installed by .ci/run), driven by Playwright; Playwright's own
browser download is never used. Locally a missing Chromium skips the browser test; with CI=true it fails it.
The screenshot is kept in the test's tmp dir and in test-artifacts/ (ignored by git).
"""

from __future__ import annotations

import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import orjson
import pytest

from sandbox.people import JANE
from tests.conftest import ROOT, _unavailable, dsar_env, run_dsar, seed_accounts, write_config

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("DSAR_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
NB_MONTHS = ("januar|februar|mars|april|mai|juni|juli|august|september|oktober|november|desember")


@pytest.fixture
def cli(tmp_path: Path) -> dict[str, Any]:
    accounts = f"sqlite:///{tmp_path / 'accounts.db'}"
    seed_accounts(accounts)
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}")
    return {"env": dsar_env(config, accounts), "tmp": tmp_path}


def bundle_for(cli: dict[str, Any], *extra: str) -> tuple[dict[str, Any], Path]:
    done = run_dsar(["request", "access", "--email", JANE.email, "--wait", "--json", *extra], cli["env"])
    assert done.returncode == 0, done.stderr
    request_id = orjson.loads(done.stdout)["id"]
    out = cli["tmp"] / f"{request_id}.zip"
    assert run_dsar(["download", request_id, "-o", str(out)], cli["env"]).returncode == 0
    folder = cli["tmp"] / request_id
    with zipfile.ZipFile(out) as zf:
        zf.extractall(folder)
    return orjson.loads((folder / "manifest.json").read_bytes()), folder / "index.html"


def test_the_language_is_chosen_per_request_and_recorded(cli: dict[str, Any]) -> None:
    manifest, page = bundle_for(cli, "--language", "nb")
    assert manifest["language"] == "nb"
    assert manifest["systems"]["accounts"]["about"]["title"] == "Kundekontoer og servere"  # the data map's nb text
    html = page.read_text(encoding="utf-8")
    assert '<html lang="nb">' in html and "Personopplysningene dine hos" in html
    assert "Postboks 458 Sentrum, 0105 Oslo" in html and "https://www.datatilsynet.no/" in html

    manifest, page = bundle_for(cli)  # no --language: the settings' default (the test config names none: en)
    assert manifest["language"] == "en" and "Your personal data at" in page.read_text(encoding="utf-8")

    bad = run_dsar(["request", "access", "--email", JANE.email, "--language", "de"], cli["env"])
    assert bad.returncode == 2 and "unknown language 'de'" in bad.stderr


def test_a_norwegian_bundle_in_chromium(cli: dict[str, Any]) -> None:
    if not Path(CHROMIUM).exists():
        _unavailable("Chromium", f"{CHROMIUM} is missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    _, page_file = bundle_for(cli, "--language", "nb")
    shot = cli["tmp"] / "bundle-nb.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(locale="nb-NO", viewport={"width": 1100, "height": 900})
            page.goto(page_file.as_uri())
            headings = page.locator("h1, h2").all_inner_texts()
            received = page.locator("tr", has_text="Mottatt").locator("td").inner_text()
            body = page.locator("body").inner_text()
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / shot.name)
    assert headings[0].startswith("Personopplysningene dine hos")
    assert {"Slik fant vi deg", "Oversikt", "Kundekontoer og servere", "Rettighetene dine", "Om denne pakken"} \
        <= set(headings)
    assert re.fullmatch(rf"\d{{1,2}}\. ({NB_MONTHS}) \d{{4}} kl\. \d\d:\d\d UTC", received), received
    assert "Your personal data" not in body and "How we found you" not in body
    assert shot.stat().st_size > 10_000

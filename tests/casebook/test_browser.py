"""One real-browser run: Debian's headless Chromium, driven by Playwright, against
`help-exchange serve` on a free port: log in, open the worklist, record a follow-up, see it."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import sync_playwright

from services.casebook import store
from services.casebook.auth import UserFile
from services.casebook.db import open_store_engine
from tests.casebook import factory as F
from tests.conftest import free_port

pytestmark = pytest.mark.integration
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SECRET = "un secret assez long"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: apt-get install chromium")
    db = f"sqlite:///{tmp_path / 'casebook.db'}"
    engine = open_store_engine(db)
    with engine.begin() as conn:
        store.apply_situations(conn, [F.situation(1, funds=("caf", "urssaf"), priority="rouge"),
                                      F.situation(2, funds=("cpam", "carsat"),
                                                  occurred_at=dt.datetime(2026, 11, 9, tzinfo=dt.UTC))])
    engine.dispose()
    UserFile(tmp_path / "users.json").add("agent.caf35", role="agent", territory="35", fund="caf",
                                          secret=SECRET)
    port = free_port()
    env = {**os.environ, "HELP_DATABASE_URL": db, "HELP_VAR_DIR": str(tmp_path / "var"),
           "HELP_CASEBOOK_USERS_FILE": str(tmp_path / "users.json")}
    env.pop("HELP_BOOTSTRAP_SERVERS", None)
    exe = Path(sys.executable).parent / "help-exchange"
    proc = subprocess.Popen([str(exe), "serve", "--host", "127.0.0.1", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/login", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read().decode() if proc.stdout and proc.poll() is not None else ""
                pytest.fail(f"help-exchange serve did not start: {out}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_log_in_open_the_worklist_record_and_see_a_followup(server: str) -> None:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(locale="fr-FR")
            page.goto(server + "/worklist?month=2026-11")
            assert page.url.endswith("/login")
            page.fill("#user_id", "agent.caf35")
            page.fill("#password", SECRET)
            page.click("button[type=submit]")
            page.goto(server + "/worklist?month=2026-11")
            assert page.locator("h1").inner_text().startswith("Revue de dossiers")
            assert page.locator("text=35-2026-11-0001").count() == 1
            assert page.locator("text=35-2026-11-0002").count() == 0  # CAF not involved
            page.click("a[href='/cases/35-2026-11-0001']")
            page.click("text=Enregistrer une suite")
            page.select_option("#fund", "caf")
            page.select_option("#action", "fsl")
            page.select_option("#outcome", "accorde")
            page.click("button:has-text('Enregistrer')")
            page.wait_for_url("**/cases/35-2026-11-0001?ok=1")
            assert "Suite enregistrée" in page.content()
            recorded = page.locator(".suite-donnee").all_inner_texts()
            assert any("Fonds de solidarité pour le logement (FSL) — Accordée" in r for r in recorded)
        finally:
            browser.close()

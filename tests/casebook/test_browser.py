"""One real-browser run: Debian's headless Chromium, driven by Playwright, against
`help-exchange serve` on a free port: log in, open the worklist, record a follow-up, see it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.security.server import SECRET, running_server

pytestmark = pytest.mark.integration
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: apt-get install chromium")
    with running_server(tmp_path) as running:
        yield running.url


def fill_followup(page: Page, outcome: str) -> None:
    page.click("text=Enregistrer une suite")
    page.select_option("#fund", "caf")
    page.select_option("#action", "fsl")
    page.select_option("#outcome", outcome)


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
            fill_followup(page, "accorde")
            page.click("button:has-text('Enregistrer')")
            page.wait_for_url("**/cases/35-2026-11-0001")
            assert "Suite enregistrée" in page.content()
            recorded = page.locator(".suite-donnee").all_inner_texts()
            assert any("Fonds de solidarité pour le logement (FSL) — Accordée" in r for r in recorded)
            # A double click on the button sends the same form twice: one follow-up more, not two.
            fill_followup(page, "propose")
            page.dblclick("button:has-text('Enregistrer')")
            page.wait_for_url("**/cases/35-2026-11-0001")
            page.goto(server + "/cases/35-2026-11-0001")
            proposed = [r for r in page.locator(".suite-donnee").all_inner_texts() if "Proposée" in r]
            assert len(proposed) == 1, proposed
            # The message is the server's: the old ?ok=1 address shows none.
            page.goto(server + "/cases/35-2026-11-0001?ok=1")
            assert "Suite enregistrée" not in page.content()
        finally:
            browser.close()

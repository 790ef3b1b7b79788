"""Real-browser runs: Debian's headless Chromium, driven by Playwright, against
`help-exchange serve` on a free port: log in, open the worklist, record a follow-up, see it;
and the monthly meeting walked through by each role, every page checked by axe-core (from
npm, tests/casebook/axe) against WCAG 2.1 A/AA, with a screenshot of each page for review
(var/screenshots, or HELP_SCREENSHOT_DIR)."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, sync_playwright
from pypdf import PdfReader

from services.casebook import store
from services.casebook.auth import UserFile
from services.casebook.model import Month
from services.casebook.records import record_meeting
from services.platform.db import open_engine
from tests.security.server import SECRET
from tests.support import situations as F
from tests.support.local import free_port
from tests.support.processes import terminate

pytestmark = pytest.mark.integration
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextlib.contextmanager
def serving(tmp_path: Path, situations: list[Any], followups: list[Any] = (),  # type: ignore[assignment]
            users: Sequence[tuple[str, str, str | None]] = (("agent.caf35", "agent", "caf"),),
            meetings: Sequence[tuple[dt.datetime, dict[str, list[str]]]] = ()) -> Iterator[str]:
    """`help-exchange serve` on a free port over a casebook holding ``situations``."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: apt-get install chromium")
    db = f"sqlite:///{tmp_path / 'casebook.db'}"
    engine = open_engine(db)
    with engine.begin() as conn:
        store.apply_situations(conn, situations)
        store.apply_followups(conn, list(followups))
    for held_at, participants in meetings:
        record_meeting(engine, territory="35", held_at=held_at, participants=participants,
                       recorded_by="secretaire.35")
    engine.dispose()
    user_file = UserFile(tmp_path / "users.json")
    for user_id, role, fund in users:
        user_file.add(user_id, role=role, territory="35", fund=fund, secret=SECRET)
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
        terminate(proc)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    with serving(tmp_path, [F.situation(1, funds=("caf", "urssaf"), priority="rouge"),
                            F.situation(2, funds=("cpam", "carsat"),
                                        occurred_at=dt.datetime(2026, 11, 9, tzinfo=dt.UTC))]) as url:
        yield url


def fill_followup(page: Page, outcome: str) -> None:
    """An agent's follow-up form: its own fund's actions only."""
    page.click("text=Enregistrer une suite")
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
            assert page.locator("#fund").count() == 0  # an agent's form is its own fund's
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


AXE = Path(__file__).resolve().parent / "axe" / "node_modules" / "axe-core" / "axe.min.js"
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
SHOTS = Path(os.environ.get("HELP_SCREENSHOT_DIR", "var/screenshots"))
AGENTS = {"caf": "agent.caf35", "cpam": "agent.cpam35", "urssaf": "agent.urssaf35", "carsat": "agent.carsat35"}
NOV = Month(2026, 11)


def check_page(page: Page, name: str, *, full_page: bool = True) -> None:
    """axe-core on the page as shown: no WCAG 2.1 A/AA violation; then a screenshot."""
    page.add_script_tag(path=str(AXE))
    violations = page.evaluate(
        "async (tags) => (await axe.run(document, {runOnly: {type: 'tag', values: tags}})).violations"
        ".map(v => ({id: v.id, impact: v.impact, help: v.help,"
        " nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}))",
        AXE_TAGS)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full_page)
    assert violations == [], f"{name}: {json.dumps(violations, ensure_ascii=False, indent=1)}"


def sign_in(page: Page, url: str, user: str) -> None:
    page.context.clear_cookies()
    page.goto(url + "/login")
    page.fill("#user_id", user)
    page.fill("#password", SECRET)
    page.click("button[type=submit]")
    page.wait_for_url("**/worklist")


def test_the_monthly_meeting_walked_by_each_role(tmp_path: Path) -> None:
    if not AXE.exists():
        pytest.fail("axe-core is not installed: npm ci --prefix tests/casebook/axe (make test does it)")
    cases = F.month_of_cases(146, NOV, seed=18, start=1)
    followups = [F.followup(n, "caf", "fsl", recorded_at=dt.datetime(2026, 11, 20, tzinfo=dt.UTC))
                 for n, c in enumerate(cases[:30], start=1) if any(f.value == "caf" for f in c.funds)]
    users = [("secretaire.35", "secretaire_seance", None), ("auditeur.35", "auditeur", None),
             *((user, "agent", fund) for fund, user in AGENTS.items())]
    october = (dt.datetime(2026, 10, 14, 9, tzinfo=dt.UTC), {"caf": ["agent.caf35"], "cpam": ["agent.cpam35"]})
    with serving(tmp_path, cases, followups, users, [october]) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            # axe is injected into pages whose CSP allows no script: the test bypasses the CSP
            page = browser.new_context(locale="fr-FR", bypass_csp=True,
                                       viewport={"width": 1280, "height": 900}).new_page()
            page.goto(url + "/login")
            check_page(page, "01-connexion")
            # the checker does check: an image without a text alternative is a violation
            page.evaluate("document.querySelector('main').insertAdjacentHTML('beforeend', '<img src=\\'/x.png\\'>')")
            with pytest.raises(AssertionError, match="image-alt"):
                check_page(page, "00-controle-du-verificateur")
            page.goto(url + "/login")
            # --- the secretary opens the month
            sign_in(page, url, "secretaire.35")
            page.goto(url + "/worklist?month=2026-11")
            assert "ne pas projeter" in page.content() and "Depuis la réunion du 14/10/2026" in page.content()
            check_page(page, "02-secretaire-liste-consolidee", full_page=False)
            page.click("text=Vue de projection")
            assert "Vue de projection" in page.content()
            check_page(page, "03-secretaire-vue-de-projection", full_page=False)
            # --- records a decision
            first = page.locator("table.fr-sheet tbody a").first.inner_text()
            page.click(f"a[href='/cases/{first}']")
            check_page(page, "04-dossier")
            page.click("text=Enregistrer une suite")
            check_page(page, "05-suite-choix-organisme")
            lead = page.locator("#fund option").first.get_attribute("value")
            page.select_option("#fund", lead)
            page.click("text=Choisir cet organisme")
            check_page(page, "06-suite-formulaire")
            options = page.locator("#action option").evaluate_all("els => els.map(e => e.value)")
            assert (options and "echeancier_paiement" not in options) or lead == "urssaf"
            page.select_option("#action", options[0])
            page.select_option("#outcome", "propose")
            page.click("button:has-text('Enregistrer')")
            page.wait_for_url(f"**/cases/{first}")
            assert "Suite enregistrée" in page.content()
            # --- the meeting itself: recorded with its participants by fund
            page.goto(url + "/meetings")
            page.fill("#held_on", "2026-11-25")
            for fund, user in AGENTS.items():
                page.fill(f"#participants_{fund}", user)
            page.click("text=Enregistrer la réunion")
            page.wait_for_url("**/meetings")
            assert "Réunion enregistrée" in page.content()
            check_page(page, "07-reunions")
            # --- prints: the sheet on at most 25 A4 pages
            page.goto(url + "/worklist?month=2026-11")
            assert page.locator("table.fr-sheet tbody tr").count() == 146
            page.emulate_media(media="print")
            sheet = page.pdf(prefer_css_page_size=True)
            page.emulate_media(media="screen")
            printed = PdfReader(io.BytesIO(sheet))
            assert 1 < len(printed.pages) <= 25, f"146 cases printed on {len(printed.pages)} pages"
            assert "Décision et notes" in printed.pages[0].extract_text()
            assert f"Page 1 / {len(printed.pages)}" in printed.pages[0].extract_text()  # @page margin box
            (SHOTS / "08-impression-liste.pdf").write_bytes(sheet)
            minutes = httpx.get(url + "/worklist/export?month=2026-11&format=pdf",
                                cookies={c["name"]: c["value"] for c in page.context.cookies()}, timeout=30)
            pv = PdfReader(io.BytesIO(minutes.content))
            assert "agent.urssaf35" in pv.pages[0].extract_text()  # the month's participants
            assert all(f"Page {i} / {len(pv.pages)}" in p.extract_text() for i, p in enumerate(pv.pages, start=1))
            (SHOTS / "09-proces-verbal.pdf").write_bytes(minutes.content)
            # --- each fund's agent: that fund's view only
            for fund, user in AGENTS.items():
                sign_in(page, url, user)
                page.goto(url + "/worklist?month=2026-11")
                html = page.content()
                assert "vue de l'organisme" in html
                others = [f for f in AGENTS if f != fund]
                assert not any(f"title=\"scelle:{f}-seal" in html for f in others), fund
                check_page(page, f"10-agent-{fund}", full_page=False)
            # --- the auditor: the statistics
            sign_in(page, url, "auditeur.35")
            page.goto(url + "/statistics?month=2026-11")
            assert "Secret statistique" in page.content() and "Situations ouvertes" in page.content()
            check_page(page, "11-auditeur-statistiques")
            page.goto(url + "/worklist?month=2026-11")
            assert "Vue de projection" in page.content()
            check_page(page, "12-auditeur-liste", full_page=False)
        finally:
            browser.close()

"""Forms (issue 17, item 4) on the running server: a message after a redirect is kept
server-side (``?ok=1`` makes none up), and the follow-up form's one-time token makes a double
submit, sequential or simultaneous, record one follow-up; a token does not cross sessions."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from services.casebook import tables
from tests.security.server import CSRF, Server, running_server
from tests.suite_summary import count

pytestmark = pytest.mark.integration
FORM_TOKEN = re.compile(r'name="form_token" value="([^"]+)"')
FOLLOWUP = {"fund": "caf", "action": "fsl", "outcome": "accorde"}


def followups(server: Server) -> int:
    engine = sa.create_engine(f"sqlite:///{server.root / 'casebook.db'}")
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(tables.followups)).scalar_one())
    finally:
        engine.dispose()


def open_form(client: httpx.Client, case: str) -> dict[str, str]:
    # the fund first (a secretary's form offers one fund's actions at a time)
    page = client.get(f"/cases/{case}/followup", params={"fund": FOLLOWUP["fund"]}).text
    return {**FOLLOWUP, "csrf_token": CSRF.search(page).group(1),  # type: ignore[union-attr]
            "form_token": FORM_TOKEN.search(page).group(1)}  # type: ignore[union-attr]


def test_messages_are_kept_server_side_and_shown_once(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        client = server.login("secretaire.35")
        case = server.cases[0]
        count("attacks_tried")
        assert "Suite enregistrée" not in client.get(f"/cases/{case}?ok=1").text  # nothing was recorded
        done = client.post(f"/cases/{case}/followup", data=open_form(client, case))
        assert done.status_code == 303 and done.headers["location"] == f"/cases/{case}"
        assert "Suite enregistrée." in client.get(f"/cases/{case}").text
        assert "Suite enregistrée." not in client.get(f"/cases/{case}").text  # shown once
        other = server.login("auditeur.35")  # another session never sees it
        assert "Suite enregistrée." not in other.get(f"/cases/{case}?ok=1").text


def test_a_double_submit_records_one_followup(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        client = server.login("agent.caf35")
        case = server.cases[0]
        form = open_form(client, case)
        first = client.post(f"/cases/{case}/followup", data=form)
        count("attacks_tried")
        second = client.post(f"/cases/{case}/followup", data=form)
        assert first.status_code == 303 and second.status_code == 303
        assert "déjà été envoyé" in client.get(f"/cases/{case}").text
        assert followups(server) == 1

        # Ten submits of one form at once: one follow-up.
        form = open_form(client, case)
        codes: list[int] = []

        def submit() -> None:
            with httpx.Client(base_url=server.url, cookies=client.cookies, timeout=30) as c:
                codes.append(c.post(f"/cases/{case}/followup", data=form).status_code)

        threads = [threading.Thread(target=submit) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        count("attacks_tried", 10)
        assert codes == [303] * 10
        assert followups(server) == 2

        # A token does not cross sessions: the secretary replays the agent's form.
        form = open_form(client, case)
        secretary = server.login("secretaire.35")
        token = CSRF.search(secretary.get(f"/cases/{case}").text).group(1)  # type: ignore[union-attr]
        count("attacks_tried")
        refused = secretary.post(f"/cases/{case}/followup", data={**form, "csrf_token": token})
        assert refused.status_code == 303 and followups(server) == 2
        # …and without any token nothing is recorded either.
        assert secretary.post(f"/cases/{case}/followup", data={**FOLLOWUP, "csrf_token": token}).status_code == 303
        assert followups(server) == 2
        assert client.post(f"/cases/{case}/followup", data=form).status_code == 303  # its own session: recorded
        assert followups(server) == 3


def test_cross_site_forms_are_refused_on_the_running_server(tmp_path: Path) -> None:
    """CSRF: a form posted from elsewhere carries no valid token (the cookie is SameSite=Strict
    too, but the token alone must suffice): the login, the follow-up and the logout refuse it."""
    with running_server(tmp_path) as server:
        anonymous = server.client()
        anonymous.get("/login")
        count("attacks_tried", 6)
        assert anonymous.post("/login", data={"user_id": "agent.caf35", "password": "un secret assez long"}
                              ).status_code == 403
        assert anonymous.post("/login", data={"user_id": "agent.caf35", "password": "un secret assez long",
                                              "csrf_token": "x" * 32}).status_code == 403
        client = server.login("agent.caf35")
        case = server.cases[0]
        form = open_form(client, case)
        other = server.login("secretaire.35")  # a token of another session is no good either
        other_token = CSRF.search(other.get(f"/cases/{case}").text).group(1)  # type: ignore[union-attr]
        for token in ("", "x" * 32, other_token):
            assert client.post(f"/cases/{case}/followup", data={**form, "csrf_token": token}).status_code == 403
        assert followups(server) == 0
        assert client.post("/logout", data={"csrf_token": "x" * 32}).status_code == 403
        assert client.get(f"/cases/{case}").status_code == 200  # still signed in
        # the untouched form still goes through once
        assert client.post(f"/cases/{case}/followup", data=form).status_code == 303 and followups(server) == 1

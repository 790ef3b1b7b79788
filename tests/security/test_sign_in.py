"""Sign-in that holds against attack (issue 17, item 1), tried on the running server over
real HTTP: brute force (the right password after 30 wrong ones is refused), growing delays
and a temporary lock per account and per client address, every attempt in a log the auditors
read (web page and CLI), a session cookie replayed after logout or past its idle time is
worth nothing, a cookie planted before sign-in is not adopted, a cross-site logout is refused;
passwords: a strength estimator, never on the command line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.security.server import SECRET, Server, csrf_of, running_server, sign_in
from tests.suite_summary import count

pytestmark = pytest.mark.integration
EXE = Path(sys.executable).parent / "help-exchange"


def cli(server: Server, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EXE), *args], env=server.env, cwd=server.root, input=stdin, capture_output=True,
                          text=True, timeout=120)


def test_thirty_wrong_passwords_then_the_right_one_is_refused_and_all_are_logged(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        client = server.client()
        codes = [sign_in(client, "agent.caf35", f"mauvais-{i}").status_code for i in range(30)]
        right = sign_in(client, "agent.caf35", SECRET)
        count("attacks_tried", 31)
        assert right.status_code == 429 and "help_session" not in right.headers.get("set-cookie", ""), (
            right.status_code)
        assert int(right.headers["retry-after"]) >= 1 and "réessayez" in right.text.lower()
        assert codes[:3] == [401, 401, 401] and set(codes[3:]) == {429}, codes  # delays from the 4th
        # the auditor reads every attempt: who, when, from where, outcome
        auditor = server.login("auditeur.35")
        page = auditor.get("/audit/connexions", params={"user_id": "agent.caf35"}).text
        assert page.count("connexion--echec") == 3 and page.count("connexion--limite") == 28, page[-3000:]
        assert "127.0.0.1" in page
        assert "connexion--succes" in auditor.get("/audit/connexions", params={"user_id": "auditeur.35"}).text
        assert server.login("secretaire.35").get("/audit/connexions").status_code == 404  # auditors only
        listing = cli(server, "users", "sign-ins", "--user", "agent.caf35", "--limit", "1000")
        assert listing.returncode == 0, listing.stderr
        lines = listing.stdout.splitlines()
        assert len(lines) == 31 and all("127.0.0.1" in line for line in lines)
        assert sum(line.endswith(" echec") for line in lines) == 3
        assert sum(line.endswith(" limite") for line in lines) == 28


def test_delays_grow_then_the_account_is_locked_for_a_while(tmp_path: Path) -> None:
    env = {"HELP_CASEBOOK_SIGNIN_DELAY_AFTER": "2", "HELP_CASEBOOK_SIGNIN_LOCKOUT_FAILURES": "4",
           "HELP_CASEBOOK_SIGNIN_LOCKOUT_S": "10"}
    with running_server(tmp_path, extra_env=env) as server:
        client = server.client()
        assert sign_in(client, "agent.caf35", "mauvais-1").status_code == 401
        assert sign_in(client, "agent.caf35", "mauvais-2").status_code == 401
        waits = []
        for expected_wait in (1, 2):
            early = sign_in(client, "agent.caf35", SECRET)  # too early: refused unchecked
            assert early.status_code == 429, early.status_code
            waits.append(int(early.headers["retry-after"]))
            assert waits[-1] <= expected_wait
            time.sleep(expected_wait + 0.2)
            assert sign_in(client, "agent.caf35", f"mauvais-{expected_wait + 2}").status_code == 401
        count("attacks_tried", 5)
        locked = sign_in(client, "agent.caf35", SECRET)  # 4 failures: locked, the right password too
        assert locked.status_code == 429 and "verrouillé" in locked.text, locked.status_code
        assert 8 <= int(locked.headers["retry-after"]) <= 10
        assert sign_in(client, "secretaire.35", SECRET).status_code == 303  # another account is not locked
        time.sleep(int(locked.headers["retry-after"]) + 0.5)
        assert sign_in(server.client(), "agent.caf35", SECRET).status_code == 303  # the lock ends


def test_spraying_many_accounts_from_one_address_is_throttled(tmp_path: Path) -> None:
    env = {"HELP_CASEBOOK_SIGNIN_DELAY_AFTER": "2", "HELP_CASEBOOK_SIGNIN_LOCKOUT_FAILURES": "100"}
    with running_server(tmp_path, extra_env=env) as server:
        client = server.client()
        # one failure per account: no account reaches its limit, the address does (3 x 2 = 6)
        codes = [sign_in(client, f"agent.inconnu{i}", "mauvais").status_code for i in range(8)]
        count("attacks_tried", 8)
        assert codes[:6] == [401] * 6 and codes[6:] == [429, 429], codes
        assert sign_in(client, "secretaire.35", SECRET).status_code == 429  # from this address, for now


def test_a_session_replayed_after_logout_or_idle_time_is_worth_nothing(tmp_path: Path) -> None:
    with running_server(tmp_path, extra_env={"HELP_CASEBOOK_SESSION_IDLE_S": "5"}) as server:
        client = server.login("agent.caf35")
        stolen = client.cookies["help_session"]
        assert client.get("/worklist?month=2026-11").status_code == 200
        token = csrf_of(client.get("/worklist?month=2026-11").text)
        # a cross-site logout (no CSRF token) is refused and ends nothing
        count("attacks_tried")
        assert client.post("/logout", data={}).status_code == 403
        assert client.get("/worklist?month=2026-11").status_code == 200
        assert client.post("/logout", data={"csrf_token": token}).status_code == 303
        replay = httpx.Client(base_url=server.url, cookies={"help_session": stolen}, follow_redirects=False)
        count("attacks_tried", 2)
        gone = replay.get("/worklist?month=2026-11")
        assert gone.status_code == 303 and gone.headers["location"] == "/login"
        assert replay.get("/worklist/export?month=2026-11&format=csv").status_code == 303
        # idle time: used every 2 s it lives on; left 6 s it is over
        idle = server.login("agent.caf35")
        for _ in range(4):
            time.sleep(2)
            assert idle.get("/worklist?month=2026-11").status_code == 200
        time.sleep(6)
        count("attacks_tried")
        assert idle.get("/worklist?month=2026-11").status_code == 303


def test_a_cookie_planted_before_sign_in_is_not_adopted(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        planted = "fixe-par-un-attaquant-" + "x" * 20
        client = httpx.Client(base_url=server.url, follow_redirects=False, cookies={"help_session": planted})
        signed = sign_in(client, "agent.caf35", SECRET)
        assert signed.status_code == 303 and signed.cookies["help_session"] != planted
        count("attacks_tried")
        attacker = httpx.Client(base_url=server.url, follow_redirects=False, cookies={"help_session": planted})
        assert attacker.get("/worklist?month=2026-11").status_code == 303
        # two sign-ins, two different sessions
        again = server.login("agent.caf35")
        assert again.cookies["help_session"] != signed.cookies["help_session"]


def test_passwords_are_estimated_and_never_taken_from_the_command_line(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        base = ("users", "add", "--id", "agent.cpam35", "--role", "agent", "--territory", "35", "--fund", "cpam")
        for weak in ("aaaaaaaaaaaa", "azertyuiop123", "motdepasse2026", "agent.cpam35-agent.cpam35", "123456789012"):
            count("attacks_tried")
            done = cli(server, *base, "--password-stdin", stdin=weak + "\n")
            assert done.returncode == 2 and "trop" in done.stderr and "how to fix:" in done.stderr, (weak, done)
        given = cli(server, *base, "--password", "Cheval-Agrafe-Pile-7-Turquoise")
        assert given.returncode == 2 and "No such option" in given.stderr
        done = cli(server, *base, "--password-stdin", stdin="Cheval-Agrafe-Pile-7-Turquoise\n")
        assert done.returncode == 0, done.stderr
        # asked twice at the prompt when not given on stdin; two different answers are refused
        prompted = cli(server, *base, stdin="Cheval-Agrafe-Pile-7-Turquoise\nautre-chose-encore\n")
        assert prompted.returncode != 0 and "Traceback" not in prompted.stderr
        assert sign_in(server.client(), "agent.cpam35", "Cheval-Agrafe-Pile-7-Turquoise").status_code == 303
        assert os.stat(server.root / "users.json").st_mode & 0o077 == 0

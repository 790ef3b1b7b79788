"""Safe defaults (issue 17, item 5), on the running server and the real command line: no
/docs nor /redoc, /openapi.json for signed-in auditors only, no page loading anything from
elsewhere; every file and folder a command creates is the owner's only (0600/0700, the
process umask set at start); ``Secure`` cookies and HSTS unless bound to loopback; no
``server`` banner."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.security.server import running_server
from tests.suite_summary import count

pytestmark = pytest.mark.integration
EXE = Path(sys.executable).parent / "help-exchange"


def test_no_docs_and_the_openapi_description_for_auditors_only(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        anonymous = server.client()
        for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
            count("attacks_tried")
            assert anonymous.get(path).status_code == 404, path
        count("attacks_tried", 3)
        assert anonymous.get("/openapi.json").headers.get("location") == "/login"
        agent = server.login("agent.caf35")
        assert agent.get("/openapi.json").status_code == 404
        secretary = server.login("secretaire.35")
        assert secretary.get("/openapi.json").status_code == 404
        auditor = server.login("auditeur.35")
        description = auditor.get("/openapi.json")
        assert description.status_code == 200 and description.json()["info"]["title"].startswith("HELP")
        # Nothing a page loads comes from elsewhere (the CSP says so too: default-src 'none').
        for path in ("/login", "/worklist?month=2026-11", f"/cases/{server.cases[0]}",
                     f"/cases/{server.cases[0]}/followup"):
            client = anonymous if path == "/login" else server.login("secretaire.35")
            page = client.get(path)
            assert page.status_code == 200, (path, page.status_code)
            external = re.findall(r'(?:src|href)\s*=\s*"(?:https?:)?//[^"]*"', page.text)
            assert external == [], (path, external)
            assert "default-src 'none'" in page.headers["content-security-policy"]
            assert "server" not in page.headers, page.headers.get("server")


def test_loopback_cookies_are_plain_and_others_secure_with_hsts(tmp_path: Path) -> None:
    with running_server(tmp_path / "loopback") as server:
        page = httpx.get(server.url + "/login")
        assert "secure" not in page.headers["set-cookie"].lower()
        assert "strict-transport-security" not in page.headers
        assert "server" not in page.headers
    with running_server(tmp_path / "all", host="0.0.0.0") as server:
        page = httpx.get(server.url + "/login")
        count("attacks_tried")
        cookie = page.headers["set-cookie"].lower()
        assert "; secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie, cookie
        assert page.headers["strict-transport-security"].startswith("max-age=31536000")
        assert "server" not in page.headers
    with running_server(tmp_path / "bench", host="0.0.0.0",
                        extra_env={"HELP_CASEBOOK_SECURE_COOKIES": "false"}) as server:
        page = httpx.get(server.url + "/login")
        assert "secure" not in page.headers["set-cookie"].lower()  # the setting has the last word


def modes(root: Path) -> dict[str, int]:
    found: dict[str, int] = {}
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(folder) / name
            found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def test_files_and_folders_the_commands_create_are_the_owners_only(tmp_path: Path) -> None:
    """The commands run as a user would run them, under a permissive umask (022): databases,
    folders, keys, exports, extracts, the users file are 0600/0700 all the same."""
    root = tmp_path / "work"
    root.mkdir()
    env = {**os.environ, "HELP_VAR_DIR": str(root / "var"), "HELP_KEY_DIR": str(root / "var" / "keys"),
           "HELP_DATABASE_URL": f"sqlite:///{root / 'var' / 'db' / 'casebook.db'}"}
    env.pop("HELP_BOOTSTRAP_SERVERS", None)

    def run(*args: str, stdin: str = "") -> None:
        done = subprocess.run([str(EXE), *args], env=env, cwd=root, input=stdin.encode(), capture_output=True,
                              timeout=120, preexec_fn=lambda: os.umask(0o022))
        assert done.returncode == 0, (args, done.stdout.decode(), done.stderr.decode())

    made_here = {"var", "var/db", "exports"}
    for folder in made_here:
        (root / folder).mkdir(parents=True, exist_ok=True)
    run("casebook", "migrate")
    run("worklist", "--month", "2026-11", "--territory", "35", "--format", "csv", "--out",
        str(root / "exports" / "revue.csv"))
    run("audit", "export", "--period", "2026-11", "--out", str(root / "exports" / "journal.jsonl"))
    run("keys", "init", "--fund", "caf")
    run("users", "add", "--id", "agent.caf35", "--role", "agent", "--territory", "35", "--fund", "caf",
        "--password-stdin", stdin="Cheval-Agrafe-Pile-7-Turquoise\n")
    found = modes(root)
    assert any(p.endswith("casebook.db") for p in found) and any(p.endswith("revue.csv") for p in found)
    assert any(p.endswith("users.json") for p in found)
    loose = {p: oct(m) for p, m in found.items()
             if not p.endswith(".pub.json") and m & 0o077 and p not in made_here}
    count("attacks_tried")
    assert loose == {}, f"readable by others: {loose}"

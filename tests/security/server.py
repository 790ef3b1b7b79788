"""``help-exchange serve`` started for real (subprocess, free loopback port) on a small casebook
with one user per role, for the tests that attack the running web view over HTTP."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.casebook import store
from services.casebook.auth import UserFile
from services.platform.db import open_engine
from tests.support import situations as F
from tests.support.local import free_port
from tests.support.processes import terminate

SECRET = "un secret assez long"
USERS = {"agent.caf35": ("agent", "35", "caf"), "secretaire.35": ("secretaire_seance", "35", None),
         "auditeur.35": ("auditeur", "35", None)}
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Server:
    url: str
    root: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    cases: list[str] = field(default_factory=list)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, follow_redirects=False, timeout=30)

    def login(self, user: str, secret: str = SECRET, client: httpx.Client | None = None) -> httpx.Client:
        """A client signed in as ``user`` (the login form, its CSRF token, the session cookie)."""
        client = client or self.client()
        response = sign_in(client, user, secret)
        assert response.status_code == 303, (response.status_code, response.text[:300])
        return client

    def log(self) -> str:
        return (self.root / "serve.log").read_text(encoding="utf-8", errors="replace")


def sign_in(client: httpx.Client, user: str, secret: str) -> httpx.Response:
    token = csrf_of(client.get("/login").text)
    return client.post("/login", data={"user_id": user, "password": secret, "csrf_token": token})


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match, html[:500]
    return match.group(1)


@contextlib.contextmanager
def running_server(root: Path, *, host: str = "127.0.0.1", extra_env: dict[str, str] | None = None,
                   args: tuple[str, ...] = (), port: int | None = None) -> Iterator[Server]:
    """A casebook of two situations of territory 35 (numbers in ``Server.cases``), the users of
    :data:`USERS`, and ``help-exchange serve`` on a free port until the block ends."""
    root.mkdir(parents=True, exist_ok=True)
    db = f"sqlite:///{root / 'casebook.db'}"
    engine = open_engine(db)
    with engine.begin() as conn:
        store.apply_situations(conn, [F.situation(1, funds=("caf", "urssaf"), priority="rouge"),
                                      F.situation(2, funds=("cpam", "carsat"),
                                                  occurred_at=dt.datetime(2026, 11, 9, tzinfo=dt.UTC))])
    engine.dispose()
    users = UserFile(root / "users.json")
    for uid, (role, territory, fund) in USERS.items():
        users.add(uid, role=role, territory=territory, fund=fund, secret=SECRET)
    port = port or free_port()
    env = {**os.environ, "HELP_DATABASE_URL": db, "HELP_VAR_DIR": str(root / "var"),
           "HELP_KEY_DIR": str(root / "var" / "keys"), "HELP_CASEBOOK_USERS_FILE": str(root / "users.json"),
           **(extra_env or {})}
    env.pop("HELP_BOOTSTRAP_SERVERS", None)
    exe = Path(sys.executable).parent / "help-exchange"
    log = (root / "serve.log").open("wb")
    proc = subprocess.Popen([str(exe), "serve", "--host", host, "--port", str(port), *args], env=env,
                            stdout=log, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    server = Server(url, root, env, proc, ["35-2026-11-0001", "35-2026-11-0002"])
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/login", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"help-exchange serve did not start: {server.log()}")
            time.sleep(0.2)
        yield server
    finally:
        terminate(proc)
        log.close()

"""A real OpenID Provider for the tests: the certified ``oidc-provider`` package from npm
(tests/oidc/provider, installed by ``make test``), started with ``node`` on a free port."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.local import REPO, free_port
from tests.support.processes import terminate

PROVIDER_DIR = REPO / "tests" / "oidc" / "provider"
CLIENT_ID = "help-revue"
CLIENT_SECRET = "secret-du-client-help-revue-pour-les-tests"
OTHER_CLIENT_ID = "autre-service"
OTHER_SECRET = "secret-d-un-autre-service-pour-les-tests"
ACCOUNTS: dict[str, dict[str, Any]] = {
    "agent-caf": {"siret": "21350001800013", "departement": "35", "groupes": ["help-agents"]},
    "auditrice": {"departement": "35", "groupes": ["autre-groupe", "help-auditeurs"]},
    "sans-role": {"departement": "35", "groupes": ["autre-groupe"]},
    "hors-echange": {"siret": "99999999999999", "departement": "35", "groupes": ["help-agents"]},
}
MAPPING = """user_id_prefix: proconnect
role: {claim: groupes, values: {help-agents: agent, help-secretaires: secretaire_seance, help-auditeurs: auditeur}}
fund: {claim: siret, values: {"21350001800013": caf, "18350001300016": cpam}}
territory: {claim: departement}
"""
FORM_ACTION = re.compile(r'<form[^>]*action="([^"]+)"')


@dataclass
class Provider:
    issuer: str
    proc: subprocess.Popen[bytes]

    def rp_env(self, root: Path, redirect_uri: str) -> dict[str, str]:
        """The HELP_CASEBOOK_OIDC_* settings of the web view, for this provider."""
        mapping = root / "oidc-mapping.yaml"
        mapping.parent.mkdir(parents=True, exist_ok=True)
        mapping.write_text(MAPPING, encoding="utf-8")
        return {"HELP_CASEBOOK_OIDC_ISSUER": self.issuer, "HELP_CASEBOOK_OIDC_CLIENT_ID": CLIENT_ID,
                "HELP_CASEBOOK_OIDC_CLIENT_SECRET": CLIENT_SECRET, "HELP_CASEBOOK_OIDC_REDIRECT_URI": redirect_uri,
                "HELP_CASEBOOK_OIDC_SCOPES": "openid organisation", "HELP_CASEBOOK_OIDC_MAPPING": str(mapping)}


@contextlib.contextmanager
def oidc_provider(log: Path, redirect_uri: str) -> Iterator[Provider]:
    if not (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
        raise AssertionError(f"oidc-provider is not installed: npm ci --prefix {PROVIDER_DIR} (make test does)")
    port = free_port()
    clients = [{"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "redirect_uris": [redirect_uri]},
               {"client_id": OTHER_CLIENT_ID, "client_secret": OTHER_SECRET,
                "redirect_uris": ["http://127.0.0.1:9/login/oidc/callback"]}]
    env = {**os.environ, "PORT": str(port), "OIDC_CLIENTS": json.dumps(clients), "OIDC_ACCOUNTS": json.dumps(ACCOUNTS)}
    out = log.open("wb")
    proc = subprocess.Popen(["node", str(PROVIDER_DIR / "provider.mjs")], env=env, stdout=out, stderr=subprocess.STDOUT)
    issuer = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(issuer + "/.well-known/openid-configuration", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the OpenID Provider did not start: " + log.read_text(errors="replace"))
            time.sleep(0.2)
        yield Provider(issuer, proc)
    finally:
        terminate(proc)
        out.close()


def sign_in_at_provider(client: httpx.Client, authorization_url: str, account: str, stop_at: str) -> str:
    """Go through the provider's own sign-in and consent pages (its development forms) as
    ``account``; the URL it sends the browser back to (starting with ``stop_at``)."""
    url = authorization_url
    for _ in range(20):
        response = client.get(url)
        if response.status_code in (302, 303):
            url = urllib.parse.urljoin(url, response.headers["location"])
            if url.startswith(stop_at):
                return url
            continue
        assert response.status_code == 200, (url, response.status_code, response.text[:300])
        action = urllib.parse.urljoin(url, FORM_ACTION.search(response.text).group(1))  # type: ignore[union-attr]
        form = ({"prompt": "login", "login": account, "password": "sans-importance"} if 'name="login"' in response.text
                else {"prompt": "consent"})
        posted = client.post(action, data=form)
        assert posted.status_code in (302, 303), (action, posted.status_code, posted.text[:300])
        url = urllib.parse.urljoin(action, posted.headers["location"])
        if url.startswith(stop_at):
            return url
    raise AssertionError("the provider never sent the browser back")

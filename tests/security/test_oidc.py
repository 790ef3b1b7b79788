"""OpenID Connect sign-in (issue 17, item 2) against a real OpenID Provider started by the
tests (the certified ``oidc-provider`` from npm, set up like ProConnect: code + PKCE S256,
nonce, state, signed ID tokens, discovery), with ``help-exchange serve`` running for real:
roles, fund and territory from the claims as the mapping file says; then the attacks: a
replayed code, a replayed callback, a forged state, a forged or tampered ID token, one for
another client (wrong audience), an expired one, one with another sign-in's nonce, ``none``
and HMAC algorithms; and one run in Chromium."""

from __future__ import annotations

import base64
import hmac
import json
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from playwright.sync_api import sync_playwright

from services.casebook.oidc import Attempt, OidcClient, SignInRefused
from services.platform.settings import load_settings
from tests.security.oidc_provider import (
    CLIENT_ID,
    CLIENT_SECRET,
    OTHER_CLIENT_ID,
    OTHER_SECRET,
    Provider,
    oidc_provider,
    sign_in_at_provider,
)
from tests.security.server import Server, running_server
from tests.suite_summary import count
from tests.support.local import free_port

pytestmark = pytest.mark.integration
CHROMIUM = "/usr/bin/chromium"


@dataclass
class Both:
    provider: Provider
    server: Server
    callback: str

    def sign_in(self, account: str, client: httpx.Client | None = None) -> tuple[httpx.Client, str]:
        """Start at the web view's button, sign in at the provider: the client and the callback URL."""
        client = client or self.server.client()
        start = client.get("/login/oidc")
        assert start.status_code == 303, start.status_code
        return client, sign_in_at_provider(client, start.headers["location"], account, self.callback)


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Both]:
    root = tmp_path_factory.mktemp("oidc")
    port = free_port()
    callback = f"http://127.0.0.1:{port}/login/oidc/callback"
    with oidc_provider(root / "provider.log", callback) as provider, \
            running_server(root / "serve", port=port, extra_env=provider.rp_env(root, callback)) as server:
        yield Both(provider, server, callback)


def test_sign_in_through_the_provider_takes_role_fund_and_territory_from_the_claims(both: Both) -> None:
    login_page = both.server.client().get("/login").text
    assert 'href="/login/oidc"' in login_page and "ProConnect" in login_page
    client, back = both.sign_in("agent-caf")
    params = urllib.parse.parse_qs(urllib.parse.urlsplit(back).query)
    assert set(params) >= {"code", "state"}
    landed = client.get(back)
    assert landed.status_code == 200 and 'url=/worklist' in landed.text
    cookie = landed.headers["set-cookie"]
    assert "help_session=" in cookie and "samesite=strict" in cookie.lower()
    page = client.get("/worklist?month=2026-11")
    assert page.status_code == 200 and "Agent" in page.text and "(CAF)" in page.text and "territoire 35" in page.text
    assert client.get(f"/cases/{both.server.cases[0]}").status_code == 200  # CAF is involved
    assert client.get(f"/cases/{both.server.cases[1]}").status_code == 404  # CPAM and Carsat only
    assert client.get(f"/cases/{both.server.cases[0]}/followup").status_code == 200  # an agent records
    auditor, back = both.sign_in("auditrice")
    assert auditor.get(back).status_code == 200
    log = auditor.get("/audit/connexions").text  # groups: the first one the mapping knows
    assert log.count("connexion--succes") >= 2 and "proconnect." in log
    assert auditor.get(f"/cases/{both.server.cases[0]}/followup").status_code == 403  # auditors read only


def test_claims_the_mapping_does_not_know_are_refused(both: Both) -> None:
    for account, reason in (("sans-role", "pas de rôle"), ("hors-echange", "organisme ne participe pas")):
        client, back = both.sign_in(account)
        refused = client.get(back)
        count("attacks_tried")
        assert refused.status_code == 401 and reason in refused.text, (account, refused.status_code)
        assert client.get("/worklist").status_code == 303


def test_a_replayed_code_or_callback_and_a_forged_state_are_refused(both: Both) -> None:
    client, back = both.sign_in("agent-caf")
    assert client.get(back).status_code == 200
    count("attacks_tried", 4)
    # the same callback again: its one-time attempt is gone
    again = client.get(back)
    assert again.status_code == 400 and "recommencez" in again.text
    # someone else's browser with the stolen callback URL
    stranger = both.server.client()
    assert stranger.get(back).status_code == 400
    assert stranger.get("/worklist").status_code == 303
    # the code once more, with a new attempt's state: the provider refuses to exchange it twice
    start = stranger.get("/login/oidc")
    fresh_state = urllib.parse.parse_qs(urllib.parse.urlsplit(start.headers["location"]).query)["state"][0]
    code = urllib.parse.parse_qs(urllib.parse.urlsplit(back).query)["code"][0]
    replay = stranger.get("/login/oidc/callback", params={"code": code, "state": fresh_state})
    assert replay.status_code == 401 and "déjà utilisé" in replay.text, replay.text[:500]
    assert stranger.get("/worklist").status_code == 303
    # a callback whose state is not this browser's (login CSRF)
    victim, back = both.sign_in("agent-caf")
    forged = back.replace("state=", "state=x")
    assert victim.get(forged).status_code == 400
    assert victim.get("/worklist").status_code == 303


def genuine_token(both: Both, client_id: str, secret: str, redirect: str) -> tuple[OidcClient, Attempt, str]:
    """A real ID token the provider issued to ``client_id`` through the whole flow."""
    settings = load_settings(casebook_oidc_issuer=both.provider.issuer, casebook_oidc_client_id=client_id,
                             casebook_oidc_client_secret=secret, casebook_oidc_redirect_uri=redirect,
                             casebook_oidc_scopes="openid organisation",
                             casebook_oidc_mapping=both.server.root.parent / "oidc-mapping.yaml")
    rp = OidcClient(settings)
    attempt = Attempt()
    with httpx.Client(follow_redirects=False, timeout=30) as browser:
        back = sign_in_at_provider(browser, rp.authorization_url(attempt), "agent-caf", redirect)
    code = urllib.parse.parse_qs(urllib.parse.urlsplit(back).query)["code"][0]
    return rp, attempt, str(rp.exchange(code, attempt)["id_token"])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hmac_signed(payload: dict[str, object], kid: str, key: bytes) -> str:
    """The algorithm-confusion forgery: HS256 with the provider's public key as the secret."""
    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'kid': kid}).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(hmac.new(key, signing_input.encode(), 'sha256').digest())}"


def test_forged_tampered_foreign_expired_and_replayed_id_tokens_are_refused(both: Both) -> None:
    rp, attempt, raw = genuine_token(both, CLIENT_ID, CLIENT_SECRET, both.callback)
    claims = rp.verify(raw, attempt.nonce)  # the genuine one passes (so each refusal below can fail)
    assert claims["aud"] == "help-revue" and "siret" not in claims  # the rest comes from userinfo
    header_b64, payload_b64, signature_b64 = raw.split(".")
    header = json.loads(base64.urlsafe_b64decode(header_b64 + "=="))
    payload = json.loads(base64.urlsafe_b64decode(payload_b64 + "=="))

    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = rp.jwks().get_signing_key_from_jwt(raw).key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    elevated = {**payload, "sub": "auditrice"}
    forgeries = {
        "signed with the attacker's key under the provider's kid":
            jwt.encode(elevated, attacker, algorithm="RS256", headers={"kid": header["kid"]}),
        "claims changed, signature kept":
            f"{header_b64}.{b64(json.dumps(elevated).encode())}.{signature_b64}",
        "alg none": f"{b64(json.dumps({'alg': 'none', 'kid': header['kid']}).encode())}."
                    f"{b64(json.dumps(elevated).encode())}.",
        "HS256 keyed with the provider's public key": hmac_signed(elevated, header["kid"], public_pem),
        "truncated": raw[:-10],
    }
    for name, token in forgeries.items():
        count("attacks_tried")
        with pytest.raises(SignInRefused, match="invalide"):
            rp.verify(token, attempt.nonce)
        print(f"refused: {name}")
    count("attacks_tried", 3)
    with pytest.raises(SignInRefused, match="expiré"):
        rp.verify(raw, attempt.nonce, now=time.time() + 3600)  # an hour later: past its exp
    with pytest.raises(SignInRefused, match="nonce"):
        rp.verify(raw, Attempt().nonce)  # replayed into another sign-in
    # a genuine token the same provider issued to another client: wrong audience
    _, other_attempt, foreign = genuine_token(both, OTHER_CLIENT_ID, OTHER_SECRET,
                                              "http://127.0.0.1:9/login/oidc/callback")
    with pytest.raises(SignInRefused, match="invalide"):
        rp.verify(foreign, other_attempt.nonce)


def test_sign_in_with_the_provider_in_a_real_browser(both: Both) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: apt-get install chromium")
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)
        try:
            page = browser.new_page(locale="fr-FR")
            page.goto(both.server.url + "/worklist?month=2026-11")
            page.click("#oidc")
            page.fill("input[name=login]", "agent-caf")
            page.fill("input[name=password]", "sans-importance")
            page.click("button[type=submit]")
            page.click("button[type=submit]")  # the provider's consent page
            page.wait_for_url("**/worklist")
            assert page.locator("h1").inner_text().startswith("Revue de dossiers")
            assert "(CAF)" in page.content()
        finally:
            browser.close()

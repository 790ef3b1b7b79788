"""OpenID Connect sign-in for the web view, as ProConnect (the State's federation for public
agents) speaks it: discovery, authorization code with PKCE (S256), ``state``, ``nonce`` and
a signed ID token, checked here in full before anyone is signed in.

The relying party is configured by ``HELP_CASEBOOK_OIDC_*`` (issuer, client id and secret,
redirect URI, scopes) and a claims mapping file (``HELP_CASEBOOK_OIDC_MAPPING``, YAML)::

    user_id_prefix: proconnect        # the user id is <prefix>.<12 hex of SHA-256(issuer|sub)>
    role:      {claim: groupes, values: {help-agents: agent, help-secretaires: secretaire_seance,
                                         help-auditeurs: auditeur}}
    fund:      {claim: siret, values: {"53471418900017": caf}}   # optional for other roles
    territory: {claim: departement}                            # or with values: {...}

The claims are the ID token's, completed by the userinfo endpoint's (ProConnect answers it
with a signed JWT, checked like the ID token, for the same ``sub``).
A claim may hold a list (groups): its first value that the mapping knows is taken. A user
whose claims map to no role, or an agent to no fund, or anyone to no valid territory, is
refused with a French reason. The ID token must be signed (RS/PS/ES algorithms of the
provider's JWKS, never ``none`` nor HMAC), by the configured issuer, for this client
(``aud``, and ``azp`` when there are several audiences), unexpired, issued recently, and
carry the nonce of this sign-in; the code is exchanged once, with its PKCE verifier.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import yaml

from services.casebook.auth import ROLE_LABELS, User
from services.casebook.model import check_fund, check_territory
from services.errors import ConfigurationError, HelpExchangeError
from services.platform.settings import Settings

ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
LEEWAY_S = 60
MAX_AGE_S = 600  # an ID token issued longer ago than this is not taken
HTTP_TIMEOUT_S = 10


class SignInRefused(HelpExchangeError):
    """An OpenID Connect sign-in that must not go through (the reason is shown to the user)."""

    exit_code = 2


@dataclass(frozen=True)
class ClaimRule:
    claim: str
    values: dict[str, str] | None = None

    def pick(self, claims: dict[str, Any]) -> str | None:
        raw = claims.get(self.claim)
        candidates = raw if isinstance(raw, list) else [raw]
        for value in candidates:
            if not isinstance(value, str | int) or isinstance(value, bool):
                continue
            text = str(value)
            if self.values is None:
                return text
            if text in self.values:
                return self.values[text]
        return None


@dataclass(frozen=True)
class ClaimMapping:
    role: ClaimRule
    territory: ClaimRule
    fund: ClaimRule | None = None
    user_id_prefix: str = "oidc"

    @classmethod
    def load(cls, path: Path) -> ClaimMapping:
        hint = "see services/casebook/oidc.py for the format (role, territory, fund: claim and values)"
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigurationError(f"cannot read the OpenID Connect claims mapping {path}: {exc}", hint) from exc
        try:
            rules = {name: cls._rule(data[name]) if name in data else None for name in ("role", "territory", "fund")}
            prefix = str(data.get("user_id_prefix", "oidc"))
            role, territory = rules["role"], rules["territory"]
            if role is None or territory is None:
                raise KeyError("role and territory")
        except (KeyError, TypeError, AttributeError) as exc:
            raise ConfigurationError(f"the OpenID Connect claims mapping {path} is incomplete ({exc})", hint) from exc
        if role.values is None or not set(role.values.values()) <= set(ROLE_LABELS):
            raise ConfigurationError(f"{path}: role values must map to {', '.join(ROLE_LABELS)}", hint)
        return cls(role=role, territory=territory, fund=rules["fund"], user_id_prefix=prefix)

    @staticmethod
    def _rule(data: dict[str, Any]) -> ClaimRule:
        values = data.get("values")
        return ClaimRule(str(data["claim"]), {str(k): str(v) for k, v in values.items()} if values else None)

    def user(self, issuer: str, claims: dict[str, Any]) -> User:
        subject = str(claims.get("sub", ""))
        digest = hashlib.sha256(f"{issuer}|{subject}".encode()).hexdigest()[:12]
        user_id = f"{self.user_id_prefix}.{digest}"
        role = self.role.pick(claims)
        if role not in ROLE_LABELS:
            raise SignInRefused("votre compte n'a pas de rôle dans la revue de dossiers",
                                "demandez à votre référent de vous ajouter au groupe prévu")
        territory = self.territory.pick(claims) or ""
        try:
            check_territory(territory)
        except HelpExchangeError:
            raise SignInRefused("votre compte n'est rattaché à aucun département de la revue",
                                "demandez à votre référent de compléter votre rattachement") from None
        fund_code = self.fund.pick(claims) if self.fund else None
        try:
            fund = check_fund(fund_code).value if fund_code else None
        except HelpExchangeError:
            fund = None
        if role == "agent" and fund is None:
            raise SignInRefused("votre organisme ne participe pas à l'échange",
                                "un agent se connecte avec le compte de son organisme (CAF, CPAM, Urssaf, Carsat, MSA)")
        return User(user_id, role, territory, fund)  # type: ignore[arg-type]


@dataclass
class Attempt:
    """What one sign-in keeps between the redirection and the callback (in a signed cookie)."""

    state: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    nonce: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    verifier: str = field(default_factory=lambda: secrets.token_urlsafe(48))

    @property
    def challenge(self) -> str:
        digest = hashlib.sha256(self.verifier.encode("ascii")).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class OidcClient:
    """The relying party: discovery, the authorization URL, the code exchange, the ID token."""

    def __init__(self, settings: Settings) -> None:
        if not (settings.casebook_oidc_issuer and settings.casebook_oidc_client_id
                and settings.casebook_oidc_client_secret and settings.casebook_oidc_redirect_uri
                and settings.casebook_oidc_mapping):
            raise ConfigurationError(
                "OpenID Connect sign-in is half configured",
                "set HELP_CASEBOOK_OIDC_ISSUER, _CLIENT_ID, _CLIENT_SECRET, _REDIRECT_URI and _MAPPING together")
        self.issuer = settings.casebook_oidc_issuer.rstrip("/")
        self.client_id = settings.casebook_oidc_client_id
        self.client_secret = settings.casebook_oidc_client_secret
        self.redirect_uri = settings.casebook_oidc_redirect_uri
        self.scopes = settings.casebook_oidc_scopes
        self.mapping = ClaimMapping.load(settings.casebook_oidc_mapping)
        self._metadata: dict[str, Any] | None = None
        self._jwks: jwt.PyJWKClient | None = None

    # -------------------------------------------------------------------- provider metadata
    def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            data = _get_json(self.issuer + "/.well-known/openid-configuration")
            if data.get("issuer", "").rstrip("/") != self.issuer:
                raise SignInRefused("le fournisseur d'identité annonce un autre émetteur que celui configuré",
                                    "vérifiez HELP_CASEBOOK_OIDC_ISSUER")
            if "S256" not in data.get("code_challenge_methods_supported", ["S256"]):
                raise SignInRefused("le fournisseur d'identité n'accepte pas PKCE S256", "contactez son exploitant")
            self._metadata = data
        return self._metadata

    def jwks(self) -> jwt.PyJWKClient:
        if self._jwks is None:
            self._jwks = jwt.PyJWKClient(str(self.metadata()["jwks_uri"]), cache_keys=True, lifespan=300,
                                         timeout=HTTP_TIMEOUT_S)
        return self._jwks

    # -------------------------------------------------------------------- the flow
    def authorization_url(self, attempt: Attempt) -> str:
        query = urllib.parse.urlencode({
            "response_type": "code", "client_id": self.client_id, "redirect_uri": self.redirect_uri,
            "scope": self.scopes, "state": attempt.state, "nonce": attempt.nonce,
            "code_challenge": attempt.challenge, "code_challenge_method": "S256"})
        return f"{self.metadata()['authorization_endpoint']}?{query}"

    def exchange(self, code: str, attempt: Attempt) -> dict[str, Any]:
        """The code and the PKCE verifier for tokens, once: the token response (``id_token``,
        ``access_token``)."""
        body = urllib.parse.urlencode({"grant_type": "authorization_code", "code": code,
                                       "redirect_uri": self.redirect_uri, "code_verifier": attempt.verifier}).encode()
        basic = base64.b64encode(f"{_form(self.client_id)}:{_form(self.client_secret)}".encode()).decode()
        request = urllib.request.Request(str(self.metadata()["token_endpoint"]), data=body, method="POST", headers={
            "Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
                tokens = json.loads(response.read(1_000_000))
        except urllib.error.HTTPError as exc:
            raise SignInRefused("le fournisseur d'identité a refusé le code de connexion (déjà utilisé ou expiré)",
                                "recommencez la connexion") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise SignInRefused("le fournisseur d'identité ne répond pas", "réessayez dans un instant") from exc
        if not isinstance(tokens, dict) or not isinstance(tokens.get("id_token"), str):
            raise SignInRefused("le fournisseur d'identité n'a pas rendu de jeton d'identité",
                                "recommencez la connexion")
        return tokens

    def claims(self, tokens: dict[str, Any], nonce: str) -> dict[str, Any]:
        """The verified ID token's claims, completed by the userinfo endpoint's (a signed JWT at
        ProConnect, checked like the ID token; plain JSON elsewhere) for the same subject."""
        claims = self.verify(str(tokens["id_token"]), nonce)
        endpoint = self.metadata().get("userinfo_endpoint")
        access = tokens.get("access_token")
        if not endpoint or not isinstance(access, str):
            return claims
        request = urllib.request.Request(str(endpoint), headers={"Authorization": f"Bearer {access}",
                                                                  "Accept": "application/jwt, application/json"})
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
                kind = response.headers.get("Content-Type", "")
                body = response.read(1_000_000)
        except (urllib.error.URLError, OSError) as exc:
            raise SignInRefused("le fournisseur d'identité ne donne pas vos informations (userinfo)",
                                "recommencez la connexion") from exc
        refused = SignInRefused("informations d'identité (userinfo) invalides", "recommencez la connexion")
        try:
            if kind.startswith("application/jwt"):
                raw = body.decode("ascii").strip()
                alg = str(jwt.get_unverified_header(raw).get("alg"))
                if alg not in ASYMMETRIC:
                    raise refused
                key = self.jwks().get_signing_key_from_jwt(raw)
                info: Any = jwt.decode(raw, key.key, algorithms=[alg], audience=self.client_id, issuer=self.issuer,
                                       options={"require": ["sub"], "verify_exp": False, "verify_iat": False})
            else:
                info = json.loads(body)
        except (jwt.PyJWTError, ValueError, UnicodeDecodeError) as exc:
            raise refused from exc
        if not isinstance(info, dict) or info.get("sub") != claims["sub"]:
            raise refused
        return {**info, **claims}

    def verify(self, raw: str, nonce: str, *, now: float | None = None) -> dict[str, Any]:
        """The ID token's claims, once its signature, issuer, audience, times and nonce are right."""
        now = time.time() if now is None else now
        refused = SignInRefused("jeton d'identité invalide", "recommencez la connexion")
        try:
            header = jwt.get_unverified_header(raw)
            alg = str(header.get("alg"))
            allowed = set(self.metadata().get("id_token_signing_alg_values_supported", ["RS256"])) & set(ASYMMETRIC)
            if alg not in allowed:
                raise refused
            key = self.jwks().get_signing_key_from_jwt(raw)
            claims: dict[str, Any] = jwt.decode(
                raw, key.key, algorithms=[alg], audience=self.client_id, issuer=self.issuer,
                options={"require": ["iss", "sub", "aud", "exp", "iat"], "verify_exp": False, "verify_iat": False,
                         "verify_nbf": False})
        except (jwt.PyJWTError, ValueError, KeyError) as exc:
            raise refused from exc
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != self.client_id:
            raise refused
        exp, iat = float(claims["exp"]), float(claims["iat"])
        if exp < now - LEEWAY_S or iat > now + LEEWAY_S or iat < now - MAX_AGE_S - LEEWAY_S:
            raise SignInRefused("jeton d'identité expiré", "recommencez la connexion")
        if "nbf" in claims and float(claims["nbf"]) > now + LEEWAY_S:
            raise refused
        if not hmac.compare_digest(str(claims.get("nonce", "")).encode(), nonce.encode()):
            raise SignInRefused("jeton d'identité rejoué ou d'une autre connexion (nonce)", "recommencez la connexion")
        return claims

    def user(self, claims: dict[str, Any]) -> User:
        return self.mapping.user(self.issuer, claims)


def _form(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _get_json(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
            data = json.loads(response.read(1_000_000))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise SignInRefused("le fournisseur d'identité ne répond pas", "réessayez dans un instant") from exc
    if not isinstance(data, dict):
        raise SignInRefused("réponse illisible du fournisseur d'identité", "réessayez dans un instant")
    return data

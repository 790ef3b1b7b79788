"""Who uses the web view: users, roles, and the one :class:`Authenticator` interface.

Roles: ``agent`` (of one fund, in one territory: sees what that fund may see and records
that fund's follow-ups), ``secretaire_seance`` (the meeting secretary of a territory: sees
the whole worklist, records follow-ups as the funds report them), ``auditeur`` (reads, and
never records: 403).

The embedded default is :class:`FileAuthenticator`: users in a JSON file (``var/users.json``)
with secrets hashed by ``hashlib.scrypt`` (per-user random salt, N=2^14, r=8, p=1), written
by ``help-exchange users add``. In production an OpenID Connect provider (ProConnect, the
French state's sign-in for public agents) replaces it: implement :class:`Authenticator`
with ``authenticate`` unused (return None) and ``login_redirect``/``complete_login``
doing the authorisation-code flow, mapping the ID token's claims (organisation SIRET →
fund, a territory claim or a local mapping → territory, a group → role) to a :class:`User`.
The web layer only calls this interface and keeps the same signed session afterwards.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from services.casebook.model import check_fund, check_territory
from services.core.types import ACTOR_PATTERN
from services.errors import ConfigurationError, InputError

Role = Literal["agent", "secretaire_seance", "auditeur"]
ROLE_LABELS = {"agent": "Agent", "secretaire_seance": "Secrétaire de séance", "auditeur": "Auditeur"}
FUND_LABELS = {"caf": "CAF", "cpam": "CPAM", "urssaf": "Urssaf", "carsat": "Carsat", "msa": "MSA"}
SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_ACTOR = re.compile(ACTOR_PATTERN)


@dataclass(frozen=True)
class User:
    user_id: str
    role: Role
    territory: str
    fund: str | None = None

    @property
    def role_label(self) -> str:
        return ROLE_LABELS[self.role]

    @property
    def fund_label(self) -> str:
        return FUND_LABELS.get(self.fund or "", self.fund or "")

    @property
    def can_record(self) -> bool:
        return self.role in ("agent", "secretaire_seance")

    @property
    def view_fund(self) -> str | None:
        """The fund whose need-to-know filters what this user sees (None: the meeting's view)."""
        return self.fund if self.role == "agent" else None


class Authenticator(Protocol):
    """Checks a login and finds a logged-in user again (the session stores only the id)."""

    def authenticate(self, user_id: str, secret: str) -> User | None: ...

    def user(self, user_id: str) -> User | None: ...

    def has_users(self) -> bool: ...


def hash_secret(secret: str, salt: bytes | None = None) -> dict[str, object]:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode("utf-8"), salt=salt, dklen=32, maxmem=64 * 1024 * 1024, **SCRYPT)
    return {"alg": "scrypt", **SCRYPT, "salt": base64.b64encode(salt).decode(),
            "hash": base64.b64encode(digest).decode()}


def verify_secret(secret: str, record: dict[str, object]) -> bool:
    try:
        salt = base64.b64decode(str(record["salt"]))
        expected = base64.b64decode(str(record["hash"]))
        n, r, p = int(str(record["n"])), int(str(record["r"])), int(str(record["p"]))
    except (KeyError, ValueError):
        return False
    digest = hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=len(expected),
                            maxmem=64 * 1024 * 1024)
    return hmac.compare_digest(digest, expected)


_DUMMY = hash_secret("pas-un-vrai-secret")

#: zxcvbn's score a password must reach: 3 is "safely unguessable".
MIN_STRENGTH = 3
#: …and at least 10^10 guesses by its estimate (score 3 starts at 10^8).
MIN_GUESSES_LOG10 = 10
MAX_SECRET_LENGTH = 128
#: Words a password must not lean on (zxcvbn counts them as known).
CONTEXT_WORDS = ("help", "exchange", "casebook", "revue", "caf", "cpam", "urssaf", "carsat", "msa", "agent",
                 "auditeur", "secretaire", "securite", "sociale", "motdepasse")


def check_strength(secret: str, *context: str) -> None:
    """Refuse a password that zxcvbn (Dropbox's strength estimator) finds guessable: repeats,
    sequences, keyboard walks, dictionary words and the user's own identifiers count for little;
    length alone does not pass (``aaaaaaaaaaaa`` does not)."""
    from zxcvbn import zxcvbn

    if len(secret) > MAX_SECRET_LENGTH:
        raise InputError(f"mot de passe trop long ({len(secret)} caractères)",
                         f"{MAX_SECRET_LENGTH} caractères au plus")
    if len(secret) < 12:
        raise InputError("mot de passe trop court", "12 caractères au moins, par exemple quatre mots sans rapport")
    words = [*context, *(w for c in context for w in re.split(r"[^A-Za-z0-9]+", c) if w), *CONTEXT_WORDS]
    result = zxcvbn(secret, user_inputs=words)
    if int(result["score"]) < MIN_STRENGTH or float(result["guesses_log10"]) < MIN_GUESSES_LOG10:
        raise InputError(f"mot de passe trop facile à deviner (environ 10^{float(result['guesses_log10']):.0f} "
                         "essais)",
                         "choisissez une phrase de passe de quatre ou cinq mots sans rapport entre eux, "
                         "sans votre identifiant ni le nom d'un organisme")


class UserFile:
    """The users file: ``{"users": {"<id>": {"role", "territory", "fund", "secret": {...}}}}``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, dict[str, object]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"cannot read the users file {self.path}: {exc}",
                                     "fix it or recreate it with `help-exchange users add`") from exc
        users = data.get("users", {}) if isinstance(data, dict) else {}
        return users if isinstance(users, dict) else {}

    def add(self, user_id: str, *, role: str, territory: str, fund: str | None, secret: str) -> User:
        if not _ACTOR.fullmatch(user_id):
            raise InputError(f"identifiant invalide : {user_id!r}",
                             "un identifiant sans nom, par exemple agent.caf-35")
        if role not in ROLE_LABELS:
            raise InputError(f"rôle inconnu : {role!r}", "agent, secretaire_seance ou auditeur")
        check_territory(territory)
        if role == "agent":
            if not fund:
                raise InputError("un agent appartient à un organisme", "ajoutez --fund caf|cpam|urssaf|carsat|msa")
            fund = check_fund(fund).value
        elif fund:
            fund = check_fund(fund).value
        check_strength(secret, user_id, role, territory, fund or "")
        users = self.load()
        users[user_id] = {"role": role, "territory": territory, "fund": fund, "secret": hash_secret(secret)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".users.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"users": users}, f, indent=1, sort_keys=True)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
        return User(user_id, role, territory, fund)  # type: ignore[arg-type]


class FileAuthenticator:
    """The embedded default :class:`Authenticator` (re-reads the file when it changes)."""

    def __init__(self, path: Path) -> None:
        self.file = UserFile(path)
        self._stamp: float | None = None
        self._users: dict[str, dict[str, object]] = {}

    def _all(self) -> dict[str, dict[str, object]]:
        try:
            stamp = self.file.path.stat().st_mtime
        except FileNotFoundError:
            return {}
        if stamp != self._stamp:
            self._users, self._stamp = self.file.load(), stamp
        return self._users

    def user(self, user_id: str) -> User | None:
        record = self._all().get(user_id)
        if not isinstance(record, dict) or record.get("role") not in ROLE_LABELS:
            return None
        fund = record.get("fund")
        return User(user_id, record["role"], str(record.get("territory", "")),  # type: ignore[arg-type]
                    str(fund) if fund else None)

    def authenticate(self, user_id: str, secret: str) -> User | None:
        record = self._all().get(user_id)
        stored = record.get("secret") if isinstance(record, dict) else None
        if not isinstance(stored, dict):
            verify_secret(secret, _DUMMY)  # same work whether or not the user exists
            return None
        return self.user(user_id) if verify_secret(secret, stored) else None

    def has_users(self) -> bool:
        return bool(self._all())

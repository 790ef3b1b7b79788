"""The web view's sessions and sign-in defences, kept in the casebook database.

- :class:`SessionStore`: server-side sessions. The cookie carries a random token; the table
  keeps its SHA-256, the user, the CSRF token, when it was opened and last used, and the one
  message (flash) to show on the next page. A session ends for real: logout deletes it, and
  one idle for ``casebook_session_idle_s`` or older than ``casebook_session_max_age_s`` is
  refused and deleted; a sign-in always opens a new one (the token rotates). One-time tokens
  of the follow-up forms live here too: a submit consumes its token, so a second submit of
  the same form records nothing.
- :class:`SignInGuard`: throttling per account and per client address. Each attempt is
  counted as a failure *before* the password is checked (so parallel guesses are counted
  too) and given back when it succeeds. From ``casebook_signin_delay_after`` failures on, the
  next attempt must wait 1 s, then 2, 4, 8… (at most 5 minutes) after the last failure; at
  ``casebook_signin_lockout_failures`` the account is locked for ``casebook_signin_lockout_s``
  (an address gets three times those counts: offices share one). Failures are forgotten
  ``casebook_signin_lockout_s`` after the last one. Every attempt goes into
  ``casebook_sign_ins``: when, which identifier, from which address, and the outcome
  (``succes``, ``echec``, ``limite``, ``verrouille``, ``deconnexion``), for the auditors.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from services.casebook import tables as t
from services.casebook.auth import User
from services.casebook.model import aware
from services.core.types import ACTOR_PATTERN
from services.platform.settings import Settings

Outcome = Literal["succes", "echec", "limite", "verrouille", "deconnexion"]
OUTCOME_LABELS = {"succes": "Connexion réussie", "echec": "Échec (identifiant ou mot de passe)",
                  "limite": "Refusée : trop de tentatives, délai", "verrouille": "Refusée : compte verrouillé",
                  "deconnexion": "Déconnexion"}
MAX_DELAY_S = 300
ADDRESS_FACTOR = 3
_ACTOR = re.compile(ACTOR_PATTERN)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Session:
    token_hash: str
    user_id: str
    csrf: str
    created_at: dt.datetime
    last_seen_at: dt.datetime
    #: who the user is for this session when it came from OpenID Connect claims (else None:
    #: the users file says, read again on each request)
    user: User | None = None


class SessionStore:
    def __init__(self, engine: sa.Engine, settings: Settings) -> None:
        self.engine = engine
        self.max_age = dt.timedelta(seconds=settings.casebook_session_max_age_s)
        self.idle = dt.timedelta(seconds=min(settings.casebook_session_idle_s,
                                             settings.casebook_session_max_age_s))

    def open(self, user_id: str, user: User | None = None) -> tuple[str, Session]:
        """A new session for ``user_id`` (with ``user``, the one its OpenID Connect claims gave):
        its cookie token and the session."""
        now = _now()
        token = secrets.token_urlsafe(32)
        session = Session(_hash(token), user_id, secrets.token_urlsafe(24), now, now, user)
        with self.engine.begin() as conn:
            self._forget_expired(conn, now)
            conn.execute(sa.insert(t.web_sessions).values(
                token_hash=session.token_hash, user_id=user_id, csrf=session.csrf, created_at=now,
                last_seen_at=now, flash=None, role=user.role if user else None, fund=user.fund if user else None,
                territory=user.territory if user else None))
        return token, session

    def find(self, token: str | None) -> Session | None:
        """The live session of this cookie token (and it is marked used now), else None."""
        if not token or len(token) > 128:
            return None
        now = _now()
        key = _hash(token)
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(t.web_sessions).where(t.web_sessions.c.token_hash == key)).first()
            if row is None:
                return None
            created, seen = aware(row.created_at), aware(row.last_seen_at)
            if now - seen > self.idle or now - created > self.max_age:
                self._delete(conn, key)
                return None
            conn.execute(sa.update(t.web_sessions).where(t.web_sessions.c.token_hash == key)
                         .values(last_seen_at=now))
        user = User(row.user_id, row.role, row.territory, row.fund) if row.role else None
        return Session(key, row.user_id, row.csrf, created, now, user)

    def close(self, session: Session) -> None:
        with self.engine.begin() as conn:
            self._delete(conn, session.token_hash)

    def set_flash(self, session: Session, message: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.update(t.web_sessions).where(t.web_sessions.c.token_hash == session.token_hash)
                         .values(flash=message[:200]))

    def pop_flash(self, session: Session) -> str | None:
        with self.engine.begin() as conn:
            flash = conn.execute(sa.select(t.web_sessions.c.flash)
                                 .where(t.web_sessions.c.token_hash == session.token_hash)).scalar()
            if flash is not None:
                conn.execute(sa.update(t.web_sessions).where(t.web_sessions.c.token_hash == session.token_hash)
                             .values(flash=None))
        return str(flash) if flash is not None else None

    def issue_form_token(self, session: Session, case_number: str) -> str:
        token = secrets.token_urlsafe(24)
        with self.engine.begin() as conn:
            conn.execute(sa.insert(t.form_tokens).values(token_hash=_hash(token), session_hash=session.token_hash,
                                                         case_number=case_number, created_at=_now()))
        return token

    def use_form_token(self, session: Session, case_number: str, token: str) -> bool:
        """Consume the form's one-time token: True the first time only."""
        if not token or len(token) > 128:
            return False
        with self.engine.begin() as conn:
            done = conn.execute(sa.delete(t.form_tokens).where(
                t.form_tokens.c.token_hash == _hash(token), t.form_tokens.c.session_hash == session.token_hash,
                t.form_tokens.c.case_number == case_number, t.form_tokens.c.created_at > _now() - self.max_age))
        return done.rowcount == 1

    def _delete(self, conn: sa.Connection, key: str) -> None:
        conn.execute(sa.delete(t.form_tokens).where(t.form_tokens.c.session_hash == key))
        conn.execute(sa.delete(t.web_sessions).where(t.web_sessions.c.token_hash == key))

    def _forget_expired(self, conn: sa.Connection, now: dt.datetime) -> None:
        stale = sa.or_(t.web_sessions.c.last_seen_at < now - self.idle,
                       t.web_sessions.c.created_at < now - self.max_age)
        conn.execute(sa.delete(t.form_tokens).where(t.form_tokens.c.session_hash.in_(
            sa.select(t.web_sessions.c.token_hash).where(stale))))
        conn.execute(sa.delete(t.form_tokens).where(t.form_tokens.c.created_at < now - self.max_age))
        conn.execute(sa.delete(t.web_sessions).where(stale))


@dataclass(frozen=True)
class Refusal:
    outcome: Literal["limite", "verrouille"]
    retry_after_s: int

    @property
    def message(self) -> str:
        if self.outcome == "verrouille":
            minutes = max(1, -(-self.retry_after_s // 60))
            return (f"Trop d'échecs de connexion : compte ou poste verrouillé pour {minutes} min. "
                    "Réessayez plus tard ou demandez à votre référent.")
        return f"Trop de tentatives de connexion : réessayez dans {self.retry_after_s} s."


class SignInGuard:
    def __init__(self, engine: sa.Engine, settings: Settings) -> None:
        self.engine = engine
        self.delay_after = settings.casebook_signin_delay_after
        self.lockout_failures = settings.casebook_signin_lockout_failures
        self.lockout = dt.timedelta(seconds=settings.casebook_signin_lockout_s)

    def _limits(self, key: str) -> tuple[int, int]:
        factor = ADDRESS_FACTOR if key.startswith("a:") else 1
        return self.delay_after * factor, self.lockout_failures * factor

    @staticmethod
    def keys(user_id: str, address: str) -> tuple[str, str]:
        return "u:" + user_id[:64], "a:" + address[:64]

    def begin(self, user_id: str, address: str) -> Refusal | None:
        """Before a password is checked: a refusal, or None and the attempt counted as a failure."""
        for attempt in range(3):
            try:
                return self._begin(user_id, address)
            except IntegrityError:  # two first failures of one key at once: count again
                if attempt == 2:
                    raise
        return None  # pragma: no cover

    def _begin(self, user_id: str, address: str) -> Refusal | None:
        now = _now()
        keys = self.keys(user_id, address)
        f = t.sign_in_failures
        with self.engine.begin() as conn:
            # a write first: the database serialises concurrent attempts from here on; it also
            # forgets the keys whose failures are forgotten (identifiers typed once, long ago)
            conn.execute(sa.delete(f).where(f.c.last_failure_at < now - self.lockout,
                                            sa.or_(f.c.locked_until.is_(None), f.c.locked_until < now)))
            conn.execute(sa.update(f).where(f.c.key.in_(keys)).values(key=f.c.key))
            rows = {r.key: r for r in conn.execute(sa.select(f).where(f.c.key.in_(keys)))}
            refusal = None
            for key in keys:
                row = rows.get(key)
                if row is None or now - aware(row.last_failure_at) > self.lockout:
                    continue
                delay_after, _ = self._limits(key)
                if row.locked_until is not None and aware(row.locked_until) > now:
                    refusal = Refusal("verrouille", _seconds(aware(row.locked_until) - now))
                    break
                if row.failures >= delay_after:
                    wait_until = aware(row.last_failure_at) + dt.timedelta(
                        seconds=min(MAX_DELAY_S, 2 ** (row.failures - delay_after)))
                    if wait_until > now:
                        refusal = Refusal("limite", _seconds(wait_until - now))
            if refusal is not None:
                self._log(conn, user_id, address, refusal.outcome, now)
                return refusal
            for key in keys:
                row = rows.get(key)
                _, lockout_failures = self._limits(key)
                fresh = row is None or now - aware(row.last_failure_at) > self.lockout
                failures = 1 if fresh or row is None else row.failures + 1
                locked = now + self.lockout if failures >= lockout_failures else None
                if row is None:
                    conn.execute(sa.insert(f).values(key=key, failures=failures, last_failure_at=now,
                                                     locked_until=locked))
                else:
                    conn.execute(sa.update(f).where(f.c.key == key).values(
                        failures=failures, last_failure_at=now, locked_until=locked))
        return None

    def succeeded(self, user_id: str, address: str) -> None:
        """The password was right: forget the account's failures, give the address its attempt back."""
        account, client = self.keys(user_id, address)
        f = t.sign_in_failures
        with self.engine.begin() as conn:
            conn.execute(sa.delete(f).where(f.c.key == account))
            conn.execute(sa.update(f).where(f.c.key == client, f.c.failures > 0)
                         .values(failures=f.c.failures - 1))
            self._log(conn, user_id, address, "succes", _now())

    def failed(self, user_id: str, address: str) -> None:
        with self.engine.begin() as conn:
            self._log(conn, user_id, address, "echec", _now())

    def signed_out(self, user_id: str, address: str) -> None:
        with self.engine.begin() as conn:
            self._log(conn, user_id, address, "deconnexion", _now())

    @staticmethod
    def _log(conn: sa.Connection, user_id: str, address: str, outcome: Outcome, at: dt.datetime) -> None:
        shown = user_id if _ACTOR.fullmatch(user_id or "") and len(user_id) <= 64 else "(identifiant invalide)"
        conn.execute(sa.insert(t.sign_ins).values(at=at, user_id=shown, address=address[:64], outcome=outcome))


def _seconds(delta: dt.timedelta) -> int:
    return max(1, int(-(-delta.total_seconds() // 1)))


def sign_ins(engine: sa.Engine, *, user_id: str | None = None, limit: int = 200) -> Iterator[dict[str, object]]:
    """The sign-in log, newest first (auditors: the web page and ``users sign-ins``)."""
    query = sa.select(t.sign_ins).order_by(t.sign_ins.c.id.desc()).limit(limit)
    if user_id:
        query = query.where(t.sign_ins.c.user_id == user_id)
    with engine.connect() as conn:
        for row in conn.execute(query):
            yield {**row._mapping, "at": aware(row.at)}


def same_token(expected: str, given: str) -> bool:
    return bool(expected) and hmac.compare_digest(expected.encode(), (given or "").encode())

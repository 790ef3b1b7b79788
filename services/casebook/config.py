"""Settings of the casebook alone (environment variables prefixed ``HELP_CASEBOOK_``).

The shared settings (database URL, broker, var/ and schemas/ directories) stay in
:class:`services.platform.settings.Settings`; these only tune the monthly review:

``HELP_CASEBOOK_CLOSE_AFTER_MONTHS`` (default 6)
    A situation closes by itself when no new signal arrived for that many whole months
    before the month under review (it also closes as soon as every involved fund has
    recorded an outcome). Six months mirrors the Dutch early-signalling purge of signals
    not acted on (shared/DOMAIN.md §6).
``HELP_CASEBOOK_USERS_FILE`` (default ``<var_dir>/users.json``)
    The users of the web view, with scrypt-hashed secrets (``help-exchange users add``).
``HELP_CASEBOOK_SESSION_SECRET`` (default: a random key kept in ``<var_dir>/casebook-session.key``)
    Signs the session cookies of the web view.
``HELP_CASEBOOK_SESSION_MAX_AGE_S`` (default 8 hours)
``HELP_CASEBOOK_SECURE_COOKIES`` (default false; set it true behind HTTPS)
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.errors import ConfigurationError
from services.platform.settings import Settings


class CasebookSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HELP_CASEBOOK_", env_file=".env", extra="ignore",
                                      frozen=True)

    close_after_months: Annotated[int, Field(ge=1, le=60)] = 6
    users_file: Path | None = None
    session_secret: Annotated[str, Field(min_length=32)] | None = None
    session_max_age_s: Annotated[int, Field(ge=60, le=7 * 24 * 3600)] = 8 * 3600
    secure_cookies: bool = False

    def users_path(self, settings: Settings) -> Path:
        return self.users_file or settings.var_dir / "users.json"

    def secret(self, settings: Settings) -> str:
        """The cookie-signing key: the setting, or one generated once and kept in var/."""
        if self.session_secret:
            return self.session_secret
        path = settings.var_dir / "casebook-session.key"
        try:
            return path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(key)
        return key


def load_casebook_settings(**overrides: object) -> CasebookSettings:
    try:
        return CasebookSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        raise ConfigurationError(
            f"setting HELP_CASEBOOK_{field.upper()} is invalid: {first['msg']}",
            f"fix or unset HELP_CASEBOOK_{field.upper()} (see services/casebook/config.py)",
        ) from exc

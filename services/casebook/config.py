"""The casebook's derived settings: where the web view's users and session key live.

The settings themselves (``HELP_CASEBOOK_*``) are fields of
:class:`services.platform.settings.Settings`, documented there.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from services.platform.settings import Settings


def users_path(settings: Settings) -> Path:
    """The users file of the web view: ``HELP_CASEBOOK_USERS_FILE``, else ``<var_dir>/users.json``."""
    return settings.casebook_users_file or settings.var_dir / "users.json"


def marker_key(settings: Settings) -> bytes:
    """The key of the casebook's "do not process" markers (:class:`services.casebook.store.Markers`):
    the exchange's marker key (:mod:`services.platform.markers`)."""
    from services.platform.markers import marker_key as exchange_marker_key

    return exchange_marker_key(settings)


def session_secret(settings: Settings) -> str:
    """The cookie-signing key: ``HELP_CASEBOOK_SESSION_SECRET``, or one generated once and kept
    (mode 0600) in ``<var_dir>/casebook-session.key``."""
    if settings.casebook_session_secret:
        return settings.casebook_session_secret
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

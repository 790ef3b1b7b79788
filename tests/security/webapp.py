"""The casebook web app for the security tests: settings with a fixed session secret and a users file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI

from services.app.bootstrap import web_app
from services.casebook.auth import FileAuthenticator
from services.platform.settings import Settings, load_settings

SESSION_SECRET = "s" * 40


def web_settings(tmp: Path, **extra: Any) -> Settings:
    return load_settings(var_dir=tmp / "var", key_dir=tmp / "var" / "keys",
                         database_url=f"sqlite:///{tmp / 'casebook.db'}", casebook_session_secret=SESSION_SECRET,
                         casebook_users_file=tmp / "users.json", **extra)


def make_app(settings: Settings, engine: sa.Engine, users: Path) -> FastAPI:
    return web_app(settings, engine=engine, authenticator=FileAuthenticator(users), publish=False)

"""Engine creation and migrations for the casebook database (SQLite or PostgreSQL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.exc import OperationalError

from services.errors import TransientError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def make_engine(url: str) -> sa.Engine:
    """An engine for ``url``; for SQLite the parent folder is created and WAL turned on."""
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        path = sa.make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30}
    engine = sa.create_engine(url, **kwargs)
    if url.startswith("sqlite"):

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            # A deleted row is overwritten, not left in a free page of the file: an erasure
            # leaves nothing readable in casebook.db (see scrub for the WAL file).
            cur.execute("PRAGMA secure_delete=ON")
            cur.close()

    return engine


def scrub(engine: sa.Engine) -> None:
    """After an erasure: on SQLite, copy the WAL into the database and truncate it, so the
    frames that held the erased rows' earlier pages are gone from ``casebook.db-wal`` too
    (with ``secure_delete`` the pages themselves are zeroed). Best effort: a reader holding
    the WAL makes the truncation wait for the next erasure. On PostgreSQL, deleted tuples
    stay in their pages until (auto)vacuum reclaims them (docs/erasure.md)."""
    if engine.dialect.name != "sqlite":
        return
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def migrate(engine: sa.Engine) -> None:
    """Bring the schema to the latest revision (idempotent)."""
    config = alembic_config()
    try:
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
    except OperationalError as exc:
        raise TransientError(f"cannot migrate the casebook database: {exc.orig}",
                             "check HELP_DATABASE_URL and that the database answers") from exc


def open_store_engine(url: str) -> sa.Engine:
    engine = make_engine(url)
    migrate(engine)
    return engine

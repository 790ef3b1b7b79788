"""The one way to open the shared database (SQLite by default, PostgreSQL in production).

The casebook, the ledger and the tracked consumers' offsets live in one database
(``HELP_DATABASE_URL``), so they share one engine factory, one set of SQLite pragmas and
one migration history (``services/platform/migrations``, see docs/architecture.md):

* :func:`make_engine` — an engine; for SQLite the file's folder is created and every
  connection gets :data:`SQLITE_PRAGMAS`;
* :func:`migrate` — every table brought to the latest revision (idempotent);
* :func:`open_engine` — both, what a command that reads or writes the database calls;
* :func:`scrub` — after an erasure, the SQLite WAL file emptied too.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from services.errors import TransientError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

#: Alembic's version table for the whole database.
VERSION_TABLE = "alembic_version"
#: Where the previous release kept the casebook's revision (the ledger had none: its
#: tables were made by ``create_all``); :func:`migrate` moves it to :data:`VERSION_TABLE`.
LEGACY_VERSION_TABLE = "casebook_alembic_version"

#: Applied to every SQLite connection. Why each:
#:
#: * ``journal_mode=WAL``: readers (the web view, the auditor) never block the sinks' writes.
#: * ``synchronous=NORMAL``: a commit is in the WAL file before it returns, so it survives a
#:   crash of the process; only an OS crash or power cut could lose the last commits, never
#:   the file's consistency.
#: * ``busy_timeout=30000``: a writer waits up to 30 s for another one (the two sinks, the
#:   purge, the web view share the file) instead of failing at once.
#: * ``foreign_keys=ON``: SQLite enforces declared foreign keys only when asked.
#: * ``secure_delete=ON``: a deleted row is overwritten, not left in a free page of the file,
#:   so an erasure leaves nothing readable in the database (:func:`scrub` empties the WAL).
#: * ``cache_size``, ``wal_autocheckpoint``, ``journal_size_limit``: the ledger's appends
#:   (bench/ledger.py). A checkpoint every 25,000 pages (100 MB of WAL, not SQLite's 4 MB):
#:   a page many appends touch (the tail of an index) is copied back once per checkpoint,
#:   not once per batch; the WAL is truncated back to 64 MB after a checkpoint; a page cache
#:   big enough for the indexes of a few million entries.
SQLITE_PRAGMAS = (
    "journal_mode=WAL",
    "synchronous=NORMAL",
    "busy_timeout=30000",
    "foreign_keys=ON",
    "secure_delete=ON",
    "cache_size=-131072",
    "wal_autocheckpoint=25000",
    "journal_size_limit=67108864",
)


def make_engine(url: str, *, sqlite_cache_kib: int | None = None) -> sa.Engine:
    """An engine for ``url``, without touching the schema (see :func:`open_engine`).

    ``sqlite_cache_kib``: on SQLite, each connection's page cache in KiB instead of
    :data:`SQLITE_PRAGMAS`'s (sized for the ledger's appends). A long-running process that
    reads one table at random points (the correlator's data keys) gives a small one: the
    operating system caches the file anyway, and a cache as large as the table grew the
    process with the number of rows (docs/architecture.md, "Memory")."""
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True)
    path = sa.make_url(url).database
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url)
    pragmas = SQLITE_PRAGMAS if sqlite_cache_kib is None else (
        *(p for p in SQLITE_PRAGMAS if not p.startswith("cache_size=")), f"cache_size=-{int(sqlite_cache_kib)}")

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        _sqlite_pragmas(dbapi_connection, pragmas)

    sa.event.listen(engine, "connect", on_connect)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, pragmas: tuple[str, ...] = SQLITE_PRAGMAS) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in pragmas:
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def alembic_config() -> Config:
    # Alembic loads only when a database is migrated: the command line starts without it.
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def migrate(engine: sa.Engine, revision: str = "head") -> None:
    """Bring every table to ``revision`` (default: the latest), in one transaction; a
    database of the previous release (casebook at ``0003_web_sessions``, ledger tables made
    by ``create_all``) is upgraded in place."""
    from alembic import command

    config = alembic_config()
    try:
        with _one_migrator(engine), engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})")
            elif conn.dialect.name == "sqlite":
                # Python's sqlite3 opens a transaction only before INSERT/UPDATE/DELETE: each
                # CREATE TABLE would otherwise commit alone, and a process killed mid-migration
                # would leave tables without their version row ("table ... already exists" at
                # the next start). SQLite's DDL is transactional once a BEGIN is issued.
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            _adopt_legacy_version_table(conn)
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
    except OperationalError as exc:
        raise TransientError(f"cannot migrate the database: {exc.orig}",
                             "check HELP_DATABASE_URL and that the database answers") from exc


#: PostgreSQL advisory lock held by the transaction that migrates (any constant, ours alone).
MIGRATION_LOCK_ID = 0x48454C50


@contextlib.contextmanager
def _one_migrator(engine: sa.Engine) -> Iterator[None]:
    """Processes starting together (two correlator workers, a sink and the web view) would
    each find the version table missing and each create it: the second fails with "table
    alembic_version already exists". On PostgreSQL the migrating transaction takes an
    advisory lock; SQLite has none, and its write lock is taken only at the first write,
    after the version table was read, so a file lock beside the database serialises them.
    The second migrator then finds the schema at head and does nothing."""
    path = engine.url.database if engine.dialect.name == "sqlite" else None
    if not path or path == ":memory:":
        yield
        return
    with open(f"{path}.migrate-lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _adopt_legacy_version_table(conn: sa.Connection) -> None:
    names = set(sa.inspect(conn).get_table_names())
    if LEGACY_VERSION_TABLE not in names or VERSION_TABLE in names:
        return
    conn.exec_driver_sql(f"CREATE TABLE {VERSION_TABLE} (version_num VARCHAR(32) NOT NULL, "
                         f"CONSTRAINT {VERSION_TABLE}_pkc PRIMARY KEY (version_num))")
    conn.exec_driver_sql(f"INSERT INTO {VERSION_TABLE} (version_num) "
                         f"SELECT version_num FROM {LEGACY_VERSION_TABLE}")
    conn.exec_driver_sql(f"DROP TABLE {LEGACY_VERSION_TABLE}")


def open_engine(url: str, *, sqlite_cache_kib: int | None = None) -> sa.Engine:
    """An engine for ``url`` with every table at the latest revision (``sqlite_cache_kib``:
    see :func:`make_engine`)."""
    engine = make_engine(url, sqlite_cache_kib=sqlite_cache_kib)
    migrate(engine)
    return engine


def scrub(engine: sa.Engine) -> None:
    """After an erasure: on SQLite, copy the WAL into the database and truncate it, so the
    frames that held the erased rows' earlier pages are gone from the ``-wal`` file too
    (with ``secure_delete`` the pages themselves are zeroed). Best effort: a reader holding
    the WAL makes the truncation wait for the next erasure. On PostgreSQL, deleted tuples
    stay in their pages until (auto)vacuum reclaims them (docs/erasure.md)."""
    if engine.dialect.name != "sqlite":
        return
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

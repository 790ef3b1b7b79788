"""Shared fixtures. Integration fixtures start real parts and *fail* (never skip) when a part
is missing: a test that cannot reach its broker is a broken install, not an optional test.

A test that uses one of them or another outside part (directly or through another fixture),
or runs on the PostgreSQL side of a ``db_url`` parameter, is marked ``integration`` here, so
that ``make check`` runs the rest alone (``pytest -m "not integration"``); ``make test`` runs
everything."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.platform.settings import Settings, load_settings
from tests.support.local import embedded_broker, free_port
from tests.support.signalkeys import key_endpoint

#: Fixtures that start a broker or a database (or use one that does), or build an outside
#: program (Go's verifier).
REAL_PARTS = frozenset({"broker_var", "bootstrap", "private_bootstrap", "postgres_url", "go_verifier"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if REAL_PARTS & set(getattr(item, "fixturenames", ())) or params.get("db_url") == "postgresql":
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def broker_var(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("broker-var")


@pytest.fixture(scope="session")
def bootstrap(broker_var: Path) -> Iterator[str]:
    """The session's broker, shared by the tests (each looks only for its own messages)."""
    with embedded_broker(broker_var) as servers:
        yield servers


@pytest.fixture
def private_bootstrap(tmp_path: Path) -> Iterator[str]:
    """A broker of the test's own, for a test that reads whole topics (an audit sink does)."""
    with embedded_broker(tmp_path / "broker") as servers:
        yield servers


@pytest.fixture
def settings(tmp_path: Path, bootstrap: str) -> Iterator[Settings]:
    """Settings pointing at the session broker, with a fresh var/ (keys, outbox, SQLite), and
    the defaults' sealed signals: a key endpoint over that database (``signal_keys_url``), so
    producers seal and a worker started with them opens what they send."""
    with key_endpoint(load_settings(
        bootstrap_servers=bootstrap,
        var_dir=tmp_path / "var",
        key_dir=tmp_path / "var" / "keys",
        database_url=f"sqlite:///{tmp_path / 'var' / 'casebook.db'}",
        session_timeout_ms=6000,
    )) as sealed:
        yield sealed


@pytest.fixture
def offline_settings(tmp_path: Path) -> Iterator[Settings]:
    """Settings for tests that need no broker (a key endpoint as in ``settings``)."""
    with key_endpoint(load_settings(var_dir=tmp_path / "var", key_dir=tmp_path / "var" / "keys",
                                    database_url=f"sqlite:///{tmp_path / 'var' / 'casebook.db'}")) as sealed:
        yield sealed


def _pg_bin() -> Path:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not candidates:
        pytest.fail("PostgreSQL is not installed: `make test` installs it (apt-get install postgresql)")
    return candidates[-1].parent


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real, throw-away PostgreSQL cluster on a free loopback port (Debian's binaries).

    PostgreSQL refuses to run as root, so the cluster runs as the ``postgres`` system user."""
    import os
    import pwd
    import shutil
    import subprocess
    import tempfile

    bindir = _pg_bin()
    # Not under pytest's tmp dir: its parents are 0700 root, which the postgres user cannot cross.
    base = Path(tempfile.mkdtemp(prefix="help-pg-"))
    data = base / "data"
    port = free_port()
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(base, pw.pw_uid, pw.pw_gid)
        as_postgres = ["runuser", "-u", "postgres", "--"]
    def run(*cmd: str) -> None:
        done = subprocess.run([*as_postgres, *cmd], capture_output=True, text=True)
        if done.returncode:
            pytest.fail(f"PostgreSQL: {' '.join(cmd[:1])} failed: {done.stderr or done.stdout}")

    run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "help", "--no-sync", "-E", "UTF8")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(base / "log"), "-o",
        f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        yield f"postgresql+psycopg://help@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def fresh_postgres_db(postgres_url: str) -> str:
    """The URL of a new, empty database in the session's PostgreSQL cluster."""
    import uuid

    import sqlalchemy as sa

    name = "db_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return postgres_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a SQLite file, then a new database on the real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'var' / 'casebook.db'}"
    return fresh_postgres_db(request.getfixturevalue("postgres_url"))

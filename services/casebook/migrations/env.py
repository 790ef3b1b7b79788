"""Alembic environment of the casebook, configured from code (no alembic.ini).

``services.casebook.db.migrate`` passes an open connection in ``config.attributes``; the
command-line use (``alembic -x url=...``) is not needed. The target metadata is the
casebook's and, once the ledger service exists (``services/ledger/tables.py`` exposing a
``metadata``), the ledger's too, so that autogenerate sees both on a shared database.
The version table is the casebook's own, so other services' migrations never clash.
"""

from __future__ import annotations

import importlib
import importlib.util

import sqlalchemy as sa
from alembic import context

from services.casebook.tables import metadata as casebook_metadata

VERSION_TABLE = "casebook_alembic_version"


def _target_metadata() -> list[sa.MetaData]:
    targets = [casebook_metadata]
    # Guarded: the ledger is built in its own issue; include its tables when it exists.
    if importlib.util.find_spec("services.ledger") is not None and \
            importlib.util.find_spec("services.ledger.tables") is not None:
        ledger = importlib.import_module("services.ledger.tables")
        ledger_metadata = getattr(ledger, "metadata", None)
        if isinstance(ledger_metadata, sa.MetaData):
            targets.append(ledger_metadata)
    return targets


def _include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    # Only the casebook's tables are the casebook's to migrate; the ledger migrates its own.
    if type_ == "table" and name is not None:
        return name.startswith("casebook_")
    return True


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        url = context.config.get_main_option("sqlalchemy.url")
        engine = sa.create_engine(str(url))
        with engine.begin() as conn:
            _run(conn)
        engine.dispose()
    else:
        _run(connection)


def _run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=_target_metadata(),
        version_table=VERSION_TABLE,
        include_object=_include_object,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()

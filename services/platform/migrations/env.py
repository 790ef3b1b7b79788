"""Alembic environment of the shared database, configured from code (no alembic.ini).

:func:`services.platform.db.migrate` passes an open connection in ``config.attributes``.
One linear history for every table (casebook, ledger, tracked consumers' offsets), one
version table. ``target_metadata`` is only for ``alembic revision --autogenerate``: the
caller puts the services' ``MetaData`` objects in ``config.attributes["target_metadata"]``
(the platform does not import the services above it); tests/test_migrations.py checks that
the migrated schema equals the tables the code declares.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from services.platform.db import VERSION_TABLE


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
        target_metadata=context.config.attributes.get("target_metadata"),
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()

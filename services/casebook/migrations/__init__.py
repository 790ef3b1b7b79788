"""Alembic migrations of the casebook (run by :func:`services.casebook.db.migrate`)."""

"""Alembic migrations of the shared database (run by :func:`services.platform.db.migrate`)."""

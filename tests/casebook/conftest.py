"""Casebook fixtures: an empty, migrated casebook on SQLite or on the real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from services.core.taxonomy import Taxonomy
from services.platform.db import open_engine
from services.platform.settings import load_settings


@pytest.fixture(scope="session")
def taxonomy() -> Taxonomy:
    return load_settings().taxonomy


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    engine = open_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = open_engine(f"sqlite:///{tmp_path / 'casebook.db'}")
    yield engine
    engine.dispose()

"""Ledger fixtures: the same tests run against SQLite and a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from services.ledger.heads import LedgerSigner
from services.ledger.store import Ledger
from services.platform.db import open_engine
from services.platform.settings import Settings, load_settings


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = open_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def signer() -> LedgerSigner:
    return LedgerSigner.generate()


@pytest.fixture
def ledger(engine: Engine, signer: LedgerSigner) -> Ledger:
    return Ledger(engine, signer)


@pytest.fixture
def ledger_settings(db_url: str, tmp_path: Path) -> Settings:
    """Settings whose database is ``db_url`` (SQLite or PostgreSQL), with fresh tables."""
    open_engine(db_url).dispose()
    return load_settings(var_dir=tmp_path / "var", key_dir=tmp_path / "var" / "keys",
                         database_url=db_url)


@pytest.fixture(scope="session")
def go_verifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Go's sumdb/note and sumdb/tlog verifier (tests/ledger/go/tlogverify), built once."""
    from tests.ledger.auditing import build_go_verifier

    return build_go_verifier(tmp_path_factory.mktemp("go"))

"""Every table under one Alembic history (services/platform/migrations): the migrated schema
is the one the code declares, and a database of the previous release (casebook at
``0003_web_sessions`` in ``casebook_alembic_version``, ledger tables by ``create_all``,
offsets in ``casebook_offsets`` and ``ledger_offsets``) upgrades in place, its sinks
resuming where they stopped. On SQLite and on a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiokafka import TopicPartition
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from services.casebook import tables as casebook_tables
from services.casebook.sink import GROUP, SINK_TOPICS, apply_records
from services.core.messages import to_wire
from services.core.types import Fund
from services.ledger import tables as ledger_tables
from services.ledger.sink import CONSUMER, EntryMaker, audit_tracker
from services.ledger.store import Ledger, ensure_ready
from services.platform import datakeys, tracking
from services.platform.db import LEGACY_VERSION_TABLE, VERSION_TABLE, alembic_config, make_engine, migrate
from services.platform.topics import FOLLOWUPS_TOPIC, SITUATIONS_TOPIC, receipt_topic
from services.platform.tracking import Processed, TrackedConsumer
from tests.support import situations as F
from tests.support.entries import make_entry
from tests.support.fake_kafka import FakeSource, Message

pytestmark = pytest.mark.integration

#: The positions the previous release stored: the LAST offset applied.
CASEBOOK_LAST = {(SITUATIONS_TOPIC, 0): 41, (FOLLOWUPS_TOPIC, 3): 6}
LEDGER_LAST = {(receipt_topic(Fund.CAF), 0): 11, (SITUATIONS_TOPIC, 0): 39}


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


def declared() -> sa.MetaData:
    """Every table the code declares, in one MetaData."""
    everything = sa.MetaData()
    for metadata in (casebook_tables.metadata, ledger_tables.metadata, tracking.metadata, datakeys.metadata):
        for table in metadata.tables.values():
            table.to_metadata(everything)
    return everything


def test_the_migrated_schema_is_the_declared_one(engine: sa.Engine) -> None:
    migrate(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), declared())
        names = set(sa.inspect(conn).get_table_names())
    assert diff == [], diff
    assert names == set(declared().tables) | {VERSION_TABLE}


def test_the_check_can_fail(engine: sa.Engine) -> None:
    migrate(engine, "0005_ledger_tables")  # before tracking_offsets
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), declared())
    assert ("add_table", tracking.offsets.name) in {(d[0], d[1].name) for d in diff
                                                    if d[0] in ("add_table", "remove_table")}


def _previous_release(engine: sa.Engine) -> None:
    """The database as the previous release left it."""
    migrate(engine, "0003_web_sessions")
    with engine.begin() as conn:  # that release's Alembic kept its revision here
        conn.exec_driver_sql(f"CREATE TABLE {LEGACY_VERSION_TABLE} (version_num VARCHAR(32) "
                             "NOT NULL PRIMARY KEY)")
        conn.exec_driver_sql(f"INSERT INTO {LEGACY_VERSION_TABLE} SELECT version_num "
                             f"FROM {VERSION_TABLE}")
        conn.exec_driver_sql(f"DROP TABLE {VERSION_TABLE}")
    old_ledger = sa.MetaData()  # the ledger made its tables with create_all, offsets included
    for table in ledger_tables.metadata.tables.values():
        table.to_metadata(old_ledger)
    sa.Table("ledger_offsets", old_ledger,
             sa.Column("consumer", sa.String(64), primary_key=True),
             sa.Column("topic", sa.String(128), primary_key=True),
             sa.Column("partition", sa.Integer, primary_key=True),
             sa.Column("offset", sa.BigInteger, nullable=False))
    old_ledger.create_all(engine)
    with engine.begin() as conn:
        for name, consumer, last in (("casebook_offsets", GROUP, CASEBOOK_LAST),
                                      ("ledger_offsets", CONSUMER, LEDGER_LAST)):
            for (topic, partition), offset in last.items():
                conn.execute(sa.text(f'INSERT INTO {name} (consumer, topic, "partition", '
                                     f'"offset") VALUES (:c, :t, :p, :o)'),
                             {"c": consumer, "t": topic, "p": partition, "o": offset})
    Ledger(engine).append([make_entry(i) for i in range(3)])


async def _resume(tracker: TrackedConsumer[Any], log: dict[TopicPartition, list[Message]]
                  ) -> FakeSource:
    source = FakeSource(log)
    stop = asyncio.Event()

    async def after_poll(done: Processed[Any] | None) -> None:
        if done is None:
            stop.set()

    await asyncio.wait_for(tracker.run(source, stop=stop, after_poll=after_poll), 10)
    return source


async def test_a_database_of_the_previous_release_upgrades_in_place(engine: sa.Engine) -> None:
    _previous_release(engine)
    root = Ledger(engine).root()

    ensure_ready(engine)  # what the sinks do when they start (casebook: open_engine)
    names = set(sa.inspect(engine).get_table_names())
    assert {"casebook_offsets", "ledger_offsets", LEGACY_VERSION_TABLE} & names == set()
    with engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar() == \
            ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert tracking.load_positions(conn, GROUP) == {k: v + 1 for k, v in CASEBOOK_LAST.items()}
        assert tracking.load_positions(conn, CONSUMER) == {k: v + 1 for k, v in LEDGER_LAST.items()}
    ledger = Ledger(engine)
    assert ledger.size() == 3 and ledger.root() == root  # the ledger's data untouched

    # The casebook sink resumes at the record after the last one it applied.
    event = F.situation(1)
    log = {TopicPartition(SITUATIONS_TOPIC, 0): [Message(o, to_wire(event), event.situation_id.encode())
                                                 for o in range(44)],
           TopicPartition(FOLLOWUPS_TOPIC, 3): [Message(o, b"{}") for o in range(7)]}
    casebook = TrackedConsumer(engine, GROUP, SINK_TOPICS, apply_records)
    source = await _resume(casebook, log)
    assert dict(source.seeks) == {TopicPartition(SITUATIONS_TOPIC, 0): 42,
                                  TopicPartition(FOLLOWUPS_TOPIC, 3): 7}
    with engine.connect() as conn:
        assert tracking.load_positions(conn, GROUP)[(SITUATIONS_TOPIC, 0)] == 44
        assert conn.execute(sa.select(sa.func.count()).select_from(casebook_tables.situations)) \
            .scalar() == 1  # offsets 42 and 43: the same situation, applied once

    # The audit sink too (its records: replays of what it had entered, nothing new).
    audit = audit_tracker(ledger, EntryMaker(None, ledger))
    log = {TopicPartition(SITUATIONS_TOPIC, 0): [Message(o, to_wire(event)) for o in range(40)],
           TopicPartition(receipt_topic(Fund.CAF), 0): []}
    source = await _resume(audit, log)
    assert dict(source.seeks) == {TopicPartition(SITUATIONS_TOPIC, 0): 40,
                                  TopicPartition(receipt_topic(Fund.CAF), 0): 12}
    assert ledger.size() == 3


def test_processes_starting_together_migrate_one_after_the_other(db_url: str) -> None:
    """Two correlator workers, the sinks and the web view start together on a fresh database:
    each must find the schema at head, none fail on a version table another just created."""
    import subprocess
    import sys

    script = ("import sys; from services.platform.db import make_engine, migrate; "
              "migrate(make_engine(sys.argv[1]))")
    procs = [subprocess.Popen([sys.executable, "-c", script, db_url], stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    failures = [err for proc in procs if (err := proc.communicate(timeout=120)[1]) and proc.returncode]
    assert failures == []
    with make_engine(db_url).connect() as conn:
        assert conn.exec_driver_sql(f"SELECT count(*) FROM {VERSION_TABLE}").scalar() == 1


def test_a_smaller_sqlite_page_cache_on_request(tmp_path: Path) -> None:
    # (the correlator's key table: random point reads, a cache as large as the table grew the worker)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    with make_engine(url).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA cache_size").scalar() == -131072
    with make_engine(url, sqlite_cache_kib=2048).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA cache_size").scalar() == -2048
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_a_migration_that_fails_half_way_leaves_nothing_behind(db_url: str, monkeypatch: pytest.MonkeyPatch,
                                                                ) -> None:
    """A process killed (or failing) in the middle of the first migration: the tables it had
    made are rolled back with it, so the next start migrates from scratch instead of failing on
    "table ... already exists"."""
    from alembic import op

    made: list[str] = []
    real_create_table = op.create_table

    def create_then_fail(name: str, *args: Any, **kwargs: Any) -> Any:
        if len(made) == 2:
            raise RuntimeError("killed half-way")
        made.append(name)
        return real_create_table(name, *args, **kwargs)

    monkeypatch.setattr(op, "create_table", create_then_fail)
    engine = make_engine(db_url)
    with pytest.raises(RuntimeError, match="killed half-way"):
        migrate(engine)
    assert len(made) == 2
    assert not set(made) & set(sa.inspect(engine).get_table_names())
    monkeypatch.undo()
    migrate(engine)
    assert set(made) <= set(sa.inspect(engine).get_table_names())
    engine.dispose()

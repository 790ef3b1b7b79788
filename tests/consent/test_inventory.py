"""docs/erasure.md lists every place personal data can live: every topic of the published
contract, the correlator's internal topics, every table of the database (casebook, ledger,
consumer positions, schema revision: tests/platform/test_migrations.py checks the migrated
database holds exactly the declared tables); each row says what objection, withdrawal and
purge do and what is left (a code the tests can read)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from services.casebook import tables as casebook_tables
from services.correlator.engine import REPARTITION_TOPIC
from services.ledger import tables as ledger_tables
from services.platform import datakeys, tracking
from services.platform.db import VERSION_TABLE

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "erasure.md"
AFTER = {"erased", "minimal", "marker", "remains", "no person data", "fund side", "outside"}


def rows(doc: Path = DOC) -> dict[str, list[str]]:
    """First cell (the place, in backticks) -> the row's cells."""
    found: dict[str, list[str]] = {}
    for line in doc.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and (m := re.fullmatch(r"`([^`]+)`.*", cells[0])):
            assert m.group(1) not in found, f"{m.group(1)} twice"
            found[m.group(1)] = cells
    return found


def test_every_topic_and_table_is_in_the_inventory() -> None:
    places = rows()
    spec = yaml.safe_load((ROOT / "schemas" / "asyncapi.yaml").read_text(encoding="utf-8"))
    addresses = {c["address"].replace("{fund}", "<fund>") for c in spec["channels"].values()}
    internal = {REPARTITION_TOPIC, "<app id>-persons-changelog"}
    tables = (set(casebook_tables.metadata.tables) | set(ledger_tables.metadata.tables)
              | set(tracking.metadata.tables) | set(datakeys.metadata.tables) | {VERSION_TABLE})
    missing = (addresses | internal | tables) - set(places)
    assert not missing, f"not in docs/erasure.md: {sorted(missing)}"
    assert len(addresses) >= 7 and len(tables) >= 10  # the scan found them


def test_each_row_says_what_is_left() -> None:
    for place, cells in rows().items():
        after = cells[-1]
        assert any(after.startswith(code) for code in AFTER), (place, after)


def test_the_check_can_fail(tmp_path: Path) -> None:
    text = DOC.read_text(encoding="utf-8")
    doc = tmp_path / "erasure.md"
    doc.write_text("\n".join(line for line in text.splitlines() if "`casebook_outbox`" not in line))
    assert "casebook_outbox" in rows() and "casebook_outbox" not in rows(doc)
    assert rows()["casebook_outbox"][-1] == "erased"

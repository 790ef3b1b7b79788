"""The correlator takes a changed key registry without a restart — in the engine, and in its
check helpers — only when the registry's signature verifies; a signal with a key id it does
not know makes it look at the file again before refusing; a signature by a retired key is
refused as ``cle_signature_retiree`` (docs/keys.md)."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.core.reasons import Reason
from services.core.registry import (
    FundKeys,
    Registry,
    load_signer_public,
    registry_path,
    save_registry,
    signer_public_path,
)
from services.core.types import Fund
from services.correlator.checkpool import CheckPool
from services.correlator.checks import Checker
from services.correlator.engine import Engine, Record
from services.correlator.registry_source import RegistrySource
from services.errors import ConfigurationError
from services.platform.partitioning import partition_for
from services.platform.topics import receipt_topic, signal_topic
from tests.correlator.core_fixtures import context
from tests.support.signals import Funds, wire

AT = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def funds() -> Funds:
    return Funds(now=AT)  # signals dated at the engine's clock (date rules)


def without(registry: Registry, fund: Fund) -> Registry:
    return registry.model_copy(update={"funds": {f: k for f, k in registry.funds.items() if f is not fund}})


def retired(registry: Registry, fund: Fund) -> Registry:
    keys = registry.funds[fund]
    entries = tuple(e.model_copy(update={"status": "retired", "retired_at": "2026-11-20T11:00:00Z"})
                    for e in keys.signing_keys)
    return registry.model_copy(update={"funds": {**registry.funds, fund: FundKeys(signing_keys=entries)}})


def caf_items(funds: Funds, n: int, prefix: str = "r") -> list[tuple[bytes | None, str]]:
    return [(wire(funds.signal(f"{prefix}{i}", Fund.CAF, "impaye_loyer", n=i)), signal_topic(Fund.CAF))
            for i in range(n)]


def test_checker_tells_unknown_from_retired(funds: Funds) -> None:
    (value, topic), = caf_items(funds, 1)
    assert Checker(without(funds.registry(), Fund.CAF)).check(value, topic).reason is Reason.CLE_SIGNATURE_INCONNUE
    verdict = Checker(retired(funds.registry(), Fund.CAF)).check(value, topic)
    assert verdict.reason is Reason.CLE_SIGNATURE_RETIREE and verdict.detail == "/signature/key_id:retired"
    assert Reason.CLE_SIGNATURE_RETIREE.label.startswith("Clé de signature retirée")
    checker = Checker(without(funds.registry(), Fund.CAF))
    checker.check(value, topic)
    checker.use(funds.registry())  # the cached "no such key" goes with the old registry
    assert checker.check(value, topic).reason is None


def test_made_up_key_ids_do_not_grow_the_checkers_memory(funds: Funds) -> None:
    """Key ids come from the records: a writer of a topic must not fill the key cache at will."""
    (value, topic), = caf_items(funds, 1)
    checker = Checker(funds.registry())
    assert checker.check(value, topic).reason is None
    for i in range(500):
        forged = json.loads(value)
        forged["signature"]["key_id"] = f"made-up-{i}"
        verdict = checker.check(json.dumps(forged).encode(), topic)
        assert verdict.reason is Reason.CLE_SIGNATURE_INCONNUE
    assert len(checker._keys) == 1  # the one real key, none of the 500 made-up ids


@pytest.fixture
def pool(funds: Funds) -> Iterator[CheckPool]:
    p = CheckPool(without(funds.registry(), Fund.CAF), 2, partitions=8, chunk=3)
    yield p
    p.close()


def test_check_helpers_take_a_new_registry_before_their_next_request(funds: Funds, pool: CheckPool) -> None:
    items = caf_items(funds, 10)

    def reasons() -> set[Reason | None]:
        verdict = pool.start(items)
        return {verdict(i).reason for i in range(len(items))}

    assert reasons() == {Reason.CLE_SIGNATURE_INCONNUE}
    pool.update(funds.registry())
    assert reasons() == {None}
    pool.update(retired(funds.registry(), Fund.CAF))
    assert reasons() == {Reason.CLE_SIGNATURE_RETIREE}


def _records(items: list[tuple[bytes | None, str]], first_offset: int) -> list[Record]:
    out = []
    for i, (value, topic) in enumerate(items):
        assert value is not None
        partition = partition_for(json.loads(value)["pseudonym"]["value"], 8)
        out.append(Record(topic, partition, first_offset + i, 1_763_640_000_000, None, value))
    return out


def _receipts(batch: Any) -> list[str | None]:
    return [json.loads(o.value)["reason"] for o in batch.outputs if o.topic == receipt_topic(Fund.CAF)]


def _source(key_dir: Path, registry: Registry) -> RegistrySource:
    save_registry(registry, registry_path(key_dir))
    return RegistrySource(registry_path(key_dir), signer_public_path(key_dir))


@pytest.mark.parametrize("helpers", [0, 2])
def test_engine_reloads_between_batches_and_accepts_a_signal_refused_before(
        funds: Funds, tmp_path: Path, helpers: int) -> None:
    source = _source(tmp_path, without(funds.registry(), Fund.CAF))
    checks = CheckPool(source.registry, helpers, partitions=8, chunk=2) if helpers else None
    try:
        engine = Engine(context(), source.registry, clock=lambda: AT, checks=checks, registry_source=source)
        table: dict[bytes, bytes] = {}
        items = caf_items(funds, 4, prefix=f"e{helpers}-")
        first = engine.process(_records(items, 0), table.get)
        assert _receipts(first) == ["cle_signature_inconnue"] * 4 and not first.writes
        save_registry(funds.registry(), registry_path(tmp_path))  # the key registered: no restart
        again = engine.process(_records(items, 100), table.get)  # the same signals, sent again
        assert _receipts(again) == [None] * 4, "refused before is no duplicate: only accepted ids are"
        table.update({k: v for k, (_, v) in again.writes.items()})
        replay = engine.process(_records(items, 200), table.get)
        assert _receipts(replay) == ["doublon"] * 4
        save_registry(retired(funds.registry(), Fund.CAF), registry_path(tmp_path))
        later = engine.process(_records(caf_items(funds, 3, prefix=f"l{helpers}-"), 300), table.get)
        assert _receipts(later) == ["cle_signature_retiree"] * 3
        assert source.generation == 2
    finally:
        if checks is not None:
            checks.close()


def test_an_unknown_key_makes_the_engine_look_at_the_file_again_mid_batch(
        funds: Funds, tmp_path: Path, pool: CheckPool) -> None:
    source = _source(tmp_path, without(funds.registry(), Fund.CAF))
    engine = Engine(context(), source.registry, clock=lambda: AT, checks=pool, registry_source=source)
    records = _records(caf_items(funds, 10, prefix="mid-"), 0)
    steps = engine.steps(records, {}.get, every=2)
    next(steps)  # two records done, the helpers already checked every one with the old registry
    save_registry(funds.registry(), registry_path(tmp_path))
    while True:
        try:
            next(steps)
        except StopIteration as end:
            batch = end.value
            break
    assert _receipts(batch) == ["cle_signature_inconnue"] * 2 + [None] * 8


def test_a_registry_that_does_not_verify_is_not_taken(funds: Funds, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    source = _source(tmp_path, funds.registry())
    engine = Engine(context(), source.registry, clock=lambda: AT, registry_source=source)
    path = registry_path(tmp_path)
    doc = json.loads(path.read_text())
    del doc["funds"]["caf"]  # changed by hand: the signature no longer matches
    path.write_text(json.dumps(doc))
    with caplog.at_level(logging.ERROR, logger="help.correlator"):
        first = engine.process(_records(caf_items(funds, 2, prefix="bad-"), 0), {}.get)
        engine.process(_records(caf_items(funds, 2, prefix="bad2-"), 10), {}.get)
    assert _receipts(first) == [None, None]  # the last good registry still decides
    lines = [r.getMessage() for r in caplog.records if "NOT taken" in r.getMessage()]
    assert len(lines) == 1 and "does not match" in lines[0], lines  # said once, no crash
    path.write_text("{not json")
    with caplog.at_level(logging.ERROR, logger="help.correlator"):
        engine.process(_records(caf_items(funds, 1, prefix="bad3-"), 20), {}.get)
    assert len([r for r in caplog.records if "NOT taken" in r.getMessage()]) == 2
    assert engine.registry == funds.registry() and source.refused == 2
    # a signer other than the pinned one: refused at start, the worker does not run on it
    with pytest.raises(ConfigurationError):
        RegistrySource(path, load_signer_public(signer_public_path(tmp_path)))
    other = tmp_path / "other"
    save_registry(funds.registry(), registry_path(other))
    with pytest.raises(ConfigurationError, match="does not match"):
        RegistrySource(registry_path(other), signer_public_path(tmp_path))

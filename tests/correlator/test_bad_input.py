"""Every bad-input class of the issue, on the real embedded broker and a real worker process:
each one gets a dead letter and a receipt with its precise reason code, and the worker goes on
(a valid signal published after all of them is accepted and correlated)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.core.types import Fund
from services.correlator.checks import MAX_MESSAGE_BYTES
from services.platform.partitioning import partition_for
from services.platform.settings import Settings
from services.platform.topics import signal_topic
from tests.correlator.harness import Collector, deadletter_payload, publish, start_worker, stop
from tests.support.signalkeys import local_keys
from tests.support.signals import RETIRED_KEY, Funds, wire

pytestmark = pytest.mark.integration


@pytest.fixture
async def collector(bootstrap: str, settings: Settings) -> AsyncIterator[Collector]:
    c = Collector(bootstrap, settings.database_url)
    await c.start()
    yield c
    await c.stop()


#: Refusals decided once signature and schema are verified: the payload is kept, sealed.
AFTER_CHECKS = {"doublon", "categorie_medicale"}


def _key(msg: dict[str, object]) -> bytes:
    return str(msg["pseudonym"]["value"]).encode()  # type: ignore[index]


async def test_every_bad_input_class_is_dead_lettered_with_its_reason(
        settings: Settings, collector: Collector, tmp_path: Path) -> None:
    funds = Funds(sealing=local_keys(settings))
    funds.write_registry(settings.key_dir)
    caf, urssaf = signal_topic(Fund.CAF), signal_topic(Fund.URSSAF)
    good = funds.signal("bad-p0", Fund.CAF, "impaye_loyer")
    other_fund_key = funds.signal("bad-p1", Fund.CAF, "impaye_loyer", signer=Fund.CPAM)
    # Signed by CPAM's key but naming CAF's key id: the signature does not verify.
    forged_sig = funds.signal("bad-p1b", Fund.CAF, "separation", signer=Fund.CPAM)
    forged_sig["signature"]["key_id"] = funds.key_id(Fund.CAF)
    medical = funds.signal("bad-p2", Fund.CAF, "maladie_handicap_enfant")
    sensitive = funds.signal("bad-p3", Fund.CPAM, "renoncement_soins")
    retired = funds.signal("bad-p4", Fund.CAF, "impaye_loyer", key_id=RETIRED_KEY)
    wrong_topic = funds.signal("bad-p5", Fund.URSSAF, "impaye_cotisations")
    v2 = funds.signal("bad-p6", Fund.CAF, "separation", schema_version="2.0")
    unknown_fund = {**good, "fund": "pole-emploi"}
    oversize = wire(good) + b" " * 20_000
    cases: list[tuple[str, bytes, bytes | None, str]] = [
        (caf, b'{"signal_id": "abc", ', None, "json_invalide"),
        (caf, wire(v2), _key(v2), "version_schema_inconnue"),
        (caf, wire(unknown_fund), _key(good), "organisme_inconnu"),
        (caf, wire(other_fund_key), _key(other_fund_key), "cle_signature_inconnue"),
        (caf, wire(forged_sig), _key(forged_sig), "signature_invalide"),
        (caf, wire(good), _key(good), ""),  # accepted...
        (caf, wire(good), _key(good), "doublon"),  # ...and its replay refused
        (caf, wire(wrong_topic), _key(wrong_topic), "topic_incorrect"),
        (caf, wire(medical), _key(medical), "categorie_medicale"),
        (signal_topic(Fund.CPAM), wire(sensitive), _key(sensitive), "categorie_medicale"),
        (caf, oversize, _key(good), "message_trop_volumineux"),
        (caf, wire(retired), _key(retired), "cle_pseudonyme_refusee"),
    ]
    # Partition explicitly by the pseudonym, as the SDK does (murmur2).
    items = [(t, k, v, partition_for(k.decode(), 8) if k else 0) for t, v, k, _ in cases]
    positions = await publish(settings.bootstrap_servers or "", items)
    proc = start_worker(settings, "corr-bad-input", tmp_path / "worker.log")
    try:
        refused = sum(1 for *_, expected in cases if expected)
        # (Receipts and dead letters are two topics: read until both came.)
        await collector.until(lambda c: all(c.receipt_for(*p) for p in positions)
                              and len(c.deadletters) >= refused, timeout=90)
        for (_, raw, _, expected), pos in zip(cases, positions, strict=True):
            receipt = collector.receipt_for(*pos)
            assert receipt is not None
            assert receipt["fund"] == "caf" if pos[0] == caf else True
            if not expected:
                assert receipt["status"] == "accepte", pos
                continue
            assert (receipt["status"], receipt["reason"]) == ("rejete", expected), pos
            letters = [d for d in collector.deadletters.values()
                       if (d["source"]["topic"], d["source"]["partition"], d["source"]["offset"]) == pos]
            assert len(letters) == 1 and letters[0]["reason"] == expected
            letter = letters[0]
            kept = deadletter_payload(settings, letter)
            # What proves which message it was, kept or not.
            assert (letter["raw_size"], letter["raw_sha256"]) == (len(raw), hashlib.sha256(raw).hexdigest())
            if expected in AFTER_CHECKS:  # a verified person's: sealed under their data key
                assert letter["detail"].endswith(";raw_sealed") and kept == raw, pos
            else:  # refused before its checks: nothing of it kept
                assert letter["detail"].endswith(";raw_withheld") and kept == b"", pos
            assert "bad-p" not in letter["detail"] and "pole-emploi" not in letter["detail"]
            envelope = letter["envelope"]
            if len(raw) > MAX_MESSAGE_BYTES or expected == "json_invalide":
                assert envelope is None, pos
            else:  # who sent what kind of message, never about whom
                msg = json.loads(raw)
                assert envelope == {"schema_version": msg["schema_version"],
                                    "fund": None if msg["fund"] == "pole-emploi" else msg["fund"],
                                    "emitter": msg["emitter"], "emitted_at": msg["emitted_at"]}, pos
                assert msg["pseudonym"]["value"] not in json.dumps(letter)
        # The worker kept going: two funds for one person -> a shared situation opens.
        pair = [funds.signal("bad-ok", Fund.CAF, "impaye_loyer"),
                funds.signal("bad-ok", Fund.URSSAF, "impaye_cotisations")]
        later = await publish(settings.bootstrap_servers or "",
                              [(signal_topic(Fund(m["fund"])), _key(m), wire(m),
                                partition_for(_key(m).decode(), 8)) for m in pair])
        await collector.until(lambda c: all(c.receipt_for(*p) for p in later)
                              and any(s["pseudonym"]["value"] == pair[0]["pseudonym"]["value"]
                                      for s in c.situations))
        sit = next(s for s in collector.situations
                   if s["pseudonym"]["value"] == pair[0]["pseudonym"]["value"])
        assert sit["kind"] == "ouverte" and sit["funds"] == ["urssaf", "caf"]
        assert "help_travailleur_independant" in sit["rules"]
        assert proc.poll() is None, "the worker must not stop for bad input"
    finally:
        stop(proc)
        print((tmp_path / "worker.log").read_text()[-3000:])
    _ = (json, dt, urssaf)

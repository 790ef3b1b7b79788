"""The signing-key life cycle under load (issue #14, part 4), against a real embedded broker and
a real correlator worker (with a check helper process): while signals flow (20,000 in
``test_key_lifecycle.py``), CAF's key is rotated (``keys init --rotate``), a key URSSAF made
elsewhere is used before the exchange registers it (``keys register``, a PEM made by
``cryptography``), and CAF's old key is retired (``keys retire``) while signals it signed
are still on their way. Then the funds' side brings back every refused signal (``receipts``
reconciles, ``outbox flush`` sends) until nothing is pending or unexplained, and every valid
signal is accepted exactly once, as the receipts topics say."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.app.cli import cli
from services.core.messages import Receipt
from services.core.registry import write_secret
from services.core.types import Fund
from services.platform.settings import Settings
from services.producer.keys import fund_dir, init_exchange_key, init_fund_keys, read_current
from services.producer.outbox import Outbox, Row
from services.producer.receipts import read_receipts
from services.producer.sdk import Publisher, SignalBuilder, SignalInput, today_paris
from tests.support.extracts import make_nir
from tests.support.processes import start_service, terminate

CATEGORY = {Fund.CAF: "impaye_loyer", Fund.URSSAF: "impaye_cotisations"}
EXTERNAL_KEY_ID = "urssaf-sig-ext-0001"


def cli_run(settings: Settings, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), obj={"settings": settings}, catch_exceptions=False)
    return result.exit_code, result.output


@dataclass
class Inputs:
    """Records with distinct references (so distinct signal ids), per fund."""

    rng: random.Random
    next_n: Counter[Fund] = field(default_factory=Counter)

    def take(self, fund: Fund, n: int) -> list[SignalInput]:
        out = []
        today = today_paris()
        for _ in range(n):
            i = self.next_n[fund]
            self.next_n[fund] += 1
            out.append(SignalInput(nir=make_nir(self.rng, "35"), category=CATEGORY[fund],
                                   observed_on=today - dt.timedelta(days=1 + i % 300), departement="35",
                                   reference=f"{fund.value.upper()}35-{i:07d}"))
        return out


async def _send(settings: Settings, fund: Fund, rows: list[Row]) -> list[str]:
    """Send ``rows``; returns what the run's reconciliation of earlier receipts said."""
    async with Publisher(settings, fund) as pub:
        assert pub.online, pub.offline_reason
        for i in range(0, len(rows), 1000):
            await pub.submit(rows[i:i + 1000])
        await pub.drain()
    return [] if pub.reconciled is None else pub.reconciled.lines()


def build(settings: Settings, builder: SignalBuilder, records: list[SignalInput]) -> list[Row]:
    return [builder.build(r) for r in records]


async def receipts_of(settings: Settings, fund: Fund) -> list[Receipt]:
    got: list[Receipt] = []

    def keep(r: Receipt | None, raw: bytes) -> None:
        assert r is not None, raw[:200]
        got.append(r)

    assert settings.bootstrap_servers
    await read_receipts(settings, settings.bootstrap_servers, fund, keep)
    return got


def wait_for(settings: Settings, fund: Fund, reason: str, proc: subprocess.Popen[bytes],
             timeout: float = 120) -> None:
    """Until a receipt of ``fund`` refuses a signal with ``reason`` (the worker got that far)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(r.reason is not None and r.reason.value == reason
               for r in asyncio.run(receipts_of(settings, fund))):
            return
        assert proc.poll() is None, "the correlator stopped"
        time.sleep(0.5)
    raise AssertionError(f"no {reason} receipt for {fund.value} within {timeout} s")


@dataclass
class Outcome:
    signals: int
    refused: Counter[str]
    rounds: int
    seconds: float
    reconciliation: str


def run(settings: Settings, tmp_path: Path, total: int, *, seed: int = 14) -> Outcome:
    """The scenario with ``total`` signals (CAF and URSSAF); asserts as it goes."""
    t0 = time.monotonic()
    key_dir = settings.key_dir
    init_exchange_key(key_dir)
    caf_old = init_fund_keys(key_dir, Fund.CAF).signing
    init_fund_keys(key_dir, Fund.URSSAF)
    inputs = Inputs(random.Random(seed))
    expected: dict[Fund, set[str]] = {Fund.CAF: set(), Fund.URSSAF: set()}
    worker = start_service(settings, tmp_path / "correlator.log", "correlator", "--app-id", "keys-lifecycle",
                           "--check-processes", "1", "--batch-max", "500")
    part = total // 10

    texts: list[str] = []

    def send(fund: Fund, rows: list[Row]) -> None:
        expected[fund].update(r.signal_id for r in rows)
        # (a run settles the receipts that came before it: a retired key's refusals may be
        # re-signed here, before the funds' side below sees them)
        texts.append("\n".join(asyncio.run(_send(settings, fund, rows))))

    try:
        # 1. Both funds with their first keys; a CAF builder kept on the old key.
        caf_old_builder = SignalBuilder(settings, Fund.CAF)
        send(Fund.CAF, build(settings, caf_old_builder, inputs.take(Fund.CAF, 2 * part)))
        send(Fund.URSSAF, build(settings, SignalBuilder(settings, Fund.URSSAF), inputs.take(Fund.URSSAF, 2 * part)))
        # Signed now by the old CAF key, sent only after it is retired ("retired after signing").
        signed_before_retirement = build(settings, caf_old_builder, inputs.take(Fund.CAF, part))

        # 2. CAF rotates while the correlator works: the new key is in the registry at once.
        code, out = cli_run(settings, "keys", "init", "--fund", "caf", "--rotate")
        assert code == 0, out
        caf_builder = SignalBuilder(settings, Fund.CAF)
        assert caf_builder.signing_key_id != caf_old and caf_builder.key_warning is None
        send(Fund.CAF, build(settings, caf_builder, inputs.take(Fund.CAF, 2 * part)))

        # 3. URSSAF signs with a key made elsewhere (its own tools), not registered yet.
        private = Ed25519PrivateKey.generate()
        folder = fund_dir(key_dir, Fund.URSSAF)
        write_secret(folder / f"{EXTERNAL_KEY_ID}.pem", private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        current = read_current(key_dir, Fund.URSSAF)
        assert current is not None
        (folder / "current.json").write_text(json.dumps(
            {"signing": EXTERNAL_KEY_ID, "sealing": current.sealing, "id_root": current.id_root}))
        urssaf_builder = SignalBuilder(settings, Fund.URSSAF)
        assert urssaf_builder.key_warning is not None and "pas dans le registre" in urssaf_builder.key_warning
        send(Fund.URSSAF, build(settings, urssaf_builder, inputs.take(Fund.URSSAF, part)))
        wait_for(settings, Fund.URSSAF, "cle_signature_inconnue", worker)

        # 4. The exchange registers it (PEM), the fingerprint to confirm by telephone.
        public_pem = tmp_path / "urssaf-public.pem"
        public_pem.write_bytes(private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        code, out = cli_run(settings, "keys", "register", "--fund", "urssaf", "--public-key", str(public_pem),
                            "--key-id", EXTERNAL_KEY_ID)
        assert code == 0 and "empreinte : sha256:" in out, out
        assert SignalBuilder(settings, Fund.URSSAF).key_warning is None

        # 5. CAF's old key is retired while what it signed still flows.
        code, out = cli_run(settings, "keys", "retire", "--fund", "caf", "--key-id", caf_old)
        assert code == 0, out
        send(Fund.CAF, signed_before_retirement)
        send(Fund.URSSAF, build(settings, urssaf_builder, inputs.take(Fund.URSSAF, part)))
        send(Fund.CAF, build(settings, caf_builder, inputs.take(Fund.CAF, total - 9 * part)))
        wait_for(settings, Fund.CAF, "cle_signature_retiree", worker)

        # 6. The funds' side: reconcile the receipts, send again, until nothing is left.
        rounds = 0
        deadline = time.monotonic() + 240
        while True:
            rounds += 1
            done = True
            for fund in (Fund.CAF, Fund.URSSAF):
                code, out = cli_run(settings, "receipts", "--fund", fund.value, "--quiet")
                assert code == 0, out
                texts.append(out)
                code, out = cli_run(settings, "outbox", "flush", "--fund", fund.value)
                assert code == 0, out
                texts.append(out)  # (a flush settles what came since, re-signing included)
                with Outbox.for_fund(settings.var_dir, fund) as box:
                    st = box.status()
                assert st.refused == 0, f"{fund.value}: refused for good: {out}"
                done = done and st.pending == 0 and st.awaiting_receipt == 0
            if done:
                break
            assert worker.poll() is None, "the correlator stopped"
            assert time.monotonic() < deadline, "receipts did not settle:\n" + "\n".join(texts[-4:])
            time.sleep(1.0)

        # 7. Every valid signal accepted exactly once; every refusal a key refusal, explained.
        refused: Counter[str] = Counter()
        for fund in (Fund.CAF, Fund.URSSAF):
            accepted: Counter[str] = Counter()
            for r in asyncio.run(receipts_of(settings, fund)):
                assert r.signal_id is not None
                if r.status == "accepte":
                    accepted[r.signal_id] += 1
                else:
                    assert r.reason is not None
                    refused[r.reason.value] += 1
            assert set(accepted) == expected[fund], (fund, len(accepted), len(expected[fund]))
            assert set(accepted.values()) == {1}, f"{fund.value}: accepted more than once"
        assert set(refused) == {"cle_signature_inconnue", "cle_signature_retiree"}, refused
        assert refused["cle_signature_retiree"] >= part and refused["cle_signature_inconnue"] >= 1
        text = "\n".join(texts)
        assert "inconnue de l'échange" in text and "keys register" in text
        assert "re-signés avec la clé en vigueur" in text
        assert "outbox flush --fund caf" in text or "renvoyés par cet envoi" in text
        assert worker.poll() is None
    finally:
        terminate(worker)
    log = (tmp_path / "correlator.log").read_text(errors="replace")
    assert "key registry reloaded" in log and "NOT taken" not in log
    return Outcome(sum(len(v) for v in expected.values()), refused, rounds, time.monotonic() - t0, text)

"""Reading a fund's receipts (``help.receipts.<fund>.v1``), written by the correlator, and
reconciling them with the fund's outbox (:func:`reconcile`, run by ``receipts --fund``).

Receipts are keyed by signal id and name the source position (topic, partition, offset) of
the message they answer; the outbox keeps, for each sent row, the position the broker gave
it: so a receipt is matched to *the* sending it answers, and an old refusal of a row sent
again since is not taken for an answer to the new sending.

Read without a consumer group (every partition assigned, from the beginning): the command
is a view, it commits nothing, and needs no group join (which the embedded broker makes
slow). Without ``follow`` it stops at the end offsets it saw when it started.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from services.core.codec import canonical
from services.core.messages import Receipt, parse
from services.core.reasons import Reason
from services.core.registry import Registry, load_registry, registry_path
from services.core.signing import sign
from services.core.types import Fund
from services.platform.kafka import UNREACHABLE, consumer, kafka_errors
from services.platform.settings import Settings
from services.platform.topics import receipt_topic, signal_topic
from services.producer.outbox import Outbox, Sent
from services.producer.sdk import read_to_end
from services.producer.signal_keys import SignalKeyClient

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from services.producer.keys import FundSecrets


async def _follow(cons: AIOKafkaConsumer, stop: asyncio.Event | None) -> AsyncIterator[list[Any]]:
    while stop is None or not stop.is_set():
        batch = await cons.getmany(timeout_ms=500)
        records = [rec for recs in batch.values() for rec in recs]
        if records:
            yield records


@dataclass
class ReceiptCounts:
    accepted: int = 0
    rejected: int = 0
    unreadable: int = 0
    reasons: Counter[str] | None = None


async def read_receipts(settings: Settings, bootstrap: str, fund: Fund,
                        on_receipt: Callable[[Receipt | None, bytes], None], *, follow: bool = False,
                        stop: asyncio.Event | None = None) -> ReceiptCounts:
    """Call ``on_receipt`` for every receipt of ``fund`` (None for an unreadable message)."""
    topic = receipt_topic(fund)
    counts = ReceiptCounts(reasons=Counter())
    cons = consumer(settings, bootstrap, group_id=None)
    try:
        with kafka_errors(f"cannot read {topic}: {{error!r}}", "check the broker and try again", UNREACHABLE):
            await cons.start()
            parts = cons.partitions_for_topic(topic)
            if not parts:
                await cons.force_metadata_update()
                parts = cons.partitions_for_topic(topic) or set()
            if not parts:
                return counts
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            cons.assign(tps)
            await cons.seek_to_beginning(*tps)
            ends: dict[TopicPartition, int] = await cons.end_offsets(tps)
            source = _follow(cons, stop) if follow else read_to_end(cons, ends)
            async for records in source:
                for rec in records:
                    raw = rec.value or b""
                    try:
                        receipt: Receipt | None = parse(Receipt, raw)
                    except ValidationError:
                        receipt = None
                    if receipt is None:
                        counts.unreadable += 1
                    elif receipt.status == "accepte":
                        counts.accepted += 1
                    else:
                        counts.rejected += 1
                        assert counts.reasons is not None
                        counts.reasons[receipt.reason.value if receipt.reason else "?"] += 1
                    on_receipt(receipt, raw)
    finally:
        await cons.stop()
    return counts


# ------------------------------------------------------------------ reconciliation with the outbox
@dataclass(frozen=True)
class Seen:
    """One receipt, as the reconciliation needs it."""

    accepted: bool
    reason: str | None
    topic: str
    partition: int
    offset: int


def collect(into: dict[str, list[Seen]]) -> Callable[[Receipt | None, bytes], None]:
    """An ``on_receipt`` for :func:`read_receipts` that keeps each signal's receipts, in order."""

    def keep(receipt: Receipt | None, _raw: bytes) -> None:
        if receipt is None or receipt.signal_id is None:
            return
        into.setdefault(receipt.signal_id, []).append(Seen(
            receipt.status == "accepte", receipt.reason.value if receipt.reason else None,
            receipt.source.topic, receipt.source.partition, receipt.source.offset))

    return keep


@dataclass
class Reconciliation:
    """What :func:`reconcile` found and did, for the operator."""

    fund: Fund
    accepted: int = 0
    #: refused for a key the exchange does not know: back to pending, by that key id
    unknown: Counter[str] = field(default_factory=Counter)
    #: refused for a retired key, re-signed with ``current_key`` and back to pending, by old key id
    resigned: Counter[str] = field(default_factory=Counter)
    #: refused for a retired key that is still the current one here: left waiting, by key id
    retired_current: Counter[str] = field(default_factory=Counter)
    #: refused for good (the content itself), by reason code
    refused: Counter[str] = field(default_factory=Counter)
    #: sent before payloads were kept, refused for the key: cannot be sent again from here
    without_payload: int = 0
    #: sent, no receipt for that sending yet
    awaiting: int = 0
    current_key: str = ""
    #: refused because the exchange replaced the person's key (an erasure) since it was
    #: sealed: sealed again under the key the endpoint gives now, and back to pending
    resealed: int = 0

    @property
    def requeued(self) -> int:
        return sum(self.unknown.values()) + sum(self.resigned.values()) + self.resealed

    def lines(self) -> list[str]:
        """The French summary, each refusal with what to do."""
        f = self.fund.value
        flush = f"relancez `help-exchange outbox flush --fund {f}`"
        out = [f"rapprochement avec la boîte d'envoi {f} : {self.accepted} acceptés"]
        for key_id, n in sorted(self.unknown.items()):
            out.append(f"  {n} signalements refusés : clé de signature {key_id} inconnue de l'échange — faites "
                       f"enregistrer la clé (help-exchange keys register --fund {f} --public-key …, par "
                       f"l'opérateur de l'échange) ; ils ont été remis en file d'envoi, {flush}")
        for key_id, n in sorted(self.resigned.items()):
            out.append(f"  {n} signalements refusés : clé de signature {key_id} retirée — re-signés avec la clé "
                       f"en vigueur {self.current_key} et remis en file d'envoi, {flush}")
        for key_id, n in sorted(self.retired_current.items()):
            out.append(f"  {n} signalements refusés : clé de signature {key_id} retirée, et c'est encore la clé "
                       f"en vigueur ici — créez-en une nouvelle (help-exchange keys init --fund {f} --rotate), "
                       f"faites-la enregistrer, puis relancez `help-exchange receipts --fund {f}`")
        if self.resealed:
            out.append(f"  {self.resealed} signalements refusés : clé de la personne remplacée à l'échange depuis leur "
                       f"scellement — scellés à nouveau sous la clé actuelle et remis en file d'envoi, {flush}")
        for code, n in self.refused.most_common():
            label = Reason(code).label if code in Reason._value2member_map_ else code
            out.append(f"  {n} signalements refusés définitivement : {label} ({code}) — à corriger dans le "
                       "logiciel métier ; les renvoyer tels quels serait inutile")
        if self.without_payload:
            out.append(f"  {self.without_payload} signalements refusés pour leur clé mais envoyés avant que la "
                       "boîte d'envoi garde leur contenu : republiez le fichier d'extraction d'origine")
        if self.awaiting:
            out.append(f"  {self.awaiting} signalements envoyés sans accusé pour l'instant (pas encore traités "
                       f"par le corrélateur) — relancez `help-exchange receipts --fund {f}` plus tard")
        return out


def _verdict(row: Sent, seen: list[Seen], topic: str) -> str | None:
    """'' accepted, a reason code refused, None no receipt for this sending yet."""
    if any(s.accepted or s.reason == Reason.DOUBLON.value for s in seen):
        return ""  # accepted (a "doublon" answers a copy of an id accepted before)
    if row.partition is not None and row.offset is not None:
        mine = [s for s in seen if (s.topic, s.partition, s.offset) == (topic, row.partition, row.offset)]
    else:  # sent before positions were kept: the latest receipt of the id
        mine = seen[-1:]
    return mine[-1].reason or "?" if mine else None


def resign(value: bytes, key: Ed25519PrivateKey, key_id: str) -> bytes:
    """The same signal (same id, same content), signed with ``key``: parse, drop the
    signature, RFC 8785, sign (:func:`services.core.signing.sign`), in canonical form."""
    message = json.loads(value)
    unsigned = {k: v for k, v in message.items() if k != "signature"}
    return canonical(sign(unsigned, key, key_id))


def reconcile(settings: Settings, fund: Fund, receipts: dict[str, list[Seen]]) -> Reconciliation:
    """Settle the fund's sent outbox rows against ``receipts`` (by signal id, see
    :func:`collect`): accepted → payload dropped; refused for the signing key → back to
    pending (re-signed with the current key when the key was retired); refused otherwise →
    kept with its reason; no receipt for the last sending → left as it is."""
    from services.producer.keys import load_fund_secrets, signing_key_warning

    result = Reconciliation(fund)
    topic = signal_topic(fund)
    accepted: list[str] = []
    refused: list[tuple[str, str]] = []
    requeue: list[tuple[str, bytes]] = []
    replaced: list[Sent] = []
    secrets: FundSecrets | None = None
    current_refused = False
    with Outbox.for_fund(settings.var_dir, fund) as box:
        for row in box.awaiting_receipt():
            verdict = _verdict(row, receipts.get(row.signal_id, []), topic)
            if verdict is None:
                result.awaiting += 1
            elif verdict == "":
                accepted.append(row.signal_id)
            elif verdict == Reason.CLE_SIGNAL_REMPLACEE.value and row.value is not None and row.seal is not None:
                replaced.append(row)
            elif verdict in _KEY_REASONS:
                if row.value is None:
                    result.without_payload += 1
                    refused.append((row.signal_id, verdict))
                    continue
                old_key = _key_id_of(row.value)
                if verdict == Reason.CLE_SIGNATURE_INCONNUE.value:
                    result.unknown[old_key] += 1
                    requeue.append((row.signal_id, row.value))
                    continue
                if secrets is None:
                    secrets = load_fund_secrets(settings.key_dir, fund)
                    result.current_key = secrets.signing_key_id
                    registry = _local_registry(settings)
                    current_refused = registry is not None and signing_key_warning(
                        registry, fund, secrets.signing_key_id) is not None
                if secrets.signing_key_id == old_key or current_refused:
                    result.retired_current[old_key] += 1  # re-signing would be refused again
                    continue
                result.resigned[old_key] += 1
                requeue.append((row.signal_id, resign(row.value, secrets.signing_key, secrets.signing_key_id)))
            else:
                result.refused[verdict] += 1
                refused.append((row.signal_id, verdict))
        resealed = reseal_rows(settings, fund, replaced, result) if replaced else []
        box.settle(accepted=accepted, refused=refused, requeue=requeue, resealed=resealed)
    result.accepted = len(accepted)
    return result


def reseal_rows(settings: Settings, fund: Fund, rows: list[Sent], result: Reconciliation,
                client: SignalKeyClient | None = None) -> list[tuple[str, bytes, bytes]]:
    """(id, payload, key) of ``rows`` sealed again: each opened with the key it was sealed
    with (kept in the outbox), sealed under the person's current key (asked again of the key
    endpoint, in one batch), signed again with the fund's current signing key. A row that
    does not open with its own key (the outbox altered) is left refused."""
    from services.core.messages import SealedSignal
    from services.core.signal_seal import open_members, seal_message
    from services.producer.keys import load_fund_secrets
    from services.producer.signal_keys import FundKey

    topic = signal_topic(fund)
    secrets = load_fund_secrets(settings.key_dir, fund)
    client = client or SignalKeyClient.from_settings(settings, fund)
    opened: list[tuple[str, dict[str, Any]]] = []
    for row in rows:
        assert row.value is not None and row.seal is not None
        sealed = parse(SealedSignal, row.value)
        content = open_members(FundKey.unpack(row.seal).key, topic, sealed.signal_id, sealed.sealed)
        if content is None:
            result.refused[Reason.SCELLE_ILLISIBLE.value] += 1
            continue
        clear = {**sealed.model_dump(mode="json", exclude={"sealed", "signature"}), **content.model_dump(mode="json")}
        opened.append((row.signal_id, clear))
    client.forget(m["pseudonym"]["value"] for _, m in opened)
    client.prefetch(m["pseudonym"]["value"] for _, m in opened)
    out = []
    for signal_id, clear in opened:
        new = client.key(clear["pseudonym"]["value"])
        message = seal_message(new.key, topic, new.subject, new.epoch, clear)
        out.append((signal_id, canonical(sign(message, secrets.signing_key, secrets.signing_key_id)), new.pack()))
    result.resealed += len(out)
    return out


_KEY_REASONS = frozenset({Reason.CLE_SIGNATURE_INCONNUE.value, Reason.CLE_SIGNATURE_RETIREE.value})


def _key_id_of(value: bytes) -> str:
    try:
        return str(json.loads(value)["signature"]["key_id"])
    except (ValueError, KeyError, TypeError):
        return "?"


def _local_registry(settings: Settings) -> Registry | None:
    path = registry_path(settings.key_dir)
    return load_registry(path) if path.exists() else None

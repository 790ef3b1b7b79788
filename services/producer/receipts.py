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
import datetime as dt
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from services.core.codec import canonical
from services.core.messages import Receipt, parse
from services.core.pseudonymisation import Refused
from services.core.reasons import Reason
from services.core.registry import Registry, load_registry, registry_path
from services.core.signing import sign
from services.core.types import Fund
from services.errors import ConfigurationError
from services.platform.kafka import UNREACHABLE, consumer, kafka_errors
from services.platform.settings import Settings
from services.platform.topics import receipt_topic, signal_topic
from services.producer.outbox import Outbox, Sent
from services.producer.sdk import read_to_end
from services.producer.signal_keys import SignalKeyClient, sealing_client

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
                        stop: asyncio.Event | None = None, since: dt.datetime | None = None) -> ReceiptCounts:
    """Call ``on_receipt`` for every receipt of ``fund`` (None for an unreadable message),
    or only for those the broker timestamped at or after ``since``."""
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
            if since is not None:
                # The first receipt at or after ``since`` per partition; none (Kafka): nothing
                # to read there. (The embedded broker answers offset 0 instead of none: the
                # partition is read whole, more than needed, never less.)
                firsts = await cons.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in tps})
                for tp in tps:
                    first = firsts.get(tp)
                    if first is None:
                        await cons.seek_to_end(tp)
                    else:
                        cons.seek(tp, first.offset)
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
    #: the run that reconciled sends what it put back (a flush, a publish), not an operator
    sends_now: bool = False
    #: refused for a key the exchange does not know, left waiting (``sends_now``: sending
    #: them before the key is registered would only have them refused again), by key id
    unknown_waiting: Counter[str] = field(default_factory=Counter)
    #: refused for a replaced key, not sealed again: why (the key endpoint failed), and how many
    reseal_error: str | None = None
    reseal_waiting: int = 0

    @property
    def requeued(self) -> int:
        return sum(self.unknown.values()) + sum(self.resigned.values()) + self.resealed

    @property
    def anything(self) -> bool:
        """Whether there is something to tell beyond the accepted ones."""
        return bool(self.requeued or self.retired_current or self.refused or self.without_payload
                    or self.unknown_waiting or self.reseal_waiting)

    def lines(self) -> list[str]:
        """The French summary, each refusal with what to do."""
        f = self.fund.value
        flush = ("renvoyés par cet envoi" if self.sends_now
                 else f"relancez `help-exchange outbox flush --fund {f}`")
        out = [f"rapprochement avec la boîte d'envoi {f} : {self.accepted} acceptés"]
        for key_id, n in sorted(self.unknown.items()):
            out.append(f"  {n} signalements refusés : clé de signature {key_id} inconnue de l'échange — faites "
                       f"enregistrer la clé (help-exchange keys register --fund {f} --public-key …, par "
                       f"l'opérateur de l'échange) ; ils ont été remis en file d'envoi, {flush}")
        for key_id, n in sorted(self.unknown_waiting.items()):
            out.append(f"  {n} signalements refusés : clé de signature {key_id} inconnue de l'échange — faites "
                       f"enregistrer la clé (help-exchange keys register --fund {f} --public-key …, par "
                       f"l'opérateur de l'échange), puis `help-exchange receipts --fund {f}` les remet en file")
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
        if self.reseal_waiting:
            out.append(f"  {self.reseal_waiting} signalements refusés : clé de la personne remplacée à l'échange, "
                       f"non scellés à nouveau ({self.reseal_error}) — ils attendent dans la boîte d'envoi ; le "
                       f"prochain envoi (publish, outbox flush) ou `help-exchange receipts --fund {f}` les reprend")
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
    pending (re-signed with the current key when the key was retired); refused for the
    person's replaced key → sealed again, back to pending; refused otherwise → kept with its
    reason; no receipt for the last sending → left as it is."""
    with Outbox.for_fund(settings.var_dir, fund) as box:
        settler = Settler(settings, fund, box)
        settler.apply(receipts)
        return settler.finish()


class Settler:
    """Settles the sent rows of one fund's outbox against receipts, a chunk of signal ids at
    a time (:meth:`apply`), so that neither the receipts nor the rows are held all at once.

    ``sends_now`` (a flush or a publish reconciling before it sends): rows refused for a
    signing key the exchange does not know stay waiting instead of going back to pending
    (the run would send them at once, to be refused again until the key is registered);
    ``receipts --fund`` puts them back. ``client``: the key endpoint's client to seal again
    with (default: one from the settings)."""

    CHUNK = 500

    def __init__(self, settings: Settings, fund: Fund, box: Outbox, *, sends_now: bool = False,
                 client: SignalKeyClient | None = None) -> None:
        self.settings = settings
        self.fund = fund
        self.box = box
        self.topic = signal_topic(fund)
        self.result = Reconciliation(fund, sends_now=sends_now)
        self._client = client
        self._secrets: FundSecrets | None = None
        self._current_refused = False

    def apply(self, receipts: dict[str, list[Seen]]) -> None:
        ids = list(receipts)
        for i in range(0, len(ids), self.CHUNK):
            self._apply(self.box.awaiting_for(ids[i:i + self.CHUNK]), receipts)

    def finish(self) -> Reconciliation:
        """Drop the bytes past their window, count what still awaits a receipt."""
        self.box.drop_old_payloads()
        awaiting, _ = self.box.awaiting_since(dt.datetime.min.replace(tzinfo=dt.UTC))
        r = self.result
        r.awaiting = awaiting - sum(r.retired_current.values()) - sum(r.unknown_waiting.values()) - r.reseal_waiting
        return r

    def _apply(self, rows: list[Sent], receipts: dict[str, list[Seen]]) -> None:
        from services.producer.keys import load_fund_secrets, signing_key_warning

        result = self.result
        accepted: list[str] = []
        refused: list[tuple[str, str]] = []
        requeue: list[tuple[str, bytes]] = []
        replaced: list[Sent] = []
        for row in rows:
            verdict = _verdict(row, receipts.get(row.signal_id, []), self.topic)
            if verdict is None:
                continue
            if verdict == "":
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
                    if result.sends_now:
                        result.unknown_waiting[old_key] += 1
                    else:
                        result.unknown[old_key] += 1
                        requeue.append((row.signal_id, row.value))
                    continue
                if self._secrets is None:
                    self._secrets = load_fund_secrets(self.settings.key_dir, self.fund)
                    result.current_key = self._secrets.signing_key_id
                    registry = _local_registry(self.settings)
                    self._current_refused = registry is not None and signing_key_warning(
                        registry, self.fund, self._secrets.signing_key_id) is not None
                if self._secrets.signing_key_id == old_key or self._current_refused:
                    result.retired_current[old_key] += 1  # re-signing would be refused again
                    continue
                result.resigned[old_key] += 1
                requeue.append((row.signal_id, resign(row.value, self._secrets.signing_key,
                                                      self._secrets.signing_key_id)))
            else:
                result.refused[verdict] += 1
                refused.append((row.signal_id, verdict))
        resealed: list[tuple[str, bytes, bytes]] = []
        if replaced:
            unreadable = len(refused)
            try:
                if self._client is None:
                    self._client = sealing_client(self.settings, self.fund)
                resealed = reseal_rows(self.settings, self.fund, replaced, result, self._client, refused)
            except (ConfigurationError, Refused) as exc:
                # The endpoint did not answer (or refused the batch): they stay as they are,
                # awaiting, and the next reconciliation seals them again.
                result.reseal_error = exc.what
                result.reseal_waiting += len(replaced) - (len(refused) - unreadable)
        self.box.settle(accepted=accepted, refused=refused, requeue=requeue, resealed=resealed, drop=False)
        result.accepted += len(accepted)


#: how long before the oldest signal awaiting its receipt the receipts are read from: the
#: receipt's time is the correlator's clock, the sending's the fund's
CLOCK_MARGIN = dt.timedelta(hours=1)
#: how long receipts stay on ``help.receipts.<fund>.v1`` (``retention.ms`` in
#: schemas/asyncapi.yaml): a signal sent before has no receipt left to read
RECEIPTS_KEPT = dt.timedelta(days=90)


async def settle_receipts(settings: Settings, bootstrap: str, fund: Fund, box: Outbox, *,
                          client: SignalKeyClient | None = None) -> Reconciliation:
    """What a flush or a publish does before it sends: read the fund's receipts from a little
    before the oldest signal still awaiting one (none awaiting: nothing read) and settle
    them as ``receipts --fund`` does (:class:`Settler`, ``sends_now``), so that a signal
    refused for the person's replaced key is sealed again and leaves with this run."""
    now = dt.datetime.now(dt.UTC)
    settler = Settler(settings, fund, box, sends_now=True, client=client)
    _, oldest = box.awaiting_since(now - RECEIPTS_KEPT)
    if oldest is None:
        return settler.finish()
    seen: dict[str, list[Seen]] = {}
    keep = collect(seen)

    def on_receipt(receipt: Receipt | None, raw: bytes) -> None:
        keep(receipt, raw)
        if len(seen) >= Settler.CHUNK:
            settler.apply(seen)
            seen.clear()

    await read_receipts(settings, bootstrap, fund, on_receipt, since=oldest - CLOCK_MARGIN)
    settler.apply(seen)
    return settler.finish()


def reseal_rows(settings: Settings, fund: Fund, rows: list[Sent], result: Reconciliation,
                client: SignalKeyClient | None = None,
                refused: list[tuple[str, str]] | None = None) -> list[tuple[str, bytes, bytes]]:
    """(id, payload, key) of ``rows`` sealed again: each opened with the key it was sealed
    with (kept in the outbox), sealed under the person's current key (asked again of the key
    endpoint, in one batch), signed again with the fund's current signing key. A row that
    does not open with its own key (the outbox altered) is refused ``scelle_illisible``
    (added to ``refused``)."""
    from services.core.messages import SealedSignal
    from services.core.signal_seal import open_members, seal_message
    from services.producer.keys import load_fund_secrets
    from services.producer.signal_keys import FundKey

    topic = signal_topic(fund)
    secrets = load_fund_secrets(settings.key_dir, fund)
    client = client or sealing_client(settings, fund)
    if client is None:
        raise ConfigurationError(f"{len(rows)} sealed signals were refused for a replaced key and no key "
                                 "endpoint is set to seal them again",
                                 "set HELP_SIGNAL_KEYS_URL to the exchange's key endpoint and run again: "
                                 "the signals stay in the outbox")
    opened: list[tuple[str, dict[str, Any]]] = []
    for row in rows:
        assert row.value is not None and row.seal is not None
        sealed = parse(SealedSignal, row.value)
        content = open_members(FundKey.unpack(row.seal).key, topic, sealed.signal_id, sealed.sealed)
        if content is None:
            result.refused[Reason.SCELLE_ILLISIBLE.value] += 1
            if refused is not None:
                refused.append((row.signal_id, Reason.SCELLE_ILLISIBLE.value))
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

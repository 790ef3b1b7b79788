"""``reveal``: in a worklist export, open this fund's own sealed references, and only those —
and leave in the audit ledger who opened which case's reference, when and why.

Exports render every sealed reference as ``scelle:<key_id>:<value>`` (see
:func:`services.producer.seal.token`). A token is replaced by the clear reference when its
key id is one of this fund's sealing keys *and* the seal verifies (AES-GCM, associated
data = fund + key id, see :mod:`services.producer.seal` for why the pseudonym binding is
inside the ciphertext). Every other token — another fund's, or one that does not verify —
is left exactly as it was. The file is streamed line by line; line endings, BOM and all
other text are kept. The output holds clear file references: it is created 0600.

The audit trail. Each reference opened becomes a signed
:class:`~services.core.messages.RevealEvent` — the fund, the user (``--actor``), the
purpose, the time, the case number the token was listed under and the SHA-256 of the sealed
value; never the reference, nor the seal — sent like consents are: the fund's signing key,
the producer's durable outbox (one of its own, ``<var_dir>/outbox/<fund>-reveals.db``), to
``help.reveals.v1``, where the audit sink enters it as ``reference_revelee`` on the case.

*Recorded before shown.* The revealed copy is written under a temporary name and gets its
real name only once its events are committed to the outbox: a reveal whose record could
not be kept leaves no clear file behind. If the broker does not answer, the events wait in
the outbox and the next ``reveal`` (or ``outbox flush --reveals``) sends them.

*Which case.* Every export lists a case's number before its sealed references (CSV: the
row's first cell; HTML and PDF: the case heading; JSON: ``case_number`` before ``funds``),
so a token belongs to the last case number read before it. The audit sink checks that this
case really holds this seal (by its digest) before writing the case on the entry.

*Ids.* Each event has a fresh random id: opening the same file again is a new access, to be
logged again; a crash and rerun resends the outbox's own rows, with their ids, so the
ledger enters each once.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.core.messages import RevealEvent, parse, sealed_digest, to_wire
from services.core.signing import sign
from services.core.types import CASE_NUMBER_PATTERN, DEPARTEMENT_PATTERN, Fund, Purpose, format_timestamp
from services.errors import CryptoError, InputError
from services.platform.settings import Settings
from services.platform.topics import REVEALS_TOPIC
from services.producer.keys import FundSecrets, load_fund_secrets
from services.producer.outbox import Row
from services.producer.sdk import Publisher, flush_outbox
from services.producer.seal import TOKEN_RE, _inner, open_sealed

#: a case number or a sealed token, whichever comes first in the text
_CASE_OR_TOKEN = re.compile(
    rf"(?<![A-Za-z0-9-])(?P<case>{_inner(CASE_NUMBER_PATTERN)})(?![A-Za-z0-9-])|{TOKEN_RE.pattern}")
_DEPT = re.compile(DEPARTEMENT_PATTERN)


@dataclass
class RevealCounts:
    opened: int = 0
    foreign: int = 0       # another fund's tokens, left opaque
    unverified: int = 0    # this fund's key id but the seal does not verify: left as is
    #: (case number or None, sealed value) of each reference opened, once each, in order
    revealed: list[tuple[str | None, str]] = field(default_factory=list)


@dataclass
class RevealSummary:
    counts: RevealCounts
    out: Path
    recorded: int = 0          # reveal events kept in the outbox by this run
    sent: int = 0              # acknowledged by the broker (this run's and earlier ones)
    left: int = 0              # still waiting in the outbox
    broker_error: str | None = None

    @property
    def exit_code(self) -> int:
        """0, or 1 when reveal events still wait in the outbox (the broker did not answer)."""
        return 1 if self.left else 0

    def lines(self) -> list[str]:
        c = self.counts
        out = [f"{c.opened} références ouvertes, {c.foreign} d'autres organismes laissées scellées"
               + (f", {c.unverified} non vérifiées laissées telles quelles" if c.unverified else "")
               + f" → {self.out}",
               f"Journal d'audit : {self.recorded} révélation(s) inscrite(s) dans la boîte d'envoi, "
               f"{self.sent} publiée(s), {self.left} en attente"]
        if self.broker_error:
            out.append(f"Le courtier Kafka ne répond pas : {self.broker_error} "
                       "(`help-exchange outbox flush --reveals` les enverra)")
        return out


def reveals_outbox_path(var_dir: Path, fund: Fund) -> Path:
    return var_dir / "outbox" / f"{fund.value}-reveals.db"


class RevealPublisher(Publisher):
    """The producer's :class:`~services.producer.sdk.Publisher`, on ``help.reveals.v1`` with
    an outbox of its own."""

    def __init__(self, settings: Settings, fund: Fund) -> None:
        super().__init__(settings, fund, topic=REVEALS_TOPIC,
                         outbox_path=reveals_outbox_path(settings.var_dir, fund))


def reveal_file(key_dir: Path, fund: Fund, src: Path, dst: Path,
                secrets: FundSecrets | None = None) -> RevealCounts:
    """Write ``src`` to ``dst`` (0600) with this fund's tokens opened; no audit record (see
    :func:`reveal`, which the command runs)."""
    secrets = secrets or load_fund_secrets(key_dir, fund)
    keys = secrets.sealing_keys
    counts = RevealCounts()
    seen: set[str] = set()
    case: str | None = None

    def replace(m: re.Match[str]) -> str:
        nonlocal case
        if m.group("case") is not None:
            case = m.group("case")
            return m.group(0)
        key_id, value = m.group("key_id"), m.group("value")
        if key_id not in keys:
            counts.foreign += 1
            return m.group(0)
        try:
            clear = open_sealed(fund, keys, key_id, value)
        except CryptoError:
            counts.unverified += 1
            return m.group(0)
        counts.opened += 1
        if value not in seen:  # the same reference shown twice is one reveal
            seen.add(value)
            counts.revealed.append((case, value))
        return clear

    if src.resolve() == dst.resolve():
        raise InputError("--out must differ from --input", "write the revealed file elsewhere")
    try:
        fin = open(src, encoding="utf-8", newline="")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise InputError(f"cannot read {src}: {exc.strerror}", "check the path given to --input") from exc
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with fin, open(fd, "w", encoding="utf-8", newline="") as fout:
            for line in fin:
                fout.write(_CASE_OR_TOKEN.sub(replace, line))
    except UnicodeDecodeError as exc:
        dst.unlink(missing_ok=True)
        raise InputError(f"{src} is not UTF-8 text", "give the CSV or HTML export of the worklist") from exc
    return counts


def reveal_events(secrets: FundSecrets, emitter: str, actor: str, purpose: Purpose,
                  revealed: list[tuple[str | None, str]], at: dt.datetime) -> list[Row]:
    """The signed reveal events (as outbox rows, keyed by fund) of the references opened."""
    rows: list[Row] = []
    for case_number, value in revealed:
        message: dict[str, Any] = {
            "schema_version": "1.0", "event_id": uuid.uuid4().hex, "fund": secrets.fund.value,
            "emitter": emitter, "actor": actor, "purpose": purpose.value,
            "case_number": case_number, "sealed_digest": sealed_digest(value),
            "revealed_at": format_timestamp(at),
        }
        signed = sign(message, secrets.signing_key, secrets.signing_key_id)
        event = parse(RevealEvent, json.dumps(signed))  # invalid: a bug here, never sent
        rows.append(Row(event.event_id, at.date().isoformat(), secrets.fund.value.encode(),
                        to_wire(event)))
    return rows


async def reveal(settings: Settings, fund: Fund, src: Path, dst: Path, *, actor: str,
                 purpose: Purpose = Purpose.ACCES_AUX_DROITS, departement: str = "",
                 now: dt.datetime | None = None, connect: bool = True) -> RevealSummary:
    """Open the fund's references of ``src`` into ``dst``, recording one audit event per
    reference opened (durable before ``dst`` appears, sent when the broker answers)."""
    dept = (departement.strip().upper() or settings.territory)
    if not _DEPT.fullmatch(dept):
        raise InputError(f"département invalide : {dept!r}", "par exemple 35, 2A ou 974")
    secrets = load_fund_secrets(settings.key_dir, fund)
    emitter = f"{fund.value}-{dept.lower()}"
    if src.resolve() == dst.resolve():
        raise InputError("--out must differ from --input", "write the revealed file elsewhere")
    partial = dst.with_name(f".{dst.name}.{os.getpid()}.partiel")
    publisher = RevealPublisher(settings, fund)
    try:
        counts = reveal_file(settings.key_dir, fund, src, partial, secrets)
        rows = reveal_events(secrets, emitter, actor, purpose, counts.revealed,
                             now or dt.datetime.now(dt.UTC))
        summary = RevealSummary(counts, dst, recorded=publisher.stage(rows))
        os.replace(partial, dst)  # only now is the clear copy there: its record is durable
    except BaseException:
        partial.unlink(missing_ok=True)
        await publisher.close()
        raise
    if connect:
        summary.sent, summary.left, summary.broker_error = await flush_outbox(publisher)
    else:
        summary.left = publisher.outbox.pending_count()
        await publisher.close()
    return summary

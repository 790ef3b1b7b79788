"""Consent, its withdrawal and objections, from a fund's file to ``help.consents.v1``.

A fund records what people said (the HELP questionnaire's consent, a withdrawal, an
objection under RGPD art. 21) in its back-office and exports it as a file::

    nir;reference_consentement;finalites;date_effet[;departement]
    1 85 05 78 006 084 91;HELP-2026-000123;acces_aux_droits,prevention_perte_autonomie;2026-11-04;35

* ``nir`` is validated and pseudonymised exactly as for signals (:mod:`.nir`,
  :mod:`.pseudonym`, the newest active exchange key): the NIR never leaves the fund.
* ``reference_consentement`` is the fund's reference of the form (pattern of the contract's
  ``consent_ref``, e.g. ``HELP-2026-000123``); it travels, so the correlator can check that
  a signal sent "on consent" names a consent on record.
* ``finalites``: purposes separated by ``,`` or ``|``. Required for a consent; for a
  withdrawal or an objection, empty means both (an objection is to the whole exchange).
* ``date_effet``: when the person gave or withdrew consent or objected (``AAAA-MM-JJ`` or
  ``JJ/MM/AAAA``, not in the future; empty = today). Every kind takes effect when it is
  *recorded* (``effective_at`` = now), whatever the date written on the form: the exchange
  applies a person's consent events per purpose in that order (a consent recorded after a
  withdrawal, the same day or later, is honoured). An objection erases everything the
  exchange stored about the person up to that moment; a withdrawal, what was exchanged
  under the purposes withdrawn.
* ``departement`` (optional, else ``HELP_TERRITORY``): which body of the fund emits it
  (``<fund>-<departement>``, as for signals).

Each valid line becomes a :class:`~services.core.messages.ConsentEvent` signed with the
fund's Ed25519 key, with a deterministic id (keyed by the fund's id key, from the kind, the
person, the form's reference and the date) so that re-running a file sends nothing twice;
it goes through a durable outbox of its own (``<var_dir>/outbox/<fund>-consents.db``, the
producer's :class:`~services.producer.outbox.Outbox`) to ``help.consents.v1``, keyed by the
pseudonym value (one person's signals and consents meet in one correlator partition).
Invalid lines go to a reject report (NIR masked), as with ``publish``.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import hmac
import json
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from services.core.dates import date_reason, limits_on, today_paris
from services.core.messages import ConsentEvent, ConsentKind, parse, to_wire
from services.core.reasons import Reason
from services.core.registry import load_registry
from services.core.signing import sign
from services.core.types import CONSENT_REF_PATTERN, DEPARTEMENT_PATTERN, Fund, Purpose, format_timestamp
from services.errors import BrokerError, Rejected
from services.platform.settings import Settings
from services.platform.topics import CONSENTS_TOPIC
from services.producer import nir as nirs
from services.producer.extract import BOM, ExtractFileError, Rejection, RejectReport
from services.producer.keys import load_fund_secrets, registry_path
from services.producer.nir import F_NIR
from services.producer.outbox import Row
from services.producer.pseudonym import source_for
from services.producer.publish import RunOutcome
from services.producer.sdk import MAX_FIELD, Publisher, is_free_text, parse_date

F_REF = "reference_consentement"
F_PURPOSES = "finalites"
F_DATE = "date_effet"
F_DEPT = "departement"
REQUIRED = (F_NIR, F_REF, F_PURPOSES, F_DATE)
OPTIONAL = (F_DEPT,)
_CONSENT = re.compile(CONSENT_REF_PATTERN)
_DEPT = re.compile(DEPARTEMENT_PATTERN)
_ID_LABEL = b"help-exchange/consent-id/v1"

KIND_LABELS: dict[str, str] = {
    "consentement_donne": "consentements",
    "consentement_retire": "retraits de consentement",
    "opposition": "oppositions",
}


@dataclass(frozen=True)
class ConsentInput:
    """One line as the back-office exported it."""

    nir: str
    consent_ref: str
    purposes: str
    date: str
    departement: str = ""


def consent_outbox_path(var_dir: Path, fund: Fund) -> Path:
    return var_dir / "outbox" / f"{fund.value}-consents.db"


class ConsentBuilder:
    """Validates lines and builds signed consent events for one fund (no I/O after init)."""

    def __init__(self, settings: Settings, fund: Fund) -> None:
        self.fund = fund
        self.territory = settings.territory
        secrets = load_fund_secrets(settings.key_dir, fund)
        registry = load_registry(registry_path(settings.key_dir))
        self._pseudonyms = source_for(settings, fund, registry)
        self._signing_key = secrets.signing_key
        self._signing_key_id = secrets.signing_key_id
        self._id_key = hmac.digest(secrets.id_root, _ID_LABEL, hashlib.sha256)

    def prefetch(self, records: Iterable[ConsentInput]) -> None:
        """Scheme v2: ask the service for every valid NIR of ``records`` in batches (v1: nothing)."""
        self._pseudonyms.prefetch(nirs.valid_normalised(rec.nir for rec in records))

    def build(self, rec: ConsentInput, kind: ConsentKind, *, now: dt.datetime,
              today: dt.date) -> Row:
        """The outbox row (signed event bytes) of one line, or :class:`Rejected`."""
        for name, value in ((F_NIR, rec.nir), (F_REF, rec.consent_ref), (F_DATE, rec.date),
                            (F_DEPT, rec.departement)):
            if is_free_text(value):
                raise Rejected(Reason.TEXTE_LIBRE, name)
        # A list of codes ("a,b") looks like words to the free-text guard: each code is
        # checked against the enumeration instead, after a length and charset check.
        if len(rec.purposes) > 2 * MAX_FIELD or not (rec.purposes.isascii() and rec.purposes.isprintable()):
            raise Rejected(Reason.TEXTE_LIBRE, F_PURPOSES)
        nir = nirs.normalise(rec.nir)  # or Rejected (field nir)
        ref = rec.consent_ref.strip()
        if not _CONSENT.fullmatch(ref):
            raise Rejected(Reason.BASE_LEGALE_INVALIDE, F_REF)
        purposes = _purposes(rec.purposes, kind)
        day = today
        if rec.date.strip():
            try:
                day = parse_date(rec.date)
            except ValueError:
                raise Rejected(Reason.DATE_INVALIDE, F_DATE) from None
        # The correlator checks the event's effective_at (services.core.dates.consent_dates).
        if (refused := date_reason(day, limits_on(today), too_old=False)) is not None:
            raise Rejected(refused, F_DATE)
        dept = (rec.departement.strip().upper() or self.territory)
        if len(dept) == 1 and dept.isdigit():
            dept = "0" + dept
        if not _DEPT.fullmatch(dept):
            raise Rejected(Reason.DEPARTEMENT_INVALIDE, F_DEPT)

        pseudo = self._pseudonyms.pseudonym(nir)
        # Every kind takes effect when recorded: the exchange orders a person's consent
        # events per purpose by effective_at (services.core.person.apply_consent), so a
        # consent recorded after a withdrawal, the same day, must come after it.
        effective = now
        event_id = hmac.digest(self._id_key, "\x00".join(
            (self.fund.value, kind, pseudo["key_id"], pseudo["value"], ref, day.isoformat())
        ).encode(), hashlib.sha256)[:16].hex()
        message: dict[str, Any] = {
            "schema_version": "1.0",
            "event_id": event_id,
            "kind": kind,
            "fund": self.fund.value,
            "emitter": f"{self.fund.value}-{dept.lower()}",
            "pseudonym": pseudo,
            "purposes": [p.value for p in purposes],
            "consent_ref": ref,
            "effective_at": format_timestamp(effective),
        }
        signed = sign(message, self._signing_key, self._signing_key_id)
        try:
            event = parse(ConsentEvent, _json(signed))
        except ValidationError:  # a bug here, not bad input: never send it
            raise Rejected(Reason.SCHEMA_INVALIDE, "consentement") from None
        return Row(event_id, day.isoformat(), pseudo["value"].encode("ascii"), to_wire(event))


def _json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def _purposes(text: str, kind: ConsentKind) -> tuple[Purpose, ...]:
    names = [p.strip() for p in re.split(r"[,|]", text) if p.strip()]
    if not names:
        if kind == "consentement_donne":
            raise Rejected(Reason.FINALITE_NON_AUTORISEE, F_PURPOSES)
        return tuple(Purpose)
    try:
        chosen = {Purpose(n) for n in names}
    except ValueError:
        raise Rejected(Reason.FINALITE_NON_AUTORISEE, F_PURPOSES) from None
    return tuple(p for p in Purpose if p in chosen)


def read_consent_file(path: Path) -> Iterator[tuple[int, ConsentInput] | Rejection]:
    """The file's lines (number, input) or per-line rejections; whole-file problems raise
    :class:`~services.producer.extract.ExtractFileError`."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ExtractFileError(Reason.FICHIER_VIDE, f"cannot read {path}: {exc.strerror}",
                               "check the path given to --input") from exc
    try:
        text = raw.removeprefix(BOM).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ExtractFileError(Reason.ENCODAGE_INVALIDE, f"{path.name}: not UTF-8",
                               "export the file in UTF-8 (with or without BOM)") from exc
    lines = text.splitlines()
    header_at = next((i for i, line in enumerate(lines) if line.strip()), None)
    if header_at is None:
        raise ExtractFileError(Reason.FICHIER_VIDE, f"{path.name}: {Reason.FICHIER_VIDE.label}",
                               "the file has no line at all")
    names = [n.strip().lower() for n in next(csv.reader([lines[header_at]], delimiter=";"))]
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise ExtractFileError(Reason.COLONNE_MANQUANTE,
                               f"{path.name}: {Reason.COLONNE_MANQUANTE.label} : {', '.join(missing)}",
                               "the first line must name the columns, separated by ';': "
                               + ";".join(REQUIRED) + "[;departement]")
    index = {n: i for i, n in enumerate(names) if n in REQUIRED + OPTIONAL}
    for number, line in enumerate(lines[header_at + 1:], header_at + 2):
        if not line.strip():
            continue
        try:
            fields = next(csv.reader([line], delimiter=";", strict=True))
        except csv.Error:
            yield Rejection(number, "ligne", Reason.LIGNE_MAL_FORMEE, "")
            continue
        if len(fields) < len(names):
            masked = nirs.mask(fields[index[F_NIR]]) if index[F_NIR] < len(fields) else ""
            yield Rejection(number, "ligne", Reason.LIGNE_MAL_FORMEE, masked)
            continue
        v = {n: fields[i] for n, i in index.items()}
        yield number, ConsentInput(nir=v[F_NIR], consent_ref=v[F_REF], purposes=v[F_PURPOSES],
                                   date=v[F_DATE], departement=v.get(F_DEPT, ""))


class ConsentPublisher(Publisher):
    """The producer's :class:`~services.producer.sdk.Publisher` (durable outbox, acks=all,
    crash recovery), on ``help.consents.v1`` with an outbox of its own."""

    def __init__(self, settings: Settings, fund: Fund) -> None:
        super().__init__(settings, fund, topic=CONSENTS_TOPIC,
                         outbox_path=consent_outbox_path(settings.var_dir, fund))


@dataclass
class ConsentSummary(RunOutcome):
    kind: ConsentKind
    input: Path
    read: int = 0
    new: int = 0
    already: int = 0
    sent: int = 0
    left: int = 0
    rejected: Counter[Reason] = field(default_factory=Counter)
    broker_error: str | None = None
    report: Path | None = None
    seconds: float = 0.0

    def lines(self) -> list[str]:
        label = KIND_LABELS[self.kind]
        out = [f"Fichier {self.input.name} ({label}) — {self.seconds:.1f} s",
               f"  lignes lues                    : {self.read}",
               f"  {label + ' publiés':<31}: {self.sent}"]
        if self.already:
            out.append(f"  déjà connus (relance, ignorés) : {self.already}")
        out.append(f"  lignes rejetées                : {self.rejected_total}")
        for reason, n in self.rejected.most_common():
            out.append(f"    - {reason.label} ({reason.value}) : {n}")
        out.append(f"  restant dans la boîte d'envoi  : {self.left}")
        if self.report is not None and self.rejected_total:
            out.append(f"Rapport des rejets : {self.report}")
        if self.broker_error:
            out.append(f"Le courtier Kafka ne répond pas : {self.broker_error}")
        return out


async def record_file(settings: Settings, fund: Fund, kind: ConsentKind, path: Path,
                      report_path: Path, *, now: dt.datetime | None = None,
                      connect: bool = True) -> ConsentSummary:
    """Validate, pseudonymise, sign, keep in the outbox and send every line of ``path``."""
    t0 = time.monotonic()
    summary = ConsentSummary(kind=kind, input=path, report=report_path)
    lines = list(read_consent_file(path))  # whole-file errors before anything is written
    publisher = ConsentPublisher(settings, fund)
    builder = ConsentBuilder(settings, fund)
    try:
        if connect and not await publisher.connect():
            summary.broker_error = publisher.offline_reason
        now = now or dt.datetime.now(dt.UTC)
        today = today_paris()
        rows: list[Row] = []
        builder.prefetch(item[1] for item in lines if not isinstance(item, Rejection))
        with RejectReport(report_path) as report:
            for item in lines:
                if isinstance(item, Rejection):
                    report.write(item)
                    summary.read += 1
                    continue
                number, rec = item
                summary.read += 1
                try:
                    rows.append(builder.build(rec, kind, now=now, today=today))
                except Rejected as exc:
                    report.write(Rejection(number, exc.field, exc.reason, nirs.mask(rec.nir)))
            summary.rejected = report.counts
        summary.new = publisher.stage(rows)  # durable first, then sent
        if publisher.online and summary.broker_error is None:
            try:
                await publisher.flush()  # these, and what earlier runs left waiting
            except BrokerError as exc:
                summary.broker_error = exc.what
        summary.already = len(rows) - summary.new
        summary.sent = publisher.sent_total
        summary.left = publisher.outbox.pending_count()
    finally:
        await publisher.close()
    summary.seconds = time.monotonic() - t0
    return summary


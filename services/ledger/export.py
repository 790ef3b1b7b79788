"""Audit answers for people: rows with French headers, JSON Lines and CSV exports.

CSV is written for French spreadsheets: ``;`` separator, UTF-8 with a byte-order mark, and
every cell that a spreadsheet would read as a formula (starting with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return — a base64url pseudonym may well start with ``-``) is
prefixed with an apostrophe (OWASP "CSV injection").
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from services.core.bounds import parse_month
from services.core.spreadsheet import safe_cell
from services.errors import InputError
from services.ledger.entries import Action, LedgerLegalBasis, LedgerPurpose

#: (key in the flat row, French header)
COLUMNS: tuple[tuple[str, str], ...] = (
    ("index", "n°"),
    ("time", "horodatage_utc"),
    ("actor", "acteur"),
    ("action", "action"),
    ("action_label", "libelle_action"),
    ("purpose", "finalite"),
    ("legal_basis", "base_legale"),
    ("subject_key_id", "cle_pseudonyme"),
    ("subject_value", "pseudonyme"),
    ("case_id", "dossier"),
    ("ref", "reference"),
    ("reason", "motif"),
    ("count", "nombre"),
    ("trace_id", "trace"),
    ("entry_id", "identifiant_entree"),
)



def period_range(period: str) -> tuple[str, str]:
    """``"2026-11"`` → ``("2026-11", "2026-12")``: the half-open range of timestamps' text."""
    year, month = parse_month(period, what="période")
    following = dt.date(year + month // 12, month % 12 + 1, 1)
    return period, following.strftime("%Y-%m")


def flat_row(index: int, data: bytes) -> dict[str, Any]:
    """A stored entry as one flat row (the keys of :data:`COLUMNS`)."""
    doc = json.loads(data)
    subject = doc.get("subject") or {}
    action = doc["action"]
    return {
        "index": index, "time": doc["time"], "actor": doc["actor"], "action": action,
        "action_label": Action(action).label if action in Action._value2member_map_ else action,
        "purpose": doc["purpose"], "legal_basis": doc["legal_basis"],
        "subject_key_id": subject.get("key_id"), "subject_value": subject.get("value"),
        "case_id": doc.get("case_id"), "ref": doc.get("ref"), "reason": doc.get("reason"),
        "count": doc.get("count"), "trace_id": doc.get("trace_id"), "entry_id": doc["entry_id"],
    }


def display_row(row: dict[str, Any]) -> list[str]:
    """The columns of ``audit query``'s table: who, when, what, why, on what basis."""
    purpose = row["purpose"]
    basis = row["legal_basis"]
    return [
        str(row["index"]),
        row["time"][:19].replace("T", " "),
        row["actor"],
        row["action_label"],
        LedgerPurpose(purpose).label if purpose in LedgerPurpose._value2member_map_ else purpose,
        LedgerLegalBasis(basis).label if basis in LedgerLegalBasis._value2member_map_ else basis,
        row["case_id"] or "—",
        (row["subject_value"][:10] + "…") if row["subject_value"] else "—",
        row["entry_id"],
    ]


DISPLAY_HEADERS = ("N°", "Date (UTC)", "Acteur", "Action", "Finalité", "Base légale",
                   "Dossier", "Pseudonyme", "Entrée")


def write_csv(rows: Iterable[dict[str, Any]], out: TextIO) -> int:
    writer = csv.writer(out, delimiter=";", lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow([header for _, header in COLUMNS])
    count = 0
    for row in rows:
        writer.writerow([safe_cell(row[key]) for key, _ in COLUMNS])
        count += 1
    return count


def write_jsonl(rows: Iterable[dict[str, Any]], out: TextIO) -> int:
    count = 0
    for row in rows:
        out.write(json.dumps({key: row[key] for key, _ in COLUMNS}, ensure_ascii=False) + "\n")
        count += 1
    return count


def export(rows: Iterator[dict[str, Any]], path: Path, fmt: str) -> int:
    """Write ``rows`` to ``path`` as ``jsonl`` or ``csv`` (UTF-8 with BOM); the row count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if fmt == "csv":
        with tmp.open("w", encoding="utf-8-sig", newline="") as out:
            count = write_csv(rows, out)
    elif fmt == "jsonl":
        with tmp.open("w", encoding="utf-8", newline="\n") as out:
            count = write_jsonl(rows, out)
    else:
        raise InputError(f"unknown export format {fmt!r}", "use jsonl or csv")
    tmp.replace(path)
    return count

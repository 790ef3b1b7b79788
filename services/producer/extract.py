"""Reading a back-office extract file (CSV or JSONL) line by line, and the reject report.

CSV as French back-offices export it: ``;`` separator, UTF-8 with or without BOM, a header
naming at least ``nir;categorie;date_observation;departement;reference_dossier``, and
optionally ``consentement`` and ``finalite``. Other columns are ignored (never read, so
never sent). JSONL: one object per line with the same names.

The file is streamed in binary with a bounded line length, so memory stays constant
whatever the file (a multi-gigabyte line with no newline included). Each line is decoded
on its own: a line that is not UTF-8 is rejected (``encodage_invalide``) and the rest goes
on. Whole-file problems (missing column, empty file, unreadable header) raise
:class:`ExtractFileError`; everything else is a per-line :class:`Rejection`.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple

from services.core.reasons import Reason
from services.core.spreadsheet import safe_cell
from services.errors import InputError
from services.producer.nir import F_NIR, mask
from services.producer.sdk import (
    F_CATEGORY,
    F_CONSENT,
    F_DATE,
    F_DEPT,
    F_PURPOSE,
    SignalInput,
)
from services.producer.seal import F_REF

REQUIRED = (F_NIR, F_CATEGORY, F_DATE, F_DEPT, F_REF)
OPTIONAL = (F_CONSENT, F_PURPOSE)
MAX_LINE_BYTES = 4096
BOM = b"\xef\xbb\xbf"
Format = Literal["csv", "jsonl"]


class ExtractFileError(InputError):
    """The whole file is unusable (missing column, empty, unreadable): nothing is published."""

    exit_code = 1

    def __init__(self, reason: Reason, what: str, hint: str) -> None:
        super().__init__(what, hint)
        self.reason = reason


@dataclass(frozen=True)
class Rejection:
    line: int
    field: str
    reason: Reason
    nir_masked: str


class Line(NamedTuple):
    """A record and its line number (a pair: what the build jobs take)."""

    line: int
    record: SignalInput


def detect_format(path: Path, first: bytes) -> Format:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    return "jsonl" if first.lstrip(BOM).lstrip().startswith(b"{") else "csv"


def _raw_lines(f: IO[bytes]) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes without the line end), or None for a line over the limit."""
    number = 0
    while True:
        chunk = f.readline(MAX_LINE_BYTES + 1)
        if not chunk:
            return
        number += 1
        if len(chunk) > MAX_LINE_BYTES and not chunk.endswith(b"\n"):
            while True:  # skip the rest of the line without holding it
                more = f.readline(1 << 16)
                if not more or more.endswith(b"\n"):
                    break
            yield number, None
            continue
        yield number, chunk.rstrip(b"\r\n")


class Extract:
    """Iterate over a file's lines as :class:`Line` (to build) or :class:`Rejection`.

    :meth:`raw` gives the same lines unparsed, for :attr:`parser` to parse elsewhere (the
    worker processes of ``publish``): parsing is per line, so it can be spread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.format: Format = "csv"
        self.ignored_columns: tuple[str, ...] = ()
        self._bytes_read = 0
        self._file: IO[bytes] | None = None
        #: how to parse the lines of :meth:`raw`: set once the header has been read
        self.parser: LineParser | None = None
        try:
            self.size = path.stat().st_size
        except OSError as exc:
            raise ExtractFileError(Reason.FICHIER_VIDE, f"cannot read {path}: {exc.strerror}",
                                   "check the path given to --input") from exc

    @property
    def bytes_read(self) -> int:
        """How far the reading has gone, in bytes (for a progress bar)."""
        f = self._file
        if f is not None and not f.closed:
            self._bytes_read = f.tell()
        return self._bytes_read

    def __iter__(self) -> Iterator[Line | Rejection]:
        for number, raw in self.raw():
            assert self.parser is not None
            item = self.parser.parse(number, raw)
            if item is None:
                continue
            yield item if isinstance(item, Rejection) else Line(number, item)

    def raw(self) -> Iterator[tuple[int, bytes | None]]:
        """The data lines: (line number, bytes without the line end, or None for a line over
        the limit). Reads the header first (whole-file problems raise
        :class:`ExtractFileError` here) and sets :attr:`parser`."""
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - closed below, generator-scoped
        except OSError as exc:
            raise ExtractFileError(Reason.FICHIER_VIDE, f"cannot read {self.path}: {exc.strerror}",
                                   "check the path given to --input") from exc
        self._file = f
        with f:
            lines = _raw_lines(f)
            header: tuple[int, bytes | None] | None = None
            for number, raw in lines:
                if raw is None or raw.lstrip(BOM).strip():
                    header = (number, raw.lstrip(BOM) if raw is not None and number == 1 else raw)
                    break
            if header is None:
                raise ExtractFileError(Reason.FICHIER_VIDE, f"{self.path.name}: {Reason.FICHIER_VIDE.label}",
                                       "check the back-office export: the file has no line at all")
            self.format = detect_format(self.path, header[1] or b"")
            if self.format == "csv":
                self.parser = self._csv_header(header)
            else:
                self.parser = LineParser("jsonl")
                lines = _jsonl_lines(_chain(header, lines))
            yield from lines
            self._bytes_read = f.tell()

    # -- CSV
    def _csv_header(self, header: tuple[int, bytes | None]) -> LineParser:
        _, raw = header
        if raw is None:
            raise ExtractFileError(Reason.LIGNE_TROP_LONGUE, f"{self.path.name}: the header line is too long",
                                   "the first line must be the column names")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ExtractFileError(Reason.ENCODAGE_INVALIDE,
                                   f"{self.path.name}: the header line is not UTF-8",
                                   "export the file in UTF-8 (with or without BOM)") from exc
        names = [n.strip().lower() for n in next(csv.reader([text], delimiter=";"))]
        missing = [c for c in REQUIRED if c not in names]
        if missing:
            hint = "the first line must name the columns, separated by ';': " + ";".join(REQUIRED)
            if "," in text and ";" not in text:
                hint = "the separator must be ';' (this file seems to use ','); " + hint
            raise ExtractFileError(
                Reason.COLONNE_MANQUANTE,
                f"{self.path.name}: {Reason.COLONNE_MANQUANTE.label} : {', '.join(missing)}",
                hint,
            )
        index = {n: i for i, n in enumerate(names) if n in REQUIRED + OPTIONAL}
        self.ignored_columns = tuple(n for n in names if n not in index and n)
        nir, category, date, dept, ref = (index[n] for n in REQUIRED)
        return LineParser("csv", len(names), (nir, category, date, dept, ref), index.get(F_CONSENT),
                          index.get(F_PURPOSE))


def _jsonl_lines(lines: Iterator[tuple[int, bytes | None]]) -> Iterator[tuple[int, bytes | None]]:
    """A JSONL file's lines, the byte order mark off the first one read."""
    for number, raw in lines:
        if raw is None:
            yield number, raw
            continue
        yield number, raw.lstrip(BOM)
        break
    for number, raw in lines:
        yield number, raw


#: characters that only the csv module reads right (quoting; line ends and NUL, which it refuses)
_CSV_SPECIAL = re.compile('["\r\n\x00]')


@dataclass(frozen=True)
class LineParser:
    """Parses one line of an extract, once its header is known (picklable: worker processes
    parse with it). For CSV: how many columns the header names, where each of
    :data:`REQUIRED` is, and each of :data:`OPTIONAL` (None: no such column)."""

    format: Format
    width: int = 0
    required: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)
    consent: int | None = None
    purpose: int | None = None

    def parse(self, number: int, raw: bytes | None) -> SignalInput | Rejection | None:
        """The record of the line, or why it is rejected; None for a blank line."""
        if raw is None:
            return Rejection(number, "ligne", Reason.LIGNE_TROP_LONGUE, "")
        if self.format == "csv":
            return self._csv(number, raw)
        return self._jsonl(number, raw)

    def _csv(self, number: int, raw: bytes) -> SignalInput | Rejection | None:
        nir_at, category, date, dept, ref = self.required
        if not raw.strip():
            return None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            loose = raw.decode("utf-8", "replace").split(";")
            return Rejection(number, "ligne", Reason.ENCODAGE_INVALIDE,
                             mask(loose[nir_at]) if nir_at < len(loose) else "")
        try:
            fields = split_fields(text)
        except csv.Error:
            return Rejection(number, "ligne", Reason.LIGNE_MAL_FORMEE, "")
        width = self.width
        if len(fields) != width and not (len(fields) > width and not "".join(fields[width:]).strip()):
            return Rejection(number, "ligne", Reason.LIGNE_MAL_FORMEE,
                             mask(fields[nir_at]) if nir_at < len(fields) else "")
        consent, purpose = self.consent, self.purpose
        return SignalInput(fields[nir_at], fields[category], fields[date], fields[dept], fields[ref],
                           None if consent is None else fields[consent] or None,
                           None if purpose is None else fields[purpose] or None)

    @staticmethod
    def _jsonl(number: int, raw: bytes) -> SignalInput | Rejection | None:
        if not raw.strip():
            return None
        try:
            obj: Any = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            return Rejection(number, "ligne", Reason.ENCODAGE_INVALIDE, "")
        except ValueError:
            return Rejection(number, "ligne", Reason.LIGNE_MAL_FORMEE, "")
        if not isinstance(obj, dict):
            return Rejection(number, "ligne", Reason.LIGNE_MAL_FORMEE, "")
        values: dict[str, str] = {}
        bad: tuple[str, Reason] | None = None
        for name in REQUIRED + OPTIONAL:
            value = obj.get(name)
            if value is None:
                if name in REQUIRED:
                    bad = bad or (name, Reason.COLONNE_MANQUANTE)
                continue
            if isinstance(value, bool) or not isinstance(value, str | int):
                bad = bad or (name, Reason.LIGNE_MAL_FORMEE)
                continue
            values[name] = str(value)
        if bad is not None:
            nir = obj.get(F_NIR)
            return Rejection(number, bad[0], bad[1], mask(nir) if isinstance(nir, str) else "")
        return SignalInput(nir=values[F_NIR], category=values[F_CATEGORY], observed_on=values[F_DATE],
                           departement=values[F_DEPT], reference=values[F_REF],
                           consent_ref=values.get(F_CONSENT) or None, purpose=values.get(F_PURPOSE) or None)


def split_fields(text: str) -> list[str]:
    """The fields of one CSV line: :func:`split_fields_reference`'s answer, without the csv
    module when the line holds no quote, line end or NUL (then it is the plain split;
    ``tests/producer/test_extract_fast_path.py`` proves the two equal)."""
    if text and _CSV_SPECIAL.search(text) is None:
        return text.split(";")
    return split_fields_reference(text)


def split_fields_reference(text: str) -> list[str]:
    """The fields of one CSV line as the csv module reads them (``;``, strict quoting).
    Raises ``csv.Error`` for a badly quoted line."""
    return next(csv.reader([text], delimiter=";", strict=True))


def _chain(head: tuple[int, bytes | None],
           rest: Iterator[tuple[int, bytes | None]]) -> Iterator[tuple[int, bytes | None]]:
    yield head
    yield from rest


class RejectReport:
    """The reject report: CSV, ``;``, UTF-8 with BOM (opens cleanly in a spreadsheet)."""

    COLUMNS = ("ligne", "champ", "motif", "libelle", "nir_masque")

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = open(path, "w", encoding="utf-8-sig", newline="")  # noqa: SIM115 - closed in close()
        self._writer = csv.writer(self._file, delimiter=";", lineterminator="\r\n")
        self._writer.writerow(self.COLUMNS)
        self.counts: Counter[Reason] = Counter()

    def write(self, r: Rejection) -> None:
        self.counts[r.reason] += 1
        # The masked NIR keeps its first character, which a malicious extract may make "=".
        self._writer.writerow([safe_cell(v) for v in (r.line, r.field, r.reason.value, r.reason.label, r.nir_masked)])

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RejectReport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""Full audit of the stored ledger: recompute everything, trust nothing stored.

One pass over the entries in sequence order checks, for entry n° i:

1. its row is number i (a gap means an entry was deleted);
2. SHA-256(0x00 || stored bytes) equals the stored leaf hash (a changed field shows here);
3. the query columns (id, time, actor, action, case, pseudonym) say what the hashed bytes
   say (with ``deep``, the bytes are also re-validated as an entry in canonical form);
4. SHA-256(previous stored chain hash || leaf hash) equals the stored chain hash (a row
   moved elsewhere, or renumbered after a deletion, shows here);

while the recomputed leaf hashes feed a :class:`~services.ledger.merkle.CompactRange`. Each
stored signed head is checked twice: its Ed25519 signature under a known ledger public key,
and its root against the root recomputed at its size (so every head is consistent with
today's tree). Someone who rewrites an entry *and* all its hashes still cannot forge a
head: the first head that no longer matches bounds where the rewrite happened.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError
from sqlalchemy import Engine, select

from services.core.signing import b64u
from services.ledger import tables as t
from services.ledger.entries import LedgerEntry, canonical_bytes
from services.ledger.heads import SignedHead
from services.ledger.merkle import CompactRange
from services.ledger.store import GENESIS_CHAIN, head_from_row, key64, lookup_rows

_MAX_PROBLEMS = 50


@dataclass(frozen=True)
class Problem:
    """One thing found wrong. ``index``/``entry_id`` name the entry when there is one."""

    what: str
    index: int | None = None
    entry_id: str | None = None

    def __str__(self) -> str:
        if self.index is None:
            return self.what
        name = f"entry n° {self.index}" + (f" (id {self.entry_id})" if self.entry_id else "")
        return f"{name}: {self.what}"


@dataclass
class Report:
    tree_size: int = 0
    root: bytes = b""
    heads_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    more_problems: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_bad_entry(self) -> Problem | None:
        return next((p for p in self.problems if p.index is not None), None)

    def add(self, problem: Problem) -> None:
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.append(problem)
        else:
            self.more_problems += 1

    def summary(self) -> dict[str, Any]:
        bad = self.first_bad_entry
        return {
            "ok": self.ok, "tree_size": self.tree_size, "root_hash": b64u(self.root),
            "heads_checked": self.heads_checked,
            "first_bad_entry": None if bad is None else {"index": bad.index,
                                                          "entry_id": bad.entry_id},
            "problems": [str(p) for p in self.problems], "more_problems": self.more_problems,
        }


def _check_columns(columns: tuple[Any, ...], data: bytes, deep: bool) -> str | None:
    """None if the stored bytes are an entry that the query columns agree with.

    ``columns`` = (entry_id, id_key, time, actor, action, case_id, subject_key_id,
    subject_value): the id's digest is checked too, since appends find ids through it."""
    try:
        doc = json.loads(data)
        subject = doc["subject"] or {}
        signed = (doc["entry_id"], key64(doc["entry_id"]), doc["time"], doc["actor"],
                  doc["action"], doc["case_id"], subject.get("key_id"), subject.get("value"))
    except (ValueError, TypeError, KeyError, AttributeError):
        return "stored bytes are not a ledger entry"
    if signed != columns:
        for name, column, value in zip(_COLUMN_NAMES, columns, signed, strict=True):
            if column != value:
                return f"column {name} says {column!r} but the hashed entry says {value!r}"
    if deep:
        try:
            entry = LedgerEntry.model_validate_json(data)
        except ValidationError as exc:
            return f"not a valid ledger entry: {exc.errors()[0]['msg']}"
        if canonical_bytes(entry) != data:
            return "stored bytes are not in canonical (RFC 8785) form"
    return None


_COLUMN_NAMES = ("entry_id", "id_key", "time", "actor", "action", "case_id", "subject_key_id",
                 "subject_value")
_MASK = (1 << 64) - 1


def _rows_digest(rows: Iterable[tuple[int, int, int]]) -> int:
    """A multiset digest of the auditor's index rows (bucket, seq, fingerprint): the sum of
    their BLAKE2b-64, modulo 2**64 (order-free, so the table can be read in any order)."""
    blake, pack = hashlib.blake2b, _ROW.pack
    total = 0
    for row in rows:
        total += int.from_bytes(blake(pack(*row), digest_size=8).digest(), "big")
    return total & _MASK


_ROW = struct.Struct(">qqq")


def verify_ledger(engine: Engine, public_keys: dict[str, Ed25519PublicKey], *,
                  deep: bool = False, batch: int = 20_000) -> Report:
    """Check the whole stored ledger. ``deep`` also re-validates every entry with the model
    (slower; the canonical-form and column checks run anyway)."""
    report = Report()
    with engine.connect() as conn:
        heads = [head_from_row(row._mapping)
                 for row in conn.execute(select(t.heads).order_by(t.heads.c.head_id))]
        state_row = conn.execute(select(t.state).where(t.state.c.id == 1)).first()
    heads_by_size = _check_signatures(heads, public_keys, report)
    sizes = sorted(heads_by_size)

    acc = CompactRange()
    prev_chain = GENESIS_CHAIN
    sha = hashlib.sha256
    c = t.entries.c
    query = select(c.seq, c.entry_id, c.id_key, c.time, c.actor, c.action, c.case_id,
                   c.subject_key_id, c.subject_value, c.entry, c.leaf_hash,
                   c.chain_hash).order_by(c.seq)
    expected_lookup = 0
    expected = 0
    next_size = 0  # position in ``sizes`` of the next head to compare
    last_good_head = 0
    with engine.connect() as conn:
        result = conn.execution_options(yield_per=batch).execute(query)
        for seq, entry_id, *columns, data, stored_leaf, stored_chain in result:
            if seq != expected:
                report.add(Problem(f"missing: the next stored row is n° {seq} ({entry_id})"
                                   " — entries were deleted", expected, None))
                expected = seq  # carry on from the stored row so later checks still mean something
            leaf = sha(b"\x00" + data).digest()
            if leaf != stored_leaf:
                report.add(Problem("content altered: its leaf hash no longer matches its bytes",
                                   seq, entry_id))
            else:
                why = _check_columns((entry_id, *columns), data, deep)
                if why is not None:
                    report.add(Problem(why, seq, entry_id))
            _, _, actor, action, case_id, _, subject = columns
            expected_lookup += _rows_digest(lookup_rows(((seq, case_id, subject, actor,
                                                          action),)))
            if sha(prev_chain + stored_leaf).digest() != stored_chain:
                report.add(Problem("out of place: its chain hash does not follow the previous "
                                   "entry (rows reordered, renumbered or removed before it)",
                                   seq, entry_id))
            prev_chain = stored_chain
            acc.append(leaf)
            expected += 1
            while next_size < len(sizes) and sizes[next_size] == acc.size:
                if _check_heads_at(heads_by_size[acc.size], acc.root(), last_good_head, report):
                    last_good_head = acc.size
                next_size += 1
    report.tree_size = acc.size
    report.root = acc.root()
    if sizes and sizes[0] == 0:  # heads of the empty tree
        _check_heads_at(heads_by_size[0], CompactRange().root(), 0, report)
    for size in sizes[bisect.bisect_right(sizes, acc.size):]:
        for head in heads_by_size[size]:
            report.add(Problem(f"signed head of {size} entries signed {head.timestamp}, but only "
                               f"{acc.size} entries remain: entries from n° {acc.size} on were "
                               "deleted", acc.size, None))
    _check_state(state_row, acc, prev_chain, report)
    _check_lookup(engine, expected_lookup & _MASK, report)
    report.heads_checked = len(heads)
    return report


def _check_signatures(heads: list[SignedHead], public_keys: dict[str, Ed25519PublicKey],
                      report: Report) -> dict[int, list[SignedHead]]:
    by_size: dict[int, list[SignedHead]] = {}
    for number, head in enumerate(heads, 1):
        key = public_keys.get(head.signature.key_id)
        if key is None:
            report.add(Problem(f"signed head #{number} (size {head.tree_size}) is signed by "
                               f"unknown key {head.signature.key_id}"))
        elif not head.verify(key):
            report.add(Problem(f"signed head #{number} (size {head.tree_size}, "
                               f"{head.timestamp}): bad signature"))
        by_size.setdefault(head.tree_size, []).append(head)
    return by_size


def _check_heads_at(heads: list[SignedHead], root: bytes, last_good: int, report: Report) -> bool:
    ok = True
    for head in heads:
        if head.root != root:
            ok = False
            report.add(Problem(
                f"the signed head of {head.tree_size} entries ({head.timestamp}) does not match "
                f"the stored entries: one of entries n° {last_good} to n° {head.tree_size - 1} "
                "was rewritten together with its hashes",
                last_good, None))
    return ok


def _check_lookup(engine: Engine, expected: int, report: Report) -> None:
    """The auditor's index holds exactly the rows of the stored entries: a row removed to
    hide an entry from `audit query` (or added, or changed) shows here."""
    lk = t.lookup.c
    with engine.connect() as conn:
        rows = conn.execution_options(yield_per=50_000).execute(select(lk.bucket, lk.seq, lk.fp))
        stored = _rows_digest((int(b), int(s), int(f)) for b, s, f in rows)
    if stored != expected:
        report.add(Problem(f"the auditor's index ({t.lookup.name}) does not match the stored "
                           "entries: rows were added, removed or changed by hand, so "
                           "`audit query` could miss entries (rebuild it with "
                           "`help-exchange audit reindex`)"))


def _check_state(state_row: Any, acc: CompactRange, chain: bytes, report: Report) -> None:
    if state_row is None:
        if acc.size:
            report.add(Problem("the ledger_state row is missing"))
        return
    if int(state_row.tree_size) != acc.size:
        report.add(Problem(f"ledger_state says {state_row.tree_size} entries, "
                           f"{acc.size} are stored: entries were deleted or added by hand",
                           min(acc.size, int(state_row.tree_size)), None))
    elif bytes(state_row.compact_range) != acc.to_bytes() or bytes(state_row.last_chain) != chain:
        report.add(Problem("ledger_state (the saved tree frontier) does not match the entries"))

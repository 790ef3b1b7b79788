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
from sqlalchemy import Connection, Engine, select

from services.core.signing import b64u
from services.errors import InputError
from services.ledger import tables as t
from services.ledger.checkpoint import Checkpoint, NoteVerifier, open_checkpoint
from services.ledger.entries import LedgerEntry, canonical_bytes, subject_commitment
from services.ledger.heads import SignedHead
from services.ledger.merkle import CompactRange
from services.ledger.store import GENESIS_CHAIN, head_from_row, key64, lookup_rows
from services.ledger.tiles import TILE_WIDTH, TileReader, tile_path

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
    checkpoints_checked: int = 0
    trusted_checked: int = 0
    #: Entries from n° ``covered`` on are under no valid signed checkpoint.
    covered: int = 0
    uncovered_since: str | None = None
    #: Size of the largest checkpoint cosigned by the quorum (None: no quorum asked).
    quorum_size: int | None = None

    @property
    def uncovered(self) -> int:
        return self.tree_size - self.covered

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
            "checkpoints_checked": self.checkpoints_checked,
            "trusted_checked": self.trusted_checked, "covered": self.covered,
            "uncovered": self.uncovered, "uncovered_since": self.uncovered_since,
            "quorum_size": self.quorum_size,
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
        commitment = doc.get("subject_commitment")
    except (ValueError, TypeError, KeyError, AttributeError):
        return "stored bytes are not a ledger entry"
    if commitment is not None:  # the person is in the private columns, under a commitment
        value = columns[-1]
        if value is None or columns[-2] is None or not isinstance(value, str) \
                or subject_commitment(value, doc["entry_id"]) != commitment:
            return ("column subject_value does not open the hashed entry's subject_commitment "
                    "(the person was changed or removed)")
        signed = (*signed[:-2], columns[-2], value)
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


@dataclass(frozen=True)
class Pins:
    """What the auditor brings: the log's checkpoint keys, checkpoints kept from earlier
    (``trusted``), a tile export kept from earlier (reader and its size), the witnesses'
    keys and the quorum of cosignatures required."""

    log_keys: tuple[NoteVerifier, ...] = ()
    trusted: tuple[Checkpoint, ...] = ()
    kept_tiles: tuple[TileReader, int] | None = None
    witnesses: tuple[NoteVerifier, ...] = ()
    quorum: int = 0


def verify_ledger(engine: Engine, public_keys: dict[str, Ed25519PublicKey], *,
                  deep: bool = False, batch: int = 20_000, pins: Pins | None = None) -> Report:
    """Check the whole stored ledger. ``deep`` also re-validates every entry with the model
    (slower; the canonical-form and column checks run anyway). ``pins``: see :class:`Pins`;
    stored checkpoints are checked under ``pins.log_keys``."""
    pins = pins or Pins()
    report = Report()
    with engine.connect() as conn:
        heads = [head_from_row(row._mapping)
                 for row in conn.execute(select(t.heads).order_by(t.heads.c.head_id))]
        state_row = conn.execute(select(t.state).where(t.state.c.id == 1)).first()
        stored_cps = _stored_checkpoints(conn, pins, report)
    heads_by_size = _check_signatures(heads, public_keys, report)
    for size in stored_cps:
        heads_by_size.setdefault(size, [])
    for cp in pins.trusted:
        heads_by_size.setdefault(cp.size, [])
    sizes = sorted(heads_by_size)
    trusted_by_size: dict[int, list[Checkpoint]] = {}
    for cp in pins.trusted:
        trusted_by_size.setdefault(cp.size, []).append(cp)
    time_at: dict[int, str] = {}

    acc = CompactRange()
    nodes: list[tuple[int, int, bytes]] = []  # the tile hashes above level 0, recomputed
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
    last_good_trusted = 0  # a rewrite re-signed with the log's key is bounded by pins only
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
            acc.append_noting(leaf, nodes)
            expected += 1
            while next_size < len(sizes) and sizes[next_size] == acc.size:
                root = acc.root()
                good = _check_heads_at(heads_by_size[acc.size], root, last_good_head, report)
                good = _check_checkpoints_at(acc.size, root, stored_cps.get(acc.size),
                                             trusted_by_size.get(acc.size, ()),
                                             (last_good_head, last_good_trusted),
                                             report) and good
                if good and acc.size in trusted_by_size:
                    last_good_trusted = acc.size
                if good:
                    last_good_head = acc.size
                    if (acc.size in stored_cps or acc.size in trusted_by_size
                            or heads_by_size[acc.size]):  # a signed head binds as well
                        report.covered = acc.size
                next_size += 1
            if seq == report.covered:
                time_at[seq] = columns[1]
    report.tree_size = acc.size
    report.root = acc.root()
    if report.covered < report.tree_size:
        report.uncovered_since = time_at.get(report.covered)
    for size, cps in trusted_by_size.items():
        if size > acc.size:
            report.add(Problem(f"a checkpoint the auditor kept says the log held {size} entries; "
                               f"only {acc.size} remain: entries from n° {acc.size} on were "
                               "removed (truncation or rollback)", acc.size, None))
        report.trusted_checked += len(cps)
    for size in stored_cps:
        if size > acc.size:
            report.add(Problem(f"the log's own checkpoint of {size} entries is signed, but only "
                               f"{acc.size} entries remain: entries from n° {acc.size} on were "
                               "deleted", acc.size, None))
    if pins.kept_tiles is not None:
        _compare_kept_tiles(engine, pins.kept_tiles, report)
    if pins.quorum:
        report.quorum_size = max((cp.size for cp in stored_cps.values()
                                  if len(cp.cosigners) >= pins.quorum), default=0)
    if sizes and sizes[0] == 0:  # heads of the empty tree
        _check_heads_at(heads_by_size[0], CompactRange().root(), 0, report)
    for size in sizes[bisect.bisect_right(sizes, acc.size):]:
        for head in heads_by_size[size]:
            report.add(Problem(f"signed head of {size} entries signed {head.timestamp}, but only "
                               f"{acc.size} entries remain: entries from n° {acc.size} on were "
                               "deleted", acc.size, None))
    _check_state(state_row, acc, prev_chain, report)
    _check_tile_nodes(engine, nodes, report)
    _check_lookup(engine, expected_lookup & _MASK, report)
    report.heads_checked = len(heads)
    return report


def _stored_checkpoints(conn: Connection, pins: Pins, report: Report) -> dict[int, Checkpoint]:
    """The stored checkpoints whose log signature verifies, by size (each bad one is a
    problem). With no log key given, none is trusted."""
    found: dict[int, Checkpoint] = {}
    c = t.checkpoints.c
    cosigs: dict[int, list[str]] = {}
    for size, line in conn.execute(select(t.cosignatures.c.tree_size, t.cosignatures.c.line)):
        cosigs.setdefault(int(size), []).append(str(line))
    witnesses = {w.name: w for w in pins.witnesses}
    for size, note in conn.execute(select(c.tree_size, c.note).order_by(c.tree_size)):
        report.checkpoints_checked += 1
        text = str(note) + "".join(cosigs.get(int(size), ()))
        checked = None
        why = "no checkpoint key of the log was given"
        for key in pins.log_keys:
            try:
                checked = open_checkpoint(text, key, witnesses=witnesses)
                break
            except InputError as exc:
                why = exc.what
        if checked is None:
            if pins.log_keys:
                report.add(Problem(f"stored checkpoint of {size} entries refused: {why}"))
            continue
        if checked.size != int(size):
            report.add(Problem(f"stored checkpoint filed under size {size} says {checked.size}"))
            continue
        found[checked.size] = checked
    return found


def _check_checkpoints_at(size: int, root: bytes, stored: Checkpoint | None,
                          trusted: Iterable[Checkpoint], last_good_pair: tuple[int, int],
                          report: Report) -> bool:
    """Stored checkpoints bound a rewrite by the last good head or checkpoint; kept ones
    (the log's own may have been re-signed by whoever rewrote it) by the last good kept one."""
    ok = True
    for cp, whose, last_good in ((stored, "the log's stored", last_good_pair[0]),
                                 *((c, "a kept (trusted)", last_good_pair[1]) for c in trusted)):
        if cp is not None and cp.root != root:
            ok = False
            report.add(Problem(
                f"{whose} checkpoint of {size} entries does not match the stored entries: one "
                f"of entries n° {last_good} to n° {size - 1} was rewritten together with its "
                "hashes", last_good, None))
    return ok


def _compare_kept_tiles(engine: Engine, kept: tuple[TileReader, int], report: Report) -> None:
    """Name the first entry whose leaf hash differs from the tiles the auditor kept."""
    read, size = kept
    c = t.entries.c
    for n in range((size + TILE_WIDTH - 1) // TILE_WIDTH):
        width = min(TILE_WIDTH, size - n * TILE_WIDTH)
        tile = read(tile_path(0, n, width))
        if tile is None or len(tile) != 32 * width:
            report.add(Problem(f"the kept tile {tile_path(0, n, width)} is missing or truncated"))
            return
        with engine.connect() as conn:
            rows = conn.execute(select(c.seq, c.entry_id, c.leaf_hash)
                                .where(c.seq >= n * TILE_WIDTH, c.seq < n * TILE_WIDTH + width)
                                .order_by(c.seq)).all()
        for i in range(width):
            if i >= len(rows):
                report.add(Problem("missing: the auditor's kept tiles hold it, the log does not",
                                   n * TILE_WIDTH + i, None))
                return
            seq, entry_id, leaf = rows[i]
            if bytes(leaf) != tile[32 * i: 32 * i + 32]:
                report.add(Problem("rewritten: its leaf hash differs from the tiles the auditor "
                                   "kept", int(seq), entry_id))
                return


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


def _check_tile_nodes(engine: Engine, nodes: list[tuple[int, int, bytes]],
                      report: Report) -> None:
    """The stored hashes of the tiles above level 0 are the subtree roots of the entries:
    a damaged one would serve tiles that no verifier accepts."""
    tn = t.tile_nodes.c
    with engine.connect() as conn:
        stored = [(int(level), int(idx), bytes(h)) for level, idx, h in conn.execute(
            select(tn.level, tn.idx, tn.hash).order_by(tn.level, tn.idx))]
    expected = sorted(nodes)
    if stored == expected:
        return
    for want, got in zip(expected, stored, strict=False):
        if want != got:
            first = want[1] << (8 * want[0])
            report.add(Problem(f"the tile hash of level {want[0]} n° {want[1]} (entries n° "
                               f"{first} to n° {first + (1 << 8 * want[0]) - 1}) is not the "
                               f"root of those entries: {t.tile_nodes.name} was altered"))
            return
    report.add(Problem(f"{t.tile_nodes.name} holds {len(stored)} tile hashes, the entries "
                       f"make {len(expected)}: rows were added or removed by hand"))


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

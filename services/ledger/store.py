"""The ledger stored in SQL: append-only, idempotent by entry id, with signed tree heads.

This is the API the other services call (SQLAlchemy 2 Core; SQLite and PostgreSQL)::

    from services.ledger.store import Ledger
    from services.ledger.entries import Action, LedgerLegalBasis, LedgerPurpose, new_entry

    ledger = Ledger.open(settings)                      # engine from HELP_DATABASE_URL
    ledger.append([entry, ...])                         # one transaction, idempotent
    ledger.record(action=Action.SIGNALEMENT_ACCEPTE, actor="correlator",
                  purpose=LedgerPurpose.ACCES_AUX_DROITS, legal_basis=LedgerLegalBasis.L115_2_1,
                  time=now, natural_key=(signal_id,), subject=pseudonym, ref=signal_id)
    ledger.sign_head()                                  # a new signed tree head

or, inside a transaction the caller already holds (the casebook writing its own rows and
the ledger entry atomically): ``ledger.append(entries, connection=conn)``.

Hooks for the other services (what each should append; ids from
:func:`~services.ledger.entries.entry_id_for` so a redelivery appends nothing twice):

* correlator — ``signalement_accepte`` / ``signalement_rejete`` (natural key: signal_id or
  receipt_id; ``reason`` on a rejection; ``ref`` = signal_id), ``situation_ouverte`` /
  ``_mise_a_jour`` / ``_fermee`` / ``_rouverte`` (natural key: event_id; ``case_id`` =
  situation_id), and on ``help.consents.v1``: ``consentement_donne`` /
  ``consentement_retire`` / ``opposition`` (natural key: the consent event_id; legal basis
  ``consentement`` or ``rgpd_21``), then ``effacement`` with ``count`` once the person's
  state is erased;
* casebook — ``liste_generee`` / ``liste_consultee`` / ``liste_exportee`` (``ref`` = the
  worklist or export id, ``actor`` = the user), ``reference_revelee``,
  ``suite_enregistree``, ``effacement``, and ``purge_conservation`` with ``count`` per
  purge run; written with ``connection=`` in the casebook's own transaction;
* key management — ``rotation_cle`` after :meth:`LedgerSigner.rotate`, and when the
  pseudonymisation service destroys a key version (``actor`` ``pseudonymiseur.<version>``);
* pseudonymisation service (scheme v2) — ``pseudonymes_calcules`` / ``pseudonymisation_refusee``
* key endpoint (sealed signals) — ``cles_signal_remises`` / ``cles_signal_refusees``
  per batch: ``fund``, ``count``, ``actor`` ``pseudonymiseur.<key version>``, ``ref`` = the
  request id, ``reason`` on a refusal; never an input.

Appending an entry whose id is already in the ledger is a no-op if the content is the same
(a redelivered message) and an :class:`~services.errors.InputError` if it differs (two facts
under one id is a bug upstream, never silently resolved). Appends are serialised by a lock
on the one ``ledger_state`` row, so sequence numbers have no gap.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Connection,
    Engine,
    delete,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError

from services.core.types import format_timestamp
from services.errors import InputError, TransientError
from services.ledger import tables as t
from services.ledger.checkpoint import sign_checkpoint
from services.ledger.entries import Action, LedgerEntry, canonical_bytes, new_entry, parse_entry
from services.ledger.heads import LedgerSigner, SignedHead
from services.ledger.merkle import CompactRange, consistency_proof, inclusion_proof, root_of
from services.platform.db import make_engine, migrate

if TYPE_CHECKING:
    from services.platform.settings import Settings

GENESIS_CHAIN = bytes(32)
DEFAULT_ORIGIN = "help-exchange.local/ledger"
_IN_CHUNK = 500


def key64(text: str) -> int:
    """The 64-bit signed integer digest under which an entry id is indexed (see
    :mod:`services.ledger.tables`): BLAKE2b-64 of the text. Collisions only cost a second
    comparison, on the text itself, which every lookup makes."""
    h = _BLAKE2B_64.copy()  # a copy of an empty hash: no keyword parsing per call
    h.update(text.encode())
    return int.from_bytes(h.digest(), "big", signed=True)


_BLAKE2B_64 = hashlib.blake2b(digest_size=8)


#: The auditor's index puts each kind of key (case, pseudonym, actor, action) into this many
#: buckets (see :mod:`services.ledger.tables` for why buckets and not one key per value).
LOOKUP_BUCKET_BITS = 7
_LOOKUP_KINDS = {"c": 0, "s": 1, "a": 2, "x": 3}
_FP_BITS = 32


def lookup_key(kind: str, value: str) -> tuple[int, int]:
    """(bucket, fingerprint) of a case (``c``), pseudonym (``s``), actor (``a``) or action
    (``x``) in the auditor's index: from BLAKE2b-64 of the kind and value, the top bits pick
    the bucket, the low 32 bits (as a signed 32-bit integer, for PostgreSQL's INTEGER) are
    the fingerprint that a query compares inside its bucket."""
    h = _KIND_HASH[kind].copy()  # the hash of the kind's prefix, continued with the value
    h.update(value.encode())
    digest = int.from_bytes(h.digest())
    return (_KIND_BASE[kind] | digest >> _BUCKET_SHIFT), (digest & _FP_MASK) - _FP_OFFSET


_KIND_HASH = {kind: hashlib.blake2b(kind.encode() + b"\x00", digest_size=8)
              for kind in _LOOKUP_KINDS}
_KIND_BASE = {kind: code << LOOKUP_BUCKET_BITS for kind, code in _LOOKUP_KINDS.items()}
_BUCKET_SHIFT = 64 - LOOKUP_BUCKET_BITS
_FP_MASK = (1 << _FP_BITS) - 1
_FP_OFFSET = 1 << (_FP_BITS - 1)


def lookup_rows(rows: Iterable[Sequence[Any]]) -> Iterator[tuple[int, int, int]]:
    """(bucket, seq, fingerprint) rows of the auditor's index for rows (seq, case_id,
    subject_value, actor, action)."""
    for seq, case_id, subject, actor, action in rows:
        seq = int(seq)
        for kind, value in (("c", case_id), ("s", subject), ("a", actor), ("x", action)):
            if value is not None:
                bucket, fp = lookup_key(kind, value)
                yield bucket, seq, fp


def chain_next(previous: bytes, leaf: bytes) -> bytes:
    """SHA-256(previous chain hash || leaf hash)."""
    return hashlib.sha256(previous + leaf).digest()


# ---------------------------------------------------------------------------- what an append writes
@dataclass
class AppendRows:
    """What appending new entries writes, computed before any SQL: the ``ledger_entries``
    rows (in seq order) and the ``ledger_index`` rows (in index order, so each bucket's
    tail page is visited once; their values one after the other, row after row, as
    :func:`_insert_flat` takes them: no tuple per row), the tile hashes the entries
    complete (as :meth:`CompactRange.append_noting` notes them), the checkpoints the policy
    owes (size, root) and the chain hash after the last entry. The compact range given is
    advanced in place."""

    entries: list[tuple[Any, ...]]
    index: list[int]
    nodes: list[tuple[int, int, bytes]]
    marks: list[tuple[int, bytes]]
    chain: bytes


def append_rows_reference(entries: Sequence[LedgerEntry], datas: Sequence[bytes],
                          id_keys: Mapping[str, int], size: int, chain: bytes,
                          compact: CompactRange, every: int) -> AppendRows:
    """:class:`AppendRows` of ``entries`` (whose canonical bytes are ``datas``) appended
    to a tree of ``size`` entries: one entry at a time, as the definitions say — the
    referee of :func:`append_rows`. ``every``: a checkpoint every that many entries (0:
    none)."""
    rows: list[tuple[Any, ...]] = []
    keys: list[tuple[int, int, int]] = []
    nodes: list[tuple[int, int, bytes]] = []
    marks: list[tuple[int, bytes]] = []
    for entry, data in zip(entries, datas, strict=True):
        leaf = hashlib.sha256(b"\x00" + data).digest()
        chain = chain_next(chain, leaf)
        compact.append_noting(leaf, nodes)
        subject = entry.person
        at = data.rindex(b'"time":"') + 8  # the time as hashed (one format, see entries)
        rows.append((
            size, entry.entry_id, id_keys[entry.entry_id], data[at:data.index(b'"', at)].decode(),
            entry.actor, entry.action.value, entry.case_id,
            subject.key_id if subject else None, subject.value if subject else None,
            data, leaf, chain,
        ))
        keys.extend(lookup_rows([(size, entry.case_id, subject.value if subject else None,
                                  entry.actor, entry.action.value)]))
        size += 1
        if every and not size % every:
            marks.append((size, compact.root()))
    keys.sort()
    return AppendRows(rows, [value for key in keys for value in key], nodes, marks, chain)


def append_rows(entries: Sequence[LedgerEntry], datas: Sequence[bytes],
                id_keys: Mapping[str, int], size: int, chain: bytes,
                compact: CompactRange, every: int) -> AppendRows:
    """:func:`append_rows_reference`, a column at a time: each hash, text and key of the
    batch in one comprehension, the tree a level at a time
    (:meth:`CompactRange.extend_noting`), the few actors and actions hashed once each, and
    the index rows put in order by a stable sort on the bucket alone (within a bucket, rows
    already come in seq order). The append path's fast path; a property test holds the
    two equal."""
    n = len(datas)
    seqs = range(size, size + n)
    sha = hashlib.sha256
    leaves = [sha(b"\x00" + data).digest() for data in datas]
    chains: list[bytes] = []
    add_chain = chains.append
    for leaf in leaves:
        chain = sha(chain + leaf).digest()
        add_chain(chain)
    nodes: list[tuple[int, int, bytes]] = []
    marks: list[tuple[int, bytes]] = []
    done = 0
    if every:  # the tree grown to each checkpoint's size, its root taken there
        for stop in range(every - size % every, n + 1, every):
            compact.extend_noting(leaves[done:stop], nodes)
            marks.append((size + stop, compact.root()))
            done = stop
    compact.extend_noting(leaves[done:] if done else leaves, nodes)
    ids = [entry.entry_id for entry in entries]
    persons = [entry.person for entry in entries]
    cases = [entry.case_id for entry in entries]
    actors = [entry.actor for entry in entries]
    actions = [_ACTION_TEXT[entry.action] for entry in entries]
    values = [person.value if person is not None else None for person in persons]
    rows = list(zip(
        seqs, ids, [id_keys[i] for i in ids],
        [data[(at := data.rindex(b'"time":"') + 8):data.index(b'"', at)].decode()
         for data in datas],
        actors, actions, cases,
        [person.key_id if person is not None else None for person in persons], values,
        datas, leaves, chains, strict=True))
    buckets: list[int] = []
    index_seqs: list[int] = []
    fps: list[int] = []
    for kind, spread in (("c", cases), ("s", values)):
        hashed = _KIND_HASH[kind]
        base = _KIND_BASE[kind]
        for seq, value in zip(seqs, spread, strict=True):
            if value is not None:
                h = hashed.copy()
                h.update(value.encode())
                digest = int.from_bytes(h.digest())
                buckets.append(base | digest >> _BUCKET_SHIFT)
                index_seqs.append(seq)
                fps.append((digest & _FP_MASK) - _FP_OFFSET)
    for kind, repeated in (("a", actors), ("x", actions)):
        few = {value: _few_valued_key(kind, value) for value in set(repeated)}
        buckets.extend([few[value][0] for value in repeated])
        index_seqs.extend(seqs)
        fps.extend([few[value][1] for value in repeated])
    order = sorted(range(len(buckets)), key=buckets.__getitem__)  # stable
    index: list[int] = [0] * (3 * len(order))
    index[0::3] = map(buckets.__getitem__, order)
    index[1::3] = map(index_seqs.__getitem__, order)
    index[2::3] = map(fps.__getitem__, order)
    return AppendRows(rows, index, nodes, marks, chain)


_ACTION_TEXT = {action: action.value for action in Action}


@dataclass(frozen=True)
class AppendResult:
    """What an append did: ``indexes[i]`` is the leaf index of the i-th entry given."""

    appended: int
    already_present: int
    tree_size: int
    indexes: tuple[int, ...]
    head: SignedHead | None = None


@dataclass(frozen=True)
class StoredEntry:
    index: int
    entry_id: str
    data: bytes
    leaf_hash: bytes


@dataclass(frozen=True)
class _State:
    tree_size: int
    compact: CompactRange
    last_chain: bytes


class Ledger:
    """The append-only log. ``signer`` is needed only to sign heads."""

    def __init__(self, engine: Engine, signer: LedgerSigner | None = None, *,
                 origin: str = DEFAULT_ORIGIN, checkpoint_every: int = 1000,
                 checkpoint_seconds: float = 10.0) -> None:
        self.engine = engine
        self.signer = signer
        self.origin = origin
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds
        self._note_signer = signer.note_signer(origin) if signer is not None else None

    @classmethod
    def open(cls, settings: Settings, *, sign: bool = True) -> Ledger:
        """The ledger of ``settings.database_url`` (every table migrated, see
        :func:`ensure_ready`), signing with the key of ``settings.key_dir`` (created on
        first use)."""
        engine = make_engine(settings.database_url)
        ensure_ready(engine)
        signer = LedgerSigner.load(settings.key_dir, create=True) if sign else None
        if signer is not None:
            signer.export_vkey(settings.key_dir, settings.ledger_origin)
        return cls(engine, signer, origin=settings.ledger_origin,
                   checkpoint_every=settings.ledger_checkpoint_every,
                   checkpoint_seconds=settings.ledger_checkpoint_seconds)

    # ------------------------------------------------------------------------ appending
    def append(
        self,
        entries: Iterable[LedgerEntry],
        *,
        sign: bool = False,
        connection: Connection | None = None,
        now: dt.datetime | None = None,
        first_time_wins: frozenset[Action] = frozenset(),
    ) -> AppendResult:
        """Append ``entries`` in order, in one transaction (the caller's, if given).

        An entry whose id is already there (or earlier in ``entries``) is already present if
        its content is the same, and a conflict (:class:`InputError`) if not — except, for the
        actions in ``first_time_wins``, when only the time differs: then the first is kept.
        That is the audit sink's case for receipts: a correlator restarted between sending its
        receipts and committing sends the same receipt (same id, same answer) again, stamped
        with the time of its second pass."""
        fresh: list[LedgerEntry] = []  # the first of each id, with its canonical bytes
        datas: list[bytes] = []
        by_id: dict[str, bytes] = {}
        order: list[str] = []
        for entry in entries:
            data = canonical_bytes(entry)
            entry_id = entry.entry_id
            order.append(entry_id)
            known = by_id.get(entry_id)
            if known is None:
                by_id[entry_id] = data
                fresh.append(entry)
                datas.append(data)
            elif known != data and not _same_but_time(entry, known, first_time_wins):
                raise _conflict(entry_id)
        if connection is not None:
            return self._append(connection, fresh, datas, order, sign, now, first_time_wins)
        try:
            with self.engine.begin() as conn:
                return self._append(conn, fresh, datas, order, sign, now, first_time_wins)
        except IntegrityError as exc:  # two first appends racing to create the state row
            raise TransientError("the ledger was being initialised concurrently",
                                 "retry the append") from exc
        except OperationalError as exc:
            raise TransientError(f"the ledger database is unavailable: {exc.orig}",
                                 "retry once the database answers") from exc

    def record(self, *, sign: bool = False, **fields: Any) -> LedgerEntry:
        """Build one entry with :func:`~services.ledger.entries.new_entry` and append it."""
        entry = new_entry(**fields)
        self.append([entry], sign=sign)
        return entry

    def _append(
        self,
        conn: Connection,
        fresh: list[LedgerEntry],
        datas: list[bytes],
        order: list[str],
        sign: bool,
        now: dt.datetime | None,
        first_time_wins: frozenset[Action] = frozenset(),
    ) -> AppendResult:
        state = _lock_state(conn)
        id_keys = {entry.entry_id: key64(entry.entry_id) for entry in fresh}
        present = _existing(conn, id_keys)
        if present:  # redelivered entries: already there if the same, else a conflict
            new_entries: list[LedgerEntry] = []
            new_datas: list[bytes] = []
            for entry, data in zip(fresh, datas, strict=True):
                stored = present.get(entry.entry_id)
                if stored is None:
                    new_entries.append(entry)
                    new_datas.append(data)
                elif stored[1] != data and not _same_but_time(entry, stored[1], first_time_wins):
                    raise _conflict(entry.entry_id)
            fresh, datas = new_entries, new_datas
        start, compact = state.tree_size, state.compact
        size = start + len(fresh)
        every = self.checkpoint_every if self._note_signer is not None else 0
        marks: list[tuple[int, bytes]] = []
        if fresh:
            rows = append_rows(fresh, datas, id_keys, start, state.last_chain, compact, every)
            marks = rows.marks
            # One row a statement: a statement of many rows would copy each index page it
            # touches to a statement journal first (to undo it alone), and the id_key
            # index is touched at random.
            _insert_rows(conn, t.entries.name, _ENTRY_COLUMNS, rows.entries)
            # The auditor's index, in the same transaction: a query never misses an entry.
            _insert_flat(conn, t.lookup.name, _LOOKUP_COLUMNS, rows.index)
            if rows.nodes:
                _insert_rows(conn, t.tile_nodes.name, ("level", "idx", "hash"), rows.nodes)
            conn.execute(update(t.state).where(t.state.c.id == 1).values(
                tree_size=size, compact_range=compact.to_bytes(), last_chain=rows.chain))
        moment = now or dt.datetime.now(dt.UTC)
        if self._note_signer is not None and fresh and (not marks or marks[-1][0] != size):
            last = _last_checkpoint(conn)
            if last is None or _age_s(last[1], moment) >= self.checkpoint_seconds:
                marks.append((size, compact.root()))  # … and after a quiet spell
        if marks:
            self._store_checkpoints(conn, marks, moment)
        head = None
        if sign:
            head = self._store_head(conn, size, compact.root(), now)
        if len(order) == len(fresh):  # no id twice, none already there
            indexes = tuple(range(start, size))
        else:
            index_of = {entry_id: seq for entry_id, (seq, _) in present.items()}
            index_of.update(zip([entry.entry_id for entry in fresh], range(start, size),
                                strict=True))
            indexes = tuple(index_of[i] for i in order)
        return AppendResult(appended=len(fresh), already_present=len(order) - len(fresh),
                            tree_size=size, indexes=indexes, head=head)

    # ------------------------------------------------------------------------ heads
    def sign_head(self, now: dt.datetime | None = None) -> SignedHead:
        """Sign and store the head of the current tree."""
        with self.engine.begin() as conn:
            state = _lock_state(conn)
            return self._store_head(conn, state.tree_size, state.compact.root(), now)

    def _store_head(self, conn: Connection, size: int, root: bytes,
                    now: dt.datetime | None) -> SignedHead:
        if self.signer is None:
            raise InputError("this ledger has no signing key loaded",
                             "open it with Ledger.open(settings) on the ledger host")
        head = self.signer.sign_head(size, root, now or dt.datetime.now(dt.UTC))
        if _checkpoint_at(conn, size) is None:
            self._store_checkpoints(conn, [(size, root)], now or dt.datetime.now(dt.UTC))
        conn.execute(insert(t.heads).values(
            tree_size=size, root_hash=root, timestamp=head.timestamp,
            key_id=head.signature.key_id, signature=_sig_bytes(head)))
        return head

    def _store_checkpoints(self, conn: Connection, marks: list[tuple[int, bytes]],
                           moment: dt.datetime) -> None:
        signer = self._note_signer
        if signer is None:
            raise InputError("this ledger has no signing key loaded",
                             "open it with Ledger.open(settings) on the ledger host")
        stamp = format_timestamp(moment)
        _insert_rows(conn, t.checkpoints.name, ("tree_size", "root_hash", "signed_at", "note"),
                     [(size, root, stamp, sign_checkpoint(signer, self.origin, size, root))
                      for size, root in marks])

    def checkpoint(self, now: dt.datetime | None = None) -> str:
        """The checkpoint of the current tree (signed now if none covers it yet), with
        the cosignatures it has."""
        with self.engine.begin() as conn:
            state = _lock_state(conn)
            if _checkpoint_at(conn, state.tree_size) is None:
                self._store_checkpoints(conn, [(state.tree_size, state.compact.root())],
                                        now or dt.datetime.now(dt.UTC))
        found = self.checkpoint_at(state.tree_size)
        assert found is not None
        return found

    def checkpoint_if_due(self, now: dt.datetime | None = None) -> bool:
        """Sign a checkpoint of the current tree if entries are under none and the newest is
        older than ``checkpoint_seconds`` (appends made without the key, e.g. the
        casebook's); True if one was signed. Cheap when nothing is due (two reads)."""
        moment = now or dt.datetime.now(dt.UTC)
        with self.engine.connect() as conn:
            row = conn.execute(select(t.state.c.tree_size).where(t.state.c.id == 1)).first()
            size = int(row[0]) if row else 0
            last = _last_checkpoint(conn)
        if size == 0 or (last is not None and (last[0] >= size or
                                               _age_s(last[1], moment) < self.checkpoint_seconds)):
            return False
        self.checkpoint(moment)
        return True

    def checkpoint_at(self, size: int, connection: Connection | None = None) -> str | None:
        """The stored checkpoint of ``size`` entries with its cosignatures, or None."""
        with _conn(self.engine, connection) as conn:
            note = _checkpoint_at(conn, size)
            if note is None:
                return None
            lines = conn.execute(select(t.cosignatures.c.line)
                                 .where(t.cosignatures.c.tree_size == size)
                                 .order_by(t.cosignatures.c.witness)).scalars().all()
        return note + "".join(lines)

    def latest_checkpoint(self) -> str | None:
        """The newest stored checkpoint, with its cosignatures."""
        with self.engine.connect() as conn:
            last = _last_checkpoint(conn)
            return None if last is None else self.checkpoint_at(last[0], conn)

    def published_checkpoint(self) -> str | None:
        """What the log publishes at ``/checkpoint``: the newest checkpoint witnesses
        cosigned (auditors require a quorum), else the newest one."""
        with self.engine.connect() as conn:
            size = conn.execute(select(func.max(t.cosignatures.c.tree_size))).scalar()
            if size is not None:
                return self.checkpoint_at(int(size), conn)
        return self.latest_checkpoint()

    def checkpoints(self, connection: Connection | None = None) -> list[tuple[int, str, str]]:
        """(size, signed at, note) of every stored checkpoint, smallest first (no
        cosignatures)."""
        c = t.checkpoints.c
        with _conn(self.engine, connection) as conn:
            return [(int(size), at, note) for size, at, note in conn.execute(
                select(c.tree_size, c.signed_at, c.note).order_by(c.tree_size))]

    def add_cosignature(self, size: int, witness: str, line: str) -> None:
        """Keep a witness's cosignature line of the checkpoint of ``size`` (checked by the
        caller, :mod:`services.ledger.witness`); a second one from the same witness
        replaces the first."""
        c = t.cosignatures.c
        with self.engine.begin() as conn:
            conn.execute(delete(t.cosignatures).where(c.tree_size == size, c.witness == witness))
            conn.execute(insert(t.cosignatures).values(tree_size=size, witness=witness,
                                                       line=line))

    def tile_nodes(self, level: int, start: int, end: int) -> list[bytes]:
        """The hashes of tile level ``level`` (>= 1) from index ``start`` to ``end``
        (excluded): roots of complete subtrees of 256**level leaves."""
        c = t.tile_nodes.c
        with self.engine.connect() as conn:
            return [bytes(h) for h in conn.execute(
                select(c.hash).where(c.level == level, c.idx >= start, c.idx < end)
                .order_by(c.idx)).scalars()]

    def entries_range(self, start: int, end: int) -> list[bytes]:
        """The canonical bytes of entries ``start`` to ``end`` (excluded)."""
        c = t.entries.c
        with self.engine.connect() as conn:
            return [bytes(d) for d in conn.execute(
                select(c.entry).where(c.seq >= start, c.seq < end).order_by(c.seq)).scalars()]

    def leaf_range(self, start: int, end: int) -> list[bytes]:
        """The leaf hashes of entries ``start`` to ``end`` (excluded)."""
        c = t.entries.c
        with self.engine.connect() as conn:
            return [bytes(d) for d in conn.execute(
                select(c.leaf_hash).where(c.seq >= start, c.seq < end).order_by(c.seq))
                .scalars()]

    def heads(self, connection: Connection | None = None) -> list[SignedHead]:
        """Every stored head, oldest first."""
        query = select(t.heads).order_by(t.heads.c.head_id)
        with _conn(self.engine, connection) as conn:
            return [head_from_row(row._mapping) for row in conn.execute(query)]

    def latest_head(self) -> SignedHead | None:
        heads = self.heads()
        return heads[-1] if heads else None

    # ------------------------------------------------------------------------ reading
    def size(self) -> int:
        with self.engine.connect() as conn:
            row = conn.execute(select(t.state.c.tree_size).where(t.state.c.id == 1)).first()
        return int(row[0]) if row else 0

    def root(self, size: int | None = None) -> bytes:
        """The root of the current tree (from the saved compact range), or of its first
        ``size`` entries (recomputed from the stored leaf hashes)."""
        if size is None:
            with self.engine.connect() as conn:
                return _read_state(conn).compact.root()
        return root_of(self.leaf_hashes(size))

    def leaf_hashes(self, size: int | None = None) -> list[bytes]:
        query = select(t.entries.c.leaf_hash).order_by(t.entries.c.seq)
        if size is not None:
            query = query.where(t.entries.c.seq < size)
        with self.engine.connect() as conn:
            hashes = [bytes(row[0]) for row in conn.execute(query)]
        if size is not None and len(hashes) < size:
            raise InputError(f"the ledger holds {len(hashes)} entries, not {size}",
                             "ask for a size no larger than the current tree")
        return hashes

    def entry(self, entry_id: str) -> StoredEntry:
        stored = self.get(entry_id)
        if stored is None:
            raise InputError(f"no entry {entry_id!r} in the ledger",
                             "give an entry id as `audit query` prints it (32 hex digits)")
        return stored

    def get(self, entry_id: str) -> StoredEntry | None:
        """The stored entry ``entry_id``, or None."""
        c = t.entries.c
        with self.engine.connect() as conn:
            row = conn.execute(select(c.seq, c.entry_id, c.entry, c.leaf_hash)
                               .where(c.id_key == key64(entry_id), c.entry_id == entry_id)).first()
        if row is None:
            return None
        return StoredEntry(int(row.seq), row.entry_id, bytes(row.entry), bytes(row.leaf_hash))

    def inclusion(self, entry_id: str, tree_size: int | None = None
                  ) -> tuple[StoredEntry, int, list[bytes]]:
        """The entry, the tree size and the audit path proving it in that tree."""
        stored = self.entry(entry_id)
        leaves = self.leaf_hashes(tree_size)
        size = len(leaves)
        if stored.index >= size:
            raise InputError(f"entry {entry_id} (n° {stored.index}) is not in a tree of {size}",
                             "prove it against a later head")
        return stored, size, inclusion_proof(stored.index, leaves)

    def consistency(self, first: int, second: int) -> tuple[bytes, bytes, list[bytes]]:
        """Roots of the trees of ``first`` and ``second`` entries and the proof between them."""
        if not 0 <= first <= second:
            raise InputError(f"no consistency proof from size {first} to size {second}",
                             "give --from no larger than --to")
        leaves = self.leaf_hashes(second)
        return root_of(leaves, 0, first), root_of(leaves), consistency_proof(first, leaves)

    def query(
        self,
        *,
        case_id: str | None = None,
        pseudonym: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        period: tuple[str, str] | None = None,
        limit: int | None = None,
    ) -> Iterator[tuple[int, bytes]]:
        """Stored entries matching every filter given, as (index, canonical bytes).

        ``period`` is a half-open range of timestamps' text, e.g. ("2026-11", "2026-12").
        The most selective of case, pseudonym, actor and action goes through the auditor's
        index (one bucket, narrowed by the fingerprint); every filter is then also applied to
        the entry's own columns (a fingerprint collision is not a match)."""
        c = t.entries.c
        query = select(c.seq, c.entry).order_by(c.seq)
        via = next(((kind, value) for kind, value in (("c", case_id), ("s", pseudonym),
                                                      ("a", actor), ("x", action))
                    if value is not None), None)
        if via is not None:
            bucket, fp = lookup_key(*via)
            lk = t.lookup.c
            keyed = select(lk.seq).where(lk.bucket == bucket, lk.fp == fp)
            query = query.where(c.seq.in_(keyed))
        if case_id is not None:
            query = query.where(c.case_id == case_id)
        if pseudonym is not None:
            query = query.where(c.subject_value == pseudonym)
        if actor is not None:
            query = query.where(c.actor == actor)
        if action is not None:
            query = query.where(c.action == action)
        if period is not None:
            query = query.where(c.time >= period[0], c.time < period[1])
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            result = conn.execution_options(yield_per=5000).execute(query)
            for row in result:
                yield int(row.seq), bytes(row.entry)

    def rebuild_index(self, batch: int = 100_000) -> int:
        """Rebuild the auditor's index from the stored entries, in one transaction; returns
        how many entries it covers. For a ledger whose index was damaged (``audit verify``
        says so) or that predates it; appends wait meanwhile (they take the same lock)."""
        c = t.entries.c
        with self.engine.begin() as conn:
            _lock_state(conn)
            conn.execute(delete(t.lookup))
            start = done = 0
            while True:
                rows = conn.execute(select(c.seq, c.case_id, c.subject_value, c.actor, c.action)
                                    .where(c.seq >= start).order_by(c.seq).limit(batch)).all()
                if not rows:
                    return done
                _insert_rows(conn, t.lookup.name, _LOOKUP_COLUMNS, sorted(lookup_rows(rows)))
                done += len(rows)
                start = int(rows[-1][0]) + 1

    def rebuild_tile_nodes(self, batch: int = 100_000) -> int:
        """Recompute the tile hashes above level 0 from the stored leaf hashes, in one
        transaction (appends wait); returns how many there are. For a ledger written before
        tiles, or whose ``ledger_tile_nodes`` `audit verify` reports damaged."""
        c = t.entries.c
        acc = CompactRange()
        nodes: list[tuple[int, int, bytes]] = []
        with self.engine.begin() as conn:
            _lock_state(conn)
            conn.execute(delete(t.tile_nodes))
            start = 0
            while True:
                rows = conn.execute(select(c.seq, c.leaf_hash).where(c.seq >= start)
                                    .order_by(c.seq).limit(batch)).all()
                if not rows:
                    break
                for _, leaf in rows:
                    acc.append_noting(bytes(leaf), nodes)
                start = int(rows[-1][0]) + 1
            if nodes:
                _insert_rows(conn, t.tile_nodes.name, ("level", "idx", "hash"), nodes)
        return len(nodes)

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(t.entries)).scalar_one())


# ---------------------------------------------------------------------------- helpers
#: The auditor's index before it was kept in the append transaction (one 64-bit key per
#: value, filled in bulk later): replaced by ``ledger_index``.
_LEGACY_LOOKUP = "ledger_lookup"


def ensure_ready(engine: Engine) -> None:
    """Migrate the database (:func:`services.platform.db.migrate`: the ledger's tables are
    under Alembic with the rest) and bring a ledger written by an earlier version up to
    date, which needs the ledger's own hashing: a ledger from before tiles gets its tile
    hashes from the stored leaves; one from before the auditor's index moved into the
    append transaction has its deferred index (``ledger_lookup``) dropped and the index
    rebuilt. Entries, hashes and heads are never touched."""
    migrate(engine)
    with engine.connect() as conn:
        size = conn.execute(select(t.state.c.tree_size).where(t.state.c.id == 1)).scalar()
        has_tiles = conn.execute(select(t.tile_nodes.c.level).limit(1)).first() is not None
    if (size or 0) >= 256 and not has_tiles:  # a level-1 tile exists from 256 leaves on
        Ledger(engine).rebuild_tile_nodes()
    if _LEGACY_LOOKUP in inspect(engine).get_table_names():
        Ledger(engine).rebuild_index()
        with engine.begin() as conn:
            conn.execute(text(f"DROP TABLE {_LEGACY_LOOKUP}"))


class _conn:
    """Use the caller's connection, or open (and close) one."""

    def __init__(self, engine: Engine, connection: Connection | None) -> None:
        self._engine, self._given = engine, connection
        self._own: Connection | None = None

    def __enter__(self) -> Connection:
        if self._given is not None:
            return self._given
        own = self._engine.connect()
        self._own = own
        return own

    def __exit__(self, *exc: object) -> None:
        if self._own is not None:
            self._own.close()


def _same_but_time(entry: LedgerEntry, other: bytes, actions: frozenset[Action]) -> bool:
    """True if ``entry`` is of one of ``actions`` and ``other`` (canonical bytes) is the same
    entry but for its time."""
    if entry.action not in actions:
        return False
    first = parse_entry(other)
    return canonical_bytes(entry.model_copy(update={"time": first.time})) == other


def _conflict(entry_id: str) -> InputError:
    return InputError(
        f"ledger entry {entry_id} already exists with a different content",
        "an entry id names one fact: derive it from what makes the fact unique "
        "(services.ledger.entries.entry_id_for)",
    )


def _checkpoint_at(conn: Connection, size: int) -> str | None:
    c = t.checkpoints.c
    note = conn.execute(select(c.note).where(c.tree_size == size)).scalar()
    return None if note is None else str(note)


def _last_checkpoint(conn: Connection) -> tuple[int, str] | None:
    """(size, signed at) of the newest checkpoint."""
    c = t.checkpoints.c
    row = conn.execute(select(c.tree_size, c.signed_at).order_by(c.tree_size.desc())
                       .limit(1)).first()
    return None if row is None else (int(row[0]), str(row[1]))


def _age_s(stamp: str, now: dt.datetime) -> float:
    return (now - dt.datetime.fromisoformat(stamp)).total_seconds()


def _sig_bytes(head: SignedHead) -> bytes:
    from services.core.signing import b64u_decode

    return b64u_decode(head.signature.value)


def head_from_row(row: Any) -> SignedHead:
    from services.core.signing import b64u

    return SignedHead.model_validate({
        "tree_size": int(row["tree_size"]), "root_hash": b64u(bytes(row["root_hash"])),
        "timestamp": row["timestamp"],
        "signature": {"key_id": row["key_id"], "alg": "Ed25519",
                      "value": b64u(bytes(row["signature"]))},
    })


def _read_state(conn: Connection) -> _State:
    row = conn.execute(select(t.state).where(t.state.c.id == 1)).first()
    if row is None:
        return _State(0, CompactRange(), GENESIS_CHAIN)
    size = int(row.tree_size)
    return _State(size, CompactRange.from_bytes(size, bytes(row.compact_range)),
                  bytes(row.last_chain))


def _lock_state(conn: Connection) -> _State:
    """Take the appenders' lock (an UPDATE of the state row) and read the state."""
    done = conn.execute(update(t.state).where(t.state.c.id == 1)
                        .values(version=t.state.c.version + 1))
    if done.rowcount == 0:
        conn.execute(insert(t.state).values(id=1, tree_size=0, compact_range=b"",
                                            last_chain=GENESIS_CHAIN, version=1))
    return _read_state(conn)


_ENTRY_COLUMNS = ("seq", "entry_id", "id_key", "time", "actor", "action", "case_id",
                  "subject_key_id", "subject_value", "entry", "leaf_hash", "chain_hash")
_LOOKUP_COLUMNS = ("bucket", "seq", "fp")
_MARKS = {"qmark": "?", "format": "%s", "pyformat": "%s"}


@functools.lru_cache(maxsize=4096)
def _few_valued_key(kind: str, value: str) -> tuple[int, int]:
    """:func:`lookup_key` of actors and actions, which repeat (a few hundred users, 18
    actions): remembered rather than hashed again for every entry."""
    return lookup_key(kind, value)


def _insert_rows(conn: Connection, table: str, columns: tuple[str, ...],
                 rows: list[tuple[Any, ...]]) -> None:
    """One driver-level executemany: SQLAlchemy's per-value bind processing costs more than
    the hashing itself at tens of thousands of rows a second."""
    mark = _MARKS.get(conn.dialect.paramstyle)
    if mark is None:  # pragma: no cover - neither SQLite nor psycopg
        conn.execute(insert(t.metadata.tables[table]),
                     [dict(zip(columns, row, strict=True)) for row in rows])
        return
    statement = (f"INSERT INTO {table} ({', '.join(columns)}) "
                 f"VALUES ({', '.join([mark] * len(columns))})")
    conn.exec_driver_sql(statement, rows)


#: Rows per INSERT statement when :func:`_insert_flat` writes the auditor's index.
_ROWS_PER_INSERT = 64


def _insert_flat(conn: Connection, table: str, columns: tuple[str, ...],
                 values: list[Any]) -> None:
    """Insert rows given as their values one after the other (row after row): in
    statements of :data:`_ROWS_PER_INSERT` rows each (multi-row VALUES), the rest one row
    a statement. The same rows in the same order as :func:`_insert_rows`, with a fraction
    of its per-statement work, and no tuple per row for the cyclic collector to count.
    For rows inserted in index order (a statement then touches one or two pages, which
    SQLite copies to its statement journal before changing them)."""
    width = len(columns)
    per = _ROWS_PER_INSERT * width
    full = len(values) - len(values) % per
    mark = _MARKS.get(conn.dialect.paramstyle)
    if full and mark is not None:
        conn.exec_driver_sql(_multi_insert(table, columns, _ROWS_PER_INSERT, mark),
                             [tuple(values[i:i + per]) for i in range(0, full, per)])
    else:
        full = 0
    if full < len(values):
        _insert_rows(conn, table, columns, [tuple(values[i:i + width])
                                            for i in range(full, len(values), width)])


@functools.lru_cache(maxsize=32)
def _multi_insert(table: str, columns: tuple[str, ...], rows: int, mark: str) -> str:
    row = f"({', '.join([mark] * len(columns))})"
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([row] * rows)}"


def _existing(conn: Connection, id_keys: dict[str, int]) -> dict[str, tuple[int, bytes]]:
    """The stored (seq, bytes) of those ids that are already in the ledger."""
    mark = _MARKS.get(conn.dialect.paramstyle, "?")
    found: dict[str, tuple[int, bytes]] = {}
    keys = list(id_keys.values())
    for start in range(0, len(keys), _IN_CHUNK):
        chunk = keys[start : start + _IN_CHUNK]
        statement = (f"SELECT entry_id, seq, entry FROM {t.entries.name} "
                     f"WHERE id_key IN ({', '.join([mark] * len(chunk))})")
        for entry_id, seq, data in conn.exec_driver_sql(statement, tuple(chunk)):
            if entry_id in id_keys:  # a digest collision with another id is not a match
                found[entry_id] = (int(seq), bytes(data))
    return found

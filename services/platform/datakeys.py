"""Per-person data keys: what the exchange writes about a person, sealed under a key that
erasure destroys (crypto-shredding).

A log keeps every copy of a record (segments not compacted yet, replicas, backups): a
tombstone does not erase what came before it until compaction runs, and the embedded broker
never compacts. So the correlator writes each person's state sealed under that person's
*data key*, and an erasure (objection, consent withdrawal, the retention purge's command,
the correlation window's sweep) **rotates** it: the state that remains is written under a
new key, then every earlier key of the person is deleted, so every earlier copy, wherever
it is, becomes unreadable at once.

Keys live in one table, ``exchange_data_keys`` (the exchange's database, which SQLite opens
with ``secure_delete``): ``subject`` is a keyed digest of the pseudonym's value
(HMAC-SHA-256 under the marker key, :mod:`services.platform.markers`, first 16 bytes: no
one without the exchange's key can tell whose row it is), ``epoch`` counts the person's
keys (1, 2, ...), ``key`` is 32 random bytes.

Sealed value (binary): ``MAGIC`` (4 bytes) | subject (16) | epoch (4, big endian) | nonce
(12) | AES-256-GCM ciphertext and tag; associated data ``"help-exchange/sealed/v1" 0x00
topic 0x00 subject epoch``, so a sealed value moved to another topic or person does not open.

Order of an erasure, each step re-driven by the record read again after a crash (the key
deletion is the commit point, before the consumer offsets):

1. the new key inserted (before any value sealed under it reaches the broker);
2. the remaining state written under it, acknowledged;
3. every key of the person with an earlier epoch deleted;
4. the offsets committed.

A kill -9 before 3 leaves the old state readable and the record is processed again (which
rotates again); after 3 nothing under an earlier epoch opens. A value whose key is gone
opens as ``None``: the person's state is then erased, never an error.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.core.keyed_digest import KeyedDigest
from services.platform.db import scrub

metadata = sa.MetaData()

data_keys = sa.Table(
    "exchange_data_keys",
    metadata,
    sa.Column("subject", sa.String(32), primary_key=True),
    sa.Column("epoch", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("key", sa.LargeBinary(32), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

MAGIC = b"HXS1"
SUBJECT_BYTES = 16
NONCE_BYTES = 12
_HEADER = len(MAGIC) + SUBJECT_BYTES + 4
_AAD = b"help-exchange/sealed/v1\x00"
_CHUNK = 500


def changelog_key(secret: bytes, key: bytes) -> bytes:
    """A keyed digest of a correlator key: what the changelog's records are keyed by."""
    return hmac.digest(secret, b"changelog\x00" + key, hashlib.sha256)[:16].hex().encode()


#: Before a changelog key (hex) given where a correlator key is expected: the state stored
#: under it (what an erasure command names: no pseudonym, :class:`~services.correlator.engine.ErasureCommand`).
DIGESTED = b"="


def changelog_keys(secret: bytes, *, remember: int = 8192) -> Callable[[bytes], bytes]:
    """:func:`changelog_key` under ``secret``, as a function of the key alone (the secret's
    HMAC set up once: :class:`~services.core.keyed_digest.KeyedDigest`); a key that is one
    already (:data:`DIGESTED`) as it is. The last ``remember`` keys' digests are kept: the
    worker asks for a person's twice a batch (its state read, then its write), and a batch
    touches far fewer persons than that."""
    digest = KeyedDigest(secret).digest
    known: dict[bytes, bytes] = {}

    def of(key: bytes) -> bytes:
        found = known.get(key)
        if found is None:
            if key.startswith(DIGESTED):
                return key[len(DIGESTED):]
            if len(known) >= remember:  # (bounded; another thread may race this: it only forgets)
                known.clear()
            found = known[key] = digest(b"changelog\x00" + key)[:16].hex().encode()
        return found

    return of


def is_sealed(raw: bytes) -> bool:
    return raw.startswith(MAGIC)


def subject_of(secret: bytes, pseudonym_value: bytes) -> bytes:
    """The keyed digest naming a person's keys (never the pseudonym itself)."""
    return hmac.digest(secret, b"datakey\x00" + pseudonym_value, hashlib.sha256)[:SUBJECT_BYTES]


def seal(key: bytes | AESGCM, topic: str, subject: bytes, epoch: int, plaintext: bytes) -> bytes:
    """``key``: the 32 bytes, or the cipher made of them (made once per key by the ring)."""
    header = MAGIC + subject + struct.pack(">I", epoch)
    nonce = os.urandom(NONCE_BYTES)
    aad = _AAD + topic.encode() + b"\x00" + header[len(MAGIC):]
    cipher = AESGCM(key) if isinstance(key, bytes) else key
    return header + nonce + cipher.encrypt(nonce, plaintext, aad)


def envelope(raw: bytes) -> tuple[bytes, int]:
    """(subject, epoch) of a sealed value."""
    if len(raw) < _HEADER + NONCE_BYTES or not is_sealed(raw):
        raise ValueError("not a sealed value")
    subject = raw[len(MAGIC):len(MAGIC) + SUBJECT_BYTES]
    (epoch,) = struct.unpack(">I", raw[len(MAGIC) + SUBJECT_BYTES:_HEADER])
    return subject, epoch


def unseal(key: bytes, topic: str, raw: bytes) -> bytes | None:
    """The plaintext, or None if ``key`` does not open ``raw`` (another key, altered, or a
    tombstone's empty key)."""
    if len(key) != 32:
        return None
    aad = _AAD + topic.encode() + b"\x00" + raw[len(MAGIC):_HEADER]
    try:
        return AESGCM(key).decrypt(raw[_HEADER:_HEADER + NONCE_BYTES], raw[_HEADER + NONCE_BYTES:], aad)
    except InvalidTag:
        return None


def load_keys(conn: sa.Connection, subjects: Iterable[bytes]) -> dict[bytes, dict[int, bytes]]:
    """Every key of these subjects, read in ``conn`` (through the driver, 500 a statement).
    A destroyed epoch may be there as a tombstone, an empty key: it opens nothing."""
    ids = sorted({s.hex() for s in subjects})
    found: dict[bytes, dict[int, bytes]] = {}
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    for i in range(0, len(ids), _CHUNK):
        chunk = ids[i:i + _CHUNK]
        rows = conn.exec_driver_sql(
            f"SELECT subject, epoch, key FROM {data_keys.name} "
            f"WHERE subject IN ({', '.join([mark] * len(chunk))})", tuple(chunk))
        for subject, epoch, key in rows:
            found.setdefault(bytes.fromhex(subject), {})[int(epoch)] = bytes(key)
    return found


def _insert_rows(conn: sa.Connection, rows: list[tuple[bytes, int, bytes]], *, if_absent: bool = False) -> int:
    """``(subject, epoch, key)`` rows in one statement, through the driver (``if_absent``: a
    row already there for the subject and epoch wins, ``ON CONFLICT DO NOTHING``); the rows
    inserted, as the driver counts them (-1: not known)."""
    dialect = conn.dialect
    stamp = data_keys.c.created_at.type.bind_processor(dialect)
    now: object = dt.datetime.now(dt.UTC)
    if stamp is not None:
        now = stamp(now)
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    result = conn.exec_driver_sql(
        f"INSERT INTO {data_keys.name} (subject, epoch, key, created_at) "
        f"VALUES ({mark}, {mark}, {mark}, {mark}){' ON CONFLICT DO NOTHING' if if_absent else ''}",
        [(s.hex(), e, k, now) for s, e, k in rows])
    return int(result.rowcount)


class KeyStore:
    """The ``exchange_data_keys`` table: read, insert, delete (each call one transaction).

    SQLite zeroes a deleted row's page (``secure_delete``) but its WAL file keeps earlier
    copies of the page until a checkpoint: :meth:`maybe_scrub` empties it (``db.scrub``) at
    most every ``scrub_every_s`` after a deletion; the correlator calls it after each
    deletion and from its sweep timer, so a destroyed key leaves the WAL within about that
    long. Not at every deletion: a truncating checkpoint waits for the other writers of the
    file (the sinks, the ledger's appends)."""

    def __init__(self, engine: sa.Engine, *, scrub_every_s: float = 60.0) -> None:
        self.engine = engine
        self.scrub_every_s = scrub_every_s
        self._deleted = False
        self._scrubbed_at = time.monotonic()

    def load(self, subjects: Iterable[bytes]) -> dict[bytes, dict[int, bytes]]:
        """Every key of these subjects (through the driver, 500 a statement)."""
        with self.engine.connect() as conn:
            return load_keys(conn, subjects)

    def insert(self, keys: Iterable[tuple[bytes, int, bytes]]) -> dict[tuple[bytes, int], bytes]:
        """The correlator's side of get-or-create: its new keys inserted where the subject
        and epoch are free, and the rows another writer made first (the key endpoint, handing
        a fund the person's first key at the same moment) read back: ``(subject, epoch) ->``
        the key in the table, which wins (``b""``: a tombstone). Empty: every key went in.

        One statement for the batch's new keys, through the driver: a batch of new persons
        inserts thousands of rows, and the ORM-free Core still processed each row's
        parameters one by one (half the cost of a person's first sight). The read-back runs
        only when the driver counts fewer rows inserted than given (or cannot count)."""
        todo = list(keys)
        if not todo:
            return {}
        with self.engine.begin() as conn:
            if _insert_rows(conn, todo, if_absent=True) == len(todo):
                return {}
            # (PostgreSQL, read committed: this statement sees the row that won, committed)
            found = load_keys(conn, {s for s, _, _ in todo})
        taken: dict[tuple[bytes, int], bytes] = {}
        for subject, epoch, key in todo:
            there = found.get(subject, {}).get(epoch)
            if there != key:
                taken[(subject, epoch)] = b"" if there is None else there
        return taken

    def current(self, subjects: Iterable[bytes]) -> dict[bytes, tuple[int, bytes]]:
        """Each subject's current key ``(epoch, key)``, made where the subject has none
        (the key endpoint, for a person the correlator has not seen yet, or whose keys an
        erasure destroyed: the epoch after its tombstone). Get-or-create: a key the
        correlator (or another request) inserted meanwhile wins, this one is dropped (``ON
        CONFLICT DO NOTHING`` on the unique (subject, epoch)), and the row in the table is
        the answer."""
        wanted = set(subjects)
        found = self.load(wanted)
        missing = [s for s in wanted if not (found.get(s) and found[s][max(found[s])])]
        for _ in range(3):  # a tombstone written meanwhile moves the epoch: ask again
            if not missing:
                break
            with self.engine.begin() as conn:
                _insert_rows(conn, [(s, max(found.get(s, {}), default=0) + 1, AESGCM.generate_key(bit_length=256))
                                    for s in missing], if_absent=True)
            found.update(self.load(missing))
            missing = [s for s in missing if not (found.get(s) and found[s][max(found[s])])]
        if missing:
            raise RuntimeError("the key table kept changing: ask again")
        out: dict[bytes, tuple[int, bytes]] = {}
        for subject, keys in found.items():
            epoch = max(keys)
            out[subject] = (epoch, keys[epoch])
        return out

    def destroy(self, below: Iterable[tuple[bytes, int]]) -> None:
        """Delete every key of each subject with an epoch below the one given, and leave the
        epoch just below as a *tombstone* (an empty key): no later key of the person may take
        an epoch already used, so a fund's signal sealed under a destroyed key is told apart
        (``cle_signal_remplacee``) from one that does not open."""
        todo = list(below)
        if not todo:
            return
        c = data_keys.c
        now = dt.datetime.now(dt.UTC)
        with self.engine.begin() as conn:
            for subject, epoch in todo:
                conn.execute(sa.delete(data_keys).where(c.subject == subject.hex(), c.epoch < epoch - 1))
                if epoch > 1:
                    conn.execute(sa.delete(data_keys).where(c.subject == subject.hex(), c.epoch == epoch - 1))
                    conn.execute(sa.insert(data_keys).values(subject=subject.hex(), epoch=epoch - 1, key=b"",
                                                             created_at=now))
        self._deleted = True
        self.maybe_scrub()

    def maybe_scrub(self) -> None:
        """Empty SQLite's WAL if keys were deleted since the last time and it is time."""
        if self._deleted and time.monotonic() - self._scrubbed_at >= self.scrub_every_s:
            self._deleted = False
            self._scrubbed_at = time.monotonic()
            scrub(self.engine)


#: Ciphers kept ready at most. Each ``AESGCM`` holds an OpenSSL context outside Python's
#: allocator (about 1.3 KB resident, more than the key and its bookkeeping together): one per
#: known key grew the worker by a quarter of a gigabyte at 200,000 persons, for about 1.5 µs
#: saved per seal. A few thousand cover the persons a batch seals more than once.
CIPHERS_MAX = 4096


class KeyRing:
    """The correlator's view of the key table: a bounded cache of the keys of persons seen
    lately, filled a batch at a time (:meth:`prefetch`), the keys made and the erasures
    decided by a batch waiting to be stored (:meth:`take_new` before the batch's writes,
    :meth:`take_retired` after them). Cleared when a partition is revoked: another worker
    may rotate its persons' keys meanwhile.

    ``max_subjects`` bounds the persons whose keys are held (about 0.7 KB each): the worker
    gives the size of its person-state cache, the persons it is likely to meet again, so its
    memory does not grow with the number of persons (a batch must touch fewer persons than
    the bound: the worker's is at least four batches' worth)."""

    def __init__(self, store: KeyStore, secret: bytes, *, max_subjects: int = 200_000) -> None:
        self.store = store
        self.secret = secret
        self.max_subjects = max_subjects
        self._keys: OrderedDict[bytes, dict[int, bytes]] = OrderedDict()
        #: subject -> the first epoch a new key may take (the highest known + 1, or more).
        self._next: dict[bytes, int] = {}
        #: subject -> the epoch to seal under now (absent: the highest known key, or a new one).
        self._current: dict[bytes, int] = {}
        self._new: list[tuple[bytes, int, bytes]] = []
        self._retired: dict[bytes, int] = {}
        self._subjects: dict[bytes, bytes] = {}
        self._keyed = KeyedDigest(secret)  # subject_of under ``secret``, set up once
        self._ciphers: dict[bytes, AESGCM] = {}
        self.lookups = 0

    def subject(self, pseudonym_value: bytes) -> bytes:
        found = self._subjects.get(pseudonym_value)
        if found is None:
            if len(self._subjects) > self.max_subjects:
                self._subjects.clear()
            # (subject_of, with the secret's HMAC set up once)
            found = self._keyed.digest(b"datakey\x00" + pseudonym_value)[:SUBJECT_BYTES]
            self._subjects[pseudonym_value] = found
        return found

    def prefetch(self, pseudonym_values: Iterable[bytes]) -> None:
        """Load the keys of these persons that are not cached (one query per 500)."""
        self.prefetch_subjects(self.subject(v) for v in pseudonym_values)

    def prefetch_subjects(self, subjects: Iterable[bytes]) -> None:
        """:meth:`prefetch`, by subject (what a sealed value's envelope names: the sweep's)."""
        missing = {s for s in subjects if s not in self._keys}
        if missing:
            self._fill(missing)

    def _fill(self, subjects: set[bytes]) -> None:
        self.lookups += 1
        found = self.store.load(subjects)
        for s in subjects:
            self._remember(s, found.get(s, {}))

    def _remember(self, subject: bytes, keys: dict[int, bytes]) -> None:
        # (A tombstone, an empty key, only says which epochs were used.)
        self._keys[subject] = {e: k for e, k in keys.items() if k}
        self._keys.move_to_end(subject)
        self._next[subject] = max(self._next.get(subject, 1), max(keys, default=0) + 1)
        # (A batch touches far fewer persons than the bound: what it made is stored, by its
        # checkpoint's first step, before the batch after the next one looks anything up.)
        while len(self._keys) > self.max_subjects:
            old, _ = self._keys.popitem(last=False)
            self._next.pop(old, None)
            self._current.pop(old, None)

    def _keys_of(self, subject: bytes) -> dict[int, bytes]:
        keys = self._keys.get(subject)
        if keys is None:  # not prefetched (a record keyed otherwise): look it up alone
            self._fill({subject})
            keys = self._keys[subject]
        return keys

    def seal(self, pseudonym_value: bytes, topic: str, plaintext: bytes) -> bytes:
        subject = self.subject(pseudonym_value)
        keys = self._keys_of(subject)
        epoch = self._current.get(subject)
        if epoch is None and keys and subject not in self._retired:
            epoch = max(keys)
        if epoch is None or epoch not in keys:  # first sight, or after an erasure: a new key
            epoch = self._next[subject]
            key = AESGCM.generate_key(bit_length=256)
            keys[epoch] = key
            self._next[subject] = epoch + 1
            self._new.append((subject, epoch, key))
        self._current[subject] = epoch
        key = keys[epoch]
        cipher = self._ciphers.get(key)
        if cipher is None:
            if len(self._ciphers) >= CIPHERS_MAX:
                self._ciphers.clear()
            cipher = self._ciphers[key] = AESGCM(key)
        return seal(cipher, topic, subject, epoch, plaintext)

    def open(self, pseudonym_value: bytes | None, topic: str, raw: bytes) -> bytes | None:
        """The plaintext; None if its key was destroyed (the value is erased) or it is not
        this person's (``pseudonym_value`` None: whoever's it is, as its envelope says)."""
        subject, epoch = envelope(raw)
        if pseudonym_value is not None and subject != self.subject(pseudonym_value):
            return None
        key = self._keys_of(subject).get(epoch)
        if key is None and subject not in self._retired and epoch >= self._next.get(subject, 1):
            self._fill({subject})  # a key another worker made since this one cached the person
            key = self._keys[subject].get(epoch)
        return None if key is None else unseal(key, topic, raw)

    def data_key(self, pseudonym_value: bytes, subject: bytes, epoch: int) -> bytes | None:
        """The person's data key ``epoch`` (a fund's sealed signal names it), or None if the
        subject is not this person's or the key is gone (destroyed by an erasure). A key
        made since the person was cached (by the key endpoint, or another worker) is looked
        up."""
        if subject != self.subject(pseudonym_value):
            return None
        key = self._keys_of(subject).get(epoch)
        if key is None and subject not in self._retired and epoch >= self._next.get(subject, 1):
            self._fill({subject})
            key = self._keys[subject].get(epoch)
        return key

    def erase(self, pseudonym_value: bytes) -> None:
        """The person's earlier values are to become unreadable: what is sealed from now on
        takes a new key, and every earlier key is destroyed once the batch's writes are on
        the broker (:meth:`take_retired`)."""
        self.erase_subject(self.subject(pseudonym_value))

    def erase_subject(self, subject: bytes) -> None:
        """:meth:`erase`, by subject (what an erasure command names)."""
        self._keys_of(subject)
        self._retired[subject] = self._next[subject]
        self._current.pop(subject, None)

    def take_new(self) -> list[tuple[bytes, int, bytes]]:
        """The keys made since the last call: to insert before anything sealed under them
        is written."""
        new, self._new = self._new, []
        return new

    def adopt(self, taken: dict[tuple[bytes, int], bytes]) -> None:
        """Keys this ring made that lost their insert (:meth:`KeyStore.insert`): the key in
        the table replaces each one, so that what is sealed again under its epoch opens with
        the key the table (and the fund it was handed to) holds; an epoch found destroyed
        meanwhile (or missing) is given up, the next seal takes a later one."""
        for (subject, epoch), key in taken.items():
            keys = self._keys.get(subject)
            if keys is None:  # forgotten since: read from the table when next needed
                continue
            lost = keys.pop(epoch, None)
            if lost is not None:
                self._ciphers.pop(lost, None)
            if key:
                keys[epoch] = key
            elif self._current.get(subject) == epoch:
                self._current.pop(subject)
            self._next[subject] = max(self._next.get(subject, 1), epoch + 1)

    def take_retired(self) -> list[tuple[bytes, int]]:
        """(subject, epoch): delete the subject's keys below the epoch, after the writes.
        The keys are forgotten here at once: nothing opens under them any more."""
        retired, self._retired = self._retired, {}
        for subject, below in retired.items():
            keys = self._keys.get(subject)
            if keys is not None:
                for epoch in [e for e in keys if e < below]:
                    self._ciphers.pop(keys.pop(epoch), None)
        return list(retired.items())

    def clear(self) -> None:
        """Forget every cached key (a revocation); keys still to store stay."""
        pending = {s for s, _, _ in self._new} | set(self._retired)
        self._ciphers.clear()
        for subject in [s for s in self._keys if s not in pending]:
            del self._keys[subject]
            self._next.pop(subject, None)
            self._current.pop(subject, None)

"""The key endpoint and the correlator making persons' first keys at the same moment, for
real (two threads, each with its own connections), on SQLite and on PostgreSQL: both sides'
get-or-create is an insert-or-ignore read back, so neither fails, and for every person the
key the endpoint handed is the one the table holds and the correlator seals under."""

from __future__ import annotations

import threading
from pathlib import Path

from services.platform.datakeys import KeyRing, KeyStore, envelope, subject_of, unseal
from services.platform.db import open_engine
from tests.support.signals import Funds

FUNDS = Funds()
SECRET = bytes(range(32))
PERSONS = 240
BATCH = 20  # persons per correlator batch


def test_the_endpoint_and_the_correlator_race_for_first_keys(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "var").mkdir(exist_ok=True)
    open_engine(db_url).dispose()  # migrated once, before the two sides start
    people = [FUNDS.pseudonym(f"race{i}").encode() for i in range(PERSONS)]
    subjects = {p: subject_of(SECRET, p) for p in people}
    endpoint = KeyStore(open_engine(db_url))
    ring = KeyRing(KeyStore(open_engine(db_url)), SECRET)
    # The correlator has looked the persons up (none has a key) and sealed their first states
    # under keys of its own: its inserts, batch after batch, now race the endpoint's.
    ring.prefetch(people)
    sealed = {p: ring.seal(p, "persons", p) for p in people}
    made = ring.take_new()
    handed: dict[bytes, tuple[int, bytes]] = {}
    taken: dict[tuple[bytes, int], bytes] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)
    first_handed = threading.Event()

    def ask() -> None:  # a fund's requests, one person at a time, from the other end
        try:
            start.wait()
            for p in reversed(people):
                handed[p] = endpoint.current([subjects[p]])[subjects[p]]
                first_handed.set()
        except BaseException as exc:
            errors.append(exc)

    def insert() -> None:  # the correlator's batches (Processor._store_new_keys)
        try:
            start.wait()
            for i in range(0, len(made), BATCH):
                if i + BATCH >= len(made):  # (the race must happen at least once, whatever the pace)
                    first_handed.wait(30)
                taken.update(ring.store.insert(made[i:i + BATCH]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask), threading.Thread(target=insert)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # The race happened both ways: keys the endpoint made first, and keys it found.
    assert 0 < len(taken) < PERSONS, len(taken)
    print(f"{len(taken)} of {PERSONS} first keys made by the endpoint first")
    ring.adopt(taken)
    # What the correlator seals again (its batch computed again) opens with the key handed.
    table = KeyStore(open_engine(db_url)).load(subjects.values())
    for p in people:
        epoch, key = handed[p]
        assert table[subjects[p]] == {epoch: key}
        value = sealed[p] if (subjects[p], epoch) not in taken else ring.seal(p, "persons", p)
        assert envelope(value) == (subjects[p], epoch) and unseal(key, "persons", value) == p
    assert ring.take_new() == []  # nothing more to insert: the keys that won are the ring's

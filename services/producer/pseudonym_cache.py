"""The fund's local cache of its own people's v2 pseudonyms (issue #20: "it may keep a local
cache"), so that a person already seen costs no request to the service.

SQLite file ``<var_dir>/pseudonym-cache-<fund>.db``: ``(key_version, nir_mac, value)``, where
``nir_mac`` = HMAC-SHA256(cache key, NIR15) — no NIR is stored. The cache key is the fund's
own (``<key_dir>/funds/<fund>/pseudonym-cache.key``, 32 bytes, created on first use); it
pseudonymises nothing that leaves the fund and is useless elsewhere. Entries are per key
version: a new version starts an empty cache.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from services.core.registry import fund_dir, write_secret
from services.core.types import Fund

#: NIRs looked up and not stored yet whose MACs are kept (a few batches' worth)
_MISSED_MAX = 100_000
_SCHEMA = ("CREATE TABLE IF NOT EXISTS pseudonyms (key_version TEXT NOT NULL, nir_mac BLOB NOT NULL, "
           "value TEXT NOT NULL, PRIMARY KEY (key_version, nir_mac)) WITHOUT ROWID")


class PseudonymCache:
    def __init__(self, path: Path, key: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._key = key
        #: The MACs of NIRs that :meth:`get_many` did not find, for :meth:`put_many` to reuse
        #: (a new person's NIR is looked up, then stored: one HMAC instead of two).
        self._missed: dict[str, bytes] = {}
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)

    @classmethod
    def for_fund(cls, var_dir: Path, key_dir: Path, fund: Fund) -> PseudonymCache:
        key_path = fund_dir(key_dir, fund) / "pseudonym-cache.key"
        if not key_path.exists():
            write_secret(key_path, secrets.token_bytes(32))
        return cls(var_dir / f"pseudonym-cache-{fund.value}.db", key_path.read_bytes())

    def _mac(self, nir: str) -> bytes:
        return hmac.digest(self._key, nir.encode("ascii"), hashlib.sha256)

    def get_many(self, version: str, nirs: Iterable[str]) -> dict[str, str]:
        macs = {self._mac(n): n for n in nirs}
        found: dict[str, str] = {}
        items = list(macs)
        for start in range(0, len(items), 500):
            chunk = items[start:start + 500]
            rows = self._db.execute(
                f"SELECT nir_mac, value FROM pseudonyms WHERE key_version = ? AND nir_mac IN "
                f"({','.join('?' * len(chunk))})", (version, *chunk)).fetchall()
            found.update((macs[bytes(mac)], value) for mac, value in rows)
        if len(self._missed) > _MISSED_MAX:  # asked and never stored (a refused batch): forget
            self._missed.clear()
        self._missed.update((n, mac) for mac, n in macs.items() if n not in found)
        return found

    def put_many(self, version: str, values: dict[str, str]) -> None:
        missed = self._missed
        self._db.execute("BEGIN")
        self._db.executemany("INSERT OR REPLACE INTO pseudonyms VALUES (?, ?, ?)",
                             [(version, missed.pop(n, None) or self._mac(n), v) for n, v in values.items()])
        self._db.execute("COMMIT")

"""The consent and audit ledger: a tamper-evident, append-only log (RFC 9162 Merkle tree).

* :mod:`services.ledger.entries` — what an entry says (who, what, when, why, about which
  pseudonym; no personal payload) and its RFC 8785 canonical bytes;
* :mod:`services.ledger.merkle` — pure RFC 9162 hashing, proofs and their verification;
* :mod:`services.ledger.store` — the log in SQL, the append API the services call;
* :mod:`services.ledger.heads` — signed tree heads and the ledger's Ed25519 key;
* :mod:`services.ledger.verify` — the full audit behind ``help-exchange audit verify``;
* :mod:`services.ledger.proofs` — proof files, checked offline;
* :mod:`services.ledger.export` — French tables and JSON Lines / CSV exports;
* :mod:`services.ledger.tables` — the ``ledger_*`` tables (``metadata`` for Alembic);
* :mod:`services.ledger.cli` — ``help-exchange audit …``.
"""

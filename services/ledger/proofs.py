"""Proof files an auditor takes away, and their offline check (no database).

Inclusion proof (``audit prove``)::

    {"format": "help-exchange-ledger/inclusion-proof/1",
     "entry": {...the entry...},            # its RFC 8785 form is the leaf data
     "leaf_index": 41, "tree_size": 1000, "leaf_hash": "<b64u>",
     "inclusion_path": ["<b64u>", ...],     # RFC 9162 §2.1.3.1, nearest sibling first
     "signed_head": {...}}                  # see services.ledger.heads

Consistency proof (``audit consistency``)::

    {"format": "help-exchange-ledger/consistency-proof/1",
     "first": {"tree_size": 10, "root_hash": "<b64u>", "signed_head": {...} | null},
     "second": {"tree_size": 20, "root_hash": "<b64u>", "signed_head": {...} | null},
     "consistency_path": ["<b64u>", ...]}   # RFC 9162 §2.1.4.1

The check recomputes the leaf from the entry with the general ``rfc8785`` package (not the
ledger's fast path), the root from the path with RFC 9162's algorithms, and the head's
Ed25519 signature with the ledger public key the auditor was given.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from services.core.signing import b64u, b64u_decode
from services.errors import InputError
from services.ledger.checkpoint import Checkpoint, NoteVerifier, open_checkpoint
from services.ledger.heads import SignedHead, parse_head
from services.ledger.merkle import leaf_hash, verify_consistency, verify_inclusion

INCLUSION_FORMAT = "help-exchange-ledger/inclusion-proof/1"
CONSISTENCY_FORMAT = "help-exchange-ledger/consistency-proof/1"
REPORT_FORMAT = "help-exchange-ledger/access-report/1"


def inclusion_document(entry: bytes, index: int, tree_size: int, path: list[bytes],
                       head: SignedHead | None, checkpoint: str | None = None) -> dict[str, Any]:
    """An inclusion proof; ``checkpoint`` (the C2SP checkpoint of ``tree_size``, with its
    cosignatures) lets standard tools check it: ``leaf_data`` is the leaf as hashed."""
    document: dict[str, Any] = {
        "format": INCLUSION_FORMAT,
        "entry": json.loads(entry),
        "leaf_data": b64u(entry),
        "leaf_index": index,
        "tree_size": tree_size,
        "leaf_hash": b64u(leaf_hash(entry)),
        "inclusion_path": [b64u(p) for p in path],
        "signed_head": head.document() if head is not None else None,
    }
    if checkpoint is not None:
        document["checkpoint"] = checkpoint
    return document


def consistency_document(first: int, second: int, first_root: bytes, second_root: bytes,
                         proof: list[bytes], first_head: SignedHead | None,
                         second_head: SignedHead | None,
                         checkpoints: tuple[str | None, str | None] = (None, None)
                         ) -> dict[str, Any]:
    document: dict[str, Any] = {
        "format": CONSISTENCY_FORMAT,
        "first": {"tree_size": first, "root_hash": b64u(first_root),
                  "signed_head": first_head.document() if first_head else None},
        "second": {"tree_size": second, "root_hash": b64u(second_root),
                   "signed_head": second_head.document() if second_head else None},
        "consistency_path": [b64u(p) for p in proof],
    }
    for side, note in zip(("first", "second"), checkpoints, strict=True):
        if note is not None:
            document[side]["checkpoint"] = note
    return document


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    lines: tuple[str, ...]


def load_proof(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}", "give a proof file") from exc
    except ValueError as exc:
        raise InputError(f"{path} is not JSON: {exc}", "give a file written by `audit prove` "
                         "or `audit consistency`") from exc
    if not isinstance(document, dict) or document.get("format") not in (INCLUSION_FORMAT,
                                                                        CONSISTENCY_FORMAT):
        raise InputError(f"{path} is not a ledger proof file",
                         "give a file written by `audit prove` or `audit consistency`")
    return document


def _hashes(values: Any) -> list[bytes]:
    if not isinstance(values, list) or not all(isinstance(v, str) and len(v) == 43
                                               for v in values):
        raise InputError("the proof path is not a list of base64url SHA-256 hashes",
                         "give an unmodified proof file")
    return [b64u_decode(v) for v in values]


def _check_head(head: SignedHead, key: Ed25519PublicKey, key_id: str | None,
                lines: list[str]) -> bool:
    if key_id is not None and head.signature.key_id != key_id:
        lines.append(f"FAIL signed head: signed by {head.signature.key_id}, the key given is "
                     f"{key_id}")
        return False
    if not head.verify(key):
        lines.append("FAIL signed head: the Ed25519 signature does not verify")
        return False
    lines.append(f"ok   signed head: {head.tree_size} entries, {head.timestamp}, "
                 f"key {head.signature.key_id}")
    return True


def check_proof(document: dict[str, Any], key: Ed25519PublicKey,
                key_id: str | None = None) -> CheckResult:
    """Check a proof file offline; ``key`` is the ledger public key the auditor trusts."""
    if document["format"] == INCLUSION_FORMAT:
        return _check_inclusion(document, key, key_id)
    return _check_consistency(document, key, key_id)


def _check_inclusion(doc: dict[str, Any], key: Ed25519PublicKey, key_id: str | None) -> CheckResult:
    lines: list[str] = []
    head = parse_head(doc.get("signed_head"))
    ok = _check_head(head, key, key_id, lines)
    try:
        data = rfc8785.dumps(doc["entry"])
        index, size = int(doc["leaf_index"]), int(doc["tree_size"])
    except (KeyError, TypeError, ValueError, rfc8785.CanonicalizationError) as exc:
        raise InputError(f"malformed inclusion proof: {exc}", "give an unmodified proof file") \
            from exc
    leaf = leaf_hash(data)
    if doc.get("leaf_hash") != b64u(leaf):
        ok = False
        lines.append("FAIL entry: its hash differs from the leaf hash in the file (entry edited)")
    if size != head.tree_size:
        ok = False
        lines.append(f"FAIL tree size: the proof is for {size} entries, the head for "
                     f"{head.tree_size}")
    if verify_inclusion(leaf, index, size, _hashes(doc.get("inclusion_path")), head.root):
        lines.append(f"ok   inclusion: entry {doc['entry'].get('entry_id')} is n° {index} "
                     f"of the {size} entries under root {head.root_hash}")
    else:
        ok = False
        lines.append("FAIL inclusion: the audit path does not lead to the signed root")
    return CheckResult(ok, tuple(lines))


def _check_consistency(doc: dict[str, Any], key: Ed25519PublicKey,
                       key_id: str | None) -> CheckResult:
    lines: list[str] = []
    ok = True
    try:
        first, second = doc["first"], doc["second"]
        m, n = int(first["tree_size"]), int(second["tree_size"])
        roots = [b64u_decode(first["root_hash"]), b64u_decode(second["root_hash"])]
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"malformed consistency proof: {exc}", "give an unmodified proof file") \
            from exc
    for side, size, root in ((first, m, roots[0]), (second, n, roots[1])):
        if side.get("signed_head") is None:
            lines.append(f"note tree of {size} entries: no signed head in the file (root only)")
            continue
        head = parse_head(side["signed_head"])
        ok = _check_head(head, key, key_id, lines) and ok
        if head.tree_size != size or head.root != root:
            ok = False
            lines.append(f"FAIL the head of {head.tree_size} entries does not match the root "
                         "in the file")
    if verify_consistency(m, n, roots[0], roots[1], _hashes(doc.get("consistency_path"))):
        lines.append(f"ok   consistency: the tree of {m} entries is a prefix of the tree of {n}")
    else:
        ok = False
        lines.append(f"FAIL consistency: the proof does not show the tree of {m} entries is a "
                     f"prefix of the tree of {n}")
    return CheckResult(ok, tuple(lines))


def check_against_checkpoints(document: dict[str, Any], log_keys: Sequence[NoteVerifier],
                              witnesses: Sequence[NoteVerifier] = (),
                              quorum: int = 0) -> CheckResult:
    """Check a proof file, or an access report, against the C2SP checkpoints it carries
    (signed by one of ``log_keys``, cosigned by ``quorum`` of ``witnesses``): what the web
    view's auditor page and `access-report` give out, whose ``signed_head`` may be null."""
    lines: list[str] = []
    if document.get("format") == REPORT_FORMAT:
        events = document.get("events")
        if not isinstance(events, list):
            raise InputError("the access report has no events list", "give an unmodified report")
        ok = True
        for number, event in enumerate(events):
            result = _inclusion_vs_checkpoint(event, log_keys, witnesses, quorum)
            ok = ok and result.ok
            lines += [f"event {number}: {line}" for line in result.lines]
        lines.append(f"{'ok  ' if ok else 'FAIL'} access report: {len(events)} event(s)")
        return CheckResult(ok, tuple(lines))
    if document.get("format") == CONSISTENCY_FORMAT:
        try:
            first = _open(document["first"]["checkpoint"], log_keys, witnesses, 0, lines)
            second = _open(document["second"]["checkpoint"], log_keys, witnesses, quorum, lines)
        except (KeyError, TypeError) as exc:
            raise InputError("the consistency proof carries no checkpoints",
                             "write it with `audit consistency` on this version") from exc
        if first is None or second is None:
            return CheckResult(False, tuple(lines))
        good = verify_consistency(first.size, second.size, first.root, second.root,
                                  _hashes(document.get("consistency_path")))
        lines.append(f"{'ok  ' if good else 'FAIL'} consistency {first.size} → {second.size}")
        return CheckResult(good, tuple(lines))
    return _inclusion_vs_checkpoint(document, log_keys, witnesses, quorum)


def _open(note: Any, log_keys: Sequence[NoteVerifier], witnesses: Sequence[NoteVerifier],
          quorum: int, lines: list[str]) -> Checkpoint | None:
    if not isinstance(note, str):
        lines.append("FAIL no checkpoint in the file")
        return None
    why = "no checkpoint key of the log was given (--log-key)"
    for key in log_keys:
        try:
            cp = open_checkpoint(note, key, witnesses={w.name: w for w in witnesses})
        except InputError as exc:
            why = exc.what
            continue
        if len(cp.cosigners) < quorum:
            lines.append(f"FAIL checkpoint of {cp.size} entries cosigned by "
                         f"{len(cp.cosigners)} witness(es), {quorum} required")
            return None
        lines.append(f"ok   checkpoint of {cp.size} entries, signed by {key.name}, cosigned by "
                     f"{', '.join(cp.cosigners) or 'no witness'}")
        return cp
    lines.append(f"FAIL checkpoint: {why}")
    return None


def _inclusion_vs_checkpoint(doc: Any, log_keys: Sequence[NoteVerifier],
                             witnesses: Sequence[NoteVerifier], quorum: int) -> CheckResult:
    lines: list[str] = []
    if not isinstance(doc, dict):
        raise InputError("an inclusion proof is a JSON object", "give an unmodified file")
    cp = _open(doc.get("checkpoint"), log_keys, witnesses, quorum, lines)
    if cp is None:
        return CheckResult(False, tuple(lines))
    try:
        data = b64u_decode(str(doc["leaf_data"]))
        index, size = int(doc["leaf_index"]), int(doc["tree_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"malformed inclusion proof: {exc}", "give an unmodified file") from exc
    ok = True
    if rfc8785.dumps(doc.get("entry")) != data:
        ok = False
        lines.append("FAIL entry: it differs from the leaf data (entry edited)")
    if size != cp.size:
        ok = False
        lines.append(f"FAIL the proof is for a tree of {size} entries, the checkpoint of "
                     f"{cp.size}")
    elif verify_inclusion(leaf_hash(data), index, size, _hashes(doc.get("inclusion_path")),
                          cp.root):
        lines.append(f"ok   inclusion of entry n° {index} in the {size} entries")
    else:
        ok = False
        lines.append("FAIL inclusion: the path does not lead to the checkpoint's root")
    return CheckResult(ok, tuple(lines))

"""Signed tree heads and the ledger's own Ed25519 key.

A signed tree head says "on <timestamp>, the ledger held <tree_size> entries whose Merkle
root is <root_hash>", signed by the ledger's key. As every signature of the project, it is
Ed25519 over the RFC 8785 form of the JSON object without its ``signature`` member
(:mod:`services.core.signing`), so an auditor checks it with any Ed25519 library::

    {"log": "help-exchange-ledger", "tree_size": 42, "root_hash": "<base64url 32 bytes>",
     "timestamp": "2026-11-23T10:00:00.000000Z",
     "signature": {"key_id": "ledger-1a2b3c4d5e6f", "alg": "Ed25519", "value": "<base64url>"}}

Keys live in ``<key_dir>/ledger/``: ``signing.key`` (PKCS#8 PEM, mode 0600, never leaves the
ledger host) and, for every key ever used, ``<key_id>.pub.json`` (``{"key_id", "alg",
"public_key"}``, the raw 32-byte key in base64url) for auditors to take away. A rotation
(:meth:`LedgerSigner.rotate`) replaces the private key and keeps every public key, so old
heads still verify.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Final, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.core import signing
from services.core.messages import Signature
from services.core.signing import b64u, b64u_decode
from services.core.types import TIMESTAMP_PATTERN, format_timestamp
from services.errors import ConfigurationError, InputError
from services.ledger.checkpoint import NoteSigner, NoteVerifier

LOG_NAME: Final = "help-exchange-ledger"
PRIVATE_KEY_FILE = "signing.key"
B64_HASH = r"^[A-Za-z0-9_-]{43}$"


class SignedHead(BaseModel):
    """A signed tree head, as stored, printed and put in proof files."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    log: Literal["help-exchange-ledger"] = LOG_NAME
    tree_size: int = Field(ge=0)
    root_hash: str = Field(pattern=B64_HASH)
    # Kept as the exact text that was signed (a re-formatted datetime would not verify).
    timestamp: str = Field(pattern=TIMESTAMP_PATTERN)
    signature: Signature

    @property
    def root(self) -> bytes:
        return b64u_decode(self.root_hash)

    def document(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def verify(self, key: Ed25519PublicKey) -> bool:
        return signing.verify(self.document(), key)


def head_document(tree_size: int, root: bytes, timestamp: dt.datetime) -> dict[str, Any]:
    return {"log": LOG_NAME, "tree_size": tree_size, "root_hash": b64u(root),
            "timestamp": format_timestamp(timestamp)}


def key_id_of(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ledger-" + hashlib.sha256(raw).hexdigest()[:12]


def public_key_document(public: Ed25519PublicKey) -> dict[str, str]:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"key_id": key_id_of(public), "alg": "Ed25519", "public_key": b64u(raw)}


class LedgerSigner:
    """Signs tree heads with the ledger's private key."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public_key = key.public_key()
        self.key_id = key_id_of(self.public_key)

    @staticmethod
    def directory(key_dir: Path) -> Path:
        return key_dir / "ledger"

    @classmethod
    def generate(cls) -> LedgerSigner:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, key_dir: Path, *, create: bool = False) -> LedgerSigner:
        """The ledger key of ``key_dir/ledger/``; with ``create``, make one if none exists."""
        folder = cls.directory(key_dir)
        path = folder / PRIVATE_KEY_FILE
        if not path.exists():
            if not create:
                raise ConfigurationError(
                    f"no ledger signing key at {path}",
                    "run `help-exchange audit head` once on the ledger host to create it",
                )
            signer = cls.generate()
            signer.save(key_dir)
            return signer
        signer = cls(signing.load_private_key(path, "the ledger key", "restore it from backup"))
        signer.export_public(key_dir)
        return signer

    def save(self, key_dir: Path) -> None:
        """Write the private key (0600, atomically) and export the public key next to it."""
        folder = self.directory(key_dir)
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        pem = self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
        tmp = folder / (PRIVATE_KEY_FILE + ".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        tmp.replace(folder / PRIVATE_KEY_FILE)
        self.export_public(key_dir)

    def export_public(self, key_dir: Path) -> Path:
        folder = self.directory(key_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.key_id}.pub.json"
        if not path.exists():
            path.write_text(json.dumps(public_key_document(self.public_key), indent=2) + "\n",
                            encoding="utf-8")
            os.chmod(path, 0o644)
        return path

    @classmethod
    def rotate(cls, key_dir: Path) -> tuple[str | None, LedgerSigner]:
        """Replace the private key by a new one; old public keys stay for old heads.

        Returns the old key id (None if there was no key) and the new signer. The caller
        records the rotation in the ledger (action ``rotation_cle``)."""
        old: str | None = None
        if (cls.directory(key_dir) / PRIVATE_KEY_FILE).exists():
            old = cls.load(key_dir).key_id
        signer = cls.generate()
        signer.save(key_dir)
        return old, signer

    def note_signer(self, origin: str) -> NoteSigner:
        """The same key as a signed-note key named ``origin`` (C2SP checkpoints)."""
        return NoteSigner(origin, self._key)

    def export_vkey(self, key_dir: Path, origin: str) -> Path:
        """Write ``<key_id>.vkey``, the checkpoint verifier key auditors take away."""
        folder = self.directory(key_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.key_id}.vkey"
        text = self.note_signer(origin).verifier.vkey + "\n"
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            os.chmod(path, 0o644)
        return path

    def sign_head(self, tree_size: int, root: bytes, timestamp: dt.datetime) -> SignedHead:
        document = signing.sign(head_document(tree_size, root, timestamp), self._key, self.key_id)
        return SignedHead.model_validate(document)


def load_public_key_file(path: Path) -> tuple[str | None, Ed25519PublicKey]:
    """A public key from a ``.pub.json`` export (with its key id) or a PEM file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read the public key {path}: {exc.strerror}",
                         "give the <key_id>.pub.json file exported with the ledger") from exc
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(data)
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError("not an Ed25519 public key")
            return None, key
        document = json.loads(data)
        key = Ed25519PublicKey.from_public_bytes(b64u_decode(document["public_key"]))
        key_id = document.get("key_id")
        return (str(key_id) if key_id else None), key
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path} is not an Ed25519 public key: {exc}",
                         "give the <key_id>.pub.json file exported with the ledger") from exc


def known_public_keys(key_dir: Path) -> dict[str, Ed25519PublicKey]:
    """Every ledger public key exported under ``key_dir/ledger/``, by key id."""
    keys: dict[str, Ed25519PublicKey] = {}
    folder = LedgerSigner.directory(key_dir)
    if folder.is_dir():
        for path in sorted(folder.glob("*.pub.json")):
            key_id, key = load_public_key_file(path)
            keys[key_id or path.name.removesuffix(".pub.json")] = key
    return keys


def parse_head(document: Any) -> SignedHead:
    try:
        return SignedHead.model_validate(document)
    except ValidationError as exc:
        raise InputError(f"not a signed tree head: {exc.errors()[0]['msg']}",
                         "give a head printed by `help-exchange audit head`") from exc



def known_vkeys(key_dir: Path, origin: str) -> list[NoteVerifier]:
    """Every checkpoint verifier key of the log ``origin`` under ``key_dir/ledger/``."""
    folder = LedgerSigner.directory(key_dir)
    found: list[NoteVerifier] = []
    if folder.is_dir():
        for path in sorted(folder.glob("*.vkey")):
            verifier = NoteVerifier.from_vkey(path.read_text(encoding="utf-8"))
            if verifier.name == origin:
                found.append(verifier)
    return found

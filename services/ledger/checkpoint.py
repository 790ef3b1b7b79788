"""Checkpoints in the C2SP formats, so that any auditor checks them with existing code.

Three public formats (https://c2sp.org), the ones Go's checksum database and Certificate
Transparency's tiled logs use, and that ``golang.org/x/mod/sumdb/note`` reads:

* **signed note** (C2SP signed-note): a text ending in ``\\n``, a blank line, then one
  signature line per signer::

      <text>\\n
      \\n
      — <key name> <base64(key id (4 bytes) || signature)>\\n

  The key id of an Ed25519 key is the first 4 bytes of
  SHA-256(key name || 0x0A || 0x01 || 32-byte public key); the signature is Ed25519 over
  the text (up to and including its last newline). A verifier key is written
  ``<name>+<key id, 8 hex digits>+<base64(0x01 || public key)>`` (a "vkey").
* **checkpoint** (C2SP tlog-checkpoint): the note text is three lines, the log's
  *origin* (a unique name such as ``help-exchange.secu.example/ledger/35``), the tree size
  in decimal and the RFC 9162 root in standard base64::

      help-exchange.secu.example/ledger/35
      1000
      Zm9vYmFy...=

* **cosignature** (C2SP tlog-cosignature, ``cosignature/v1``): a witness's signature line
  on a checkpoint. Its key id is SHA-256(name || 0x0A || 0x04 || public key)[:4] and its
  signature is ``key id || timestamp (8 bytes, big-endian, Unix seconds) || Ed25519`` over
  ``"cosignature/v1\\ntime <timestamp>\\n" || checkpoint text``. It says "at that time, the
  witness had checked this checkpoint consistent with every one it had cosigned before".

Everything here is pure (no SQL): :mod:`services.ledger.store` signs and stores
checkpoints, :mod:`services.ledger.witness` cosigns, :mod:`services.ledger.tiles` serves them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
import time as _time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from services.errors import InputError

ALG_ED25519: Final = 0x01
ALG_COSIGNATURE_V1: Final = 0x04
SIGNATURE_PREFIX: Final = "\u2014 "  # an em dash and a space
_MAX_SIGNATURES: Final = 100
_MAX_NOTE_BYTES: Final = 1 << 16
HINT_NOTE: Final = ("give the checkpoint as served at /checkpoint or written by "
                    "`help-exchange audit checkpoint`, unchanged")


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(name: str, public: Ed25519PublicKey, alg: int = ALG_ED25519) -> bytes:
    """The 4-byte key id of a signed-note key (C2SP signed-note)."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + _raw(public)).digest()[:4]


def valid_key_name(name: str) -> bool:
    """A key name is non-empty UTF-8 with no space, no ``+`` and no control character."""
    return bool(name) and not any(c.isspace() or c == "+" or ord(c) < 0x20 for c in name)


def vkey(name: str, public: Ed25519PublicKey, alg: int = ALG_ED25519) -> str:
    """The verifier key text ``<name>+<key id hex>+<base64(alg || key)>``."""
    return (f"{name}+{key_id(name, public, alg).hex()}+"
            f"{base64.b64encode(bytes([alg]) + _raw(public)).decode()}")


@dataclass(frozen=True)
class NoteVerifier:
    """A known signer: its name, 4-byte key id, algorithm and public key."""

    name: str
    key_hash: bytes
    alg: int
    public_key: Ed25519PublicKey

    @classmethod
    def from_vkey(cls, text: str) -> NoteVerifier:
        """Read a vkey (``name+hash+base64``); algorithm 0x01 (Ed25519) or 0x04
        (cosignature/v1)."""
        parts = text.strip().split("+", 2)
        why = None
        if len(parts) != 3 or not valid_key_name(parts[0]) or len(parts[1]) != 8:
            why = "it is not name+keyid+base64"
        else:
            try:
                data = base64.b64decode(parts[2], validate=True)
                hash_ = bytes.fromhex(parts[1])
            except (binascii.Error, ValueError):
                data, hash_ = b"", b""
            if len(data) != 33 or data[0] not in (ALG_ED25519, ALG_COSIGNATURE_V1):
                why = "its key is not an Ed25519 (0x01) or cosignature/v1 (0x04) key"
            else:
                public = Ed25519PublicKey.from_public_bytes(data[1:])
                if key_id(parts[0], public, data[0]) != hash_:
                    why = "its key id does not match its name and key"
                else:
                    return cls(parts[0], hash_, data[0], public)
        raise InputError(f"verifier key {text.strip()[:60]!r} is unusable: {why}",
                         "give the .vkey file exported with the log or the witness")

    @property
    def vkey(self) -> str:
        return vkey(self.name, self.public_key, self.alg)


class NoteSigner:
    """Signs notes (alg 0x01) or cosigns checkpoints (alg 0x04) under one key name."""

    def __init__(self, name: str, key: Ed25519PrivateKey, alg: int = ALG_ED25519) -> None:
        if not valid_key_name(name):
            raise InputError(f"{name!r} is not a signed-note key name",
                             "use a name without spaces or '+', such as an origin")
        self.name, self.alg, self._key = name, alg, key
        self.public_key = key.public_key()
        self.key_hash = key_id(name, self.public_key, alg)

    @property
    def verifier(self) -> NoteVerifier:
        return NoteVerifier(self.name, self.key_hash, self.alg, self.public_key)

    def signature_line(self, text: str, timestamp: int | None = None) -> str:
        """The signature line of ``text`` (a note's text, ending with a newline)."""
        if self.alg == ALG_COSIGNATURE_V1:
            stamp = int(_time.time()) if timestamp is None else timestamp
            sig = self._key.sign(cosigned_message(text, stamp))
            blob = self.key_hash + struct.pack(">Q", stamp) + sig
        else:
            blob = self.key_hash + self._key.sign(text.encode())
        return f"{SIGNATURE_PREFIX}{self.name} {base64.b64encode(blob).decode()}\n"


def cosigned_message(text: str, timestamp: int) -> bytes:
    """What a cosignature/v1 signs."""
    return f"cosignature/v1\ntime {timestamp}\n{text}".encode()


@dataclass(frozen=True)
class SignatureLine:
    name: str
    key_hash: bytes
    blob: bytes  # after the key id
    line: str

    @property
    def timestamp(self) -> int | None:
        """A cosignature's timestamp (None for other signatures)."""
        return struct.unpack(">Q", self.blob[:8])[0] if len(self.blob) == 72 else None


@dataclass(frozen=True)
class Note:
    text: str
    signatures: tuple[SignatureLine, ...]

    def verified_by(self, verifier: NoteVerifier) -> SignatureLine | None:
        """The signature line of ``verifier`` if it is present and valid, else None."""
        for sig in self.signatures:
            if sig.name != verifier.name or sig.key_hash != verifier.key_hash:
                continue
            try:
                if verifier.alg == ALG_COSIGNATURE_V1:
                    if len(sig.blob) != 72:
                        return None
                    stamp = struct.unpack(">Q", sig.blob[:8])[0]
                    verifier.public_key.verify(sig.blob[8:], cosigned_message(self.text, stamp))
                else:
                    verifier.public_key.verify(sig.blob, self.text.encode())
            except InvalidSignature:
                return None
            return sig
        return None

    def render(self) -> str:
        return self.text + "\n" + "".join(s.line for s in self.signatures)

    def with_signatures(self, lines: Iterable[str]) -> Note:
        """This note with more signature lines (a line already present is not repeated)."""
        extra = parse_note(self.text + "\n" + "".join(lines)).signatures
        known = {s.line for s in self.signatures}
        return Note(self.text, self.signatures + tuple(s for s in extra if s.line not in known))


def parse_note(data: str | bytes) -> Note:
    """Parse a signed note (signatures are not checked here: :meth:`Note.verified_by`)."""
    if isinstance(data, bytes):
        if len(data) > _MAX_NOTE_BYTES:
            raise InputError("the note is larger than 64 KiB", HINT_NOTE)
        try:
            data = data.decode()
        except UnicodeDecodeError:
            raise InputError("the note is not UTF-8", HINT_NOTE) from None
    if any(ord(c) < 0x20 and c != "\n" for c in data):
        raise InputError("the note holds control characters", HINT_NOTE)
    split = data.rfind("\n\n")
    if split < 0 or not data.endswith("\n"):
        raise InputError("the note has no signature block (a blank line, then "
                         "'— name signature' lines)", HINT_NOTE)
    text, block = data[: split + 1], data[split + 2 :]
    sigs: list[SignatureLine] = []
    for line in block.splitlines():
        if not line.startswith(SIGNATURE_PREFIX):
            raise InputError(f"the note's signature line {line[:40]!r} does not start "
                             "with '— '", HINT_NOTE)
        name, _, b64 = line[len(SIGNATURE_PREFIX):].partition(" ")
        try:
            blob = base64.b64decode(b64, validate=True)
        except binascii.Error:
            blob = b""
        if not valid_key_name(name) or len(blob) < 5:
            raise InputError(f"the note's signature line {line[:40]!r} is malformed", HINT_NOTE)
        sigs.append(SignatureLine(name, blob[:4], blob[4:], line + "\n"))
        if len(sigs) > _MAX_SIGNATURES:
            raise InputError("the note has more than 100 signatures", HINT_NOTE)
    if not sigs:
        raise InputError("the note carries no signature", HINT_NOTE)
    return Note(text, tuple(sigs))


@dataclass(frozen=True)
class Checkpoint:
    """A parsed, signature-checked checkpoint."""

    origin: str
    size: int
    root: bytes
    note: Note
    cosigners: tuple[str, ...] = field(default=())

    @property
    def text(self) -> str:
        return self.note.text

    def render(self) -> str:
        return self.note.render()


def checkpoint_text(origin: str, size: int, root: bytes) -> str:
    """The body of a checkpoint (C2SP tlog-checkpoint, no extension lines)."""
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"


def sign_checkpoint(signer: NoteSigner, origin: str, size: int, root: bytes) -> str:
    """A signed checkpoint note."""
    text = checkpoint_text(origin, size, root)
    return text + "\n" + signer.signature_line(text)


def parse_checkpoint_text(text: str) -> tuple[str, int, bytes]:
    """(origin, size, root) of a checkpoint's text."""
    lines = text.split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise InputError("the note is not a checkpoint (origin, size and root lines)",
                         HINT_NOTE)
    origin, size_text, root_text = lines[0], lines[1], lines[2]
    try:
        root = base64.b64decode(root_text, validate=True)
    except binascii.Error:
        root = b""
    if (not origin or not size_text.isdigit() or (size_text != "0" and size_text[0] == "0")
            or len(root) != 32):
        raise InputError("the note is not a checkpoint: line 2 must be a decimal size and "
                         "line 3 a base64 SHA-256 root", HINT_NOTE)
    return origin, int(size_text), root


def open_checkpoint(data: str | bytes, log: NoteVerifier, *,
                    witnesses: Mapping[str, NoteVerifier] | None = None,
                    origin: str | None = None) -> Checkpoint:
    """Parse a checkpoint and check the log's signature (and, with ``witnesses``, which of
    them cosigned it: :attr:`Checkpoint.cosigners`). Refuses, saying why, a note signed
    by an unknown key, a bad signature, or another log's origin."""
    note = parse_note(data)
    found_origin, size, root = parse_checkpoint_text(note.text)
    expected = origin or log.name
    if found_origin != expected:
        raise InputError(f"the checkpoint is for the log {found_origin!r}, not {expected!r}",
                         "compare it only with checkpoints of the same log")
    if note.verified_by(log) is None:
        named = [s for s in note.signatures if s.name == log.name]
        if any(s.key_hash == log.key_hash for s in named):
            raise InputError(f"the checkpoint's signature by {log.name} is bad: the note "
                             "was altered or not signed with the log's key", HINT_NOTE)
        raise InputError(f"the checkpoint carries no signature by the log key {log.name}+"
                         f"{log.key_hash.hex()} (unknown key)",
                         "ask the log for its current key (.vkey), or check you pinned "
                         "the right log")
    cosigners = tuple(sorted(name for name, w in (witnesses or {}).items()
                             if note.verified_by(w) is not None))
    return Checkpoint(found_origin, size, root, note, cosigners)

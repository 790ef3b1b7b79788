"""Witnesses: each fund cosigns the ledger's checkpoints with its own key, only after
checking each new one is consistent with the last it cosigned (C2SP tlog-witness,
tlog-cosignature). A fork (two different trees shown to different parties) then needs the
witnesses' collusion: an honest witness shown the fork refuses it.

The witness (``help-exchange witness serve --fund caf``) answers the C2SP tlog-witness
``POST /add-checkpoint`` request, whose body is::

    old <size the exchange believes the witness has>
    <consistency proof hash, base64>        one line per hash (RFC 9162 PROOF(old, new))
    <blank line>
    <the new checkpoint, a signed note>

with, as the spec says:

* **200** and the cosignature line (``— <witness> <base64>``, tlog-cosignature/v1);
* **409 Conflict** and the size it has (``text/x.tlog.size``) when ``old`` is not that size
  (the exchange retries from there);
* **422** when the proof does not show the new tree extends the old one: a fork or a
  rewrite, refused and kept in the witness's refusals;
* **403** when the log's signature does not verify, **404** for an unknown log, **400**
  for a malformed request or a checkpoint smaller than the one cosigned (a rollback).

State, per fund, under ``<key_dir>/witness/<fund>/``: ``signing.key`` (PKCS#8 PEM, 0600),
``<name>.vkey`` (the cosignature key auditors pin), ``logs.json`` (the logs it witnesses:
origin → the log's vkey) and ``latest/<sha256(origin)>`` (the last checkpoint it cosigned).
The exchange side, :func:`witness_round`, sends the current checkpoint to every witness
and keeps their cosignatures with the checkpoint.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import http.server
import json
import os
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select

from services.errors import ConfigurationError, InputError
from services.ledger import tables as t
from services.ledger.checkpoint import (
    ALG_COSIGNATURE_V1,
    Checkpoint,
    NoteSigner,
    NoteVerifier,
    open_checkpoint,
    parse_note,
)
from services.ledger.merkle import verify_consistency
from services.ledger.store import Ledger

FUNDS: Final = ("urssaf", "cpam", "caf", "carsat")
_MAX_REQUEST: Final = 1 << 16


def witness_name(fund: str) -> str:
    """The key name of ``fund``'s witness."""
    return f"help-exchange.{fund}/witness"


@dataclass(frozen=True)
class Answer:
    """An HTTP answer of the witness: status, content type and body."""

    status: int
    body: str
    content_type: str = "text/plain; charset=utf-8"


class Witness:
    """One fund's witness: its key, the logs it follows and the last checkpoint of each."""

    def __init__(self, folder: Path, fund: str, key: Ed25519PrivateKey) -> None:
        self.folder, self.fund = folder, fund
        self.signer = NoteSigner(witness_name(fund), key, ALG_COSIGNATURE_V1)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ set-up
    @staticmethod
    def directory(key_dir: Path, fund: str) -> Path:
        if fund not in FUNDS:
            raise InputError(f"{fund!r} is not a fund", f"give one of {', '.join(FUNDS)}")
        return key_dir / "witness" / fund

    @classmethod
    def init(cls, key_dir: Path, fund: str, log_vkey: str) -> Witness:
        """Create the fund's witness key (if missing) and follow the log of ``log_vkey``."""
        folder = cls.directory(key_dir, fund)
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        path = folder / "signing.key"
        if not path.exists():
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(pem)
        witness = cls.load(key_dir, fund)
        log = NoteVerifier.from_vkey(log_vkey)
        logs = witness.logs()
        logs[log.name] = log.vkey
        (folder / "logs.json").write_text(json.dumps(logs, indent=2) + "\n", encoding="utf-8")
        (folder / f"{fund}.vkey").write_text(witness.signer.verifier.vkey + "\n",
                                             encoding="utf-8")
        return witness

    @classmethod
    def load(cls, key_dir: Path, fund: str) -> Witness:
        folder = cls.directory(key_dir, fund)
        try:
            key = serialization.load_pem_private_key((folder / "signing.key").read_bytes(),
                                                     password=None)
        except FileNotFoundError:
            raise ConfigurationError(f"no witness key for {fund} in {folder}",
                                     f"run `help-exchange witness init --fund {fund} "
                                     "--log-key LOG.vkey` at the fund") from None
        except ValueError as exc:
            raise ConfigurationError(f"the witness key of {fund} is unreadable: {exc}",
                                     "restore it from backup") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigurationError(f"the witness key of {fund} is not Ed25519",
                                     "restore it from backup")
        return cls(folder, fund, key)

    def logs(self) -> dict[str, str]:
        path = self.folder / "logs.json"
        if not path.exists():
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
        return {str(k): str(v) for k, v in data.items()}

    def _latest_path(self, origin: str) -> Path:
        return self.folder / "latest" / hashlib.sha256(origin.encode()).hexdigest()

    def latest(self, origin: str, log: NoteVerifier) -> Checkpoint | None:
        """The last checkpoint of ``origin`` this witness cosigned."""
        path = self._latest_path(origin)
        if not path.exists():
            return None
        return open_checkpoint(path.read_text(encoding="utf-8"), log)

    # ------------------------------------------------------------------ the protocol
    def add_checkpoint(self, body: bytes, *, timestamp: int | None = None) -> Answer:
        """Answer one tlog-witness add-checkpoint request."""
        if len(body) > _MAX_REQUEST:
            return Answer(400, "request larger than 64 KiB\n")
        try:
            text = body.decode()
        except UnicodeDecodeError:
            return Answer(400, "request is not UTF-8\n")
        head, sep, note_text = text.partition("\n\n")
        lines = head.split("\n")
        if not sep or not lines[0].startswith("old ") or not lines[0][4:].isdigit():
            return Answer(400, "malformed request: expected 'old N', proof lines, a blank "
                               "line, then the checkpoint\n")
        old = int(lines[0][4:])
        try:
            proof = [base64.b64decode(line, validate=True) for line in lines[1:]]
        except binascii.Error:
            return Answer(400, "malformed request: a proof line is not base64\n")
        if any(len(p) != 32 for p in proof) or len(proof) > 63:
            return Answer(400, "malformed request: proof hashes are 32 bytes, 63 at most\n")
        try:
            origin = parse_note(note_text).text.split("\n", 1)[0]
        except InputError as exc:
            return Answer(400, f"malformed checkpoint: {exc.what}\n")
        vkey = self.logs().get(origin)
        if vkey is None:
            return Answer(404, f"unknown log {origin!r}\n")
        log = NoteVerifier.from_vkey(vkey)
        try:
            new = open_checkpoint(note_text, log)
        except InputError as exc:
            return Answer(403, f"checkpoint refused: {exc.what}\n")
        with self._lock:
            latest = self.latest(origin, log)
            size = 0 if latest is None else latest.size
            if old != size:
                return Answer(409, f"{size}\n", "text/x.tlog.size")
            if new.size < size:
                return Answer(400, f"rollback: the checkpoint has {new.size} entries, this "
                                   f"witness already cosigned {size}\n")
            old_root = latest.root if latest is not None else b""
            if latest is not None and not verify_consistency(size, new.size, old_root,
                                                             new.root, proof):
                self._refused(new, size)
                return Answer(422, f"inconsistent: the checkpoint of {new.size} entries does "
                                   f"not extend the one of {size} this witness cosigned "
                                   "(fork or rewrite)\n")
            if latest is None and proof:
                return Answer(422, "a first checkpoint takes no proof\n")
            line = self.signer.signature_line(new.text, timestamp)
            path = self._latest_path(origin)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(new.render(), encoding="utf-8")
            tmp.replace(path)
        return Answer(200, line)

    def _refused(self, checkpoint: Checkpoint, size: int) -> None:
        """Keep a refused checkpoint: evidence of a fork, signed by the log."""
        folder = self.folder / "refused"
        folder.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256(checkpoint.text.encode()).hexdigest()[:16]
        (folder / f"{checkpoint.size}-{name}").write_text(checkpoint.render(), encoding="utf-8")


def add_checkpoint_request(old: int, proof: list[bytes], checkpoint: str) -> bytes:
    """The body of a tlog-witness add-checkpoint request."""
    lines = [f"old {old}", *(base64.b64encode(p).decode() for p in proof)]
    return ("\n".join(lines) + "\n\n" + checkpoint).encode()


# ---------------------------------------------------------------------------- HTTP
class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "help-exchange-witness"
    witness: Witness

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != "/add-checkpoint":
            self._send(Answer(404, "only POST /add-checkpoint\n"))
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= _MAX_REQUEST:
            self._send(Answer(400, "a Content-Length up to 64 KiB is required\n"))
            return
        self._send(self.witness.add_checkpoint(self.rfile.read(length)))

    def do_GET(self) -> None:
        self._send(Answer(405, "only POST /add-checkpoint\n"))

    def _send(self, answer: Answer) -> None:
        data = answer.body.encode()
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


def witness_server(witness: Witness, host: str, port: int) -> http.server.ThreadingHTTPServer:
    handler = type("WitnessHandler", (_Handler,), {"witness": witness})
    server = http.server.ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


# ---------------------------------------------------------------------------- exchange side
@dataclass(frozen=True)
class WitnessConfig:
    name: str
    url: str
    vkey: str


def load_witnesses(path: Path) -> list[WitnessConfig]:
    """The witnesses file: a JSON list of {"name", "url", "vkey"}."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        out = [WitnessConfig(str(w["name"]), str(w["url"]), str(w["vkey"])) for w in data]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigurationError(f"the witnesses file {path} is unusable: {exc}",
                                 'write a JSON list of {"name", "url", "vkey"}') from exc
    for w in out:
        if NoteVerifier.from_vkey(w.vkey).name != w.name:
            raise ConfigurationError(f"witness {w.name}: its vkey names another key",
                                     "copy the witness's .vkey file unchanged")
    return out


@dataclass(frozen=True)
class RoundResult:
    witness: str
    ok: bool
    detail: str


def witness_round(ledger: Ledger, witnesses: list[WitnessConfig],
                  timeout: float = 10.0) -> list[RoundResult]:
    """Send the ledger's current checkpoint to every witness, keep each valid cosignature
    with it; a witness that refuses says why (the result, and nothing stored)."""
    note = ledger.checkpoint()
    new = parse_note(note)
    size = int(new.text.split("\n")[1])
    results: list[RoundResult] = []
    for w in witnesses:
        verifier = NoteVerifier.from_vkey(w.vkey)
        old = _last_cosigned(ledger, w.name)
        answer = None
        for _ in range(2):  # a 409 tells the size the witness has: retry once from there
            proof = ledger.consistency(old, size)[2] if 0 < old <= size else []
            answer = _post(w.url, add_checkpoint_request(old, proof, new.render()), timeout)
            if answer.status != 409 or not answer.body.strip().isdigit():
                break
            old = int(answer.body.strip())
            if old > size:
                break
        assert answer is not None
        if answer.status != 200:
            results.append(RoundResult(w.name, False, f"HTTP {answer.status}: "
                                                      f"{answer.body.strip()}"))
            continue
        line = answer.body if answer.body.endswith("\n") else answer.body + "\n"
        cosigned = new.with_signatures([line])
        if cosigned.verified_by(verifier) is None:
            results.append(RoundResult(w.name, False, "its cosignature does not verify"))
            continue
        ledger.add_cosignature(size, w.name, line)
        results.append(RoundResult(w.name, True, f"cosigned {size} entries"))
    return results


def _last_cosigned(ledger: Ledger, name: str) -> int:
    c = t.cosignatures.c
    with ledger.engine.connect() as conn:
        size = conn.execute(select(func.max(c.tree_size)).where(c.witness == name)).scalar()
    return int(size or 0)


def _post(url: str, body: bytes, timeout: float) -> Answer:
    request = urllib.request.Request(url.rstrip("/") + "/add-checkpoint", data=body,
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Answer(response.status, response.read(_MAX_REQUEST).decode())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, exc.read(_MAX_REQUEST).decode(errors="replace"))
    except (urllib.error.URLError, OSError) as exc:
        return Answer(599, f"unreachable: {exc}")

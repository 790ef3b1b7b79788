"""Generate the test vectors of the producer contract (``schemas/vectors/*.json``).

Run ``python -m tests.contract.make_vectors`` (writes the files) or ``... --check`` (exit 1 if
a file differs from what the code gives now). Every value comes from the reference
implementation — :mod:`services.producer.nir`, :mod:`.pseudonym`, :mod:`.seal`,
:class:`~services.producer.sdk.SignalBuilder`, :mod:`services.core.signing`, the correlator's
partitioner and :class:`~services.correlator.engine.Engine` — run on fixed test keys, a fixed
clock and fixed nonces. ``tests/contract/test_vectors.py`` checks that the code still
reproduces each vector and that an independent implementation written from
``docs/contract.md`` does too; ``docs/contract.md`` describes the algorithms.

The keys here are test keys, derived from public labels: never use them for real data.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.core.codec import append_signature, canonical
from services.core.messages import SCHEMA_VERSION, sealed_digest
from services.core.registry import Registry, save_registry
from services.core.signing import b64u, sign, signing_input
from services.core.types import Fund
from services.correlator.checks import MAX_MESSAGE_BYTES
from services.correlator.engine import Engine, Record
from services.errors import Rejected
from services.platform.partitioning import murmur2, partition_for
from services.platform.settings import Settings, load_settings
from services.platform.topics import CONSENTS_TOPIC, CONTRACT_PARTITIONS, DEADLETTER_TOPIC, signal_topic
from services.producer import nir as nirs
from services.producer.keys import exchange_dir, fund_dir, registry_path
from services.producer.pseudonym import PREFIX, pseudonym
from services.producer.sdk import SignalBuilder, SignalInput
from services.producer.seal import Sealer, SignalIds, open_sealed, token

REPO = Path(__file__).resolve().parents[2]
VECTORS = REPO / "schemas" / "vectors"
PARTITIONS = CONTRACT_PARTITIONS  # schemas/asyncapi.yaml

FUND = Fund.CAF
EXCHANGE_KEY_ID = "xk-20261123-3c4d"
OLD_EXCHANGE_KEY_ID = "xk-20260101-aaaa"      # active, older: accepted, not the current one
RETIRED_EXCHANGE_KEY_ID = "xk-20261201-dead"  # newest, but retired: never the current one
SIGNING_KEY_ID = "caf-sig-20261123-e5f6"
RETIRED_SIGNING_KEY_ID = "caf-sig-20250601-a0a0"  # caf's previous signing key, retired
ID_ROOT_KEY_ID = "caf-seal-20261123-ab12"     # the fund's first sealing key (id_root)
SEALING_KEY_ID = "caf-seal-20261201-cd34"     # its current sealing key, after a rotation
TODAY = dt.date(2026, 11, 23)                 # the fund's day (Europe/Paris)
NOW = dt.datetime(2026, 11, 23, 10, 15, 30, 123456, tzinfo=dt.UTC)


def _secret(label: str) -> bytes:
    """A 32-byte test key derived from a public label (so anyone can re-derive it)."""
    return hashlib.sha256(f"help-exchange test vectors v1: {label}".encode()).digest()


EXCHANGE_KEY = _secret("exchange key")
OLD_EXCHANGE_KEY = _secret("old exchange key")
SIGNING_SEED = _secret("caf signing seed")
RETIRED_SIGNING_SEED = _secret("caf retired signing seed")
ID_ROOT_KEY = _secret("caf sealing key 1")
SEALING_KEY = _secret("caf sealing key 2")


def nonce_for(n: int) -> bytes:
    """The fixed nonce of the n-th seal of the vectors (random in real use)."""
    return _secret(f"nonce {n}")[:12]


def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(SIGNING_SEED)


def retired_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(RETIRED_SIGNING_SEED)


def _pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def registry_content() -> dict[str, Any]:
    """The registry of the vectors as registry.json holds it (written out here, not dumped
    from the model, so that the vectors keep the documented v1 form): caf's signing key,
    caf's previous signing key (retired), three exchange keys."""
    return {
        "version": 1,
        "funds": {FUND.value: {"signing_keys": [
            {"key_id": RETIRED_SIGNING_KEY_ID, "public_key": b64u(_raw_public(retired_signing_key())),
             "status": "retired", "retired_at": "2026-11-23T09:00:00.000000Z"},
            {"key_id": SIGNING_KEY_ID, "public_key": b64u(_raw_public(signing_key())), "status": "active"}]}},
        "exchange_keys": [
            {"key_id": OLD_EXCHANGE_KEY_ID, "status": "active", "created_at": "2026-01-01T09:00:00.000000Z"},
            {"key_id": EXCHANGE_KEY_ID, "status": "active", "created_at": "2026-11-23T10:00:00.000000Z"},
            {"key_id": RETIRED_EXCHANGE_KEY_ID, "status": "retired", "created_at": "2026-12-01T08:00:00.000000Z"},
        ],
    }


def registry() -> Registry:
    return Registry.model_validate(registry_content())


def write_key_dir(key_dir: Path, reg: Registry) -> None:
    """The fund's key folder exactly as docs/contract.md lays it out (files, names, bytes)."""
    save_registry(reg, registry_path(key_dir))
    exchange_dir(key_dir).mkdir(parents=True, exist_ok=True)
    (exchange_dir(key_dir) / f"{EXCHANGE_KEY_ID}.key").write_bytes(EXCHANGE_KEY)
    (exchange_dir(key_dir) / f"{OLD_EXCHANGE_KEY_ID}.key").write_bytes(OLD_EXCHANGE_KEY)
    folder = fund_dir(key_dir, FUND)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{SIGNING_KEY_ID}.pem").write_bytes(_pem(signing_key()))
    (folder / f"{ID_ROOT_KEY_ID}.key").write_bytes(ID_ROOT_KEY)
    (folder / f"{SEALING_KEY_ID}.key").write_bytes(SEALING_KEY)
    (folder / "current.json").write_text(json.dumps(
        {"signing": SIGNING_KEY_ID, "sealing": SEALING_KEY_ID, "id_root": ID_ROOT_KEY_ID}) + "\n")


def fixed_nonces() -> Callable[[int], bytes]:
    counter = iter(range(1_000_000))
    return lambda n: nonce_for(next(counter))[:n]


def builder(settings: Settings) -> SignalBuilder:
    """The SDK's builder for caf, its seals with the vectors' fixed nonces (0, 1, 2…)."""
    b = SignalBuilder(settings, FUND)
    b._sealer = Sealer(FUND, SEALING_KEY_ID, SEALING_KEY, nonces=fixed_nonces())
    return b


def _hex(data: bytes) -> str:
    return data.hex()


# ---------------------------------------------------------------------------------- files
def keys_file() -> dict[str, Any]:
    key = signing_key()
    return {
        "description": "The test keys every other vector file uses (derived as SHA-256 of "
                       "'help-exchange test vectors v1: <label>'; never use them for real data), "
                       "and the files of a fund's key folder (<key_dir>) they make. Binary values "
                       "in hex; key files hold the raw bytes (32, no newline), the signing key "
                       "file the PKCS#8 PEM text.",
        "fund": FUND.value,
        "exchange_keys": [
            {"key_id": EXCHANGE_KEY_ID, "key_hex": _hex(EXCHANGE_KEY),
             "file": f"exchange/{EXCHANGE_KEY_ID}.key", "current": True},
            {"key_id": OLD_EXCHANGE_KEY_ID, "key_hex": _hex(OLD_EXCHANGE_KEY),
             "file": f"exchange/{OLD_EXCHANGE_KEY_ID}.key", "current": False},
        ],
        "signing_key": {"key_id": SIGNING_KEY_ID, "seed_hex": _hex(SIGNING_SEED),
                        "private_pem": _pem(key).decode(), "public_b64url": b64u(_raw_public(key)),
                        "public_hex": _hex(_raw_public(key)),
                        "file": f"funds/{FUND.value}/{SIGNING_KEY_ID}.pem"},
        "retired_signing_key": {"key_id": RETIRED_SIGNING_KEY_ID, "seed_hex": _hex(RETIRED_SIGNING_SEED),
                                "public_b64url": b64u(_raw_public(retired_signing_key())),
                                "note": "retired in the registry: what it signs is refused (cle_signature_retiree)"},
        "sealing_keys": [
            {"key_id": ID_ROOT_KEY_ID, "key_hex": _hex(ID_ROOT_KEY), "file": f"funds/{FUND.value}/{ID_ROOT_KEY_ID}.key",
             "role": "id_root (the first sealing key)"},
            {"key_id": SEALING_KEY_ID, "key_hex": _hex(SEALING_KEY), "file": f"funds/{FUND.value}/{SEALING_KEY_ID}.key",
             "role": "sealing (the current one)"},
        ],
        "current_json": {"file": f"funds/{FUND.value}/current.json",
                         "content": {"signing": SIGNING_KEY_ID, "sealing": SEALING_KEY_ID, "id_root": ID_ROOT_KEY_ID}},
        "registry_json": {"file": "registry.json", "content": registry_content(),
                          "current_exchange_key_id": registry().current_exchange_key_id()},
    }


NIR_CASES: list[tuple[str, str]] = [
    ("1 85 05 78 006 084 91", "spaces"),
    ("1.85.05.78.006.084.91", "dots"),
    ("185057800608491", "already compact"),
    ("  1 85 05 78 006 084 91 ", "spaces around"),
    ("2 53 07 2a 073 004 43", "Corsica 2A in lower case: upper-cased, key computed with 2A -> 19"),
    ("253072B07300470", "Corsica 2B: key computed with 2B -> 18"),
    ("2 95 10 99 126 111 93", "python-stdnum's own example"),
    ("1 85 05 78 006 078 97", "key 97 (N mod 97 = 0)"),
    ("1 85 05 78 006 073 05", "key below 10, written on two digits"),
    ("7 85 05 78 006 084 82", "first digit 7 (temporary number)"),
    ("1 85 05 78 006 084 92", "wrong key"),
    ("253072A07300470", "2A with the key of 2B"),
    ("5 85 05 78 006 084 91", "first digit 5"),
    ("253072C07300443", "2C is not a département"),
    ("1 85 05 78 006 084 9", "14 characters"),
    ("1 85 05 78 006 084 911", "16 characters"),
    ("1-85-05-78-006-084-91", "dashes are not removed"),
    ("", "empty"),
    ("1 85 O5 78 006 084 91", "letter O for zero"),
]

#: Refused by the SDK's free-text guard before the NIR is even read (stage "record").
NIR_RECORD_CASES: list[tuple[str, str]] = [
    ("1 85 05 78 006 084 91\t", "a tab: not printable"),
    ("1\u00a085 05 78 006 084 91", "a no-break space: not ASCII"),
    ("\uff11 85 05 78 006 084 91", "a full-width digit: not ASCII"),
    ("1 85 05 78 006 084 91" + " " * 44, "65 characters"),
]


def _record(nir: str, **kw: Any) -> SignalInput:
    base: dict[str, Any] = {"category": "separation", "observed_on": "2026-11-02", "departement": "35",
                            "reference": "DOS-2026-00042"}
    base.update(kw)
    return SignalInput(nir=nir, **base)


def nir_file(settings: Settings) -> dict[str, Any]:
    cases: list[dict[str, Any]] = []
    for raw, why in NIR_CASES:
        case: dict[str, Any] = {"input": raw, "note": why, "stage": "nir"}
        try:
            case["normalised"] = nirs.normalise(raw)
        except Rejected as exc:
            case["reason"] = exc.reason.value
        cases.append(case)
    b = builder(settings)
    for raw, why in NIR_RECORD_CASES:
        try:
            b.build(_record(raw), today=TODAY, now=NOW)
        except Rejected as exc:
            cases.append({"input": raw, "note": why, "stage": "record", "reason": exc.reason.value,
                          "field": exc.field})
        else:  # pragma: no cover - the generator would publish a wrong vector
            raise AssertionError(f"{why}: accepted")
    return {"description": "NIR normalisation (docs/contract.md §3). stage 'nir': the NIR alone "
                           "(nir.normalise); stage 'record': refused by the free-text guard on the "
                           "whole record (field 'nir') before normalisation. Either 'normalised' "
                           "(15 characters) or 'reason' (a reason code).",
            "cases": cases}


def pseudonym_file() -> dict[str, Any]:
    cases = []
    for nir in ("185057800608491", "253072A07300443", "253072B07300470", "295109912611193"):
        data = PREFIX + nir.encode("ascii")
        cases.append({"nir": nir, "exchange_key_id": EXCHANGE_KEY_ID, "hmac_input_hex": _hex(data),
                      "hmac_input_length": len(data), "pseudonym": pseudonym(EXCHANGE_KEY_ID, EXCHANGE_KEY, nir)})
    cases.append({"nir": "185057800608491", "exchange_key_id": OLD_EXCHANGE_KEY_ID,
                  "hmac_input_hex": _hex(PREFIX + b"185057800608491"), "hmac_input_length": len(PREFIX) + 15,
                  "pseudonym": pseudonym(OLD_EXCHANGE_KEY_ID, OLD_EXCHANGE_KEY, "185057800608491"),
                  "note": "the same person under another exchange key: another pseudonym"})
    wrong = {"nir": "185057800608491", "bare_hmac_without_prefix":
             b64u(hmac.digest(EXCHANGE_KEY, b"185057800608491", "sha256")),
             "note": "HMAC of the bare NIR, without the prefix: a WRONG pseudonym, shown so that an "
                     "implementation can tell it has forgotten the prefix"}
    return {"description": "Pseudonyms (docs/contract.md §4): value = b64url(HMAC-SHA256(exchange key, "
                           "'help-exchange/pseudonym/v1' || 0x00 || NIR15)), no padding. Keys in keys.json.",
            "prefix_hex": _hex(PREFIX), "cases": cases, "wrong": wrong}


#: Scheme v2 test key: DeriveKeyPair(seed, info) of RFC 9497 §3.2.1 (a public label: tests only).
V2_SEED = hashlib.sha256(b"help-exchange test pseudonymiser seed v2").digest()
V2_KEY_VERSION = "pk-0a1b2c3d"


def pseudonym_v2_file() -> dict[str, Any]:
    from services.core import oprf
    from services.producer.pseudonym_v2 import PREFIX_V2, oprf_input
    from services.pseudonymiser.keystore import KEY_INFO

    ev = oprf.Evaluator.from_seed(V2_KEY_VERSION, V2_SEED, KEY_INFO)
    cases = []
    for nir in ("185057800608491", "253072A07300443"):
        output = ev.evaluate(oprf_input(nir))
        cases.append({"nir": nir, "oprf_input_hex": _hex(oprf_input(nir)), "output_hex": _hex(output),
                      "pseudonym": {"key_id": V2_KEY_VERSION, "value": oprf.pseudonym_value_v2(output)}})
    rfc = oprf.Evaluator.from_seed("pk-00000000", bytes([0xA3]) * 32, b"test key")
    return {"description": "Pseudonym scheme v2 (docs/contract.md §4.2): RFC 9497 VOPRF, ristretto255-SHA512, "
                           "verifiable mode. output = Evaluate(skS, prefix || NIR15) (64 bytes, equal to "
                           "Finalize after Blind/BlindEvaluate); value = b64url(output[0:32]). The test key: "
                           "DeriveKeyPair(seed_hex, key_info). rfc9497: the RFC's own A.1.2 vectors.",
            "suite": oprf.SUITE, "prefix_hex": _hex(PREFIX_V2), "seed_hex": _hex(V2_SEED),
            "key_info": KEY_INFO.decode(), "key_version": V2_KEY_VERSION, "public_key_hex": _hex(ev.public_key),
            "cases": cases,
            "rfc9497": {"seed_hex": "a3" * 32, "key_info_hex": b"test key".hex(), "pkSm_hex": _hex(rfc.public_key),
                        "cases": [{"input_hex": d, "output_hex": _hex(rfc.evaluate(bytes.fromhex(d)))}
                                  for d in ("00", "5a" * 17)]}}


#: A second v2 version, for the rotation case (a public label: tests only).
V2_NEXT_SEED = hashlib.sha256(b"help-exchange test pseudonymiser seed v2 next").digest()
V2_NEXT_KEY_VERSION = "pk-0e1f2a3b"
ROTATION_RECORD_INDEX = 0  # the record of SIGNAL_RECORDS whose signal is built in a migration window


class _WindowSource:
    """The pseudonyms of a window as the fund gets them: fixed values (§4.3)."""

    def __init__(self, pseudonym: dict[str, str], previous: dict[str, str]) -> None:
        self._p, self._prev = pseudonym, previous

    def prefetch(self, nirs: Any) -> None:
        """Nothing to ask: the values are given."""

    def pseudonym(self, nir: str) -> dict[str, str]:
        return self._p

    def previous(self, nir: str) -> dict[str, str] | None:
        return self._prev


def rotation_file(settings: Settings) -> dict[str, Any]:
    from services.core import oprf
    from services.producer.pseudonym import pseudonym as v1_pseudonym
    from services.producer.pseudonym_v2 import oprf_input
    from services.pseudonymiser.keystore import KEY_INFO

    current = oprf.Evaluator.from_seed(V2_KEY_VERSION, V2_SEED, KEY_INFO)
    following = oprf.Evaluator.from_seed(V2_NEXT_KEY_VERSION, V2_NEXT_SEED, KEY_INFO)
    why, rec = SIGNAL_RECORDS[ROTATION_RECORD_INDEX]
    nir = nirs.normalise(rec.nir)
    v1 = v1_pseudonym(EXCHANGE_KEY_ID, EXCHANGE_KEY, nir)
    out_current = current.evaluate(oprf_input(nir))
    out_next = following.evaluate(oprf_input(nir))
    v2 = {"key_id": V2_KEY_VERSION, "value": oprf.pseudonym_value_v2(out_current)}
    v2_next = {"key_id": V2_NEXT_KEY_VERSION, "value": oprf.pseudonym_value_v2(out_next)}
    b = builder(settings)
    b._pseudonyms = _WindowSource(v2, v1)
    row = b.build(rec, today=TODAY, now=NOW, partitions=PARTITIONS)
    message = json.loads(row.value)
    unsigned = {k: v for k, v in message.items() if k != "signature"}
    return {"description": "Rotation and migration windows (docs/contract.md §4.3): a signal carries "
                           "'pseudonym' under the newest key and 'pseudonym_previous', the same person under the "
                           "previous one. migration: v1 (HMAC, exchange key of keys.json) -> v2 (test version of "
                           "pseudonym_v2.json); rotation: that v2 version -> a newer one (its seed and info here; "
                           "output = Evaluate(skS, prefix || NIR15), value = b64url(output[0:32])). signal: the "
                           "signal of signals.json's first record built in a migration window (same keys, day, "
                           "time and nonce as signals.json): the link is signed with the rest; the signal id is "
                           "signals.json's, the seal binds 'pseudonym' (§6) and the record key is its value.",
            "nir": nir, "key_info": KEY_INFO.decode(),
            "versions": [{"key_version": V2_KEY_VERSION, "seed_hex": _hex(V2_SEED),
                          "public_key_hex": _hex(current.public_key), "output_hex": _hex(out_current)},
                         {"key_version": V2_NEXT_KEY_VERSION, "seed_hex": _hex(V2_NEXT_SEED),
                          "public_key_hex": _hex(following.public_key), "output_hex": _hex(out_next)}],
            "cases": [
                {"note": "migration v1 -> v2", "pseudonym": v2, "pseudonym_previous": v1},
                {"note": "rotation of the v2 key", "pseudonym": v2_next, "pseudonym_previous": v2}],
            "signal": {"note": f"{why}, in a v1 -> v2 migration window", "input": _input_json(rec),
                       "nonce_hex": _hex(nonce_for(ROTATION_RECORD_INDEX)), "signal_id": row.signal_id,
                       "canonical_unsigned_text": canonical(unsigned).decode(), "wire_text": row.value.decode("utf-8"),
                       "kafka_key_text": row.key.decode("ascii"), "partition": row.partition}}


SIGNAL_ID_CASES = [
    ("DOS-2026-00042", "separation", dt.date(2026, 11, 2)),
    ("DOS-2026-00042", "separation", dt.date(2026, 11, 3)),
    ("DOS-2026-00042", "impaye_loyer", dt.date(2026, 11, 2)),
    ("A1/2026.x_y-z", "deces_conjoint", dt.date(2026, 1, 31)),
]


def signal_id_file() -> dict[str, Any]:
    ids = SignalIds(FUND, ID_ROOT_KEY)
    k_id = hmac.digest(ID_ROOT_KEY, b"help-exchange/signal-id/v1", "sha256")
    cases = []
    for ref, cat, day in SIGNAL_ID_CASES:
        msg = f"{FUND.value}\x00{ref}\x00{cat}\x00{day.isoformat()}".encode()
        cases.append({"fund": FUND.value, "reference": ref, "category": cat, "observed_on": day.isoformat(),
                      "message_hex": _hex(msg), "signal_id": ids.signal_id(ref, cat, day)})
    return {"description": "Signal ids (docs/contract.md §5): K_id = HMAC-SHA256(id_root, "
                           "'help-exchange/signal-id/v1'); signal_id = hex(HMAC-SHA256(K_id, fund || 0x00 "
                           "|| reference || 0x00 || category || 0x00 || observed_on)[0:16]). id_root is the "
                           f"fund's FIRST sealing key ({ID_ROOT_KEY_ID} in keys.json), not the current one.",
            "id_root_key_id": ID_ROOT_KEY_ID, "k_id_hex": _hex(k_id), "cases": cases}


def sealed_ref_file() -> dict[str, Any]:
    from services.producer.seal import _aad, _binding

    cases = []
    pseudos = [pseudonym(EXCHANGE_KEY_ID, EXCHANGE_KEY, "185057800608491"),
               pseudonym(EXCHANGE_KEY_ID, EXCHANGE_KEY, "253072A07300443")]
    refs = ["DOS-2026-00042", "A1", "Z" * 64, "a/b_c.d-e"]
    for n, ref in enumerate(refs):
        pseudo = pseudos[n % 2]
        nonce = nonce_for(100 + n)
        sealer = Sealer(FUND, SEALING_KEY_ID, SEALING_KEY, nonces=lambda _n, nonce=nonce: nonce)
        sealed = sealer.seal(ref, pseudo)
        raw = base64.urlsafe_b64decode(sealed["value"] + "=" * (-len(sealed["value"]) % 4))
        assert open_sealed(FUND, {SEALING_KEY_ID: SEALING_KEY}, sealed["key_id"], sealed["value"],
                           pseudonym=pseudo) == ref
        cases.append({
            "reference": ref, "pseudonym": pseudo, "sealing_key_id": SEALING_KEY_ID, "nonce_hex": _hex(nonce),
            "associated_data_hex": _hex(_aad(FUND, SEALING_KEY_ID)), "binding_hex": _hex(_binding(pseudo)),
            "plaintext_hex": _hex(_binding(pseudo) + ref.encode("ascii")),
            "ciphertext_and_tag_hex": _hex(raw[12:]), "sealed_ref": sealed,
            "token": token(sealed["key_id"], sealed["value"]),
            "sealed_digest_sha256_hex": hashlib.sha256(sealed["value"].encode("ascii")).hexdigest(),
            "sealed_digest": sealed_digest(sealed["value"]),
        })
    return {"description": "Sealed references (docs/contract.md §6): AES-256-GCM under the fund's current "
                           "sealing key; associated data 'help-exchange/sealed-ref/v1' || 0x00 || fund || 0x00 || "
                           "key_id; plaintext = SHA-256(pseudonym.key_id ':' pseudonym.value)[0:8] || reference; "
                           "value = b64url(nonce || ciphertext || tag). Nonces are FIXED here to make the "
                           "vectors reproducible: a real seal takes 12 fresh random bytes. Token: how "
                           "exports print the seal, and what `help-exchange reveal` opens. sealed_digest: "
                           "what a reveal event carries (§10), b64url(SHA-256(the ASCII bytes of the "
                           "wire value, the base64url text as written, not its decoded bytes)); "
                           "sealed_digest_sha256_hex: the same 32 bytes in hex.",
            "fund": FUND.value, "cases": cases}


def _unsigned_examples() -> list[tuple[str, dict[str, Any]]]:
    return [
        ("members out of order, nested object and array",
         {"b": "2", "a": {"z": [], "y": ["x", "w"]}, "schema_version": SCHEMA_VERSION}),
        ("escapes: quote, backslash, control character, slash kept as is",
         {"k": "a\"b\\c\u0001d/e"}),
        ("a consent event",
         {"schema_version": "1.0", "event_id": "0123456789abcdef0123456789abcdef", "kind": "consentement_donne",
          "fund": FUND.value, "emitter": "caf-35",
          "pseudonym": pseudonym(EXCHANGE_KEY_ID, EXCHANGE_KEY, "185057800608491"),
          "purposes": ["acces_aux_droits"], "consent_ref": "HELP-2026-000123",
          "effective_at": "2026-11-03T23:00:00.000000Z"}),
    ]


def signature_file() -> dict[str, Any]:
    key = signing_key()
    cases = []
    for why, message in _unsigned_examples():
        signed = sign(message, key, SIGNING_KEY_ID)
        data = signing_input(signed)
        cases.append({"note": why, "message": message, "canonical_text": data.decode("utf-8"),
                      "canonical_hex": _hex(data), "signature": signed["signature"]})
    return {"description": "RFC 8785 canonical form and Ed25519 signature (docs/contract.md §7): the "
                           "signature is over the canonical UTF-8 bytes of the message WITHOUT its "
                           "'signature' member; signature.value = b64url(64 bytes). Signing key in keys.json.",
            "signing_key_id": SIGNING_KEY_ID, "cases": cases}


SIGNAL_RECORDS: list[tuple[str, SignalInput]] = [
    ("plain L115-2-1 signal", _record("1 85 05 78 006 084 91")),
    ("Corsica, lower-case département, aged 55+ so the prevention purpose carries age_55_plus",
     _record("2.53.07.2a.073.004.43", category="deces_conjoint", departement="2a", reference="C-2A/1953.7",
             purpose="prevention_perte_autonomie", observed_on="01/10/2026")),
    ("consent route, one-digit département", _record("1 55 03 75 123 045 79", category="impaye_loyer",
                                                     departement="5", reference="REF_5",
                                                     consent_ref="HELP-2026-000123")),
    ("prevention purpose, born in October 1971: 55 in November 2026 by the month rule of §8",
     _record("1 71 10 75 123 045 86", category="deces_conjoint", purpose="prevention_perte_autonomie",
             reference="DOS-2026-00043")),
]

SIGNAL_REJECTS: list[tuple[str, SignalInput]] = [
    ("another fund's category", _record("1 85 05 78 006 084 91", category="non_recours_c2s_puma")),
    ("medical category", _record("1 85 05 78 006 084 91", category="maladie_handicap_enfant")),
    ("prevention purpose, person under 55", _record("1 85 05 78 006 084 91", category="deces_conjoint",
                                                   purpose="prevention_perte_autonomie")),
    ("purpose the category does not allow", _record("1 85 05 78 006 084 91", purpose="prevention_perte_autonomie")),
    ("date in the future", _record("1 85 05 78 006 084 91", observed_on="2026-11-24")),
    ("date over 2 years old", _record("1 85 05 78 006 084 91", observed_on="2024-11-22")),
    ("unreadable date", _record("1 85 05 78 006 084 91", observed_on="2026-13-01")),
    ("département 96", _record("1 85 05 78 006 084 91", departement="96")),
    ("reference with a space", _record("1 85 05 78 006 084 91", reference="DOS 42")),
    ("words in the reference", _record("1 85 05 78 006 084 91", reference="Dupont Jean")),
    ("malformed consent reference", _record("1 85 05 78 006 084 91", consent_ref="help-2026")),
    # §8 age_55_plus: the birth month counts as not yet passed during that whole month.
    ("prevention purpose, born in November 1971: still 54 in November 2026 by the month rule of §8",
     _record("1 71 11 75 123 045 05", category="deces_conjoint", purpose="prevention_perte_autonomie")),
    # §12 texte_libre: the free-text guard, on every field, before any other check.
    ("words separated by a comma, no space: free text", _record("1 85 05 78 006 084 91", reference="ab,cd")),
    ("one-letter runs are not words: the reference rule refuses the spaces",
     _record("1 85 05 78 006 084 91", reference="A B C")),
    ("letters then digits are not two words: the consent reference rule refuses it",
     _record("1 85 05 78 006 084 91", consent_ref="HELP 2026")),
    ("words in the purpose: free text before the purpose check",
     _record("1 85 05 78 006 084 91", purpose="acces aux droits")),
    ("a non-ASCII letter in the département", _record("1 85 05 78 006 084 91", departement="3\u00e9")),
    ("a 65-character reference: over 64 characters is free text, before the reference rule",
     _record("1 85 05 78 006 084 91", reference="A" * 65)),
    ("malformed NIR and words in the reference: the guard runs first",
     _record("12", reference="Dupont Jean")),
    # §12 the fund side's order: with several faults, the first check in that order decides.
    ("malformed NIR and a medical category: the NIR first",
     _record("9 85 05 78 006 084 91", category="maladie_handicap_enfant")),
    ("another fund's category and a date in the future: the category first",
     _record("1 85 05 78 006 084 91", category="non_recours_c2s_puma", observed_on="2026-11-24")),
    ("unreadable date and département 96: the date first",
     _record("1 85 05 78 006 084 91", observed_on="31/02/2026", departement="96")),
    ("département 96 and a reference with a space: the département first",
     _record("1 85 05 78 006 084 91", departement="96", reference="DOS 42")),
    ("reference with a space and an unknown purpose: the reference first",
     _record("1 85 05 78 006 084 91", reference="DOS 42", purpose="autre")),
    ("unknown purpose and a malformed consent reference: the purpose first",
     _record("1 85 05 78 006 084 91", purpose="autre", consent_ref="help-2026")),
    ("a purpose the category does not allow and a malformed consent reference: the consent reference first",
     _record("1 85 05 78 006 084 91", purpose="prevention_perte_autonomie", consent_ref="help-2026")),
]


def _input_json(rec: SignalInput) -> dict[str, Any]:
    return {"nir": rec.nir, "categorie": rec.category, "date_observation": rec.observed_on,
            "departement": rec.departement, "reference_dossier": rec.reference,
            "consentement": rec.consent_ref, "finalite": rec.purpose}


def signals_file(settings: Settings) -> dict[str, Any]:
    b = builder(settings)
    cases = []
    for n, (why, rec) in enumerate(SIGNAL_RECORDS):
        row = b.build(rec, today=TODAY, now=NOW, partitions=PARTITIONS)
        message = json.loads(row.value)
        unsigned = {k: v for k, v in message.items() if k != "signature"}
        cases.append({
            "note": why, "input": _input_json(rec), "nir_normalised": nirs.normalise(rec.nir),
            "nonce_hex": _hex(nonce_for(n)), "signal_id": row.signal_id,
            "canonical_unsigned_text": canonical(unsigned).decode(), "wire_text": row.value.decode("utf-8"),
            "wire_base64": base64.b64encode(row.value).decode(), "topic": signal_topic(FUND),
            "kafka_key_text": row.key.decode("ascii"), "partition": row.partition,
        })
    rejects = []
    for why, rec in SIGNAL_REJECTS:
        try:
            b.build(rec, today=TODAY, now=NOW)
        except Rejected as exc:
            rejects.append({"note": why, "input": _input_json(rec), "reason": exc.reason.value, "field": exc.field})
        else:  # pragma: no cover
            raise AssertionError(f"{why}: accepted")
    return {"description": "Whole signals as the producer SDK builds them from a back-office record "
                           "(fields named as the extract file's columns), for fund caf with the keys of "
                           f"keys.json, on the fund's day {TODAY} (Europe/Paris) at {NOW:%Y-%m-%dT%H:%M:%S.%fZ}, "
                           "with the i-th seal's nonce fixed (nonce_hex; random in real use). wire_text is "
                           "the record value as sent (the canonical form with 'signature' in its sorted "
                           "place), kafka_key_text the record key, partition = (murmur2(key) & 0x7fffffff) "
                           f"% {PARTITIONS}. 'rejected': records the fund itself refuses, with the reason "
                           "code and the field.",
            "fund": FUND.value, "today": TODAY.isoformat(), "now": NOW.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "partitions": PARTITIONS, "cases": cases, "rejected": rejects}


def sealed_signal_file(signals: dict[str, Any]) -> dict[str, Any]:
    from services.core.signal_seal import KEY_INFO, associated_data, fund_key, plaintext, seal_message

    key = signing_key()
    cases = []
    epochs = [1, 1_764_000_000, 4_294_967_295]
    for n, case in enumerate(signals["cases"]):
        wire = json.loads(case["wire_text"])
        unsigned = {k: v for k, v in wire.items() if k != "signature"}
        data_key = _secret(f"person data key {n}")
        subject = _secret(f"person subject {n}")[:16]
        epoch = epochs[n % len(epochs)]
        derived = fund_key(data_key, FUND)
        nonce = nonce_for(200 + n)
        topic = case["topic"]
        sealed = seal_message(derived, topic, subject, epoch, unsigned, nonce=nonce)
        raw = base64.urlsafe_b64decode(str(sealed["sealed"]["value"]) + "==")  # type: ignore[index]
        text = canonical(sealed)
        value = append_signature(text, "Ed25519", SIGNING_KEY_ID, b64u(key.sign(text)))
        assert value == canonical(sign(sealed, key, SIGNING_KEY_ID))
        cases.append({
            "note": case["note"], "signal": case["wire_text"], "topic": topic,
            "data_key_hex": _hex(data_key), "subject_hex": _hex(subject), "epoch": epoch,
            "hkdf_info_hex": _hex(KEY_INFO + FUND.value.encode()), "fund_key_hex": _hex(derived),
            "key_endpoint_answer": {"pseudonym": wire["pseudonym"]["value"], "subject": subject.hex(),
                                    "epoch": epoch, "key": b64u(derived)},
            "plaintext_text": plaintext(unsigned).decode(), "nonce_hex": _hex(nonce),
            "associated_data_hex": _hex(associated_data(topic, wire["signal_id"], subject, epoch)),
            "ciphertext_and_tag_hex": _hex(raw[12:]), "sealed": sealed["sealed"],
            "canonical_unsigned_text": text.decode(), "wire_text": value.decode(),
        })
    return {"description": "Sealed signals (docs/contract.md §2.1): each signal of signals.json with its person "
                           "members (category, observed_on, sealed_ref, territory) sealed under the key the key "
                           "endpoint (§4.4) hands fund caf for the person: HKDF-SHA256(ikm = the person's data key, "
                           "salt = none, info = hkdf_info_hex, 32 bytes); plaintext = RFC 8785 form of the four "
                           "members; associated data = 'help-exchange/signal/v1' 0x00 topic 0x00 signal_id 0x00 "
                           "subject (16 bytes) epoch (4 bytes, big endian); value = b64url(nonce || ciphertext || "
                           "tag); then signed (§7) with caf's key of keys.json. Data keys and subjects are derived "
                           "from public labels (the exchange's are random); nonces are FIXED here to make the "
                           "vectors reproducible: a real seal takes 12 fresh random bytes.",
            "fund": FUND.value, "cases": cases}


CONSENT_LINES: list[tuple[str, str, dict[str, str]]] = [
    ("consent given: takes effect when recorded (now), like every kind; its date enters the id", "consentement_donne",
     {"nir": "1 55 03 75 123 045 79", "consent_ref": "HELP-2026-000123", "purposes": "acces_aux_droits",
      "date": "04/11/2026", "departement": "35"}),
    ("withdrawal: takes effect when recorded (now), whatever its date", "consentement_retire",
     {"nir": "1 55 03 75 123 045 79", "consent_ref": "HELP-2026-000123", "purposes": "acces_aux_droits",
      "date": "2026-11-20", "departement": "35"}),
    ("objection: no purpose given means both", "opposition",
     {"nir": "2 53 07 2a 073 004 43", "consent_ref": "OPP-2026-7", "purposes": "", "date": "",
      "departement": "2a"}),
    ("consent to both purposes in one cell, separated by '|' (',' works too; docs/files.md)",
     "consentement_donne",
     {"nir": "1 85 05 78 006 084 91", "consent_ref": "HELP-2026-000124",
      "purposes": "prevention_perte_autonomie | acces_aux_droits", "date": "2026-11-05", "departement": "35"}),
]


def consents_file(settings: Settings) -> dict[str, Any]:
    from services.producer.consent import ConsentBuilder, ConsentInput

    b = ConsentBuilder(settings, FUND)
    cases = []
    for why, kind, line in CONSENT_LINES:
        row = b.build(ConsentInput(**line), kind, now=NOW, today=TODAY)  # type: ignore[arg-type]
        message = json.loads(row.value)
        unsigned = {k: v for k, v in message.items() if k != "signature"}
        cases.append({"note": why, "kind": kind, "input": line, "nir_normalised": nirs.normalise(line["nir"]),
                      "event_id": row.signal_id, "canonical_unsigned_text": canonical(unsigned).decode(),
                      "wire_text": row.value.decode(), "topic": CONSENTS_TOPIC,
                      "kafka_key_text": row.key.decode("ascii"),
                      "partition": partition_for(row.key.decode("ascii"), PARTITIONS)})
    return {"description": "Consent events as `help-exchange consent` builds them from a back-office line "
                           f"(columns nir, reference_consentement, finalites, date_effet, departement), for fund "
                           f"caf with the keys of keys.json, on {TODAY} (Paris) at {_ts(NOW)} "
                           "(docs/contract.md §10). event_id = hex(HMAC-SHA256(HMAC-SHA256(id_root, "
                           "'help-exchange/consent-id/v1'), fund 0x00 kind 0x00 pseudonym.key_id 0x00 "
                           "pseudonym.value 0x00 consent_ref 0x00 date)[0:16]); wire_text is the record value "
                           "as our tools send it (members in the schema's order: any order verifies, the "
                           "signature is over canonical_unsigned_text); partition for 8 partitions.",
            "cases": cases}


MURMUR_KEYS: list[bytes] = [b"", b"a", b"ab", b"abc", b"abcd", b"abcde", b"21", b"foobar",
                            b"a-little-bit-long-string", bytes([0xFF, 0x80, 0x00, 0x7F, 0xFE]),
                            bytes(range(256))]


def murmur2_file(settings: Settings) -> dict[str, Any]:
    keys = list(MURMUR_KEYS)
    b = builder(settings)
    for _why, rec in SIGNAL_RECORDS:
        keys.append(b.build(rec, today=TODAY, now=NOW).key)
    cases = []
    for key in keys:
        h = murmur2(key)
        case: dict[str, Any] = {"key_hex": _hex(key)}
        if key.isascii() and key.decode().isprintable():
            case["key_text"] = key.decode()
        case.update({"murmur2_unsigned": h, "murmur2_java_int": h - (1 << 32) if h >= 1 << 31 else h,
                     "positive": h & 0x7FFFFFFF,
                     "partitions": {str(n): (h & 0x7FFFFFFF) % n for n in (1, 3, 4, 8, 100)}})
        assert all(partition_for(key.decode(), n) == p for n, p in ((8, case["partitions"]["8"]),)
                   if key.isascii())
        cases.append(case)
    return {"description": "Kafka's murmur2 partitioner (docs/contract.md §9): Java's Utils.murmur2 "
                           "(seed 0x9747b28c, m 0x5bd1e995, r 24), as unsigned 32-bit and as Java's signed "
                           "int; partition = (murmur2(key) & 0x7fffffff) % partitions, for 1, 3, 4, 8 and "
                           "100 partitions. The last keys are the pseudonyms of signals.json.",
            "cases": cases}


# ------------------------------------------------------------------------------ bad messages
def _ts(at: dt.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Wire:
    """Builds the messages of the bad-message vectors: each from the good signal, changed."""

    def __init__(self, settings: Settings) -> None:
        b = builder(settings)
        self.good = json.loads(b.build(SIGNAL_RECORDS[0][1], today=TODAY, now=NOW).value)
        self.consented = json.loads(b.build(SIGNAL_RECORDS[2][1], today=TODAY, now=NOW).value)
        self.prevention = json.loads(b.build(SIGNAL_RECORDS[1][1], today=TODAY, now=NOW).value)
        self.key = signing_key()

    def signal(self, base: dict[str, Any] | None = None, *, drop: tuple[str, ...] = (),
               **changes: Any) -> dict[str, Any]:
        msg = {k: v for k, v in (base or self.good).items() if k != "signature" and k not in drop}
        msg.update(changes)
        return sign(msg, self.key, SIGNING_KEY_ID)

    def consent(self, kind: str, pseudo: dict[str, str], n: int,
                effective_at: str = "2026-11-20T09:00:00.000000Z") -> dict[str, Any]:
        msg = {"schema_version": "1.0", "event_id": hashlib.sha256(f"consent {n}".encode()).hexdigest()[:32],
               "kind": kind, "fund": FUND.value, "emitter": "caf-35", "pseudonym": pseudo,
               "purposes": ["acces_aux_droits"], "consent_ref": "HELP-2026-000123",
               "effective_at": effective_at}
        return sign(msg, self.key, SIGNING_KEY_ID)


def _text(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode()


def bad_cases(settings: Settings) -> Iterator[tuple[str, str, list[tuple[str, bytes, int | None]]]]:
    """(name, note, records): each record (topic, value, partition or None = the person's)."""
    w = _Wire(settings)
    sig = signal_topic(FUND)
    good = w.good
    text = _text(good)
    yield "accepted", "the good signal of signals.json", [(sig, text, None)]
    yield "accepted_at_size_limit", f"the good signal padded with spaces to exactly {MAX_MESSAGE_BYTES} bytes", \
        [(sig, text + b" " * (MAX_MESSAGE_BYTES - len(text)), None)]
    yield "message_trop_volumineux", f"the good signal padded with spaces to {MAX_MESSAGE_BYTES + 1} bytes", \
        [(sig, text + b" " * (MAX_MESSAGE_BYTES + 1 - len(text)), None)]
    yield "json_invalide", "not JSON", [(sig, b"{\"signal_id\": ", None)]
    yield "json_invalide_duplicate_member", "the good signal with a second 'category' member", \
        [(sig, text[:-1] + b',"category":"grossesse"}', None)]
    yield "json_invalide_not_utf8", "bytes that are not UTF-8", [(sig, b"\xff\xfe{}", None)]
    yield "schema_invalide_not_object", "a JSON array", [(sig, b"[]", None)]
    yield "schema_invalide_missing_member", "signed without 'purpose'", \
        [(sig, _text(w.signal(drop=("purpose",))), None)]
    yield "schema_invalide_extra_member", "signed with an extra member", [(sig, _text(w.signal(nom="X")), None)]
    yield "schema_invalide_emitter_of_other_fund", "emitter cpam-35 in a caf signal", \
        [(sig, _text(w.signal(emitter="cpam-35")), None)]
    yield "version_schema_inconnue", "schema_version 2.0", [(sig, _text(w.signal(schema_version="2.0")), None)]
    yield "organisme_inconnu", "fund 'mutuelle'", [(sig, _text(w.signal(fund="mutuelle")), None)]
    yield "topic_incorrect", "caf's signal on cpam's topic: refused, answered on cpam's receipt topic", \
        [(signal_topic(Fund.CPAM), text, None)]
    altered = dict(good, observed_on="2026-11-01")
    yield "signature_invalide", "observed_on changed after signing", [(sig, _text(altered), None)]
    unknown = dict(good, signature=dict(good["signature"], key_id="caf-sig-20200101-0000"))
    yield "cle_signature_inconnue", "a signing key id the registry does not list for caf", [(sig, _text(unknown), None)]
    by_retired = sign({k: v for k, v in good.items() if k != "signature"}, retired_signing_key(),
                      RETIRED_SIGNING_KEY_ID)
    yield "cle_signature_retiree", "signed by caf's retired key (registry: status retired)", \
        [(sig, _text(by_retired), None)]
    yield "cle_pseudonyme_refusee", "pseudonym under a retired exchange key", \
        [(sig, _text(w.signal(pseudonym={"key_id": RETIRED_EXCHANGE_KEY_ID, "value": good["pseudonym"]["value"]})),
          None)]
    link = {"key_id": OLD_EXCHANGE_KEY_ID, "value": good["pseudonym"]["value"][::-1]}
    yield "lien_pseudonyme_perime", "pseudonym_previous under a retired exchange key (its window is over)", \
        [(sig, _text(w.signal(pseudonym_previous={**link, "key_id": RETIRED_EXCHANGE_KEY_ID})), None)]
    yield "lien_pseudonyme_invalide", "pseudonym_previous under a key the registry does not know", \
        [(sig, _text(w.signal(pseudonym_previous={**link, "key_id": "pk-00000000"})), None)]
    yield "lien_pseudonyme_invalide_meme", "pseudonym_previous is the pseudonym itself", \
        [(sig, _text(w.signal(pseudonym_previous=good["pseudonym"])), None)]
    yield "lien_pseudonyme_invalide_plus_recent", "pseudonym_previous under a newer key than the pseudonym", \
        [(sig, _text(w.signal(pseudonym={"key_id": OLD_EXCHANGE_KEY_ID, "value": good["pseudonym"]["value"]},
                              pseudonym_previous={**link, "key_id": EXCHANGE_KEY_ID})), None)]
    yield "categorie_inconnue", "category not in the taxonomy", [(sig, _text(w.signal(category="inconnue_xyz")), None)]
    yield "categorie_autre_organisme", "a CPAM category from caf", \
        [(sig, _text(w.signal(category="non_recours_c2s_puma")), None)]
    yield "categorie_medicale", "a SENS category", [(sig, _text(w.signal(category="grossesse")), None)]
    yield "finalite_non_autorisee", "separation for prevention_perte_autonomie", \
        [(sig, _text(w.signal(purpose="prevention_perte_autonomie")), None)]
    yield "condition_non_remplie", "prevention_perte_autonomie without age_55_plus", \
        [(sig, _text(w.signal(w.prevention, legal_basis={"code": "L115-2-1", "conditions": []})), None)]
    # Date rules (docs/rules.md), with the exchange's clock at NOW (2026-11-23 in Paris).
    yield "date_future_observed_on", "observed_on the day after the exchange's day", \
        [(sig, _text(w.signal(observed_on="2026-11-24")), None)]
    yield "date_trop_ancienne_observed_on", "observed_on one day over 2 years before the exchange's day", \
        [(sig, _text(w.signal(observed_on="2024-11-22")), None)]
    yield "date_future_emitted_at", "emitted_at 5 minutes and 1 second after the exchange's clock", \
        [(sig, _text(w.signal(emitted_at="2026-11-23T10:20:31.123456Z")), None)]
    yield "date_trop_ancienne_emitted_at", "emitted_at three years old", \
        [(sig, _text(w.signal(emitted_at="2023-11-23T10:15:30.000000Z")), None)]
    yield "date_future_observed_after_emitted", "observed_on 2026-11-23, emitted at 23:59:59 on the 22nd in Paris", \
        [(sig, _text(w.signal(observed_on="2026-11-23", emitted_at="2026-11-22T22:59:59.000000Z")), None)]
    yield "date_future_consent", "a consent whose effective_at is a day after the exchange's clock", \
        [(CONSENTS_TOPIC, _text(w.consent("consentement_donne", good["pseudonym"], 3,
                                          effective_at="2026-11-24T10:15:30.000000Z")), None)]
    yield "consentement_absent", "consent basis, no consent on record", [(sig, _text(w.consented), None)]
    pseudo = w.consented["pseudonym"]
    yield "accepted_with_consent", "a consent event, then the consent-basis signal: both accepted", \
        [(CONSENTS_TOPIC, _text(w.consent("consentement_donne", pseudo, 1)), None), (sig, _text(w.consented), None)]
    at = "2026-11-20T{}:00.000000Z".format
    yield "consentement_retire", "a consent, its withdrawal (same purpose, later the same day), then the " \
        "consent-basis signal", \
        [(CONSENTS_TOPIC, _text(w.consent("consentement_donne", pseudo, 4, at("09:00"))), None),
         (CONSENTS_TOPIC, _text(w.consent("consentement_retire", pseudo, 5, at("09:30"))), None),
         (sig, _text(w.consented), None)]
    yield "consent_after_withdrawal_same_day", "a consent, its withdrawal, a consent recorded again the " \
        "same day, then the consent-basis signal: accepted", \
        [(CONSENTS_TOPIC, _text(w.consent("consentement_donne", pseudo, 6, at("09:00"))), None),
         (CONSENTS_TOPIC, _text(w.consent("consentement_retire", pseudo, 7, at("09:30"))), None),
         (CONSENTS_TOPIC, _text(w.consent("consentement_donne", pseudo, 8, at("10:00"))), None),
         (sig, _text(w.consented), None)]
    yield "opposition", "an objection, then a signal about the same person", \
        [(CONSENTS_TOPIC, _text(w.consent("opposition", good["pseudonym"], 2)), None), (sig, text, None)]
    yield "doublon", "the same signal twice, at two offsets", [(sig, text, None), (sig, text, None)]
    yield "consent_unreadable", "an unreadable record on the consent topic: dead letter, no receipt", \
        [(CONSENTS_TOPIC, b"not json", None)]
    person = partition_for(good["pseudonym"]["value"], PARTITIONS)
    yield "repartitioned", "the good signal on another partition: forwarded to the person's partition, " \
        "no receipt yet", [(sig, text, (person + 1) % PARTITIONS)]


def run_engine(reg: Registry, records: list[tuple[str, bytes, int | None]]) -> list[dict[str, Any]]:
    """What the correlator's engine answers to each record (fresh state, clock at NOW)."""
    from tests.correlator.core_fixtures import context

    engine = Engine(context(), reg, partitions=PARTITIONS, clock=lambda: NOW)
    recs = []
    for offset, (topic, value, part) in enumerate(records):
        if part is None:
            try:
                pseudo = json.loads(value)["pseudonym"]["value"]
                part = partition_for(pseudo, PARTITIONS)
            except (ValueError, KeyError, TypeError):
                part = 0
        recs.append(Record(topic, part, offset, int(NOW.timestamp() * 1000), None, value))
    batch = engine.process(recs, lambda _key: None)
    out = []
    for rec in recs:
        pos = {"topic": rec.topic, "partition": rec.partition, "offset": rec.offset}
        receipts = [json.loads(o.value) for o in batch.outputs
                    if o.topic.startswith("help.receipts.") and o.value and json.loads(o.value)["source"] == pos]
        dead = [json.loads(o.value) for o in batch.outputs
                if o.topic == DEADLETTER_TOPIC and o.value and json.loads(o.value)["source"] == pos]
        forwarded = [o for o in batch.outputs if o.topic == "help-correlator-repartition" and o.value == rec.value
                     and dict(o.headers).get("help-src-offset") == str(rec.offset).encode()]
        assert len(receipts) <= 1 and len(dead) <= 1
        result: dict[str, Any] = {"topic": rec.topic, "partition": rec.partition, "offset": rec.offset}
        if forwarded:
            result["outcome"] = "repartitionne"
            result["forwarded_to_partition"] = forwarded[0].partition
        elif dead:
            result["outcome"] = "rejete"
            result["reason"] = dead[0]["reason"]
        else:
            result["outcome"] = "accepte"
        if receipts:
            receipt = receipts[0]
            assert receipt["status"] == result["outcome"] and receipt["reason"] == result.get("reason")
            topic = next(o.topic for o in batch.outputs if o.value and json.loads(o.value) == receipt)
            result["receipt_topic"] = topic
            result["receipt_signal_id"] = receipt["signal_id"]
        else:
            result["receipt_topic"] = None
        result["dead_letter"] = bool(dead)
        out.append(result)
    return out


def bad_messages_file(settings: Settings) -> dict[str, Any]:
    reg = registry()
    cases = []
    for name, note, records in bad_cases(settings):
        results = run_engine(reg, records)
        recs = []
        for (topic, value, _part), result in zip(records, results, strict=True):
            entry: dict[str, Any] = {"topic": topic, "partition": result["partition"], "offset": result["offset"]}
            try:
                entry["value_text"] = value.decode("utf-8")
            except UnicodeDecodeError:
                entry["value_base64"] = base64.b64encode(value).decode()
            entry["expect"] = {k: v for k, v in result.items() if k not in ("topic", "partition", "offset")}
            recs.append(entry)
        cases.append({"name": name, "note": note, "records": recs})
    return {"description": "Messages as the exchange receives them, and its answer (docs/contract.md "
                           "§11-12): for each case, records read in order from the given topic, partition "
                           "and offset, by a correlator with the registry below (keys.json), "
                           f"{PARTITIONS} partitions, no state before the case, and its clock at "
                           f"{_ts(NOW)}. expect.outcome: accepte, rejete (with reason, and a dead letter) "
                           "or repartitionne (a record on the wrong partition, forwarded, answered later); "
                           "receipt_topic: where the receipt goes (null: none).",
            "registry": registry_content(), "partitions": PARTITIONS, "now": _ts(NOW),
            "reasons_covered": sorted({r["expect"].get("reason") for c in cases for r in c["records"]} - {None}),
            "cases": cases}


# ------------------------------------------------------------------------------------ main
def generate(tmp: Path) -> dict[str, dict[str, Any]]:
    """Every vector file by name, computed now (keys written under ``tmp``)."""
    key_dir = tmp / "keys"
    write_key_dir(key_dir, registry())
    settings = load_settings(var_dir=tmp / "var", key_dir=key_dir)
    signals = signals_file(settings)
    return {
        "keys.json": keys_file(),
        "nir.json": nir_file(settings),
        "pseudonym.json": pseudonym_file(),
        "pseudonym_v2.json": pseudonym_v2_file(),
        "rotation.json": rotation_file(settings),
        "signal_id.json": signal_id_file(),
        "sealed_ref.json": sealed_ref_file(),
        "signature.json": signature_file(),
        "signals.json": signals,
        "sealed_signal.json": sealed_signal_file(signals),
        "consents.json": consents_file(settings),
        "murmur2.json": murmur2_file(settings),
        "bad_messages.json": bad_messages_file(settings),
    }


def dump(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
    differ = []
    for name, document in files.items():
        path = VECTORS / name
        text = dump(document)
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                differ.append(name)
        else:
            VECTORS.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if differ:
        print(f"vectors differ from the code: {', '.join(differ)}; run python -m tests.contract.make_vectors")
        return 1
    print(f"{len(files)} vector files {'checked' if check else 'written'} in {VECTORS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

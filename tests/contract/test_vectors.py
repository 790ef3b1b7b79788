"""The test vectors of ``schemas/vectors/`` against our code, and against a second
implementation written here from ``docs/contract.md`` alone (hashlib/hmac, ``cryptography``,
the ``rfc8785`` package, a plain-Python murmur2).

Both directions matter: our SDK, sealing, signing and partitioner must reproduce every
vector byte for byte (else a change of ours silently breaks every other fund's producer),
and the documented algorithm must too (else the document is wrong). The correlator's engine
must give each bad message the reason the vectors promise.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.core.codec import canonical
from services.core.messages import Signal, parse
from services.core.registry import Registry, save_registry
from services.core.signing import sign
from services.core.types import Fund
from services.correlator.checks import Checker
from services.errors import Rejected
from services.platform.partitioning import murmur2, partition_for
from services.platform.settings import Settings, load_settings
from services.producer import nir as nirs
from services.producer.pseudonym import pseudonym
from services.producer.reveal import reveal_file
from services.producer.sdk import SignalBuilder, SignalInput
from services.producer.seal import TOKEN_RE, Sealer, SignalIds, open_sealed
from tests.contract import make_vectors
from tests.contract.test_schemas_and_models import validator

VECTORS = Path(__file__).resolve().parents[2] / "schemas" / "vectors"


@cache
def vectors(name: str) -> Any:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# -------------------------------------------------- the second implementation (docs/contract.md)
def doc_pseudonym(exchange_key: bytes, nir15: str) -> str:
    return _b64u(hmac.digest(exchange_key, b"help-exchange/pseudonym/v1" + b"\x00" + nir15.encode("ascii"),
                             "sha256"))


def doc_signal_id(id_root: bytes, fund: str, reference: str, category: str, observed_on: str) -> str:
    k_id = hmac.digest(id_root, b"help-exchange/signal-id/v1", "sha256")
    message = b"\x00".join(x.encode("ascii") for x in (fund, reference, category, observed_on))
    return hmac.digest(k_id, message, "sha256")[:16].hex()


def doc_seal(key: bytes, fund: str, key_id: str, nonce: bytes, reference: str, pseudo: dict[str, str]) -> str:
    aad = b"help-exchange/sealed-ref/v1" + b"\x00" + fund.encode() + b"\x00" + key_id.encode()
    binding = hashlib.sha256(f"{pseudo['key_id']}:{pseudo['value']}".encode("ascii")).digest()[:8]
    return _b64u(nonce + AESGCM(key).encrypt(nonce, binding + reference.encode("ascii"), aad))


def doc_murmur2(data: bytes) -> int:
    m, r, mask = 0x5BD1E995, 24, 0xFFFFFFFF
    h = (0x9747B28C ^ len(data)) & mask
    whole = len(data) & ~3
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & mask
        k ^= k >> r
        k = (k * m) & mask
        h = (h * m) & mask
        h ^= k
    tail = data[whole:]
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if len(tail) >= 1:
        h ^= tail[0]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h


def doc_partition(key: bytes, partitions: int) -> int:
    return (doc_murmur2(key) & 0x7FFFFFFF) % partitions


# ----------------------------------------------------------------------------- keys on disk
def keys() -> Any:
    return vectors("keys.json")


def exchange_key(key_id: str) -> bytes:
    return bytes.fromhex(next(k["key_hex"] for k in keys()["exchange_keys"] if k["key_id"] == key_id))


def sealing_key(key_id: str) -> bytes:
    return bytes.fromhex(next(k["key_hex"] for k in keys()["sealing_keys"] if k["key_id"] == key_id))


def write_key_dir_from_vectors(key_dir: Path) -> None:
    """A fund's key folder made from keys.json alone, by the layout docs/contract.md gives."""
    k = keys()
    save_registry(Registry.model_validate(k["registry_json"]["content"]), key_dir / k["registry_json"]["file"])
    for entry in k["exchange_keys"] + k["sealing_keys"]:
        (key_dir / entry["file"]).parent.mkdir(parents=True, exist_ok=True)
        (key_dir / entry["file"]).write_bytes(bytes.fromhex(entry["key_hex"]))
    (key_dir / k["signing_key"]["file"]).write_text(k["signing_key"]["private_pem"])
    (key_dir / k["current_json"]["file"]).write_text(json.dumps(k["current_json"]["content"]))


@pytest.fixture
def vector_settings(tmp_path: Path) -> Settings:
    write_key_dir_from_vectors(tmp_path / "keys")
    return load_settings(var_dir=tmp_path / "var", key_dir=tmp_path / "keys")


def _input(case: dict[str, Any]) -> SignalInput:
    i = case["input"]
    return SignalInput(nir=i["nir"], category=i["categorie"], observed_on=i["date_observation"],
                       departement=i["departement"], reference=i["reference_dossier"],
                       consent_ref=i["consentement"], purpose=i["finalite"])


def _fixed(nonces: list[bytes]) -> Callable[[int], bytes]:
    it = iter(nonces)
    return lambda n: next(it)


# -------------------------------------------------------------------------------- the tests
def test_vector_files_are_what_the_code_generates() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        files = make_vectors.generate(Path(tmp))
    assert set(files) == {p.name for p in VECTORS.glob("*.json")}
    for name, document in files.items():
        assert make_vectors.dump(document) == (VECTORS / name).read_text(encoding="utf-8"), (
            f"{name} is stale: run python -m tests.contract.make_vectors (and say why in the commit: "
            "every other fund's producer is checked against these files)")
        assert document["description"]


def test_keys_are_the_documented_formats() -> None:
    k = keys()
    private = serialization.load_pem_private_key(k["signing_key"]["private_pem"].encode(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    seed = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(k["signing_key"]["seed_hex"]))
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert raw == seed.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert _b64u(raw) == k["signing_key"]["public_b64url"]
    for entry in k["exchange_keys"] + k["sealing_keys"]:
        assert len(bytes.fromhex(entry["key_hex"])) == 32
    reg = Registry.model_validate(k["registry_json"]["content"])
    assert reg.current_exchange_key_id() == k["registry_json"]["current_exchange_key_id"]
    # the documented choice: the active entry with the greatest created_at, then key_id
    active = [e for e in k["registry_json"]["content"]["exchange_keys"] if e["status"] == "active"]
    assert max(active, key=lambda e: (e["created_at"], e["key_id"]))["key_id"] == reg.current_exchange_key_id()
    assert [e["key_id"] for e in k["exchange_keys"] if e["current"]] == [reg.current_exchange_key_id()]


def test_nir_normalisation(vector_settings: Settings) -> None:
    builder = SignalBuilder(vector_settings, Fund.CAF)
    for case in vectors("nir.json")["cases"]:
        if case["stage"] == "nir":
            if "normalised" in case:
                assert nirs.normalise(case["input"]) == case["normalised"], case
                assert len(case["normalised"]) == nirs.NIR_LENGTH
            else:
                with pytest.raises(Rejected) as exc:
                    nirs.normalise(case["input"])
                assert exc.value.reason.value == case["reason"], case
        else:
            rec = SignalInput(nir=case["input"], category="separation", observed_on="2026-11-02",
                              departement="35", reference="DOS-2026-00042")
            with pytest.raises(Rejected) as rejected:
                builder.check(rec, make_vectors.TODAY)
            assert (rejected.value.reason.value, rejected.value.field) == (case["reason"], case["field"]), case


def test_pseudonyms() -> None:
    v = vectors("pseudonym.json")
    assert bytes.fromhex(v["prefix_hex"]) == b"help-exchange/pseudonym/v1\x00"
    for case in v["cases"]:
        key = exchange_key(case["exchange_key_id"])
        assert bytes.fromhex(case["hmac_input_hex"]) == bytes.fromhex(v["prefix_hex"]) + case["nir"].encode()
        assert case["hmac_input_length"] == 42
        assert pseudonym(case["exchange_key_id"], key, case["nir"]) == case["pseudonym"]
        assert doc_pseudonym(key, case["nir"]) == case["pseudonym"]["value"]
        assert len(case["pseudonym"]["value"]) == 43
    wrong = v["wrong"]
    assert wrong["bare_hmac_without_prefix"] != doc_pseudonym(exchange_key(make_vectors.EXCHANGE_KEY_ID),
                                                              wrong["nir"])


def test_signal_ids() -> None:
    v = vectors("signal_id.json")
    id_root = sealing_key(v["id_root_key_id"])
    assert keys()["current_json"]["content"]["id_root"] == v["id_root_key_id"]
    assert hmac.digest(id_root, b"help-exchange/signal-id/v1", "sha256").hex() == v["k_id_hex"]
    ids = SignalIds(Fund(keys()["fund"]), id_root)
    for case in v["cases"]:
        day = dt.date.fromisoformat(case["observed_on"])
        assert ids.signal_id(case["reference"], case["category"], day) == case["signal_id"]
        assert doc_signal_id(id_root, case["fund"], case["reference"], case["category"],
                             case["observed_on"]) == case["signal_id"]
        assert bytes.fromhex(case["message_hex"]).split(b"\x00") == [
            case[k].encode() for k in ("fund", "reference", "category", "observed_on")]


def test_sealed_refs_and_tokens(tmp_path: Path) -> None:
    v = vectors("sealed_ref.json")
    fund = Fund(v["fund"])
    for case in v["cases"]:
        key = sealing_key(case["sealing_key_id"])
        nonce = bytes.fromhex(case["nonce_hex"])
        sealer = Sealer(fund, case["sealing_key_id"], key, nonces=_fixed([nonce]))
        assert sealer.seal(case["reference"], case["pseudonym"]) == case["sealed_ref"]
        assert doc_seal(key, v["fund"], case["sealing_key_id"], nonce, case["reference"],
                        case["pseudonym"]) == case["sealed_ref"]["value"]
        raw = _unb64u(case["sealed_ref"]["value"])
        plain = AESGCM(key).decrypt(raw[:12], raw[12:], bytes.fromhex(case["associated_data_hex"]))
        assert plain.hex() == case["plaintext_hex"]
        assert plain[8:].decode() == case["reference"]
        assert open_sealed(fund, {case["sealing_key_id"]: key}, case["sealed_ref"]["key_id"],
                           case["sealed_ref"]["value"], pseudonym=case["pseudonym"]) == case["reference"]
        match = TOKEN_RE.fullmatch(case["token"])
        assert match is not None and (match["key_id"], match["value"]) == (
            case["sealed_ref"]["key_id"], case["sealed_ref"]["value"])
    # `reveal` opens the tokens of an export, from the key folder of keys.json
    write_key_dir_from_vectors(tmp_path / "keys")
    export = tmp_path / "revue.csv"
    export.write_text("".join(f"35-2026-11-{n:04d};{c['token']};fin\n" for n, c in enumerate(v["cases"])))
    counts = reveal_file(tmp_path / "keys", fund, export, tmp_path / "revue-caf.csv")
    assert counts.opened == len(v["cases"])
    assert (tmp_path / "revue-caf.csv").read_text() == "".join(
        f"35-2026-11-{n:04d};{c['reference']};fin\n" for n, c in enumerate(v["cases"]))


def test_canonical_form_and_signatures() -> None:
    v = vectors("signature.json")
    k = keys()
    private = serialization.load_pem_private_key(k["signing_key"]["private_pem"].encode(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    public = Ed25519PublicKey.from_public_bytes(_unb64u(k["signing_key"]["public_b64url"]))
    for case in v["cases"]:
        data = case["canonical_text"].encode("utf-8")
        assert bytes.fromhex(case["canonical_hex"]) == data
        assert rfc8785.dumps(case["message"]) == data
        assert canonical(case["message"]) == data
        public.verify(_unb64u(case["signature"]["value"]), data)  # raises if not
        assert sign(case["message"], private, v["signing_key_id"])["signature"] == case["signature"]
        assert case["signature"] == {"key_id": v["signing_key_id"], "alg": "Ed25519",
                                     "value": _b64u(private.sign(data))}


def test_whole_signals_from_the_sdk_and_from_the_document(vector_settings: Settings) -> None:
    v = vectors("signals.json")
    today = dt.date.fromisoformat(v["today"])
    now = dt.datetime.fromisoformat(v["now"])
    builder = SignalBuilder(vector_settings, Fund(v["fund"]))
    builder._sealer = Sealer(Fund(v["fund"]), builder._sealer.key_id,
                             sealing_key(keys()["current_json"]["content"]["sealing"]),
                             nonces=_fixed([bytes.fromhex(c["nonce_hex"]) for c in v["cases"]]))
    k = keys()
    private = serialization.load_pem_private_key(k["signing_key"]["private_pem"].encode(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    current = k["current_json"]["content"]
    xk = k["registry_json"]["current_exchange_key_id"]
    for case in v["cases"]:
        row = builder.build(_input(case), today=today, now=now, partitions=v["partitions"])
        assert row.value == case["wire_text"].encode("utf-8") == base64.b64decode(case["wire_base64"])
        assert row.key == case["kafka_key_text"].encode("ascii")
        assert row.partition == case["partition"] == partition_for(case["kafka_key_text"], v["partitions"])
        assert (row.signal_id, case["topic"]) == (case["signal_id"], f"help.signals.{v['fund']}.v1")
        wire = json.loads(case["wire_text"])
        assert validator("signal").is_valid(wire)
        parse(Signal, row.value)
        # The same message from the document alone.
        pseudo = {"key_id": xk, "value": doc_pseudonym(exchange_key(xk), case["nir_normalised"])}
        assert wire["pseudonym"] == pseudo
        assert wire["signal_id"] == doc_signal_id(sealing_key(current["id_root"]), v["fund"],
                                                  case["input"]["reference_dossier"], wire["category"],
                                                  wire["observed_on"])
        assert wire["sealed_ref"] == {"key_id": current["sealing"], "value": doc_seal(
            sealing_key(current["sealing"]), v["fund"], current["sealing"], bytes.fromhex(case["nonce_hex"]),
            case["input"]["reference_dossier"], pseudo)}
        unsigned = {m: x for m, x in wire.items() if m != "signature"}
        assert rfc8785.dumps(unsigned) == case["canonical_unsigned_text"].encode()
        assert wire["signature"] == {"key_id": current["signing"], "alg": "Ed25519",
                                     "value": _b64u(private.sign(rfc8785.dumps(unsigned)))}
        assert rfc8785.dumps(wire) == row.value  # the wire form is the canonical form, signature included
        assert doc_partition(row.key, v["partitions"]) == case["partition"]
    for case in v["rejected"]:
        with pytest.raises(Rejected) as exc:
            builder.build(_input(case), today=today, now=now)
        assert (exc.value.reason.value, exc.value.field) == (case["reason"], case["field"]), case


def test_consent_events(vector_settings: Settings) -> None:
    from services.producer.consent import ConsentBuilder, ConsentInput

    v = vectors("consents.json")
    builder = ConsentBuilder(vector_settings, Fund.CAF)
    k = keys()
    public = Ed25519PublicKey.from_public_bytes(_unb64u(k["signing_key"]["public_b64url"]))
    xk = k["registry_json"]["current_exchange_key_id"]
    id_key = hmac.digest(sealing_key(k["current_json"]["content"]["id_root"]), b"help-exchange/consent-id/v1",
                         "sha256")
    for case in v["cases"]:
        row = builder.build(ConsentInput(**case["input"]), case["kind"], now=make_vectors.NOW,
                            today=make_vectors.TODAY)
        assert row.value == case["wire_text"].encode() and row.signal_id == case["event_id"]
        assert row.key == case["kafka_key_text"].encode() and case["topic"] == "help.consents.v1"
        wire = json.loads(case["wire_text"])
        assert validator("consent").is_valid(wire)
        # from the document
        pseudo = {"key_id": xk, "value": doc_pseudonym(exchange_key(xk), case["nir_normalised"])}
        assert wire["pseudonym"] == pseudo and case["kafka_key_text"] == pseudo["value"]
        raw_date = case["input"]["date"]
        day = (dt.datetime.strptime(raw_date, "%d/%m/%Y").date() if "/" in raw_date
               else dt.date.fromisoformat(raw_date) if raw_date else make_vectors.TODAY)
        message = "\x00".join((wire["fund"], wire["kind"], xk, pseudo["value"], wire["consent_ref"],
                               day.isoformat())).encode()
        assert hmac.digest(id_key, message, "sha256")[:16].hex() == case["event_id"]
        # every kind takes effect when recorded (§10), whatever the form's date
        assert wire["effective_at"] == make_vectors.NOW.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        unsigned = {m: x for m, x in wire.items() if m != "signature"}
        assert rfc8785.dumps(unsigned) == case["canonical_unsigned_text"].encode()
        public.verify(_unb64u(wire["signature"]["value"]), rfc8785.dumps(unsigned))
        assert doc_partition(row.key, 8) == case["partition"]


#: Kafka's own expectations (UtilsTest.testMurmur2 of the Java client), as signed Java ints.
KAFKA_MURMUR2 = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
                 b"abc": 479470107}


def test_murmur2_partitions() -> None:
    cases = vectors("murmur2.json")["cases"]
    for case in cases:
        key = bytes.fromhex(case["key_hex"])
        assert murmur2(key) == doc_murmur2(key) == case["murmur2_unsigned"]
        assert case["murmur2_java_int"] == (case["murmur2_unsigned"] ^ 0x80000000) - 0x80000000
        for n, p in case["partitions"].items():
            assert doc_partition(key, int(n)) == p
            if key.isascii():
                assert partition_for(key.decode(), int(n)) == p
    by_key = {bytes.fromhex(c["key_hex"]): c["murmur2_java_int"] for c in cases}
    for key, java in KAFKA_MURMUR2.items():
        assert by_key[key] == java


def test_bad_messages_get_their_reason_from_the_engine_and_the_checker() -> None:
    v = vectors("bad_messages.json")
    reg = Registry.model_validate(v["registry"])
    assert dt.datetime.fromisoformat(v["now"]) == make_vectors.NOW
    checker = Checker(reg, v["partitions"])
    covered = set()
    for case in v["cases"]:
        records = []
        for r in case["records"]:
            value = r["value_text"].encode() if "value_text" in r else base64.b64decode(r["value_base64"])
            records.append((r["topic"], value, r["partition"]))
        results = make_vectors.run_engine(reg, records)
        for r, (topic, value, _p), result in zip(case["records"], records, results, strict=True):
            assert result["partition"] == r["partition"] and result["offset"] == r["offset"]
            expect = {k: x for k, x in result.items() if k not in ("topic", "partition", "offset")}
            assert expect == r["expect"], case["name"]
            covered.add(expect.get("reason"))
            verdict = checker.check(value, topic)
            if verdict.reason is not None:  # a stateless refusal: the checker alone says it
                assert verdict.reason.value == r["expect"]["reason"], case["name"]
    assert covered - {None} == set(v["reasons_covered"])


# ------------------------------------------------------------------ sealed signals (§2.1, §4.4)
def doc_fund_key(data_key: bytes, fund: str) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"help-exchange/signal-key/v1\x00" + fund.encode()).derive(data_key)


def test_sealed_signals_from_the_document_and_from_our_code() -> None:
    from services.core.messages import SealedSignal
    from services.core.signal_seal import fund_key, open_members, seal_message

    v = vectors("sealed_signal.json")
    k = keys()
    private = serialization.load_pem_private_key(k["signing_key"]["private_pem"].encode(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    for case in v["cases"]:
        signal = json.loads(case["signal"])
        derived = doc_fund_key(bytes.fromhex(case["data_key_hex"]), v["fund"])
        ours_key = fund_key(bytes.fromhex(case["data_key_hex"]), Fund(v["fund"]))
        assert derived == bytes.fromhex(case["fund_key_hex"]) == ours_key
        assert case["key_endpoint_answer"]["key"] == _b64u(derived)
        plain = rfc8785.dumps({m: signal[m] for m in ("category", "observed_on", "territory", "sealed_ref")})
        assert plain == case["plaintext_text"].encode()
        subject = bytes.fromhex(case["subject_hex"])
        aad = (b"help-exchange/signal/v1\x00" + case["topic"].encode() + b"\x00" + signal["signal_id"].encode()
               + b"\x00" + subject + case["epoch"].to_bytes(4, "big"))
        assert aad.hex() == case["associated_data_hex"]
        nonce = bytes.fromhex(case["nonce_hex"])
        sealed_value = AESGCM(derived).encrypt(nonce, plain, aad)
        assert sealed_value.hex() == case["ciphertext_and_tag_hex"]
        assert case["sealed"] == {"alg": "A256GCM", "subject": subject.hex(), "epoch": case["epoch"],
                                  "value": _b64u(nonce + sealed_value)}
        unsigned = {m: x for m, x in signal.items() if m not in ("category", "observed_on", "territory",
                                                                  "sealed_ref", "signature")}
        unsigned["sealed"] = case["sealed"]
        assert rfc8785.dumps(unsigned) == case["canonical_unsigned_text"].encode()
        assert rfc8785.dumps(sign(unsigned, private, k["signing_key"]["key_id"])) == case["wire_text"].encode()
        # our code: the same sealed member, and it opens back to the four members
        ours = seal_message(derived, case["topic"], subject, case["epoch"],
                            {m: x for m, x in signal.items() if m != "signature"}, nonce=nonce)
        assert ours["sealed"] == case["sealed"]
        assert validator("sealed_signal").is_valid(json.loads(case["wire_text"]))
        wire = parse(SealedSignal, case["wire_text"])
        opened = open_members(derived, case["topic"], signal["signal_id"], wire.sealed)
        assert opened is not None and opened.model_dump(mode="json") == {
            m: signal[m] for m in ("category", "observed_on", "territory", "sealed_ref")}
        assert open_members(derived, "help.signals.urssaf.v1", signal["signal_id"], wire.sealed) is None

"""The signing-key life cycle, offline: ``keys register`` (each accepted format, each refusal),
``keys retire`` (and its guards), the registry's signature, the outbox's reconciliation of
receipts, and ``publish``'s warning when its key is not active (docs/keys.md)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.app.cli import cli
from services.core.reasons import Reason
from services.core.registry import (
    fingerprint,
    load_registry,
    load_signer_public,
    load_verified_registry,
    registry_path,
    signature_path,
    signer_private_path,
    signer_public_path,
)
from services.core.signing import b64u, verify
from services.core.types import KEY_ID_PATTERN, Fund
from services.errors import ConfigurationError, InputError
from services.platform.settings import Settings
from services.platform.topics import signal_topic
from services.producer.keys import (
    init_exchange_key,
    init_fund_keys,
    load_fund_secrets,
    parse_public_key,
    register_signing_key,
    retire_signing_key,
)
from services.producer.outbox import Outbox, Row
from services.producer.publish import Summary
from services.producer.receipts import Seen, reconcile, resign
from services.producer.sdk import SignalBuilder, SignalInput, today_paris
from tests.support.extracts import make_nir

NOW = dt.datetime(2026, 12, 7, 9, 30, tzinfo=dt.UTC)


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _pem_public(key: object) -> bytes:
    return key.public_key().public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def run_cli(settings: Settings, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), obj={"settings": settings}, catch_exceptions=False)
    return result.exit_code, result.output


# --------------------------------------------------------------------------- formats
def test_every_accepted_format_gives_the_raw_key() -> None:
    key = Ed25519PrivateKey.generate()
    raw = _raw(key)
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64u(raw)}
    forms = {
        "pem": _pem_public(key),
        "pem with CRLF and blank lines": b"\r\n" + _pem_public(key).replace(b"\n", b"\r\n") + b"\r\n",
        "der": der,
        "raw": raw,
        "base64url": b64u(raw).encode() + b"\n",
        "base64 padded": base64.b64encode(raw),
        "jwk": json.dumps(jwk).encode(),
        "openssh": key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                 serialization.PublicFormat.OpenSSH) + b" agent@caf\n",
    }
    for name, data in forms.items():
        assert parse_public_key(data) == (raw, None), name
    assert parse_public_key(json.dumps({**jwk, "kid": "caf-sig-ext-0001"}).encode()) == (raw, "caf-sig-ext-0001")


@pytest.mark.parametrize("name", ["rsa", "p256", "ssh-rsa", "rsa-jwk", "p256-jwk", "short", "long", "empty", "garbage",
                                  "pem-garbage", "jwk-bad-x"])
def test_other_keys_and_shapes_are_refused_with_a_clear_line(name: str) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    p256 = ec.generate_private_key(ec.SECP256R1())
    data = {
        "rsa": _pem_public(rsa_key),
        "p256": _pem_public(p256),
        "ssh-rsa": rsa_key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH),
        "rsa-jwk": json.dumps({"kty": "RSA", "n": "AQAB", "e": "AQAB"}).encode(),
        "p256-jwk": json.dumps({"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}).encode(),
        "short": b64u(b"\x01" * 31).encode(),
        "long": b64u(b"\x01" * 33).encode(),
        "empty": b"\n",
        "garbage": b"not a key at all!",
        "pem-garbage": b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        "jwk-bad-x": json.dumps({"kty": "OKP", "crv": "Ed25519", "x": b64u(b"\x01" * 16)}).encode(),
    }[name]
    with pytest.raises(InputError) as err:
        parse_public_key(data)
    assert err.value.exit_code == 2 and err.value.hint
    assert "\n" not in err.value.what and "refusée" in err.value.what
    if name in ("rsa", "ssh-rsa", "rsa-jwk"):
        assert "RSA" in err.value.what
    if name == "p256":
        assert "P-256" in err.value.what or "secp256r1" in err.value.what


def test_a_private_key_given_by_mistake_is_refused_and_never_echoed(tmp_path: Path,
                                                                     offline_settings: Settings) -> None:
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    jwk = json.dumps({"kty": "OKP", "crv": "Ed25519", "x": b64u(_raw(key)), "d": b64u(seed)}).encode()
    libsodium = b64u(seed + _raw(key)).encode()
    for data in (pem, der, jwk, libsodium):
        path = tmp_path / "given.key"
        path.write_bytes(data)
        code, out = run_cli(offline_settings, "keys", "register", "--fund", "caf", "--public-key", str(path))
        assert code == 2, out
        assert "PRIVÉE" in out
        for secret in (b64u(seed), base64.b64encode(seed).decode(), seed.hex(), pem.decode().splitlines()[1]):
            assert secret not in out
    assert not registry_path(offline_settings.key_dir).exists()


# --------------------------------------------------------------------------- register
def test_register_prints_id_and_fingerprint_and_is_idempotent(tmp_path: Path, offline_settings: Settings) -> None:
    key_dir = offline_settings.key_dir
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "caf.pub.pem"
    path.write_bytes(_pem_public(key))
    code, out = run_cli(offline_settings, "keys", "register", "--fund", "caf", "--public-key", str(path))
    assert code == 0, out
    entry = load_registry(registry_path(key_dir)).funds[Fund.CAF].signing_keys[0]
    assert entry.status == "active" and entry.registered_at and entry.raw() == _raw(key)
    import re

    assert re.fullmatch(KEY_ID_PATTERN, entry.key_id) and re.fullmatch(r"caf-sig-\d{8}-[0-9a-f]{4}", entry.key_id)
    digest = hashlib.sha256(_raw(key)).hexdigest()
    assert entry.key_id in out and fingerprint(_raw(key)) in out
    assert fingerprint(_raw(key)).replace("sha256:", "").replace(" ", "") == digest
    before = registry_path(key_dir).read_bytes()
    code, out = run_cli(offline_settings, "keys", "register", "--fund", "caf", "--public-key", str(path),
                        "--key-id", entry.key_id)
    assert code == 0 and "déjà enregistrée" in out and registry_path(key_dir).read_bytes() == before
    # the same id with another key, the same key under another id or fund: refused
    other = tmp_path / "other.pem"
    other.write_bytes(_pem_public(Ed25519PrivateKey.generate()))
    for args in (("--fund", "caf", "--public-key", str(other), "--key-id", entry.key_id),
                 ("--fund", "caf", "--public-key", str(path), "--key-id", "caf-sig-other-0001"),
                 ("--fund", "cpam", "--public-key", str(path))):
        code, out = run_cli(offline_settings, "keys", "register", *args)
        assert code == 2, (args, out)
    assert registry_path(key_dir).read_bytes() == before


def test_register_takes_the_jwk_kid_and_refuses_a_bad_key_id(tmp_path: Path, offline_settings: Settings) -> None:
    key = Ed25519PrivateKey.generate()
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64u(_raw(key)), "kid": "urssaf-sig-hsm-0001"}
    done = register_signing_key(offline_settings.key_dir, Fund.URSSAF, json.dumps(jwk).encode(), now=NOW)
    assert done.key_id == "urssaf-sig-hsm-0001" and done.new
    with pytest.raises(InputError):
        register_signing_key(offline_settings.key_dir, Fund.URSSAF, _pem_public(Ed25519PrivateKey.generate()),
                             key_id="URSSAF key 1")


# --------------------------------------------------------------------------- retire
def test_retire_guards_and_marks_the_time(offline_settings: Settings) -> None:
    key_dir = offline_settings.key_dir
    first = init_fund_keys(key_dir, Fund.CAF).signing
    with pytest.raises(InputError, match="dernière clé"):
        retire_signing_key(key_dir, Fund.CAF, first)
    second = init_fund_keys(key_dir, Fund.CAF, rotate=True).signing
    with pytest.raises(InputError, match="en vigueur"):
        retire_signing_key(key_dir, Fund.CAF, second)
    with pytest.raises(InputError):
        retire_signing_key(key_dir, Fund.CAF, "caf-sig-nope-0000")
    assert retire_signing_key(key_dir, Fund.CAF, first, now=NOW)
    assert not retire_signing_key(key_dir, Fund.CAF, first)  # already: nothing changes
    reg = load_registry(registry_path(key_dir))
    entry = reg.signing_key_entry(Fund.CAF, first)
    assert entry is not None and entry.status == "retired" and entry.retired_at == "2026-12-07T09:30:00.000000Z"
    assert reg.signing_key(Fund.CAF, first) is None and reg.signing_key_retired(Fund.CAF, first)
    code, out = run_cli(offline_settings, "keys", "retire", "--fund", "caf", "--key-id", second)
    assert code == 2 and "--force" in out
    code, out = run_cli(offline_settings, "keys", "retire", "--fund", "caf", "--key-id", second, "--force")
    assert code == 0 and "retirée" in out
    code, out = run_cli(offline_settings, "keys", "list")
    assert code == 0 and out.count("retired") == 2 and "sha256:" in out


# --------------------------------------------------------------------------- the registry's signature
def test_every_write_signs_the_registry_and_a_change_by_hand_is_refused(offline_settings: Settings) -> None:
    key_dir = offline_settings.key_dir
    init_exchange_key(key_dir)
    init_fund_keys(key_dir, Fund.CAF)
    path = registry_path(key_dir)
    assert stat.S_IMODE(signer_private_path(key_dir).stat().st_mode) == 0o600
    signer = load_signer_public(signer_public_path(key_dir))
    assert load_verified_registry(path, signer) == load_registry(path)
    # a key added by hand: refused
    doc = json.loads(path.read_text())
    doc["funds"]["caf"]["signing_keys"].append(
        {"key_id": "caf-sig-evil-0001", "public_key": b64u(_raw(Ed25519PrivateKey.generate()))})
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigurationError, match="does not match"):
        load_verified_registry(path, signer)
    # re-signed on purpose by the operator: taken
    code, _ = run_cli(offline_settings, "keys", "sign-registry")
    assert code == 0
    assert load_verified_registry(path, signer).signing_key_entry(Fund.CAF, "caf-sig-evil-0001") is not None
    # another signer, a missing signature: refused
    with pytest.raises(ConfigurationError):
        load_verified_registry(path, Ed25519PrivateKey.generate().public_key())
    signature_path(path).unlink()
    with pytest.raises(ConfigurationError, match="missing"):
        load_verified_registry(path, signer)
    # the pinned public key is never overwritten by a later write
    pinned = signer_public_path(key_dir).read_bytes()
    init_exchange_key(key_dir)
    assert signer_public_path(key_dir).read_bytes() == pinned


def test_an_old_registry_without_the_new_fields_still_loads(tmp_path: Path) -> None:
    old = {"version": 1, "funds": {"caf": {"signing_keys": [
        {"key_id": "caf-sig-20261123-1a2b", "public_key": "A" * 43, "status": "retired"}]}},
        "exchange_keys": [{"key_id": "xk-20261123-3c4d", "status": "active", "created_at": "2026-11-23T10:00:00Z"}]}
    path = tmp_path / "registry.json"
    path.write_text(json.dumps(old))
    reg = load_registry(path)
    assert reg.signing_key_retired(Fund.CAF, "caf-sig-20261123-1a2b")


# --------------------------------------------------------------------------- publish and reconciliation
def _row(builder: SignalBuilder, n: int) -> Row:
    import random

    rng = random.Random(n)
    return builder.build(SignalInput(nir=make_nir(rng, "35"), category="impaye_loyer",
                                     observed_on=today_paris() - dt.timedelta(days=3), departement="35",
                                     reference=f"CAF35-{n:06d}"))


def test_publish_warns_when_its_key_is_not_active(offline_settings: Settings) -> None:
    key_dir = offline_settings.key_dir
    init_exchange_key(key_dir)
    first = init_fund_keys(key_dir, Fund.CAF).signing
    assert SignalBuilder(offline_settings, Fund.CAF).key_warning is None
    init_fund_keys(key_dir, Fund.CAF, rotate=True)
    retire_signing_key(key_dir, Fund.CAF, first)
    # the fund's current.json back on the retired key (an old copy of the key folder)
    current = key_dir / "funds" / "caf" / "current.json"
    doc = json.loads(current.read_text())
    current.write_text(json.dumps({**doc, "signing": first}))
    warning = SignalBuilder(offline_settings, Fund.CAF).key_warning
    assert warning is not None and "retirée" in warning
    summary = Summary(input=Path("x.csv"), new=3, key_warning=warning)
    assert summary.exit_code == 1 and any("ATTENTION" in line for line in summary.lines())


def test_reconciliation_settles_requeues_and_resigns(offline_settings: Settings) -> None:
    key_dir = offline_settings.key_dir
    init_exchange_key(key_dir)
    old = init_fund_keys(key_dir, Fund.CAF).signing
    builder = SignalBuilder(offline_settings, Fund.CAF)
    rows = [_row(builder, n) for n in range(6)]
    topic = signal_topic(Fund.CAF)
    with Outbox.for_fund(offline_settings.var_dir, Fund.CAF) as box:
        box.add(rows)
        box.mark_sent([r.signal_id for r in rows], topic, {0: 5}, [(0, n) for n in range(6)])
    new = init_fund_keys(key_dir, Fund.CAF, rotate=True).signing
    retire_signing_key(key_dir, Fund.CAF, old)

    def seen(n: int, reason: str | None, offset: int | None = None) -> Seen:
        return Seen(reason is None, reason, topic, 0, n if offset is None else offset)

    receipts = {
        rows[0].signal_id: [seen(0, None)],
        rows[1].signal_id: [seen(1, Reason.CLE_SIGNATURE_INCONNUE.value)],
        rows[2].signal_id: [seen(2, Reason.CLE_SIGNATURE_RETIREE.value)],
        rows[3].signal_id: [seen(3, Reason.CATEGORIE_MEDICALE.value)],
        rows[4].signal_id: [seen(4, Reason.CLE_SIGNATURE_INCONNUE.value, offset=99)],  # another sending
        # rows[5]: no receipt yet
    }
    result = reconcile(offline_settings, Fund.CAF, receipts)
    assert (result.accepted, result.requeued, result.awaiting) == (1, 2, 2)
    assert result.unknown == {old: 1} and result.resigned == {old: 1} and result.refused == {"categorie_medicale": 1}
    text = "\n".join(result.lines())
    assert "inconnue de l'échange" in text and "keys register" in text and "outbox flush --fund caf" in text
    assert f"re-signés avec la clé en vigueur {new}" in text and "définitivement" in text
    with Outbox.for_fund(offline_settings.var_dir, Fund.CAF) as box:
        st = box.status()
        assert (st.pending, st.accepted, st.refused, st.awaiting_receipt) == (2, 1, 1, 2)
        pending = {p.signal_id: p.value for p in box.pending(10)}
    assert pending[rows[1].signal_id] == rows[1].value  # unknown key: the same bytes again
    resigned = json.loads(pending[rows[2].signal_id])
    original = json.loads(rows[2].value)
    assert resigned["signature"]["key_id"] == new and resigned["signal_id"] == original["signal_id"]
    assert {k: v for k, v in resigned.items() if k != "signature"} == {
        k: v for k, v in original.items() if k != "signature"}
    registry = load_registry(registry_path(key_dir))
    public = registry.signing_key(Fund.CAF, new)
    assert public is not None and verify(resigned, public)
    # a second pass with the same receipts changes nothing more
    again = reconcile(offline_settings, Fund.CAF, receipts)
    assert (again.accepted, again.requeued, again.awaiting) == (0, 0, 2)


def test_a_retired_key_that_is_still_current_is_not_resigned(offline_settings: Settings) -> None:
    key_dir = offline_settings.key_dir
    init_exchange_key(key_dir)
    only = init_fund_keys(key_dir, Fund.CAF).signing
    builder = SignalBuilder(offline_settings, Fund.CAF)
    row = _row(builder, 1)
    topic = signal_topic(Fund.CAF)
    with Outbox.for_fund(offline_settings.var_dir, Fund.CAF) as box:
        box.add([row])
        box.mark_sent([row.signal_id], topic, {0: 7}, [(0, 7)])
    retire_signing_key(key_dir, Fund.CAF, only, force=True)
    result = reconcile(offline_settings, Fund.CAF,
                       {row.signal_id: [Seen(False, Reason.CLE_SIGNATURE_RETIREE.value, topic, 0, 7)]})
    assert result.retired_current == {only: 1} and result.requeued == 0
    assert "--rotate" in "\n".join(result.lines())
    secrets = load_fund_secrets(key_dir, Fund.CAF)
    assert json.loads(resign(row.value, secrets.signing_key, "caf-sig-x-1"))["signature"]["key_id"] == "caf-sig-x-1"


def test_sent_signals_keep_their_bytes_other_messages_do_not(offline_settings: Settings, tmp_path: Path) -> None:
    init_exchange_key(offline_settings.key_dir)
    init_fund_keys(offline_settings.key_dir, Fund.CAF)
    row = _row(SignalBuilder(offline_settings, Fund.CAF), 3)
    for keep, path in ((True, tmp_path / "signals.db"), (False, tmp_path / "reveals.db")):
        with Outbox(path) as box:
            box.add([row])
            box.mark_sent([row.signal_id], "help.x.v1", {2: 9}, [(2, 9)], keep_payload=keep)
            (sent,) = box.awaiting_receipt()
            assert (sent.partition, sent.offset) == (2, 9)
            assert sent.value == (row.value if keep else None)

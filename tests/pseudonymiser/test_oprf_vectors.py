"""RFC 9497 test vectors (Appendix A.1.2, VOPRF mode, ristretto255-SHA512) and the batch
properties scheme v2 relies on (one proof per batch, refused under another key)."""

from __future__ import annotations

import pytest

from services.core import oprf

# RFC 9497 A.1.2: Seed, KeyInfo, pkSm, and the Output of test vectors 1 and 2 (vector 3 is
# their batch: same outputs, one proof).
SEED = bytes.fromhex("a3" * 32)
KEY_INFO = bytes.fromhex("74657374206b6579")  # "test key"
PK_SM = "c803e2cc6b05fc15064549b5920659ca4a77b2cca6f04f6b357009335476ad4e"
VECTORS = [
    ("00", "b58cfbe118e0cb94d79b5fd6a6dafb98764dff49c14e1770b566e42402da1a7d"
           "a4d8527693914139caee5bd03903af43a491351d23b430948dd50cde10d32b3c"),
    ("5a" * 17, "8a9a2f3c7f085b65933594309041fc1898d42d0858e59f90814ae90571a6df60"
                "356f4610bf816f27afdd84f47719e480906d27ecd994985890e5f539e7ea74b6"),
]


def test_derive_key_pair_gives_the_rfc_public_key() -> None:
    assert oprf.Evaluator.from_seed("pk-00000000", SEED, KEY_INFO).public_key.hex() == PK_SM


@pytest.mark.parametrize(("data", "output"), VECTORS)
def test_evaluate_gives_the_rfc_output(data: str, output: str) -> None:
    ev = oprf.Evaluator.from_seed("pk-00000000", SEED, KEY_INFO)
    assert ev.evaluate(bytes.fromhex(data)).hex() == output


def test_blinded_batch_with_one_proof_gives_the_rfc_outputs() -> None:
    """RFC vector 3 shape: both inputs in one batch, one proof, finalised by the client."""
    ev = oprf.Evaluator.from_seed("pk-00000000", SEED, KEY_INFO)
    items = [oprf.blind(bytes.fromhex(d)) for d, _ in VECTORS]
    answer = ev.evaluate_batch([b.element for b in items])
    assert len(answer) == 32 * len(items) + 64  # the elements and ONE proof (c, s)
    assert [o.hex() for o in oprf.finalize_batch(items, answer, ev.public_key)] == [o for _, o in VECTORS]
    # Blinding is random: the same input never shows the same element twice.
    assert oprf.blind(b"\x00").element != oprf.blind(b"\x00").element


def test_an_answer_under_another_key_is_refused() -> None:
    honest = oprf.Evaluator.from_seed("pk-00000000", SEED, KEY_INFO)
    tagging = oprf.Evaluator.from_seed("pk-11111111", bytes(32), KEY_INFO)
    items = [oprf.blind(b"185057800608491")]
    answer = tagging.evaluate_batch([b.element for b in items])
    with pytest.raises(oprf.OprfError):
        oprf.finalize_batch(items, answer, honest.public_key)
    with pytest.raises(oprf.OprfError):  # a tampered answer too
        good = honest.evaluate_batch([b.element for b in items])
        oprf.finalize_batch(items, good[:-1] + bytes([good[-1] ^ 1]), honest.public_key)


@pytest.mark.parametrize("element", [bytes(32), b"\xff" * 32, b"\x01" * 31, b""])
def test_identity_and_malformed_elements_are_refused(element: bytes) -> None:
    ev = oprf.Evaluator.from_seed("pk-00000000", SEED, KEY_INFO)
    with pytest.raises(oprf.OprfError):
        ev.evaluate_batch([oprf.blind(b"x").element, element])


def test_the_published_v2_vectors_hold_the_rfc_ones() -> None:
    """schemas/vectors/pseudonym_v2.json carries the RFC's vectors as the RFC prints them."""
    import json
    from pathlib import Path

    doc = json.loads((Path(__file__).parents[2] / "schemas" / "vectors" / "pseudonym_v2.json").read_text())
    rfc = doc["rfc9497"]
    assert (rfc["seed_hex"], rfc["key_info_hex"], rfc["pkSm_hex"]) == (SEED.hex(), KEY_INFO.hex(), PK_SM)
    assert [(c["input_hex"], c["output_hex"]) for c in rfc["cases"]] == VECTORS

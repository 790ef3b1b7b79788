"""RFC 9497 VOPRF, suite ristretto255-SHA512, verifiable mode: the pseudonym scheme v2.

A thin layer over the ``voprf`` package (Rust bindings of an RFC 9497 implementation, checked
against the RFC's test vectors in ``tests/pseudonymiser/test_oprf_vectors.py``). Nothing here
holds a key of its own: the server side (:class:`Evaluator`) lives only in the
pseudonymisation service; the client side (:func:`blind`, :func:`finalize_batch`) at the
funds. A batch is answered with **one** DLEQ proof (RFC 9497 §2.2.1, ``BlindEvaluateBatch``).

Wire forms (bytes): a blinded element 32 bytes; a batch answer
``VerifiableBatchOutput.serialize()`` (32 bytes per evaluated element and one 64-byte proof, as the
library writes them); a public key 32 bytes (``SerializeElement(pkS)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from voprf import ristretto as _r

from services.core.signing import b64u

SUITE = "ristretto255-SHA512"
ELEMENT_BYTES = 32
SEED_BYTES = 32
OUTPUT_BYTES = 64
#: RFC 9497 limits a batch to 2^16 - 1 elements; the service's own limit is lower (settings).
MAX_BATCH = 0xFFFF
_IDENTITY = bytes(ELEMENT_BYTES)


class OprfError(ValueError):
    """A malformed element, an identity element, or a proof that does not verify."""


def _binding_failure(exc: BaseException) -> bool:
    """The binding reports some failures (a proof that does not verify) as a Rust panic, a
    ``pyo3_runtime.PanicException`` that derives from BaseException, not Exception."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


@dataclass(frozen=True)
class Evaluator:
    """The server side under one key version (``key_version``): pseudonymisation service only."""

    key_version: str
    _inner: _r.Evaluator

    @classmethod
    def from_seed(cls, key_version: str, seed: bytes, info: bytes = b"") -> Evaluator:
        """``DeriveKeyPair(seed, info)`` (RFC 9497 §3.2.1)."""
        if len(seed) != SEED_BYTES:
            raise OprfError(f"a key seed is {SEED_BYTES} bytes")
        return cls(key_version, _r.Evaluator.from_seed(seed, info))

    @property
    def public_key(self) -> bytes:
        return bytes(self._inner.public_key.serialize())

    def evaluate_batch(self, blinded: Sequence[bytes]) -> bytes:
        """``BlindEvaluateBatch``: every element evaluated, one proof; :class:`OprfError` on a
        malformed or identity element (nothing is evaluated then)."""
        if not blinded or len(blinded) > MAX_BATCH:
            raise OprfError(f"a batch holds 1 to {MAX_BATCH} elements")
        elements = []
        for item in blinded:
            if len(item) != ELEMENT_BYTES or item == _IDENTITY:
                raise OprfError("a blinded element is not a valid ristretto255 element")
            try:
                elements.append(_r.BlindedInput.deserialize(item))
            except BaseException as exc:  # ValueError (or a panic) for a non-canonical encoding
                if not _binding_failure(exc):
                    raise
                raise OprfError("a blinded element is not a valid ristretto255 element") from exc
        return bytes(self._inner.evaluate_batch(elements).serialize())

    def evaluate(self, data: bytes) -> bytes:
        """``Evaluate`` (RFC 9497 §3.3.2): the output for a known input, without blinding.
        For the service's own checks and the test vectors only."""
        return bytes(self._inner.evaluate_known_input(data))


class Blinded:
    """The client state of one input: keep it to finalise the answer."""

    __slots__ = ("_client", "element")

    def __init__(self, data: bytes) -> None:
        client, blinded = _r.Client.blind(data)
        self._client = client
        #: The 32 bytes sent to the service.
        self.element = bytes(blinded.serialize())


def blind(data: bytes) -> Blinded:
    """``Blind`` (RFC 9497 §3.3.2) with a fresh random scalar."""
    return Blinded(data)


def finalize_batch(items: Sequence[Blinded], answer: bytes, public_key: bytes) -> list[bytes]:
    """Check the batch proof under ``public_key`` and finalise: the 64-byte outputs, in order.

    :class:`OprfError` when the answer is malformed, holds another count, or its proof does
    not verify (an answer under another key: a service trying to tag the fund)."""
    try:
        output = _r.VerifiableBatchOutput.deserialize(answer)
        key = _r.PublicKey.deserialize(public_key)
        outputs = _r.Client.finalize_batch([b._client for b in items], output, key)
    except BaseException as exc:  # ValueError, or a panic for a proof that does not verify
        if not _binding_failure(exc):
            raise
        raise OprfError("the service's answer does not verify under the published key") from exc
    if len(outputs) != len(items):
        raise OprfError("the service's answer does not hold one element per request")
    return [bytes(o) for o in outputs]


def pseudonym_value_v2(output: bytes) -> str:
    """The 43-character ``pseudonym.value`` of scheme v2: b64url of the first 32 bytes of
    the 64-byte OPRF output (same length as v1)."""
    if len(output) != OUTPUT_BYTES:
        raise OprfError(f"an OPRF output is {OUTPUT_BYTES} bytes")
    return b64u(output[:32])

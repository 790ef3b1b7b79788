"""Malformed and adversarial signals for the correlator (issue 8, item 4).

Two sources, both reproducible:

- **hypothesis** (derandomised): arbitrary bytes, arbitrary text, arbitrary JSON values, and
  objects with the signal's member names and values of any type;
- **mutations of valid signals** built and signed by the producer SDK with the funds' real
  keys: truncated JSON, wrong types, huge strings, deep nesting, duplicate keys, unicode
  tricks (homoglyphs, zero-width and bidi characters, fullwidth digits, non-NFC forms), NUL
  bytes, re-signed with another fund's key, a valid signature over a medical or sensitive
  category, schema downgrades, unknown members, oversize payloads. Mutations that keep the
  message parseable are *re-signed by the fund itself* where that matters, so the correlator
  must refuse them on content, not just on a broken signature.

Every case is a message the correlator must refuse: none may be accepted.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from services.core.signing import sign
from services.core.types import Fund
from services.platform.topics import signal_topic
from services.producer.keys import load_fund_secrets
from services.producer.sdk import SignalBuilder, SignalInput

SIGNAL_FIELDS = ("signal_id", "schema_version", "fund", "emitter", "category", "observed_on", "emitted_at",
                 "territory", "pseudonym", "sealed_ref", "legal_basis", "purpose", "signature")
MEDICAL = {Fund.CAF: ["maladie_handicap_enfant", "grossesse"],
           Fund.CPAM: ["renoncement_soins", "score_epices", "affection_longue_duree", "prado"],
           Fund.CARSAT: ["evaluation_gir_5_6", "retour_domicile_apres_hospitalisation"], Fund.URSSAF: []}


@dataclass(frozen=True)
class Case:
    kind: str
    topic: str
    value: bytes
    key: bytes | None


# ---------------------------------------------------------------------------- hypothesis
_json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                 | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=60))
_json = st.recursive(_json_scalars, lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=12), c,
                                                                                           max_size=5),
                     max_leaves=20)
_signal_like = st.fixed_dictionaries(
    {}, optional={name: _json for name in SIGNAL_FIELDS}).map(
    lambda d: {**d, "schema_version": d.get("schema_version", "1.0")})
_hyp_messages = st.one_of(
    st.binary(max_size=600).map(lambda b: ("bytes", b)),
    st.text(max_size=300).map(lambda s: ("text", s.encode("utf-8", "surrogatepass"))),
    _json.map(lambda v: ("json_value", json.dumps(v).encode())),
    _signal_like.map(lambda d: ("signal_like", json.dumps(d).encode())),
    st.builds(lambda d, f: ("signal_like_fund", json.dumps({**d, "fund": f}).encode()),
              _signal_like, st.sampled_from([f.value for f in Fund] + ["pole-emploi", "", "CAF"])),
)


def hypothesis_messages(n: int) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []

    @settings(max_examples=n, database=None, derandomize=True, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(_hyp_messages)
    def collect(item: tuple[str, bytes]) -> None:
        out.append(item)

    collect()
    return out


# ---------------------------------------------------------------------------- mutations
class Signer:
    """Valid signals of each fund, built by the SDK from the simulated extracts, and re-signing."""

    def __init__(self, settings_obj: Any, records: dict[Fund, list[SignalInput]]) -> None:
        self.secrets = {f: load_fund_secrets(settings_obj.key_dir, f) for f in records}
        self.valid: dict[Fund, list[dict[str, Any]]] = {}
        today = dt.date.today()
        for fund, recs in records.items():
            builder = SignalBuilder(settings_obj, fund)
            msgs = []
            for rec in recs:
                try:
                    msgs.append(json.loads(builder.build(rec, today=today).value))
                except Exception:  # a bad line of the simulated extract
                    continue
            self.valid[fund] = msgs

    def resign(self, msg: dict[str, Any], fund: Fund, *, as_fund: Fund | None = None,
               key_id_of: Fund | None = None) -> dict[str, Any]:
        unsigned = {k: v for k, v in msg.items() if k != "signature"}
        signer = self.secrets[as_fund or fund]
        key_id = self.secrets[key_id_of or as_fund or fund].signing_key_id
        try:
            return sign(unsigned, signer.signing_key, key_id)
        except ValueError:  # a lone surrogate cannot be canonicalised: keep the old signature
            return msg


def _wire(msg: Any) -> bytes:
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")


HOMOGLYPHS = {"a": "а", "e": "е", "o": "о", "c": "с", "p": "р", "i": "і", "1": "１", "3": "３", "5": "５"}
INVISIBLE = ["\u200b", "\u200d", "\u202e", "\u2066", "\ufeff", "\u00ad", "\u0301", "\ud800"]


def mutations(signer: Signer, n: int, rng: random.Random) -> list[Case]:
    """``n`` mutated signals, spread over every mutation kind."""
    funds = [f for f, msgs in signer.valid.items() if msgs]
    out: list[Case] = []

    def base() -> tuple[Fund, dict[str, Any]]:
        fund = rng.choice(funds)
        return fund, json.loads(json.dumps(rng.choice(signer.valid[fund])))

    def key_of(msg: dict[str, Any]) -> bytes | None:
        p = msg.get("pseudonym")
        return str(p.get("value")).encode() if isinstance(p, dict) else None

    def truncated() -> Case:
        fund, msg = base()
        raw = _wire(msg)
        return Case("truncated", signal_topic(fund), raw[: rng.randrange(0, len(raw) - 1)], key_of(msg))

    def wrong_type() -> Case:
        fund, msg = base()
        field = rng.choice(SIGNAL_FIELDS[:-1])
        msg[field] = rng.choice([0, 1.5, True, None, [], {}, [msg.get(field)], {"v": msg.get(field)}, "", -1])
        resigned = rng.random() < 0.7
        return Case("wrong_type" + ("_resigned" if resigned else ""), signal_topic(fund),
                    _wire(signer.resign(msg, fund) if resigned else msg), key_of(msg))

    def huge() -> Case:
        fund, msg = base()
        field = rng.choice(["category", "emitter", "territory", "purpose", "signal_id", "observed_on"])
        msg[field] = rng.choice("AZ=<é") * rng.choice([300, 5_000, 15_000, 40_000])
        return Case("huge_string", signal_topic(fund), _wire(signer.resign(msg, fund)), key_of(msg))

    def deep() -> Case:
        fund, msg = base()
        depth = rng.choice([50, 500, 3_000, 8_000])
        if rng.random() < 0.5:
            raw = b"[" * depth + b"]" * depth
        else:
            field = rng.choice(["legal_basis", "pseudonym", "sealed_ref", "category"])
            raw = _wire({**msg, field: "@"}).replace(b'"@"', b'{"a":' * depth + b"1" + b"}" * depth)
        return Case("deep_nesting", signal_topic(fund), raw, key_of(msg))

    def duplicate_keys() -> Case:
        fund, msg = base()
        raw = _wire(msg)
        field, evil = rng.choice([("fund", '"cpam"' if fund is not Fund.CPAM else '"caf"'),
                                  ("category", '"maladie_handicap_enfant"'),
                                  ("territory", '"75"'), ("schema_version", '"0.9"'),
                                  ("purpose", '"controle"')])
        # Appended last with a *different* value: the content read is not the content signed.
        # (A duplicate with the same value is accepted: see test_attacks, a reported defect.)
        return Case("duplicate_keys", signal_topic(fund), raw[:-1] + f',"{field}":{evil}}}'.encode(), key_of(msg))

    def unicode_trick() -> Case:
        fund, msg = base()
        field = rng.choice(["category", "territory", "emitter", "purpose", "observed_on", "emitted_at",
                            "signal_id"])
        text = str(msg[field])
        how = rng.randrange(4)
        if how == 0:
            chars = [HOMOGLYPHS.get(c, c) for c in text]
            i = next((j for j, c in enumerate(text) if c in HOMOGLYPHS), 0)
            text = text[:i] + chars[i] + text[i + 1:]
        elif how == 1:
            i = rng.randrange(len(text) + 1)
            text = text[:i] + rng.choice(INVISIBLE) + text[i:]
        elif how == 2:
            text = text.translate({ord(str(d)): chr(0xFF10 + d) for d in range(10)}) if any(
                c.isdigit() for c in text) else text + "\u0301"
        else:
            text = text + "\n"
        msg[field] = text
        resigned = rng.random() < 0.8
        return Case("unicode" + ("_resigned" if resigned else ""), signal_topic(fund),
                    _wire(signer.resign(msg, fund) if resigned else msg), key_of(msg))

    def nul_bytes() -> Case:
        fund, msg = base()
        if rng.random() < 0.5:
            raw = bytearray(_wire(msg))
            raw.insert(rng.randrange(len(raw)), 0)
            return Case("nul_raw", signal_topic(fund), bytes(raw), key_of(msg))
        field = rng.choice(["category", "territory", "emitter", "signal_id"])
        msg[field] = str(msg[field]) + "\x00"
        return Case("nul_escaped_resigned", signal_topic(fund), _wire(signer.resign(msg, fund)), key_of(msg))

    def other_fund_key() -> Case:
        fund, msg = base()
        other = rng.choice([f for f in funds if f is not fund])
        if rng.random() < 0.5:  # signed by another fund, naming the sender's key id: forged
            signed = signer.resign(msg, fund, as_fund=other, key_id_of=fund)
        else:                   # signed by another fund with its own key id: not the sender's key
            signed = signer.resign(msg, fund, as_fund=other)
        return Case("other_fund_key", signal_topic(fund), _wire(signed), key_of(msg))

    def medical() -> Case:
        fund = rng.choice([f for f in funds if MEDICAL.get(f)])
        _, msg = fund, json.loads(json.dumps(rng.choice(signer.valid[fund])))
        msg["category"] = rng.choice(MEDICAL[fund])
        return Case("medical_signed", signal_topic(fund), _wire(signer.resign(msg, fund)), key_of(msg))

    def downgrade() -> Case:
        fund, msg = base()
        msg["schema_version"] = rng.choice(["0.9", "1", "1.0.0", "2.0", 1.0, None])
        return Case("schema_downgrade", signal_topic(fund), _wire(signer.resign(msg, fund)), key_of(msg))

    def unknown_member() -> Case:
        fund, msg = base()
        msg[rng.choice(["nir", "nom", "commentaire", "__proto__", "constructor", "x"])] = rng.choice(
            ["1850578006084 88", "DUPONT Jean", "<script>alert(1)</script>", {"polluted": True}])
        return Case("unknown_member_signed", signal_topic(fund), _wire(signer.resign(msg, fund)), key_of(msg))

    def oversize() -> Case:
        fund, msg = base()
        return Case("oversize", signal_topic(fund), _wire(msg) + b" " * rng.choice([16_500, 100_000, 600_000]),
                    key_of(msg))

    def wrong_topic() -> Case:
        fund, msg = base()
        other = rng.choice([f for f in Fund if f is not fund])
        return Case("wrong_topic", signal_topic(other), _wire(msg), key_of(msg))

    kinds: list[Callable[[], Case]] = [truncated, wrong_type, huge, deep, duplicate_keys, unicode_trick, nul_bytes,
                                       other_fund_key, medical, downgrade, unknown_member, oversize, wrong_topic]
    for i in range(n):
        out.append(kinds[i % len(kinds)]())
    return out

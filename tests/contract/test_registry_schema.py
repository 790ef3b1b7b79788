"""``schemas/registry.schema.json`` and the :class:`~services.core.registry.Registry` model
accept and refuse the same documents (differential, as ``test_schemas_and_models.py`` does for
the messages), and every registry the ``keys`` commands write is valid for the schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from services.core.registry import Registry, registry_path
from services.core.signing import b64u
from services.core.types import Fund
from services.producer.keys import (
    init_exchange_key,
    init_fund_keys,
    register_signing_key,
    retire_exchange_key,
    retire_signing_key,
)
from tests.contract.test_schemas_and_models import mutations, schema_accepts, validator

KEY = "Qm9uam91ciBsZXMgY2Fpc3NlcyBkZSBzw6ljdXJpdMOp"[:43]
EXAMPLES: list[dict[str, Any]] = [
    {"version": 1,
     "funds": {"caf": {"signing_keys": [
         {"key_id": "caf-sig-20261123-1a2b", "public_key": KEY, "status": "retired",
          "registered_at": "2026-11-23T10:00:00.000000Z", "retired_at": "2026-12-01T08:00:00Z"},
         {"key_id": "caf-sig-20261201-3c4d", "public_key": KEY, "status": "active",
          "registered_at": "2026-12-01T07:00:00Z"}]}},
     "exchange_keys": [{"key_id": "xk-20261123-3c4d", "status": "active", "created_at": "2026-11-23T10:00:00Z"},
                       {"key_id": "xk-20251123-0000", "status": "retired", "created_at": "2025-11-23T10:00:00Z",
                        "retired_at": "2026-01-01T00:00:00Z"}]},
    # as written before registered_at / retired_at existed
    {"version": 1, "funds": {"urssaf": {"signing_keys": [{"key_id": "urssaf-sig-1", "public_key": KEY}]}},
     "exchange_keys": [{"key_id": "xk-1", "created_at": "2026-11-23T10:00:00Z"}]},
    {"version": 1},
]


def model_accepts(doc: Any) -> bool:
    try:
        Registry.model_validate_json(json.dumps(doc))
    except ValidationError:
        return False
    return True


def test_examples_pass_both() -> None:
    for doc in EXAMPLES:
        assert schema_accepts("registry", doc), list(validator("registry").iter_errors(doc))
        assert model_accepts(doc)


def test_schema_and_model_agree_on_every_mutation() -> None:
    checked = refused = 0
    disagreements = []
    for example in EXAMPLES:
        for doc in mutations(example):
            by_schema, by_model = schema_accepts("registry", doc), model_accepts(doc)
            checked += 1
            refused += not by_schema
            if by_schema != by_model:
                disagreements.append((by_schema, by_model, json.dumps(doc)[:300]))
        # the status / retired_at pairing, both ways
        for extra in ({"status": "active", "retired_at": "2026-12-01T08:00:00Z"},
                      {"retired_at": "2026-12-01T08:00:00Z"}, {"status": "retired", "retired_at": None},
                      {"status": "active", "retired_at": None}):
            doc = json.loads(json.dumps(example))
            for keys in doc.get("funds", {}).values():
                for entry in keys["signing_keys"]:
                    entry.update(extra)
            by_schema, by_model = schema_accepts("registry", doc), model_accepts(doc)
            checked += 1
            if by_schema != by_model:
                disagreements.append((by_schema, by_model, json.dumps(doc)[:300]))
    assert not disagreements, f"{len(disagreements)} disagreements, first: {disagreements[:3]}"
    assert checked > 500 and refused > checked // 2, (checked, refused)


def test_registries_written_by_the_keys_commands_are_valid(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    xk = init_exchange_key(key_dir)
    init_exchange_key(key_dir)
    retire_exchange_key(key_dir, xk)
    first = init_fund_keys(key_dir, Fund.CAF).signing
    init_fund_keys(key_dir, Fund.CAF, rotate=True)
    retire_signing_key(key_dir, Fund.CAF, first)
    public = Ed25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.Raw,
                                                                    serialization.PublicFormat.Raw)
    register_signing_key(key_dir, Fund.URSSAF, b64u(public).encode())
    doc = json.loads(registry_path(key_dir).read_text())
    assert schema_accepts("registry", doc), list(validator("registry").iter_errors(doc))
    assert model_accepts(doc)
    statuses = [e.get("status") for e in doc["funds"]["caf"]["signing_keys"]]
    assert statuses == ["retired", "active"] and "retired_at" in doc["funds"]["caf"]["signing_keys"][0]
    assert "retired_at" in doc["exchange_keys"][0]

"""One glossary: the models' French keys come from services.core.glossary, and
docs/glossary.md shows exactly that table."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from services.core import glossary, policy, rules, taxonomy

DOC = Path(__file__).resolve().parents[2] / "docs" / "glossary.md"


def _models() -> list[type[BaseModel]]:
    found = []
    for module in (taxonomy, policy, rules):
        found += [v for v in vars(module).values()
                  if isinstance(v, type) and issubclass(v, BaseModel) and v.__module__ == module.__name__]
    return found


def test_every_french_key_of_the_models_is_the_glossarys_code_of_its_english_name() -> None:
    aliased = {(model.__name__, name, info.alias) for model in _models()
               for name, info in model.model_fields.items() if info.alias is not None}
    assert len(aliased) >= 6
    assert all(alias == glossary.code(name) for _, name, alias in aliased), aliased


def test_the_doc_shows_the_glossary() -> None:
    rows = re.findall(r"^\| (`.+?`) \| `(.+?)` \| (.+?) \|$", DOC.read_text(encoding="utf-8"), re.MULTILINE)
    shown = [(", ".join(re.findall(r"`([^`]+)`", ids)), code, label) for ids, code, label in rows]
    assert shown == [(t.identifier, t.code, t.label) for t in glossary.TERMS]


def test_one_english_identifier_per_french_code() -> None:
    codes = [t.code for t in glossary.TERMS]
    assert len(codes) == len(set(codes))
    assert glossary.code("fund") == "organisme" and glossary.code("exchangeable") == "echangeable"

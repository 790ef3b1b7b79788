"""The published JSON Schemas and the pydantic models accept and refuse exactly the same messages.

Differential testing: every valid example, and thousands of mutations of it (each leaf
replaced by values from a pool of tricky values, each member dropped, unknown members
added), is judged by both; they must agree on every one. Counts are asserted so that the
test cannot pass vacuously.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import ValidationError
from referencing import Registry, Resource

from services.core.messages import MODELS, parse, to_wire
from tests.contract.examples import EXAMPLES

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    # JSON Schema patterns are ECMA-262: "$" matches only at the very end. Python's re lets
    # "$" match before a final newline, which would wrongly accept "caf-35\n".
    if not isinstance(instance, str):
        return
    python = pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith(r"\$") else pattern
    if not re.search(python, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


EcmaValidator = jsonschema.validators.extend(Draft202012Validator, {"pattern": _ecma_pattern})


def _registry() -> Registry:  # type: ignore[type-arg]
    resources = []
    for path in SCHEMAS.glob("*.schema.json"):
        doc = json.loads(path.read_text())
        resources.append((doc["$id"], Resource.from_contents(doc)))
    return Registry().with_resources(resources)


REGISTRY = _registry()


def validator(name: str) -> Any:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    return EcmaValidator(schema, registry=REGISTRY, format_checker=Draft202012Validator.FORMAT_CHECKER)


def schema_accepts(name: str, doc: Any) -> bool:
    return bool(validator(name).is_valid(doc))


def model_accepts(name: str, doc: Any) -> bool:
    try:
        parse(MODELS[name], json.dumps(doc))
    except ValidationError:
        return False
    return True


POOL: list[Any] = [
    None, True, False, 0, 1, -1, 1.0, 1.5, 2**40, "", " ", "a", "caf", "urssaf", "cpam", "carsat", "msa", "cnav",
    "1.0", "2.0", "1", "L115-2-1", "consentement", "Ed25519", "RSA", "acces_aux_droits",
    "prevention_perte_autonomie", "accepte", "rejete", "schema_invalide", "ouverte", "fermee", "rouge", "noir",
    "accorde", "2026-11-05", "2026-02-30", "2026-11-5", "20261105", "05/11/2026", "2026-11-05T10:00:00Z",
    "2026-11-05T10:00:00", "2026-11-05 10:00:00Z", "2026-11-05T10:00Z", "2026-11-05T24:00:00Z",
    "2026-02-30T10:00:00Z", "2026-11-05T10:00:00.1234567Z", "2026-11-05t10:00:00z", "35", "2A", "2a", "20",
    "96", "974", "977", "caf-35", "cpam-35", "caf-35\n", "urssaf-ca", "caf-", "A" * 43, "A" * 42, "A" * 44,
    "A" * 86, "A/" * 43, "a" * 32, "A" * 32, "g" * 32, "a" * 33, "impaye_loyer", "Impayé de loyer",
    "<script>alert(1)</script>", "=HYPERLINK(\"x\")", "1 80 05 35 123 456 78", "180053512345678",
    "HELP-2026-000123", "help-2026", "help.signals.caf.v1", "other.topic", "agent.caf-35.0042",
    "x" * 400, "é" * 10, [], {}, ["caf"], ["caf", "caf"], ["acces_aux_droits"], [{}], {"a": 1},
]


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from _paths(value, (*prefix, i))


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    new = copy.deepcopy(doc)
    target = new
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return new


def _drop(doc: Any, path: tuple[Any, ...]) -> Any:
    new = copy.deepcopy(doc)
    target = new
    for step in path[:-1]:
        target = target[step]
    del target[path[-1]]
    return new


def mutations(doc: dict[str, Any]) -> Iterator[Any]:
    for path in _paths(doc):
        for value in POOL:
            yield _set(doc, path, value)
        if path:
            yield _drop(doc, path)
        if path == () or isinstance(_get(doc, path), dict):
            yield _set(doc, (*path, "note_libre"), "texte libre") if path else {**doc, "note_libre": "x"}


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        doc = doc[step]
    return doc


def test_every_schema_is_valid_json_schema_2020_12() -> None:
    names = sorted(p.name for p in SCHEMAS.glob("*.schema.json"))
    assert {f"{n}.schema.json" for n in MODELS} <= set(names)
    for name in names:
        doc = json.loads((SCHEMAS / name).read_text())
        assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema", name
        Draft202012Validator.check_schema(doc)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_valid_examples_pass_both(name: str) -> None:
    assert EXAMPLES[name], name
    for doc in EXAMPLES[name]:
        assert schema_accepts(name, doc), list(validator(name).iter_errors(doc))
        assert model_accepts(name, doc)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_schema_and_model_agree_on_every_mutation(name: str) -> None:
    checked = refused = 0
    disagreements = []
    for example in EXAMPLES[name]:
        for doc in mutations(example):
            by_schema, by_model = schema_accepts(name, doc), model_accepts(name, doc)
            checked += 1
            refused += not by_schema
            if by_schema != by_model:
                disagreements.append((by_schema, by_model, json.dumps(doc)[:300]))
    assert not disagreements, f"{len(disagreements)} disagreements, first: {disagreements[:3]}"
    assert checked > 500 and refused > checked // 2, (checked, refused)


@pytest.mark.parametrize("name", ["signal", "situation"])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_agreement_on_random_values(name: str, data: st.DataObject) -> None:
    example = data.draw(st.sampled_from(EXAMPLES[name]))
    path = data.draw(st.sampled_from(list(_paths(example))[1:]))
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
        lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
        max_leaves=5,
    )
    doc = _set(example, path, data.draw(json_values))
    assert schema_accepts(name, doc) == model_accepts(name, doc), json.dumps(doc)[:300]


def test_free_text_and_nir_are_refused_everywhere() -> None:
    """No field of a signal can carry a NIR or a sentence."""
    example = EXAMPLES["signal"][0]
    for path in list(_paths(example))[1:]:
        if isinstance(_get(example, path), str):
            current = _get(example, path)
            prefix = current.split("-")[0] + "-" if path == ("emitter",) else ""
            for bad in ("180053512345678", prefix + "180053512345678", "Madame Dupont, impayé depuis mars"):
                doc = _set(example, path, bad)
                assert not schema_accepts("signal", doc), path
                assert not model_accepts("signal", doc), path


def test_reason_codes_are_the_schema_enum_and_each_has_a_label() -> None:
    """Receipts and dead letters carry ``common.schema.json#/$defs/reason``: the same codes as
    :class:`~services.core.reasons.Reason`, in the same order (a back-office switches on them)."""
    from services.core.reasons import Reason

    enum = json.loads((SCHEMAS / "common.schema.json").read_text())["$defs"]["reason"]["enum"]
    assert enum == [r.value for r in Reason]
    assert "cle_signature_retiree" in enum
    assert all(r.label and r.label[0].isupper() for r in Reason)


@pytest.mark.parametrize("name", ["signal", "sealed_signal"])
def test_the_previous_pseudonym_is_absent_or_an_object_never_null(name: str) -> None:
    """Both signal models share the rule (``LinkedMessage``): a null link is refused, an absent
    one stays absent on the wire, a present one goes back as it came."""
    example = {k: v for k, v in EXAMPLES[name][0].items() if k != "pseudonym_previous"}
    link = {**example["pseudonym"], "key_id": "xk-20251123-a1b2"}
    model = MODELS[name]
    with pytest.raises(ValidationError, match="absent or an object, never null"):
        parse(model, json.dumps({**example, "pseudonym_previous": None}))
    assert "pseudonym_previous" not in json.loads(to_wire(parse(model, json.dumps(example))))
    assert json.loads(to_wire(parse(model, json.dumps({**example, "pseudonym_previous": link}))))[
        "pseudonym_previous"] == link

"""Frozen models built from values that are already valid: the correlator step's fast path.

Validating a model checks every value again (patterns, lengths, strict types, nested
models). In the correlator's step the values come from models validated a moment before
(the signal, the person's state, the data files) or are computed in a form that satisfies
the field's constraint by construction (a SHA-256 hex digest for an id, a count plus one
for a version). :func:`trusted` builds the model from such values without a second check,
and :func:`replace` is ``model_copy(update=...)`` without pydantic's generic copy machinery.

The references stay beside them: the callers keep the validating construction for the
reference path (``fast=False``) and fall back to it whenever a cheap guard cannot show the
values valid; ``tests/core/test_trusted.py`` checks that both give equal models that dump
to the same bytes, over generated inputs, and ``bench/engine_step.py`` that the engine's
outputs are byte for byte the same.

What a validated model holds, and therefore what these build: ``__dict__`` with every field
(defaults included) in declaration order, ``__pydantic_fields_set__`` the fields given,
no extra (``extra="forbid"``) and no private attributes (the contract models declare none).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)
_set = object.__setattr__


def trusted(cls: type[M], values: dict[str, Any], fields_set: Iterable[str] | None = None) -> M:
    """``cls(**values)`` without validation: ``values`` must name every field of ``cls`` in
    declaration order and hold values that ``cls`` accepts as they are (nested models as
    instances); ``fields_set`` the fields given explicitly (default: all of them)."""
    model = cls.__new__(cls)
    _set(model, "__dict__", values)
    _set(model, "__pydantic_fields_set__", set(values if fields_set is None else fields_set))
    _set(model, "__pydantic_extra__", None)
    _set(model, "__pydantic_private__", None)
    return model


def replace(model: M, update: Mapping[str, Any]) -> M:
    """``model.model_copy(update=update)`` (which does not validate either) for a model with
    no extra and no private attributes."""
    cls = type(model)
    copied = cls.__new__(cls)
    values = model.__dict__.copy()
    values.update(update)
    _set(copied, "__dict__", values)
    _set(copied, "__pydantic_fields_set__", model.__pydantic_fields_set__ | update.keys())
    _set(copied, "__pydantic_extra__", None)
    _set(copied, "__pydantic_private__", None)
    return copied

"""Loading the data files a legal reviewer edits (taxonomy, policy, rules): one way, one error shape.

A typo in one of them must stop the service at start-up naming the file, the entry and the
field, never surface later as a refused signal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from services.errors import ConfigurationError

M = TypeVar("M", bound=BaseModel)


def parse_data(model: type[M], data: Any, source: str, hint: str) -> M:
    """Validate ``data`` as ``model``; the first error becomes one ConfigurationError naming the entry."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigurationError(f"{source}: {where}: {first['msg']}", hint) from exc


#: libyaml's parser under the safe constructor when PyYAML was built with it: the same
#: documents (tests/test_yaml_loader.py), read about ten times faster — every command reads
#: the taxonomy, the policy and the topics' AsyncAPI document at its start.
_SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load``, with libyaml when available (see ``_SAFE_LOADER``)."""
    return yaml.load(text, Loader=_SAFE_LOADER)  # a safe loader: SafeLoader or its C twin


def read_yaml(path: Path, what: str) -> Any:
    try:
        return load_yaml(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"cannot read {what} {path}: {exc}", "check HELP_SCHEMAS_DIR") from exc

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


def read_yaml(path: Path, what: str) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"cannot read {what} {path}: {exc}", "check HELP_SCHEMAS_DIR") from exc

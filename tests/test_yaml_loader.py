"""The data files read through libyaml (``services.core.datafile.load_yaml``) give exactly
what PyYAML's pure-Python safe loader gives."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.core.datafile import _SAFE_LOADER, load_yaml

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"


@pytest.mark.parametrize("path", sorted(SCHEMAS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_yaml_file_loads_the_same_with_libyaml(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert load_yaml(text) == yaml.safe_load(text)


def test_libyaml_is_used_when_pyyaml_has_it() -> None:
    assert _SAFE_LOADER is (yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader)


def test_unsafe_tags_are_refused() -> None:
    with pytest.raises(yaml.constructor.ConstructorError):
        load_yaml("!!python/object/apply:os.system ['true']")

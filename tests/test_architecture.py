"""The domain core stays pure: no Kafka, Faust, SQL or web import anywhere under services/core."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "services" / "core"
FORBIDDEN = ("aiokafka", "faust", "mode", "kafka", "confluent_kafka", "sqlalchemy", "alembic", "psycopg",
             "fastapi", "starlette", "uvicorn", "services.platform", "services.producer",
             "services.correlator", "services.casebook", "services.ledger")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_core_imports_no_adapter() -> None:
    modules = sorted(CORE.rglob("*.py"))
    assert len(modules) >= 5
    offenders = [
        f"{path.relative_to(CORE.parent)} imports {name}"
        for path in modules
        for name in _imports(path)
        if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN)
    ]
    assert not offenders, offenders


def test_the_check_catches_an_offender(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from aiokafka import AIOKafkaProducer\nimport sqlalchemy.orm\n")
    assert {"aiokafka", "sqlalchemy.orm"} <= _imports(bad)

"""The floors of the house hold: each part imports only what stands below it.

From the ground up: ``services/errors.py``; ``services/core`` (the pure domain); ``services/platform``
(settings, broker, Kafka clients, shared command-line pieces); the services (casebook, correlator,
ledger, producer, pseudonymiser, simulator), each importing only the floors below and itself;
``services/app`` on top (the root command, the wiring, the demo), the only part that imports
several services. Imports under ``if TYPE_CHECKING:`` count (they are dependencies too), and so
does a module loaded by name (``importlib``, ``__import__``): no part may find another that way.
"""

from __future__ import annotations

import ast
from pathlib import Path

SERVICES = Path(__file__).resolve().parents[1] / "services"
#: The error tree names the core's ``Reason`` in its annotations: errors and core are the ground floor.
BELOW = {"errors": {"core"}, "core": {"errors"}, "platform": {"errors", "core"}}
SERVICE_PARTS = ("casebook", "correlator", "ledger", "producer", "pseudonymiser", "simulator")
#: Loading a module by its name hides an arrow from every reader: refused outside the app.
BY_NAME = ("import_module", "find_spec", "__import__")
#: Known exceptions, each with the work that removes it (strike an entry once that work lands).
KNOWN: dict[str, str] = {}


def part_of(module: str) -> str | None:
    """``services.ledger.sink`` → ``ledger``; ``services.errors`` → ``errors``; None outside services."""
    names = module.split(".")
    if names[0] != "services" or len(names) < 2:
        return None
    return names[1]


def allowed(source: str, target: str) -> bool:
    if source == "app" or source == target:
        return True
    if source in BELOW:
        return target in BELOW[source]
    return target in {"errors", "core", "platform"}


def _module_of(path: Path, root: Path) -> str:
    relative = path.relative_to(root.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, root: Path = SERVICES) -> list[str]:
    """Every module ``path`` imports (relative imports resolved), and each by-name loading
    as ``by name <function>``."""
    module = _module_of(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append(target)
            # ``from services import ledger`` names a part too
            found += [f"{target}.{alias.name}" for alias in node.names if target == "services"]
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in BY_NAME:
                found.append(f"by name {ast.unparse(func)}")
    return found


def offences(root: Path = SERVICES) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        source = part_of(_module_of(path, root))
        if source is None or source == "__init__":
            continue
        where = path.relative_to(root.parent).as_posix()
        for name in imports(path, root):
            if name.startswith("by name "):
                if source != "app":
                    out.append(f"{where} imports {name}")
                continue
            target = part_of(name)
            if target is not None and not allowed(source, target):
                out.append(f"{where} imports {name}")
    return out


def test_every_part_imports_only_the_floors_below_it() -> None:
    assert {p.name for p in SERVICES.iterdir() if p.is_dir() and not p.name.startswith("_")} >= {
        "core", "platform", "app", *SERVICE_PARTS}
    assert sorted(set(offences()) - set(KNOWN)) == []


def test_the_check_catches_an_offender(tmp_path: Path) -> None:
    """A service importing another (plainly, lazily, relatively or by name), the platform
    importing a service, and the core importing the platform are all caught; the app
    importing several services is not."""
    root = tmp_path / "services"
    for part in ("core", "platform", "ledger", "casebook", "app"):
        (root / part).mkdir(parents=True)
        (root / part / "__init__.py").write_text("")
    (root / "ledger" / "sink.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from services.casebook.tables import situations\n"
        "def f():\n    from ..casebook import store\n    import importlib\n"
        "    return importlib.import_module('services.casebook.db')\n")
    (root / "platform" / "cli.py").write_text("from services import ledger\n")
    (root / "core" / "rules.py").write_text("import services.platform.settings\n")
    (root / "app" / "cli.py").write_text("from services.ledger import sink\nfrom services.casebook import web\n")
    assert sorted(offences(root)) == [
        "services/core/rules.py imports services.platform.settings",
        "services/ledger/sink.py imports by name importlib.import_module",
        "services/ledger/sink.py imports services.casebook",
        "services/ledger/sink.py imports services.casebook.tables",
        "services/platform/cli.py imports services.ledger",
    ]

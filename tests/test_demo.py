"""`make demo` end to end, as a user runs it: a month in Ille-et-Vilaine through every service."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from stdnum.fr import nir as stdnum_nir

from services.app.demo import privacy_leaks
from services.platform.settings import load_settings

pytestmark = pytest.mark.integration


DemoRun = tuple[subprocess.CompletedProcess[str], Path]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    var = tmp_path_factory.mktemp("demo-var")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELP_")}
    env["HELP_VAR_DIR"] = str(var)
    done = subprocess.run([sys.executable, "-m", "services.app.cli", "demo"], capture_output=True, text=True,
                          env=env, timeout=400)
    return done, var / "demo"


def test_demo_exits_0_with_perfect_precision_and_recall(demo_run: DemoRun) -> None:
    done, root = demo_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "précision 1.000  rappel 1.000" in done.stdout
    match = re.search(r"(\d+)/(\d+) accusés \((\d+) acceptés\)", done.stdout)
    assert match and match.group(1) == match.group(2) and int(match.group(1)) > 2000
    # Sealed signals by default: the correlator refused every signal in clear
    # (signal_non_scelle), and took them all.
    assert "chaque signalement scellé (exigé : oui)" in done.stdout
    assert match.group(3) == match.group(1), done.stdout[-2000:]
    for fmt in ("html", "csv", "pdf"):
        assert list((root / "revue").glob(f"*.{fmt}")), fmt
    assert "0 fuite(s)" in done.stdout
    worklist = re.search(r"liste de travail : (\d+) dossiers, dont (\d+) identiques à la vérité terrain "
                         r"\((\d+) attendus\)", done.stdout)
    assert worklist and len({worklist.group(1), worklist.group(2), worklist.group(3)}) == 1, done.stdout[-2000:]
    head = re.search(r"tête signée : (\d+) entrées", done.stdout)
    assert head and int(head.group(1)) > int(match.group(1))  # every receipt, and more, is in the ledger


def test_the_privacy_scan_finds_planted_leaks(demo_run: DemoRun, tmp_path: Path) -> None:
    _, root = demo_run
    exports = tmp_path / "revue"
    shutil.copytree(root / "revue", exports)
    csv_export = next(exports.glob("*.csv"))
    reference = next(line.split(";")[4] for line in (root / "extraits" / "caf.csv").read_text(
        encoding="utf-8-sig").splitlines()[1:])
    nir = next(line.split(";")[0] for line in (root / "extraits" / "caf.csv").read_text(
        encoding="utf-8-sig").splitlines()[1:] if stdnum_nir.is_valid(line.split(";")[0]))
    with csv_export.open("a", encoding="utf-8") as f:
        f.write(f"fuite;{nir};{reference};Affection de longue durée (ALD)\n")
    found = privacy_leaks(exports, root / "extraits", load_settings())
    kinds = {item.split(": ")[1].split(" ")[0] for item in found}
    assert {"NIR", "référence", "catégorie"} <= kinds, found

"""Privacy scans (issue 8, item 6). The simulated month runs through the whole pipeline with the
demo's building blocks (keys, simulate, publish, correlator, casebook sink, worklist exports)
against a broker this test keeps; then every topic of that broker, every table of the casebook
database, every log file and outbox under the var dir and every export are scanned for NIRs
(any 15-character string with a valid NIR key, also written with spaces or dots), clear file
references (from the simulator's extracts) and SENS/MED category codes or labels: zero hits.
Each scanner is then shown to fail: a planted value is found, in each kind of place."""

from __future__ import annotations

import asyncio
import csv
import re
import shutil
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from stdnum.fr import nir as stdnum_nir

from services.app.demo import export_text
from services.core.taxonomy import SignalClass
from services.platform.settings import Settings, load_settings
from services.platform.topics import DEADLETTER_TOPIC
from tests.reliability.pipeline import FUNDS, correlate, init_keys, simulate_month
from tests.suite_summary import count
from tests.support.processes import Broker, all_topic_names, read_topics, run_cli, settings_for, start_broker

pytestmark = pytest.mark.integration

# A NIR: 13 characters (Corsica: 2A/2B in the département) and a 2-digit key, possibly with
# spaces or dots between digits, not glued to other letters or digits (ids, base64).
_NIR_CANDIDATE = re.compile(r"(?<![A-Za-z0-9])[1-478](?:[ .]?[0-9AB]){14}(?![A-Za-z0-9])")
_TOKEN = re.compile(r"[A-Za-z0-9-]+")


@dataclass
class Scanner:
    references: set[str]
    codes: list[str]
    labels: list[str]

    @classmethod
    def for_month(cls, extracts: Path, settings: Settings) -> Scanner:
        refs: set[str] = set()
        for path in extracts.glob("*.csv"):
            with path.open(encoding="utf-8-sig", newline="") as f:
                refs |= {row["reference_dossier"].strip() for row in csv.DictReader(f, delimiter=";")
                         if row["reference_dossier"].strip()}
        medical = [c for c in settings.taxonomy.categories if c.classe is not SignalClass.NM]
        return cls(refs, [c.code for c in medical], [c.libelle for c in medical])

    def nirs(self, text: str) -> list[str]:
        return [m for m in (re.sub(r"[ .]", "", c) for c in _NIR_CANDIDATE.findall(text)) if stdnum_nir.is_valid(m)]

    def scan(self, where: str, text: str) -> list[str]:
        found = [f"{where}: NIR {m[:1]}…{m[-2:]}" for m in self.nirs(text)]
        found += [f"{where}: référence {t}" for t in set(_TOKEN.findall(text)) & self.references]
        found += [f"{where}: catégorie {c}" for c in self.codes
                  if re.search(rf"(?<![A-Za-z0-9_]){c}(?![A-Za-z0-9_])", text)]
        found += [f"{where}: libellé {lab}" for lab in self.labels if lab in text]
        return found


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def scan_topics(scanner: Scanner, bootstrap: str) -> tuple[list[str], int]:
    names = [n for n in all_topic_names(bootstrap) if not n.startswith("__")]
    records = asyncio.run(read_topics(bootstrap, names))
    leaks = []
    for r in records:
        leaks += scanner.scan(f"topic {r.topic}[{r.partition}]@{r.offset}", _text(r.key) + "\n" + _text(r.value))
    return leaks, len(records)


def scan_sqlite(scanner: Scanner, path: Path) -> tuple[list[str], int]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    leaks: list[str] = []
    rows = 0
    try:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):
                rows += 1
                leaks += scanner.scan(f"{path.name}:{table}", "\n".join(_text(v) for v in row))
    finally:
        db.close()
    return leaks, rows


def scan_files(scanner: Scanner, files: Iterable[Path]) -> tuple[list[str], int]:
    leaks: list[str] = []
    n = 0
    for path in files:
        n += 1
        text = export_text(path) if path.suffix == ".pdf" else path.read_bytes().decode("utf-8", "replace")
        leaks += scanner.scan(path.name, text)
    return leaks, n


@dataclass
class Month:
    broker: Broker
    settings: Settings
    extracts: Path
    exports: Path
    scanner: Scanner


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Month]:
    tmp = tmp_path_factory.mktemp("privacy")
    b = start_broker(tmp / "broker")
    try:
        settings = settings_for(tmp / "var", b.listener)
        init_keys(settings)
        extracts = tmp / "extraits"
        truth = simulate_month(settings, extracts, scale=0.5, seed=21)
        for fund in FUNDS:
            run_cli(settings, "publish", "--fund", fund.value, "--input", str(extracts / f"{fund.value}.csv"),
                    "--reject-report", str(settings.var_dir / f"rejets-{fund.value}.csv"), "--workers", "0",
                    check=False)
        from services.producer.outbox import Outbox

        published = 0
        for fund in FUNDS:
            with Outbox.for_fund(settings.var_dir, fund) as box:
                published += box.status().sent
        correlate(settings, published, settings.var_dir, app_id="corr-privacy", sink=True)
        exports = settings.var_dir / "revue"
        exports.mkdir()
        month_text = truth["mois"]
        for fmt in ("html", "csv", "pdf", "json"):
            run_cli(settings, "worklist", "--month", month_text, "--territory", "35", "--format", fmt,
                    "--out", str(exports / f"revue-35-{month_text}.{fmt}"), "--user", "secretaire.demo")
            run_cli(settings, "worklist", "--month", month_text, "--territory", "35", "--format", fmt,
                    "--out", str(exports / f"revue-35-{month_text}-caf.{fmt}"), "--fund", "caf", "--user", "agent.caf")
        yield Month(b, settings, extracts, exports, Scanner.for_month(extracts, settings))
    finally:
        b.stop()


def _var_files(settings: Settings, *suffixes: str) -> list[Path]:
    return sorted(p for p in settings.var_dir.rglob("*") if p.is_file() and p.suffix in suffixes
                  and "keys" not in p.relative_to(settings.var_dir).parts)


def test_no_personal_data_on_any_topic_table_log_or_export(month: Month) -> None:
    s = month.scanner
    topic_leaks, records = scan_topics(s, month.broker.listener)
    db = Path(month.settings.database_url.removeprefix("sqlite:///"))
    table_leaks, rows = scan_sqlite(s, db)
    outbox_leaks, outbox_rows = [], 0
    for path in _var_files(month.settings, ".db"):
        if path != db:
            leaks, n = scan_sqlite(s, path)
            outbox_leaks += leaks
            outbox_rows += n
    log_leaks, logs = scan_files(s, _var_files(month.settings, ".log"))
    export_leaks, exports = scan_files(s, sorted(month.exports.iterdir()))
    report_leaks, reports = scan_files(s, sorted(month.settings.var_dir.glob("rejets-*.csv")))
    leaks = topic_leaks + table_leaks + outbox_leaks + log_leaks + export_leaks + report_leaks
    count("leaks_found", len(leaks))
    print(f"privacy scan: {records} records on {len(all_topic_names(month.broker.listener))} topics, {rows} casebook "
          f"rows, {outbox_rows} outbox rows, {logs} log files, {exports} exports, {reports} reject reports; "
          f"looking for {len(s.references)} clear references, {len(s.codes)} SENS/MED codes and any valid NIR: "
          f"{len(leaks)} hit(s)")
    assert records > 1000 and rows > 50 and logs >= 2 and exports == 8 and reports == 4
    assert not leaks, leaks[:10]


def test_each_scanner_finds_a_planted_value(month: Month, tmp_path: Path) -> None:
    s = month.scanner
    with (month.extracts / "caf.csv").open(encoding="utf-8-sig", newline="") as f:
        row = next(r for r in csv.DictReader(f, delimiter=";") if stdnum_nir.is_valid(r["nir"].replace(" ", "")))
    nir = re.sub(r"\s", "", row["nir"])
    spaced = f"{nir[0]} {nir[1:3]} {nir[3:5]} {nir[5:7]} {nir[7:10]} {nir[10:13]} {nir[13:]}"
    dotted = ".".join([nir[:7], nir[7:13], nir[13:]])
    reference = row["reference_dossier"]
    plants = {"NIR": nir, "NIR spaced": spaced, "NIR dotted": dotted, "référence": reference,
              "catégorie": "affection_longue_duree", "libellé": s.labels[0]}
    found = 0
    # a topic
    async def plant_topic() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=month.broker.listener)
        await producer.start()
        try:
            for text in plants.values():
                await producer.send_and_wait(DEADLETTER_TOPIC, f"planted {text} here".encode())
        finally:
            await producer.stop()

    asyncio.run(plant_topic())
    leaks, _ = scan_topics(s, month.broker.listener)
    assert len(leaks) >= len(plants), leaks
    found += len(leaks)
    # a table
    db = tmp_path / "casebook.db"
    shutil.copy(Path(month.settings.database_url.removeprefix("sqlite:///")), db)
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE planted (v TEXT)")
    con.executemany("INSERT INTO planted VALUES (?)", [(f"x {t} y",) for t in plants.values()])
    con.commit()
    con.close()
    leaks, _ = scan_sqlite(s, db)
    assert len(leaks) >= len(plants), leaks
    found += len(leaks)
    # a log file and every export format
    files = []
    for src in [*_var_files(month.settings, ".log")[:1], *sorted(month.exports.iterdir())]:
        dst = tmp_path / src.name
        if src.suffix == ".pdf":
            from reportlab.lib.pagesizes import A4
            from reportlab.pdfgen import canvas

            c = canvas.Canvas(str(dst), pagesize=A4)
            for i, text in enumerate(plants.values()):
                c.drawString(50, 800 - 20 * i, f"planted {text} here")
            c.save()
        else:
            shutil.copy(src, dst)
            with dst.open("a", encoding="utf-8") as f:
                f.write("\n" + "\n".join(f"planted {t} here" for t in plants.values()) + "\n")
        files.append(dst)
    leaks, n = scan_files(s, files)
    assert len(leaks) >= len(plants) * n, leaks
    found += len(leaks)
    count("planted_found", found)
    print(f"planted {len(plants)} values ({', '.join(plants)}) in a topic, a table, a log and {n - 1} exports: "
          f"{found} found")
    _ = load_settings

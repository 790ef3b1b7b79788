"""``help-exchange demo``: the main job end to end, on the embedded default.

A month in Ille-et-Vilaine: start the embedded broker, create the topics and every key,
simulate the month's extracts, publish each fund's file through the producer, run the
correlator and the casebook sink until everything is processed, write the month's
worklist, verify the ledger, and compare the situations found with the simulator's ground
truth. Each stage prints what it did; the run fails (exit 1) if a stage fails or if the
situations differ from the ground truth.

Everything lives under ``<var>/demo`` (wiped at start) and a broker of its own on a free
port, so a demo never mixes with another run's data; the broker is stopped at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from services.core.types import Fund
from services.errors import HelpExchangeError
from services.platform.sealed_situations import situation_docs
from services.platform.settings import Settings, load_settings
from services.platform.topics import SITUATIONS_TOPIC

FUNDS = (Fund.URSSAF, Fund.CAF, Fund.CPAM, Fund.CARSAT)
TERRITORY = "35"


@dataclass
class Report:
    started: float = field(default_factory=time.monotonic)
    lines: list[str] = field(default_factory=list)

    def stage(self, title: str) -> None:
        click.secho(f"\n▶ {title}", bold=True)

    def say(self, text: str) -> None:
        click.echo(f"  {text}")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELP_")}
    env.update({
        "HELP_BOOTSTRAP_SERVERS": settings.bootstrap_servers or "",
        "HELP_VAR_DIR": str(settings.var_dir),
        "HELP_KEY_DIR": str(settings.key_dir),
        "HELP_DATABASE_URL": settings.database_url,
        "HELP_TERRITORY": settings.territory,
        "HELP_SESSION_TIMEOUT_MS": str(settings.session_timeout_ms),
        "HELP_PSEUDONYM_SCHEME": settings.pseudonym_scheme,
        "HELP_PSEUDONYMISER_URL": settings.pseudonymiser_url,
    })
    if settings.pseudonymiser_key_dir is not None:
        env["HELP_PSEUDONYMISER_KEY_DIR"] = str(settings.pseudonymiser_key_dir)
    return env


@contextlib.contextmanager
def _service(settings: Settings, log: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``help-exchange <args>`` in the background for the duration of the block."""
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.app.cli", *args], env=_env(settings),
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def read_latest(settings: Settings, topics: list[str], *, expect: int, key: str, timeout: float,
                    proc: subprocess.Popen[bytes] | None = None) -> dict[str, dict[str, Any]]:
    """Read ``topics`` from the start until ``expect`` distinct ``key`` values are seen (latest wins)."""
    from services.platform import kafka

    assert settings.bootstrap_servers
    consumer = kafka.consumer(settings, settings.bootstrap_servers, *topics, group_id=None)
    await consumer.start()
    seen: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(seen) < expect and time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise HelpExchangeError(f"a service stopped with status {proc.returncode}",
                                        f"read its log under {settings.var_dir}")
            batch = await consumer.getmany(timeout_ms=500)
            for tp, records in batch.items():
                values = [r.value for r in records if r.value is not None]
                if tp.topic == SITUATIONS_TOPIC:  # sealed under each person's data key: opened
                    docs = [d for d in situation_docs(settings.database_url, values) if d is not None]
                else:
                    docs = [json.loads(v) for v in values]
                for doc in docs:
                    previous = seen.get(doc[key])
                    if previous is None or doc.get("version", 0) >= previous.get("version", 0):
                        seen[doc[key]] = doc
    finally:
        await consumer.stop()
    return seen


def _idle_wait(read: Callable[[], dict[str, dict[str, Any]]], settle: float = 3.0,
               timeout: float = 120.0) -> dict[str, dict[str, Any]]:
    """Read until nothing new arrives for ``settle`` seconds (situations have no known count)."""
    deadline = time.monotonic() + timeout
    last: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        now = read()
        if now == last and now:
            return now
        last = now
        time.sleep(settle)
    return last


def _wait_pseudonymiser(settings: Settings, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HelpExchangeError(f"the pseudonymisation service stopped with status {proc.returncode}",
                                    f"read its log under {settings.var_dir}")
        try:
            with urllib.request.urlopen(settings.pseudonymiser_url + "/v1/keys", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise HelpExchangeError("the pseudonymisation service did not answer", f"read its log under {settings.var_dir}")


def run_demo(base: Settings, *, month: str | None, seed: int) -> int:
    from services.core.bounds import parse_month
    from services.platform.broker import EmbeddedBroker
    from services.platform.kafka import apply_topics
    from services.platform.topics import load_topic_specs, receipt_topic
    from services.producer.keys import init_exchange_key, init_fund_keys, load_fund_secrets
    from services.simulator.cli import simulate, today_paris

    today = today_paris()
    month = month or today.strftime("%Y-%m")
    parse_month(month, what="--month")  # before anything is started or removed
    report = Report()
    root = base.var_dir / "demo"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    port = base.broker_port if _port_free(base.broker_port) else _free_port()
    v2 = base.pseudonym_scheme == "v2"
    scheme: dict[str, Any] = {"pseudonym_scheme": base.pseudonym_scheme}
    if v2:  # the service has a key store of its own, outside the funds' key folder
        scheme.update(pseudonymiser_url=f"http://127.0.0.1:{_free_port()}",
                      pseudonymiser_key_dir=root / "pseudonymiser")
    settings = load_settings(var_dir=root, key_dir=root / "keys", database_url=f"sqlite:///{root / 'casebook.db'}",
                             broker_port=port, session_timeout_ms=6000, schemas_dir=base.schemas_dir, **scheme)

    report.stage("1. Broker embarqué et topics")
    embedded = EmbeddedBroker(settings)
    state, broker_proc = embedded.start(detach=False)
    settings = load_settings(**{**_overrides(settings), "bootstrap_servers": state.bootstrap})
    try:
        changes = asyncio.run(apply_topics(settings, state.bootstrap, load_topic_specs(
            settings.schemas_dir / "asyncapi.yaml")))
        report.say(f"broker Tansu sur {state.bootstrap} (mémoire), {len(changes)} topics créés")

        report.stage("2. Clés")
        for fund in FUNDS:
            init_fund_keys(settings.key_dir, fund)
        if v2:
            from services.pseudonymiser.keystore import init_key

            exchange = f"aucune (schéma v2 : service de pseudonymisation, version de clé {init_key(settings)})"
        else:
            exchange = init_exchange_key(settings.key_dir)
        report.say(f"clés de signature et de scellement pour {', '.join(f.value for f in FUNDS)}; "
                   f"clé d'échange {exchange}; registre {settings.key_dir / 'registry.json'}")

        report.stage(f"3. Simulation d'un mois : Ille-et-Vilaine ({TERRITORY}), {month}")
        extracts = root / "extraits"
        truth = simulate(TERRITORY, month, extracts, seed=seed, schemas=settings.schemas_dir, today=today)
        report.say(f"{truth['personnes']} personnes signalées, {len(truth['situations'])} situations attendues "
                   f"(vérité terrain : {extracts / 'verite_terrain.json'})")

        report.stage("4. Publication des extractions par chaque organisme")
        published = 0
        with contextlib.ExitStack() as stack:
            if v2:
                port_v2 = settings.pseudonymiser_url.rsplit(":", 1)[1]
                service = stack.enter_context(_service(settings, root / "pseudonymiser.log", "pseudonymiser",
                                                       "serve", "--port", port_v2))
                _wait_pseudonymiser(settings, service)
                report.say(f"service de pseudonymisation sur {settings.pseudonymiser_url} (VOPRF RFC 9497)")
            published = _publish_all(settings, root, extracts, report)

        report.stage("5. Corrélation (worker Faust) et casebook (puits SQL)")

        t0 = time.monotonic()
        with _service(settings, root / "correlator.log", "correlator") as corr, \
                _service(settings, root / "casebook-sink.log", "casebook", "sink") as sink:
            receipts = asyncio.run(read_latest(settings, [receipt_topic(f) for f in FUNDS], expect=published,
                                             key="signal_id", timeout=150, proc=corr))
            situations = _idle_wait(lambda: asyncio.run(read_latest(
                settings, ["help.situations.v1"], expect=10**9, key="situation_id", timeout=2)))
            stored = wait_for_casebook(settings, {k: v["version"] for k, v in situations.items()}, sink)
        report.say(f"casebook {settings.database_url}: {stored} situations enregistrées")
        accepted = sum(r["status"] == "accepte" for r in receipts.values())
        report.say(f"{len(receipts)}/{published} accusés ({accepted} acceptés) en {time.monotonic() - t0:.1f} s; "
                   f"{len(situations)} situations")
        by_rule = Counter(rule for s in situations.values() for rule in s["rules"])
        by_priority = Counter(s["priority"] for s in situations.values())
        report.say("par règle : " + ", ".join(f"{k} {v}" for k, v in sorted(by_rule.items())))
        report.say("par priorité : " + ", ".join(f"{k} {by_priority.get(k, 0)}" for k in ("rouge", "orange", "vert")))

        report.stage("6. Comparaison avec la vérité terrain")
        secrets = {fund: load_fund_secrets(settings.key_dir, fund).sealing_keys for fund in FUNDS}
        score = compare_with_truth(situations, truth, secrets)
        precision, recall = score.precision, score.recall
        report.say(f"précision {precision:.3f}  rappel {recall:.3f}  ({score.matched} situations identiques sur "
                   f"{score.expected} attendues, {score.found} trouvées)")

        report.stage("7. Journal d'audit : ce qui est passé sur les topics")
        _cli(settings, "audit", "sink", "--until-idle", "3")
        report.say("accusés, situations, suites et consentements inscrits au journal (Merkle, RFC 9162)")

        report.stage("8. Liste de travail de la revue mensuelle")
        exports = root / "revue"
        exports.mkdir()
        for fmt in ("html", "csv", "pdf", "json"):
            out = exports / f"revue-{TERRITORY}-{month}.{fmt}"
            _cli(settings, "worklist", "--month", month, "--territory", TERRITORY, "--format", fmt,
                 "--out", str(out), "--user", "secretaire.demo")
            report.say(f"{out} ({out.stat().st_size // 1024} Kio)")
        worklist = json.loads((exports / f"revue-{TERRITORY}-{month}.json").read_text(encoding="utf-8"))
        same = worklist_matches_truth(worklist["cases"], truth["situations"], secrets)
        report.say(f"liste de travail : {len(worklist['cases'])} dossiers, dont {same} identiques à la vérité "
                   f"terrain ({len(truth['situations'])} attendus)")
        if same != len(truth["situations"]) or len(worklist["cases"]) != same:
            raise HelpExchangeError("the worklist differs from the ground truth", f"compare {exports} with "
                                    f"{extracts / 'verite_terrain.json'}")
        leaks = privacy_leaks(exports, extracts, settings)
        report.say(f"contrôle de confidentialité des exports : {len(leaks)} fuite(s) (NIR, référence en "
                   "clair, catégorie médicale)")
        if leaks:
            raise HelpExchangeError(f"personal data found in the exports: {leaks[:5]}", "see the privacy scan")

        report.stage("9. Vérification du journal d'audit")
        head = json.loads(_cli(settings, "audit", "head"))  # covers the worklist's own entries
        verified = _cli(settings, "audit", "verify").strip().splitlines()
        report.say(f"`audit verify` : {verified[-1] if verified else 'ok'}")
        report.say(f"tête signée : {head['tree_size']} entrées, racine {head['root_hash']}, "
                   f"clé {head['signature']['key_id']}")
    finally:
        broker_proc.terminate()
        broker_proc.wait(timeout=10)
        embedded.state_file.unlink(missing_ok=True)
    elapsed = time.monotonic() - report.started
    click.secho(f"\nDémo terminée en {elapsed:.0f} s — fichiers sous {root}", bold=True)
    return 0 if precision == 1.0 and recall == 1.0 else 1


def _cli(settings: Settings, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "services.app.cli", *args], env=_env(settings),
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise HelpExchangeError(f"`help-exchange {' '.join(args[:2])}` failed: {done.stderr.strip()[:500]}",
                                "see the message above")
    return done.stdout


def wait_for_casebook(settings: Settings, versions: dict[str, int], sink: subprocess.Popen[bytes],
                   timeout: float = 120) -> int:
    """Wait until the casebook holds every situation at its latest version."""
    import sqlalchemy as sa

    from services.casebook.tables import situations as table

    engine = sa.create_engine(settings.database_url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if sink.poll() is not None:
                raise HelpExchangeError(f"the casebook sink stopped with status {sink.returncode}",
                                        f"read {settings.var_dir / 'casebook-sink.log'}")
            try:
                with engine.connect() as conn:
                    rows = dict(conn.execute(sa.select(table.c.situation_id, table.c.version)).all())
            except sa.exc.OperationalError:  # tables not migrated yet by the sink
                rows = {}
            if rows == versions:
                return len(rows)
            time.sleep(0.5)
    finally:
        engine.dispose()
    raise HelpExchangeError("the casebook did not catch up with the situations in time",
                            f"read {settings.var_dir / 'casebook-sink.log'}")


@dataclass(frozen=True)
class Score:
    """The situations found against the simulator's ground truth."""

    matched: int
    found: int
    expected: int

    @property
    def precision(self) -> float:
        return self.matched / self.found if self.found else 0.0

    @property
    def recall(self) -> float:
        return self.matched / self.expected if self.expected else 1.0


def compare_with_truth(situations: dict[str, dict[str, Any]], truth: dict[str, Any],
                       secrets: dict[Fund, dict[str, bytes]]) -> Score:
    """A situation matches when its references (opened with each fund's own key), rules and
    priority are exactly a ground-truth situation's."""
    from services.producer.seal import open_sealed

    found = set()
    for sit in situations.values():
        refs = sorted(f"{r['fund']}:" + open_sealed(Fund(r["fund"]), secrets[Fund(r["fund"])],
                                                    r["sealed_ref"]["key_id"], r["sealed_ref"]["value"])
                      for r in sit["refs"])
        found.add((tuple(refs), tuple(sorted(sit["rules"])), sit["priority"]))
    expected = {(tuple(s["references"]), tuple(s["regles"]), s["priorite"]) for s in truth["situations"]}
    return Score(len(found & expected), len(found), len(expected))


def worklist_matches_truth(cases: list[dict[str, Any]], expected: list[dict[str, Any]],
                           secrets: dict[Fund, dict[str, bytes]]) -> int:
    """How many worklist cases are exactly a ground-truth situation, one to one.

    A case names each involved fund once, with one of its sealed references: opened with that
    fund's own key, it must be one of the situation's references; funds, rules and priority
    must be the situation's."""
    from services.producer.seal import open_sealed

    by_ref = {ref: i for i, sit in enumerate(expected) for ref in sit["references"]}
    matched: set[int] = set()
    for case in cases:
        refs = []
        for entry in case["funds"]:
            _, key_id, value = entry["sealed_ref"].split(":", 2)
            fund = Fund(entry["fund"])
            refs.append(f"{fund.value}:{open_sealed(fund, secrets[fund], key_id, value)}")
        candidates = {by_ref.get(ref) for ref in refs}
        if len(candidates) != 1 or None in candidates:
            continue
        (index,) = candidates
        assert index is not None
        sit = expected[index]
        if (sorted(f["fund"] for f in case["funds"]) == sit["organismes"] and sorted(case["rules"]) == sit["regles"]
                and case["priority"] == sit["priorite"] and index not in matched):
            matched.add(index)
    return len(matched)


NIR_LIKE = r"[1-478][0-9]{4}(?:[0-9]{2}|2A|2B)[0-9]{8}"


def export_text(path: Path) -> str:
    """The text a person reads in an export (a PDF's content streams are compressed)."""
    if path.suffix == ".pdf":
        from pypdf import PdfReader

        return "\n".join(page.extract_text() or "" for page in PdfReader(path).pages)
    return path.read_text(encoding="utf-8-sig")


def privacy_leaks(exports: Path, extracts: Path, settings: Settings) -> list[str]:
    """Every NIR (valid key), clear file reference and SENS/MED category found in the exports."""
    import csv
    import re

    from stdnum.fr import nir as stdnum_nir

    from services.core.taxonomy import SignalClass

    secrets: set[str] = set()
    for path in extracts.glob("*.csv"):
        with path.open(encoding="utf-8-sig", newline="") as f:
            secrets |= {row["reference_dossier"] for row in csv.DictReader(f, delimiter=";")}
    medical = [c for c in settings.taxonomy.categories if c.classe is not SignalClass.NM]
    found: list[str] = []
    for path in sorted(exports.iterdir()):
        text = export_text(path)
        compact = re.sub(r"[ .]", "", text)
        found += [f"{path.name}: NIR" for m in re.findall(NIR_LIKE, compact) if stdnum_nir.is_valid(m)]
        found += [f"{path.name}: référence {ref}" for ref in secrets if ref in text]
        found += [f"{path.name}: catégorie {c.code}" for c in medical
                  if re.search(rf"\b{c.code}\b", text) or c.libelle in text]
    return found


def _publish_all(settings: Settings, root: Path, extracts: Path, report: Report) -> int:
    """Publish every fund's extract through the producer; the count of new signals."""
    from services.producer.publish import publish_file

    published = 0
    for fund in FUNDS:
        summary = asyncio.run(publish_file(settings, fund, extracts / f"{fund.value}.csv",
                                           root / f"rejets-{fund.value}.csv"))
        published += summary.new
        rejected = ", ".join(f"{r.value} {n}" for r, n in sorted(summary.rejected.items())) or "aucun"
        report.say(f"{fund.value:<7} lues {summary.read:>5}  publiées {summary.sent:>5}  "
                   f"rejetées {summary.rejected_total:>3} ({rejected})")
        if summary.left or summary.broker_error:
            raise HelpExchangeError(f"{summary.left} signals of {fund.value} are still in the outbox",
                                    summary.broker_error or "see the producer's report")
    return published


def _overrides(settings: Settings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in type(settings).model_fields}


def _port_free(port: int) -> bool:
    from services.platform.broker import port_is_free

    return port_is_free("127.0.0.1", port)


def register(cli: click.Group) -> None:
    @cli.command("demo")
    @click.option("--month", default=None, help="Month to simulate, YYYY-MM (default: the current month).")
    @click.option("--seed", type=int, default=1, show_default=True)
    @click.option("--scheme", type=click.Choice(["v1", "v2"]), default=None,
                  help="Pseudonym scheme (default: HELP_PSEUDONYM_SCHEME): v2 runs the pseudonymisation "
                       "service and the funds hold no exchange key.")
    @click.pass_context
    def demo(ctx: click.Context, month: str | None, seed: int, scheme: str | None) -> None:
        """Run the main job end to end on the embedded default and print what it did:
        broker, topics, keys, a simulated month, publication, correlation, comparison with
        the ground truth (precision and recall)."""
        from services.platform.cli import settings_from

        settings = settings_from(ctx)
        if scheme is not None:
            settings = load_settings(**{**_overrides(settings), "pseudonym_scheme": scheme})
        ctx.exit(run_demo(settings, month=month, seed=seed))


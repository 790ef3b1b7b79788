"""``make bench``: run every benchmark in turn, each in its own process on this machine, and
write ``bench/report.json`` and ``bench/report.md`` from what they measured in this run.

Benchmarks measure, they do not assert: each target is printed beside its figure so that a
reader sees at once where we stand. A benchmark that fails or prints no figures is reported
as such, never filled in.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import MARKER

ORDER = ("producer", "pseudonymiser", "rotation", "correlator", "engine_step", "scaling", "national", "worklist",
         "ledger")
HERE = Path(__file__).parent

# (bench, figure key, label, unit, target, "min" if the figure must reach the target, "max" if stay under)
ROWS: tuple[tuple[str, str, str, str, float | None, str], ...] = (
    ("correlator", "raw_rate", "Consommation aiokafka brute des topics de signalements", "signaux/s", None, ""),
    ("correlator", "full_rate", "Correlator, tous contrôles actifs", "signaux/s", 6000, "min"),
    ("correlator", "ratio", "Rapport correlator / consommation brute", "", None, ""),
    ("correlator", "quix_rate", "Quix Streams, même travail (signature, schéma, politique, état par personne "
     "dans RocksDB, une règle), mêmes signaux, même exécution", "signaux/s", None, ""),
    ("correlator", "quix_signals_per_cpu_second", "Quix Streams, signaux par seconde de CPU de son processus",
     "signaux/s", None, ""),
    ("correlator", "ratio_quix", "Rapport correlator / Quix Streams", "", 1, "min"),
    ("correlator", "ratio_quix_per_cpu", "Rapport correlator / Quix Streams par seconde de CPU (worker et "
     "processus de contrôle ensemble, contre le processus Quix)", "", None, ""),
    ("correlator", "situations", "Situations ouvertes sur ces signaux, les mêmes pour le correlator et Quix Streams",
     "situations", None, ""),
    ("correlator", "plain_rate", "Agent Faust simple, message par message (signature, validation, écriture "
     "de table), mêmes signaux, même exécution", "signaux/s", None, ""),
    ("correlator", "plain_signals_per_cpu_second", "Agent Faust simple, signaux par seconde de CPU de son processus",
     "signaux/s", None, ""),
    ("correlator", "ratio_plain", "Rapport correlator / agent Faust simple (mesuré avant l'issue 19 : 2,2 à 2,9)",
     "", 3, "min"),
    ("correlator", "ratio_plain_per_cpu", "Rapport correlator / agent Faust simple par seconde de CPU (worker et "
     "processus de contrôle ensemble, contre le processus de l'agent)", "", None, ""),
    ("correlator", "signals_per_cpu_second", "Correlator, signaux par seconde de CPU du processus worker",
     "signaux/s", None, ""),
    ("correlator", "signals_per_cpu_second_with_helpers",
     "Correlator, signaux par seconde de CPU, worker et processus de contrôle ensemble", "signaux/s", None, ""),
    ("correlator", "broker_cpu_us_per_signal", "Broker embarqué, CPU par signal pendant la mesure", "µs", None, ""),
    ("correlator", "latency_p50_ms", "Latence publication → situation à 2 000 signaux/s, p50", "ms", None, ""),
    ("correlator", "latency_p99_ms", "Latence publication → situation à 2 000 signaux/s, p99", "ms", 500, "max"),
    ("engine_step", "reference_us", "Étape du moteur seule (état, règles, événements, accusés), référence "
     "(modèles validés)", "µs/signal", None, ""),
    ("engine_step", "fast_us", "Étape du moteur seule, chemin rapide (mêmes octets en sortie)", "µs/signal", None, ""),
    ("engine_step", "cpu_saved", "Étape du moteur seule, part de CPU économisée par le chemin rapide", "", None, ""),
    ("producer", "lines_per_s", "Producteur, fichier de 100 000 lignes de bout en bout", "lignes/s", 15000, "min"),
    ("producer", "cpu_us_per_line", "Producteur, CPU par ligne (processus d'envoi et ses ouvriers)", "µs", None, ""),
    ("producer", "peak_rss_mib", "Producteur, mémoire maximale", "Mio", None, ""),
    ("pseudonymiser", "service_evals_per_cpu_s", "Service de pseudonymisation (v2), lots de 4 096, un cœur",
     "évaluations/s", 5000, "min"),
    ("pseudonymiser", "producer_lines_per_s", "Producteur avec le service de pseudonymisation (v2), "
     "100 000 lignes de bout en bout", "lignes/s", 5000, "min"),
    ("pseudonymiser", "producer_cached_lines_per_s", "Producteur v2, mêmes personnes une seconde fois "
     "(cache local du fonds)", "lignes/s", 5000, "min"),
    ("pseudonymiser", "v2_total_us", "CPU supplémentaire par nouvelle personne (v2 : aveuglement, évaluation, "
     "preuve, finalisation)", "µs", None, ""),
    ("pseudonymiser", "extra_cpu_us_per_new_person", "CPU supplémentaire par nouvelle personne de bout en bout "
     "(producteur, service et courtier : nouvelles personnes moins personnes connues)", "µs", None, ""),
    ("pseudonymiser", "publisher_cpu_us_per_line", "Producteur v2, nouvelles personnes : CPU par ligne "
     "(processus d'envoi et ses ouvriers)", "µs", None, ""),
    ("pseudonymiser", "service_cpu_us_per_line", "Producteur v2, nouvelles personnes : CPU du service par ligne",
     "µs", None, ""),
    ("pseudonymiser", "broker_cpu_us_per_line", "Producteur v2, nouvelles personnes : CPU du courtier par ligne",
     "µs", None, ""),
    ("pseudonymiser", "total_cpu_us_per_line", "Producteur v2, nouvelles personnes : CPU total par ligne "
     "(producteur, service, courtier ; 2 cœurs ÷ 5 000 lignes/s = 400 µs)", "µs", 400, "max"),
    ("rotation", "persons", "Rotation de clé v2 au milieu du mois : personnes simulées", "personnes", None, ""),
    ("rotation", "links_kept_pct", "Rotation de clé : liens conservés (personnes vues sous les deux versions)",
     "%", 100, "min"),
    ("rotation", "split", "Rotation de clé : situations scindées (vérité du simulateur)", "", None, ""),
    ("rotation", "doubled", "Rotation de clé : situations en double (vérité du simulateur)", "", None, ""),
    ("rotation", "total_s", "Rotation de clé : durée totale de l'exécution", "s", None, ""),
    ("worklist", "total_s_10000", "Liste de travail, 10 000 situations (HTML + CSV)", "s", None, ""),
    ("worklist", "total_s_100000", "Liste de travail, 100 000 situations (HTML + CSV)", "s", 10, "max"),
    ("ledger", "append_per_s", "Journal d'audit, ajout avec points de contrôle et tuiles "
     "(avant l'issue 16 : 16 400 à 24 600/s)", "entrées/s", 25000, "min"),
    ("ledger", "verify_s", "Journal d'audit, vérification complète de 1 000 000 d'entrées "
     "depuis la base", "s", 60, "max"),
    ("ledger", "verify_tiles_s", "Journal d'audit, vérification de 1 000 000 d'entrées depuis "
     "les tuiles seules (avant : 24 à 45 s depuis la base)", "s", 15, "max"),
    ("scaling", "bytes_per_person", "Correlator, mémoire par personne active", "octets", None, ""),
    ("scaling", "peak_rss_mib_tenth", "Correlator, mémoire maximale du worker à 100 000 personnes", "Mio", None, ""),
    ("scaling", "peak_rss_mib_large", "Correlator, mémoire maximale du worker à 1 000 000 de personnes", "Mio",
     512, "max"),
    ("scaling", "peak_rss_ratio", "Rapport mémoire maximale 1 000 000 / 100 000 personnes", "", 1.5, "max"),
    ("scaling", "restart_reopen_s", "Reprise à froid après kill -9, état de 1 000 000 de personnes rouvert",
     "s", 60, "max"),
    ("scaling", "restart_rebuild_s", "État de 1 000 000 de personnes reconstruit depuis le changelog "
     "(magasin local supprimé)", "s", 60, "max"),
    ("national", "total_s", "1 000 000 de signaux de quatre fonds, de la première ligne lue à la dernière "
     "situation au casebook (publication et corrélation simultanées)", "s", 240, "max"),
    ("national", "producer_lines_per_s", "Producteur pendant cette nuit (quatre fichiers de bout en bout)",
     "lignes/s", 15000, "min"),
    ("national", "correlator_signals_per_s", "Correlator pendant cette nuit (du premier au dernier accusé)",
     "signaux/s", None, ""),
    ("national", "stalls", "Partitions signalées bloquées par le chien de garde pendant cette nuit", "", 0, "max"),
)


def run(name: str) -> tuple[dict[str, Any] | None, int, float]:
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", f"bench.{name}"], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    figures = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(MARKER):
            figures = json.loads(line[len(MARKER):])
        else:
            print(line, end="", flush=True)
    return figures, proc.wait(), time.monotonic() - started


def fr(value: float, decimals: int = 0) -> str:
    """A number as a French reader reads it: 12 345,6 (a comma would read as a decimal point)."""
    text = f"{value:,.{decimals}f}"
    return text.replace(",", "\u202f").replace(".", ",")


def verdict(value: float, target: float | None, sense: str) -> str:
    if target is None:
        return ""
    ok = value >= target if sense == "min" else value <= target
    return ("atteint" if ok else "NON ATTEINT") + f" (cible {'≥' if sense == 'min' else '<'} {fr(target)})"


def write_report(results: dict[str, Any], path_md: Path, path_json: Path) -> None:
    path_json.write_text(json.dumps(results, ensure_ascii=False, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    lines = [
        "# help-exchange — rapport de performances",
        "",
        f"Mesuré le {results['measured_at']} sur {results['machine']}, en une seule exécution de `make bench` ;",
        "chaque chiffre vient d'une mesure de cette exécution (aucun n'est recopié).",
        "",
        "| mesure | valeur | unité | objectif |",
        "| --- | ---: | --- | --- |",
    ]
    for bench, key, label, unit, target, sense in ROWS:
        figures = results["benches"].get(bench, {}).get("figures") or {}
        if key not in figures:
            lines.append(f"| {label} | non mesuré | {unit} | |")
            continue
        value = figures[key]
        shown = fr(value, 3) if isinstance(value, float) and value < 10 else fr(value)
        lines.append(f"| {label} | {shown} | {unit} | {verdict(float(value), target, sense)} |")
    scaling = results["benches"].get("scaling", {}).get("figures") or {}
    if scaling.get("runs"):
        lines += ["", "## Croissance du correlator de 10 000 à 1 000 000 de personnes", "",
                  "| signaux | personnes | démarrage du worker (s) | durée totale (s) | débit (signaux/s) "
                  "| mémoire max du worker (Mio) |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in scaling["runs"]:
            lines.append(f"| {fr(r['signals'])} | {fr(r['persons'])} | {fr(r['startup_s'], 1)} | "
                         f"{fr(r['seconds'], 1)} | {fr(r['rate'])} | {fr(r['peak_rss_mib'])} |")
    lines += ["", "## Exécutions", "", "| benchmark | statut | durée |", "| --- | --- | ---: |"]
    for name, info in results["benches"].items():
        lines.append(f"| {name} | {'ok' if info['exit'] == 0 else 'échec, code ' + str(info['exit'])} | "
                     f"{fr(info['seconds'])} s |")
    path_md.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> int:
    only = sys.argv[1:] or list(ORDER)
    results: dict[str, Any] = {
        "measured_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cœurs, Python {platform.python_version()}",
        "benches": {},
    }
    for name in only:
        if not (HERE / f"{name}.py").exists():
            print(f"== bench.{name}: absent", flush=True)
            continue
        print(f"== bench.{name}", flush=True)
        figures, code, seconds = run(name)
        print(f"== bench.{name}: exit {code} in {seconds:.0f} s", flush=True)
        results["benches"][name] = {"exit": code, "seconds": seconds, "figures": figures}
    write_report(results, HERE / "report.md", HERE / "report.json")
    print(f"report: {HERE / 'report.md'}, {HERE / 'report.json'}")
    return 0 if all(b["exit"] == 0 and b["figures"] for b in results["benches"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

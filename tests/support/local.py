"""What the tests run on this machine: the repository's root, a free loopback port, a real
embedded broker."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

from services.platform.broker import EmbeddedBroker
from services.platform.kafka import apply_topics
from services.platform.settings import load_settings
from services.platform.topics import load_topic_specs

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def embedded_broker(var: Path) -> Iterator[str]:
    """A real embedded broker (Tansu) on a free loopback port, with every topic applied."""
    settings = load_settings(var_dir=var, broker_port=free_port())
    embedded = EmbeddedBroker(settings)
    state, proc = embedded.start(detach=False)
    try:
        specs = load_topic_specs(settings.schemas_dir / "asyncapi.yaml")
        asyncio.run(apply_topics(settings, state.bootstrap, specs))
        yield state.bootstrap
    finally:
        proc.terminate()
        proc.wait(timeout=10)

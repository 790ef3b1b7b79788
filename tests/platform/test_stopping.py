"""How services stop (services/platform/stopping.py, serving.py): a stop signal lets the work
in flight finish; past the bound the process is cut short; an HTTP server stops accepting
and answers the requests it was handling."""

from __future__ import annotations

import asyncio
import http.client
import http.server
import os
import signal
import threading
import time

import pytest

from services.platform.serving import serve_until_interrupted
from services.platform.stopping import Deadline, stop_on_signals


def test_a_deadline_fires_once_armed_and_only_then() -> None:
    fired: list[str] = []
    deadline = Deadline(0.2, "test", on_expiry=fired.append)
    time.sleep(0.3)
    assert fired == []  # not armed: never
    deadline.arm()
    deadline.arm()  # a second signal does not extend nor double it
    time.sleep(0.5)
    assert len(fired) == 1 and "did not finish within" in fired[0]


def test_a_cancelled_deadline_does_not_fire() -> None:
    fired: list[str] = []
    deadline = Deadline(0.2, "test", on_expiry=fired.append)
    deadline.arm()
    deadline.cancel()
    time.sleep(0.4)
    assert fired == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_stop_signal_sets_the_event_and_arms_the_deadline(signum: int) -> None:
    stop = asyncio.Event()
    deadline = Deadline(60, "test", on_expiry=lambda what: None)
    stop_on_signals(stop, deadline)
    try:
        os.kill(os.getpid(), signum)
        await asyncio.wait_for(stop.wait(), 5)
        assert deadline.armed
    finally:
        deadline.cancel()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


class _Slow(http.server.BaseHTTPRequestHandler):
    entered = threading.Event()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        _Slow.entered.set()
        time.sleep(1.0)  # a request in flight when the stop comes
        body = b"done"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_server_stopped_answers_the_request_in_flight_and_accepts_no_more() -> None:
    assert threading.current_thread() is threading.main_thread()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    server.daemon_threads = True  # as the project's servers are made; serving tracks them anyway
    port = server.server_address[1]
    answers: list[tuple[int, bytes]] = []
    refused: list[BaseException] = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/")
        response = conn.getresponse()
        answers.append((response.status, response.read()))

    def stopper() -> None:
        _Slow.entered.wait(10)
        os.kill(os.getpid(), signal.SIGTERM)

    fired: list[str] = []
    before = signal.getsignal(signal.SIGTERM)
    threads = [threading.Thread(target=client), threading.Thread(target=stopper)]
    for t in threads:
        t.start()
    started = time.monotonic()
    serve_until_interrupted(server, Deadline(30, "test", on_expiry=fired.append))
    took = time.monotonic() - started
    for t in threads:
        t.join(10)
    assert answers == [(200, b"done")], answers  # answered, though the stop came meanwhile
    assert took >= 1.0 and fired == []
    try:
        http.client.HTTPConnection("127.0.0.1", port, timeout=2).request("GET", "/")
    except OSError as exc:
        refused.append(exc)
    assert refused, "the server still accepts connections after its stop"
    assert signal.getsignal(signal.SIGTERM) == before  # the previous handler is back

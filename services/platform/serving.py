"""Run a small standard-library HTTP server in the foreground until SIGTERM or SIGINT.

The servers of the project run from a CLI command (the pseudonymisation service, the
ledger's tiles, a fund's witness): one way to run them and to stop them
(:mod:`services.platform.stopping`): on SIGTERM or SIGINT the server stops accepting
connections, answers the requests already being handled, closes its socket and returns
(exit 0), within the bound given (past it the process exits 75).
"""

from __future__ import annotations

import signal
import socketserver
import threading
from types import FrameType

from services.platform.stopping import STOP_SIGNALS, Deadline

#: How often the foreground thread looks whether the server thread still runs.
_LOOK_S = 0.5


def serve_until_interrupted(server: socketserver.BaseServer, deadline: Deadline | None = None) -> None:
    """Serve until SIGTERM or SIGINT (or until the serving loop ends); then stop accepting,
    let the requests in flight be answered (``deadline`` armed meanwhile, if given) and close
    the socket. Signal handlers are installed only from the main thread (elsewhere, the
    caller stops the server with ``server.shutdown()``)."""
    stop = threading.Event()

    def requested(signum: int, frame: FrameType | None) -> None:
        if deadline is not None:
            deadline.arm()
        stop.set()

    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, requested) for sig in STOP_SIGNALS} if main else {}
    if isinstance(server, socketserver.ThreadingMixIn):
        # Request threads tracked, so that server_close() waits for the answers in flight.
        server.daemon_threads = False
        server.block_on_close = True
    serving = threading.Thread(target=server.serve_forever, name="http-server", daemon=True)
    serving.start()
    try:
        while not stop.wait(_LOOK_S) and serving.is_alive():
            pass
    finally:
        server.shutdown()  # the accept loop ends: no new connection
        server.server_close()  # the listening socket closed; the request threads joined
        for sig, handler in previous.items():
            signal.signal(sig, handler)

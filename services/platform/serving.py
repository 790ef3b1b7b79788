"""Run a small standard-library HTTP server in the foreground until Ctrl-C.

The read-only servers of the project (the ledger's tiles, a fund's witness, the
pseudonymisation service) are ``http.server`` servers run from a CLI command: one way to run
them and to close their socket whatever ends the loop."""

from __future__ import annotations

import socketserver


def serve_until_interrupted(server: socketserver.BaseServer) -> None:
    """``server.serve_forever()``; Ctrl-C ends it quietly; the socket is always closed."""
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()

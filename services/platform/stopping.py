"""How a long-running service stops: SIGTERM or SIGINT ask for a stop, the work in progress
finishes and is committed, and the process exits 0; within a bound, or not at all.

Every service that consumes or serves (the correlator worker, the casebook and audit sinks,
the pseudonymisation service and the other HTTP servers) stops the same way:

1. the signal is taken as a request: nothing new is started (no new batch, no new poll, no
   new connection accepted);
2. what is in progress finishes and is committed by the service's normal path (the
   correlator's checkpoint order, a sink's transaction, an HTTP answer);
3. the process exits 0.

The bound: a stop that has not ended ``Settings.drain_timeout_s`` seconds after it was asked
for (a broker that no longer acknowledges, a database lock) is cut short by :class:`Deadline`:
the process exits at once with :data:`EXIT_UNDRAINED`, committing nothing more. That is as
safe as a crash: every service commits its position only with (or after) its effects, so
what was not committed is read again at the next start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Callable

log = logging.getLogger("help.stopping")

#: Exit status of a process that stopped without committing all it had started (a stop past
#: its bound, or a failure that made it stop at once): the supervisor restarts it and it
#: resumes from its last commit. (EX_TEMPFAIL: a temporary failure, try again.)
EXIT_UNDRAINED = 75

#: The signals that ask a service to stop.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_now(what: str) -> None:
    """Log ``what`` and leave the process at once (no cleanup, no commit)."""
    log.critical("%s: exiting now without committing more (exit %d)", what, EXIT_UNDRAINED)
    logging.shutdown()
    os._exit(EXIT_UNDRAINED)


class Deadline:
    """Armed when a stop begins: if the process still runs ``seconds`` later, it exits at once
    (:func:`exit_now`). A daemon thread, so it works while the event loop is blocked and
    never keeps a process alive."""

    def __init__(self, seconds: float, name: str,
                 on_expiry: Callable[[str], None] = exit_now) -> None:
        self.seconds = seconds
        self.name = name
        self._on_expiry = on_expiry
        self._timer: threading.Timer | None = None

    def arm(self) -> None:
        """Start counting (once: a second signal does not extend the bound)."""
        if self._timer is not None:
            return
        log.warning("%s: stopping; finishing the work in progress (at most %.0f s)", self.name, self.seconds)
        self._timer = threading.Timer(self.seconds, self._expired)
        self._timer.daemon = True
        self._timer.start()

    @property
    def armed(self) -> bool:
        return self._timer is not None

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _expired(self) -> None:
        self._on_expiry(f"{self.name}: the work in progress did not finish within {self.seconds:.0f} s")


def stop_on_signals(stop: asyncio.Event, deadline: Deadline) -> None:
    """On SIGTERM or SIGINT, set ``stop`` and arm ``deadline`` (in the running event loop)."""
    loop = asyncio.get_running_loop()

    def requested() -> None:
        deadline.arm()
        stop.set()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, requested)

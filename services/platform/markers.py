"""The exchange's marker key: what its "do not process" markers are keyed with.

32 random bytes made once (mode 0600) in ``<key_dir>/markers/marker.key`` by whichever
exchange process needs it first (the casebook sink, a correlator worker: creation is
exclusive, a process that loses the race reads the winner's file). Funds never receive it,
so no one holding a pseudonym can recompute a marker (docs/erasure.md). Losing it only
loses what the markers remember: keep it with the exchange's other keys.
"""

from __future__ import annotations

import contextlib
import secrets

from services.core.registry import write_secret
from services.errors import ConfigurationError
from services.platform.settings import Settings


def marker_key(settings: Settings) -> bytes:
    path = settings.key_dir / "markers" / "marker.key"
    try:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        with contextlib.suppress(FileExistsError):  # another process made it first
            write_secret(path, secrets.token_bytes(32))
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read or create the marker key {path}: {exc.strerror}",
                                 "HELP_KEY_DIR must be writable by the exchange the first time "
                                 "(or hold markers/marker.key)") from exc

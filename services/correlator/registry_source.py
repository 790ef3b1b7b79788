"""The key registry as the running correlator sees it: verified, and re-read when it changes.

The registry file is the exchange operator's artifact (``help-exchange keys …`` writes it and
its signature, see :mod:`services.core.registry` and docs/keys.md). The correlator takes it
only if ``registry.json.sig`` verifies under the pinned registry signer public key
(``settings.registry_signer_path``), at start (else it does not start) and on every change:

- :meth:`RegistrySource.poll` is called once per batch: two ``os.stat`` (the registry and
  its signature); when either changed, the files are read, verified and
  parsed, and the new registry is returned (the engine then hands it to its checks, the
  check helpers included, before their next request);
- when a signal names a key id the loaded registry does not know, the engine polls once
  more before refusing it (a key registered a moment ago is then taken);
- a registry whose signature does not verify, or that does not parse, is not taken: the
  last good one stays, and one line says why (once per version of the files). The two
  files are replaced one after the other by the writer: a read that falls between the two
  renames is tried again once, shortly after, before being judged.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from services.core.registry import Registry, load_signer_public, load_verified_registry, signature_path
from services.errors import ConfigurationError

log = logging.getLogger("help.correlator")

#: How long to wait before reading again files that did not verify (a writer between renames).
RETRY_AFTER_S = 0.05

_Stamp = tuple[tuple[int, int, int], ...]


def _stamp(*paths: Path) -> _Stamp:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            out.append((-1, -1, -1))
        else:
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


class RegistrySource:
    """The last good verified registry of ``path``, refreshed by :meth:`poll`."""

    def __init__(self, path: Path, signer: Ed25519PublicKey | Path) -> None:
        self.path = path
        self.sig_path = signature_path(path)
        self.signer = signer if isinstance(signer, Ed25519PublicKey) else load_signer_public(signer)
        self._stamp = _stamp(self.path, self.sig_path)
        #: Raises ConfigurationError: without a good registry the correlator does not start.
        self.registry: Registry = load_verified_registry(self.path, self.signer)
        #: Incremented each time a new registry is taken.
        self.generation = 0
        self.refused = 0

    def poll(self) -> Registry | None:
        """The new registry if the files changed and verify; None if nothing new was taken."""
        stamp = _stamp(self.path, self.sig_path)
        if stamp == self._stamp:
            return None
        try:
            registry = load_verified_registry(self.path, self.signer)
        except ConfigurationError:
            time.sleep(RETRY_AFTER_S)  # perhaps between the writer's two renames
            stamp = _stamp(self.path, self.sig_path)
            try:
                registry = load_verified_registry(self.path, self.signer)
            except ConfigurationError as exc:
                self._stamp = stamp  # judged: said once, looked at again when it changes
                self.refused += 1
                log.error("correlator: key registry change NOT taken, keeping the last good one: %s — %s",
                          exc.what, exc.hint)
                return None
        self._stamp = stamp
        if registry == self.registry:
            return None
        self.registry = registry
        self.generation += 1
        # WARNING: the level the worker prints; a change of what it trusts is worth a line.
        log.warning("correlator: key registry reloaded (%s, signature verified): %d active signing keys",
                    self.path, registry.active_signing_keys())
        return registry

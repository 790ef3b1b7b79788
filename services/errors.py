"""The one error tree of help-exchange.

Every error a user or operator can meet derives from :class:`HelpExchangeError` and carries
two sentences: ``what`` went wrong and ``hint``, how to fix it. The CLI prints them on one
line each, without a traceback, and exits with :attr:`HelpExchangeError.exit_code`.

::

    HelpExchangeError
    ├── ConfigurationError      a setting or a data file (taxonomy, policy) is wrong
    ├── BrokerError             the Kafka side
    │   ├── BrokerUnreachable   nothing answers at the bootstrap servers
    │   └── BrokerStartError    the embedded broker cannot start (port in use, no binary)
    ├── ContractError           a message breaks the published contract (permanent)
    ├── PolicyViolation         a message is well-formed but L115-2-1 forbids it (permanent)
    ├── CryptoError             a key is missing or a signature/seal does not verify
    ├── InputError              a user-supplied file or argument is unusable
    └── TransientError          worth retrying (database or broker briefly away)

Permanent errors carry a ``reason`` (a :class:`services.core.reasons.Reason`) so that
receipts and dead letters name the exact cause.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.core.reasons import Reason


class HelpExchangeError(Exception):
    """Base of every error raised on purpose by help-exchange."""

    exit_code: int = 1

    def __init__(self, what: str, hint: str = "") -> None:
        super().__init__(what)
        self.what = what
        self.hint = hint

    def one_line(self) -> str:
        """The message as the CLI prints it: what, then how to fix it."""
        return f"{self.what} — {self.hint}" if self.hint else self.what


class ConfigurationError(HelpExchangeError):
    """A setting or a data file is invalid."""


class BrokerError(HelpExchangeError):
    """Something went wrong talking to, or starting, the Kafka broker."""


class BrokerUnreachable(BrokerError):
    """No Kafka broker answers at the configured bootstrap servers."""


class BrokerStartError(BrokerError):
    """The embedded broker could not be started."""


class _Permanent(HelpExchangeError):
    def __init__(self, reason: Reason, what: str, hint: str = "") -> None:
        super().__init__(what, hint)
        self.reason = reason


class ContractError(_Permanent):
    """A message does not follow the published contract in ``schemas/``."""


class PolicyViolation(_Permanent):
    """A well-formed message that article L115-2-1 (as ``schemas/policy.yaml`` says) forbids."""


class CryptoError(_Permanent):
    """A key is missing, or a signature or a seal does not verify."""


class InputError(HelpExchangeError):
    """A user-supplied file or argument cannot be used."""

    exit_code = 2


class TransientError(HelpExchangeError):
    """A failure worth retrying: the caller retries, then stops without committing."""

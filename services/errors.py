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
    ├── PermanentError          retrying cannot help; carries a ``reason``
    │   ├── Rejected            a record, message or request refused: ``reason`` and ``field``
    │   └── CryptoError         a key is missing or a signature/seal does not verify
    ├── InputError              a user-supplied file or argument is unusable
    └── TransientError          worth retrying (database or broker briefly away)

Permanent errors carry a ``reason`` (a :class:`services.core.reasons.Reason`) so that
receipts, reject reports and dead letters name the exact cause. Kafka client errors become
these through one mapping, :func:`services.platform.kafka.kafka_errors`.
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


class PermanentError(HelpExchangeError):
    """Retrying cannot help: the same input gets the same answer. ``reason`` names the cause."""

    def __init__(self, reason: Reason, what: str, hint: str = "") -> None:
        super().__init__(what, hint)
        self.reason = reason


#: What a fund does about a refused record (the reject reports say it on every line).
FIX_AND_RESEND = "fix the record in the back-office and send it again"


class Rejected(PermanentError):
    """A record, a message or a request refused: ``reason`` and the ``field`` it is about.

    ``field`` is a column of the fund's file (``nir``, ``date_observation``), or, for a
    message, a pointer and code (``/purpose:consent_withdrawn``). The default message is
    ``"<field>: <reason's French label>"``: it never quotes the value (it may be a NIR).
    Picklable: the producer builds signals in worker processes."""

    exit_code = 2

    def __init__(self, reason: Reason, field: str, what: str | None = None, hint: str = FIX_AND_RESEND) -> None:
        super().__init__(reason, f"{field}: {reason.label}" if what is None else what, hint)
        self.field = field
        self._args = (reason, field, what, hint)

    def __reduce__(self) -> tuple[type[Rejected], tuple[Reason, str, str | None, str]]:
        return (type(self), self._args)


class CryptoError(PermanentError):
    """A key is missing, or a signature or a seal does not verify."""


class InputError(HelpExchangeError):
    """A user-supplied file or argument cannot be used."""

    exit_code = 2


class TransientError(HelpExchangeError):
    """A failure worth retrying: the caller retries, then stops without committing."""

"""The one settings object of help-exchange (environment variables prefixed ``HELP_``).

Only settings differ between the embedded default (Tansu broker on loopback + SQLite under
``var/``) and production (Apache Kafka + PostgreSQL): the code paths are the same.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.core.policy import Policy, load_policy
from services.core.rules import Rules
from services.core.taxonomy import Taxonomy, load_taxonomy
from services.core.types import Departement
from services.errors import ConfigurationError

#: The repository's ``schemas/`` (the published contract), found from this file.
DEFAULT_SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"

_HINTS = {
    "bootstrap_servers": "use host:port[,host:port…], or leave it unset for the embedded broker",
    "database_url": "use an SQLAlchemy URL such as sqlite:///var/casebook.db or postgresql+psycopg://user@host/db",
    "territory": "use a département code: 01-95, 2A, 2B or 971-976",
    "broker_port": "use a free TCP port number between 1024 and 65535",
    "registry_signer": "give the path of the exchange's registry-signer.pub (PEM), "
                       "or leave it unset for <key_dir>/registry-signer.pub",
    "broker_connect_timeout_s": "give a number of seconds between 0 and 120, e.g. 5",
    "casebook_close_after_months": "give a whole number of months between 1 and 60",
    "casebook_users_file": "give the path of the users file, or leave it unset for <var_dir>/users.json",
    "casebook_session_secret": "use at least 32 random characters (python -c 'import secrets; "
                               "print(secrets.token_urlsafe(48))'), or leave it unset for a key kept in "
                               "<var_dir>/casebook-session.key",
    "casebook_session_max_age_s": "give a number of seconds between 60 and 604800 (7 days)",
    "casebook_session_idle_s": "give a number of seconds between 5 and 86400 (1 day), e.g. 1800",
    "casebook_signin_delay_after": "give a number of failed sign-ins between 1 and 100",
    "casebook_signin_lockout_failures": "give a number of failed sign-ins between 2 and 1000",
    "casebook_signin_lockout_s": "give a number of seconds between 10 and 86400",
    "casebook_secure_cookies": "use true (behind HTTPS) or false, or leave it unset: secure unless bound to "
                               "loopback",
    "casebook_oidc_issuer": "give the provider's issuer URL, e.g. https://auth.agentconnect.gouv.fr/api/v2",
    "casebook_oidc_client_secret": "give the secret the provider issued (16 characters at least)",
    "casebook_oidc_redirect_uri": "give this web view's address followed by /login/oidc/callback",
    "casebook_oidc_scopes": "give space-separated scopes starting with openid, e.g. 'openid email siret'",
    "casebook_oidc_mapping": "give the path of the claims mapping file (YAML, see services/casebook/oidc.py)",
    "drain_timeout_s": "give a number of seconds between 1 and 600, e.g. 30",
    "signal_sealing": "use required (only sealed signals) or accepted (signals in clear too)",
    "signal_keys_url": "give the key endpoint's address, e.g. http://127.0.0.1:19490",
    "signal_keys_quota_per_day": "give a whole number of keys between 1 and 100000000",
    "signal_keys_batch_limit": "give a whole number of pseudonyms between 1 and 65535, e.g. 4096",
    "signal_keys_timeout_s": "give a number of seconds above 0, at most 120, e.g. 10",
    "correlator_app_id": "use letters, digits, '.', '_' or '-' (it names the consumer group and the state topic)",
    "correlator_batch_max": "give a whole number of records between 1 and 100000, e.g. 5000",
    "correlator_batch_wait_ms": "give a number of milliseconds between 0 and 1000, e.g. 2",
    "correlator_fetch_wait_ms": "give a whole number of milliseconds between 10 and 10000, e.g. 100",
    "correlator_fetch_max_bytes": "give a whole number of bytes between 65536 and 52428800, e.g. 1048576",
    "correlator_linger_ms": "give a whole number of milliseconds between 0 and 1000, e.g. 5",
    "correlator_check_processes": "give a whole number of helper processes between 0 and 64 (about one per spare core)",
    "correlator_gc_full_every_s": "give a number of seconds between 0 (CPython's own schedule) and 86400",
    "correlator_trim_every_s": "give a number of seconds between 0 (never) and 3600, e.g. 2",
    "correlator_sweep_every_s": "give a number of seconds between 0.1 and 3600",
    "correlator_sweep_page": "give a whole number of persons between 1 and 1000000",
    "correlator_state_cache": "give a whole number of persons between 0 and 10000000, e.g. 20000",
    "correlator_hold_max": "give a whole number of records between 1 and 1000000, e.g. 10000",
    "correlator_hold_warn_s": "give a number of seconds between 1 and 86400, e.g. 300",
    "metrics_port": "give a free TCP port between 1024 and 65535 (e.g. 9464), or 0 / leave it unset for no "
                    "metrics endpoint",
    "metrics_host": "give the address to listen on: 0.0.0.0 in a container, 127.0.0.1 on a shared host",
    "lag_probe_every_s": "give a number of seconds between 0.5 and 300, e.g. 5",
    "watchdog_stall_s": "give a number of seconds between 1 and 86400, e.g. 60",
    "watchdog_exit": "use true (exit so that the supervisor restarts the worker) or false (report only)",
    "retention_signals_months": "give a whole number of months between 1 and 240",
    "retention_situations_months": "give a whole number of months between 1 and 240",
    "retention_closed_months": "give a whole number of months between 1 and 240",
    "retention_sign_ins_months": "give a whole number of months between 1 and 240",
}

#: Settings whose value is never printed (``help-exchange settings``, error messages, repr).
SECRET_FIELDS = frozenset({"casebook_session_secret", "casebook_oidc_client_secret"})

#: A retention period, in whole months.
Months = Annotated[int, Field(ge=1, le=240)]


class Settings(BaseSettings):
    """Every setting, read once from the environment (and ``.env`` if present)."""

    model_config = SettingsConfigDict(env_prefix="HELP_", env_file=".env", extra="ignore", frozen=True)

    bootstrap_servers: Annotated[
        str | None, Field(pattern=r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}(,[A-Za-z0-9.\-\[\]:]+:\d{1,5})*$")
    ] = None
    """Kafka bootstrap servers. Unset: use (and if needed start) the embedded broker."""

    database_url: Annotated[str, Field(pattern=r"^(sqlite|postgresql)(\+\w+)?://")] = "sqlite:///var/casebook.db"
    key_dir: Path = Path("var/keys")
    registry_signer: Path | None = None
    """The pinned public key (PEM) of the exchange's registry key: the correlator takes
    ``<key_dir>/registry.json`` only if ``registry.json.sig`` verifies under it (docs/keys.md).
    Unset: ``<key_dir>/registry-signer.pub``. In production, point it at a read-only copy."""
    var_dir: Path = Path("var")
    schemas_dir: Path = DEFAULT_SCHEMAS_DIR
    territory: Departement = "35"

    broker_host: str = "127.0.0.1"
    broker_port: Annotated[int, Field(ge=1024, le=65535)] = 19092
    broker_start_timeout_s: Annotated[float, Field(gt=0, le=120)] = 20.0
    #: How long a command waits for HELP_BOOTSTRAP_SERVERS to answer before it says so and stops.
    broker_connect_timeout_s: Annotated[float, Field(gt=0, le=120)] = 5.0
    #: Kafka's idempotent producer; the embedded broker refuses its handshake, Apache Kafka takes it.
    enable_idempotence: bool = False
    request_timeout_ms: Annotated[int, Field(ge=1000, le=300_000)] = 15_000
    outbox_keep_sent_days: Annotated[int, Field(ge=0, le=90)] = 7
    """How long a fund's outbox keeps the bytes of a signal the correlator accepted, counted
    from its sending, so that ``outbox resend --since`` can send again what a lost broker had
    acknowledged (docs/erasure.md: the fund's own file; 0 drops them on the accepted receipt)."""
    session_timeout_ms: Annotated[int, Field(ge=1000, le=300_000)] = 10_000
    drain_timeout_s: Annotated[float, Field(ge=1, le=600)] = 30.0
    """How long a service stopped by SIGTERM or SIGINT (correlator worker, casebook and ledger
    sinks, pseudonymisation service) may take to finish the work in progress and commit it.
    Past it, the process exits at once without committing more (exit status 75): what was
    not committed is read again at the next start (docs/architecture.md, "Stopping")."""

    # ------------------------------------------------ pseudonymisation (HELP_PSEUDONYM*), issue #20
    pseudonym_scheme: Literal["v1", "v2"] = "v1"
    """``v1``: HMAC under the exchange key every fund holds (docs/contract.md §4). ``v2``: RFC 9497
    VOPRF, asked of the pseudonymisation service; the fund holds no pseudonymisation key (§4.2)."""
    pseudonym_migration: Literal["", "v1"] = ""
    """``v1`` during a v1 → v2 migration window (with ``pseudonym_scheme`` ``v2``): each signal
    also carries the person's v1 pseudonym as ``pseudonym_previous`` (contract §4.3), computed
    with the v1 exchange key the fund holds until the window ends; empty: no v1 link."""
    pseudonymiser_url: Annotated[str, Field(pattern=r"^https?://[A-Za-z0-9.\-\[\]:]+(/.*)?$")] = \
        "http://127.0.0.1:19480"
    """Where producers reach the pseudonymisation service (scheme v2)."""
    pseudonymiser_key_dir: Path | None = None
    """The service's own key store (seeds per key version). Unset: ``<key_dir>/pseudonymiser``.
    Its ``public.json`` (public keys per version) is what funds pin and check proofs against."""
    pseudonymiser_quota_per_day: Annotated[int, Field(ge=1, le=100_000_000)] = 200_000
    """Evaluations a fund may ask per UTC day; over it the batch is refused (``quota_depasse``)."""
    pseudonymiser_batch_limit: Annotated[int, Field(ge=1, le=65_535)] = 4096
    """Most elements in one batch (``lot_trop_volumineux`` above it)."""
    pseudonymiser_timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    pseudonymiser_cache: bool = True
    """Keep the fund's own people's v2 pseudonyms in ``<var_dir>/pseudonym-cache-<fund>.db``
    (indexed by a keyed MAC of the NIR, never the NIR), so a person seen before is not asked again."""

    # ------------------------------------------- sealed signals (HELP_SIGNAL_*), issue #21
    signal_sealing: Literal["required", "accepted"] = "accepted"
    """``required``: the correlator takes only sealed signals (contract §2.1) and refuses one
    in clear (``signal_non_scelle``); ``accepted``: it also takes signals in clear (a fund
    that does not seal yet). What erasure promises for the signal topics needs ``required``."""
    signal_keys_url: Annotated[str, Field(pattern=r"^https?://[A-Za-z0-9.\-\[\]:]+(/.*)?$")] = \
        "http://127.0.0.1:19490"
    """Where producers reach the exchange's key endpoint (``help-exchange signal-keys serve``)."""
    signal_keys_quota_per_day: Annotated[int, Field(ge=1, le=100_000_000)] = 1_000_000
    """Keys a fund may ask per UTC day; over it the batch is refused (``quota_depasse``)."""
    signal_keys_batch_limit: Annotated[int, Field(ge=1, le=65_535)] = 4096
    """Most pseudonyms in one request (``lot_trop_volumineux`` above it)."""
    signal_keys_timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0

    # ----------------------------------------------------------------- casebook (HELP_CASEBOOK_*)
    # They tune the monthly review and its web view (services/casebook/).
    casebook_close_after_months: Annotated[int, Field(ge=1, le=60)] = 6
    """A situation closes by itself when no new signal arrived for that many whole months before
    the month under review (it also closes as soon as every involved fund has recorded an
    outcome). Six months mirrors the Dutch early-signalling purge of signals not acted on
    (docs/domain.md, retention)."""
    casebook_users_file: Path | None = None
    """The users of the web view, with scrypt-hashed secrets (``help-exchange users add``).
    Unset: ``<var_dir>/users.json`` (services.casebook.config.users_path)."""
    casebook_session_secret: Annotated[str | None, Field(min_length=32, repr=False)] = None
    """Signs the session cookies of the web view. Unset: a random key generated once and kept in
    ``<var_dir>/casebook-session.key`` (services.casebook.config.session_secret). Never printed."""
    casebook_session_max_age_s: Annotated[int, Field(ge=60, le=7 * 24 * 3600)] = 8 * 3600
    """Lifetime of a web-view session, in seconds (default 8 hours), however active it is."""
    casebook_session_idle_s: Annotated[int, Field(ge=5, le=24 * 3600)] = 30 * 60
    """A web-view session unused for that many seconds ends (default 30 minutes)."""
    casebook_signin_delay_after: Annotated[int, Field(ge=1, le=100)] = 3
    """Failed sign-ins of one account after which each new attempt waits 1 s, 2, 4… after the
    last failure (three times as many for one client address)."""
    casebook_signin_lockout_failures: Annotated[int, Field(ge=2, le=1000)] = 10
    """Failed sign-ins that lock an account (three times as many lock a client address)."""
    casebook_signin_lockout_s: Annotated[int, Field(ge=10, le=24 * 3600)] = 15 * 60
    """How long a lock lasts, and after how long failures are forgotten (default 15 minutes)."""
    casebook_secure_cookies: bool | None = None
    """Send the session cookie over HTTPS only, and HSTS. Unset: yes unless ``serve`` is bound to
    loopback (127.0.0.1, ::1, localhost); set false only for a plain-HTTP test bench."""

    # OpenID Connect sign-in (ProConnect): all five set, or none (services/casebook/oidc.py).
    casebook_oidc_issuer: Annotated[str | None, Field(pattern=r"^https?://[^\s?#]+$")] = None
    """The OpenID Provider's issuer (discovery at <issuer>/.well-known/openid-configuration)."""
    casebook_oidc_client_id: Annotated[str | None, Field(min_length=1, max_length=200)] = None
    casebook_oidc_client_secret: Annotated[str | None, Field(min_length=16, repr=False)] = None
    """The client secret given by the provider. Never printed."""
    casebook_oidc_redirect_uri: Annotated[str | None, Field(pattern=r"^https?://[^\s?#]+/login/oidc/callback$")] = None
    """This web view's callback as registered at the provider, e.g. https://revue.example/login/oidc/callback."""
    casebook_oidc_scopes: Annotated[str, Field(pattern=r"^openid( [A-Za-z0-9_:.\-]+)*$")] = "openid"
    casebook_oidc_mapping: Path | None = None
    """YAML file mapping the ID token's claims to role, fund and territory."""
    casebook_oidc_label: Annotated[str, Field(min_length=1, max_length=40)] = "ProConnect"
    """The provider's name on the sign-in button."""

    # ------------------------------------------------------ correlator worker (HELP_CORRELATOR_*)
    # The worker's knobs (services/correlator/); ``help-exchange correlator`` options override them.
    correlator_app_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._\-]{1,100}$")] = "help-correlator"
    """Consumer group and state-topic prefix: workers with the same id share the partitions."""
    correlator_batch_max: Annotated[int, Field(ge=1, le=100_000)] = 5000
    """Records per batch at most. Each batch ends with two acknowledged sends and a commit, so
    larger batches pay them less often, up to where the latency of the last record of a batch
    grows (the correlator bench prints both). A batch fills only as fast as records come: at low
    rates batches stay small."""
    correlator_batch_wait_ms: Annotated[float, Field(ge=0, le=1000)] = 2.0
    """How long a batch waits for more records after its first. Not longer: under load the inbox
    holds a full batch anyway, and below it every batch paid the whole wait on top of its round
    trips, which compounded (a longer cycle gathers a bigger next batch)."""
    correlator_fetch_wait_ms: Annotated[int, Field(ge=10, le=10_000)] = 100
    """Longest wait of a fetch that finds nothing (faust-streaming's own: 1500 ms). It bounds the
    latency of a signal reaching an idle worker; a fetch answers as soon as records come. Not
    less: every idle fetch costs the embedded broker CPU that the worker then lacks."""
    correlator_fetch_max_bytes: Annotated[int, Field(ge=65_536, le=52_428_800)] = 1_048_576
    """Bytes one fetch response brings at most (and one partition's share of it). The consumer
    keeps a response's records until the worker has taken them, one response per partition at
    most, so this bounds what a backlog costs in memory: partitions x this. aiokafka's default,
    50 MiB, held a backlog of a million signals whole (docs/architecture.md, "Memory"); a MiB
    is about a thousand signals, several batches' worth of fetches a second."""
    correlator_linger_ms: Annotated[int, Field(ge=0, le=1000)] = 5
    """The producer's linger: outputs of one batch leave together."""
    correlator_check_processes: Annotated[int, Field(ge=0, le=64)] = 2
    """Helper processes for the stateless checks (JSON, signature, schema); 0 runs them in the
    worker's own thread. Two: one helper checks a little slower than the engine takes signals."""
    correlator_gc_full_every_s: Annotated[float, Field(ge=0, le=86_400)] = 600.0
    """Seconds between full garbage collections; between them what survives a batch is frozen
    (services/platform/runtime.py). 0: CPython's own schedule."""
    correlator_trim_every_s: Annotated[float, Field(ge=0, le=3600)] = 2.0
    """Seconds between two releases of the C allocator's free pages to the system, after a
    batch (services/platform/runtime.py): without them freed buffers stayed resident and the
    worker's memory crept up with the time it ran. 0: never."""
    correlator_sweep_every_s: Annotated[float, Field(ge=0.1, le=3600)] = 5.0
    """The retention sweep (signals older than the correlation window leave the person state
    even if no further signal comes) runs a page at this interval…"""
    correlator_sweep_page: Annotated[int, Field(ge=1, le=1_000_000)] = 2000
    """…of this many persons."""
    correlator_state_cache: Annotated[int, Field(ge=0, le=10_000_000)] = 20_000
    """Person states kept in memory (the most recently used); the rest are read from the
    local store under ``<var_dir>/correlator/<app id>/state`` (services/correlator/state.py)."""
    correlator_hold_max: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    """Records a worker may hold back for persons waiting for a cross-partition hand-over (key
    rotation, contract §4.3) before it pauses the fetching of the partitions that hold them,
    until the answers come (services/correlator/holds.py): nothing is dropped."""
    correlator_hold_warn_s: Annotated[float, Field(ge=1, le=86_400)] = 300.0
    """A hand-over that has held records back this long gives a WARNING line (once)."""

    # ------------------------------------------- metrics and watchdog (HELP_METRICS_*, HELP_WATCHDOG_*)
    # services/platform/metrics.py; docs/operations.md lists every metric.
    metrics_port: Annotated[int | None, Field(ge=0, le=65535)] = None
    """Port of the Prometheus metrics endpoint of a long-running command (correlator, sinks,
    pseudonymisation service). Unset or 0: none. One setting for every service, read by each
    process: in docker-compose every container listens on 9464; processes sharing a host need one
    port each (set it per process)."""
    metrics_host: str = "0.0.0.0"
    """Address the metrics endpoint listens on."""
    lag_probe_every_s: Annotated[float, Field(ge=0.5, le=300)] = 5.0
    """How often a consumer measures its lag (true end offsets, oldest unprocessed record)."""
    watchdog_stall_s: Annotated[float, Field(ge=1, le=86_400)] = 60.0
    """A correlator partition that has messages but has not moved for this long is stalled."""
    watchdog_exit: bool = False
    """On a stalled partition the worker logs an ERROR and sets ``help_partition_stalled``; true:
    it also exits (status 76) so that its supervisor restarts it."""

    # --------------------------------------------------------------- retention (HELP_RETENTION_*)
    # ``help-exchange purge`` (services/casebook/retention.py, services/app/purge.py); months,
    # defaults from docs/domain.md (retention)
    # (the Dutch early-signalling rules).
    retention_signals_months: Months = 6
    """Signals never correlated. They live only in the correlator's window
    (``fenetre_correlation_jours`` of schemas/rules.yaml, 90 days), which must stay under this
    period: the purge checks it and says so; nothing else stores a signal."""
    retention_situations_months: Months = 12
    """Situations, after their last activity (latest of: last signal, last event, last
    follow-up), unless closed."""
    retention_sign_ins_months: Months = 12
    """The web view's sign-in log (``casebook_sign_ins``: identifier, client address, outcome):
    kept that long for the auditors, then removed by the purge."""
    retention_closed_months: Months = 18
    """Closed cases (closed by the correlator, or every involved fund has recorded its outcome),
    after closing. A case that only went quiet (no signal for ``casebook_close_after_months``)
    is not "closed" in this sense: it follows the situations' period."""

    # ---------------------------------------------------------------- audit ledger (HELP_LEDGER_*)
    # Checkpoints (C2SP tlog-checkpoint), tiles and witnesses: services/ledger/, docs/audit.md.
    ledger_origin: Annotated[str, Field(pattern=r"^[a-z0-9.\-]+(/[A-Za-z0-9._\-]+)*$",
                                        max_length=128)] = "help-exchange.local/ledger"
    """The log's origin: the first line of every checkpoint and the name of the ledger's
    signed-note key. One per deployment (e.g. ``help-exchange.secu.example/ledger/35``)."""
    ledger_checkpoint_every: Annotated[int, Field(ge=1, le=100_000)] = 1000
    """A checkpoint is signed at every multiple of this many entries."""
    ledger_checkpoint_seconds: Annotated[float, Field(gt=0, le=3600)] = 10.0
    """…and at the end of an append when the last checkpoint is older than this."""
    ledger_witnesses_file: Path | None = None
    """The witnesses the exchange asks to cosign (JSON list of {"name", "url", "vkey"}).
    Unset: ``<key_dir>/ledger/witnesses.json`` when it exists."""
    ledger_quorum: Annotated[int, Field(ge=1, le=20)] = 2
    """Cosignatures an auditor requires by default (of the 4 funds' witnesses)."""

    @property
    def registry_signer_path(self) -> Path:
        """Where the pinned registry signer public key is read from."""
        from services.core.registry import signer_public_path

        return self.registry_signer or signer_public_path(self.key_dir)

    @property
    def pseudonymiser_store(self) -> Path:
        """The pseudonymisation service's key store (its ``public.json`` is what funds pin)."""
        return self.pseudonymiser_key_dir or self.key_dir / "pseudonymiser"

    @cached_property
    def partitions(self) -> int:
        """Partitions of every topic the correlator reads and of its state (co-partitioned):
        the signal channels' count in ``asyncapi.yaml``, the one place it is written."""
        from services.platform.topics import correlator_partitions

        return correlator_partitions(self.schemas_dir / "asyncapi.yaml")

    @cached_property
    def taxonomy(self) -> Taxonomy:
        return load_taxonomy(self.schemas_dir / "taxonomy.yaml")

    @cached_property
    def rules(self) -> Rules:
        from services.core.rules import load_rules

        return load_rules(self.schemas_dir / "rules.yaml", self.taxonomy)

    @cached_property
    def policy(self) -> Policy:
        policy = load_policy(self.schemas_dir / "policy.yaml")
        policy.check_against(self.taxonomy)
        return policy


def load_settings(**overrides: object) -> Settings:
    """Read the settings; a bad value becomes one :class:`ConfigurationError` naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        given = "<hidden>" if field in SECRET_FIELDS else repr(first.get("input"))
        raise ConfigurationError(
            f"setting HELP_{field.upper()}={given} is invalid: {first['msg']}",
            _HINTS.get(field, f"fix or unset HELP_{field.upper()}"),
        ) from exc

"""The one settings object of help-exchange (environment variables prefixed ``HELP_``).

Only settings differ between the embedded default (Tansu broker on loopback + SQLite under
``var/``) and production (Apache Kafka + PostgreSQL): the code paths are the same.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.core.policy import Policy, load_policy
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
}


class Settings(BaseSettings):
    """Every setting, read once from the environment (and ``.env`` if present)."""

    model_config = SettingsConfigDict(env_prefix="HELP_", env_file=".env", extra="ignore", frozen=True)

    bootstrap_servers: Annotated[
        str | None, Field(pattern=r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}(,[A-Za-z0-9.\-\[\]:]+:\d{1,5})*$")
    ] = None
    """Kafka bootstrap servers. Unset: use (and if needed start) the embedded broker."""

    database_url: Annotated[str, Field(pattern=r"^(sqlite|postgresql)(\+\w+)?://")] = "sqlite:///var/casebook.db"
    key_dir: Path = Path("var/keys")
    var_dir: Path = Path("var")
    schemas_dir: Path = DEFAULT_SCHEMAS_DIR
    territory: Departement = "35"

    broker_host: str = "127.0.0.1"
    broker_port: Annotated[int, Field(ge=1024, le=65535)] = 19092
    broker_start_timeout_s: Annotated[float, Field(gt=0, le=120)] = 20.0
    #: Kafka's idempotent producer; the embedded broker refuses its handshake, Apache Kafka takes it.
    enable_idempotence: bool = False
    request_timeout_ms: Annotated[int, Field(ge=1000, le=300_000)] = 15_000
    session_timeout_ms: Annotated[int, Field(ge=1000, le=300_000)] = 10_000

    @cached_property
    def taxonomy(self) -> Taxonomy:
        return load_taxonomy(self.schemas_dir / "taxonomy.yaml")

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
        given = first.get("input")
        raise ConfigurationError(
            f"setting HELP_{field.upper()}={given!r} is invalid: {first['msg']}",
            _HINTS.get(field, f"fix or unset HELP_{field.upper()}"),
        ) from exc

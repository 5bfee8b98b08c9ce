"""The service's settings: every name here is fixed by the HTTP contract (api.md)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CommaList = Annotated[list[str], NoDecode]
SecretList = Annotated[list[SecretStr], NoDecode]


def _split(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class MissingSettingError(RuntimeError):
    """A setting a command needs is not set; the message is the one line shown to the operator."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STRIPESYNC_", env_file=".env", extra="ignore", frozen=True
    )

    database_url: str | None = None
    redis_url: str | None = None
    data_dir: Path = Path("./var")
    public_base_url: str = "http://127.0.0.1:8000"

    platform_api_token: SecretStr | None = None
    ops_api_token: SecretStr | None = None
    encryption_keys: SecretList = Field(default_factory=list)

    stripe_client_id: str | None = None
    stripe_secret_key: SecretStr | None = None
    stripe_webhook_secrets: SecretList = Field(default_factory=list)
    stripe_api_base: str = "https://api.stripe.com"
    stripe_oauth_authorize_url: str = "https://connect.stripe.com/oauth/authorize"
    stripe_oauth_token_url: str = "https://connect.stripe.com/oauth/token"
    stripe_oauth_deauthorize_url: str = "https://connect.stripe.com/oauth/deauthorize"

    cc_api_base: str = "https://api.cc.email"
    cc_token_url: str = "https://authz.constantcontact.com/oauth2/default/v1/token"
    cc_client_id: str | None = None
    cc_client_secret: SecretStr | None = None
    cc_requests_per_second: float = 4
    cc_requests_per_day: int = 10_000

    smtp_url: SecretStr | None = None
    mail_from: str = "no-reply@localhost"

    automation_webhook_url: str | None = None
    automation_webhook_secret: SecretStr | None = None

    allowed_return_url_prefixes: CommaList = Field(
        default_factory=lambda: ["http://127.0.0.1", "http://localhost"]
    )

    # Knobs beyond the contract (added, never renamed).
    webhook_tolerance_seconds: int = 300
    webhook_max_body_bytes: int = 512 * 1024
    event_max_attempts: int = 8
    event_retry_base_seconds: float = 5.0
    sweeper_grace_seconds: int = 60
    # Every worker job's timeout. Short on purpose: arq marks a started job in progress
    # for the longest timeout + 10 s, and a killed worker's jobs wait that long to run again.
    job_timeout_seconds: int = Field(default=300, ge=1, le=3600)
    # Widens the limiter's 1 s window a little; latency itself is covered by counting each
    # request's slot from when its answer came back (kit/ratelimit.RateLimiter.slot).
    cc_rate_margin_seconds: float = 0.05
    log_format: str = "json"
    log_level: str = "INFO"
    # Segments and automation triggers.
    automation_event_max_age_hours: int = 48  # older activity (an import) triggers nothing
    automation_retry_base_seconds: float = 10.0
    automation_max_attempts: int = 12
    # Opt-in email: outgoing mail budget (shared by all workers), retries, link lifetime.
    mail_per_second: float = 5.0
    mail_max_attempts: int = 8
    mail_retry_base_seconds: float = 30.0
    mail_timeout_seconds: float = 30.0
    optin_token_days: int = 30
    # Historical import: the per-connection Stripe budget (Stripe allows 100/s live and
    # 25/s in test mode per account; the merchant's own integrations share it), parallel
    # page requests, initial `created` windows per list, the job lease and retries.
    stripe_import_live_requests_per_second: float = 80.0
    stripe_import_test_requests_per_second: float = 20.0
    import_concurrency: int = 16
    import_appliers: int = 4
    import_windows_per_list: int = 8
    import_lease_seconds: float = 60.0
    import_request_attempts: int = 8
    import_backoff_base_seconds: float = 0.5
    import_max_attempts: int = 5
    # Webhook reconciler: every this many minutes, each active connection's undelivered
    # events (`GET /v1/events?delivery_success=false`, the last 30 days) are stored.
    stripe_reconcile_every_minutes: int = Field(default=10, ge=1, le=60)
    stripe_reconcile_max_pages: int = 20

    @field_validator(
        "encryption_keys", "stripe_webhook_secrets", "allowed_return_url_prefixes", mode="before"
    )
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return _split(value)

    @cached_property
    def sqlalchemy_database_url(self) -> str:
        """The database URL with the asyncpg driver, whatever scheme it was given with."""
        self.require("database_url")
        assert self.database_url is not None
        return to_asyncpg_url(self.database_url)

    def require(self, *names: str) -> None:
        """Stop with one line naming the first of these settings that is not set."""
        for name in names:
            if getattr(self, name) in (None, "", []):
                raise MissingSettingError(
                    f"missing setting STRIPESYNC_{name.upper()}: set it in the environment or .env"
                )


def to_asyncpg_url(url: str) -> str:
    """Accept postgres://, postgresql:// or postgresql+driver:// and answer with asyncpg's."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("database URL must look like postgresql://user@host/db")
    if scheme in {"postgres", "postgresql"} or scheme.startswith("postgresql+"):
        return f"postgresql+asyncpg://{rest}"
    raise ValueError(f"unsupported database URL scheme {scheme!r}")


# What each command cannot run without (dev generates the secrets for itself).
SERVE_REQUIRES = (
    "database_url",
    "redis_url",
    "platform_api_token",
    "ops_api_token",
    "encryption_keys",
    "stripe_webhook_secrets",
)
WORKER_REQUIRES = ("database_url", "redis_url", "encryption_keys")

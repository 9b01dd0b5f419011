"""One frozen Settings object, from CLI flags, `CALLBRIDGE_*` environment variables and defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CALLBRIDGE_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    config: Path | None = None
    data_dir: Path = Path("data")
    database_url: str | None = None
    driver: Literal["sim", "sip"] = "sim"
    allow_private_urls: bool = False
    public_base_url: str | None = None
    log_level: str = "INFO"
    log_json: bool = True

    # Prometheus metrics at /metrics on the API port.
    metrics_enabled: bool = True
    metrics_token: SecretStr | None = None
    """When set, /metrics requires `Authorization: Bearer <token>`."""

    # Guards.
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    default_rate_limit_per_minute: int = Field(default=200, ge=0)
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=60)

    # Leases: a node renews its heartbeat every `heartbeat_interval_s`; a node silent for
    # `lease_ttl_s` is dead and its calls are ended and its busy marks freed by any survivor.
    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    lease_ttl_s: float = Field(default=8.0, gt=0)
    reconcile_interval_s: float = Field(default=2.0, gt=0)

    # Calls.
    max_call_duration_s: int = Field(default=14400, ge=1, le=14400)

    # Status callbacks.
    callbacks_in_process: bool = True
    callback_timeout_s: float = Field(default=10.0, gt=0)
    callback_concurrency: int = Field(default=64, ge=1)
    callback_poll_interval_s: float = Field(default=0.5, gt=0)
    callback_lease_s: float | None = Field(default=None, gt=0)
    """How long a claimed delivery is reserved for its worker (default 3 x timeout + 30 s);
    after a crash, other workers take its rows over once this passes."""

    # Media.
    recordings_retention_days: int = Field(default=0, ge=0)
    recording_link_ttl_s: int = Field(default=3600, ge=1)
    media_max_download_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    signing_key: SecretStr | None = None
    """Key for signed recording links; random per process when unset (links then die with it)."""
    recordings_s3_endpoint: str | None = None
    """S3-compatible endpoint (e.g. https://s3.ap-south-1.amazonaws.com); unset = local files."""
    recordings_s3_bucket: str | None = None
    recordings_s3_region: str = "us-east-1"
    recordings_s3_access_key: str | None = None
    recordings_s3_secret_key: SecretStr | None = None

    # SIP driver.
    sip_bind_host: str = "127.0.0.1"
    sip_port: int = Field(default=5070, ge=1, le=65535)
    sip_rtp_port_min: int = Field(default=20000, ge=1024, le=65535)
    sip_rtp_port_max: int = Field(default=20999, ge=1024, le=65535)
    sip_workers: int = Field(default=2, ge=1, le=256)
    sip_trunk_host: str | None = None
    sip_trunk_port: int = Field(default=5060, ge=1, le=65535)
    sip_trunk_transport: Literal["udp", "tcp"] = "udp"
    sip_trunk_username: str | None = None
    sip_trunk_password: SecretStr | None = None
    sip_trunk_number_format: Literal["e164", "e164_no_plus", "national"] = "e164"
    sip_outbound_proxy: str | None = None

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'callbridge.db').as_posix()}"

"""One frozen Settings object, from CLI flags, `CALLBRIDGE_*` environment variables and defaults."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_HOST = re.compile(r"[0-9A-Fa-f:]*:[0-9A-Fa-f:.]+|[A-Za-z0-9]([A-Za-z0-9.-]{0,252})")
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]{0,252}))(:[0-9]{1,5})?")


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
    # Failed authentication: each client address, and each API key (except from addresses
    # that recently authenticated with it), may fail this often per window, then gets 429.
    auth_failure_window_s: float = Field(default=60.0, gt=0, le=86400)
    auth_max_failures_per_address: int = Field(default=100, ge=1)
    auth_max_failures_per_key: int = Field(default=200, ge=1)

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

    # SIP driver. The defaults fit one host: 4 media workers (a crash loses a quarter of the
    # calls), each with 1,024 RTP ports = 512 calls (2 ports per call: RTP and RTCP).
    sip_bind_host: str = "127.0.0.1"
    sip_port: int = Field(default=5070, ge=1, le=65535)
    sip_rtp_port_min: int = Field(default=20000, ge=1024, le=65535)
    sip_rtp_port_max: int = Field(default=24095, ge=1024, le=65535)
    sip_workers: int = Field(default=4, ge=1, le=256)
    sip_worker_max_calls: int | None = Field(default=None, ge=2, le=65536)
    """Cap on calls per worker; default: what the pjsua2 engine allows and the RTP range fits."""
    sip_public_address: str | None = None
    """Address put in SIP Contact/Via and SDP instead of the bind address (static 1:1 NAT)."""
    sip_stun_servers: str | None = None
    """Comma-separated `host[:port]` STUN servers to learn the public address and ports."""
    sip_trunk_host: str | None = None
    sip_trunk_port: int = Field(default=5060, ge=1, le=65535)
    sip_trunk_transport: Literal["udp", "tcp"] = "udp"
    sip_trunk_username: str | None = None
    sip_trunk_password: SecretStr | None = None
    sip_trunk_number_format: Literal["e164", "e164_no_plus", "national"] = "e164"
    sip_outbound_proxy: str | None = None

    # SIP registrar for agents' phones (off unless a port is set; see docs/sip.md).
    sip_registrar_port: int | None = Field(default=None, ge=0, le=65535)
    """UDP and TCP port of the registrar; None = no registrar in this process."""
    sip_registrar_host: str | None = None
    """Address the registrar binds to; defaults to `sip_bind_host`."""
    sip_registrar_realm: str = Field(
        default="callbridge", min_length=1, max_length=128, pattern=r'^[^"\\\x00-\x1f]+$'
    )
    """Digest realm; devices' stored credentials are bound to it (changing it needs new
    passwords)."""
    sip_registrar_min_expires_s: int = Field(default=60, ge=1, le=86400)
    sip_registrar_max_expires_s: int = Field(default=3600, ge=1, le=604800)
    sip_registrar_default_expires_s: int = Field(default=3600, ge=1, le=604800)

    @model_validator(mode="after")
    def _lease_renews_in_time(self) -> Settings:
        # A lease renewed less than twice per TTL lapses on a single late heartbeat.
        if self.lease_ttl_s < 2 * self.heartbeat_interval_s:
            raise ValueError("lease_ttl_s must be at least twice heartbeat_interval_s")
        return self

    @field_validator("sip_public_address")
    @classmethod
    def _check_public_address(cls, value: str | None) -> str | None:
        if value is not None and not _HOST.fullmatch(value):
            raise ValueError(f"{value[:100]!r} is not an IP address or host name")
        return value

    @field_validator("sip_stun_servers")
    @classmethod
    def _check_stun_servers(cls, value: str | None) -> str | None:
        if value is None:
            return None
        for server in (part.strip() for part in value.split(",")):
            if not _HOST_PORT.fullmatch(server):
                raise ValueError(f"STUN server {server[:100]!r} is not host or host:port")
        return value

    def stun_servers(self) -> tuple[str, ...]:
        if not self.sip_stun_servers:
            return ()
        return tuple(part.strip() for part in self.sip_stun_servers.split(","))

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'callbridge.db').as_posix()}"

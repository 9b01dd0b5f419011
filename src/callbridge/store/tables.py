"""Every table of callbridge in one place (SQLAlchemy Core); Alembic migrations mirror this file.

Times are stored as aware UTC datetimes. JSON columns hold plain dicts/lists.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

TZ = DateTime(timezone=True)

accounts = Table(
    "accounts",
    metadata,
    Column("sid", String(64), primary_key=True),
    Column("api_key", String(128), nullable=False, unique=True),
    Column("api_token_hash", String(256), nullable=False),
    Column("timezone", String(64), nullable=False, default="Asia/Kolkata"),
    Column("region", String(32), nullable=False, default="IN"),
    Column("allow_voip", Boolean, nullable=False, default=True),
    Column("rate_limit_per_minute", Integer, nullable=False, default=200),
    Column("webhook_secret", String(128), nullable=False),
    Column("webhook_secret_previous", String(128), nullable=True),
    Column("created_at", TZ, nullable=False),
    Column("updated_at", TZ, nullable=False),
)

flows = Table(
    "flows",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("account_sid", String(64), ForeignKey("accounts.sid"), nullable=False),
    Column("name", String(128), nullable=False),
    Column("definition", JSON, nullable=False),
    Column("created_at", TZ, nullable=False),
    Column("updated_at", TZ, nullable=False),
)

exophones = Table(
    "exophones",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_sid", String(64), ForeignKey("accounts.sid"), nullable=False),
    Column("number", String(64), nullable=False, unique=True),
    Column("flow_id", String(64), ForeignKey("flows.id"), nullable=True),
    Column("created_at", TZ, nullable=False),
    Column("updated_at", TZ, nullable=False),
)

groups = Table(
    "groups",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account_sid", String(64), ForeignKey("accounts.sid"), nullable=False),
    Column("name", String(128), nullable=False),
    Column("created_at", TZ, nullable=False),
    UniqueConstraint("account_sid", "name", name="uq_groups_account_name"),
)

users = Table(
    "users",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_sid", String(64), ForeignKey("accounts.sid"), nullable=False),
    Column("first_name", String(64), nullable=False),
    Column("last_name", String(64), nullable=False),
    Column("email", String(320), nullable=True),
    Column("role", String(16), nullable=False, default="user"),
    Column("last_call_ended_at", TZ, nullable=True),
    Column("cooldown_until", TZ, nullable=True),
    Column("created_at", TZ, nullable=False),
    Column("updated_at", TZ, nullable=False),
    UniqueConstraint("account_sid", "email", name="uq_users_account_email"),
)

user_groups = Table(
    "user_groups",
    metadata,
    Column("user_id", String(32), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("group_id", Integer, ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
)

devices = Table(
    "devices",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(32), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("account_sid", String(64), ForeignKey("accounts.sid"), nullable=False),
    Column("name", String(128), nullable=True),
    Column("contact_uri", String(255), nullable=False),
    Column("type", String(8), nullable=False),
    Column("available", Boolean, nullable=False, default=False),
    Column("verified", Boolean, nullable=False, default=False),
    # An availability change asked for while the device was busy; applied when the call ends.
    Column("pending_available", Boolean, nullable=True),
    Column("verification_code", String(16), nullable=True),
    # Digest HA1, MD5(user:realm:password), of a phone that registers; never the password.
    Column("sip_ha1", String(64), nullable=True),
    Column("created_at", TZ, nullable=False),
    Column("updated_at", TZ, nullable=False),
    UniqueConstraint("account_sid", "contact_uri", name="uq_devices_account_contact"),
)

sip_bindings = Table(
    "sip_bindings",
    metadata,
    Column(
        "device_id",
        String(32),
        ForeignKey("devices.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("contact", String(512), primary_key=True),
    Column("call_id", String(255), nullable=False),
    Column("cseq", BigInteger, nullable=False),
    Column("expires_at", TZ, nullable=False),
    Column("source", String(128), nullable=False),
    Column("user_agent", String(128), nullable=True),
    Column("updated_at", TZ, nullable=False),
    Index("ix_sip_bindings_expires", "expires_at"),
)
"""Registrar bindings (RFC 3261 §10): where a registering device can be reached until
`expires_at`. Shared by every node, so any node can call any registered phone."""

calls = Table(
    "calls",
    metadata,
    Column("sid", String(32), primary_key=True),
    Column("account_sid", String(64), ForeignKey("accounts.sid"), nullable=False),
    Column("direction", String(16), nullable=False),
    Column("virtual_number", String(64), nullable=False),
    Column("from_uri", String(255), nullable=False),
    Column("to_uri", String(255), nullable=True),
    Column("state", String(16), nullable=False),
    Column("status", String(32), nullable=True),
    Column("custom_field", String(128), nullable=True),
    Column("app_id", String(64), nullable=True),
    Column("app_name", String(128), nullable=True),
    Column("digits", String(256), nullable=True),
    Column("recordings", JSON, nullable=True),
    Column("options", JSON, nullable=False),
    Column("owner_node", String(64), nullable=True),
    Column("talk_time_s", Float, nullable=True),
    Column("created_at", TZ, nullable=False),
    Column("updated_at", TZ, nullable=False),
    Column("start_at", TZ, nullable=True),
    Column("end_at", TZ, nullable=True),
    Index("ix_calls_state_owner", "state", "owner_node"),
    Index("ix_calls_account_created", "account_sid", "created_at"),
)

legs = Table(
    "legs",
    metadata,
    Column("sid", String(32), primary_key=True),
    Column("call_sid", String(32), ForeignKey("calls.sid"), nullable=False),
    Column("side", String(8), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("name", String(128), nullable=True),
    Column("contact_uri", String(255), nullable=False),
    Column("status", String(16), nullable=False),
    Column("group_id", Integer, nullable=True),
    Column("group_name", String(128), nullable=True),
    Column("created_at", TZ, nullable=False),
    Column("updated_at", TZ, nullable=False),
    Column("answered_at", TZ, nullable=True),
    Column("ended_at", TZ, nullable=True),
    Index("ix_legs_call_seq", "call_sid", "side", "seq"),
)

busy_marks = Table(
    "busy_marks",
    metadata,
    Column("account_sid", String(64), primary_key=True),
    Column("contact_uri", String(255), primary_key=True),
    Column("call_sid", String(32), nullable=False),
    Column("owner_node", String(64), nullable=False),
    Column("created_at", TZ, nullable=False),
    Index("ix_busy_marks_call", "call_sid"),
    Index("ix_busy_marks_owner", "owner_node"),
)
"""The busy registry: one row per contact URI on a call. The primary key makes
"check free and mark busy" one compare-and-set INSERT."""

nodes = Table(
    "nodes",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("started_at", TZ, nullable=False),
    Column("heartbeat_at", TZ, nullable=False),
    Column("info", JSON, nullable=True),
    Column("dead_at", TZ, nullable=True),
)
"""Server processes. Busy marks and calls are leases of their owner node: a node whose
heartbeat is older than the lease TTL is declared dead (`dead_at`) by a peer, can no longer
renew, and any node ends its calls; the row goes once none of its calls is active."""

outbox = Table(
    "outbox",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("event_sid", String(32), nullable=False, unique=True),
    Column("account_sid", String(64), nullable=False),
    Column("call_sid", String(32), nullable=False),
    Column("event_type", String(16), nullable=False),
    Column("url", Text, nullable=False),
    Column("method", String(8), nullable=False),
    Column("content_type", String(64), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("status", String(16), nullable=False),  # pending | delivered | dead
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", TZ, nullable=False),
    Column("claimed_by", String(64), nullable=True),
    Column("claimed_until", TZ, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", TZ, nullable=False),
    Column("delivered_at", TZ, nullable=True),
    Column("terminal_key", String(64), nullable=True),
    Index("ix_outbox_due", "status", "next_attempt_at"),
    Index("ix_outbox_call", "call_sid", "url", "id"),
    Index("ux_outbox_terminal", "call_sid", "terminal_key", unique=True),
)
"""Status-callback events, written in the same transaction as the call state change.
`terminal_key` (sha256 of the URL, terminal events only) makes a second terminal event for the
same call and URL a unique violation: no path can queue a call's end twice."""

callback_attempts = Table(
    "callback_attempts",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("outbox_id", BigInteger, ForeignKey("outbox.id"), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("started_at", TZ, nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("latency_ms", Float, nullable=True),
    Column("error", Text, nullable=True),
    Column("next_attempt_at", TZ, nullable=True),
    Index("ix_callback_attempts_outbox", "outbox_id"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("account_sid", String(64), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # in_flight | done
    Column("response_status", Integer, nullable=True),
    Column("response_body", Text, nullable=True),
    Column("created_at", TZ, nullable=False),
    Column("expires_at", TZ, nullable=False),
)

recordings = Table(
    "recordings",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_sid", String(64), nullable=False),
    Column("call_sid", String(32), nullable=False),
    Column("storage_key", String(512), nullable=False),
    Column("format", String(16), nullable=False),
    Column("channels", String(8), nullable=False),
    Column("duration_s", Float, nullable=False),
    Column("size_bytes", Integer, nullable=False),
    Column("created_at", TZ, nullable=False),
    Index("ix_recordings_call", "call_sid"),
    Index("ix_recordings_created", "created_at"),
)

"""fenced leases: nodes.dead_at, and at most one terminal callback per call and URL

Revision ID: 0002
Revises: 0001

`nodes.dead_at` marks a node declared dead by a peer: its heartbeat can no longer renew the
lease, and every node may end its calls. `outbox.terminal_key` (a digest of the URL, set on
terminal events only) with a unique index on (call_sid, terminal_key) makes a second terminal
event for the same call and URL impossible to write. Rows written before this revision keep a
NULL key when an earlier terminal row for the same call and URL exists, so the upgrade never
fails on old duplicates and never deletes delivery history.
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dead_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("terminal_key", sa.String(length=64), nullable=True))

    conn = op.get_bind()
    outbox = sa.table(
        "outbox",
        sa.column("id", sa.BigInteger),
        sa.column("call_sid", sa.String),
        sa.column("url", sa.Text),
        sa.column("event_type", sa.String),
        sa.column("terminal_key", sa.String),
    )
    seen: set[tuple[str, str]] = set()
    rows = conn.execute(
        sa.select(outbox.c.id, outbox.c.call_sid, outbox.c.url)
        .where(outbox.c.event_type == "terminal")
        .order_by(outbox.c.id)
    )
    for row_id, call_sid, url in rows.all():
        key = hashlib.sha256(url.encode()).hexdigest()
        if (call_sid, key) in seen:
            continue
        seen.add((call_sid, key))
        conn.execute(sa.update(outbox).where(outbox.c.id == row_id).values(terminal_key=key))

    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ux_outbox_terminal", ["call_sid", "terminal_key"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ux_outbox_terminal")
        batch_op.drop_column("terminal_key")
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_column("dead_at")

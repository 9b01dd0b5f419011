"""sip registrar: devices' digest credentials and registration bindings

Revision ID: 0003_sip_registrar
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_sip_registrar"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sip_ha1", sa.String(length=64), nullable=True))
    op.create_table(
        "sip_bindings",
        sa.Column("device_id", sa.String(length=32), nullable=False),
        sa.Column("contact", sa.String(length=512), nullable=False),
        sa.Column("call_id", sa.String(length=255), nullable=False),
        sa.Column("cseq", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=128), nullable=False),
        sa.Column("user_agent", sa.String(length=128), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_sip_bindings_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("device_id", "contact", name=op.f("pk_sip_bindings")),
    )
    with op.batch_alter_table("sip_bindings", schema=None) as batch_op:
        batch_op.create_index("ix_sip_bindings_expires", ["expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("sip_bindings", schema=None) as batch_op:
        batch_op.drop_index("ix_sip_bindings_expires")
    op.drop_table("sip_bindings")
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("sip_ha1")

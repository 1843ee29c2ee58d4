"""scheduler bookkeeping on tickets

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMES = ("remind_at", "next_alert_at", "waiting_since", "next_update_at")
INDEXED = ("remind_at", "next_alert_at", "next_update_at", "resolved_at", "waiting_since")


def upgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        for column in TIMES:
            batch.add_column(sa.Column(column, sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("overdue_level", sa.Integer(), server_default="0", nullable=False))
    for column in INDEXED:
        op.create_index(f"ix_tickets_status_{column}", "tickets", ["status", column])
    op.create_index("ix_tickets_created_at", "tickets", ["created_at"])
    # Tickets filed before this migration: alerts start from their deadline.
    op.execute("UPDATE tickets SET next_alert_at = due_at WHERE status IN ('new', 'in_progress')")


def downgrade() -> None:
    op.drop_index("ix_tickets_created_at", "tickets")
    for column in INDEXED:
        op.drop_index(f"ix_tickets_status_{column}", "tickets")
    with op.batch_alter_table("tickets") as batch:
        batch.drop_column("overdue_level")
        for column in TIMES:
            batch.drop_column(column)

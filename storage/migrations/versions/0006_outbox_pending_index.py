"""the outbox's index by chat keeps the pending rows only

The worker looks for the chats with a message due at least once a poll; through an index of every row
by chat, that look read the whole history of sent messages.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    op.drop_index("ix_outbox_platform_chat_id_status", table_name="outbox")
    op.create_index(
        "ix_outbox_pending_chat",
        "outbox",
        ["platform", "chat_id", "id"],
        sqlite_where=PENDING,
        postgresql_where=PENDING,
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_pending_chat", table_name="outbox")
    op.create_index("ix_outbox_platform_chat_id_status", "outbox", ["platform", "chat_id", "status"])

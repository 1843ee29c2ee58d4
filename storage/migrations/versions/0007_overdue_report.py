"""the coordinators are told of overdue alerts by a cursor over their events

A scan works through a backlog in short passes, one transaction each; the coordinators hear of all the
alerts of a scan at its end. The alerts' events are what is owed to them, and the cursor `overdue-reported`
the last event they were told of: it starts at the last alert there is, which earlier scans reported.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from storage.schema import UTCDateTime

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OVERDUE = sa.text("kind = 'overdue'")
CURSOR = "overdue-reported"


cursors = sa.table(
    "cursors",
    sa.column("name", sa.String),
    sa.column("value", sa.String),
    sa.column("updated_at", UTCDateTime),
)


def upgrade() -> None:
    op.create_index(
        "ix_ticket_events_overdue", "ticket_events", ["id"], sqlite_where=OVERDUE, postgresql_where=OVERDUE
    )
    last = op.get_bind().scalar(sa.text("SELECT max(id) FROM ticket_events WHERE kind = 'overdue'"))
    op.bulk_insert(cursors, [{"name": CURSOR, "value": str(last or 0), "updated_at": datetime.now(UTC)}])


def downgrade() -> None:
    op.execute(cursors.delete().where(cursors.c.name == CURSOR))
    op.drop_index("ix_ticket_events_overdue", table_name="ticket_events")

"""The tables, as SQLAlchemy Core metadata; migrations in `storage/migrations` create exactly these."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect


class UTCDateTime(sa.TypeDecorator[datetime]):
    """An aware datetime stored as UTC; SQLite keeps no zone, so one is attached on the way out."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime refused: times are stored as aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

Id: Any = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

citizens = sa.Table(
    "citizens",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("platform", sa.String(8), nullable=False),
    sa.Column("external_id", sa.BigInteger, nullable=False),
    sa.Column("display_name", sa.String(256), nullable=False, server_default=""),
    sa.Column("locale", sa.String(8), nullable=False),
    sa.Column("unreachable_at", UTCDateTime),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("platform", "external_id"),
)

tickets = sa.Table(
    "tickets",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("number", sa.BigInteger, nullable=False, unique=True),
    sa.Column("citizen_id", sa.ForeignKey("citizens.id"), nullable=False, index=True),
    sa.Column("category_id", sa.String(32), nullable=False),
    sa.Column("agency_id", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("latitude", sa.Float),
    sa.Column("longitude", sa.Float),
    sa.Column("address", sa.String(512)),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("due_at", UTCDateTime, nullable=False),
    sa.Column("first_response_at", UTCDateTime),
    sa.Column("resolved_at", UTCDateTime),
    sa.Column("closed_at", UTCDateTime),
    sa.Column("reminder_level", sa.Integer, nullable=False, server_default="0"),
    sa.Column("rating", sa.Integer),
    # The scheduler's bookkeeping: when each promise falls due next (NULL: nothing owed). Each scan reads
    # only rows whose time has come, through the (status, time) indexes below.
    sa.Column("remind_at", UTCDateTime),
    sa.Column("next_alert_at", UTCDateTime),
    sa.Column("overdue_level", sa.Integer, nullable=False, server_default="0"),
    sa.Column("waiting_since", UTCDateTime),
    sa.Column("next_update_at", UTCDateTime),
    sa.Index("ix_tickets_status_due_at", "status", "due_at"),
    sa.Index("ix_tickets_status_remind_at", "status", "remind_at"),
    sa.Index("ix_tickets_status_next_alert_at", "status", "next_alert_at"),
    sa.Index("ix_tickets_status_next_update_at", "status", "next_update_at"),
    sa.Index("ix_tickets_status_resolved_at", "status", "resolved_at"),
    sa.Index("ix_tickets_status_waiting_since", "status", "waiting_since"),
    sa.Index("ix_tickets_created_at", "created_at"),
)

ticket_media = sa.Table(
    "ticket_media",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("ticket_id", sa.ForeignKey("tickets.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("platform", sa.String(8), nullable=False),
    sa.Column("file_id", sa.String(512), nullable=False),
    sa.Column("file_unique_id", sa.String(256), nullable=False, server_default=""),
    sa.Column("url", sa.Text, nullable=False, server_default=""),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

_OVERDUE = sa.text("kind = 'overdue'")

ticket_events = sa.Table(
    "ticket_events",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("ticket_id", sa.ForeignKey("tickets.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    # The overdue alerts in order: the coordinators are told of those after a cursor, without reading
    # the rest of the history.
    sa.Index("ix_ticket_events_overdue", "id", sqlite_where=_OVERDUE, postgresql_where=_OVERDUE),
)

message_links = sa.Table(
    "message_links",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("ticket_id", sa.ForeignKey("tickets.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("platform", sa.String(8), nullable=False),
    sa.Column("chat_id", sa.BigInteger, nullable=False),
    sa.Column("message_id", sa.BigInteger, nullable=False),
    sa.Column("direction", sa.String(4), nullable=False),
    sa.Column("role", sa.String(32), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("platform", "chat_id", "message_id"),
)

# The rows of the outbox still to send (the condition of its partial index).
_PENDING = sa.text("status = 'pending'")

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("platform", sa.String(8), nullable=False),
    sa.Column("chat_id", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("dedupe_key", sa.String(128), unique=True),
    sa.Column("ticket_id", sa.ForeignKey("tickets.id", ondelete="SET NULL")),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", UTCDateTime, nullable=False),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("sent_at", UTCDateTime),
    # The parts of a message that makes several calls (an album, then its text) that already went, with
    # their message ids: a retry sends only the rest.
    sa.Column("progress", sa.JSON),
    # With several instances on one database, the instance delivering this row's chat now, and until
    # when its claim holds (an instance that died lets go when the time is up).
    sa.Column("claimed_by", sa.String(64)),
    sa.Column("claimed_until", UTCDateTime),
    sa.Index("ix_outbox_status_next_attempt_at", "status", "next_attempt_at"),
    # The messages still to send, by chat and in order: what the delivery worker reads, without the
    # history of those sent.
    sa.Index(
        "ix_outbox_pending_chat",
        "platform",
        "chat_id",
        "id",
        sqlite_where=_PENDING,
        postgresql_where=_PENDING,
    ),
)

processed_updates = sa.Table(
    "processed_updates",
    metadata,
    sa.Column("platform", sa.String(8), primary_key=True),
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

# Raw updates taken from the platform but not yet handled: stored before the platform is told they
# arrived, so a crash between the two loses nothing.
inbox = sa.Table(
    "inbox",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("platform", sa.String(8), nullable=False),
    sa.Column("key", sa.String(64), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("platform", "key"),
)

conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("platform", sa.String(8), primary_key=True),
    sa.Column("chat_id", sa.BigInteger, primary_key=True),
    sa.Column("state", sa.JSON, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# Where a long poll stopped (VK's `ts`): saved with the events it returned, so a restart resumes there.
cursors = sa.Table(
    "cursors",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(256), nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

"""durable next attempts for studies and jobs

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24 03:00:00.000000

Studies waiting to be routed and jobs waiting for their task carry the time their work is
next due, how often it was tried, and the last transient error (gateway.index.due). Work
pending when the gateway was upgraded is made due at once: the old gateway offered it
again after every restart.
"""

import sqlalchemy as sa
from alembic import op

from gateway.index.tables import UTCDateTime, utcnow

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_COLUMNS = {"studies": "attempts", "jobs": "sends"}


def upgrade() -> None:
    for table, counter in _COLUMNS.items():
        op.add_column(table, sa.Column("next_attempt_at", sa.DateTime(timezone=True)))
        op.add_column(table, sa.Column(counter, sa.Integer(), nullable=False, server_default="0"))
        op.add_column(table, sa.Column("last_error", sa.Text()))
        op.create_index(f"ix_{table}_due", table, ["state", "next_attempt_at"])
    now = utcnow()
    studies = sa.table("studies", sa.column("state"), sa.column("next_attempt_at", UTCDateTime()))
    op.execute(studies.update().where(studies.c.state == "complete").values(next_attempt_at=now))
    jobs = sa.table(
        "jobs", sa.column("id"), sa.column("state"), sa.column("next_attempt_at", UTCDateTime())
    )
    results = sa.table("results", sa.column("job_id"))
    unreported = (jobs.c.state == "inferred") & ~sa.exists().where(results.c.job_id == jobs.c.id)
    op.execute(
        jobs.update().where((jobs.c.state == "queued") | unreported).values(next_attempt_at=now)
    )


def downgrade() -> None:
    for table, counter in _COLUMNS.items():
        op.drop_index(f"ix_{table}_due", table_name=table)
        for column in ("last_error", counter, "next_attempt_at"):
            op.drop_column(table, column)

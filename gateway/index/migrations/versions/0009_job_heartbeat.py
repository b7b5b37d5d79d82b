"""the running job's heartbeat

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 06:40:00.000000

A worker running a job renews ``jobs.heartbeat_at`` while it runs (gateway.inference.lease).
Redis delivers an unacknowledged task again after the visibility timeout even while its
worker is still running it. That copy of the delivery (``jobs.runner``: the task and its
retry count) finds the heartbeat fresh and is skipped instead of running the job a second
time; a job whose heartbeat went stale (its worker died) is taken over or sent again.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("heartbeat_at", sa.DateTime(timezone=True)))
    op.add_column("jobs", sa.Column("runner", sa.String(length=200)))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("runner")
        batch.drop_column("heartbeat_at")

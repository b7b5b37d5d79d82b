"""where each followed Orthanc's /changes was read up to

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 06:00:00.000000

A source with ``orthanc:`` in sources.yaml is followed through that Orthanc's ``/changes``;
the last change dealt with is kept here so that a restart does not fetch every study again.
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orthanc_cursors",
        sa.Column("source_id", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(length=300), nullable=False),
        sa.Column("last_change", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["source_id"], ["sources.id"]),
        sa.PrimaryKeyConstraint("source_id"),
    )


def downgrade() -> None:
    op.drop_table("orthanc_cursors")

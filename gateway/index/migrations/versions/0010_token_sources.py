"""api tokens bound to a source (DICOMweb STOW-RS senders)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 06:00:00.000000

A token may name the source its holder stores as over STOW-RS; tokens minted before this
revision name none and cannot store.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source_name", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_column("source_name")

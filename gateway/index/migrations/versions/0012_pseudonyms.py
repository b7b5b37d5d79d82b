"""pseudonyms of studies sent to external devices, to re-identify what comes back

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 09:00:00.000000

An external device (``runtime: external``) gets each study de-identified; the seed and
every UID's pseudonym are kept here, per (study, device), so a resent series is the same
pseudonymised UIDs and the vendor's results are matched to their job and re-identified.
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pseudonym_studies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("seed", sa.String(length=64), nullable=False),
        sa.Column("pseudo_study_uid", sa.String(length=64), nullable=False),
        sa.Column("pseudo_patient_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("study_uid", "device_id"),
        sa.UniqueConstraint("pseudo_study_uid", "device_id"),
    )
    op.create_table(
        "pseudonyms",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("link_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("original_uid", sa.String(length=64), nullable=False),
        sa.Column("pseudo_uid", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.ForeignKeyConstraint(["link_id"], ["pseudonym_studies.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("link_id", "original_uid"),
    )
    op.create_index("ix_pseudonyms_link_id", "pseudonyms", ["link_id"])
    op.create_index("ix_pseudonyms_pseudo_uid", "pseudonyms", ["pseudo_uid"])


def downgrade() -> None:
    op.drop_index("ix_pseudonyms_pseudo_uid", table_name="pseudonyms")
    op.drop_index("ix_pseudonyms_link_id", table_name="pseudonyms")
    op.drop_table("pseudonyms")
    op.drop_table("pseudonym_studies")

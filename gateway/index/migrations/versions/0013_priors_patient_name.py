"""priors and the patient's name

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 09:00:00.000000

``studies.patient_name``: Patient's Name as received, for QIDO-RS answers and matching
(PS3.18, with wildcards; ``patient_name_folded`` is the case-folded form matched on) and for
checking that an archive's prior study is the same patient's; never logged.
``studies.prior``: a study fetched from the archive as a prior for a job (C-MOVE or
C-GET); such a study is stored like any other but starts no job of its own.
``jobs.prior_study_uids``: the priors handed to the job; NULL while none were looked for.

"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("studies", sa.Column("patient_name", sa.String(length=200)))
    op.add_column("studies", sa.Column("patient_name_folded", sa.String(length=200)))
    op.add_column(
        "studies",
        sa.Column("prior", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column("jobs", sa.Column("prior_study_uids", sa.JSON()))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("prior_study_uids")
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("prior")
        batch.drop_column("patient_name_folded")
        batch.drop_column("patient_name")

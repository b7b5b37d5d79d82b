"""device modes (shadow / live), verdicts, monitoring notices through the outbox

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 04:00:00.000000

Every device version registered before this revision was delivering its results: it is
recorded ``live`` in each region it is enabled in, and every job already recorded is
``live``. Only versions registered from now on start in shadow (unless regions.yaml says
otherwise).
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("device_regions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("start_mode", sa.String(length=16), nullable=False, server_default="shadow")
        )
    with op.batch_alter_table("device_regions", schema=None) as batch_op:
        batch_op.alter_column("start_mode", server_default=None)
    op.create_table(
        "device_modes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("region_code", sa.String(length=2), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("changed_by", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(["region_code"], ["regions.code"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device_id", "version", "region_code"),
    )
    op.execute(
        sa.text(
            "INSERT INTO device_modes (device_id, version, region_code, mode, changed_at, "
            "changed_by) SELECT d.device_id, d.version, r.region_code, 'live', "
            "CURRENT_TIMESTAMP, 'migration 0008' FROM devices d JOIN device_regions r "
            "ON r.device_id = d.device_id"
        )
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("mode", sa.String(length=16), nullable=False, server_default="live")
        )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.alter_column("mode", server_default=None)
    op.create_table(
        "monitoring_notices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("device_key", sa.String(length=100), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
    )
    with op.batch_alter_table("monitoring_notices", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_monitoring_notices_device_key"), ["device_key"], unique=False
        )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.alter_column("result_id", existing_type=sa.Integer(), nullable=True)
        batch_op.add_column(sa.Column("notice_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            "fk_outbox_notice_id_monitoring_notices", "monitoring_notices", ["notice_id"], ["id"]
        )
        batch_op.create_unique_constraint(
            "uq_outbox_notice_id_destination", ["notice_id", "destination"]
        )
        batch_op.create_index(batch_op.f("ix_outbox_notice_id"), ["notice_id"], unique=False)
        batch_op.create_check_constraint(
            "ck_outbox_result_or_notice", "(result_id IS NULL) <> (notice_id IS NULL)"
        )
    op.create_table(
        "verdicts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("finding_id", sa.Integer(), nullable=True),
        sa.Column("label_code", sa.String(length=16), nullable=True),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("location", sa.JSON(), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=True),
        sa.Column("author", sa.String(length=100), nullable=False),
        sa.Column("object_uid", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("superseded_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["finding_id"], ["findings.id"]),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.ForeignKeyConstraint(["token_id"], ["api_tokens.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("verdicts", schema=None) as batch_op:
        batch_op.create_index("ix_verdicts_job_current", ["job_id", "superseded_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_verdicts_object_uid"), ["object_uid"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("verdicts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_verdicts_object_uid"))
        batch_op.drop_index("ix_verdicts_job_current")
    op.drop_table("verdicts")
    op.execute(sa.text("DELETE FROM outbox WHERE notice_id IS NOT NULL"))
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_constraint("ck_outbox_result_or_notice", type_="check")
        batch_op.drop_index(batch_op.f("ix_outbox_notice_id"))
        batch_op.drop_constraint("uq_outbox_notice_id_destination", type_="unique")
        batch_op.drop_constraint("fk_outbox_notice_id_monitoring_notices", type_="foreignkey")
        batch_op.drop_column("notice_id")
        batch_op.alter_column("result_id", existing_type=sa.Integer(), nullable=False)
    with op.batch_alter_table("monitoring_notices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_monitoring_notices_device_key"))
    op.drop_table("monitoring_notices")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("mode")
    op.drop_table("device_modes")
    with op.batch_alter_table("device_regions", schema=None) as batch_op:
        batch_op.drop_column("start_mode")

"""Initial schema: the catalog tables, the field_density view and field_density_for_run().

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Frozen copies of density_db/views.py at this revision (tests check they agree).
FIELD_DENSITY_COLUMNS = """
    f.id AS frame_id,
    e.instrument,
    e.exposure_id,
    f.detector,
    f.band,
    f.ra,
    f.dec,
    f.hpx,
    e.mjd,
    r.density_class,
    r.class_confidence,
    r.bright_count,
    r.log_bright,
    r.regression_status,
    r.flags,
    r.id AS result_id,
    r.run_id,
    c.name AS classifier,
    g.name AS regressor,
    f.valid_fraction,
    f.path,
    f.hdu_index"""

FIELD_DENSITY_VIEW = f"""
CREATE VIEW field_density AS
SELECT{FIELD_DENSITY_COLUMNS}
FROM frame f
JOIN exposure e ON e.id = f.exposure_pk
LEFT JOIN LATERAL (
    SELECT * FROM density_result d
    WHERE d.frame_id = f.id
    ORDER BY d.run_id DESC, d.id DESC
    LIMIT 1
) r ON true
LEFT JOIN model c ON c.id = r.classifier_id
LEFT JOIN model g ON g.id = r.regressor_id
"""

FIELD_DENSITY_FOR_RUN_FUNCTION = f"""
CREATE FUNCTION field_density_for_run(chosen_run_id bigint)
RETURNS SETOF field_density
LANGUAGE sql STABLE AS $$
SELECT{FIELD_DENSITY_COLUMNS}
FROM density_result r
JOIN frame f ON f.id = r.frame_id
JOIN exposure e ON e.id = f.exposure_pk
JOIN model c ON c.id = r.classifier_id
JOIN model g ON g.id = r.regressor_id
WHERE r.run_id = chosen_run_id
$$
"""


def upgrade() -> None:
    op.create_table(
        "exposure",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("instrument", sa.Text(), nullable=False),
        sa.Column(
            "exposure_id",
            sa.Text(),
            nullable=False,
            comment="Exposure identifier as written in the FITS header (OBSID for CSST)",
        ),
        sa.Column("mjd", sa.Double(), nullable=False, comment="Modified Julian Date of the exposure start"),
        sa.Column("obs_time", sa.DateTime(timezone=True), nullable=False, comment="Exposure start, UTC"),
        sa.Column("exposure_time", sa.Double(), nullable=True, comment="Seconds"),
        sa.Column("pointing_ra", sa.Double(), nullable=True, comment="Degrees, ICRS"),
        sa.Column("pointing_dec", sa.Double(), nullable=True, comment="Degrees, ICRS"),
        sa.Column("registered_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_exposure")),
        sa.UniqueConstraint("instrument", "exposure_id", name=op.f("uq_exposure_instrument_exposure_id")),
    )
    op.create_table(
        "model",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("stage", sa.Text(), nullable=False),
        sa.Column("architecture", sa.Text(), nullable=False),
        sa.Column("sha256", sa.Text(), nullable=False),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column(
            "metadata",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
            comment="Class edges, magnitude limit, input size, preprocessing version, training summary",
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("stage IN ('classifier', 'regressor')", name=op.f("ck_model_stage")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model")),
        sa.UniqueConstraint("sha256", name=op.f("uq_model_sha256")),
    )
    op.create_table(
        "run",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False, comment="register, ingest or plan"),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), server_default="running", nullable=False),
        sa.Column("classifier_id", sa.BigInteger(), nullable=True),
        sa.Column("regressor_id", sa.BigInteger(), nullable=True),
        sa.Column(
            "config", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column("code_version", sa.Text(), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "counts", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column("message", sa.Text(), nullable=True, comment="Why the run failed or was interrupted"),
        sa.CheckConstraint("status IN ('running', 'completed', 'failed', 'interrupted')", name=op.f("ck_run_status")),
        sa.ForeignKeyConstraint(["classifier_id"], ["model.id"], name=op.f("fk_run_classifier_id_model")),
        sa.ForeignKeyConstraint(["regressor_id"], ["model.id"], name=op.f("fk_run_regressor_id_model")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run")),
    )
    op.create_table(
        "campaign",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column(
            "rules",
            postgresql.JSONB(astext_type=sa.Text()),
            nullable=False,
            comment="The routing rules the plan was made with",
        ),
        sa.Column("run_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"], name=op.f("fk_campaign_run_id_run"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaign")),
        sa.UniqueConstraint("name", name=op.f("uq_campaign_name")),
    )
    op.create_table(
        "frame",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("exposure_pk", sa.BigInteger(), nullable=False),
        sa.Column("detector", sa.SmallInteger(), nullable=False),
        sa.Column("band", sa.Text(), nullable=False, comment="Canonical band name of the instrument profile"),
        sa.Column("path", sa.Text(), nullable=False, comment="Absolute path of the FITS file"),
        sa.Column("hdu_index", sa.SmallInteger(), nullable=False, comment="Index of the science HDU in the file"),
        sa.Column("dq_hdu_index", sa.SmallInteger(), nullable=True, comment="Index of the matching data-quality HDU"),
        sa.Column("naxis1", sa.Integer(), nullable=False, comment="Image width in pixels"),
        sa.Column("naxis2", sa.Integer(), nullable=False, comment="Image height in pixels"),
        sa.Column("valid_fraction", sa.REAL(), nullable=True, comment="Fraction of finite, unflagged pixels"),
        sa.Column("ra", sa.Double(), nullable=False, comment="Centre, degrees ICRS"),
        sa.Column("dec", sa.Double(), nullable=False, comment="Centre, degrees ICRS"),
        sa.Column(
            "corner_ra",
            postgresql.ARRAY(sa.Double(), dimensions=1),
            nullable=False,
            comment="Outer pixel corners, degrees",
        ),
        sa.Column(
            "corner_dec",
            postgresql.ARRAY(sa.Double(), dimensions=1),
            nullable=False,
            comment="Outer pixel corners, degrees",
        ),
        sa.Column("radius_deg", sa.Double(), nullable=False, comment="Largest centre-to-corner separation, degrees"),
        sa.Column("hpx", sa.BigInteger(), nullable=False, comment="Order-29 NESTED HEALPix index of the centre"),
        sa.Column(
            "footprint",
            postgresql.INT8MULTIRANGE(),
            nullable=False,
            comment="Depth-29 NESTED ranges of the footprint MOC at footprint_depth",
        ),
        sa.Column("footprint_depth", sa.SmallInteger(), nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=True, comment="Run that registered it"),
        sa.Column("registered_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("dec BETWEEN -90 AND 90", name=op.f("ck_frame_dec")),
        sa.CheckConstraint("footprint_depth BETWEEN 0 AND 29", name=op.f("ck_frame_footprint_depth")),
        sa.ForeignKeyConstraint(
            ["exposure_pk"], ["exposure.id"], name=op.f("fk_frame_exposure_pk_exposure"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"], name=op.f("fk_frame_run_id_run"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_frame")),
        sa.UniqueConstraint("exposure_pk", "detector", name=op.f("uq_frame_exposure_pk_detector")),
    )
    op.create_index("ix_frame_band", "frame", ["band"], unique=False)
    op.create_index("ix_frame_footprint", "frame", ["footprint"], unique=False, postgresql_using="gist")
    op.create_index("ix_frame_hpx", "frame", ["hpx"], unique=False)
    op.create_index("ix_frame_radius_deg", "frame", ["radius_deg"], unique=False)
    op.create_table(
        "density_result",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("frame_id", sa.BigInteger(), nullable=False),
        sa.Column("classifier_id", sa.BigInteger(), nullable=False),
        sa.Column("regressor_id", sa.BigInteger(), nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("density_class", sa.SmallInteger(), nullable=False),
        sa.Column("probabilities", postgresql.ARRAY(sa.REAL(), dimensions=1), nullable=False, comment="P(class 0..5)"),
        sa.Column("class_confidence", sa.REAL(), nullable=False, comment="Probability of the predicted class"),
        sa.Column("log_bright", sa.REAL(), nullable=True, comment="Predicted log10(1 + N_bright)"),
        sa.Column("bright_count", sa.REAL(), nullable=True, comment="Predicted stars brighter than 23.5 mag"),
        sa.Column(
            "regression_status", sa.Text(), nullable=False, comment="predicted, bypassed (class 5) or empty (class 0)"
        ),
        sa.Column("flags", sa.BigInteger(), server_default="0", nullable=False, comment="Bitmask of field flags"),
        sa.Column("read_seconds", sa.REAL(), nullable=True),
        sa.Column("preprocess_seconds", sa.REAL(), nullable=True),
        sa.Column("infer_seconds", sa.REAL(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "regression_status IN ('predicted', 'bypassed', 'empty')", name=op.f("ck_density_result_regression_status")
        ),
        sa.CheckConstraint("cardinality(probabilities) = 6", name=op.f("ck_density_result_probabilities")),
        sa.CheckConstraint("density_class BETWEEN 0 AND 5", name=op.f("ck_density_result_density_class")),
        sa.ForeignKeyConstraint(["classifier_id"], ["model.id"], name=op.f("fk_density_result_classifier_id_model")),
        sa.ForeignKeyConstraint(
            ["frame_id"], ["frame.id"], name=op.f("fk_density_result_frame_id_frame"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["regressor_id"], ["model.id"], name=op.f("fk_density_result_regressor_id_model")),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"], name=op.f("fk_density_result_run_id_run")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_density_result")),
        sa.UniqueConstraint(
            "frame_id",
            "classifier_id",
            "regressor_id",
            name=op.f("uq_density_result_frame_id_classifier_id_regressor_id"),
        ),
    )
    op.create_index("ix_density_result_run_id", "density_result", ["run_id"], unique=False)
    op.create_table(
        "failure",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column(
            "hdu_index", sa.SmallInteger(), server_default="-1", nullable=False, comment="-1: the file as a whole"
        ),
        sa.Column("stage", sa.Text(), nullable=False, comment="register or inference"),
        sa.Column("error_kind", sa.Text(), nullable=False, comment="not_fits, truncated, no_wcs, missing_keyword, ..."),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("frame_id", sa.BigInteger(), nullable=True),
        sa.Column("run_id", sa.BigInteger(), nullable=True, comment="Last run that saw it"),
        sa.Column("attempts", sa.Integer(), server_default="1", nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["frame_id"], ["frame.id"], name=op.f("fk_failure_frame_id_frame"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"], name=op.f("fk_failure_run_id_run"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_failure")),
        sa.UniqueConstraint(
            "path", "hdu_index", "stage", "error_kind", name=op.f("uq_failure_path_hdu_index_stage_error_kind")
        ),
    )
    op.create_table(
        "campaign_item",
        sa.Column("campaign_id", sa.BigInteger(), nullable=False),
        sa.Column("frame_id", sa.BigInteger(), nullable=False),
        sa.Column("result_id", sa.BigInteger(), nullable=True),
        sa.Column("branch", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("status IN ('pending', 'done', 'failed')", name=op.f("ck_campaign_item_status")),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaign.id"], name=op.f("fk_campaign_item_campaign_id_campaign"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["frame_id"], ["frame.id"], name=op.f("fk_campaign_item_frame_id_frame"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["result_id"],
            ["density_result.id"],
            name=op.f("fk_campaign_item_result_id_density_result"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("campaign_id", "frame_id", name=op.f("pk_campaign_item")),
    )
    op.create_index("ix_campaign_item_campaign_id_branch", "campaign_item", ["campaign_id", "branch"], unique=False)
    op.execute(FIELD_DENSITY_VIEW)
    op.execute(FIELD_DENSITY_FOR_RUN_FUNCTION)


def downgrade() -> None:
    op.execute("DROP FUNCTION field_density_for_run(bigint)")
    op.execute("DROP VIEW field_density")
    op.drop_index("ix_campaign_item_campaign_id_branch", table_name="campaign_item")
    op.drop_table("campaign_item")
    op.drop_table("failure")
    op.drop_index("ix_density_result_run_id", table_name="density_result")
    op.drop_table("density_result")
    op.drop_index("ix_frame_radius_deg", table_name="frame")
    op.drop_index("ix_frame_hpx", table_name="frame")
    op.drop_index("ix_frame_footprint", table_name="frame", postgresql_using="gist")
    op.drop_index("ix_frame_band", table_name="frame")
    op.drop_table("frame")
    op.drop_table("campaign")
    op.drop_table("run")
    op.drop_table("model")
    op.drop_table("exposure")

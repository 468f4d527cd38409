"""Flags provenance and campaign selection: density_result.flags_run_id, campaign.selection, flag_names().

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Frozen copies of density_db/views.py at this revision (tests check they agree).
# The view now names the result columns it reads: its 0001 form read ``d.*``,
# which PostgreSQL expands once, at creation, so a column added later never
# reaches it and the view would differ from a fresh one.
FIELD_DENSITY_VIEW = """
CREATE OR REPLACE VIEW field_density AS
SELECT
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
    f.hdu_index
FROM frame f
JOIN exposure e ON e.id = f.exposure_pk
LEFT JOIN LATERAL (
    SELECT d.id, d.run_id, d.classifier_id, d.regressor_id, d.density_class, d.class_confidence,
           d.bright_count, d.log_bright, d.regression_status, d.flags
    FROM density_result d
    WHERE d.frame_id = f.id
    ORDER BY d.run_id DESC, d.id DESC
    LIMIT 1
) r ON true
LEFT JOIN model c ON c.id = r.classifier_id
LEFT JOIN model g ON g.id = r.regressor_id
"""

FLAG_NAMES_FUNCTION = """
CREATE FUNCTION flag_names(flags bigint)
RETURNS text[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
SELECT coalesce(array_agg(b.name ORDER BY b.bit), '{}')
FROM (VALUES
    (0, 'crowded'),
    (1, 'extreme'),
    (2, 'few_references'),
    (3, 'out_of_regression_range'),
    (4, 'low_confidence'),
    (5, 'near_class_boundary'),
    (6, 'poor_input'),
    (7, 'band_disagreement')
) AS b(bit, name)
WHERE flags & (CAST(1 AS bigint) << b.bit) <> 0
$$
"""


def upgrade() -> None:
    op.add_column("density_result", sa.Column(
        "flags_run_id", sa.BigInteger(), nullable=True,
        comment="Run whose rules set the flags (run.config holds them)",
    ))
    op.create_foreign_key(
        op.f("fk_density_result_flags_run_id_run"), "density_result", "run", ["flags_run_id"], ["id"],
        ondelete="SET NULL",
    )
    op.alter_column("density_result", "flags", existing_type=sa.BigInteger(), existing_nullable=False,
                    comment="Bitmask of field flags (flag_names() names them)",
                    existing_comment="Bitmask of field flags")
    op.alter_column("run", "kind", existing_type=sa.Text(), existing_nullable=False,
                    comment="register, ingest, flags or plan", existing_comment="register, ingest or plan")
    op.add_column("campaign", sa.Column(
        "selection", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"),
        nullable=False, comment="Bands, region and result run the frames were selected by",
    ))
    op.create_index(op.f("ix_campaign_item_frame_id"), "campaign_item", ["frame_id"], unique=False)
    op.execute(FIELD_DENSITY_VIEW)
    op.execute(FLAG_NAMES_FUNCTION)


def downgrade() -> None:
    op.execute("DROP FUNCTION flag_names(bigint)")
    # The view keeps its 0004 form: the same columns, reading none that 0003 lacks.
    op.drop_index(op.f("ix_campaign_item_frame_id"), table_name="campaign_item")
    op.drop_column("campaign", "selection")
    op.alter_column("run", "kind", existing_type=sa.Text(), existing_nullable=False,
                    comment="register, ingest or plan", existing_comment="register, ingest, flags or plan")
    op.alter_column("density_result", "flags", existing_type=sa.BigInteger(), existing_nullable=False,
                    comment="Bitmask of field flags", existing_comment="Bitmask of field flags (flag_names() names them)")
    op.drop_constraint(op.f("fk_density_result_flags_run_id_run"), "density_result", type_="foreignkey")
    op.drop_column("density_result", "flags_run_id")

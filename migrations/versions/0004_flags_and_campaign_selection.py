"""Flags provenance, campaign selection, flag_names(); campaign items lose their row-by-row foreign keys.

Inserting a 2-million-frame campaign spent two thirds of its time in the
foreign-key checks of campaign_item (each also locks the referenced row);
statement-level triggers keep the ON DELETE behaviour instead.

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

CAMPAIGN_ITEM_CASCADE_FUNCTIONS = (
    """
CREATE FUNCTION campaign_item_forget_campaigns()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM campaign_item i USING deleted d WHERE i.campaign_id = d.id;
    RETURN NULL;
END
$$
""",
    """
CREATE FUNCTION campaign_item_forget_frames()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM campaign_item i USING deleted d WHERE i.frame_id = d.id;
    RETURN NULL;
END
$$
""",
    """
CREATE FUNCTION campaign_item_forget_results()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE campaign_item i SET result_id = NULL FROM deleted d WHERE i.result_id = d.id;
    RETURN NULL;
END
$$
""",
)

CAMPAIGN_ITEM_TRIGGERS = (
    "CREATE TRIGGER campaign_item_after_campaign_delete AFTER DELETE ON campaign REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT EXECUTE FUNCTION campaign_item_forget_campaigns()",
    "CREATE TRIGGER campaign_item_after_frame_delete AFTER DELETE ON frame REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT EXECUTE FUNCTION campaign_item_forget_frames()",
    "CREATE TRIGGER campaign_item_after_density_result_delete AFTER DELETE ON density_result REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT EXECUTE FUNCTION campaign_item_forget_results()",
)

_ITEM_FOREIGN_KEYS = (
    ("fk_campaign_item_campaign_id_campaign", "campaign", "campaign_id", "CASCADE"),
    ("fk_campaign_item_frame_id_frame", "frame", "frame_id", "CASCADE"),
    ("fk_campaign_item_result_id_density_result", "density_result", "result_id", "SET NULL"),
)


def upgrade() -> None:
    op.add_column(
        "density_result",
        sa.Column(
            "flags_run_id",
            sa.BigInteger(),
            nullable=True,
            comment="Run whose rules set the flags (run.config holds them)",
        ),
    )
    op.create_foreign_key(
        op.f("fk_density_result_flags_run_id_run"),
        "density_result",
        "run",
        ["flags_run_id"],
        ["id"],
        ondelete="SET NULL",
    )
    op.alter_column(
        "density_result",
        "flags",
        existing_type=sa.BigInteger(),
        existing_nullable=False,
        comment="Bitmask of field flags (flag_names() names them)",
        existing_comment="Bitmask of field flags",
    )
    op.alter_column(
        "run",
        "kind",
        existing_type=sa.Text(),
        existing_nullable=False,
        comment="register, ingest, flags or plan",
        existing_comment="register, ingest or plan",
    )
    op.add_column(
        "campaign",
        sa.Column(
            "selection",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
            comment="Bands, region and result run the frames were selected by",
        ),
    )
    op.create_index(op.f("ix_campaign_item_frame_id"), "campaign_item", ["frame_id"], unique=False)
    op.execute(FIELD_DENSITY_VIEW)
    op.execute(FLAG_NAMES_FUNCTION)
    for name, _table, _column, _action in _ITEM_FOREIGN_KEYS:
        op.drop_constraint(name, "campaign_item", type_="foreignkey")
    for column, comment in (
        ("campaign_id", "campaign.id"),
        ("frame_id", "frame.id"),
        ("result_id", "density_result.id the frame was routed by"),
    ):
        op.alter_column("campaign_item", column, existing_type=sa.BigInteger(), comment=comment)
    for statement in (*CAMPAIGN_ITEM_CASCADE_FUNCTIONS, *CAMPAIGN_ITEM_TRIGGERS):
        op.execute(statement)


def downgrade() -> None:
    for table in ("campaign", "frame", "density_result"):
        op.execute(f"DROP TRIGGER campaign_item_after_{table}_delete ON {table}")
    for what in ("campaigns", "frames", "results"):
        op.execute(f"DROP FUNCTION campaign_item_forget_{what}()")
    for column in ("campaign_id", "frame_id", "result_id"):
        op.alter_column("campaign_item", column, existing_type=sa.BigInteger(), comment=None)
    op.execute("DELETE FROM campaign_item i WHERE NOT EXISTS (SELECT 1 FROM frame f WHERE f.id = i.frame_id)")
    for name, table, column, action in _ITEM_FOREIGN_KEYS:
        op.create_foreign_key(name, "campaign_item", table, [column], ["id"], ondelete=action)
    op.execute("DROP FUNCTION flag_names(bigint)")
    # The view keeps its 0004 form: the same columns, reading none that 0003 lacks.
    op.drop_index(op.f("ix_campaign_item_frame_id"), table_name="campaign_item")
    op.drop_column("campaign", "selection")
    op.alter_column(
        "run",
        "kind",
        existing_type=sa.Text(),
        existing_nullable=False,
        comment="register, ingest or plan",
        existing_comment="register, ingest, flags or plan",
    )
    op.alter_column(
        "density_result",
        "flags",
        existing_type=sa.BigInteger(),
        existing_nullable=False,
        comment="Bitmask of field flags",
        existing_comment="Bitmask of field flags (flag_names() names them)",
    )
    op.drop_constraint(op.f("fk_density_result_flags_run_id_run"), "density_result", type_="foreignkey")
    op.drop_column("density_result", "flags_run_id")

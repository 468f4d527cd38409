"""flag_names() knows bit 8, outside_training_domain (a frame unlike the models' training images).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _flag_names_function(names: Sequence[str]) -> str:
    rows = ",\n    ".join(f"({bit}, '{name}')" for bit, name in enumerate(names))
    return f"""
CREATE OR REPLACE FUNCTION flag_names(flags bigint)
RETURNS text[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
SELECT coalesce(array_agg(b.name ORDER BY b.bit), '{{}}')
FROM (VALUES
    {rows}
) AS b(bit, name)
WHERE flags & (CAST(1 AS bigint) << b.bit) <> 0
$$
"""


# Frozen copies of the flag names at this revision and the one before (tests check the first against views.py).
_NAMES_0004 = (
    "crowded",
    "extreme",
    "few_references",
    "out_of_regression_range",
    "low_confidence",
    "near_class_boundary",
    "poor_input",
    "band_disagreement",
)
_NAMES_0005 = (*_NAMES_0004, "outside_training_domain")


def upgrade() -> None:
    op.execute(_flag_names_function(_NAMES_0005))


def downgrade() -> None:
    op.execute(_flag_names_function(_NAMES_0004))

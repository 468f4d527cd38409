"""Model names are unique, so that a registered name resolves to one checkpoint.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Names registered before this revision may repeat: keep the oldest, suffix the others with their id.
    op.execute(
        """
        UPDATE model SET name = model.name || '-' || model.id
        FROM model AS older
        WHERE older.name = model.name AND older.id < model.id
        """
    )
    op.create_unique_constraint(op.f("uq_model_name"), "model", ["name"])


def downgrade() -> None:
    op.drop_constraint(op.f("uq_model_name"), "model", type_="unique")

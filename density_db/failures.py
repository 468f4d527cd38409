"""The ``failure`` table's one write: record a batch of failures, counting repeats instead of duplicating them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from density_db.tables import Failure


def record_failures(connection: sa.Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert failure rows; one seen before (same path, HDU, stage, kind) gets ``attempts + 1`` instead.

    Each row has ``path``, ``hdu_index``, ``stage``, ``error_kind``,
    ``message`` and ``run_id`` (and optionally ``frame_id``).
    """
    # One statement may not touch a row twice: keep the last of each key.
    unique = {(row["path"], row["hdu_index"], row["stage"], row["error_kind"]): row for row in rows}
    if not unique:
        return
    statement = insert(Failure)
    statement = statement.on_conflict_do_update(
        index_elements=["path", "hdu_index", "stage", "error_kind"],
        set_={
            "message": statement.excluded.message,
            "frame_id": statement.excluded.frame_id,
            "run_id": statement.excluded.run_id,
            "attempts": Failure.attempts + 1,
            "last_seen_at": sa.func.now(),
        },
    )
    connection.execute(statement, [{"frame_id": None, **row} for row in unique.values()])

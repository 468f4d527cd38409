"""The ``run`` ledger: every registration, ingest or planning run leaves one row.

A run starts as ``running`` and ends ``completed``, ``failed`` or
``interrupted`` with its counts, so a crash or Ctrl-C is visible afterwards
and never mistaken for work in progress.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import sqlalchemy as sa

from density_db import __version__
from density_db.database import Database
from density_db.models import Run


def start_run(database: Database, *, kind: str, name: str | None, config: dict[str, Any]) -> int:
    """Insert a ``run`` row with status ``running`` and return its id."""
    with database.engine.begin() as connection:
        return connection.execute(
            sa.insert(Run)
            .values(
                kind=kind,
                name=name,
                config=config,
                code_version=__version__,
                host=socket.gethostname(),
                pid=os.getpid(),
            )
            .returning(Run.id)
        ).scalar_one()


def finish_run(
    database: Database, run_id: int, *, status: str, counts: dict[str, Any], message: str | None = None
) -> None:
    """Close a run with its final status (completed, failed or interrupted) and counts."""
    with database.engine.begin() as connection:
        connection.execute(
            sa.update(Run)
            .where(Run.id == run_id)
            .values(status=status, counts=counts, message=message, finished_at=sa.func.now())
        )

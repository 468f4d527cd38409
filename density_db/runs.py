"""The ``run`` ledger: every registration, ingest or planning run leaves one row.

A run starts as ``running`` and ends ``completed``, ``failed`` or
``interrupted`` with its counts, so a crash or Ctrl-C is visible afterwards
and never mistaken for work in progress.

A process that is killed cannot close its run, so a live run holds a
PostgreSQL session-level advisory lock on its id for as long as it works
(:class:`ActiveRun`).  The server drops the lock when the process's
connection goes away, whatever killed it; :func:`close_abandoned_runs`
(called when a new run starts) marks every ``running`` run whose lock is free
as ``interrupted``.  This works across hosts, which a process id would not.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa

from density_db import __version__
from density_db.database import Database
from density_db.errors import DensityDBError
from density_db.tables import Run

logger = logging.getLogger(__name__)

RUN_LOCK_CLASS = 0x72756E  # first key of pg_advisory_lock(int, int); the second is the run id
ABANDONED_MESSAGE = "the process running it stopped without closing it (killed or lost its database connection)"


class ActiveRun:
    """A ``running`` row and the advisory lock that proves its process is alive.

    Use as a context manager, or call :meth:`close` when done; ``finish``
    records the outcome.
    """

    def __init__(self, database: Database, run_id: int) -> None:
        self.database = database
        self.id = run_id
        self._connection: sa.Connection | None = None
        self._hold_lock()

    def _hold_lock(self) -> None:
        self._connection = self.database.engine.connect()
        self._connection.execute(
            sa.text("SELECT pg_advisory_lock(:cls, :run)"), {"cls": RUN_LOCK_CLASS, "run": self.id}
        )
        self._connection.commit()

    def keep_alive(self) -> None:
        """Take the lock again if its connection was lost (e.g. the server restarted)."""
        try:
            self._connection.execute(sa.text("SELECT 1"))
        except sa.exc.DBAPIError:
            logger.info("the connection holding run %d's lock was lost; taking the lock again", self.id)
            self._drop_connection()
            self._hold_lock()

    def finish(self, *, status: str, counts: dict[str, Any], message: str | None = None) -> None:
        """Close the run with its final status (completed, failed or interrupted) and counts."""
        with self.database.engine.begin() as connection:
            connection.execute(
                sa.update(Run)
                .where(Run.id == self.id)
                .values(status=status, counts=counts, message=message, finished_at=sa.func.now())
            )

    def close(self) -> None:
        """Release the lock (closing the connection releases it on the server)."""
        self._drop_connection()

    def _drop_connection(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except sa.exc.DBAPIError:
                pass
            self._connection = None

    def __enter__(self) -> ActiveRun:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def begin_run(
    database: Database,
    *,
    kind: str,
    name: str | None,
    config: dict[str, Any],
    classifier_id: int | None = None,
    regressor_id: int | None = None,
) -> ActiveRun:
    """Close abandoned runs, then insert a ``running`` row and hold its liveness lock.

    There is no way to start a run without the lock: the next run would take
    it for abandoned.
    """
    close_abandoned_runs(database)
    with database.engine.begin() as connection:
        run_id = connection.execute(
            sa.insert(Run)
            .values(
                kind=kind,
                name=name,
                config=config,
                code_version=__version__,
                host=socket.gethostname(),
                pid=os.getpid(),
                classifier_id=classifier_id,
                regressor_id=regressor_id,
            )
            .returning(Run.id)
        ).scalar_one()
    return ActiveRun(database, run_id)


def close_abandoned_runs(database: Database) -> list[int]:
    """Mark ``running`` runs whose liveness lock is free as ``interrupted``; return their ids.

    Each candidate's lock is tried inside one transaction
    (``pg_try_advisory_xact_lock``), so a run that is alive is never touched.
    """
    with database.engine.begin() as connection:
        candidates = connection.execute(sa.select(Run.id).where(Run.status == "running")).scalars().all()
        abandoned = [
            run_id
            for run_id in candidates
            if connection.execute(
                sa.text("SELECT pg_try_advisory_xact_lock(:cls, :run)"), {"cls": RUN_LOCK_CLASS, "run": run_id}
            ).scalar_one()
        ]
        if abandoned:
            connection.execute(
                sa.update(Run)
                .where(Run.id.in_(abandoned), Run.status == "running")
                .values(status="interrupted", message=ABANDONED_MESSAGE, finished_at=sa.func.now())
            )
    for run_id in abandoned:
        logger.warning("run %d was left running by a process that is gone; marked interrupted", run_id)
    return abandoned


@contextlib.contextmanager
def recording_outcome(run: ActiveRun, counts: Callable[[], dict[str, Any]]) -> Iterator[None]:
    """Close ``run`` when the body ends: completed, or failed or interrupted with the reason, and ``counts()``."""
    try:
        yield
    except KeyboardInterrupt:
        run.finish(status="interrupted", counts=counts(), message="interrupted by the user")
        raise
    except BaseException as error:
        reason = str(error) if isinstance(error, DensityDBError) else f"{type(error).__name__}: {error}"
        run.finish(status="failed", counts=counts(), message=reason[:2000])
        raise
    run.finish(status="completed", counts=counts())

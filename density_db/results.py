"""Writing the two-stage model's answers: ``density_result`` rows and inference ``failure`` rows.

Rows arrive in batches from ingest's workers and go to PostgreSQL in one
transaction per batch, as multi-row ``INSERT ... ON CONFLICT`` on the unique
key (frame, classifier, regressor): a shard that Dask ran twice, a retried
batch or two ingests over the same frames never store a result twice.  With
``replace`` (``ingest --rerun``) a new answer overwrites the stored one.

A batch that loses a deadlock, or whose connection drops (the server
restarted), is retried with back-off; only when the server stays away does
the error reach the caller, and the next ingest redoes what was not stored.

The same transaction sets the flags of the new results, and of the other
results of their exposures (the band-disagreement flag compares them), from
the flag thresholds in force.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from density_db.database import Database
from density_db.errors import DatabaseError
from density_db.failures import record_failures
from density_db.flags import FlagThresholds, update_flags
from density_db.tables import DensityResult, Failure, Frame

logger = logging.getLogger(__name__)

INFERENCE_STAGE = "inference"
_LOCK_CONFLICTS = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
_RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0)  # seconds: about half a minute for a server restart


@dataclass(frozen=True)
class ResultRow:
    """One frame's answer as a worker returns it (small: no pixels)."""

    frame_id: int
    probabilities: tuple[float, ...]
    density_class: int
    class_confidence: float
    log_bright: float | None
    bright_count: float | None
    regression_status: str
    valid_fraction: float
    read_seconds: float
    preprocess_seconds: float
    infer_seconds: float


@dataclass(frozen=True)
class InferenceFailure:
    """A registered frame whose pixels could not be read or reduced, and why."""

    frame_id: int
    path: str
    hdu_index: int
    error_kind: str
    message: str


def write_results(
    database: Database,
    results: Sequence[ResultRow],
    failures: Sequence[InferenceFailure],
    *,
    classifier_id: int,
    regressor_id: int,
    run_id: int,
    flag_thresholds: FlagThresholds,
    replace: bool = False,
) -> int:
    """Store a batch of answers and failures in one transaction, with their flags; return how many results were new.

    Raises
    ------
    DatabaseError
        When the database stays unreachable after the retries (the message
        names the URL without its password).
    """
    results = sorted(results, key=lambda row: row.frame_id)  # one lock order for concurrent writers
    failures = sorted(failures, key=lambda row: (row.path, row.hdu_index, row.error_kind))
    for attempt, delay in enumerate((*_RETRY_DELAYS, None), start=1):
        try:
            with database.engine.begin() as connection:
                written = _insert_results(connection, results, classifier_id, regressor_id, run_id, replace)
                _record_valid_fractions(connection, results)
                if results:
                    update_flags(
                        connection,
                        flag_thresholds,
                        run_id=run_id,
                        frame_ids=[row.frame_id for row in results],
                        classifier_id=classifier_id,
                        regressor_id=regressor_id,
                    )
                _forget_resolved_failures(connection, results)
                _record_failures(connection, failures, run_id)
            return written
        except sa.exc.DBAPIError as error:
            if delay is None or not _worth_retrying(error):
                if isinstance(error, sa.exc.OperationalError):
                    raise DatabaseError(
                        f"cannot write results to the database at {database.display_url}: "
                        f"{str(error.orig).strip().splitlines()[0] if error.orig else error}"
                    ) from error
                raise
            logger.warning(
                "writing %d results failed (%s); retry %d in %.1f s",
                len(results),
                type(error.orig).__name__,
                attempt,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


def _worth_retrying(error: sa.exc.DBAPIError) -> bool:
    """Lock conflicts with concurrent writers, and connections the server dropped."""
    return (
        isinstance(error.orig, _LOCK_CONFLICTS)
        or error.connection_invalidated
        or isinstance(error, sa.exc.OperationalError)
    )


def _insert_results(
    connection: sa.Connection,
    results: Sequence[ResultRow],
    classifier_id: int,
    regressor_id: int,
    run_id: int,
    replace: bool,
) -> int:
    if not results:
        return 0
    statement = insert(DensityResult)
    if replace:
        statement = statement.on_conflict_do_update(
            index_elements=["frame_id", "classifier_id", "regressor_id"],
            set_={
                column: statement.excluded[column]
                for column in (
                    "run_id",
                    "density_class",
                    "probabilities",
                    "class_confidence",
                    "log_bright",
                    "bright_count",
                    "regression_status",
                    "read_seconds",
                    "preprocess_seconds",
                    "infer_seconds",
                )
            }
            | {"created_at": sa.func.now()},
        )
    else:
        statement = statement.on_conflict_do_nothing(index_elements=["frame_id", "classifier_id", "regressor_id"])
    rows = [
        {
            "frame_id": row.frame_id,
            "classifier_id": classifier_id,
            "regressor_id": regressor_id,
            "run_id": run_id,
            "density_class": row.density_class,
            "probabilities": list(row.probabilities),
            "class_confidence": row.class_confidence,
            "log_bright": row.log_bright,
            "bright_count": row.bright_count,
            "regression_status": row.regression_status,
            "read_seconds": row.read_seconds,
            "preprocess_seconds": row.preprocess_seconds,
            "infer_seconds": row.infer_seconds,
        }
        for row in results
    ]
    return len(connection.execute(statement.returning(DensityResult.id), rows).all())


def _record_valid_fractions(connection: sa.Connection, results: Sequence[ResultRow]) -> None:
    """Registration reads headers only; the pixels tell the valid-pixel fraction."""
    if results:
        connection.execute(
            sa.update(Frame).where(Frame.id == sa.bindparam("frame")).values(valid_fraction=sa.bindparam("fraction")),
            [{"frame": row.frame_id, "fraction": row.valid_fraction} for row in results],
        )


def _forget_resolved_failures(connection: sa.Connection, results: Sequence[ResultRow]) -> None:
    """A frame that failed before and has a result now (the file was fixed) no longer counts as failed."""
    if results:
        connection.execute(
            sa.delete(Failure).where(
                Failure.stage == INFERENCE_STAGE, Failure.frame_id.in_([row.frame_id for row in results])
            )
        )


def _record_failures(connection: sa.Connection, failures: Sequence[InferenceFailure], run_id: int) -> None:
    record_failures(
        connection,
        [
            {
                "path": f.path,
                "hdu_index": f.hdu_index,
                "stage": INFERENCE_STAGE,
                "error_kind": f.error_kind,
                "message": f.message,
                "frame_id": f.frame_id,
                "run_id": run_id,
            }
            for f in failures
        ],
    )

"""Frame registration: FITS headers in, ``exposure`` / ``frame`` / ``failure`` rows out.

This is the metadata half of ``density-db ingest`` (alone with
``--metadata-only``).  Inputs stream through in batches: each batch is one
transaction of multi-row ``INSERT ... ON CONFLICT`` statements on the natural
keys, so re-running on the same inputs adds nothing, two registrations of
overlapping inputs can run at once, and a crash loses at most the batch in
flight (which the next run redoes).  A frame registered before at a path
that no longer exists (the archive moved) takes the path it was just read
from; one whose registered file still exists keeps it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import Range, insert

from density_db.database import Database
from density_db.failures import record_failures
from density_db.fits_input import FrameHeader, InputFailure, read_frame_headers
from density_db.instrument import InstrumentProfile
from density_db.tables import Exposure, Failure, Frame

logger = logging.getLogger(__name__)

REGISTER_STAGE = "register"
DEFAULT_BATCH_SIZE = 500
_WRITE_ATTEMPTS = 5
_RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


@dataclass
class RegistrationCounts:
    """Running totals of a registration, reported to the progress callback and stored on the run."""

    files: int = 0
    frames_new: int = 0
    frames_known: int = 0
    failures: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


ProgressCallback = Callable[[RegistrationCounts], None]


@dataclass
class _Batch:
    frames: list[FrameHeader] = field(default_factory=list)
    failures: list[InputFailure] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.frames) + len(self.failures)


@dataclass(frozen=True)
class RegisteredFrame:
    """A frame row and the header it was (or would have been) registered from.

    ``header`` describes the file just read, which is where inference reads
    the pixels even when the frame was registered earlier from another path.
    """

    frame_id: int
    header: FrameHeader


def register_paths(
    database: Database,
    paths: Iterable[Path],
    profile: InstrumentProfile,
    *,
    counts: RegistrationCounts | None = None,
    run_id: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: ProgressCallback | None = None,
) -> RegistrationCounts:
    """Register every science HDU of every file in ``paths``.

    Each input ends as a ``frame`` row (new or already known) or a ``failure``
    row; nothing raises for bad input.

    Parameters
    ----------
    paths
        Files to read, typically from :func:`density_db.fits_input.discover_inputs`
        (consumed lazily, so a list of millions of paths is never held).
    counts
        Totals to update in place (a new object by default); returned.
    run_id
        The ``run`` row to attribute new frames and failures to.
    batch_size
        Frames and failures written per transaction.
    progress
        Called after every file with the running totals.
    """
    counts = counts if counts is not None else RegistrationCounts()
    for _batch in register_batches(
        database, paths, profile, counts, run_id=run_id, batch_size=batch_size, progress=progress
    ):
        pass
    return counts


def register_batches(
    database: Database,
    paths: Iterable[Path],
    profile: InstrumentProfile,
    counts: RegistrationCounts,
    *,
    run_id: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: ProgressCallback | None = None,
) -> Iterator[list[RegisteredFrame]]:
    """Register ``paths`` batch by batch, yielding each batch's frames once they are stored.

    The streaming form of :func:`register_paths` that ingest builds on: the
    caller can start work on a batch's frames while later files are still
    being read.  ``counts`` is updated in place.
    """
    batch = _Batch()
    for path in paths:
        for item in read_frame_headers(path, profile):
            (batch.frames if isinstance(item, FrameHeader) else batch.failures).append(item)
        counts.files += 1
        if len(batch) >= batch_size:
            yield _write_batch(database, batch, counts, run_id)
            batch = _Batch()
        if progress is not None:
            progress(counts)
    if len(batch):
        yield _write_batch(database, batch, counts, run_id)
        if progress is not None:
            progress(counts)


def _write_batch(
    database: Database, batch: _Batch, counts: RegistrationCounts, run_id: int | None
) -> list[RegisteredFrame]:
    """Write one batch in one transaction, retried when it lost a deadlock to a concurrent registration.

    Rows are inserted in key order, so concurrent registrations of
    overlapping inputs wait for each other instead of deadlocking; the retry
    is the safety net for what ordering cannot prevent.
    """
    batch.frames.sort(key=lambda frame: (frame.instrument, frame.exposure_id, frame.detector))
    batch.failures.sort(key=lambda failure: (failure.path, failure.hdu_index, failure.error_kind))
    for attempt in range(1, _WRITE_ATTEMPTS + 1):
        try:
            with database.engine.begin() as connection:
                inserted, registered = 0, []
                if batch.frames:
                    exposure_keys = _upsert_exposures(connection, batch.frames)
                    inserted = _insert_frames(connection, batch.frames, exposure_keys, run_id)
                    registered, stored_paths = _frame_ids(connection, batch.frames, exposure_keys)
                    _repoint_moved_frames(connection, registered, stored_paths)
                    _forget_resolved_failures(connection, batch.frames)
                if batch.failures:
                    _record_failures(connection, batch.failures, run_id)
            break
        except sa.exc.OperationalError as error:
            if not isinstance(error.orig, _RETRYABLE) or attempt == _WRITE_ATTEMPTS:
                raise
            logger.info("batch lost a lock conflict (%s); retrying", type(error.orig).__name__)
            time.sleep(0.05 * attempt)
    counts.frames_new += inserted
    counts.frames_known += len(batch.frames) - inserted
    counts.failures += len(batch.failures)
    logger.debug("wrote %d frames and %d failures", len(batch.frames), len(batch.failures))
    return registered


def _upsert_exposures(connection: sa.Connection, frames: list[FrameHeader]) -> dict[tuple[str, str], int]:
    """Insert unseen exposures; return the id of every exposure of the batch by (instrument, exposure_id)."""
    first_by_key = {}
    for frame in frames:
        first_by_key.setdefault((frame.instrument, frame.exposure_id), frame)
    connection.execute(
        insert(Exposure).on_conflict_do_nothing(index_elements=["instrument", "exposure_id"]),
        [
            {
                "instrument": frame.instrument,
                "exposure_id": frame.exposure_id,
                "mjd": frame.mjd,
                "obs_time": frame.obs_time,
                "exposure_time": frame.exposure_time,
                "pointing_ra": frame.pointing_ra,
                "pointing_dec": frame.pointing_dec,
            }
            for frame in first_by_key.values()
        ],
    )
    keys = sa.tuple_(Exposure.instrument, Exposure.exposure_id)
    rows = connection.execute(
        sa.select(Exposure.instrument, Exposure.exposure_id, Exposure.id).where(keys.in_(list(first_by_key)))
    )
    return {(instrument, exposure_id): pk for instrument, exposure_id, pk in rows}


def _insert_frames(
    connection: sa.Connection,
    frames: list[FrameHeader],
    exposure_keys: dict[tuple[str, str], int],
    run_id: int | None,
) -> int:
    """Insert frames not registered yet; return how many were new."""
    rows = [_frame_row(frame, exposure_keys[(frame.instrument, frame.exposure_id)], run_id) for frame in frames]
    statement = insert(Frame).on_conflict_do_nothing(index_elements=["exposure_pk", "detector"]).returning(Frame.id)
    return len(connection.execute(statement, rows).all())


def _frame_ids(
    connection: sa.Connection, frames: list[FrameHeader], exposure_keys: dict[tuple[str, str], int]
) -> tuple[list[RegisteredFrame], dict[int, str]]:
    """The id of every frame of the batch, new or registered before, and the path each is registered at."""
    key_of = {(exposure_keys[(f.instrument, f.exposure_id)], f.detector): f for f in frames}
    rows = connection.execute(
        sa.select(Frame.exposure_pk, Frame.detector, Frame.id, Frame.path).where(
            sa.tuple_(Frame.exposure_pk, Frame.detector).in_(list(key_of))
        )
    ).all()
    registered = [
        RegisteredFrame(frame_id, key_of[(exposure_pk, detector)]) for exposure_pk, detector, frame_id, _path in rows
    ]
    return registered, {frame_id: path for _exposure_pk, _detector, frame_id, path in rows}


def _repoint_moved_frames(
    connection: sa.Connection, registered: list[RegisteredFrame], stored_paths: dict[int, str]
) -> None:
    """Point frames whose registered file is gone at the file they were just read from."""
    moved = [
        {
            "moved_id": frame.frame_id,
            "new_path": frame.header.path,
            "new_hdu": frame.header.hdu_index,
            "new_dq_hdu": frame.header.dq_hdu_index,
        }
        for frame in sorted(registered, key=lambda frame: frame.frame_id)  # id order: no deadlock between runs
        if stored_paths[frame.frame_id] != frame.header.path and not Path(stored_paths[frame.frame_id]).exists()
    ]
    if moved:
        connection.execute(
            sa.update(Frame)
            .where(Frame.id == sa.bindparam("moved_id"))
            .values(
                path=sa.bindparam("new_path"),
                hdu_index=sa.bindparam("new_hdu"),
                dq_hdu_index=sa.bindparam("new_dq_hdu"),
            ),
            moved,
        )
        logger.info("%d frames were registered at paths that are gone; they now point at the files read", len(moved))


def _frame_row(frame: FrameHeader, exposure_pk: int, run_id: int | None) -> dict[str, Any]:
    ny, nx = frame.shape
    return {
        "exposure_pk": exposure_pk,
        "detector": frame.detector,
        "band": frame.band,
        "path": frame.path,
        "hdu_index": frame.hdu_index,
        "dq_hdu_index": frame.dq_hdu_index,
        "naxis1": nx,
        "naxis2": ny,
        "valid_fraction": frame.valid_fraction,
        "ra": frame.centre_ra,
        "dec": frame.centre_dec,
        "corner_ra": list(frame.corner_ra),
        "corner_dec": list(frame.corner_dec),
        "radius_deg": frame.radius_deg,
        "hpx": frame.hpx,
        "footprint": [Range(int(lo), int(hi), bounds="[)") for lo, hi in frame.footprint],
        "footprint_depth": frame.footprint_depth,
        "run_id": run_id,
    }


def _forget_resolved_failures(connection: sa.Connection, frames: list[FrameHeader]) -> None:
    """A file that failed before and registers now (it was fixed) no longer counts as failed."""
    resolved = {(frame.path, frame.hdu_index) for frame in frames}
    resolved |= {(frame.path, -1) for frame in frames}
    connection.execute(
        sa.delete(Failure).where(
            Failure.stage == REGISTER_STAGE,
            sa.tuple_(Failure.path, Failure.hdu_index).in_(list(resolved)),
        )
    )


def _record_failures(connection: sa.Connection, failures: list[InputFailure], run_id: int | None) -> None:
    record_failures(
        connection,
        [
            {
                "path": f.path,
                "hdu_index": f.hdu_index,
                "stage": REGISTER_STAGE,
                "error_kind": f.error_kind,
                "message": f.message,
                "run_id": run_id,
            }
            for f in failures
        ],
    )

"""Frames and their density results, streamed from the catalog in chunks for the maps.

Results are each frame's preferred one, chosen as the ``field_density`` view
chooses it (latest run, then latest row), or the results of one run as
``field_density_for_run(run_id)`` gives them; they are read with one sorted
``DISTINCT ON`` per band instead of the view's lookup per frame.  Rows travel
as a binary ``COPY`` with a fixed layout (every column fixed-width and never
NULL), which NumPy reads without a Python object per value: at millions of
frames this is what keeps reading cheaper than the rasterisation.  Each row
carries its model pair, so the maps' provenance comes with the rows.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import psycopg

from density_db.database import Database
from density_db.errors import DensityDBError
from density_db.queries import frame_ids_in_region
from density_db.regions import SkyRegion
from density_db.views import PREFERRED_RESULT_ORDER

logger = logging.getLogger(__name__)

_COPY_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("frame_id", "d.frame_id", ">i8"),
    *((f"corner_{index}", f"coalesce(f.corner_ra[{index + 1}], 'NaN')", ">f8") for index in range(4)),
    *((f"corner_{index + 4}", f"coalesce(f.corner_dec[{index + 1}], 'NaN')", ">f8") for index in range(4)),
    ("density_class", "CAST(d.density_class AS smallint)", ">i2"),
    ("bright_count", "coalesce(CAST(d.bright_count AS double precision), 'NaN')", ">f8"),
    ("valid_fraction", "coalesce(CAST(f.valid_fraction AS double precision), 1.0)", ">f8"),
    ("flags", "CAST(d.flags AS bigint)", ">i8"),
    ("classifier_id", "CAST(d.classifier_id AS bigint)", ">i8"),
    ("regressor_id", "CAST(d.regressor_id AS bigint)", ">i8"),
)
"""The one declaration of a COPY row: (name, SQL expression, big-endian NumPy type) per column, each
fixed-width and never NULL (corners are ``frame.corner_ra`` 1-4, then ``corner_dec`` 1-4)."""

_COLUMNS_SQL = ", ".join(expression for _name, expression, _type in _COPY_COLUMNS)
_ROW_DTYPE = np.dtype(
    [("field_count", ">i2")]
    + [item for name, _expression, type_ in _COPY_COLUMNS for item in ((f"{name}_size", ">i4"), (name, type_))]
)
"""A row of the binary COPY: a field count, then (length, value) per column, big-endian."""

_COPY_HEADER_SIZE = 19  # signature (11), flags (4), header extension length (4, always 0 here)
_COPY_TRAILER = b"\xff\xff"
_CHUNKS_AHEAD = 2
"""Chunks the reading thread may hold ready (memory: about 1.5 MB per thousand frames each)."""


@dataclass(frozen=True)
class Selection:
    """Which results go into the maps.

    Attributes
    ----------
    bands
        Bands to map, or ``None`` for every band that has results.
    run_id
        Take this run's results (``field_density_for_run``), or ``None`` for
        each frame's latest result (``field_density``).
    region
        Only frames whose footprint overlaps this region (a cone, polygon or
        MOC of :mod:`density_db.regions`); whole frames are mapped.
    frame_ids
        The ids of the frames overlapping ``region``, once
        :func:`resolve_region` has looked them up (the queries here need them).
    """

    bands: tuple[str, ...] | None = None
    run_id: int | None = None
    region: SkyRegion | None = None
    frame_ids: np.ndarray | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class FrameChunk:
    """Frames with a density result, column by column (one row per frame).

    Attributes
    ----------
    frame_id
        ``frame.id`` (int64).
    corner_ra, corner_dec
        ``(n, 4)`` WCS corners in degrees; NaN where the catalog has none.
    density_class
        0-5 (int16).
    bright_count
        Predicted stars brighter than the magnitude limit; NaN without a count (class 5).
    valid_fraction
        Fraction of valid pixels, 1.0 where inference has not recorded it.
    flags
        The result's flag bits (int64).
    classifier_id, regressor_id
        ``model.id`` of the result's models (int64).
    """

    frame_id: np.ndarray
    corner_ra: np.ndarray
    corner_dec: np.ndarray
    density_class: np.ndarray
    bright_count: np.ndarray
    valid_fraction: np.ndarray
    flags: np.ndarray
    classifier_id: np.ndarray
    regressor_id: np.ndarray

    def __len__(self) -> int:
        return int(self.frame_id.size)

    def take(self, rows: np.ndarray) -> FrameChunk:
        """The frames at ``rows`` (indices or a boolean mask)."""
        return FrameChunk(**{name: value[rows] for name, value in vars(self).items()})


def resolve_region(database: Database, selection: Selection) -> Selection:
    """The selection with the ids of the frames overlapping its region (unchanged without a region).

    The exact overlap test of :func:`density_db.queries.frame_ids_in_region`
    (footprint index, then the frame's corner polygon against the region)
    runs once here, so every later query of the build sees the same frames.
    """
    if selection.region is None or selection.frame_ids is not None:
        return selection
    with database.engine.connect() as connection:
        frame_ids = frame_ids_in_region(connection, selection.region)
    logger.info("region %s: %d frames overlap it", selection.region.spec, frame_ids.size)
    return replace(selection, frame_ids=frame_ids)


def check_run(database: Database, run_id: int) -> None:
    """Raise :class:`DensityDBError` if run ``run_id`` does not exist."""
    with _cursor(database) as cursor:
        if cursor.execute("SELECT 1 FROM run WHERE id = %(run_id)s", {"run_id": run_id}).fetchone() is None:
            raise DensityDBError(f'run {run_id} does not exist (density-db query sql "SELECT * FROM run" lists runs)')


@dataclass(frozen=True)
class Census:
    """How many frames each band has in the selection, and how large they are (from ``frame.radius_deg``).

    Attributes
    ----------
    frames
        Frames of each band in the selection's bands and region, with a result or not (bands sorted).
    smallest_area_deg2, largest_area_deg2
        Area of the smallest and of the largest frame of the selection,
        estimated as a square inside its circumscribed circle (``2 radius**2``);
        NaN if no frame has a radius.
    """

    frames: dict[str, int]
    smallest_area_deg2: float
    largest_area_deg2: float


@dataclass(frozen=True)
class FrameName:
    """What identifies a frame to a user: exposure, detector, band and file."""

    frame_id: int
    exposure_id: str
    detector: int
    band: str
    path: str

    def __str__(self) -> str:
        return (
            f"frame {self.frame_id} (exposure {self.exposure_id}, detector {self.detector}, {self.band}: {self.path})"
        )


def census(database: Database, selection: Selection) -> Census:
    """Frames of each band in the selection's bands and region, and the smallest and largest of them.

    One pass over ``frame`` (which of the frames have results shows while they stream).
    """
    region_sql, parameters = _region_filter(selection)
    band_sql = "AND f.band = ANY(%(bands)s)" if selection.bands is not None else ""
    sized = "FILTER (WHERE f.radius_deg > 0 AND f.radius_deg < 180)"
    statement = f"""SELECT f.band, count(*), min(f.radius_deg) {sized}, max(f.radius_deg) {sized}
                    FROM frame f WHERE true {band_sql} {region_sql} GROUP BY f.band ORDER BY 1"""
    parameters = {**parameters, "bands": list(selection.bands or ())}
    with _cursor(database) as cursor:
        rows = cursor.execute(statement, parameters).fetchall()
    smallest = min((row[2] for row in rows if row[2] is not None), default=np.nan)
    largest = max((row[3] for row in rows if row[3] is not None), default=np.nan)
    return Census({band: int(count) for band, count, _, _ in rows}, 2 * smallest**2, 2 * largest**2)


def frame_names(database: Database, frame_ids: list[int]) -> list[FrameName]:
    """The names of frames, in the order of ``frame_ids`` (ids not in the catalog are left out)."""
    statement = """SELECT f.id, e.exposure_id, f.detector, f.band, f.path
                   FROM frame f JOIN exposure e ON e.id = f.exposure_pk WHERE f.id = ANY(%(ids)s)"""
    with _cursor(database) as cursor:
        names = {row[0]: FrameName(*row) for row in cursor.execute(statement, {"ids": list(frame_ids)})}
    return [names[frame_id] for frame_id in frame_ids if frame_id in names]


def model_pair_names(database: Database, pairs: set[tuple[int, int]]) -> list[str]:
    """``classifier+regressor`` names of (classifier id, regressor id) pairs, sorted."""
    if not pairs:
        return []
    with _cursor(database) as cursor:
        names = dict(
            cursor.execute(
                "SELECT id, name FROM model WHERE id = ANY(%(ids)s)",
                {"ids": sorted({model for pair in pairs for model in pair})},
            )
        )
    return sorted(f"{names[classifier]}+{names[regressor]}" for classifier, regressor in pairs)


class FrameStream:
    """Frames of one band with a result in the selection, ``chunk_size`` at a time (the last chunk shorter).

    The ``COPY`` starts when the stream is made, on a thread that reads up
    to ``_CHUNKS_AHEAD`` chunks ahead: PostgreSQL (another process) sorts and
    sends rows while the caller still works on the previous band or chunk.
    Iterate once; :meth:`close` (or leaving a ``with`` block) ends the query.

    Parameters
    ----------
    database : Database
        The catalog.
    selection : Selection
        Run and region (its ``bands`` are not used here).
    band : str
        Canonical band name.
    chunk_size : int
        Frames per chunk (> 0): memory grows with it, per-chunk overheads shrink.
    """

    def __init__(self, database: Database, selection: Selection, band: str, *, chunk_size: int) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        region_sql, parameters = _region_filter(selection)
        run_sql = "AND d.run_id = %(run_id)s" if selection.run_id is not None else ""
        statement = f"""COPY (
            SELECT DISTINCT ON (d.frame_id) {_COLUMNS_SQL}
            FROM density_result d JOIN frame f ON f.id = d.frame_id
            WHERE f.band = %(band)s {run_sql} {region_sql}
            ORDER BY d.frame_id, {PREFERRED_RESULT_ORDER}
        ) TO STDOUT (FORMAT binary)"""
        parameters = {**parameters, "band": band, "run_id": selection.run_id}
        self._chunks: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=_CHUNKS_AHEAD)
        self._stop = threading.Event()
        self._reader = threading.Thread(
            target=_read_copy,
            args=(database, statement, parameters, chunk_size, self._chunks, self._stop),
            daemon=True,
            name="density-db-maps-copy",
        )
        self._reader.start()

    def __iter__(self) -> Iterator[FrameChunk]:
        while (item := self._chunks.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield _parse(item)

    def close(self) -> None:
        """Stop reading (if not done) and wait for the reading thread."""
        self._stop.set()
        self._reader.join()

    def __enter__(self) -> FrameStream:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _read_copy(
    database: Database,
    statement: str,
    parameters: dict[str, Any],
    chunk_size: int,
    chunks: queue.Queue,
    stop: threading.Event,
) -> None:
    """Put the COPY rows on ``chunks`` as buffers of whole rows, then ``None`` (or the error)."""

    def put(item: bytes | BaseException | None) -> bool:
        while not stop.is_set():
            try:
                chunks.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    row_size = _ROW_DTYPE.itemsize
    try:
        with _cursor(database) as cursor, cursor.copy(statement, parameters) as copy:
            pending: list[bytes] = []
            pending_size = 0
            header_left = _COPY_HEADER_SIZE
            for block in copy:
                data = bytes(block)
                if header_left:
                    skipped = min(header_left, len(data))
                    data, header_left = data[skipped:], header_left - skipped
                pending.append(data)
                pending_size += len(data)
                if pending_size >= chunk_size * row_size:
                    buffer = b"".join(pending)
                    whole = (len(buffer) // row_size) * row_size
                    if not put(buffer[:whole]):
                        return
                    pending, pending_size = [buffer[whole:]], len(buffer) - whole
            buffer = b"".join(pending)
        if buffer.endswith(_COPY_TRAILER) and (len(buffer) - len(_COPY_TRAILER)) % row_size == 0:
            buffer = buffer[: -len(_COPY_TRAILER)]
        if len(buffer) % row_size:
            raise DensityDBError(f"unexpected COPY data from the database ({len(buffer)} bytes left over)")
        if buffer and not put(buffer):
            return
        put(None)
    except BaseException as error:  # handed to the consumer, raised there
        put(error)


def _parse(buffer: bytes) -> FrameChunk:
    rows = np.frombuffer(buffer, dtype=_ROW_DTYPE)
    if rows.size and (
        np.any(rows["field_count"] != len(_COPY_COLUMNS))
        or any(np.any(rows[f"{name}_size"] != np.dtype(type_).itemsize) for name, _sql, type_ in _COPY_COLUMNS)
    ):
        raise DensityDBError("unexpected COPY row layout from the database")
    corners = np.stack([rows[f"corner_{index}"] for index in range(8)], axis=1).astype(np.float64)
    return FrameChunk(
        frame_id=rows["frame_id"].astype(np.int64),
        corner_ra=corners[:, :4],
        corner_dec=corners[:, 4:],
        density_class=rows["density_class"].astype(np.int16),
        bright_count=rows["bright_count"].astype(np.float64),
        valid_fraction=rows["valid_fraction"].astype(np.float64),
        flags=rows["flags"].astype(np.int64),
        classifier_id=rows["classifier_id"].astype(np.int64),
        regressor_id=rows["regressor_id"].astype(np.int64),
    )


def _region_filter(selection: Selection) -> tuple[str, dict[str, Any]]:
    """SQL (``AND ...`` on ``frame f``) keeping the frames that overlap the region, and its parameters."""
    if selection.region is None:
        return "", {}
    if selection.frame_ids is None:
        raise ValueError("resolve_region(database, selection) must look the region's frames up first")
    return "AND f.id = ANY(%(region_frame_ids)s)", {"region_frame_ids": selection.frame_ids.tolist()}


@contextlib.contextmanager
def _cursor(database: Database) -> Iterator[psycopg.Cursor]:
    """A psycopg cursor on a connection from the engine's pool, in a read-only transaction."""
    connection = database.engine.raw_connection()
    try:
        with connection.driver_connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION READ ONLY")
            yield cursor
        connection.rollback()
    finally:
        connection.close()

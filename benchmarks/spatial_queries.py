"""Spatial queries on millions of frames: bulk load, cone search and point-in-footprint latency.

What it measures, on density-db's embedded PostgreSQL server:

* loading N synthetic frames that look like a decade of CSST imaging (rows/s),
  and the sizes of the ``frame`` table and of its ``hpx`` (btree) and
  ``footprint`` (GiST) indexes;
* the latency of :func:`density_db.queries.cone_search` (1 deg radius) and
  :func:`density_db.queries.frames_at`, what ``density-db query cone`` and
  ``density-db query frames --at`` run, at Q random positions, against their
  goals (median <= 10 ms and <= 5 ms);
* for comparison, the raw SQL of point-in-footprint strategies: the GiST index
  on ``footprint`` alone (with its EXPLAIN (ANALYZE, BUFFERS) and how many rows
  its recheck removes), and the ``hpx`` btree on the cells within the largest
  frame radius, then the footprint, with the cells joined from arrays (the
  first version of frames_at) or written as OR'd ranges (what it does now).

Each kind of query runs at the same positions, after a few uncounted ones, for
at most a minute (the output says how many positions that was).

The synthetic sky: N/18 exposures with pointings uniform on the sphere within
declination [-70, 70] deg (no Galactic-plane cut), random position angles and
start times over 2027-2037; each exposure has the 18 imaging detectors of the
``csst`` profile at their slots of :mod:`density_db.focal_plane` (0.19 deg
detectors in a 5 x 6 grid of about 1.1 x 1.2 deg), projected from the tangent
plane onto the sphere.  Centres, corners, ``hpx``, radius and depth-12
footprints are computed as registration computes them (density_db.sky and
mocpy), vectorised, in worker processes.  Rows go in with COPY; the frame
table's secondary indexes (from the migration) are dropped during the load and
recreated after it, which the output says.

Run from the repository root (2 million frames: under 4 minutes on 2 cores)::

    .venv/bin/python benchmarks/spatial_queries.py
    .venv/bin/python benchmarks/spatial_queries.py --frames 100000 --queries 50
    .venv/bin/python benchmarks/spatial_queries.py --keep    # reuse the loaded database
"""

from __future__ import annotations

import argparse
import collections
import math
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import sqlalchemy as sa
from mocpy import MOC
from psycopg import sql

from density_db import focal_plane, queries, sky
from density_db.database import Database
from density_db.embedded import EmbeddedServer
from density_db.instrument import load_profile
from density_db.simulate.photometry import EXPOSURE_SECONDS
from support import (
    DEFAULT_HOME,
    RESULTS_DIR,
    database_exists,
    database_software,
    describe_machine,
    fresh_database,
    open_benchmark_database,
    write_json,
)

CSST_BANDS = dict(load_profile("csst").detector_bands)
"""Band of each of the 18 imaging detectors (focal-plane ids 1-30)."""
CSST_DETECTORS = sorted(CSST_BANDS)

DEC_LIMIT_DEG = 70.0
"""Pointings and query positions are uniform on the sphere within |dec| <= this."""

FIRST_MJD = 61406.0  # 2027-01-01
SURVEY_DAYS = 3652.5

CONE_RADIUS_DEG = 1.0
CONE_GOAL_MS = 10.0
FRAMES_AT_GOAL_MS = 5.0
WARMUP_QUERIES = 10
QUERY_BUDGET_S = 60.0
"""Seconds of timed queries per kind of query, at most; the output says how many positions fitted."""

EXPOSURES_PER_CHUNK = 1000
"""Exposures a worker turns into COPY text at a time (18,000 frames, about 25 MB)."""

WORKERS = 2
"""Processes preparing chunks while the main process streams the previous ones to the server."""
PROGRESS_EVERY_CHUNKS = 10

POLYGONS_PER_MOC_CALL = 1000
"""MOC.from_polygons gets slower per polygon beyond a few thousand polygons per call."""

FOOTPRINT_SAMPLE = 2000
"""Frames on which MOC.from_polygons and sky.footprint_ranges are timed against each other."""

EXPOSURE_COLUMNS = (
    "id",
    "instrument",
    "exposure_id",
    "mjd",
    "obs_time",
    "exposure_time",
    "pointing_ra",
    "pointing_dec",
)
FRAME_COLUMNS = (
    "id",
    "exposure_pk",
    "detector",
    "band",
    "path",
    "hdu_index",
    "dq_hdu_index",
    "naxis1",
    "naxis2",
    "ra",
    "dec",
    "corner_ra",
    "corner_dec",
    "radius_deg",
    "hpx",
    "footprint",
    "footprint_depth",
)

GIST_ONLY_SQL = "SELECT id FROM frame WHERE footprint @> CAST(:point AS bigint)"
UNNEST_CELLS_SQL = """
SELECT f.id
FROM unnest(CAST(:lower AS bigint[]), CAST(:upper AS bigint[])) AS cell(lower, upper)
JOIN frame f ON f.hpx >= cell.lower AND f.hpx < cell.upper
WHERE f.footprint @> CAST(:point AS bigint)
"""
"""hpx cells joined from arrays, then the footprint: density-db's first frames_at, kept to show why it went
(the planner cannot estimate the join and falls back to scanning the table)."""


# -- the synthetic sky ------------------------------------------------------------------


@dataclass(frozen=True)
class Exposures:
    """Pointings of a run of exposures with consecutive ids from ``first_id``."""

    first_id: int
    ra: np.ndarray
    dec: np.ndarray
    position_angle_deg: np.ndarray
    mjd: np.ndarray


@dataclass(frozen=True)
class Frames:
    """Sky geometry of frames, one row per frame (exposure-major, detector-minor)."""

    exposure_pk: np.ndarray
    detector: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    corner_ra: np.ndarray  # (n, 4)
    corner_dec: np.ndarray
    radius_deg: np.ndarray
    hpx: np.ndarray

    def head(self, count: int) -> Frames:
        return Frames(**{name: value[:count] for name, value in vars(self).items()})


def uniform_sky_positions(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Positions uniform on the sphere within |dec| <= DEC_LIMIT_DEG."""
    limit = math.sin(math.radians(DEC_LIMIT_DEG))
    return rng.uniform(0.0, 360.0, count), np.degrees(np.arcsin(rng.uniform(-limit, limit, count)))


def random_exposures(first_id: int, count: int, rng: np.random.Generator) -> Exposures:
    ra, dec = uniform_sky_positions(count, rng)
    return Exposures(
        first_id=first_id,
        ra=ra,
        dec=dec,
        position_angle_deg=rng.uniform(0.0, 360.0, count),
        mjd=rng.uniform(FIRST_MJD, FIRST_MJD + SURVEY_DAYS, count),
    )


def detector_outlines() -> tuple[np.ndarray, np.ndarray]:
    """Tangent-plane (x east, y north; deg) of each imaging detector's centre and outer corners.

    Shape (18, 5): the centre, then the corners in registration's order, pixel
    (-0.5, -0.5), (nx-0.5, -0.5), (nx-0.5, ny-0.5), (-0.5, ny-0.5); the pixel x
    axis runs west, as in :func:`density_db.focal_plane.detector_wcs_header`.
    """
    half_width, half_height = focal_plane.DETECTOR_WIDTH_DEG / 2, focal_plane.DETECTOR_HEIGHT_DEG / 2
    centres = np.array([focal_plane.detector_offset_deg(detector) for detector in CSST_DETECTORS])
    x = centres[:, :1] + np.array([0.0, half_width, -half_width, -half_width, half_width])
    y = centres[:, 1:] + np.array([0.0, -half_height, -half_height, half_height, half_height])
    return x, y


def tangent_plane_to_sky(
    ra0: np.ndarray, dec0: np.ndarray, xi: np.ndarray, eta: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse gnomonic projection about the tangent points (ra0, dec0); degrees in and out."""
    ra0, dec0, xi, eta = (np.radians(value) for value in (ra0, dec0, xi, eta))
    denominator = np.cos(dec0) - eta * np.sin(dec0)
    ra = ra0 + np.arctan2(xi, denominator)
    dec = np.arctan2(np.sin(dec0) + eta * np.cos(dec0), np.hypot(xi, denominator))
    return np.degrees(ra) % 360.0, np.degrees(dec)


def frames_of(exposures: Exposures) -> Frames:
    """Centre, outer corners, hpx and circumradius of every imaging detector of the exposures."""
    x, y = detector_outlines()
    # The focal plane turned by the position angle, as focal_plane.detector_wcs_header turns it.
    angle = np.radians(exposures.position_angle_deg)[:, None, None]
    xi = np.cos(angle) * x + np.sin(angle) * y
    eta = -np.sin(angle) * x + np.cos(angle) * y
    ra, dec = tangent_plane_to_sky(exposures.ra[:, None, None], exposures.dec[:, None, None], xi, eta)
    ra, dec = ra.reshape(-1, 5), dec.reshape(-1, 5)
    # sky.circumradius_deg, vectorised
    radius = np.max(sky.angular_separation_deg(ra[:, :1], dec[:, :1], ra[:, 1:], dec[:, 1:]), axis=1)
    exposure_count = exposures.ra.size
    return Frames(
        exposure_pk=np.repeat(exposures.first_id + np.arange(exposure_count), len(CSST_DETECTORS)),
        detector=np.tile(CSST_DETECTORS, exposure_count),
        ra=ra[:, 0],
        dec=dec[:, 0],
        corner_ra=ra[:, 1:],
        corner_dec=dec[:, 1:],
        radius_deg=radius,
        hpx=sky.hpx29(ra[:, 0], dec[:, 0]),
    )


def footprints(corner_ra: np.ndarray, corner_dec: np.ndarray) -> list[np.ndarray]:
    """Depth-29 ranges of each frame's MOC at FOOTPRINT_DEPTH, through mocpy's vectorised polygons."""
    ranges: list[np.ndarray] = []
    for start in range(0, corner_ra.shape[0], POLYGONS_PER_MOC_CALL):
        stop = start + POLYGONS_PER_MOC_CALL
        vertices = np.empty((2 * corner_ra[start:stop].shape[0], 4))
        vertices[0::2], vertices[1::2] = corner_ra[start:stop], corner_dec[start:stop]
        mocs = MOC.from_polygons(vertices, max_depth=sky.FOOTPRINT_DEPTH, n_threads=1)
        ranges.extend(moc.to_depth29_ranges for moc in mocs)
    return ranges


def compare_footprint_methods(rng: np.random.Generator) -> dict[str, float]:
    """Frames/s, on one core, of MOC.from_polygons and of sky.footprint_ranges (what registration calls).

    Raises
    ------
    RuntimeError
        If the two disagree on any frame of the sample.
    """
    frames = frames_of(random_exposures(1, math.ceil(FOOTPRINT_SAMPLE / len(CSST_DETECTORS)), rng))
    started = time.perf_counter()
    vectorised = footprints(frames.corner_ra, frames.corner_dec)
    vectorised_s = time.perf_counter() - started
    started = time.perf_counter()
    one_by_one = [sky.footprint_ranges(ra, dec) for ra, dec in zip(frames.corner_ra, frames.corner_dec)]
    one_by_one_s = time.perf_counter() - started
    if not all(np.array_equal(np.reshape(a, (-1, 2)), b) for a, b in zip(vectorised, one_by_one)):
        raise RuntimeError("MOC.from_polygons and sky.footprint_ranges give different footprints")
    return {
        "frames": len(one_by_one),
        "moc_from_polygons_frames_per_s": len(vectorised) / vectorised_s,
        "sky_footprint_ranges_frames_per_s": len(one_by_one) / one_by_one_s,
        "mean_ranges_per_footprint": float(np.mean([len(ranges) for ranges in one_by_one])),
    }


# -- COPY text ------------------------------------------------------------------------------


def obs_time_text(mjd: np.ndarray) -> list[str]:
    microseconds = np.round((mjd - 40587.0) * 86_400e6).astype("datetime64[us]")  # MJD 40587 = 1970-01-01
    return [f"{text}+00" for text in np.datetime_as_string(microseconds).tolist()]


def exposure_copy_text(exposures: Exposures) -> str:
    rows = zip(exposures.mjd.tolist(), obs_time_text(exposures.mjd), exposures.ra.tolist(), exposures.dec.tolist())
    return "".join(
        f"{exposures.first_id + i}\tcsst\t{10_100_000_000 + exposures.first_id + i}\t{mjd!r}\t{obs_time}\t"
        f"{EXPOSURE_SECONDS!r}\t{ra!r}\t{dec!r}\n"
        for i, (mjd, obs_time, ra, dec) in enumerate(rows)
    )


def array_text(values: list[float]) -> str:
    return "{" + ",".join(map(repr, values)) + "}"


def multirange_text(ranges: np.ndarray) -> str:
    return "{" + ",".join(f"[{lower},{upper})" for lower, upper in ranges.tolist()) + "}"


def frame_copy_text(first_id: int, frames: Frames, footprint_ranges: list[np.ndarray]) -> str:
    """COPY rows of frames numbered from ``first_id``; one file per exposure, SCI and DQ HDU per detector."""
    hdu_of = {detector: 1 + 2 * slot for slot, detector in enumerate(CSST_DETECTORS)}
    naxis2, naxis1 = focal_plane.DETECTOR_SHAPE
    rows = zip(
        frames.exposure_pk.tolist(),
        frames.detector.tolist(),
        frames.ra.tolist(),
        frames.dec.tolist(),
        frames.corner_ra.tolist(),
        frames.corner_dec.tolist(),
        frames.radius_deg.tolist(),
        frames.hpx.tolist(),
        footprint_ranges,
    )
    return "".join(
        f"{first_id + i}\t{exposure_pk}\t{detector}\t{CSST_BANDS[detector]}\t/archive/csst/{exposure_pk:010d}.fits\t"
        f"{hdu_of[detector]}\t{hdu_of[detector] + 1}\t{naxis1}\t{naxis2}\t{ra!r}\t{dec!r}\t"
        f"{array_text(corner_ra)}\t{array_text(corner_dec)}\t{radius!r}\t{hpx}\t{multirange_text(ranges)}\t"
        f"{sky.FOOTPRINT_DEPTH}\n"
        for i, (exposure_pk, detector, ra, dec, corner_ra, corner_dec, radius, hpx, ranges) in enumerate(rows)
    )


@dataclass(frozen=True)
class Chunk:
    """Exposures ``first_exposure_id`` onwards, ``frame_count`` frames from id ``first_frame_id``."""

    seed: int
    index: int
    first_exposure_id: int
    exposure_count: int
    first_frame_id: int
    frame_count: int


def chunks(seed: int, frame_count: int) -> Iterator[Chunk]:
    """Chunks of EXPOSURES_PER_CHUNK exposures; the last exposure may have fewer than 18 frames."""
    per_exposure = len(CSST_DETECTORS)
    exposure_count = math.ceil(frame_count / per_exposure)
    for index, first in enumerate(range(0, exposure_count, EXPOSURES_PER_CHUNK)):
        count = min(EXPOSURES_PER_CHUNK, exposure_count - first)
        frames = min(count * per_exposure, frame_count - first * per_exposure)
        yield Chunk(seed, index, first + 1, count, first * per_exposure + 1, frames)


def chunk_copy_text(chunk: Chunk) -> tuple[str, str]:
    """COPY text of a chunk's exposures and frames (run in a worker process; seeded per chunk)."""
    rng = np.random.default_rng([chunk.seed, 1, chunk.index])
    exposures = random_exposures(chunk.first_exposure_id, chunk.exposure_count, rng)
    frames = frames_of(exposures).head(chunk.frame_count)
    ranges = footprints(frames.corner_ra, frames.corner_dec)
    return exposure_copy_text(exposures), frame_copy_text(chunk.first_frame_id, frames, ranges)


def prepared_in_order(work: Iterator[Chunk]) -> Iterator[tuple[Chunk, str, str]]:
    """COPY text of the chunks in order, WORKERS chunks ahead of the consumer (bounded memory)."""
    with ProcessPoolExecutor(max_workers=WORKERS) as executor:
        pending: collections.deque[tuple[Chunk, Future[tuple[str, str]]]] = collections.deque()
        for chunk in work:
            pending.append((chunk, executor.submit(chunk_copy_text, chunk)))
            if len(pending) > WORKERS:
                chunk, future = pending.popleft()
                yield chunk, *future.result()
        while pending:
            chunk, future = pending.popleft()
            yield chunk, *future.result()


# -- loading ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadFigures:
    """How long the load took, by phase, and the footprint methods' rates measured before it."""

    frames: int
    exposures: int
    copy_s: float
    index_s: float
    vacuum_analyze_s: float
    copy_frames_per_s: float
    overall_frames_per_s: float
    rebuilt_indexes: tuple[str, ...]
    footprint_methods: dict[str, float]


def secondary_indexes(connection: psycopg.Connection) -> dict[str, str]:
    """Name -> CREATE INDEX statement of the frame table's indexes that back no constraint."""
    rows = connection.execute(
        """
        SELECT i.indexname, i.indexdef FROM pg_indexes i
        WHERE i.tablename = 'frame'
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)
        ORDER BY i.indexname
        """
    ).fetchall()
    return dict(rows)


def copy_text(connection: psycopg.Connection, table: str, columns: tuple[str, ...], text: str) -> None:
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    with connection.cursor().copy(statement) as copy:
        copy.write(text)


def copy_frames(connection: psycopg.Connection, seed: int, frame_count: int) -> tuple[int, int]:
    """COPY the synthetic exposures and frames, one transaction per chunk; return (frames, exposures)."""
    started = time.perf_counter()
    frames = exposures = 0
    for chunk, exposure_text, frame_text in prepared_in_order(chunks(seed, frame_count)):
        with connection.transaction():
            copy_text(connection, "exposure", EXPOSURE_COLUMNS, exposure_text)
            copy_text(connection, "frame", FRAME_COLUMNS, frame_text)
        frames += chunk.frame_count
        exposures += chunk.exposure_count
        if chunk.index % PROGRESS_EVERY_CHUNKS == 0 or frames == frame_count:
            rate = frames / (time.perf_counter() - started)
            print(f"  {frames:>10,} / {frame_count:,} frames copied ({rate:,.0f} frames/s)", flush=True)
    for table in ("exposure", "frame"):
        connection.execute(
            sql.SQL("SELECT setval(pg_get_serial_sequence(%s, 'id'), (SELECT max(id) FROM {}))").format(
                sql.Identifier(table)
            ),
            (table,),
        )
    return frames, exposures


def load_frames(libpq_url: str, seed: int, frame_count: int) -> LoadFigures:
    """COPY ``frame_count`` synthetic frames with the indexes dropped, recreate them, VACUUM ANALYZE."""
    footprint_methods = compare_footprint_methods(np.random.default_rng([seed, 2]))
    with psycopg.connect(libpq_url, autocommit=True) as connection:
        connection.execute("SET maintenance_work_mem = '1GB'")
        indexes = secondary_indexes(connection)
        for name in indexes:
            connection.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
        started = time.perf_counter()
        frames, exposures = copy_frames(connection, seed, frame_count)
        copy_s = time.perf_counter() - started
        started = time.perf_counter()
        for statement in indexes.values():
            connection.execute(statement)
        index_s = time.perf_counter() - started
        started = time.perf_counter()
        connection.execute("VACUUM ANALYZE exposure")
        connection.execute("VACUUM ANALYZE frame")
        vacuum_analyze_s = time.perf_counter() - started
    return LoadFigures(
        frames=frames,
        exposures=exposures,
        copy_s=copy_s,
        index_s=index_s,
        vacuum_analyze_s=vacuum_analyze_s,
        copy_frames_per_s=frames / copy_s,
        overall_frames_per_s=frames / (copy_s + index_s + vacuum_analyze_s),
        rebuilt_indexes=tuple(indexes),
        footprint_methods=footprint_methods,
    )


def table_sizes(connection: psycopg.Connection) -> dict[str, float]:
    """Sizes in MiB of the frame table (with its indexes and TOAST) and of its spatial indexes."""
    row = connection.execute(
        """
        SELECT pg_total_relation_size('frame'), pg_relation_size('frame'), pg_indexes_size('frame'),
               pg_relation_size('ix_frame_hpx'), pg_relation_size('ix_frame_footprint'),
               pg_total_relation_size('exposure')
        """
    ).fetchone()
    names = ("frame_total", "frame_heap", "frame_indexes", "ix_frame_hpx", "ix_frame_footprint", "exposure_total")
    return {f"{name}_mib": size / 2**20 for name, size in zip(names, row)}


def is_loaded(libpq_url: str, frame_count: int) -> bool:
    """Whether the database holds ``frame_count`` frames and its spatial indexes (a load that finished)."""
    with psycopg.connect(libpq_url) as connection:
        count = connection.execute("SELECT count(*) FROM frame").fetchone()[0]
        indexes = connection.execute(
            "SELECT count(*) FROM pg_indexes WHERE indexname IN ('ix_frame_hpx', 'ix_frame_footprint')"
        ).fetchone()[0]
    return count == frame_count and indexes == 2


# -- queries ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Latency:
    """Latency of one kind of query over the measured positions."""

    name: str
    queries: int
    median_ms: float
    p90_ms: float
    mean_ms: float
    mean_rows: float
    goal_median_ms: float | None = None

    @property
    def verdict(self) -> str:
        if self.goal_median_ms is None:
            return ""
        return "met" if self.median_ms <= self.goal_median_ms else "MISSED"


def time_queries(
    name: str,
    query: Callable[[float, float], int],
    ra: np.ndarray,
    dec: np.ndarray,
    goal_median_ms: float | None = None,
) -> Latency:
    """Call ``query(ra, dec)`` (it returns its row count) at each position after the WARMUP_QUERIES first.

    Stops early once QUERY_BUDGET_S is spent, so that a slow query cannot hold the run for many minutes.
    """
    for warmup_ra, warmup_dec in zip(ra[:WARMUP_QUERIES].tolist(), dec[:WARMUP_QUERIES].tolist()):
        query(warmup_ra, warmup_dec)
    milliseconds, rows = [], []
    budget_end = time.perf_counter() + QUERY_BUDGET_S
    for position_ra, position_dec in zip(ra[WARMUP_QUERIES:].tolist(), dec[WARMUP_QUERIES:].tolist()):
        started = time.perf_counter()
        rows.append(query(position_ra, position_dec))
        milliseconds.append((time.perf_counter() - started) * 1e3)
        if started > budget_end:
            break
    return Latency(
        name=name,
        queries=len(milliseconds),
        median_ms=statistics.median(milliseconds),
        p90_ms=float(np.percentile(milliseconds, 90)),
        mean_ms=statistics.fmean(milliseconds),
        mean_rows=statistics.fmean(rows),
        goal_median_ms=goal_median_ms,
    )


def largest_radius_deg(connection: sa.Connection) -> float:
    return connection.execute(sa.text("SELECT max(radius_deg) FROM frame")).scalar_one()


def candidate_cells(ra: float, dec: float, radius_deg: float) -> np.ndarray:
    """hpx ranges of the frames whose centre may be within ``radius_deg`` of the point, as frames_at takes them."""
    return sky.cone_ranges(ra, dec, radius_deg * 1.0001)


def unnest_cells_count(connection: sa.Connection, ra: float, dec: float, radius_deg: float) -> int:
    cells = candidate_cells(ra, dec, radius_deg)
    parameters = {"point": int(sky.hpx29(ra, dec)), "lower": cells[:, 0].tolist(), "upper": cells[:, 1].tolist()}
    return len(connection.execute(sa.text(UNNEST_CELLS_SQL), parameters).all())


def ored_cells_count(connection: sa.Connection, ra: float, dec: float, radius_deg: float) -> int:
    """The same candidates with one bound ``hpx`` range per cell, OR'd: the planner sees btree ranges."""
    cells = candidate_cells(ra, dec, radius_deg).tolist()
    # Only parameter names go into the text; every value is bound.
    ranges = " OR ".join(f"(f.hpx >= :lower_{i} AND f.hpx < :upper_{i})" for i in range(len(cells)))
    parameters: dict[str, int] = {"point": int(sky.hpx29(ra, dec))}
    for i, (lower, upper) in enumerate(cells):
        parameters[f"lower_{i}"], parameters[f"upper_{i}"] = lower, upper
    statement = f"SELECT f.id FROM frame f WHERE ({ranges}) AND f.footprint @> CAST(:point AS bigint)"
    return len(connection.execute(sa.text(statement), parameters).all())


def measure_queries(database: Database, ra: np.ndarray, dec: np.ndarray) -> dict[str, Latency]:
    """Latencies of cone_search, frames_at and the raw SQL of three point-in-footprint strategies."""
    results = {
        "cone_search": time_queries(
            f"cone_search({CONE_RADIUS_DEG:g} deg)",
            lambda ra, dec: len(queries.cone_search(database, ra, dec, CONE_RADIUS_DEG).rows),
            ra,
            dec,
            CONE_GOAL_MS,
        ),
        "frames_at": time_queries(
            "frames_at", lambda ra, dec: len(queries.frames_at(database, ra, dec).rows), ra, dec, FRAMES_AT_GOAL_MS
        ),
    }
    gist_only = sa.text(GIST_ONLY_SQL)
    with database.engine.connect() as connection:
        radius = largest_radius_deg(connection)
        results |= {
            "gist_only": time_queries(
                "raw SQL: footprint @> point (GiST only)",
                lambda ra, dec: len(connection.execute(gist_only, {"point": int(sky.hpx29(ra, dec))}).all()),
                ra,
                dec,
            ),
            "unnest_cells": time_queries(
                "raw SQL: hpx cells from unnest(), footprint",
                lambda ra, dec: unnest_cells_count(connection, ra, dec, radius),
                ra,
                dec,
            ),
            "ored_cells": time_queries(
                "raw SQL: hpx cells as OR'd ranges, footprint",
                lambda ra, dec: ored_cells_count(connection, ra, dec, radius),
                ra,
                dec,
            ),
        }
    return results


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


def explain_gist_only(database: Database, ra: np.ndarray, dec: np.ndarray) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) of the GiST-only query at the first position; recheck losses at all."""
    points = [int(sky.hpx29(r, d)) for r, d in zip(ra.tolist(), dec.tolist())]
    with database.engine.connect() as connection:
        text_plan = "\n".join(
            connection.execute(sa.text(f"EXPLAIN (ANALYZE, BUFFERS) {GIST_ONLY_SQL}"), {"point": points[0]}).scalars()
        )
        kept, removed, index_names = [], [], set()
        for point in points:
            plan = connection.execute(
                sa.text(f"EXPLAIN (ANALYZE, FORMAT JSON) {GIST_ONLY_SQL}"), {"point": point}
            ).scalar_one()[0]["Plan"]
            nodes = list(plan_nodes(plan))
            index_names |= {node["Index Name"] for node in nodes if "Index Name" in node}
            kept.append(plan["Actual Rows"])
            removed.append(sum(node.get("Rows Removed by Index Recheck", 0) for node in nodes))
    return {
        "plan": text_plan,
        "indexes_used": sorted(index_names),
        "positions": len(points),
        "mean_rows_kept": statistics.fmean(kept),
        "mean_rows_removed_by_recheck": statistics.fmean(removed),
        "median_rows_removed_by_recheck": statistics.median(removed),
    }


# -- report -------------------------------------------------------------------------------


def strategy_ratios(latencies: dict[str, Latency]) -> dict[str, float]:
    """Median latency of each raw point-in-footprint strategy over that of OR'd hpx ranges, same run."""
    fastest = latencies["ored_cells"].median_ms
    return {
        "gist_only_over_ored_cells": latencies["gist_only"].median_ms / fastest,
        "unnest_cells_over_ored_cells": latencies["unnest_cells"].median_ms / fastest,
        "frames_at_over_ored_cells": latencies["frames_at"].median_ms / fastest,
    }


def print_load(load: LoadFigures | None, sizes: dict[str, float]) -> None:
    if load is None:
        print("load: reused an already loaded database (--keep), not measured")
    else:
        print(
            f"load: {load.frames:,} frames, {load.exposures:,} exposures; COPY {load.copy_s:.1f} s "
            f"({load.copy_frames_per_s:,.0f} frames/s, rows made by {WORKERS} worker processes meanwhile), "
            f"indexes {load.index_s:.1f} s, VACUUM ANALYZE {load.vacuum_analyze_s:.1f} s: "
            f"{load.overall_frames_per_s:,.0f} frames/s overall"
        )
        print(f"  indexes dropped during the load and recreated after it: {', '.join(load.rebuilt_indexes)}")
        methods = load.footprint_methods
        print(
            f"  footprints on one core ({methods['frames']:,} frames, identical ranges): MOC.from_polygons "
            f"{methods['moc_from_polygons_frames_per_s']:,.0f} frames/s, sky.footprint_ranges "
            f"{methods['sky_footprint_ranges_frames_per_s']:,.0f} frames/s; "
            f"{methods['mean_ranges_per_footprint']:.1f} ranges per footprint"
        )
    print(
        "sizes (MiB): frame {frame_total_mib:,.0f} in all (heap {frame_heap_mib:,.0f}, indexes "
        "{frame_indexes_mib:,.0f}), ix_frame_hpx {ix_frame_hpx_mib:,.0f}, ix_frame_footprint "
        "{ix_frame_footprint_mib:,.0f}; exposure {exposure_total_mib:,.0f}".format(**sizes)
    )


def print_latencies(latencies: dict[str, Latency], ratios: dict[str, float]) -> None:
    columns = ("positions", "median ms", "p90 ms", "mean ms", "mean rows", "goal")
    print(f"{'query':<46} " + " ".join(f"{column:>10}" for column in columns))
    for latency in latencies.values():
        goal = "" if latency.goal_median_ms is None else f"<= {latency.goal_median_ms:g}"
        print(
            f"{latency.name:<46} {latency.queries:>10} {latency.median_ms:>10.2f} {latency.p90_ms:>10.2f} "
            f"{latency.mean_ms:>10.2f} {latency.mean_rows:>10.1f} {goal:>10} {latency.verdict}"
        )
    print(
        "median latency over that of OR'd hpx ranges: "
        + ", ".join(f"{name.removesuffix('_over_ored_cells')} {ratio:,.1f}" for name, ratio in ratios.items())
    )


def print_explain(explain: dict[str, Any]) -> None:
    print(
        f"EXPLAIN (ANALYZE, BUFFERS) of the GiST-only query at one position; over {explain['positions']} positions "
        f"it used {', '.join(explain['indexes_used']) or 'no index'} and kept {explain['mean_rows_kept']:.1f} rows, "
        f"the recheck removing {explain['mean_rows_removed_by_recheck']:,.0f} on average:"
    )
    print(explain["plan"])


# -- main ---------------------------------------------------------------------------------


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=2_000_000, help="frames to load (default 2,000,000)")
    parser.add_argument("--queries", type=int, default=200, help="positions timed per kind of query (default 200)")
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME, help=f"DENSITY_DB_HOME (default {DEFAULT_HOME})")
    parser.add_argument("--keep", action="store_true", help="reuse database bench_frames_N if it holds N frames")
    parser.add_argument(
        "--json", type=Path, default=RESULTS_DIR / "spatial_queries.json", help="where to write the figures"
    )
    parser.add_argument("--seed", type=int, default=20270101, help="seed of the synthetic sky and positions")
    arguments = parser.parse_args()
    if arguments.frames < 1 or arguments.queries < 1:
        parser.error("--frames and --queries must be positive")
    return arguments


def main(arguments: argparse.Namespace) -> None:
    server = EmbeddedServer(arguments.home)
    was_running = server.status() is not None
    status = server.ensure_running()
    name = f"bench_frames_{arguments.frames}"
    libpq_url = server.url(status, database=name)
    load = None
    if arguments.keep and database_exists(server, status, name) and is_loaded(libpq_url, arguments.frames):
        database = open_benchmark_database(server, status, name)
        print(f"reusing database {name} ({arguments.frames:,} frames)")
    else:
        database = fresh_database(server, status, name)
        print(f"loading {arguments.frames:,} frames into database {name} of the server in {arguments.home}")
        load = load_frames(libpq_url, arguments.seed, arguments.frames)
    with psycopg.connect(libpq_url) as connection:
        sizes = table_sizes(connection)
    machine = describe_machine(database_software(libpq_url))
    positions = np.random.default_rng([arguments.seed, 3])
    ra, dec = uniform_sky_positions(arguments.queries + WARMUP_QUERIES, positions)
    latencies = measure_queries(database, ra, dec)
    explain = explain_gist_only(database, ra[WARMUP_QUERIES:], dec[WARMUP_QUERIES:])
    database.engine.dispose()
    if not was_running:
        server.stop()
    ratios = strategy_ratios(latencies)
    print(f"\nmachine: {machine.describe()}\nframes: {arguments.frames:,}")
    print_load(load, sizes)
    print()
    print_latencies(latencies, ratios)
    print()
    print_explain(explain)
    write_json(
        arguments.json,
        machine,
        {
            "frames": arguments.frames,
            "seed": arguments.seed,
            "load": None if load is None else asdict(load),
            "sizes_mib": sizes,
            "latencies": {key: asdict(latency) for key, latency in latencies.items()},
            "median_ratios": ratios,
            "gist_only_explain": explain,
        },
    )
    print(f"\nfigures written to {arguments.json}")


if __name__ == "__main__":
    main(parse_arguments())

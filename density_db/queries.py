"""Queries on the catalog: free SQL (read-only), cone, point-in-footprint and region searches.

Every function returns a :class:`QueryResult` (column names and row tuples)
that the command line renders as a table, CSV, ECSV, JSON or VOTable.  The
spatial queries return the columns of the ``field_density`` view (plus
``distance_deg`` for the cone and point searches) so that density columns
come with every position.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import INT8MULTIRANGE, MultiRange, Range

from density_db import sky
from density_db.database import Database
from density_db.errors import DatabaseError, DensityDBError
from density_db.regions import SkyRegion

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueryResult:
    """Rows of a query and the names of their columns."""

    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]


def run_sql(database: Database, statement: str, parameters: dict[str, Any] | None = None) -> QueryResult:
    """Run one SQL statement in a read-only transaction with bound parameters (``:name``).

    Raises
    ------
    DatabaseError
        If PostgreSQL rejects the statement (syntax, unknown column, an attempt to write ...).
    """
    with database.engine.connect() as connection:
        connection.execute(sa.text("SET TRANSACTION READ ONLY"))
        try:
            result = connection.execute(sa.text(statement), parameters or {})
        except sa.exc.StatementError as error:
            cause = error.orig if isinstance(error, sa.exc.DBAPIError) else error
            raise DatabaseError(f"the query failed: {str(cause).strip()}") from None
        columns = tuple(result.keys()) if result.returns_rows else ()
        rows = [tuple(row) for row in result] if result.returns_rows else []
        connection.rollback()
    return QueryResult(columns=columns, rows=rows)


_DISTANCE_SQL = """
    degrees(2 * asin(least(1.0, sqrt(
        power(sin(radians(fd.dec - :dec) / 2), 2)
        + cos(radians(fd.dec)) * cos(radians(:dec)) * power(sin(radians(fd.ra - :ra) / 2), 2)
    ))))"""


def _near_centres_sql(ranges: np.ndarray, parameters: dict[str, Any]) -> str:
    """SQL selecting ``field_density`` rows whose centre lies in the HEALPix ``ranges``, with ``distance_deg``.

    One bound ``hpx`` interval per range, OR'd: PostgreSQL turns that into a
    BitmapOr of btree range scans.  (A join against ``unnest()`` of the
    bounds cannot be estimated and was planned as a sequential scan: 1.1 s
    instead of 3 ms at 2 million frames.)
    """
    cells = []
    for index, (lower, upper) in enumerate(ranges):
        parameters[f"cell_lower_{index}"], parameters[f"cell_upper_{index}"] = int(lower), int(upper)
        cells.append(f"(f.hpx >= :cell_lower_{index} AND f.hpx < :cell_upper_{index})")
    return f"""
        SELECT fd.*, {_DISTANCE_SQL} AS distance_deg
        FROM field_density fd
        WHERE fd.frame_id IN (
            SELECT f.id FROM frame f
            WHERE ({" OR ".join(cells)})
              AND (CAST(:band AS text) IS NULL OR f.band = CAST(:band AS text))
        )"""


def cone_search(
    database: Database, ra: float, dec: float, radius_deg: float, *, band: str | None = None
) -> QueryResult:
    """Frames whose centre lies within ``radius_deg`` of (ra, dec), nearest first.

    The ``hpx`` index selects the HEALPix cells that cover the cone; the exact
    great-circle distance (haversine, stable at small and large separations)
    then keeps the frames inside it.
    """
    _check_position(ra, dec)
    if not 0 < radius_deg <= 180:
        raise DensityDBError(f"the cone radius must be in (0, 180] degrees, got {radius_deg}")
    parameters: dict[str, Any] = {"ra": ra, "dec": dec, "radius": radius_deg, "band": band}
    near = _near_centres_sql(sky.cone_ranges(ra, dec, radius_deg), parameters)
    query = sa.text(f"SELECT * FROM ({near}) AS c WHERE distance_deg <= :radius ORDER BY distance_deg")
    with database.engine.connect() as connection:
        return query_result(connection.execute(query, parameters))


def frames_at(database: Database, ra: float, dec: float, *, band: str | None = None) -> QueryResult:
    """Frames whose footprint contains the point (ra, dec).

    Candidates are the frames whose centre lies within the largest frame
    radius of the point (``hpx`` index) and whose stored footprint ranges
    contain the point's cell; the exact spherical point-in-quadrilateral test
    on the WCS corners decides.  (The GiST index on ``footprint`` is not used
    here: a multirange's GiST key is its bounding range, which for frames
    straddling a coarse HEALPix boundary spans far more sky than the frame,
    so a point matched ~5,600 false candidates at 2 million frames.)
    """
    _check_position(ra, dec)
    with database.engine.connect() as connection:
        largest_radius = connection.execute(sa.text("SELECT max(radius_deg) FROM frame")).scalar()
        if largest_radius is None:
            empty = connection.execute(sa.text("SELECT *, 0.0 AS distance_deg FROM field_density LIMIT 0"))
            return query_result(empty)
        parameters: dict[str, Any] = {"ra": ra, "dec": dec, "band": band, "point": int(sky.hpx29(ra, dec))}
        near = _near_centres_sql(sky.cone_ranges(ra, dec, min(largest_radius * 1.0001, 180.0)), parameters)
        candidates = query_result(
            connection.execute(
                sa.text(f"""
            SELECT c.*, f.corner_ra, f.corner_dec
            FROM ({near}) AS c JOIN frame f ON f.id = c.frame_id
            WHERE f.footprint @> CAST(:point AS bigint) AND distance_deg <= f.radius_deg * 1.0001
            ORDER BY distance_deg
        """),
                parameters,
            )
        )
    inside = [
        row[:-2] for row in candidates.rows if sky.polygon_contains(np.asarray(row[-2]), np.asarray(row[-1]), ra, dec)
    ]
    return QueryResult(columns=candidates.columns[:-2], rows=inside)


def region_search(database: Database, region: SkyRegion, *, band: str | None = None) -> QueryResult:
    """Frames whose footprint overlaps a sky region (a cone, a polygon or a MOC), in frame id order.

    Parameters
    ----------
    database : Database
        The catalog.
    region : SkyRegion
        From :mod:`density_db.regions` (``polygon_region``, ``read_moc``, ``parse_region`` ...).
    band : str, optional
        Only frames of this band (canonical spelling).

    Returns
    -------
    QueryResult
        The ``field_density`` columns of the overlapping frames.
    """
    with database.engine.connect() as connection:
        frame_ids = frame_ids_in_region(connection, region, band=band)
        return query_result(
            connection.execute(
                sa.text("SELECT * FROM field_density WHERE frame_id = ANY(CAST(:ids AS bigint[])) ORDER BY frame_id"),
                {"ids": frame_ids.tolist()},
            )
        )


def frame_ids_in_region(connection: sa.Connection, region: SkyRegion, *, band: str | None = None) -> np.ndarray:
    """Ids (sorted) of the frames whose footprint overlaps ``region``.

    Candidates are the frames whose stored footprint ranges overlap the
    region's cover (``footprint && ...``, GiST index); the region's exact
    test on the WCS corners decides (see :mod:`density_db.regions`).
    """
    cover = [Range(int(lower), int(upper), bounds="[)") for lower, upper in region.cover_ranges()]
    query = sa.text("""
        SELECT f.id, f.corner_ra, f.corner_dec
        FROM frame f
        WHERE f.footprint && :cover
          AND (CAST(:band AS text) IS NULL OR f.band = CAST(:band AS text))
        ORDER BY f.id
    """).bindparams(sa.bindparam("cover", type_=INT8MULTIRANGE))
    candidates = connection.execute(query, {"cover": MultiRange(cover), "band": band}).all()
    if not candidates:
        return np.zeros(0, dtype=np.int64)
    frame_ids = np.array([row[0] for row in candidates], dtype=np.int64)
    corner_ra = np.array([row[1] for row in candidates], dtype=float)
    corner_dec = np.array([row[2] for row in candidates], dtype=float)
    overlapping = region.overlaps(corner_ra, corner_dec)
    logger.info("region: %d candidate frames, %d overlap", len(frame_ids), int(overlapping.sum()))
    return frame_ids[overlapping]


def query_result(result: sa.CursorResult) -> QueryResult:
    """The rows of an executed statement, fetched, with their column names."""
    return QueryResult(columns=tuple(result.keys()), rows=[tuple(row) for row in result])


def _check_position(ra: float, dec: float) -> None:
    if not -90 <= dec <= 90:
        raise DensityDBError(f"declination must be within [-90, 90] degrees, got {dec}")
    if not np.isfinite(ra):
        raise DensityDBError(f"right ascension must be finite, got {ra}")

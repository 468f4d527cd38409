"""A campaign's items as a table (CSV, ECSV, JSON) and its branches as MOCs (FITS, for Aladin).

The table has one row per item: how to find the frame (exposure, detector,
band, position, file and HDU), its branch and status, and the result it was
routed by (class, confidence, bright-star count, flags with their names).  A
branch's MOC is the union of its frames' stored footprints (depth
:data:`density_db.sky.FOOTPRINT_DEPTH`), merged by PostgreSQL.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from density_db import sky
from density_db.database import Database
from density_db.planning.campaigns import campaign_id
from density_db.queries import QueryResult, query_result


def campaign_items(database: Database, name: str, *, branch: str | None = None) -> QueryResult:
    """The items of campaign ``name`` (of one ``branch`` if given), in frame id order."""
    with database.engine.connect() as connection:
        identifier = campaign_id(connection, name)
        return query_result(
            connection.execute(
                sa.text("""
            SELECT i.frame_id, e.instrument, e.exposure_id, f.detector, f.band, f.ra, f.dec,
                   i.branch, i.status, r.density_class, r.class_confidence, r.bright_count,
                   r.regression_status, r.flags, flag_names(r.flags) AS flag_names,
                   i.result_id, f.path, f.hdu_index, i.updated_at
            FROM campaign_item i
            JOIN frame f ON f.id = i.frame_id
            JOIN exposure e ON e.id = f.exposure_pk
            LEFT JOIN density_result r ON r.id = i.result_id
            WHERE i.campaign_id = :campaign AND (CAST(:branch AS text) IS NULL OR i.branch = CAST(:branch AS text))
            ORDER BY i.frame_id
        """),
                {"campaign": identifier, "branch": branch},
            )
        )


def branch_ranges(database: Database, name: str, *, branch: str | None = None) -> dict[str, np.ndarray]:
    """Per branch of campaign ``name``: the depth-29 ranges ``(n, 2)`` of the union of its frames' footprints."""
    with database.engine.connect() as connection:
        identifier = campaign_id(connection, name)
        rows = connection.execute(
            sa.text("""
            SELECT u.branch, lower(u.r), upper(u.r)
            FROM (
                SELECT i.branch, unnest(range_agg(f.footprint)) AS r
                FROM campaign_item i JOIN frame f ON f.id = i.frame_id
                WHERE i.campaign_id = :campaign AND (CAST(:branch AS text) IS NULL OR i.branch = CAST(:branch AS text))
                GROUP BY i.branch
            ) u
            ORDER BY 1, 2
        """),
            {"campaign": identifier, "branch": branch},
        ).all()
    ranges: dict[str, list[tuple[int, int]]] = {}
    for branch_name, lower, upper in rows:
        ranges.setdefault(branch_name, []).append((lower, upper))
    return {key: np.asarray(value, dtype=np.uint64).reshape(-1, 2) for key, value in ranges.items()}


def write_branch_mocs(database: Database, name: str, out_dir: Path, *, branch: str | None = None) -> list[Path]:
    """Write ``{campaign}_{branch}_moc.fits`` per branch into ``out_dir`` (created); return the paths."""
    from mocpy import MOC

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for branch_name, ranges in branch_ranges(database, name, branch=branch).items():
        moc = MOC.from_depth29_ranges(sky.FOOTPRINT_DEPTH, ranges)
        path = out_dir / f"{_safe(name)}_{_safe(branch_name)}_moc.fits"
        moc.save(
            str(path),
            format="fits",
            overwrite=True,
            fits_keywords={"CAMPAIGN": name, "BRANCH": branch_name, "ORIGIN": "density-db"},
        )
        written.append(path)
    return written


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)

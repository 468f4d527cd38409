"""Queries: cone and point-in-footprint searches against brute force, read-only SQL, output formats."""

from __future__ import annotations

import datetime
import io
import json

import numpy as np
import pytest
import sqlalchemy as sa
from astropy.table import Table
from sqlalchemy.dialects.postgresql import Range

from density_db import sky
from density_db.database import Database
from density_db.queries import cone_search, frames_at
from density_db.tables import Exposure, Frame
from geometry import tangent_to_sky

BANDS = ("NUV", "u", "g", "r", "i", "z", "y")


def random_frames(rng: np.random.Generator, count: int) -> list[dict]:
    """Square-ish frames of 0.1-1.5 deg anywhere on the sky, RA = 0 and the poles included."""
    ra = rng.uniform(0, 360, count)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, count)))
    dec[:50] = rng.uniform(88.5, 89.9, 50)  # around the north pole
    ra[50:100] = rng.uniform(-1, 1, 50) % 360  # straddling RA = 0
    frames = []
    for index in range(count):
        half = rng.uniform(0.05, 0.75)
        angle = rng.uniform(0, 2 * np.pi)
        offsets = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
        rotated = offsets @ np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        corner_ra, corner_dec = tangent_to_sky(ra[index], dec[index], rotated[:, 0], rotated[:, 1])
        frames.append(
            {
                "detector": index % 30 + 1,
                "band": BANDS[index % len(BANDS)],
                "path": f"/archive/{index}.fits",
                "hdu_index": 1,
                "naxis1": 64,
                "naxis2": 64,
                "ra": ra[index],
                "dec": dec[index],
                "corner_ra": corner_ra.tolist(),
                "corner_dec": corner_dec.tolist(),
                "radius_deg": sky.circumradius_deg(ra[index], dec[index], corner_ra, corner_dec),
                "hpx": int(sky.hpx29(ra[index], dec[index])),
                "footprint": [
                    Range(int(lo), int(hi), bounds="[)") for lo, hi in sky.footprint_ranges(corner_ra, corner_dec)
                ],
                "footprint_depth": sky.FOOTPRINT_DEPTH,
            }
        )
    return frames


@pytest.fixture
def random_catalog(database: Database) -> list[dict]:
    rng = np.random.default_rng(20261121)
    frames = random_frames(rng, 900)
    with database.engine.begin() as connection:
        for start in range(0, len(frames), 30):  # 30 detectors per exposure
            exposure_pk = connection.execute(
                sa.insert(Exposure)
                .values(
                    instrument="csst",
                    exposure_id=str(start),
                    mjd=61000.0,
                    obs_time=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
                )
                .returning(Exposure.id)
            ).scalar_one()
            batch = frames[start : start + 30]
            for frame in batch:
                frame["exposure_pk"] = exposure_pk
            ids = connection.execute(
                sa.insert(Frame).returning(Frame.id, sort_by_parameter_order=True), batch
            ).scalars()
            for frame, frame_id in zip(batch, ids, strict=True):
                frame["id"] = frame_id
    return frames


def test_cone_search_equals_brute_force(database: Database, random_catalog: list[dict]) -> None:
    rng = np.random.default_rng(1)
    ra = np.array([frame["ra"] for frame in random_catalog])
    dec = np.array([frame["dec"] for frame in random_catalog])
    ids = np.array([frame["id"] for frame in random_catalog])
    cones = [(0.2, 89.5, 3.0), (359.9, 0.0, 5.0), (0.0, -89.99, 40.0)]
    cones += [
        (rng.uniform(0, 360), np.degrees(np.arcsin(rng.uniform(-1, 1))), rng.choice([0.5, 2.0, 10.0, 30.0]))
        for _ in range(25)
    ]
    for cone_ra, cone_dec, radius in cones:
        separation = sky.angular_separation_deg(cone_ra, cone_dec, ra, dec)
        certain = np.abs(separation - radius) > 1e-9
        expected = set(ids[(separation <= radius) & certain])
        result = cone_search(database, cone_ra, cone_dec, radius)
        found = {row[0] for row in result.rows}
        assert found & set(ids[certain]) == expected, (cone_ra, cone_dec, radius)
        distances = [row[result.columns.index("distance_deg")] for row in result.rows]
        assert distances == sorted(distances)


def test_frames_at_equals_brute_force_polygon_test(database: Database, random_catalog: list[dict]) -> None:
    rng = np.random.default_rng(2)
    points = [
        (frame["corner_ra"][0] + rng.normal(0, 0.2), frame["corner_dec"][0] + rng.normal(0, 0.2))
        for frame in random_catalog[::15]
    ]
    points += [(0.0, 89.9), (359.99, 0.1), (180.0, 0.0)]
    for point_ra, point_dec in points:
        point_ra, point_dec = point_ra % 360, float(np.clip(point_dec, -90, 90))
        expected = {
            frame["id"]
            for frame in random_catalog
            if sky.polygon_contains(np.array(frame["corner_ra"]), np.array(frame["corner_dec"]), point_ra, point_dec)
        }
        assert {row[0] for row in frames_at(database, point_ra, point_dec).rows} == expected


def test_band_filter_is_case_insensitive_through_the_cli(run_cli, random_catalog: list[dict]) -> None:
    frame = next(frame for frame in random_catalog if frame["band"] == "NUV")
    result = run_cli(
        "query", "frames", "--at", str(frame["ra"]), str(frame["dec"]), "--band", "nuv", "--format", "json"
    )
    assert result.exit_code == 0, result.output
    records = json.loads(result.output)
    assert frame["id"] in {record["frame_id"] for record in records}
    assert {record["band"] for record in records} == {"NUV"}


def test_query_sql_binds_parameters_and_refuses_writes(run_cli, random_catalog: list[dict]) -> None:
    counted = run_cli("query", "sql", "SELECT count(*) AS n FROM field_density WHERE band = :band", "--param", "band=g")
    assert counted.exit_code == 0
    assert counted.output.splitlines() == ["n", str(sum(frame["band"] == "g" for frame in random_catalog))]
    refused = run_cli("query", "sql", "DELETE FROM frame")
    assert refused.exit_code == 1
    assert "read-only transaction" in refused.output
    bad = run_cli("query", "sql", "SELECT 1", "--param", "no-equals-sign")
    assert bad.exit_code == 2


@pytest.mark.parametrize("output_format", ["csv", "json", "ecsv", "votable", "table"])
def test_output_formats_carry_the_same_rows(run_cli, random_catalog: list[dict], output_format: str) -> None:
    frame = random_catalog[200]
    result = run_cli("query", "cone", str(frame["ra"]), str(frame["dec"]), "1.0", "--format", output_format)
    assert result.exit_code == 0, result.output
    expected = len(
        json.loads(run_cli("query", "cone", str(frame["ra"]), str(frame["dec"]), "1.0", "--format", "json").output)
    )
    assert expected >= 1
    if output_format == "csv":
        assert len(result.output.splitlines()) == expected + 1
    elif output_format == "table":
        assert result.output.splitlines()[-1] == f"({expected} row{'' if expected == 1 else 's'})"
    elif output_format == "json":
        assert len(json.loads(result.output)) == expected
    else:
        table = Table.read(
            io.BytesIO(result.stdout_bytes), format="votable" if output_format == "votable" else "ascii.ecsv"
        )
        assert len(table) == expected
        assert frame["id"] in set(table["frame_id"])
        assert "distance_deg" in table.colnames

"""The SQL surface: density_by_pixel(), polygon_area_deg2(), region searches, cone density columns, read-only roles."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import astropy.units as u
import healpy
import numpy as np
import psycopg
import pytest
import sqlalchemy as sa
from astropy.coordinates import Latitude, Longitude
from mocpy import MOC
from psycopg import sql

from catalog import frame_row, insert_frames, insert_results, new_run, square_corners
from density_db import sky
from density_db.database import Database
from density_db.errors import DensityDBError
from density_db.queries import region_search
from density_db.regions import polygon_region
from geometry import tangent_to_sky


def girard_area_deg2(corner_ra, corner_dec) -> float:
    """Area of a convex spherical polygon from its interior angles (Girard's theorem)."""
    vertices = sky._unit_vectors(corner_ra, corner_dec)
    count = len(vertices)
    angles = []
    for index in range(count):
        here, before, after = vertices[index], vertices[index - 1], vertices[(index + 1) % count]
        towards_before = before - here * (here @ before)
        towards_after = after - here * (here @ after)
        cosine = towards_before @ towards_after / np.linalg.norm(towards_before) / np.linalg.norm(towards_after)
        angles.append(np.arccos(np.clip(cosine, -1, 1)))
    return float(np.degrees(np.degrees(np.sum(angles) - (count - 2) * np.pi)))


# -- polygon_area_deg2 and density_by_pixel -----------------------------------------------


def test_polygon_area_matches_girard_and_known_areas(database: Database) -> None:
    rng = np.random.default_rng(7)
    polygons = [
        square_corners(
            rng.uniform(0, 360),
            rng.uniform(-89, 89),
            rng.uniform(0.05, 2.0),
            rng.uniform(0, np.pi),
            rng.uniform(0.5, 2),
        )
        for _ in range(20)
    ]
    polygons.append(square_corners(0.0, 89.9, 0.3))  # around the pole
    polygons.append(square_corners(359.95, -10.0, 0.1))  # across RA = 0
    with database.engine.connect() as connection:
        area = sa.text("SELECT polygon_area_deg2(CAST(:ra AS float8[]), CAST(:dec AS float8[]))")
        for corner_ra, corner_dec in polygons:
            found = connection.execute(area, {"ra": corner_ra.tolist(), "dec": corner_dec.tolist()}).scalar()
            assert found == pytest.approx(girard_area_deg2(corner_ra, corner_dec), rel=1e-6)
            clockwise = {"ra": corner_ra[::-1].tolist(), "dec": corner_dec[::-1].tolist()}
            assert connection.execute(area, clockwise).scalar() == pytest.approx(found, rel=1e-12)
        octant = connection.execute(area, {"ra": [0.0, 90.0, 0.0], "dec": [0.0, 0.0, 90.0]}).scalar()
    assert octant == pytest.approx(4 * np.pi / 8 * np.degrees(1) ** 2, rel=1e-12)


@pytest.fixture
def pixel_catalog(database: Database) -> list[dict]:
    """Frames in a few places in two bands; results from two runs, some frames without any."""
    rng = np.random.default_rng(11)
    places = [(0.2, 0.5), (359.6, -0.4), (45.0, 87.0), (200.0, -87.5), (120.0, 30.0)]  # RA = 0, both poles
    frames = []
    for place_ra, place_dec in places:
        centre_ra, centre_dec = tangent_to_sky(place_ra, place_dec, *rng.normal(0, 0.8, (2, 12)))
        for ra, dec in zip(centre_ra, centre_dec, strict=True):
            corner_ra, corner_dec = square_corners(ra, dec, rng.uniform(0.05, 0.2), rng.uniform(0, np.pi))
            frames.append(
                frame_row(
                    corner_ra,
                    corner_dec,
                    band=str(rng.choice(["g", "NUV"])),
                    valid_fraction=None if rng.random() < 0.3 else float(rng.uniform(0.5, 1.0)),
                    centre=(float(ra), float(dec)),
                )
            )
    insert_frames(database, frames)
    older, newer = new_run(database, "old"), new_run(database, "new")
    classes = rng.integers(0, 6, len(frames))
    counts = {0: 0.0, 1: 20.0, 2: 150.0, 3: 700.0, 4: 1500.0}
    final = {}
    for frame, density_class in zip(frames, classes, strict=True):
        if rng.random() < 0.15:
            continue  # no result yet
        bright = None if density_class == 5 else counts[density_class] * rng.uniform(0.5, 1.5)
        final[frame["id"]] = (int(density_class), bright)
    insert_results(database, older, {frame_id: (5, None) for frame_id in list(final)[::2]})
    insert_results(database, newer, final)  # the latest run is the one that counts
    for frame in frames:
        frame["result"] = final.get(frame["id"])
    return frames


def expected_by_pixel(frames: list[dict], order: int, band: str | None) -> dict[tuple[int, str], tuple]:
    groups: dict[tuple[int, str], list[dict]] = {}
    for frame in frames:
        if band is None or frame["band"] == band:
            pixel = int(healpy.ang2pix(2**order, frame["ra"], frame["dec"], nest=True, lonlat=True))
            groups.setdefault((pixel, frame["band"]), []).append(frame)
    expected = {}
    for key, members in groups.items():
        results = [frame["result"] for frame in members if frame["result"] is not None]
        classes = [density_class for density_class, _ in results]
        densities = [
            bright / (girard_area_deg2(frame["corner_ra"], frame["corner_dec"]) * (frame["valid_fraction"] or 1.0))
            for frame in members
            if frame["result"] is not None and (bright := frame["result"][1]) is not None
        ]
        tally = Counter(classes)
        mode = max(tally, key=lambda value: (tally[value], value)) if classes else None  # ties: higher class
        expected[key] = (
            len(members),
            len(results),
            max(classes, default=None),
            mode,
            float(np.mean(densities)) if densities else None,
            len(densities),
        )
    return expected


@pytest.mark.parametrize(("order", "band"), [(4, None), (2, "NUV"), (0, "g"), (7, None)])
def test_density_by_pixel_matches_a_python_computation(
    database: Database, pixel_catalog: list[dict], order: int, band: str | None
) -> None:
    with database.engine.connect() as connection:
        rows = (
            connection.execute(sa.text("SELECT * FROM density_by_pixel(:order, :band)"), {"order": order, "band": band})
            .mappings()
            .all()
        )
    expected = expected_by_pixel(pixel_catalog, order, band)
    assert {(row["pixel"], row["band"]) for row in rows} == set(expected)
    for row in rows:
        frames, classified, max_class, mode_class, mean_density, counted = expected[(row["pixel"], row["band"])]
        assert row["healpix_order"] == order
        assert (
            row["frames"],
            row["classified_frames"],
            row["max_class"],
            row["mode_class"],
            row["bright_count_frames"],
        ) == (frames, classified, max_class, mode_class, counted)
        if mean_density is None:
            assert row["mean_bright_per_deg2"] is None
        else:
            assert row["mean_bright_per_deg2"] == pytest.approx(mean_density, rel=1e-5)
    assert [(row["band"], row["pixel"]) for row in rows] == sorted((row["band"], row["pixel"]) for row in rows)


def test_density_by_pixel_refuses_an_order_outside_0_to_29(run_cli) -> None:
    result = run_cli("query", "sql", "SELECT * FROM density_by_pixel(30)")
    assert result.exit_code == 1
    assert "pixel_order must be a HEALPix order between 0 and 29, got 30" in result.output


# -- region searches ----------------------------------------------------------------------

REGIONS = {
    # concave (a notch in its top edge) and across RA = 0
    "across RA = 0": ([356.0, 4.0, 4.0, 0.0, 356.0], [-3.0, -3.0, 3.0, 0.5, 3.0]),
    # around the north pole, which it contains
    "around the pole": ([0.0, 90.0, 180.0, 270.0], [86.0, 86.0, 86.0, 86.0]),
    # a triangle next to the south pole, across RA = 0, not containing the pole
    "near the south pole": ([350.0, 30.0, 120.0], [-85.0, -87.0, -89.5]),
}


def frames_around(rng: np.random.Generator, vertex_ra: list[float], vertex_dec: list[float], count: int) -> list[dict]:
    """Frames of 0.1-1.5 deg, in any orientation, scattered over and around a region."""
    mean = sky._unit_vectors(vertex_ra, vertex_dec).sum(axis=0)
    centre_ra = float(np.degrees(np.arctan2(mean[1], mean[0])) % 360)
    centre_dec = float(np.degrees(np.arcsin(mean[2] / np.linalg.norm(mean))))
    reach = float(np.max(sky.angular_separation_deg(centre_ra, centre_dec, vertex_ra, vertex_dec))) + 1.5
    xi, eta = rng.uniform(-reach, reach, (2, count))
    ra, dec = tangent_to_sky(centre_ra, centre_dec, xi, eta)
    frames = []
    for index in range(count):
        half = rng.uniform(0.05, 0.75)
        corner_ra, corner_dec = square_corners(ra[index], dec[index], half, rng.uniform(0, np.pi))
        frames.append(frame_row(corner_ra, corner_dec, band=str(rng.choice(["g", "r"]))))
    return frames


def polygon_moc(ra, dec, depth: int) -> MOC:
    return MOC.from_polygon(Longitude(np.asarray(ra) * u.deg), Latitude(np.asarray(dec) * u.deg), max_depth=depth)


def reference_overlap(frame: dict, region_cover: MOC, region_inner: MOC, depth: int) -> bool | None:
    """mocpy's judgement: False if the covers are disjoint, True if the inner parts meet, None in between."""
    cover = polygon_moc(frame["corner_ra"], frame["corner_dec"], depth)
    if cover.intersection(region_cover).empty():
        return False
    if not cover.contracted().contracted().intersection(region_inner).empty():
        return True
    return None


@pytest.mark.parametrize("name", list(REGIONS))
def test_polygon_region_search_matches_mocpy(database: Database, name: str) -> None:
    vertex_ra, vertex_dec = REGIONS[name]
    frames = frames_around(np.random.default_rng(list(REGIONS).index(name)), vertex_ra, vertex_dec, 300)
    insert_frames(database, frames)
    depth = 15
    region_cover = polygon_moc(vertex_ra, vertex_dec, depth)
    region_inner = region_cover.contracted().contracted()
    expected = {frame["id"]: reference_overlap(frame, region_cover, region_inner, depth) for frame in frames}
    certain = {frame_id for frame_id, verdict in expected.items() if verdict is not None}
    assert len(certain) >= 0.97 * len(frames)
    overlapping = {frame_id for frame_id, verdict in expected.items() if verdict}
    assert 20 <= len(overlapping) <= len(frames) - 20  # the test means something either way

    result = region_search(database, polygon_region(vertex_ra, vertex_dec))
    found = {row[0] for row in result.rows}
    assert found & certain == overlapping
    assert result.columns[0] == "frame_id" and "density_class" in result.columns


def test_polygon_region_search_on_hand_made_frames(database: Database) -> None:
    # region: a thin band across RA = 0
    band_ra, band_dec = [358.0, 2.0, 2.0, 358.0], [-0.1, -0.1, 0.1, 0.1]
    cases = {
        "inside": square_corners(359.5, 0.0, 0.05),
        "outside": square_corners(10.0, 0.0, 0.5),
        "outside, just above": square_corners(0.0, 0.2, 0.05),
        "holds the whole region": square_corners(0.0, 0.0, 2.5),
        "crosses it (edges only)": (np.array([359.9, 0.1, 0.1, 359.9]), np.array([-1.0, -1.0, 1.0, 1.0])),
        "straddles its edge": square_corners(2.0, 0.0, 0.05),
    }
    frames = [frame_row(corner_ra, corner_dec) for corner_ra, corner_dec in cases.values()]
    insert_frames(database, frames)
    region = polygon_region(band_ra, band_dec)
    found = {row[0] for row in region_search(database, region).rows}
    verdicts = {name: frame["id"] in found for name, frame in zip(cases, frames, strict=True)}
    assert verdicts == {
        "inside": True,
        "outside": False,
        "outside, just above": False,
        "holds the whole region": True,
        "crosses it (edges only)": True,
        "straddles its edge": True,
    }
    only_r = region_search(database, region, band="r")
    assert only_r.rows == []


def test_polygon_checks_its_vertices() -> None:
    closed = polygon_region([10, 11, 11, 10, 10], [0, 0, 1, 1, 0])  # a repeated first vertex closes the ring
    assert len(closed.vertex_ra) == 4
    with pytest.raises(DensityDBError, match="at least 3 vertices"):
        polygon_region([10, 11], [0, 0])
    with pytest.raises(DensityDBError, match="cross each other"):
        polygon_region([10, 11, 10, 11], [0, 1, 1, 0])  # a bow tie
    with pytest.raises(DensityDBError, match="hemisphere"):
        polygon_region([0, 120, 240], [0, 0, 0])
    with pytest.raises(DensityDBError, match=r"\[-90, 90\]"):
        polygon_region([0, 1, 1], [0, 0, 91])


def test_query_region_with_a_moc_file(run_cli, database: Database, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    coarse = MOC.from_cone(Longitude(0.5 * u.deg), Latitude(-1.0 * u.deg), radius=3 * u.deg, max_depth=8)
    fine = MOC.from_cone(Longitude(200 * u.deg), Latitude(88.0 * u.deg), radius=0.6 * u.deg, max_depth=14)
    region = coarse.union(fine)
    path = tmp_path / "region.fits"
    region.save(str(path), format="fits")
    frames = frames_around(rng, [357.0, 4.0, 4.0, 357.0], [-4.0, -4.0, 2.0, 2.0], 150)
    frames += frames_around(rng, [200.0, 290.0, 20.0, 110.0], [87.5, 87.5, 87.5, 87.5], 150)
    insert_frames(database, frames)
    expected = {
        frame["id"]
        for frame in frames
        if not polygon_moc(frame["corner_ra"], frame["corner_dec"], 14).intersection(region).empty()
    }
    assert 20 <= len(expected) <= len(frames) - 20
    result = run_cli("query", "region", "--moc", str(path), "--format", "json")
    assert result.exit_code == 0, result.output
    records = json.loads(result.output)
    assert {record["frame_id"] for record in records} == expected
    assert {"density_class", "bright_count", "class_confidence", "band"} <= set(records[0])


def test_query_region_polygon_through_the_cli(run_cli, database: Database) -> None:
    frames = [frame_row(*square_corners(359.9, -0.5, 0.1), band="NUV"), frame_row(*square_corners(30, -0.5, 0.1))]
    insert_frames(database, frames)
    insert_results(database, new_run(database, "cli"), {frames[0]["id"]: (3, 420.0)})
    # negative declinations are values, not options
    result = run_cli("query", "region", "--polygon", "359,-1,1,-1,1,0,359,0", "--band", "nuv", "--format", "json")
    assert result.exit_code == 0, result.output
    records = json.loads(result.output)
    assert [(record["frame_id"], record["density_class"], record["bright_count"]) for record in records] == [
        (frames[0]["id"], 3, 420.0)
    ]
    csv_lines = run_cli("query", "region", "--polygon", "359,-1,1,-1,1,0,359,0", "--format", "csv").output.splitlines()
    assert len(csv_lines) == 2 and csv_lines[0].startswith("frame_id,")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([], "exactly one of --polygon and --moc"),
        (["--polygon", "1,2,3,4,5,6", "--moc", "region.fits"], "exactly one of --polygon and --moc"),
        (["--polygon", "1,2,3,4,5"], "odd number"),
        (["--polygon", "1,2,x,4,5,6"], "RA,DEC"),
        (["--polygon", "10,0,11,1,10,1,11,0"], "cross each other"),
        (["--moc", "no-such-file.fits"], "does not exist"),
    ],
)
def test_query_region_misuse_exits_2(run_cli, arguments: list[str], message: str) -> None:
    result = run_cli("query", "region", *arguments)
    assert result.exit_code == 2
    assert message in result.output


def test_query_region_refuses_a_file_that_is_not_a_moc(run_cli, tmp_path: Path) -> None:
    path = tmp_path / "not-a-moc.fits"
    path.write_text("hello")
    result = run_cli("query", "region", "--moc", str(path))
    assert result.exit_code == 2
    assert "cannot read" in result.output


def test_cone_rows_carry_the_density_columns(run_cli, database: Database) -> None:
    frames = [frame_row(*square_corners(150.0, 2.0, 0.1)), frame_row(*square_corners(150.3, 2.0, 0.1))]
    insert_frames(database, frames)
    insert_results(database, new_run(database, "cone"), {frames[0]["id"]: (5, None), frames[1]["id"]: (2, 300.0)})
    records = json.loads(run_cli("query", "cone", "150.0", "2.0", "1.0", "--format", "json").output)
    assert [
        (record["frame_id"], record["density_class"], record["bright_count"], record["regression_status"])
        for record in records
    ] == [(frames[0]["id"], 5, None, "bypassed"), (frames[1]["id"], 2, 300.0, "predicted")]
    assert records[0]["distance_deg"] < records[1]["distance_deg"]


# -- the read-only role ---------------------------------------------------------------------


@pytest.fixture
def role_name(database_url: str) -> Iterator[str]:
    """A role name unique to the test; the role (a cluster-wide object) is dropped afterwards."""
    name = f"analyst_{uuid.uuid4().hex[:8]}"
    yield name
    url = sa.make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as connection:
        if connection.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
            connection.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            connection.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def connect_line(output: str) -> str:
    """The URL in the ``psql "URL"`` line that grant-readonly prints."""
    line = next(line for line in output.splitlines() if line.strip().startswith("psql "))
    return line.strip().removeprefix("psql ").strip('"')


def test_grant_readonly_role_reads_but_cannot_write(run_cli, database: Database, role_name: str) -> None:
    frames = [frame_row(*square_corners(150.0, 2.0, 0.1))]
    insert_frames(database, frames)
    first = run_cli("db", "grant-readonly", role_name)
    assert first.exit_code == 0, first.output
    assert f"role {role_name} created" in first.output
    again = run_cli("db", "grant-readonly", role_name)
    assert again.exit_code == 0, again.output
    assert f"role {role_name} already existed" in again.output
    url = connect_line(again.output)
    assert url.startswith(f"postgresql://{role_name}@")

    with psycopg.connect(url, autocommit=True) as analyst:
        assert analyst.execute("SELECT current_user").fetchone() == (role_name,)
        assert analyst.execute("SELECT count(*) FROM field_density").fetchone() == (1,)
        assert analyst.execute("SELECT count(*) FROM density_by_pixel(5)").fetchone() == (1,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            analyst.execute("DELETE FROM frame")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            analyst.execute("INSERT INTO run (kind, code_version, host, pid) VALUES ('ingest', 'x', 'x', 1)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            analyst.execute("CREATE TABLE mine (x int)")

    # tables created later by the catalog's owner (schema upgrades) are readable too
    with database.engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE later_table (x int)"))
    with psycopg.connect(url) as analyst:
        assert analyst.execute("SELECT count(*) FROM later_table").fetchone() == (0,)


def documented_sql_examples() -> list[str]:
    """The ```sql blocks of the SQL-surface page of the documentation."""
    page = (Path(__file__).parent.parent / "docs" / "sql_surface.md").read_text()
    return [block.split("```")[0] for block in page.split("```sql\n")[1:]]


def test_documented_queries_run_as_the_read_only_role(run_cli, database: Database, role_name: str) -> None:
    frames = [
        frame_row(*square_corners(150.0 + 0.2 * index, 2.2, 0.1), band=band)
        for index, band in enumerate(["g", "g", "NUV", "r"])
    ]
    insert_frames(database, frames)
    first, second = new_run(database, "first"), new_run(database, "second")
    insert_results(database, first, {frame["id"]: (2, 150.0) for frame in frames})
    insert_results(
        database,
        second,
        {
            frames[0]["id"]: (2, 160.0),
            frames[1]["id"]: (4, None),
            frames[2]["id"]: (1, 10.0),
        },
    )
    examples = documented_sql_examples()
    assert len(examples) == 5
    url = connect_line(run_cli("db", "grant-readonly", role_name).output)
    answers = []
    with psycopg.connect(url) as analyst:
        for statement in examples:
            # the example's run ids are 1 and 2; this database's runs have their own
            statement = statement.replace("field_density_for_run(1)", f"field_density_for_run({first[2]})")
            statement = statement.replace("field_density_for_run(2)", f"field_density_for_run({second[2]})")
            answers.append(analyst.execute(statement).fetchall())
    densest, too_few, class_counts, around, changed = answers
    assert len(densest) == 4 and densest[0][0] == "NUV"
    assert [row[4] for row in too_few] == [10.0]
    assert ("g", 0, 0, 1, 0, 1, 0, 0) in class_counts
    assert len(around) == 4
    assert [(row[3], row[4]) for row in changed] == [(2, 4), (2, 1)]


def test_grant_readonly_sets_a_password_without_printing_it(run_cli, database: Database, role_name: str) -> None:
    password = "s3cret-Phrase"
    result = run_cli("db", "grant-readonly", role_name, "--password", input=f"{password}\n{password}\n")
    assert result.exit_code == 0, result.output
    assert password not in result.output
    with database.engine.connect() as connection:
        stored = connection.execute(
            sa.text("SELECT rolpassword FROM pg_authid WHERE rolname = :role"), {"role": role_name}
        ).scalar()
    assert stored is not None and stored.startswith("SCRAM-SHA-256$") and password not in stored


def test_grant_readonly_refuses_superusers_and_bad_names(run_cli) -> None:
    superuser = run_cli("db", "grant-readonly", "postgres")
    assert superuser.exit_code == 1
    assert "density-db connects as" in superuser.output
    reserved = run_cli("db", "grant-readonly", "pg_monitor")
    assert reserved.exit_code == 1
    assert "reserved" in reserved.output

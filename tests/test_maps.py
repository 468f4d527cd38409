"""HEALPix maps: footprints against healpy, statistics against a brute-force reference, files read back."""

from __future__ import annotations

import datetime
import json
from collections import defaultdict
from pathlib import Path

import healpy
import numpy as np
import pytest
import sqlalchemy as sa
from astropy import units as u
from astropy.coordinates import Angle, Latitude, Longitude
from astropy.io import fits
from healsparse import HealSparseMap
from mocpy import MOC
from numpy.testing import assert_allclose, assert_array_equal

from density_db import sky
from density_db.database import Database
from density_db.maps.aggregate import STATISTIC_NAMES, STATISTICS
from density_db.maps.build import MapSettings, build_maps
from density_db.maps.rasterize import footprint_area_deg2, footprint_coverage, footprint_pixels
from density_db.maps.source import Selection
from density_db.models import DensityResult, Exposure, Frame, Model, Run
from density_db.planning.flags import FLAGS
from density_db.queries import frame_ids_in_region
from density_db.regions import ConeRegion, polygon_region, read_moc
from geometry import tangent_to_sky

NSIDE = 64
FINE_NSIDE = 4 * NSIDE
STATISTICS_BY_NAME = {statistic.name: statistic for statistic in STATISTICS}


# -- frames ---------------------------------------------------------------------------------




def square_corners(ra: float, dec: float, half_deg: float, angle_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Corners of a square frame of side 2 half_deg (tangent plane) centred on (ra, dec), turned by angle_deg."""
    angle = np.radians(angle_deg)
    offsets = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half_deg
    turned = offsets @ np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return tangent_to_sky(ra, dec, turned[:, 0], turned[:, 1])


def random_corners(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames of 0.1-3 deg anywhere, with a third around the poles and a third straddling RA = 0."""
    corner_ra, corner_dec = np.empty((count, 4)), np.empty((count, 4))
    for index in range(count):
        ra, dec = rng.uniform(0, 360), np.degrees(np.arcsin(rng.uniform(-1, 1)))
        if index % 3 == 1:
            dec = rng.choice([-1, 1]) * rng.uniform(87.0, 90.0)
        elif index % 3 == 2:
            ra = rng.uniform(-0.5, 0.5) % 360
        corner_ra[index], corner_dec[index] = square_corners(ra, dec, rng.uniform(0.05, 1.5), rng.uniform(0, 90))
    return corner_ra, corner_dec


def healpy_fine_pixels(corner_ra: np.ndarray, corner_dec: np.ndarray, nside: int) -> np.ndarray:
    """The reference: healpy's pixel-centre-in-polygon query."""
    vertices = healpy.ang2vec(corner_ra, corner_dec, lonlat=True)
    return np.sort(healpy.query_polygon(nside, vertices, inclusive=False, nest=True))


# -- rasterisation against healpy --------------------------------------------------------------


def test_footprint_pixels_equal_healpy_query_polygon_across_ra_zero_and_the_poles() -> None:
    rng = np.random.default_rng(20260601)
    corner_ra, corner_dec = random_corners(rng, 240)
    corner_ra[0], corner_dec[0] = np.array([0.0, 90.0, 180.0, 270.0]), np.full(4, 88.0)  # around the north pole
    corner_ra[1], corner_dec[1] = np.array([359.5, 0.5, 0.5, 359.5]), np.array([-0.5, -0.5, 0.5, 0.5])
    for order in (6, 8, 10):
        found = footprint_pixels(corner_ra, corner_dec, order=order)
        assert np.all(np.diff(found.frame_index) >= 0)
        for index in range(corner_ra.shape[0]):
            mine = np.sort(found.pixel[found.frame_index == index])
            assert_array_equal(mine, healpy_fine_pixels(corner_ra[index], corner_dec[index], 2**order),
                               err_msg=f"frame {index} at order {order}")


def test_covered_fractions_are_healpy_sub_pixel_counts() -> None:
    rng = np.random.default_rng(7)
    corner_ra, corner_dec = random_corners(rng, 60)
    coverage = footprint_coverage(corner_ra, corner_dec, order=6, levels=3)
    assert coverage.order == 6
    assert np.all(np.diff(coverage.frame_index) >= 0)
    for index in range(corner_ra.shape[0]):
        reference = healpy_fine_pixels(corner_ra[index], corner_dec[index], 2**9)
        pixels, counts = np.unique(reference >> 6, return_counts=True)
        rows = np.flatnonzero(coverage.frame_index == index)
        rows = rows[np.argsort(coverage.pixel[rows])]
        assert_array_equal(coverage.pixel[rows], pixels)
        assert_allclose(coverage.fraction[rows], counts / 64)
        subpixels = [int(mask) for mask in coverage.subpixels[rows]]
        expected = [sum(1 << int(fine & 63) for fine in reference[reference >> 6 == pixel]) for pixel in pixels]
        assert subpixels == expected


def test_footprint_area_is_the_spherical_excess() -> None:
    # An octant: three right angles, a quarter of a hemisphere (the fourth corner on an edge).
    octant = footprint_area_deg2(np.array([[0.0, 45.0, 90.0, 0.0]]), np.array([[0.0, 0.0, 0.0, 90.0]]))
    assert_allclose(octant, 4 * np.pi * (180 / np.pi) ** 2 / 8)
    corner_ra, corner_dec = square_corners(30.0, 10.0, 0.5)
    fine = healpy_fine_pixels(corner_ra, corner_dec, 2**13)
    assert_allclose(footprint_area_deg2(corner_ra[None], corner_dec[None]),
                    fine.size * healpy.nside2pixarea(2**13, degrees=True), rtol=2e-3)


# -- a catalog in PostgreSQL ---------------------------------------------------------------------


def insert_catalog(database: Database, frames: list[dict]) -> list[int]:
    """Insert frames (ra, dec, corners, band, valid_fraction, results) with their results; return frame ids.

    ``results`` is a list of ``(run, density_class, bright_count, flags)``; run 1
    results use models A, run 2 results models B.
    """
    with database.engine.begin() as connection:
        model_ids = {}
        stages = (("clf-a", "classifier"), ("reg-a", "regressor"), ("clf-b", "classifier"), ("reg-b", "regressor"))
        for name, stage in stages:
            model_ids[name] = connection.execute(sa.insert(Model).values(
                name=name, stage=stage, architecture="resnet", sha256=name * 16,
            ).returning(Model.id)).scalar_one()
        run_ids = [connection.execute(sa.insert(Run).values(
            kind="ingest", code_version="test", host="test", pid=1, status="completed",
        ).returning(Run.id)).scalar_one() for _ in range(2)]
        exposure_pk = connection.execute(sa.insert(Exposure).values(
            instrument="csst", exposure_id="1", mjd=61000.0,
            obs_time=datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC),
        ).returning(Exposure.id)).scalar_one()
        ids = []
        for detector, frame in enumerate(frames, start=1):
            corner_ra, corner_dec = frame["corner_ra"], frame["corner_dec"]
            frame_id = connection.execute(sa.insert(Frame).values(
                exposure_pk=exposure_pk, detector=detector, band=frame["band"], path=f"/archive/{detector}.fits",
                hdu_index=1, naxis1=9232, naxis2=9216, valid_fraction=frame.get("valid_fraction"),
                ra=frame["ra"], dec=frame["dec"], corner_ra=list(corner_ra), corner_dec=list(corner_dec),
                radius_deg=sky.circumradius_deg(frame["ra"], frame["dec"], corner_ra, corner_dec),
                hpx=int(sky.hpx29(frame["ra"], frame["dec"])),
                footprint=[sa.dialects.postgresql.Range(int(lo), int(hi), bounds="[)")
                           for lo, hi in sky.footprint_ranges(corner_ra, corner_dec)],
                footprint_depth=sky.FOOTPRINT_DEPTH,
            ).returning(Frame.id)).scalar_one()
            ids.append(frame_id)
            for run, density_class, bright_count, flags in frame.get("results", []):
                suffix = "a" if run == 1 else "b"
                probabilities = [0.0] * 6
                probabilities[density_class] = 1.0
                connection.execute(sa.insert(DensityResult).values(
                    frame_id=frame_id, classifier_id=model_ids[f"clf-{suffix}"],
                    regressor_id=model_ids[f"reg-{suffix}"],
                    run_id=run_ids[run - 1], density_class=density_class, probabilities=probabilities,
                    class_confidence=1.0, bright_count=bright_count,
                    log_bright=None if bright_count is None else float(np.log10(1 + bright_count)),
                    regression_status="bypassed" if density_class == 5 else "predicted", flags=flags,
                ))
    return ids


def make_frame(ra: float, dec: float, half_deg: float, band: str, results: list, angle_deg: float = 0.0,
               valid_fraction: float | None = None) -> dict:
    corner_ra, corner_dec = square_corners(ra, dec, half_deg, angle_deg)
    return {"ra": ra % 360, "dec": dec, "corner_ra": corner_ra, "corner_dec": corner_dec, "band": band,
            "results": results, "valid_fraction": valid_fraction}


@pytest.fixture
def overlapping_catalog(database: Database) -> list[dict]:
    """Overlapping frames in two bands around RA = 0 and near the north pole, classes 0-5, some flagged.

    Frame 0 has no result; frame 1 has results from two runs (run 2 the latest).
    """
    rng = np.random.default_rng(11)
    frames = [
        make_frame(0.3, 1.0, 0.6, "g", []),
        make_frame(0.2, 0.8, 0.7, "g", [(1, 2, 300.0, 0), (2, 4, 1500.0, 1)], angle_deg=20),
    ]
    for index in range(28):
        near_pole = index % 2 == 1
        ra = rng.uniform(0, 360) if near_pole else rng.uniform(-1.5, 1.5)
        dec = rng.uniform(86.0, 88.5) if near_pole else rng.uniform(-1.5, 1.5)
        density_class = int(rng.integers(0, 6))
        bright = None if density_class == 5 else (0.0 if density_class == 0 else float(rng.uniform(1, 2000)))
        flags = int(rng.random() < 0.3) * ((index * 37) % 255 + 1)  # several flag bits, some frames
        frames.append(make_frame(
            ra, dec, rng.uniform(0.3, 1.2), "g" if index % 3 else "r", [(1, density_class, bright, flags)],
            angle_deg=rng.uniform(0, 90), valid_fraction=None if index % 4 else rng.uniform(0.5, 1.0),
        ))
    for frame, frame_id in zip(frames, insert_catalog(database, frames), strict=True):
        frame["id"] = frame_id
    return frames


def reference_maps(frames: list[dict], bands: set[str], run: int | None = None) -> dict:
    """Every statistic by brute force: healpy query_polygon per frame, Python loops per pixel."""
    per_pixel = defaultdict(list)  # pixel -> [(class, fraction, density or None, flags)]
    fine_union = defaultdict(set)
    for frame in frames:
        if frame["band"] not in bands or not frame["results"]:
            continue
        results = frame["results"] if run is None else [result for result in frame["results"] if result[0] == run]
        if not results:
            continue
        _, density_class, bright_count, flags = max(results, key=lambda result: result[0])
        fine = healpy_fine_pixels(frame["corner_ra"], frame["corner_dec"], FINE_NSIDE)
        area = footprint_area_deg2(frame["corner_ra"][None], frame["corner_dec"][None])[0]
        valid = frame["valid_fraction"] if frame["valid_fraction"] is not None else 1.0
        density = None if bright_count is None else bright_count / (area * valid)
        pixels, counts = np.unique(fine >> 4, return_counts=True)
        for pixel, count in zip(pixels.tolist(), counts.tolist()):
            per_pixel[pixel].append((density_class, count / 16, density, flags))
        for pixel in fine.tolist():
            fine_union[pixel >> 4].add(pixel)
    maps: dict[str, dict[int, object]] = {name: {} for name in STATISTIC_NAMES}
    for pixel, entries in per_pixel.items():
        weights = [sum(w for c, w, _, _ in entries if c == cls) for cls in range(6)]
        total = sum(weights)
        maps["frames"][pixel] = len(entries)
        maps["class_max"][pixel] = max(c for c, _, _, _ in entries)
        maps["class_mode"][pixel] = max(range(6), key=lambda cls: (weights[cls], cls))
        maps["class_histogram"][pixel] = [sum(c == cls for c, _, _, _ in entries) for cls in range(6)]
        counted = [(w, d) for _, w, d, _ in entries if d is not None]
        if counted:
            maps["bright_density_mean"][pixel] = sum(w * d for w, d in counted) / sum(w for w, _ in counted)
            maps["bright_density_min"][pixel] = min(d for _, d in counted)
            maps["bright_density_max"][pixel] = max(d for _, d in counted)
        maps["bypassed_frames"][pixel] = sum(c == 5 for c, _, _, _ in entries)
        maps["bypassed_fraction"][pixel] = weights[5] / total
        maps["flagged_fraction"][pixel] = sum(w for _, w, _, flags in entries if flags) / total
        maps["flag_fractions"][pixel] = [
            sum(w for _, w, _, flags in entries if flags >> bit & 1) / total for bit in range(len(FLAGS))
        ]
        maps["covered_fraction"][pixel] = len(fine_union[pixel]) / 16
    return maps


def expected_full_sky(reference: dict[int, object], column: int | None = None) -> np.ndarray:
    sky_map = np.full(12 * NSIDE**2, healpy.UNSEEN)
    for pixel, value in reference.items():
        sky_map[pixel] = value if column is None else value[column]
    return sky_map


def test_maps_read_back_equal_the_brute_force_reference(
    run_cli, overlapping_catalog: list[dict], tmp_path: Path
) -> None:
    out = tmp_path / "maps"
    result = run_cli(
        "maps", "build", "--nside", str(NSIDE), "--all-bands", "--out", str(out), "--moc", "--chunk-size", "7"
    )
    assert result.exit_code == 0, result.output
    assert "skipped 1 without a result" in result.output
    for band, bands in (("g", {"g"}), ("r", {"r"}), ("all", {"g", "r"})):
        reference = reference_maps(overlapping_catalog, bands)
        for name in STATISTIC_NAMES:
            stem = out / f"{band}_{name}_nside{NSIDE}"
            hsp = HealSparseMap.read(str(stem) + ".hsp")
            assert hsp.nside_sparse == NSIDE
            fields = STATISTICS_BY_NAME[name].fields
            if fields:
                fits_columns = healpy.read_map(str(stem) + ".fits", nest=True, field=None)
                for column, field in enumerate(fields):
                    expected = expected_full_sky(reference[name], column)
                    assert_allclose(fits_columns[column], expected, rtol=1e-5, err_msg=f"{band} {name} {field}")
                    values = hsp.get_values_pix(np.arange(12 * NSIDE**2))[field]
                    assert_allclose(values[expected != healpy.UNSEEN], expected[expected != healpy.UNSEEN],
                                    rtol=1e-5)
                    assert set(hsp.valid_pixels) == set(reference[name])
                continue
            expected = expected_full_sky(reference[name])
            read = healpy.read_map(str(stem) + ".fits", nest=True)
            assert_allclose(read, expected, rtol=1e-5, err_msg=f"{band} {name}")
            assert_array_equal(np.sort(hsp.valid_pixels), np.sort(list(reference[name])), err_msg=f"{band} {name}")
            assert_allclose(hsp.get_values_pix(np.sort(list(reference[name]))),
                            [reference[name][pixel] for pixel in sorted(reference[name])], rtol=1e-5)
        crowded = [pixel for pixel, value in reference["class_max"].items() if value >= 4]
        flagged = [pixel for pixel, value in reference["flagged_fraction"].items() if value > 0]
        for what, pixels in (("class_ge4", crowded), ("flagged", flagged)):
            moc = MOC.load(str(out / f"{band}_{what}_nside{NSIDE}_moc.fits"), "fits")
            assert moc == MOC.from_healpix_cells(np.array(pixels, dtype=np.uint64),
                                                 np.full(len(pixels), 6, dtype=np.uint8), max_depth=6)
    assert crowded and flagged
    bits_seen = [any(fractions[bit] > 0 for fractions in reference["flag_fractions"].values()) for bit in range(8)]
    assert sum(bits_seen) >= 4, "the catalog must exercise several flags"


def test_accumulators_that_grow_give_the_maps_of_preallocated_ones(
    database: Database, overlapping_catalog: list[dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fine maps (nside > 1024) cannot reserve the whole sky: their blocks are allocated as frames arrive.
    settings = {"nside": NSIDE, "formats": ("hsp",), "chunk_size": 5}
    build_maps(database, MapSettings(out_dir=tmp_path / "reserved", **settings))
    monkeypatch.setattr("density_db.maps.aggregate._PREALLOCATE_BYTES", 0)
    build_maps(database, MapSettings(out_dir=tmp_path / "grown", **settings))
    for name in STATISTIC_NAMES:
        for band in ("g", "r", "all"):
            reserved = HealSparseMap.read(str(tmp_path / "reserved" / f"{band}_{name}_nside{NSIDE}.hsp"))
            grown = HealSparseMap.read(str(tmp_path / "grown" / f"{band}_{name}_nside{NSIDE}.hsp"))
            assert_array_equal(grown.valid_pixels, reserved.valid_pixels)
            assert_array_equal(grown[grown.valid_pixels], reserved[reserved.valid_pixels], err_msg=f"{band} {name}")


def test_fits_headers_record_statistic_band_nside_run_and_models(run_cli, overlapping_catalog, tmp_path: Path) -> None:
    result = run_cli("maps", "build", "--nside", str(NSIDE), "--band", "G", "--run", "1", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert not list(tmp_path.glob("all_*")), "one band: no all-bands maps"
    header = fits.getheader(tmp_path / f"g_bright_density_mean_nside{NSIDE}.fits", 1)
    assert header["ORDERING"] == "NESTED"
    assert header["COORDSYS"] == "C"
    assert header["NSIDE"] == NSIDE
    assert header["STATNAME"] == "bright_density_mean"
    assert header["BAND"] == "g"
    assert header["RUN"] == "1"
    assert header["MODELS"] == "clf-a+reg-a"
    assert header["BUNIT"] == "stars/deg2"
    metadata = HealSparseMap.read(str(tmp_path / f"g_frames_nside{NSIDE}.hsp")).metadata
    assert metadata["STATNAME"] == "frames" and metadata["RUN"] == "1"
    manifest = json.loads((tmp_path / f"maps_nside{NSIDE}.json").read_text())
    assert manifest["bands"][0]["band"] == "g"


@pytest.mark.parametrize("models", [("clf-a+reg-a",), ("demo-classifier-c7f24fbe+demo-regressor-8ac79c8d",),
                                    ("demo-classifier-c7f24fbe+demo-regressor-8ac79c8d", "clf-a+reg-a")])
def test_header_cards_keep_their_values_and_never_make_astropy_cut_a_comment(models: tuple[str, ...]) -> None:
    import warnings

    from density_db.maps.aggregate import STATISTICS
    from density_db.maps.writers import MapProvenance

    provenance = MapProvenance(band="g", nside=NSIDE, run="latest", models=models)
    header = fits.Header()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for card in provenance.header(STATISTICS[0]):
            header.append(card)
        header.tostring()
    assert header["MODELS"] == ", ".join(models)
    assert header.comments["NSIDE"] == "HEALPix nside"


def test_run_option_maps_that_runs_results_and_the_default_the_latest(
    database: Database, overlapping_catalog: list[dict], tmp_path: Path
) -> None:
    frame = overlapping_catalog[1]
    pixel = int(healpy.ang2pix(NSIDE, frame["ra"], frame["dec"], nest=True, lonlat=True))
    histograms = {}
    for run in (None, 1):
        summary = build_maps(database, MapSettings(
            nside=NSIDE, out_dir=tmp_path / str(run), selection=Selection(bands=("g",), run_id=run), formats=("hsp",),
        ))
        assert summary.run == ("latest" if run is None else "1")
        reference = reference_maps(overlapping_catalog, {"g"}, run=run)
        histogram = HealSparseMap.read(str(tmp_path / str(run) / f"g_class_histogram_nside{NSIDE}.hsp"))
        histograms[run] = [int(histogram[pixel][f"class_{index}"]) for index in range(6)]
        assert histograms[run] == reference["class_histogram"][pixel]
    # Frame 1: class 2 in run 1, class 4 in run 2 (the latest).
    assert histograms[None][4] - histograms[1][4] == 1
    assert histograms[1][2] - histograms[None][2] == 1
    only_run_two = build_maps(database, MapSettings(
        nside=NSIDE, out_dir=tmp_path / "2", selection=Selection(run_id=2), formats=("hsp",),
    ))
    assert [band.band for band in only_run_two.bands] == ["g"]
    assert only_run_two.bands[0].frames_mapped == 1
    assert only_run_two.bands[0].frames_without_result == sum(frame["band"] == "g" for frame in overlapping_catalog) - 1


@pytest.mark.parametrize("kind", ["cone", "polygon", "moc"])
def test_region_maps_exactly_the_frames_that_overlap_it(
    run_cli, database: Database, overlapping_catalog, tmp_path: Path, kind: str
) -> None:
    if kind == "cone":
        region, argument = ConeRegion(0.0, 87.0, 2.0), "0,87,2"
    elif kind == "polygon":  # across RA = 0
        region = polygon_region([359.0, 0.8, 0.8, 359.0], [-1.0, -1.0, 0.5, 0.5])
        argument = "polygon:359,-1,0.8,-1,0.8,0.5,359,0.5"
    else:
        moc = MOC.from_cone(lon=Longitude(0.5 * u.deg), lat=Latitude(0.5 * u.deg), radius=Angle(0.6 * u.deg),
                            max_depth=10)
        moc.save(str(tmp_path / "region.fits"), format="fits")
        region, argument = read_moc(tmp_path / "region.fits"), str(tmp_path / "region.fits")
    with database.engine.connect() as connection:
        overlapping = set(frame_ids_in_region(connection, region).tolist())
    in_region = [frame for frame in overlapping_catalog if frame["id"] in overlapping and frame["band"] == "g"]
    assert 0 < len(in_region) < sum(frame["band"] == "g" for frame in overlapping_catalog)
    result = run_cli("maps", "build", "--nside", str(NSIDE), "--band", "g", "--region", argument,
                     "--out", str(tmp_path / "maps"))
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "maps" / f"maps_nside{NSIDE}.json").read_text())
    band = manifest["bands"][0]
    assert band["frames_mapped"] + band["frames_without_result"] == len(in_region)
    assert manifest["region"] == region.spec
    reference = reference_maps(in_region, {"g"})["frames"]
    frames = HealSparseMap.read(str(tmp_path / "maps" / f"g_frames_nside{NSIDE}.hsp"))
    assert dict(zip(frames.valid_pixels.tolist(), frames[frames.valid_pixels].tolist())) == reference


def test_frames_without_corners_are_counted_and_left_out(
    database: Database, overlapping_catalog: list[dict], tmp_path: Path
) -> None:
    cornerless = overlapping_catalog[1]["id"]  # a g frame with results
    with database.engine.begin() as connection:
        connection.execute(sa.text("UPDATE frame SET corner_ra[3] = 'NaN' WHERE id = :id"),
                           {"id": cornerless})
    summary = build_maps(database, MapSettings(
        nside=NSIDE, out_dir=tmp_path, selection=Selection(bands=("g",)), formats=("hsp",), chunk_size=4,
    ))
    assert summary.bands[0].frames_without_corners == 1
    reference = reference_maps([frame for frame in overlapping_catalog if frame["id"] != cornerless], {"g"})
    frames = HealSparseMap.read(str(tmp_path / f"g_frames_nside{NSIDE}.hsp"))
    assert dict(zip(frames.valid_pixels.tolist(), frames[frames.valid_pixels].tolist())) == reference["frames"]


def test_total_covered_area_is_the_sum_of_the_footprint_areas(database: Database, tmp_path: Path) -> None:
    frames = []
    for dec in (-40.0, -20.0, 0.0, 20.0, 40.0, 60.0):
        step = 3.0 / np.cos(np.radians(dec))  # 3 deg apart on the sky, across RA = 0
        for ra in np.arange(-4, 4) * step:
            frames.append(make_frame(ra, dec, 0.9, "g", [(1, 2, 500.0, 0)], angle_deg=abs(ra) * 3))
    for ra in range(0, 360, 45):  # a ring of frames around the south pole
        frames.append(make_frame(float(ra), -85.0, 0.9, "g", [(1, 3, 800.0, 0)], angle_deg=ra))
    fine = np.concatenate([healpy_fine_pixels(frame["corner_ra"], frame["corner_dec"], 2**10) for frame in frames])
    assert np.unique(fine).size == fine.size, "the frames must not overlap"
    insert_catalog(database, frames)
    summary = build_maps(database, MapSettings(nside=NSIDE, out_dir=tmp_path, formats=("hsp",)))
    footprints = sum(footprint_area_deg2(frame["corner_ra"][None], frame["corner_dec"][None])[0] for frame in frames)
    assert summary.bands[0].frames_mapped == len(frames)
    assert summary.bands[0].covered_area_deg2 == pytest.approx(footprints, rel=0.01)
    covered = HealSparseMap.read(str(tmp_path / f"g_covered_fraction_nside{NSIDE}.hsp"))
    assert float(covered[covered.valid_pixels].sum()) * healpy.nside2pixarea(NSIDE, degrees=True) == pytest.approx(
        footprints, rel=0.01)


def test_png_has_a_zoom_panel_for_a_small_footprint(run_cli, overlapping_catalog, tmp_path: Path) -> None:
    from PIL import Image

    result = run_cli(
        "maps", "build", "--nside", "32", "--band", "g", "--region", "0,0,2", "--out", str(tmp_path), "--png"
    )
    assert result.exit_code == 0, result.output
    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) == len(STATISTIC_NAMES)
    width, height = Image.open(tmp_path / "g_class_mode_nside32.png").size
    assert width > 1.5 * height  # Mollweide and zoom side by side


def test_cli_errors(run_cli, database: Database, tmp_path: Path) -> None:
    assert run_cli("maps", "build", "--nside", "100", "--out", str(tmp_path)).exit_code == 2
    both = run_cli("maps", "build", "--nside", "64", "--band", "g", "--all-bands", "--out", str(tmp_path))
    assert both.exit_code == 2
    assert run_cli("maps", "build", "--nside", "64", "--region", "1,2", "--out", str(tmp_path)).exit_code == 2
    empty = run_cli("maps", "build", "--nside", "64", "--out", str(tmp_path))
    assert empty.exit_code == 1
    assert "nothing to map" in empty.output
    missing_run = run_cli("maps", "build", "--nside", "64", "--run", "99", "--out", str(tmp_path))
    assert missing_run.exit_code == 1
    assert "run 99 does not exist" in missing_run.output

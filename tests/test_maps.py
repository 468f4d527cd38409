"""HEALPix maps: footprints against healpy, statistics against a brute-force reference, files read back."""

from __future__ import annotations

import datetime
import json
from collections import defaultdict
from dataclasses import replace
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
from density_db.flag_rules import FlagRules
from density_db.flags import FLAGS
from density_db.maps.aggregate import STATISTIC_NAMES, STATISTICS, FrameValues, MapAccumulator
from density_db.maps.build import MapSettings, build_maps, plan_sampling
from density_db.maps.rasterize import Sampling, footprint_area_deg2, footprint_coverage, footprint_pixels
from density_db.maps.source import Census, Selection
from density_db.queries import frame_ids_in_region
from density_db.regions import ConeRegion, polygon_region, read_moc
from density_db.tables import DensityResult, Exposure, Frame, Model, Run
from geometry import tangent_to_sky

NSIDE = 64
STATISTICS_BY_NAME = {statistic.name: statistic for statistic in STATISTICS}


# -- frames ---------------------------------------------------------------------------------

CSST_HALF_DEG = 9232 * 0.074 / 3600 / 2
"""Half the side of a full-size CSST detector image (9232 x 9216 px of 0.074 arcsec)."""

CUTOUT_HALF_DEG = 512 * 0.074 / 3600 / 2
"""Half the side of a 512 x 520 px cut-out (about 38 arcsec)."""


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


def reference_sampling_order(corner_ra: np.ndarray, corner_dec: np.ndarray, order: int) -> int:
    """The documented rule: at least 2 orders below the output, deep enough for 64 pixels of area, at most 20."""
    area = footprint_area_deg2(corner_ra[None], corner_dec[None])[0]
    sampled = order + 2
    while sampled < 20 and area < 64 * healpy.nside2pixarea(2**sampled, degrees=True):
        sampled += 1
    return sampled


def centre_pixel(corner_ra: np.ndarray, corner_dec: np.ndarray, order: int) -> int:
    """The output pixel holding the frame's centre (the normalised mean of its corners)."""
    return int(healpy.vec2pix(2**order, *healpy.ang2vec(corner_ra, corner_dec, lonlat=True).sum(axis=0), nest=True))


def reference_cells(corner_ra: np.ndarray, corner_dec: np.ndarray, order: int) -> dict[int, float]:
    """Covered fraction per output pixel by healpy at the frame's sampling order, with its centre's pixel."""
    sampled = reference_sampling_order(corner_ra, corner_dec, order)
    fine = healpy_fine_pixels(corner_ra, corner_dec, 2**sampled)
    pixels, counts = np.unique(fine >> 2 * (sampled - order), return_counts=True)
    cells = dict(zip(pixels.tolist(), (counts / 4.0 ** (sampled - order)).tolist()))
    if not cells:  # placed by its area
        area = footprint_area_deg2(corner_ra[None], corner_dec[None])[0]
        return {centre_pixel(corner_ra, corner_dec, order): area / healpy.nside2pixarea(2**order, degrees=True)}
    cells.setdefault(centre_pixel(corner_ra, corner_dec, order), 0.0)
    return cells


def reference_union(corner_ra: np.ndarray, corner_dec: np.ndarray, order: int, union_order: int) -> np.ndarray:
    """The frame's sub-pixels at ``union_order`` (its centres found at its sampling order, expanded)."""
    sampled = reference_sampling_order(corner_ra, corner_dec, order)
    assert sampled <= union_order
    fine = healpy_fine_pixels(corner_ra, corner_dec, 2**sampled)
    spread = 4 ** (union_order - sampled)
    return (fine[:, None] * spread + np.arange(spread)).ravel()


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
            assert_array_equal(
                mine,
                healpy_fine_pixels(corner_ra[index], corner_dec[index], 2**order),
                err_msg=f"frame {index} at order {order}",
            )


@pytest.mark.parametrize(("order", "union_order"), [(6, 8), (6, 9), (6, 11), (3, 10)])
def test_covered_fractions_and_sub_pixels_are_healpy_counts_at_each_frames_sampling_order(
    order: int, union_order: int
) -> None:
    rng = np.random.default_rng(7)
    corner_ra, corner_dec = random_corners(rng, 60)
    sampling = Sampling(order=order, mask_order=union_order)
    coverage = footprint_coverage(corner_ra, corner_dec, sampling)
    assert coverage.order == order
    union, unmasked = set(), 0.0
    for index in range(corner_ra.shape[0]):
        sampled = reference_sampling_order(corner_ra[index], corner_dec[index], order)
        assert coverage.sampling_order[index] == sampled
        rows = np.flatnonzero(coverage.frame_index == index)
        cells = reference_cells(corner_ra[index], corner_dec[index], order)
        assert dict(zip(coverage.pixel[rows].tolist(), coverage.fraction[rows].tolist())) == pytest.approx(cells)
        if sampled <= union_order:
            union.update(reference_union(corner_ra[index], corner_dec[index], order, union_order).tolist())
        else:
            unmasked += sum(cells.values())
    levels = sampling.mask_levels
    rows = (
        zip(coverage.pixel, coverage.subpixels)
        if sampling.row_order == order
        else zip(coverage.union_pixel, coverage.union_bits)
    )
    found = {
        (int(pixel) << 2 * levels) + bit for pixel, bits in rows for bit in range(4**levels) if int(bits) >> bit & 1
    }
    assert found == union
    assert coverage.unmasked_fraction.sum() == pytest.approx(unmasked)
    assert not coverage.placed_by_area.any()


def test_footprint_area_is_the_spherical_excess() -> None:
    # An octant: three right angles, a quarter of a hemisphere (the fourth corner on an edge).
    octant = footprint_area_deg2(np.array([[0.0, 45.0, 90.0, 0.0]]), np.array([[0.0, 0.0, 0.0, 90.0]]))
    assert_allclose(octant, 4 * np.pi * (180 / np.pi) ** 2 / 8)
    corner_ra, corner_dec = square_corners(30.0, 10.0, 0.5)
    fine = healpy_fine_pixels(corner_ra, corner_dec, 2**13)
    assert_allclose(
        footprint_area_deg2(corner_ra[None], corner_dec[None]),
        fine.size * healpy.nside2pixarea(2**13, degrees=True),
        rtol=2e-3,
    )


# -- every frame counts, at every nside ---------------------------------------------------------


def scattered_frames(
    rng: np.random.Generator, count: int, half_deg: float, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Square frames turned at random: ``anywhere`` on the sphere, ``ra0`` across RA = 0 or ``pole`` near one."""
    corner_ra, corner_dec = np.empty((count, 4)), np.empty((count, 4))
    for index in range(count):
        ra, dec = rng.uniform(0, 360), np.degrees(np.arcsin(rng.uniform(-1, 1)))
        if where == "ra0":
            ra = rng.uniform(-2 * half_deg, 2 * half_deg) % 360
        elif where == "pole":
            dec = rng.choice([-1, 1]) * rng.uniform(90 - 4 * half_deg, 90)
        corner_ra[index], corner_dec[index] = square_corners(ra, dec, half_deg, rng.uniform(0, 90))
    return corner_ra, corner_dec


def frame_sets(rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Full-size CSST footprints, small cut-outs, and both across RA = 0 and near the poles."""
    sets = {}
    for name, half_deg in (("full-size", CSST_HALF_DEG), ("cut-out", CUTOUT_HALF_DEG)):
        for where, count in (("anywhere", 2000 if name == "full-size" else 300), ("ra0", 100), ("pole", 100)):
            sets[f"{name} {where}"] = scattered_frames(rng, count, half_deg, where)
    return sets


def census_of(corner_ra: np.ndarray, corner_dec: np.ndarray) -> Census:
    """What the catalog's census would say of these frames (from their circumradii)."""
    centre = healpy.ang2vec(corner_ra.ravel(), corner_dec.ravel(), lonlat=True).reshape(-1, 4, 3).sum(axis=1)
    centre_ra, centre_dec = healpy.vec2ang(centre, lonlat=True)
    radius = np.array(
        [
            sky.circumradius_deg(ra, dec, ras, decs)
            for ra, dec, ras, decs in zip(centre_ra, centre_dec, corner_ra, corner_dec)
        ]
    )
    return Census(
        frames={"g": radius.size}, smallest_area_deg2=2 * radius.min() ** 2, largest_area_deg2=2 * radius.max() ** 2
    )


def accumulated(corner_ra: np.ndarray, corner_dec: np.ndarray, classes: np.ndarray, nside: int):
    """The maps' statistics of these frames, sampled as ``maps build`` samples them; and their coverage."""
    sampling = plan_sampling(nside.bit_length() - 1, 2, census_of(corner_ra, corner_dec))
    coverage = footprint_coverage(corner_ra, corner_dec, sampling)
    accumulator = MapAccumulator(sampling=sampling)
    accumulator.add(
        coverage,
        FrameValues(
            density_class=classes,
            bright_density=np.full(classes.size, 100.0),
            flags=np.zeros(classes.size, dtype=np.int64),
        ),
    )
    return accumulator.statistics(), coverage


@pytest.mark.parametrize("nside", [16, 32, 64, 256, 1024])
def test_every_frame_counts_in_frames_and_class_max_at_the_pixel_of_its_centre(nside: int) -> None:
    rng = np.random.default_rng(nside)
    for name, (corner_ra, corner_dec) in frame_sets(rng).items():
        classes = rng.integers(0, 6, corner_ra.shape[0])
        statistics, coverage = accumulated(corner_ra, corner_dec, classes, nside)
        centres = np.array([centre_pixel(ra, dec, nside.bit_length() - 1) for ra, dec in zip(corner_ra, corner_dec)])
        at = np.searchsorted(statistics.pixels, centres)
        assert np.all(statistics.pixels[np.minimum(at, statistics.pixels.size - 1)] == centres), name
        histogram = statistics["class_histogram"][at]
        for pixel in np.unique(centres):
            here = centres == pixel
            expected = np.bincount(classes[here], minlength=6)
            assert np.all(histogram[here][0] >= expected), f"{name}: frames missing at pixel {pixel}"
        assert np.all(statistics["frames"][at] >= 1), name
        assert np.all(statistics["class_max"][at] >= classes), name
        assert not coverage.placed_by_area.any(), name


def test_a_frame_too_small_for_the_deepest_order_adds_its_area_at_its_centre() -> None:
    tiny = 0.02 / 3600  # a 0.04 arcsec square: no order-20 pixel centre (0.2 arcsec apart) falls inside
    corner_ra, corner_dec = (
        np.stack(side)
        for side in zip(
            square_corners(10.0, 20.0, tiny),
            square_corners(359.99999, 0.0, tiny),
            square_corners(0.0, 89.99999, tiny),
            square_corners(200.0, -30.0, CSST_HALF_DEG),
        )
    )
    classes = np.array([3, 4, 5, 1])
    statistics, coverage = accumulated(corner_ra, corner_dec, classes, 256)
    assert coverage.placed_by_area.tolist() == [True, True, True, False]
    area = footprint_area_deg2(corner_ra, corner_dec)
    for index in range(3):
        pixel = centre_pixel(corner_ra[index], corner_dec[index], 8)
        at = int(np.searchsorted(statistics.pixels, pixel))
        assert statistics.pixels[at] == pixel
        assert statistics["class_max"][at] == classes[index]
        pixel_area = healpy.nside2pixarea(256, degrees=True)
        assert statistics["covered_fraction"][at] == pytest.approx(area[index] / pixel_area, rel=1e-5)
    # The same frames added as two bands and merged, as the all-bands maps are made.
    merged = MapAccumulator(sampling=coverage.sampling)
    for members in ([0, 3], [1, 2]):
        band = MapAccumulator(sampling=coverage.sampling)
        band.add(
            footprint_coverage(corner_ra[members], corner_dec[members], coverage.sampling),
            FrameValues(
                density_class=classes[members], bright_density=np.full(2, 100.0), flags=np.zeros(2, dtype=np.int64)
            ),
        )
        merged.merge(band)
    merged_statistics = merged.statistics()
    assert_array_equal(merged_statistics.pixels, statistics.pixels)
    for name in ("covered_fraction", "class_max", "frames"):
        assert_allclose(merged_statistics[name], statistics[name], rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("nside", [16, 32, 64, 256, 1024])
def test_summed_covered_area_of_non_overlapping_frames_is_their_healpy_area(nside: int) -> None:
    # Reference areas: healpy query_polygon at order 15 (full-size frames, about 12,000 pixels each) and
    # order 20 (cut-outs, about 14,000 each), where counting pixel centres measures area to a few 0.1 %.
    # Tolerance 1.5 %: each frame is sampled with at least 64 sub-pixels, whose edge errors average out.
    rng = np.random.default_rng(100 + nside)
    for half_deg, fine_order in ((CSST_HALF_DEG, 15), (CUTOUT_HALF_DEG, 20)):
        frames = []
        for band_dec in (-89.5, -45.0, 0.0, 30.0, 89.5):
            step = 4 * half_deg / max(np.cos(np.radians(band_dec)), 0.01)
            for column in range(-4, 5):  # a row of frames across RA = 0
                frames.append(square_corners(column * step, band_dec, half_deg, rng.uniform(0, 90)))
        corner_ra, corner_dec = (np.stack(side) for side in zip(*frames))
        fine = [healpy_fine_pixels(ra, dec, 2**fine_order) for ra, dec in zip(corner_ra, corner_dec)]
        assert np.unique(np.concatenate(fine)).size == sum(pixels.size for pixels in fine), "frames must not overlap"
        reference = sum(pixels.size for pixels in fine) * healpy.nside2pixarea(2**fine_order, degrees=True)
        statistics, _ = accumulated(corner_ra, corner_dec, np.zeros(len(frames), dtype=np.int64), nside)
        covered = statistics["covered_fraction"].sum(dtype=np.float64) * healpy.nside2pixarea(nside, degrees=True)
        assert covered == pytest.approx(reference, rel=0.015), f"half side {half_deg} deg at nside {nside}"


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
            model_ids[name] = connection.execute(
                sa.insert(Model)
                .values(
                    name=name,
                    stage=stage,
                    architecture="resnet",
                    sha256=name * 16,
                )
                .returning(Model.id)
            ).scalar_one()
        run_ids = [
            connection.execute(
                sa.insert(Run)
                .values(
                    kind="ingest",
                    code_version="test",
                    host="test",
                    pid=1,
                    status="completed",
                )
                .returning(Run.id)
            ).scalar_one()
            for _ in range(2)
        ]
        exposure_pk = connection.execute(
            sa.insert(Exposure)
            .values(
                instrument="csst",
                exposure_id="1",
                mjd=61000.0,
                obs_time=datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC),
            )
            .returning(Exposure.id)
        ).scalar_one()
        ids = []
        for detector, frame in enumerate(frames, start=1):
            corner_ra, corner_dec = frame["corner_ra"], frame["corner_dec"]
            frame_id = connection.execute(
                sa.insert(Frame)
                .values(
                    exposure_pk=exposure_pk,
                    detector=detector,
                    band=frame["band"],
                    path=f"/archive/{detector}.fits",
                    hdu_index=1,
                    naxis1=9232,
                    naxis2=9216,
                    valid_fraction=frame.get("valid_fraction"),
                    ra=frame["ra"],
                    dec=frame["dec"],
                    corner_ra=list(corner_ra),
                    corner_dec=list(corner_dec),
                    radius_deg=sky.circumradius_deg(frame["ra"], frame["dec"], corner_ra, corner_dec),
                    hpx=int(sky.hpx29(frame["ra"], frame["dec"])),
                    footprint=[
                        sa.dialects.postgresql.Range(int(lo), int(hi), bounds="[)")
                        for lo, hi in sky.footprint_ranges(corner_ra, corner_dec)
                    ],
                    footprint_depth=sky.FOOTPRINT_DEPTH,
                )
                .returning(Frame.id)
            ).scalar_one()
            ids.append(frame_id)
            for run, density_class, bright_count, flags in frame.get("results", []):
                suffix = "a" if run == 1 else "b"
                probabilities = [0.0] * 6
                probabilities[density_class] = 1.0
                connection.execute(
                    sa.insert(DensityResult).values(
                        frame_id=frame_id,
                        classifier_id=model_ids[f"clf-{suffix}"],
                        regressor_id=model_ids[f"reg-{suffix}"],
                        run_id=run_ids[run - 1],
                        density_class=density_class,
                        probabilities=probabilities,
                        class_confidence=1.0,
                        bright_count=bright_count,
                        log_bright=None if bright_count is None else float(np.log10(1 + bright_count)),
                        regression_status="bypassed" if density_class == 5 else "predicted",
                        flags=flags,
                    )
                )
    return ids


def make_frame(
    ra: float,
    dec: float,
    half_deg: float,
    band: str,
    results: list,
    angle_deg: float = 0.0,
    valid_fraction: float | None = None,
) -> dict:
    corner_ra, corner_dec = square_corners(ra, dec, half_deg, angle_deg)
    return {
        "ra": ra % 360,
        "dec": dec,
        "corner_ra": corner_ra,
        "corner_dec": corner_dec,
        "band": band,
        "results": results,
        "valid_fraction": valid_fraction,
    }


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
        frames.append(
            make_frame(
                ra,
                dec,
                rng.uniform(0.3, 1.2),
                "g" if index % 3 else "r",
                [(1, density_class, bright, flags)],
                angle_deg=rng.uniform(0, 90),
                valid_fraction=None if index % 4 else rng.uniform(0.5, 1.0),
            )
        )
    for frame, frame_id in zip(frames, insert_catalog(database, frames), strict=True):
        frame["id"] = frame_id
    return frames


def reference_maps(frames: list[dict], bands: set[str], run: int | None = None) -> dict:
    """Every statistic by brute force: healpy query_polygon per frame, Python loops per pixel.

    The union of frames is counted at the deepest sampling order among them
    (exact when the maps keep it at least that deep).
    """
    order = NSIDE.bit_length() - 1
    per_pixel = defaultdict(list)  # pixel -> [(class, fraction, density or None, flags)]
    chosen = []
    for frame in frames:
        if frame["band"] not in bands or not frame["results"]:
            continue
        results = frame["results"] if run is None else [result for result in frame["results"] if result[0] == run]
        if results:
            chosen.append((frame, max(results, key=lambda result: result[0])))
    union_order = max(
        (reference_sampling_order(frame["corner_ra"], frame["corner_dec"], order) for frame, _ in chosen), default=order
    )
    fine_union = defaultdict(set)
    for frame, (_, density_class, bright_count, flags) in chosen:
        area = footprint_area_deg2(frame["corner_ra"][None], frame["corner_dec"][None])[0]
        valid = frame["valid_fraction"] if frame["valid_fraction"] is not None else 1.0
        density = None if bright_count is None else bright_count / (area * valid)
        for pixel, fraction in reference_cells(frame["corner_ra"], frame["corner_dec"], order).items():
            per_pixel[pixel].append((density_class, fraction, density, flags))
        for fine in reference_union(frame["corner_ra"], frame["corner_dec"], order, union_order).tolist():
            fine_union[fine >> 2 * (union_order - order)].add(fine)
    maps: dict[str, dict[int, object]] = {name: {} for name in STATISTIC_NAMES}
    for pixel, entries in per_pixel.items():
        weights = [sum(w for c, w, _, _ in entries if c == cls) for cls in range(6)]
        total = sum(weights)
        maps["frames"][pixel] = len(entries)
        maps["class_max"][pixel] = max(c for c, _, _, _ in entries)
        maps["class_mode"][pixel] = max(range(6), key=lambda cls: (weights[cls], cls))
        maps["class_histogram"][pixel] = [sum(c == cls for c, _, _, _ in entries) for cls in range(6)]
        counted = [(w, d) for _, w, d, _ in entries if d is not None]
        if counted and sum(w for w, _ in counted) > 0:
            maps["bright_density_mean"][pixel] = sum(w * d for w, d in counted) / sum(w for w, _ in counted)
        if counted:
            maps["bright_density_min"][pixel] = min(d for _, d in counted)
            maps["bright_density_max"][pixel] = max(d for _, d in counted)
        maps["bypassed_frames"][pixel] = sum(c == 5 for c, _, _, _ in entries)
        maps["bypassed_fraction"][pixel] = weights[5] / total
        maps["flagged_fraction"][pixel] = sum(w for _, w, _, flags in entries if flags) / total
        maps["flag_fractions"][pixel] = [
            sum(w for _, w, _, flags in entries if flags >> bit & 1) / total for bit in range(len(FLAGS))
        ]
        maps["covered_fraction"][pixel] = len(fine_union[pixel]) / 4 ** (union_order - order)
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
                    assert_allclose(values[expected != healpy.UNSEEN], expected[expected != healpy.UNSEEN], rtol=1e-5)
                    assert set(hsp.valid_pixels) == set(reference[name])
                continue
            expected = expected_full_sky(reference[name])
            read = healpy.read_map(str(stem) + ".fits", nest=True)
            assert_allclose(read, expected, rtol=1e-5, err_msg=f"{band} {name}")
            assert_array_equal(np.sort(hsp.valid_pixels), np.sort(list(reference[name])), err_msg=f"{band} {name}")
            assert_allclose(
                hsp.get_values_pix(np.sort(list(reference[name]))),
                [reference[name][pixel] for pixel in sorted(reference[name])],
                rtol=1e-5,
            )
        crowded = [pixel for pixel, value in reference["class_max"].items() if value >= 4]
        flagged = [pixel for pixel, value in reference["flagged_fraction"].items() if value > 0]
        for what, pixels in (("class_ge4", crowded), ("flagged", flagged)):
            moc = MOC.load(str(out / f"{band}_{what}_nside{NSIDE}_moc.fits"), "fits")
            assert moc == MOC.from_healpix_cells(
                np.array(pixels, dtype=np.uint64), np.full(len(pixels), 6, dtype=np.uint8), max_depth=6
            )
    assert crowded and flagged
    bits_seen = [any(fractions[bit] > 0 for fractions in reference["flag_fractions"].values()) for bit in range(8)]
    assert sum(bits_seen) >= 4, "the catalog must exercise several flags"


def test_the_crowded_moc_follows_the_crowded_flag_threshold_in_force(
    database: Database, overlapping_catalog: list[dict], tmp_path: Path
) -> None:
    from density_db.flag_rules import default_flag_rules
    from density_db.planning.flag_runs import recompute_flags

    thresholds = replace(default_flag_rules().thresholds, crowded_min_class=3)
    recompute_flags(database, FlagRules(thresholds=thresholds, provenance={"flags": thresholds.as_dict()}))
    build_maps(
        database,
        MapSettings(nside=NSIDE, out_dir=tmp_path, formats=("hsp",), moc=True, selection=Selection(bands=("g",))),
    )
    reference = reference_maps(overlapping_catalog, {"g"})
    crowded = [pixel for pixel, value in reference["class_max"].items() if value >= 3]
    assert not (tmp_path / f"g_class_ge4_nside{NSIDE}_moc.fits").exists()
    moc = MOC.load(str(tmp_path / f"g_class_ge3_nside{NSIDE}_moc.fits"), "fits")
    assert moc == MOC.from_healpix_cells(
        np.array(crowded, dtype=np.uint64), np.full(len(crowded), 6, dtype=np.uint8), max_depth=6
    )


def test_healsparse_reads_every_map_we_write_compressed_or_not(
    database: Database, overlapping_catalog: list[dict], tmp_path: Path
) -> None:
    # Record maps are written in healsparse's format by our own code (maps/writers.py); the others by
    # healsparse, compressed with --compress. Every file must read back with healsparse's reader.
    settings = {"nside": NSIDE, "formats": ("hsp",), "selection": Selection(bands=("g",))}
    build_maps(database, MapSettings(out_dir=tmp_path / "plain", **settings))
    build_maps(database, MapSettings(out_dir=tmp_path / "compressed", compress=True, **settings))
    reference = reference_maps(overlapping_catalog, {"g"})
    for name in STATISTIC_NAMES:
        plain, compressed = (
            HealSparseMap.read(str(tmp_path / folder / f"g_{name}_nside{NSIDE}.hsp"))
            for folder in ("plain", "compressed")
        )
        assert set(plain.valid_pixels) == set(compressed.valid_pixels) == set(reference[name]), name
        pixels = np.sort(plain.valid_pixels)
        assert_array_equal(plain.get_values_pix(pixels), compressed.get_values_pix(pixels), err_msg=name)
        assert plain.metadata["STATNAME"] == name


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


@pytest.mark.parametrize(
    "models",
    [
        ("clf-a+reg-a",),
        ("demo-classifier-c7f24fbe+demo-regressor-8ac79c8d",),
        ("demo-classifier-c7f24fbe+demo-regressor-8ac79c8d", "clf-a+reg-a"),
    ],
)
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
        summary = build_maps(
            database,
            MapSettings(
                nside=NSIDE,
                out_dir=tmp_path / str(run),
                selection=Selection(bands=("g",), run_id=run),
                formats=("hsp",),
            ),
        )
        assert summary.run == ("latest" if run is None else "1")
        reference = reference_maps(overlapping_catalog, {"g"}, run=run)
        histogram = HealSparseMap.read(str(tmp_path / str(run) / f"g_class_histogram_nside{NSIDE}.hsp"))
        histograms[run] = [int(histogram[pixel][f"class_{index}"]) for index in range(6)]
        assert histograms[run] == reference["class_histogram"][pixel]
    # Frame 1: class 2 in run 1, class 4 in run 2 (the latest).
    assert histograms[None][4] - histograms[1][4] == 1
    assert histograms[1][2] - histograms[None][2] == 1
    only_run_two = build_maps(
        database,
        MapSettings(
            nside=NSIDE,
            out_dir=tmp_path / "2",
            selection=Selection(run_id=2),
            formats=("hsp",),
        ),
    )
    assert [band.band for band in only_run_two.bands] == ["g"]
    assert only_run_two.bands[0].frames_placed == 1
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
        moc = MOC.from_cone(
            lon=Longitude(0.5 * u.deg), lat=Latitude(0.5 * u.deg), radius=Angle(0.6 * u.deg), max_depth=10
        )
        moc.save(str(tmp_path / "region.fits"), format="fits")
        region, argument = read_moc(tmp_path / "region.fits"), str(tmp_path / "region.fits")
    with database.engine.connect() as connection:
        overlapping = set(frame_ids_in_region(connection, region).tolist())
    in_region = [frame for frame in overlapping_catalog if frame["id"] in overlapping and frame["band"] == "g"]
    assert 0 < len(in_region) < sum(frame["band"] == "g" for frame in overlapping_catalog)
    result = run_cli(
        "maps", "build", "--nside", str(NSIDE), "--band", "g", "--region", argument, "--out", str(tmp_path / "maps")
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "maps" / f"maps_nside{NSIDE}.json").read_text())
    band = manifest["bands"][0]
    assert band["frames_placed"] + band["frames_without_result"] == len(in_region)
    assert manifest["region"] == region.spec
    reference = reference_maps(in_region, {"g"})["frames"]
    frames = HealSparseMap.read(str(tmp_path / "maps" / f"g_frames_nside{NSIDE}.hsp"))
    assert dict(zip(frames.valid_pixels.tolist(), frames[frames.valid_pixels].tolist())) == reference


def test_frames_without_corners_are_named_counted_and_left_out(
    database: Database, overlapping_catalog: list[dict], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cornerless = overlapping_catalog[1]["id"]  # a g frame with results
    with database.engine.begin() as connection:
        connection.execute(sa.text("UPDATE frame SET corner_ra[3] = 'NaN' WHERE id = :id"), {"id": cornerless})
    summary = build_maps(
        database,
        MapSettings(
            nside=NSIDE,
            out_dir=tmp_path,
            selection=Selection(bands=("g",)),
            formats=("hsp",),
            chunk_size=4,
        ),
    )
    assert summary.bands[0].frames_without_corners == 1
    assert f"frame {cornerless} (exposure 1, detector 2, g: /archive/2.fits)" in caplog.text
    manifest = json.loads((tmp_path / f"maps_nside{NSIDE}.json").read_text())
    assert manifest["bands"][0]["unplaced"] == [
        {"frame_id": cornerless, "exposure_id": "1", "detector": 2, "band": "g", "path": "/archive/2.fits"}
    ]
    reference = reference_maps([frame for frame in overlapping_catalog if frame["id"] != cornerless], {"g"})
    frames = HealSparseMap.read(str(tmp_path / f"g_frames_nside{NSIDE}.hsp"))
    assert dict(zip(frames.valid_pixels.tolist(), frames[frames.valid_pixels].tolist())) == reference["frames"]


def test_small_frames_fill_every_map_and_the_build_reports_where_each_band_placed_them(
    run_cli, database: Database, tmp_path: Path
) -> None:
    # Seven 512 x 520 px cut-outs (38 arcsec), far smaller than a pixel at nside 256 (14 arcmin).
    rng = np.random.default_rng(3)
    frames = [
        make_frame(
            float(rng.uniform(0, 360)),
            float(rng.uniform(-60, 60)),
            CUTOUT_HALF_DEG,
            "g" if index < 4 else "r",
            [(1, index % 6, 10.0 * index, 0)],
            angle_deg=index * 10.0,
        )
        for index in range(7)
    ]
    insert_catalog(database, frames)
    result = run_cli("maps", "build", "--nside", "256", "--all-bands", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "g: 4 frames placed;" in result.output
    assert "r: 3 frames placed;" in result.output
    assert "all: 7 frames placed;" in result.output
    manifest = json.loads((tmp_path / "maps_nside256.json").read_text())
    assert [band["frames_placed"] for band in manifest["bands"]] == [4, 3, 7]
    assert manifest["bands"][2]["sampling_orders"] == {"16": 7}
    assert manifest["sampling"]["union_order"] == 16
    for band, members in (("g", frames[:4]), ("r", frames[4:]), ("all", frames)):
        for name in STATISTIC_NAMES:
            if name.startswith("bright_density_") and all(frame["results"][0][2] == 0 for frame in members):
                continue
            assert HealSparseMap.read(str(tmp_path / f"{band}_{name}_nside256.hsp")).n_valid > 0, f"{band} {name}"
        class_max = HealSparseMap.read(str(tmp_path / f"{band}_class_max_nside256.hsp"))
        covered = HealSparseMap.read(str(tmp_path / f"{band}_covered_fraction_nside256.hsp"))
        for frame in members:
            pixel = centre_pixel(frame["corner_ra"], frame["corner_dec"], 8)
            assert class_max[pixel] >= frame["results"][0][1]
        area = sum(footprint_area_deg2(frame["corner_ra"][None], frame["corner_dec"][None])[0] for frame in members)
        summed = float(covered[covered.valid_pixels].sum()) * healpy.nside2pixarea(256, degrees=True)
        assert summed == pytest.approx(area, rel=0.05)


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
    assert summary.bands[0].frames_placed == len(frames)
    assert summary.bands[0].covered_area_deg2 == pytest.approx(footprints, rel=0.01)
    covered = HealSparseMap.read(str(tmp_path / f"g_covered_fraction_nside{NSIDE}.hsp"))
    assert float(covered[covered.valid_pixels].sum()) * healpy.nside2pixarea(NSIDE, degrees=True) == pytest.approx(
        footprints, rel=0.01
    )


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

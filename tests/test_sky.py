"""Sky geometry judged against healpy, mocpy and astropy."""

import astropy.units as u
import healpy
import numpy as np
import pytest
from astropy.coordinates import Latitude, Longitude, SkyCoord
from astropy.wcs import WCS
from mocpy import MOC

from density_db import sky
from fits_factory import wcs_header

DETECTOR_PIXELS = 9216
DETECTOR_SCALE_DEG = 0.074 / 3600
DETECTOR_WIDTH_DEG = DETECTOR_PIXELS * DETECTOR_SCALE_DEG  # a full CSST detector: 11.4'

# (ra, dec, rotation): ordinary sky, across RA = 0, within 1 deg of both poles, around the pole.
FRAMES = [
    (150.0, 2.0, 0.0),
    (0.03, -20.0, 35.0),
    (359.98, 60.0, 0.0),
    (45.0, 89.3, 10.0),
    (200.0, -89.5, 70.0),
    (0.0, 90.0, 0.0),
]


def detector_wcs(ra: float, dec: float, rotation_deg: float) -> WCS:
    shape = (DETECTOR_PIXELS, DETECTOR_PIXELS)
    return WCS(wcs_header(ra, dec, rotation_deg=rotation_deg, shape=shape, pixel_scale_deg=DETECTOR_SCALE_DEG))


def detector_corners(ra: float, dec: float, rotation_deg: float) -> tuple[np.ndarray, np.ndarray]:
    edge = DETECTOR_PIXELS - 0.5
    return detector_wcs(ra, dec, rotation_deg).all_pix2world([-0.5, edge, edge, -0.5], [-0.5, -0.5, edge, edge], 0)


def contains(ranges: np.ndarray, pixels29: np.ndarray) -> np.ndarray:
    """Whether order-29 pixels fall in sorted half-open ranges."""
    row = np.searchsorted(ranges[:, 0], pixels29, side="right") - 1
    return (row >= 0) & (pixels29 < ranges[np.maximum(row, 0), 1])


def assert_sorted_and_merged(ranges: np.ndarray) -> None:
    assert ranges.dtype == np.int64 and ranges.ndim == 2 and ranges.shape[1] == 2
    assert np.all(ranges[:, 0] < ranges[:, 1])
    assert np.all(ranges[1:, 0] > ranges[:-1, 1])  # sorted, and touching ranges are merged


def test_hpx29_agrees_with_healpy():
    rng = np.random.default_rng(0)
    ra, dec = rng.uniform(0, 360, 1000), np.degrees(np.arcsin(rng.uniform(-1, 1, 1000)))

    expected = healpy.ang2pix(2**29, ra, dec, nest=True, lonlat=True)

    np.testing.assert_array_equal(sky.hpx29(ra, dec), expected)
    assert sky.hpx29(ra[0], dec[0]) == expected[0] and isinstance(sky.hpx29(ra[0], dec[0]), int)


@pytest.mark.parametrize(("ra", "dec", "rotation_deg"), FRAMES)
def test_footprint_is_the_moc_of_the_frame_at_the_footprint_depth(ra, dec, rotation_deg):
    corner_ra, corner_dec = detector_corners(ra, dec, rotation_deg)

    ranges = sky.footprint_ranges(corner_ra, corner_dec)

    assert_sorted_and_merged(ranges)
    moc = MOC.from_polygon(Longitude(corner_ra * u.deg), Latitude(corner_dec * u.deg), max_depth=sky.FOOTPRINT_DEPTH)
    np.testing.assert_array_equal(ranges, moc.to_depth29_ranges.astype(np.int64))
    # Orientation does not matter.
    np.testing.assert_array_equal(sky.footprint_ranges(corner_ra[::-1], corner_dec[::-1]), ranges)
    # A compact cover: a few dozen ranges, little more sky than the detector's 11.4' x 11.4'.
    area = (ranges[:, 1] - ranges[:, 0]).sum() * healpy.nside2pixarea(2**29, degrees=True)
    assert len(ranges) < 60 and 1.0 < area / DETECTOR_WIDTH_DEG**2 < 1.4


@pytest.mark.parametrize(("ra", "dec", "rotation_deg"), FRAMES)
def test_footprint_covers_every_pixel_centred_inside_and_the_whole_frame(ra, dec, rotation_deg):
    corner_ra, corner_dec = detector_corners(ra, dec, rotation_deg)
    ranges = sky.footprint_ranges(corner_ra, corner_dec)
    depth = sky.FOOTPRINT_DEPTH

    vertices = healpy.ang2vec(corner_ra, corner_dec, lonlat=True)
    inside = healpy.query_polygon(2**depth, vertices, inclusive=False, nest=True)
    shift = 2 * (29 - depth)

    assert len(inside) > 100
    assert np.all(contains(ranges, inside << shift)) and np.all(contains(ranges, ((inside + 1) << shift) - 1))
    # Points spread over the whole detector, corners included, are all in the footprint.
    x, y = np.meshgrid(np.linspace(-0.5, DETECTOR_PIXELS - 0.5, 41), np.linspace(-0.5, DETECTOR_PIXELS - 0.5, 41))
    grid_ra, grid_dec = detector_wcs(ra, dec, rotation_deg).all_pix2world(x.ravel(), y.ravel(), 0)
    assert np.all(contains(ranges, sky.hpx29(grid_ra, grid_dec)))


def test_footprint_depth_is_explicit():
    corner_ra, corner_dec = detector_corners(150.0, 2.0, 0.0)

    coarse = sky.footprint_ranges(corner_ra, corner_dec, depth=8)

    assert np.all(coarse % (1 << 2 * (29 - 8)) == 0)
    with pytest.raises(ValueError, match="depth"):
        sky.footprint_ranges(corner_ra, corner_dec, depth=30)


def random_points_in_cone(rng, ra, dec, radius_deg, n=20_000):
    """Uniform random positions within a cone, a tenth of them exactly on its edge."""
    centre = SkyCoord(ra * u.deg, dec * u.deg)
    separation = radius_deg * np.sqrt(rng.uniform(0, 1, n))
    separation[: n // 10] = radius_deg
    points = centre.directional_offset_by(rng.uniform(0, 360, n) * u.deg, separation * u.deg)
    return points.ra.deg, points.dec.deg


@pytest.mark.parametrize(
    ("ra", "dec", "radius_deg"),
    [
        (10.0, 20.0, 0.1),
        (0.001, 5.0, 1.0),
        (120.0, 89.9, 0.5),
        (300.0, -89.95, 0.2),
        (200.0, -60.0, 30.0),
        (30.0, 0.0, 1e-5),
    ],
)
def test_cone_ranges_cover_every_point_of_the_cone(ra, dec, radius_deg):
    rng = np.random.default_rng(1)
    point_ra, point_dec = random_points_in_cone(rng, ra, dec, radius_deg)
    within = sky.angular_separation_deg(ra, dec, point_ra, point_dec) <= radius_deg

    ranges = sky.cone_ranges(ra, dec, radius_deg)

    assert_sorted_and_merged(ranges)
    assert within.sum() > 15_000
    assert np.all(contains(ranges, sky.hpx29(point_ra[within], point_dec[within])))
    assert contains(ranges, np.array([sky.hpx29(ra, dec)]))[0]
    # The cover stays small whatever the radius.
    assert len(ranges) < 200
    assert (ranges[:, 1] - ranges[:, 0]).sum() * healpy.nside2pixarea(2**29, degrees=True) < 20 * np.pi * radius_deg**2


def test_cone_ranges_of_a_point_and_of_the_whole_sky():
    assert contains(sky.cone_ranges(10.0, 20.0, 0.0), np.array([sky.hpx29(10.0, 20.0)]))[0]
    np.testing.assert_array_equal(sky.cone_ranges(10.0, 20.0, 180.0), [[0, 12 * 4**29]])
    with pytest.raises(ValueError, match="radius"):
        sky.cone_ranges(10.0, 20.0, -1.0)


def test_angular_separation_agrees_with_astropy_at_every_scale():
    rng = np.random.default_rng(2)
    ra1, dec1 = rng.uniform(0, 360, 500), np.degrees(np.arcsin(rng.uniform(-1, 1, 500)))
    offsets = 10.0 ** rng.uniform(-9, 2.2, 500)
    first = SkyCoord(ra1 * u.deg, dec1 * u.deg)
    second = first.directional_offset_by(rng.uniform(0, 360, 500) * u.deg, offsets * u.deg)

    separation = sky.angular_separation_deg(ra1, dec1, second.ra.deg, second.dec.deg)

    expected = first.separation(second).deg
    np.testing.assert_allclose(separation, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(separation, offsets, rtol=1e-6, atol=1e-13)
    assert sky.angular_separation_deg(0.0, 0.0, 180.0, 0.0) == 180.0
    assert sky.angular_separation_deg(359.9999999, 0.0, 0.0000001, 0.0) == pytest.approx(2e-7, rel=1e-6)


@pytest.mark.parametrize(("ra", "dec", "rotation_deg"), FRAMES)
def test_polygon_contains_agrees_with_the_frame_pixel_grid(ra, dec, rotation_deg):
    rng = np.random.default_rng(3)
    wcs = detector_wcs(ra, dec, rotation_deg)
    corner_ra, corner_dec = detector_corners(ra, dec, rotation_deg)
    # Random positions over twice the detector's width; a TAN projection maps the great-circle
    # edges to the straight pixel-grid edges, so the pixel box is the exact answer.
    x, y = rng.uniform(-0.5 * DETECTOR_PIXELS, 1.5 * DETECTOR_PIXELS, (2, 5000))
    point_ra, point_dec = wcs.all_pix2world(x, y, 0)
    lower, upper = -0.5, DETECTOR_PIXELS - 0.5
    expected = (x >= lower) & (x <= upper) & (y >= lower) & (y <= upper)

    inside = sky.polygon_contains(corner_ra, corner_dec, point_ra, point_dec)

    clear_of_edges = np.minimum.reduce([abs(x - lower), abs(x - upper), abs(y - lower), abs(y - upper)]) > 1e-3
    assert 500 < expected.sum() < 4500
    np.testing.assert_array_equal(inside[clear_of_edges], expected[clear_of_edges])
    np.testing.assert_array_equal(sky.polygon_contains(corner_ra[::-1], corner_dec[::-1], point_ra, point_dec), inside)
    assert np.all(sky.polygon_contains(corner_ra, corner_dec, corner_ra, corner_dec))
    assert sky.polygon_contains(corner_ra, corner_dec, *wcs.all_pix2world(4607.5, 4607.5, 0)) is True


@pytest.mark.parametrize(("ra", "dec", "rotation_deg"), FRAMES)
def test_circumradius_is_the_largest_centre_to_corner_distance(ra, dec, rotation_deg):
    corner_ra, corner_dec = detector_corners(ra, dec, rotation_deg)
    centre = SkyCoord(ra * u.deg, dec * u.deg)

    radius = sky.circumradius_deg(ra, dec, corner_ra, corner_dec)

    corners = SkyCoord(corner_ra * u.deg, corner_dec * u.deg)
    assert radius == pytest.approx(centre.separation(corners).deg.max(), rel=1e-9)
    # Gnomonic projection: the half-diagonal on the tangent plane is tan(radius).
    assert radius == pytest.approx(np.degrees(np.arctan(np.radians(DETECTOR_WIDTH_DEG / np.sqrt(2)))), rel=1e-9)

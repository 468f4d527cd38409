"""Physics of the image simulator: depths, star counts, labels, flux, noise, saturation, determinism."""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS

from density_db.errors import ConfigurationError
from density_db.focal_plane import DETECTOR_HEIGHT_DEG, DETECTOR_WIDTH_DEG, PIXEL_SCALE_ARCSEC
from density_db.labels import BRIGHT_MAGNITUDE_LIMIT, CATALOG_STARS, DETECTABLE_STARS, LABEL_RULE, density_class
from density_db.simulate.catalog import TruthCatalog, draw_catalog
from density_db.simulate.fields import (
    DETECTOR_AREA_DEG2,
    FIELD_STARS,
    GALAXIES,
    GALAXY_DENSITY_PER_DEG2,
    GALAXY_MEAN_R_MINUS_I,
    NAMED_FIELDS,
    band_magnitude,
    expected_stars,
    field_by_name,
    galaxies_brighter_than,
)
from density_db.simulate.photometry import (
    BANDS,
    GAIN,
    READ_NOISE_E,
    background_electrons,
    electrons,
    point_source_depth,
)
from density_db.simulate.published import STAR_COUNTS, lsst_galaxy_counts, lsst_star_model
from density_db.simulate.render import QUALITY_BAD_COLUMN, QUALITY_NAN_PATCH, QUALITY_SATURATED, render_detector

SMALL_SHAPE = (200, 256)
"""(ny, nx): small and not square, so a swapped axis shows."""


def native_wcs(ra: float, dec: float, shape: tuple[int, int]) -> WCS:
    """TAN WCS of a cutout with the detector's own 0.074" pixels."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [(shape[1] + 1) / 2, (shape[0] + 1) / 2]
    scale = PIXEL_SCALE_ARCSEC / 3600
    wcs.wcs.cd = [[-scale, 0.0], [0.0, scale]]
    return wcs


def detector_wcs(ra: float, dec: float, shape: tuple[int, int] = SMALL_SHAPE) -> WCS:
    """WCS of a whole detector's sky area (11.4'), centred on (ra, dec), sampled by ``shape`` pixels."""
    wcs = native_wcs(ra, dec, shape)
    wcs.wcs.cd = [[-DETECTOR_WIDTH_DEG / shape[1], 0.0], [0.0, DETECTOR_HEIGHT_DEG / shape[0]]]
    return wcs


def star_catalog(band: str, x: np.ndarray, y: np.ndarray, mag: np.ndarray) -> TruthCatalog:
    """Stars only, at chosen pixel positions and magnitudes."""
    nan = np.full(len(x), np.nan)
    return TruthCatalog(
        band=band,
        label_rule=LABEL_RULE,
        counting_limit=point_source_depth(band),
        unresolved_mag_arcsec2=np.inf,
        ra=nan,
        dec=nan,
        x=x,
        y=y,
        mag=mag,
        obj_type=np.full(len(x), "star"),
        half_light_px=nan,
        axis_ratio=nan,
        position_angle_deg=nan,
        sersic_n=nan,
    )


def empty_catalog(band: str) -> TruthCatalog:
    return star_catalog(band, np.array([]), np.array([]), np.array([]))


def test_point_source_depths_are_csst_like():
    for band in BANDS:
        depth = point_source_depth(band)
        low, high = (25.7, 26.3) if band in ("g", "r") else (24.5, 26.5)
        assert low <= depth <= high, (band, depth)
    assert point_source_depth("g", sigma=10) < point_source_depth("g")
    assert point_source_depth("g", exposure_seconds=600) > point_source_depth("g") + 0.5


@pytest.mark.parametrize("name", list(NAMED_FIELDS))
@pytest.mark.parametrize("band", ["g", "r", "i", "z", "y"])  # the paper's bands but u (see docs/simulation.md)
def test_named_field_detectable_counts_fall_in_table_1_range(name, band):
    field = field_by_name(name)
    ra, dec = field.sample_positions(np.random.default_rng(1), 500)
    counts = expected_stars(ra, dec, DETECTOR_AREA_DEG2, field=field, band=band, brighter_than=point_source_depth(band))
    low, high = field.stellar_density_range
    assert low <= counts.min() and counts.max() <= high, (counts.min(), counts.max())


def stars_per_deg2(l_deg: float, b_deg: float, band: str, brighter_than: float) -> float:
    """The sky model's field stars brighter than a magnitude, per deg^2, at Galactic (l, b)."""
    position = SkyCoord(l=l_deg * u.deg, b=b_deg * u.deg, frame="galactic").icrs
    return expected_stars(position.ra.deg, position.dec.deg, 1.0, band=band, brighter_than=brighter_than)


def test_star_counts_match_published_counts_within_a_factor_1_5():
    """Published counts in the band they were measured in (density_db/simulate/published.py has the sources).

    SDSS at 49 < |b| < 64 (g < 21) and the Hubble Ultra Deep Field (i < 27.5); the LSST star model at
    i < 23.5, 26 and 28, at the pole, b = 50 and b = 20 (l = 90).  At i < 21 that model counts twice what
    SDSS counted; the SDSS counts win, so there the simulator sits at about half of it.
    """
    for published in STAR_COUNTS:
        model = np.mean(
            [
                stars_per_deg2(l_deg, b_deg, published.band, published.brighter_than)
                for l_deg, b_deg in published.positions
            ]
        )
        assert 1 / 1.5 < model / published.per_deg2 < 1.5, published.source
    for b_deg in (90, 50, 20):
        for i_magnitude in (23.5, 26.0, 28.0):
            ratio = stars_per_deg2(90, b_deg, "i", i_magnitude) / lsst_star_model(i_magnitude, b_deg)
            assert 1 / 1.5 < ratio < 1.5, (b_deg, i_magnitude, ratio)
        assert 0.4 < stars_per_deg2(90, b_deg, "i", 21.0) / lsst_star_model(21.0, b_deg) < 0.7
    # The r band, from the same model: stars per detector brighter than 23.5 at (90, 50), and the share of
    # the stars to 28 mag that bright (LSST star model with eq. 3.7 galaxies: 180-400 and 0.55-0.75).
    assert 180 < stars_per_deg2(90, 50, "r", 23.5) * DETECTOR_AREA_DEG2 < 400
    for b_deg in (90, 50, 20):
        assert 0.55 < stars_per_deg2(90, b_deg, "r", 23.5) / stars_per_deg2(90, b_deg, "r", 28.0) < 0.75


def test_galaxy_counts_follow_lsst_eq_3_7_and_flatten_beyond():
    """N(< i) = 46 x 10^(0.31 (i - 25)) arcmin^-2 to i = 25.5, slope 0.26 fainter (Marin-Franch & Aparicio 2003)."""
    for i_magnitude in (21.0, 23.5, 26.0):  # drawn one by one
        per_deg2 = GALAXY_DENSITY_PER_DEG2 * GALAXIES.brighter_fraction("i", i_magnitude, 0.0)
        assert 1 / 1.5 < per_deg2 / lsst_galaxy_counts(i_magnitude) < 1.5, i_magnitude
    # to 28 mag, with the galaxies fainter than the render limit that are smooth light
    assert 1 / 1.5 < galaxies_brighter_than(28.0 + GALAXY_MEAN_R_MINUS_I) / lsst_galaxy_counts(28.0) < 1.5
    catalog = draw_catalog(detector_wcs(231.5, 56.0), SMALL_SHAPE, "i", np.random.default_rng(11))
    galaxies = catalog.mag[~catalog.is_star]
    assert np.count_nonzero(galaxies < 23.5) == pytest.approx(lsst_galaxy_counts(23.5) * DETECTOR_AREA_DEG2, rel=0.2)
    assert np.isfinite(catalog.unresolved_mag_arcsec2) and catalog.unresolved_mag_arcsec2 > 29


def test_counts_fall_with_latitude_and_vary_across_crowded_boxes():
    rng = np.random.default_rng(2)
    mean_counts = [
        expected_stars(*field_by_name(name).sample_positions(rng, 200), DETECTOR_AREA_DEG2).mean()
        for name in ("galactic_l90_b20", "galactic_l90_b30", "galactic_l90_b50")
    ]
    assert mean_counts[0] > mean_counts[1] > mean_counts[2]
    for name, min_ratio in (("fornax", 2.5), ("sculptor", 1.2), ("galactic_centre", 4.0)):
        field = field_by_name(name)
        counts = expected_stars(
            *field.sample_positions(rng, 500), DETECTOR_AREA_DEG2, field=field, brighter_than=point_source_depth("r")
        )
        assert counts.max() / counts.min() > min_ratio, name


def test_unknown_field_error_lists_the_names():
    with pytest.raises(ConfigurationError, match="fornax.*galactic_centre"):
        field_by_name("fornx")


def test_catalog_counts_are_poisson_around_the_model():
    field = field_by_name("galactic_l90_b50")
    rng = np.random.default_rng(3)
    ra, dec = 231.5, 56.0
    wcs = detector_wcs(ra, dec)
    expected = expected_stars(ra, dec, DETECTOR_AREA_DEG2, field=field)
    counts = [
        draw_catalog(wcs, SMALL_SHAPE, "r", rng, field=field, include_galaxies=False).star_count for _ in range(40)
    ]
    assert abs(np.mean(counts) - expected) < 4 * np.sqrt(expected / 40) + 0.01 * expected
    assert np.var(counts) == pytest.approx(expected, rel=0.6)


def test_dwarf_members_crowd_towards_the_galaxy_centre():
    rng = np.random.default_rng(4)
    fornax = field_by_name("fornax")
    centre = draw_catalog(detector_wcs(39.997, -34.449), SMALL_SHAPE, "g", rng, field=fornax, include_galaxies=False)
    outskirts = draw_catalog(detector_wcs(41.3, -35.6), SMALL_SHAPE, "g", rng, field=fornax, include_galaxies=False)
    assert centre.star_count > 5 * outskirts.star_count
    # a detector 15' from the centre: the Plummer profile makes the half facing the galaxy
    # about 1.7 times as crowded as the other (field stars included)
    wcs = detector_wcs(39.997 + 0.25 / np.cos(np.radians(34.449)), -34.449)
    offset = draw_catalog(wcs, SMALL_SHAPE, "g", rng, field=fornax, include_galaxies=False)
    image_centre = wcs.wcs.crpix - 1
    towards_galaxy = np.subtract(wcs.world_to_pixel_values(39.997, -34.449), image_centre)
    facing = (np.column_stack([offset.x, offset.y]) - image_centre) @ towards_galaxy > 0
    assert np.count_nonzero(facing) > 1.3 * np.count_nonzero(~facing)


@pytest.mark.parametrize("counted", [0, 1, 99, 100, 999, 1_000, 12_345, 100_000])
def test_detectable_count_is_exact_and_the_fainter_stars_come_with_it(counted):
    rng = np.random.default_rng(counted)
    catalog = draw_catalog(detector_wcs(245.0, 40.0), SMALL_SHAPE, "i", rng, counted=counted)
    stars = catalog.obj_type == "star"
    depth = point_source_depth("i")
    assert catalog.label_rule == DETECTABLE_STARS.name and catalog.counting_limit == pytest.approx(depth)
    assert catalog.counted_star_count == np.count_nonzero(stars & (catalog.mag < depth)) == counted
    assert catalog.density_class == density_class(counted)
    assert catalog.bright_star_count == np.count_nonzero(stars & (catalog.mag < BRIGHT_MAGNITUDE_LIMIT))
    # the stars below the depth stay in the catalog, about 1 for 6 detectable ones in i (see fields.py)
    if counted >= 999:
        assert 0.08 < (catalog.star_count - counted) / counted < 0.3
    assert np.count_nonzero(~stars) > 10_000  # galaxies: about 17 900 per detector to r = 27
    ny, nx = SMALL_SHAPE
    assert np.all((catalog.x >= -0.5) & (catalog.x < nx - 0.5) & (catalog.y >= -0.5) & (catalog.y < ny - 0.5))
    assert np.all(np.isnan(catalog.sersic_n[stars])) and np.all(np.isfinite(catalog.sersic_n[~stars]))


@pytest.mark.parametrize("counted", [0, 150, 20_000])
def test_the_papers_rule_counts_every_catalogued_star(counted):
    catalog = draw_catalog(
        detector_wcs(245.0, 40.0),
        SMALL_SHAPE,
        "u",
        np.random.default_rng(counted),
        counted=counted,
        rule=CATALOG_STARS.name,
        include_galaxies=False,
    )
    assert catalog.star_count == catalog.counted_star_count == counted
    assert catalog.counting_limit == np.inf
    assert catalog.density_class == density_class(counted)


def test_the_class_counts_only_stars_the_exposure_detects():
    # At b = 50 about 15 % of the stars to 28 mag are fainter than r's 5-sigma depth, and many more in NUV.
    wcs, field = detector_wcs(231.5, 56.0), field_by_name("galactic_l90_b50")
    for band in ("NUV", "r"):
        catalog = draw_catalog(wcs, SMALL_SHAPE, band, np.random.default_rng(9), field=field, include_galaxies=False)
        stars = catalog.mag[catalog.is_star]
        assert catalog.counted_star_count == np.count_nonzero(stars < point_source_depth(band))
        assert catalog.counted_star_count < catalog.star_count
        assert catalog.density_class == density_class(catalog.counted_star_count)
        expected = expected_stars(
            231.5, 56.0, DETECTOR_AREA_DEG2, field=field, band=band, brighter_than=point_source_depth(band)
        )
        assert abs(catalog.counted_star_count - expected) < 5 * np.sqrt(expected)


def test_truth_table_carries_the_labels(tmp_path):
    rng = np.random.default_rng(5)
    catalog = draw_catalog(detector_wcs(40.0, -34.4), SMALL_SHAPE, "r", rng, field=field_by_name("fornax"))
    path = tmp_path / "truth.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.table_to_hdu(catalog.to_table())]).writeto(path)
    with fits.open(path) as hdus:
        header, data = hdus["TRUTH"].header, hdus["TRUTH"].data
        assert header["NSTARS"] == catalog.star_count == np.count_nonzero(data["obj_type"] == "star")
        assert header["LBLRULE"] == "detectable-stars"
        assert header["CNTLIM"] == pytest.approx(point_source_depth("r"), abs=1e-3)
        assert header["NCOUNTED"] == catalog.counted_star_count < catalog.star_count
        assert header["NBRIGHT"] == catalog.bright_star_count
        assert header["DENSCLS"] == catalog.density_class
        assert (header["FILTER"], header["MAGLIM"]) == ("r", BRIGHT_MAGNITUDE_LIMIT)
        np.testing.assert_allclose(data["mag"], catalog.mag)


def test_band_magnitudes_differ_but_are_correlated():
    rng = np.random.default_rng(6)
    reference, colour = FIELD_STARS.sample(rng, np.zeros(5000))
    magnitudes = {band: band_magnitude(reference, colour, band) for band in BANDS}
    for first, second in (("NUV", "u"), ("u", "g"), ("g", "r"), ("r", "i"), ("i", "z"), ("z", "y")):
        assert np.all(magnitudes[first] != magnitudes[second])
        assert np.corrcoef(magnitudes[first], magnitudes[second])[0, 1] > 0.9
    # stars are fainter in the ultraviolet: fewer count as bright there
    assert np.sum(magnitudes["u"] < 23.5) < np.sum(magnitudes["r"] < 23.5)
    # the same seed draws the same stars in every band
    wcs = detector_wcs(231.5, 56.0)
    in_g = draw_catalog(wcs, SMALL_SHAPE, "g", np.random.default_rng(7), include_galaxies=False)
    in_i = draw_catalog(wcs, SMALL_SHAPE, "i", np.random.default_rng(7), include_galaxies=False)
    np.testing.assert_array_equal(in_g.x, in_i.x)
    assert np.all(in_g.mag != in_i.mag) and np.corrcoef(in_g.mag, in_i.mag)[0, 1] > 0.9


def test_image_flux_equals_catalog_flux_plus_background():
    rng = np.random.default_rng(8)
    shape = SMALL_SHAPE
    x = rng.uniform(30, shape[1] - 30, 60)
    y = rng.uniform(30, shape[0] - 30, 60)
    catalog = star_catalog("r", x, y, rng.uniform(18.5, 24.0, 60))
    image = render_detector(catalog, shape, "r", rng, defects=False)
    assert np.all(np.isfinite(image.science))
    flux_adu = electrons(catalog.mag, "r").sum() / GAIN
    noise_adu = np.sqrt(image.science.size * (background_electrons("r") + READ_NOISE_E**2) + flux_adu * GAIN) / GAIN
    residual = float(np.sum(image.science, dtype=np.float64) - image.science.size * image.sky_adu - flux_adu)
    assert abs(residual) < 5 * noise_adu, (residual, noise_adu, flux_adu)


def test_galaxy_flux_lands_on_the_image():
    rng = np.random.default_rng(9)
    nan = np.full(3, np.nan)
    catalog = TruthCatalog(
        band="g",
        label_rule=LABEL_RULE,
        counting_limit=point_source_depth("g"),
        unresolved_mag_arcsec2=np.inf,
        ra=nan,
        dec=nan,
        x=np.array([80.0, 128.0, 190.0]),
        y=np.array([100.0, 100.0, 100.0]),
        mag=np.array([19.5, 20.0, 21.0]),
        obj_type=np.full(3, "galaxy"),
        half_light_px=np.array([4.0, 2.0, 1.0]),
        axis_ratio=np.array([0.4, 0.8, 1.0]),
        position_angle_deg=np.array([30.0, 100.0, 0.0]),
        sersic_n=np.array([1.0, 4.0, 1.0]),
    )
    image = render_detector(catalog, SMALL_SHAPE, "g", rng, defects=False)
    flux_adu = electrons(catalog.mag, "g").sum() / GAIN
    noise_adu = np.sqrt(image.science.size * (background_electrons("g") + READ_NOISE_E**2) + flux_adu * GAIN) / GAIN
    residual = float(np.sum(image.science, dtype=np.float64) - image.science.size * image.sky_adu - flux_adu)
    assert abs(residual) < 5 * noise_adu


def test_background_has_the_model_level_and_noise():
    image = render_detector(empty_catalog("y"), SMALL_SHAPE, "y", np.random.default_rng(10), defects=False)
    noise_adu = np.sqrt(background_electrons("y") + READ_NOISE_E**2) / GAIN
    assert np.mean(image.science) == pytest.approx(image.sky_adu, abs=5 * noise_adu / np.sqrt(image.science.size))
    assert np.std(image.science) == pytest.approx(noise_adu, rel=0.02)


def test_saturated_and_defect_pixels_are_nan_and_flagged():
    rng = np.random.default_rng(11)
    x, y, mag = np.array([50.0, 180.0, 120.0]), np.array([60.0, 150.0, 20.0]), np.array([15.0, 16.0, 22.0])
    catalog = star_catalog("g", x, y, mag)
    image = render_detector(catalog, SMALL_SHAPE, "g", rng)
    np.testing.assert_array_equal(np.isnan(image.science), image.quality != 0)
    saturated = (image.quality & QUALITY_SATURATED) != 0
    assert saturated[60, 50] and saturated[150, 180] and not saturated[20, 120]
    assert saturated.sum() > 10
    assert image.science.dtype == np.float32 and image.quality.dtype == np.int16


def test_defects_appear_across_seeds():
    flags = set()
    for seed in range(12):
        image = render_detector(empty_catalog("r"), SMALL_SHAPE, "r", np.random.default_rng(seed))
        flags |= set(np.unique(image.quality).tolist())
    assert {QUALITY_BAD_COLUMN, QUALITY_NAN_PATCH} <= flags


def test_same_seed_gives_identical_catalog_and_image():
    def simulate(seed: int):
        rng = np.random.default_rng(seed)
        wcs = native_wcs(40.0, -34.45, SMALL_SHAPE)
        catalog = draw_catalog(wcs, SMALL_SHAPE, "r", rng, field=field_by_name("fornax"), counted=150)
        return catalog, render_detector(catalog, SMALL_SHAPE, "r", rng)

    (first_catalog, first), (second_catalog, second) = simulate(12), simulate(12)
    np.testing.assert_array_equal(first_catalog.mag, second_catalog.mag)
    np.testing.assert_array_equal(first.science, second.science)
    np.testing.assert_array_equal(first.quality, second.quality)
    assert not np.array_equal(simulate(13)[1].science, first.science, equal_nan=True)


def test_render_rejects_a_catalog_of_another_band():
    with pytest.raises(ValueError, match="band"):
        render_detector(empty_catalog("g"), SMALL_SHAPE, "r", np.random.default_rng(0))

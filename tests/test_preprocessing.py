"""The one preprocessing function against a direct float64 implementation of the paper's recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.functional import adaptive_avg_pool2d

from density_db.errors import InputError
from density_db.inference.preprocessing import preprocess, preprocess_tensor


def reference(image: np.ndarray, quality: np.ndarray | None) -> np.ndarray:
    """Sec. 2.3 literally, in float64 at full resolution: mask, standardise, stack, pool."""
    x = torch.from_numpy(image.astype(np.float64))
    valid = torch.isfinite(x)
    if quality is not None:
        valid &= torch.from_numpy(quality) == 0
    mean, std = x[valid].mean(), x[valid].std(unbiased=False)
    standardised = torch.where(valid, (x - mean) / std, torch.zeros((), dtype=torch.float64))
    return adaptive_avg_pool2d(torch.stack([standardised, valid.double()])[None], 224)[0].numpy()


def damaged_image(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    image = rng.normal(300.0, 20.0, size=shape).astype(">f4")  # FITS byte order, as astropy gives it
    image[rng.random(shape) < 0.02] = np.nan
    image[:, 7] = np.inf
    stars = rng.integers(0, shape, size=(40, 2))
    image[stars[:, 0], stars[:, 1]] += 5e4
    quality = (rng.random(shape) < 0.01).astype(np.int16)
    return image, quality


@pytest.mark.parametrize("shape", [(224, 224), (463, 450), (1000, 1031), (2311, 2308)])
def test_cpu_and_tensor_paths_match_the_reference(shape: tuple[int, int]) -> None:
    image, quality = damaged_image(np.random.default_rng(sum(shape)), shape)
    expected = reference(image, quality)
    cpu, statistics = preprocess(image, quality)
    tensor, tensor_statistics = preprocess_tensor(torch.from_numpy(image.astype(np.float32)), torch.from_numpy(quality))
    assert cpu.shape == (2, 224, 224) and cpu.dtype == np.float32
    np.testing.assert_allclose(cpu, expected, atol=2e-6)
    np.testing.assert_allclose(tensor.numpy(), expected, atol=2e-6)
    assert statistics.valid_count == tensor_statistics.valid_count
    # the CPU path centres pixels in float32 first: agreement to the precision of float32 data
    assert statistics.mean == pytest.approx(tensor_statistics.mean, rel=1e-8)
    assert statistics.std == pytest.approx(tensor_statistics.std, rel=1e-6)


def test_without_quality_mask_only_non_finite_pixels_are_invalid() -> None:
    image, _ = damaged_image(np.random.default_rng(3), (500, 520))
    cpu, statistics = preprocess(image)
    np.testing.assert_allclose(cpu, reference(image, None), atol=2e-6)
    assert statistics.valid_count == np.isfinite(image).sum()


def test_a_single_star_survives_the_41x_reduction() -> None:
    image = np.full((9216 // 4, 9232 // 4), 100.0, dtype=np.float32)
    image[1000, 1500] += 1e5  # one bright pixel: point sampling would miss it
    tensor, _ = preprocess(image)
    assert tensor[0].max() > 10 * np.abs(np.delete(tensor[0].ravel(), tensor[0].argmax())).max()


def test_constant_image_gives_zeros_and_all_invalid_is_an_input_error() -> None:
    tensor, statistics = preprocess(np.full((300, 300), 7.0, dtype=np.float32))
    assert statistics.std == 1.0
    np.testing.assert_array_equal(tensor[0], 0.0)
    np.testing.assert_array_equal(tensor[1], 1.0)
    with pytest.raises(InputError) as raised:
        preprocess(np.full((300, 300), np.nan, dtype=np.float32))
    assert raised.value.kind == "all_invalid"
    with pytest.raises(InputError) as raised:
        preprocess(np.zeros((10, 10, 3), dtype=np.float32))
    assert raised.value.kind == "not_2d"


def test_input_errors_cross_process_boundaries() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(InputError("all_invalid", "no valid pixel")))
    assert (error.kind, str(error)) == ("all_invalid", "no valid pixel")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_path_agrees_with_the_cpu_path() -> None:
    image, quality = damaged_image(np.random.default_rng(11), (2311, 2308))
    cpu, statistics = preprocess(image, quality)
    on_gpu, gpu_statistics = preprocess_tensor(
        torch.from_numpy(image.astype(np.float32)).cuda(), torch.from_numpy(quality).cuda()
    )
    np.testing.assert_allclose(on_gpu.cpu().numpy(), cpu, atol=1e-5)
    assert gpu_statistics.valid_count == statistics.valid_count
    assert gpu_statistics.std == pytest.approx(statistics.std, rel=1e-6)


# -- version 2: point-source channels ----------------------------------------------------------------


def simulated_cutout(band: str, shape: tuple[int, int], sources: dict, seed: int):
    """A rendered image of chosen stars and galaxies (pixel x, y, magnitude; galaxy half-light radius)."""
    from density_db.labels import LABEL_RULE
    from density_db.simulate.catalog import TruthCatalog
    from density_db.simulate.render import render_detector

    stars, galaxies = sources.get("stars", []), sources.get("galaxies", [])
    count = len(stars) + len(galaxies)
    column = lambda values: np.array(values, dtype=np.float64)  # noqa: E731
    catalog = TruthCatalog(
        band=band,
        label_rule=LABEL_RULE,
        counting_limit=25.0,
        unresolved_mag_arcsec2=np.inf,
        ra=np.zeros(count),
        dec=np.zeros(count),
        x=column([s[0] for s in stars] + [g[0] for g in galaxies]),
        y=column([s[1] for s in stars] + [g[1] for g in galaxies]),
        mag=column([s[2] for s in stars] + [g[2] for g in galaxies]),
        obj_type=np.array(["star"] * len(stars) + ["galaxy"] * len(galaxies)),
        half_light_px=column([np.nan] * len(stars) + [g[3] for g in galaxies]),
        axis_ratio=column([np.nan] * len(stars) + [0.7] * len(galaxies)),
        position_angle_deg=column([np.nan] * len(stars) + [30.0] * len(galaxies)),
        sersic_n=column([np.nan] * len(stars) + [1.0] * len(galaxies)),
    )
    return render_detector(catalog, shape, band, np.random.default_rng(seed), defects=False)


def calibration_of(band: str):
    from density_db.inference.point_sources import Calibration
    from density_db.simulate.photometry import EXPOSURE_SECONDS, band_photometry

    photometry = band_photometry(band)
    return Calibration(photometry.zero_point, EXPOSURE_SECONDS, photometry.fwhm_px, photometry.moffat_beta)


def test_version_2_counts_stars_and_saturated_cores_but_not_galaxies_or_cosmic_rays() -> None:
    from density_db.simulate.render import QUALITY_SATURATED

    stars = [
        (100 + 90 * (k % 6), 100 + 120 * (k // 6), magnitude)
        for k, magnitude in enumerate([19, 20, 21, 22, 22.5, 23, 23.3, 23.7, 24, 24.5, 24.8, 25.0])
    ]
    galaxies = [(145 + 90 * (k % 6), 160 + 120 * (k // 6), 20.5 + 0.3 * k, 6.0) for k in range(12)]
    saturated_star = [(400, 560, 14.0)]  # its core saturates: NaN, flagged in DQ
    image = simulated_cutout("r", (700, 720), {"stars": stars + saturated_star, "galaxies": galaxies}, seed=1)
    science, quality = image.science.copy(), image.quality
    assert (quality & QUALITY_SATURATED).any()
    science[650, 100] += 3000.0  # cosmic rays and hot pixels: sharper than any star
    science[50, 600] += 800.0
    tensor, _ = preprocess(
        science, quality, version=2, calibration=calibration_of("r"), saturated_bits=QUALITY_SATURATED
    )
    assert tensor.shape == (4, 224, 224) and tensor.dtype == np.float32
    # Counts per bin overlap by a pixel where bins share one; the cells give the exact totals.
    from density_db.inference.point_sources import count_point_sources
    from density_db.pooling import CellGrid

    counts = count_point_sources(
        science, quality, CellGrid.for_shape(science.shape), calibration_of("r"), saturated_bits=QUALITY_SATURATED
    )
    assert counts.point_like.sum() == len(stars) + 1  # every star to 25 mag is at S/N > 7 in r
    assert counts.bright.sum() == sum(magnitude < 23.5 for _, _, magnitude in stars) + 1
    assert tensor[2].sum() >= counts.point_like.sum() and tensor[3].sum() >= counts.bright.sum()
    # version 1's channels are unchanged by version 2
    np.testing.assert_array_equal(tensor[:2], preprocess(science, quality)[0])


def test_saturated_blobs_count_once_each_whatever_their_shape_and_place() -> None:
    from density_db.inference.point_sources import count_point_sources
    from density_db.pooling import CellGrid

    shape = (700, 650)
    science = np.random.default_rng(2).normal(100.0, 5.0, size=shape).astype(np.float32)
    quality = np.zeros(shape, dtype=np.int16)
    blobs = [
        (slice(0, 3), slice(0, 4)),  # in a corner
        (slice(250, 262), slice(300, 305)),  # across the first row block's end (256)
        (slice(100, 101), slice(640, 650)),  # at the right edge
        (slice(690, 700), slice(20, 22)),  # at the bottom
    ]
    for rows, columns in blobs:
        quality[rows, columns] = 1
    quality[400:410, 400] = 1  # an L shape: one blob
    quality[409, 400:408] = 1
    quality[500, 500] = quality[501, 501] = 1  # touching diagonally: one 8-connected blob
    quality[600:605, 100] = 2  # a bad column: other bits, not saturated
    science[quality != 0] = np.nan
    counts = count_point_sources(science, quality, CellGrid.for_shape(shape), calibration_of("g"), saturated_bits=1)
    assert counts.point_like.sum() == counts.bright.sum() == len(blobs) + 2


@pytest.mark.parametrize(
    "device",
    [
        "cpu",  # torch's CPU device runs the same code as CUDA
        pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")),
    ],
)
def test_version_2_cpu_and_torch_paths_find_the_same_sources(device: str) -> None:
    """A crowded, damaged cut-out (Fornax's centre, galaxies, saturated stars, bad columns): identical counts."""
    from astropy.wcs import WCS

    from density_db.focal_plane import detector_wcs_header
    from density_db.simulate.catalog import draw_catalog
    from density_db.simulate.fields import field_by_name
    from density_db.simulate.render import QUALITY_SATURATED, render_detector

    shape = (1200, 1100)
    rng = np.random.default_rng(5)
    wcs = WCS(detector_wcs_header(13, ra=39.997, dec=-34.449, shape=shape))
    catalog = draw_catalog(wcs, shape, "g", rng, field=field_by_name("fornax"))
    image = render_detector(catalog, shape, "g", rng)
    options = {"version": 2, "calibration": calibration_of("g"), "saturated_bits": QUALITY_SATURATED}
    cpu, _ = preprocess(image.science, image.quality, **options)
    on_device, _ = preprocess_tensor(
        torch.from_numpy(image.science).to(device), torch.from_numpy(image.quality).to(device), **options
    )
    assert cpu[2].sum() > 10  # the test image holds point-like sources (about 20)
    np.testing.assert_array_equal(on_device[2:].cpu().numpy(), cpu[2:])
    np.testing.assert_allclose(on_device[:2].cpu().numpy(), cpu[:2], atol=1e-5)  # float32 standardising


def test_version_2_needs_a_calibration_and_versions_are_known() -> None:
    image = np.ones((300, 300), dtype=np.float32)
    with pytest.raises(ValueError, match="needs the image's calibration"):
        preprocess(image, version=2)
    with pytest.raises(ValueError, match="version must be one of"):
        preprocess(image, version=3)


@pytest.mark.parametrize("band", ["u", "r", "y"])
def test_a_missing_fwhm_is_measured_on_the_stars_among_galaxies_and_a_cosmic_ray(band) -> None:
    """The stellar locus, not the galaxies beside it nor a hot pixel, gives the band's PSF width (within 6 %)."""
    from density_db.inference.psf import measure_fwhm
    from density_db.simulate.photometry import band_photometry

    rng = np.random.default_rng(4)
    stars = [(x, y, m) for x, y, m in zip(rng.uniform(20, 880, 40), rng.uniform(20, 880, 40), rng.uniform(18, 22, 40))]
    galaxies = [
        (x, y, m, r)
        for x, y, m, r in zip(
            rng.uniform(20, 880, 40), rng.uniform(20, 880, 40), rng.uniform(18, 21, 40), rng.uniform(2, 6, 40)
        )
    ]
    image = simulated_cutout(band, (900, 900), {"stars": stars, "galaxies": galaxies}, seed=2)
    science = image.science.copy()
    science[450, 450] += 5000.0
    measured = measure_fwhm(science, image.quality, moffat_beta=3.0)
    assert measured == pytest.approx(band_photometry(band).fwhm_px, rel=0.06)
    assert measure_fwhm(image.science[:, :40], None, moffat_beta=3.0) is None  # a strip with too few stars

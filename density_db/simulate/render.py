"""Render a truth catalog into a calibrated CSST-like detector image.

Model, in electrons per pixel of 0.074" (the catalog's pixels must be the
detector's own):

1. Expected electrons: sky + dark (:mod:`photometry`), the smooth light
   of galaxies too faint to be drawn (the catalog's
   ``unresolved_mag_arcsec2``), plus every source.
   Stars are the band's Moffat PSF sampled at pixel centres on a square
   stamp whose half-size grows with brightness until the profile drops
   below ``WING_ELECTRONS`` (0.5 e-, a tenth of the read noise): 3-4 px
   for the faintest stars, about 20 px for a 15 mag star.  Galaxies are
   Sersic profiles (elliptical radius softened by half a pixel, a cheap
   stand-in for integrating the cusp over the pixel) on stamps reaching
   4 half-light radii, or less where the profile falls below
   ``WING_ELECTRONS`` first, plus the PSF, convolved with the PSF by FFT.  Every
   stamp is normalised to the source's catalog flux, so the truncated
   wing (a few per cent for the faintest stars, whose wings are far below
   the noise; 1e-4 for the brightest) stays on the image and the image's
   flux equals the catalog's for sources away from the edges; stamps are
   clipped at the image edges.
2. Noise: normal with the variance of Poisson noise plus read noise,
   ``N(lambda, lambda + READ_NOISE_E^2)``, independent per pixel.  With
   5.2 e- of read noise the exact Poisson-plus-Gaussian sum has a skewness
   of at most 0.074 (at lambda = 54 e-), so the approximation is good at
   every level and is three times faster than drawing Poisson deviates.
   It is drawn per preprocessing cell first, then per pixel given the cell
   totals (:mod:`noise`), which is the same distribution and lets
   :func:`render_model_input` stop at the cells.
3. Calibration as for CSST's calibrated images: the dark level is
   subtracted (bias is not simulated), the sky stays in, the result is in
   ADU (``GAIN``).
4. Saturation: pixels whose expected electrons exceed ``FULL_WELL_E`` are
   NaN (no charge bleeding is simulated).
5. Defects (drawn before the noise): on average ``BAD_COLUMNS_MEAN`` bad columns, each from a
   random row to the top (a charge trap spoils every pixel clocked
   through it), and ``NAN_PATCHES_MEAN`` rectangular NaN patches of
   0.2-1.5 % of the image's side (a few tens of pixels on a full
   detector), both Poisson in number.

``quality`` records why a pixel is NaN: bit values ``QUALITY_SATURATED``
(1), ``QUALITY_BAD_COLUMN`` (2) and ``QUALITY_NAN_PATCH`` (4).

Memory: the image is built in place in one float32 array, noise is added
in blocks of rows and stamps are added in chunks, so a full-size detector
peaks at about 0.8 GB whatever the number of sources.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from density_db.errors import InputError
from density_db.focal_plane import PIXEL_SCALE_ARCSEC
from density_db.inference.point_sources import count_point_sources
from density_db.inference.preprocessing import model_input, point_source_channels
from density_db.labels import INPUT_SIZE
from density_db.pooling import CellGrid, PixelStatistics
from density_db.simulate.catalog import TruthCatalog
from density_db.simulate.noise import CellNoise
from density_db.simulate.photometry import (
    EXPOSURE_SECONDS,
    FULL_WELL_E,
    GAIN,
    BandPhotometry,
    background_electrons,
    band_photometry,
    electrons,
    image_calibration,
)

QUALITY_SATURATED = 1
QUALITY_BAD_COLUMN = 2
QUALITY_NAN_PATCH = 4

WING_ELECTRONS = 0.5
"""A star's stamp ends where its profile falls below this many electrons per pixel."""
MIN_STAMP_RADIUS = 3
MAX_STAMP_RADIUS = 64
GALAXY_STAMP_SIZES = (16, 32, 64, 128)
"""FFT-friendly galaxy stamp sides; a galaxy takes the smallest that holds it."""
BAD_COLUMNS_MEAN = 2.0
NAN_PATCHES_MEAN = 1.0

_GALAXY_COLUMNS = ("x", "y", "half_light_px", "axis_ratio", "position_angle_deg", "sersic_n")
_CHUNK_PIXELS = 2_000_000
"""Stamp pixels handled at once: bounds the temporaries (about 60 MB)."""


@dataclass(frozen=True)
class RenderedImage:
    """A simulated calibrated detector image.

    Attributes
    ----------
    science : numpy.ndarray
        float32 image in ADU, sky included, NaN where ``quality`` is non-zero.
    quality : numpy.ndarray
        int16 bit mask: 1 saturated, 2 bad column, 4 NaN patch.
    sky_adu : float
        Sky level present in ``science``.
    band : str
        The image's band.
    exposure_seconds : float
        Exposure time.
    """

    science: np.ndarray
    quality: np.ndarray
    sky_adu: float
    band: str
    exposure_seconds: float


def render_detector(
    catalog: TruthCatalog,
    shape: tuple[int, int],
    band: str,
    rng: np.random.Generator,
    *,
    exposure_seconds: float = EXPOSURE_SECONDS,
    defects: bool = True,
) -> RenderedImage:
    """Render ``catalog`` into a noisy calibrated image of ``shape`` (ny, nx).

    Parameters
    ----------
    catalog : TruthCatalog
        Sources; pixel coordinates and galaxy sizes in 0.074" pixels.
    shape : tuple of int
        ``(ny, nx)`` of the image.
    band : str
        The image's band; must be the catalog's.
    rng : numpy.random.Generator
        Source of noise and defects; the same seed gives the same image.
    exposure_seconds : float
        Exposure time.
    defects : bool
        Add bad columns and NaN patches.

    Raises
    ------
    ValueError
        If ``band`` is not the catalog's band.
    """
    expected, quality = _expected_electrons(catalog, shape, band, rng, exposure_seconds, defects)
    noise = CellNoise.draw(expected, quality, CellGrid.for_shape(shape), rng)
    noise.observe(expected, quality, rng, exposure_seconds)
    sky_adu = band_photometry(band).sky_e_per_s * exposure_seconds / GAIN
    return RenderedImage(expected, quality, sky_adu, band, exposure_seconds)


def render_model_input(
    catalog: TruthCatalog,
    shape: tuple[int, int],
    band: str,
    rng: np.random.Generator,
    *,
    exposure_seconds: float = EXPOSURE_SECONDS,
    defects: bool = True,
    device: str | None = None,
    version: int = 1,
) -> tuple[np.ndarray, PixelStatistics]:
    """The model input of the image :func:`render_detector` would make, without writing it.

    Same sources, defects and cell noise totals from the same random
    stream.  The paper's two channels (``version=1``) need no per-pixel
    noise, which pooling would average away: it is never drawn, and the
    tensor equals preprocessing the rendered image to the precision of the
    standard deviation (see :mod:`noise`), for a fraction of the time.

    Version 2's point-source channels are counted on the pixels, so their
    noise is drawn (stage 2, the same stream as :func:`render_detector`) and
    the counts are those of preprocessing the rendered image, exactly; the
    first two channels are still made from the cells.

    ``device`` (a torch device such as ``"cuda"``) puts the full-size work --
    the image, the stamps, the per-cell sums -- on that device; every random
    draw stays in NumPy, so the result is the same as without it (version 2
    draws the pixel noise and counts on the host).

    Raises
    ------
    InputError
        ``too_small`` for an image smaller than the model input, ``all_invalid`` when no pixel is valid.
    """
    if min(shape) < INPUT_SIZE:
        raise InputError("too_small", f"image {shape} is smaller than the {INPUT_SIZE} x {INPUT_SIZE} model input")
    grid = CellGrid.for_shape(shape)
    if device is None:
        expected, quality = _expected_electrons(
            catalog, shape, band, rng, exposure_seconds, defects, work=_work_arrays(shape)
        )
        noise = CellNoise.draw(expected, quality, grid, rng)
    else:
        expected, quality = _expected_electrons_on(device, catalog, shape, band, rng, exposure_seconds, defects)
        noise = CellNoise.draw_on_device(expected, quality, grid, rng)
    if not noise.valid_counts.any():
        raise InputError("all_invalid", "no valid pixel in the simulated image")
    statistics = noise.statistics(exposure_seconds, shape[0] * shape[1])
    tensor = model_input(grid, noise.value_sums(exposure_seconds), noise.valid_counts, statistics)
    if version == 1:
        return tensor, statistics
    if device is not None:
        expected, quality = expected.cpu().numpy(), quality.cpu().numpy()
    noise.observe(expected, quality, rng, exposure_seconds)
    counts = count_point_sources(
        expected, quality, grid, image_calibration(band, exposure_seconds), saturated_bits=QUALITY_SATURATED
    )
    return np.concatenate([tensor, point_source_channels(grid, counts)]), statistics


_WORK: dict = {}
"""Per-process work arrays of :func:`_work_arrays`."""


def _work_arrays(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """This process's reusable full-size image and mask for :func:`render_model_input`.

    Dataset mode renders one full-size image after another and keeps none;
    reusing the arrays saves the operating system handing over 0.5 GB of
    fresh pages per sample (up to a few tenths of a second).
    """
    if _WORK.get("shape") != shape:
        _WORK.update(shape=shape, image=np.empty(shape, dtype=np.float32), quality=np.empty(shape, dtype=np.int16))
    return _WORK["image"], _WORK["quality"]


def _expected_electrons(
    catalog: TruthCatalog,
    shape: tuple[int, int],
    band: str,
    rng: np.random.Generator,
    exposure_seconds: float,
    defects: bool,
    *,
    work: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Expected electrons per pixel (sky, dark and sources) and the quality mask (saturation, defects).

    ``work`` (an image and a mask of ``shape``) is filled instead of new arrays.
    """
    image, quality = work if work is not None else (np.empty(shape, np.float32), np.empty(shape, np.int16))
    image.fill(_background(catalog, band, exposure_seconds))
    for flat_index, values in _source_stamps(catalog, shape, band, exposure_seconds):
        # np.add.at, not +=, because stamps of neighbouring sources overlap
        np.add.at(image.reshape(-1), flat_index, values)
    np.multiply(image > FULL_WELL_E, QUALITY_SATURATED, out=quality, casting="unsafe")
    if defects:
        _flag_defects(quality, rng)
    return image, quality


def _expected_electrons_on(
    device: str,
    catalog: TruthCatalog,
    shape: tuple[int, int],
    band: str,
    rng: np.random.Generator,
    exposure_seconds: float,
    defects: bool,
):  # -> tuple[torch.Tensor, torch.Tensor]
    """:func:`_expected_electrons` with the full-size arrays on a torch device (e.g. CUDA)."""
    import torch

    image = torch.full(shape, _background(catalog, band, exposure_seconds), dtype=torch.float32, device=device)
    flat = image.view(-1)
    for flat_index, values in _source_stamps(catalog, shape, band, exposure_seconds):
        flat.index_put_(
            (torch.from_numpy(flat_index).to(device),), torch.from_numpy(values).to(device), accumulate=True
        )
    quality = (image > FULL_WELL_E).to(torch.int16) * QUALITY_SATURATED
    if defects:
        _flag_defects(quality, rng)
    return image, quality


def _background(catalog: TruthCatalog, band: str, exposure_seconds: float) -> float:
    """Expected electrons per pixel without the sources: sky, dark and the unresolved galaxies' light."""
    unresolved = electrons(catalog.unresolved_mag_arcsec2, band, exposure_seconds) * PIXEL_SCALE_ARCSEC**2
    return background_electrons(band, exposure_seconds) + float(unresolved)


def _source_stamps(
    catalog: TruthCatalog, shape: tuple[int, int], band: str, exposure_seconds: float
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every star and galaxy stamp of ``catalog`` as (flat pixel index, electrons) chunks."""
    if band != catalog.band:
        raise ValueError(f"band {band!r} differs from the catalog's band {catalog.band!r}")
    photometry = band_photometry(band)
    flux = electrons(catalog.mag, band, exposure_seconds)
    stars = catalog.is_star
    yield from _star_stamps(shape, catalog.x[stars], catalog.y[stars], flux[stars], photometry)
    galaxies = ~stars
    yield from _galaxy_stamps(
        shape, photometry, flux[galaxies], *(getattr(catalog, name)[galaxies] for name in _GALAXY_COLUMNS)
    )


def _star_stamps(
    shape: tuple[int, int], x: np.ndarray, y: np.ndarray, flux: np.ndarray, photometry: BandPhotometry
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """PSF stamps of point sources, grouped by stamp radius, as (flat pixel index, electrons) chunks."""
    alpha, beta = photometry.moffat_alpha, photometry.moffat_beta
    peak = flux * photometry.psf(np.zeros(1))
    # radius where flux * psf(r) = WING_ELECTRONS
    reach = alpha * np.sqrt(np.maximum((peak / WING_ELECTRONS) ** (1.0 / beta) - 1.0, 0.0))
    radius = np.clip(np.ceil(reach), MIN_STAMP_RADIUS, MAX_STAMP_RADIUS).astype(np.int64)
    for stamp_radius in np.unique(radius):
        group = np.flatnonzero(radius == stamp_radius)
        side = 2 * stamp_radius + 1
        for chunk in np.array_split(group, max(1, group.size * side**2 // _CHUNK_PIXELS)):
            column, row, dx, dy = _stamp_grid(x[chunk], y[chunk], side, stamp_radius)
            profile = photometry.psf((dx[:, None, :] ** 2 + dy[:, :, None] ** 2).astype(np.float32))
            yield _stamp_pixels(shape, column, row, profile, flux[chunk])


def _galaxy_stamps(
    shape: tuple[int, int],
    photometry: BandPhotometry,
    flux: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    half_light: np.ndarray,
    axis_ratio: np.ndarray,
    angle_deg: np.ndarray,
    index: np.ndarray,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """PSF-convolved Sersic stamps, grouped by stamp size, as (flat pixel index, electrons) chunks.

    A stamp reaches 4 half-light radii, or less where the profile has fallen
    below ``WING_ELECTRONS`` before (as for stars), plus twice the PSF FWHM.
    """
    reach = np.minimum(4.0 * half_light, _sersic_reach(flux, half_light, axis_ratio, index))
    needed = 2 * (reach + 2.0 * photometry.fwhm_px) + 1
    sizes = np.asarray(GALAXY_STAMP_SIZES)
    size_index = np.minimum(np.searchsorted(sizes, needed), sizes.size - 1)
    for group_index, side in enumerate(sizes):
        group = np.flatnonzero(size_index == group_index)
        if group.size == 0:
            continue
        offsets = np.arange(side) - side // 2
        psf = photometry.psf(offsets[:, None] ** 2 + offsets[None, :] ** 2)
        # the PSF's centre moved to pixel (0, 0) so the convolution does not shift the galaxy
        psf_transform = np.fft.rfft2(np.fft.ifftshift(psf).astype(np.float32))
        for chunk in np.array_split(group, max(1, group.size * side**2 // _CHUNK_PIXELS)):
            column, row, dx, dy = _stamp_grid(x[chunk], y[chunk], side, side // 2)
            profile = _sersic(dx, dy, half_light[chunk], axis_ratio[chunk], angle_deg[chunk], index[chunk])
            convolved = np.fft.irfft2(np.fft.rfft2(profile) * psf_transform, s=(side, side))
            # FFT round-off leaves tiny negative values in the far wings
            yield _stamp_pixels(shape, column, row, np.maximum(convolved, 0.0).astype(np.float32), flux[chunk])


def _sersic_reach(flux: np.ndarray, half_light: np.ndarray, axis_ratio: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Radius (px, major axis) where a Sersic profile of total ``flux`` falls to ``WING_ELECTRONS`` per pixel.

    ``I(r) = I_e exp(-b_n ((r / r_e)^(1/n) - 1))`` with
    ``I_e = flux b_n^(2n) / (2 pi q n r_e^2 e^(b_n) Gamma(2n))``; 0 when even the centre is fainter.
    """
    b_n = 2.0 * index - 1.0 / 3.0 + 4.0 / (405.0 * index)
    log_gamma = np.frompyfunc(math.lgamma, 1, 1)(2.0 * index).astype(np.float64)
    log_intensity = (
        np.log(np.maximum(flux, 1e-30))
        + 2.0 * index * np.log(b_n)
        - b_n
        - log_gamma
        - np.log(2.0 * np.pi * axis_ratio * index * half_light**2)
    )
    excess = 1.0 + (log_intensity - np.log(WING_ELECTRONS)) / b_n
    return half_light * np.maximum(excess, 0.0) ** index


def _sersic(
    dx: np.ndarray,
    dy: np.ndarray,
    half_light: np.ndarray,
    axis_ratio: np.ndarray,
    angle_deg: np.ndarray,
    index: np.ndarray,
) -> np.ndarray:
    """Unnormalised Sersic profiles ``(n, side, side)`` float32 from the stamps' pixel offsets ``dx, dy``.

    The offsets are ``(n, side)`` arrays.
    """
    angle = np.radians(angle_deg).astype(np.float32)[:, None, None]
    cos, sin = np.cos(angle), np.sin(angle)
    dx, dy = dx.astype(np.float32)[:, None, :], dy.astype(np.float32)[:, :, None]
    major = dx * cos + dy * sin
    minor = (dy * cos - dx * sin) / axis_ratio.astype(np.float32)[:, None, None]
    scaled = np.sqrt(major * major + minor * minor + np.float32(0.25)) / half_light.astype(np.float32)[:, None, None]
    # The catalog's indices are 1 and 4, whose roots are cheap; a general power is not.
    quartic = index == 4
    scaled[quartic] = np.sqrt(np.sqrt(scaled[quartic]))
    other = (index != 1) & ~quartic
    scaled[other] **= (1 / index[other]).astype(np.float32)[:, None, None]
    # Ciotti & Bertin (1999): b_n such that r_e encloses half the light
    b_n = (2.0 * index - 1.0 / 3.0 + 4.0 / (405.0 * index)).astype(np.float32)[:, None, None]
    return np.exp(-b_n * scaled)


def _stamp_grid(x: np.ndarray, y: np.ndarray, side: int, centre: int) -> tuple[np.ndarray, ...]:
    """Image columns and rows of stamps (``(n, side)`` each) and their pixel centres' offsets from the sources."""
    offsets = np.arange(side) - centre
    column = np.rint(x).astype(np.int64)[:, None] + offsets
    row = np.rint(y).astype(np.int64)[:, None] + offsets
    return column, row, column - x[:, None], row - y[:, None]


def _stamp_pixels(
    shape: tuple[int, int], column: np.ndarray, row: np.ndarray, profile: np.ndarray, flux: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Scale each stamp to its flux; return the flat indices and values of the part on the image."""
    ny, nx = shape
    profile *= (flux / profile.sum(axis=(1, 2), dtype=np.float64)).astype(np.float32)[:, None, None]
    inside = ((row >= 0) & (row < ny))[:, :, None] & ((column >= 0) & (column < nx))[:, None, :]
    flat_index = row[:, :, None] * nx + column[:, None, :]
    return flat_index[inside], profile[inside]


def _flag_defects(quality: np.ndarray, rng: np.random.Generator) -> None:
    """Bad columns and NaN patches (see the module docstring), flagged in ``quality``."""
    ny, nx = quality.shape
    for _ in range(rng.poisson(BAD_COLUMNS_MEAN)):
        column, first_row = rng.integers(nx), rng.integers(ny)
        quality[first_row:, column] |= QUALITY_BAD_COLUMN
    for _ in range(rng.poisson(NAN_PATCHES_MEAN)):
        height, width = np.maximum(2, (rng.uniform(0.002, 0.015, size=2) * min(ny, nx)).astype(int))
        top, left = rng.integers(ny - height + 1), rng.integers(nx - width + 1)
        quality[top : top + height, left : left + width] |= QUALITY_NAN_PATCH

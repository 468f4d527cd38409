"""Point-like sources of a detector image, counted per pooling cell: the extra channels of model input v2.

The paper's input (version 1) averages 41 x 41 pixels into one: a star
(FWHM 2 px) and a galaxy look alike there, and a star near the depth becomes
a fraction of a sigma.  Version 2 adds, on the same pooling cells, the number
of point-like peaks and the number of those brighter than the regression's
magnitude limit, found at native resolution:

1. **Background and noise**: the median and the normalised median absolute
   deviation (1.4826 MAD) of the valid pixels of a sparse, fixed sample of
   the image (about 100 x 100 pixels, as the input's centring uses).
2. **Matched filter**: the background-subtracted image (invalid pixels 0)
   convolved with a normalised Gaussian of the band's PSF FWHM, truncated at
   3 sigma (at least 2 px).  Its signal-to-noise is the filtered value over
   ``noise * sum(g^2)``, the filter's white-noise response.
3. **Peaks**: pixels whose filtered value is at least that of their eight
   neighbours and at least :data:`DETECTION_SNR` (7) sigma, whose filter
   footprint holds no invalid pixel (nor the image edge): a peak touching a
   masked pixel is not measured (bad columns, NaN patches, saturated cores).
   Noise alone reaches 7 sigma about once in 10^12 pixels.
4. **Sharpness**, after SExtractor's ``spread_model`` idea: the filtered
   value over that of a Gaussian twice as wide, divided by the same ratio
   for a Gaussian star of the FWHM centred on a pixel.  Stars sit near 1;
   a galaxy, broader than the PSF, lower (0.5-0.8 for the simulator's
   galaxies at S/N > 15); a cosmic ray or hot pixel, sharper than the PSF,
   higher (1.6 for a single pixel).  Point-like is
   :data:`SHARPNESS_RANGE`, 0.9 to 1.3.  The CPU path evaluates the wide
   filter at the peaks only; the torch path filters the whole image, which a
   GPU does in one ``conv2d`` (on torch's CPU device that is its slow part).
5. **Brightness**: a point source's flux is its filtered value over the
   filtered value of a unit Gaussian star (``kappa``), its magnitude
   ``zero_point - 2.5 log10(flux / exposure_seconds)``; it is bright when
   brighter than :data:`~density_db.labels.BRIGHT_MAGNITUDE_LIMIT`.
6. **Saturated cores** count as one point-like, bright source each: the
   pixels the data-quality mask flags with the profile's saturation bits are
   counted as 8-connected blobs through their Euler number (local 2 x 2
   patterns, Gray 1971), exact for blobs without holes, as saturated cores
   are; a blob's count goes to the cells of its pixels in quarters.

:func:`count_point_sources` streams row blocks with a halo through compiled
loops (Numba), with no full-size temporary; :func:`count_point_sources_tensor`
does the same with ``conv2d`` and ``max_pool2d`` on a torch device.  Both
compute in float64 and find the same peaks (``tests/test_preprocessing.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numba
import numpy as np

from density_db.labels import BRIGHT_MAGNITUDE_LIMIT
from density_db.pooling import CellGrid

if TYPE_CHECKING:
    import torch

DETECTION_SNR = 7.0
"""Peaks of the matched filter at least this many sigma count."""

SHARPNESS_RANGE = (0.9, 1.3)
"""Point-like peaks: sharpness (1 for a star) in this range; below are galaxies, above cosmic rays and hot pixels."""

_SAMPLE_GRID = (101, 103)
"""The sparse sample's rows and columns (as the v1 input's centring takes it)."""


@dataclass(frozen=True)
class Calibration:
    """What turns filtered pixel values into magnitudes, and the PSF the filter matches.

    Attributes
    ----------
    zero_point : float
        AB magnitude of a source giving 1 ADU per second.
    exposure_seconds : float
        Exposure time of the image.
    fwhm_px : float
        PSF full width at half maximum, in pixels.
    moffat_beta : float or None
        The PSF's Moffat index (CSST: 3), or ``None`` for a Gaussian PSF.  The
        reference star of the sharpness and of the fluxes has this profile:
        with a Moffat (beta = 3) PSF taken for a Gaussian, stars would sit at
        a sharpness of 0.91 and read 0.28 mag faint.
    """

    zero_point: float
    exposure_seconds: float
    fwhm_px: float
    moffat_beta: float | None = None

    def __post_init__(self) -> None:
        if not (self.exposure_seconds > 0 and 0.5 <= self.fwhm_px <= 30 and math.isfinite(self.zero_point)):
            raise ValueError(
                f"a calibration needs a positive exposure time, a FWHM of 0.5-30 px and a finite zero point, got {self}"
            )


@dataclass(frozen=True)
class _Filters:
    """The two Gaussian filters of a calibration and the numbers a star gives through them."""

    narrow: np.ndarray
    wide: np.ndarray
    threshold: float
    """Filtered value of a :data:`DETECTION_SNR` peak, in units of the pixel noise."""
    star_ratio: float
    bright_flux_factor: float
    """Filtered value of a star at the bright limit, per unit of flux scale (``kappa * flux``)."""

    @classmethod
    def for_calibration(cls, calibration: Calibration) -> _Filters:
        sigma = calibration.fwhm_px / (2.0 * math.sqrt(2.0 * math.log(2.0)))
        narrow = _gaussian(sigma, max(2, math.ceil(3 * sigma)))
        wide = _gaussian(2 * sigma, max(4, math.ceil(6 * sigma)))
        star = _reference_star(calibration, sigma)
        kappa = _filtered_centre(star, narrow)
        bright_flux = calibration.exposure_seconds * 10 ** (-0.4 * (BRIGHT_MAGNITUDE_LIMIT - calibration.zero_point))
        return cls(
            narrow=narrow,
            wide=wide,
            threshold=DETECTION_SNR * float(np.sum(narrow**2)),
            star_ratio=kappa / _filtered_centre(star, wide),
            bright_flux_factor=kappa * bright_flux,
        )


def _reference_star(calibration: Calibration, sigma: float) -> np.ndarray:
    """A star of unit flux centred on a pixel, sampled at pixel centres on a stamp holding its wings."""
    offsets = np.arange(-_STAR_STAMP_RADIUS, _STAR_STAMP_RADIUS + 1, dtype=np.float64)
    squared = np.add.outer(offsets**2, offsets**2)
    if calibration.moffat_beta is None:
        star = np.exp(-0.5 * squared / sigma**2)
    else:
        beta = calibration.moffat_beta
        alpha = calibration.fwhm_px / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
        star = (1.0 + squared / alpha**2) ** -beta
    return star / star.sum()


_STAR_STAMP_RADIUS = 64


def _gaussian(sigma: float, radius: int) -> np.ndarray:
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def _filtered_centre(stamp: np.ndarray, kernel: np.ndarray) -> float:
    """The separable filter's response at the centre of an odd square stamp."""
    centre, reach = stamp.shape[0] // 2, kernel.size // 2
    window = stamp[centre - reach : centre + reach + 1, centre - reach : centre + reach + 1]
    return float(kernel @ window @ kernel)


@dataclass(frozen=True)
class Background:
    """Sky level and pixel noise: median and 1.4826 MAD of the valid pixels of a sparse, fixed sample."""

    level: float
    noise: float

    @classmethod
    def of_image(cls, image, quality=None) -> Background:
        """From a NumPy array or a torch tensor (the same sample either way)."""
        step_y, step_x = max(1, image.shape[0] // _SAMPLE_GRID[0]), max(1, image.shape[1] // _SAMPLE_GRID[1])
        sample = _as_numpy(image[::step_y, ::step_x]).astype(np.float64)
        valid = np.isfinite(sample)
        if quality is not None:
            valid &= _as_numpy(quality[::step_y, ::step_x]) == 0
        sample = sample[valid]
        if sample.size == 0:
            return cls(0.0, 1.0)
        level = float(np.median(sample))
        noise = 1.4826 * float(np.median(np.abs(sample - level)))
        if not noise > 0:
            noise = float(np.std(sample)) or 1.0
        return cls(level, noise)


def _as_numpy(array) -> np.ndarray:
    return array.cpu().numpy() if hasattr(array, "cpu") else np.asarray(array)


@dataclass(frozen=True)
class PointSourceCounts:
    """Per pooling cell: point-like sources, and those brighter than the bright limit (float64, fractions
    only from saturated blobs spread over cells)."""

    point_like: np.ndarray
    bright: np.ndarray


def count_point_sources(
    image: np.ndarray,
    quality: np.ndarray | None,
    grid: CellGrid,
    calibration: Calibration,
    *,
    saturated_bits: int = 0,
    background: Background | None = None,
    on_block: Callable[[slice, slice, np.ndarray, np.ndarray], None] | None = None,
) -> PointSourceCounts:
    """Count point-like and bright sources per pooling cell, streaming row blocks on the CPU.

    Parameters
    ----------
    image
        2-D science image in ADU (any float dtype and byte order; NaN/Inf invalid).
    quality
        Optional data-quality mask: non-zero is invalid; ``saturated_bits`` of it mark saturated pixels.
    grid
        The pooling cells of the image's shape.
    calibration
        Zero point, exposure time and PSF FWHM.
    saturated_bits
        Data-quality bits that mean saturated (0: none known, saturated cores are not counted).
    background
        The image's :class:`Background`, when the caller has it already.
    on_block
        Called as ``on_block(rows, cells, block, invalid)`` with each block's own rows (``grid.row_blocks()``):
        the native float32 pixels and the invalid mask, so that the caller reduces the same block in the
        same pass (preprocessing makes the paper's channels there: one read of the image for both).
    """
    filters = _Filters.for_calibration(calibration)
    background = background or Background.of_image(image, quality)
    ny, nx = image.shape
    halo = filters.wide.size // 2 + 1
    row_cell = grid.rows.segment_of_pixel(ny)
    column_cell = grid.columns.segment_of_pixel(nx)
    point_like = np.zeros(grid.cell_shape)
    bright = np.zeros(grid.cell_shape)
    for rows, cells in grid.row_blocks():
        start, stop = max(rows.start - halo, 0), min(rows.stop + halo, ny)
        # native byte order for the compiled loops (FITS data are big-endian): the one copy of the block
        block = np.asarray(image[start:stop], dtype=np.float32)
        block_quality = None if quality is None else _native(np.asarray(quality[start:stop]))
        values, valid = _background_subtracted(
            block,
            block_quality if block_quality is not None else _NO_QUALITY,
            block_quality is not None,
            background.level,
        )
        if on_block is not None:
            own = slice(rows.start - start, rows.stop - start)
            on_block(rows, cells, block[own], ~valid[own])
        _count_block(
            values,
            valid,
            rows.start - start,
            rows.stop - start,
            start,
            ny,
            filters.narrow,
            filters.wide,
            filters.threshold * background.noise,
            SHARPNESS_RANGE[0] * filters.star_ratio,
            SHARPNESS_RANGE[1] * filters.star_ratio,
            filters.bright_flux_factor,
            row_cell,
            column_cell,
            point_like,
            bright,
        )
        if saturated_bits and block_quality is not None and block_quality.any():
            # the 2 x 2 windows whose top-left pixel lies in this block's rows (the first block's also from the
            # row above the image): the rows, the next one, and a row of zeros above the image
            window_stop = min(rows.stop + 1, ny) - start
            saturated = (block_quality[rows.start - start : window_stop] & saturated_bits) != 0
            if not saturated.any():  # masked for other reasons only (bad columns, patches): no blob here
                continue
            window_rows = rows.stop - rows.start
            if rows.start == 0:
                saturated = np.concatenate([np.zeros((1, nx), dtype=bool), saturated])
                window_rows += 1
            _add_euler(
                saturated, window_rows, rows.start - (rows.start == 0), row_cell, column_cell, point_like, bright
            )
    return PointSourceCounts(point_like, bright)


def count_point_sources_tensor(
    image: torch.Tensor,
    quality: torch.Tensor | None,
    grid: CellGrid,
    calibration: Calibration,
    *,
    saturated_bits: int = 0,
) -> PointSourceCounts:
    """:func:`count_point_sources` on a torch device (e.g. CUDA): ``conv2d`` and ``max_pool2d``, float64.

    The same peaks as the CPU path: the same filters, thresholds, footprint and edge rules.
    """
    import torch
    from torch.nn.functional import conv2d, max_pool2d, pad

    filters = _Filters.for_calibration(calibration)
    background = Background.of_image(image, quality)
    device = image.device
    ny, nx = image.shape
    valid = torch.isfinite(image)
    if quality is not None:
        valid &= quality == 0
    values = torch.where(
        valid, image.to(torch.float64) - background.level, torch.zeros((), dtype=torch.float64, device=device)
    )

    def separable(kernel: np.ndarray):
        weights = torch.from_numpy(kernel).to(device)
        reach = kernel.size // 2
        along = conv2d(pad(values[None, None], (reach, reach, 0, 0)), weights.view(1, 1, 1, -1))
        return conv2d(pad(along, (0, 0, reach, reach)), weights.view(1, 1, -1, 1))[0, 0]

    filtered = separable(filters.narrow)
    reach = filters.narrow.size // 2
    neighbours = max_pool2d(pad(filtered[None, None], (1, 1, 1, 1), value=-math.inf), 3, stride=1)[0, 0]
    invalid = pad((~valid).to(torch.float32)[None, None], (reach,) * 4, value=1.0)
    touched = max_pool2d(invalid, 2 * reach + 1, stride=1)[0, 0] > 0
    interior = torch.zeros((ny, nx), dtype=torch.bool, device=device)
    interior[reach : ny - reach, reach : nx - reach] = True
    peaks = (filtered >= filters.threshold * background.noise) & (filtered >= neighbours) & ~touched & interior
    rows, columns = torch.nonzero(peaks, as_tuple=True)
    value = filtered[rows, columns]
    wide = separable(filters.wide)[rows, columns]
    low, high = SHARPNESS_RANGE[0] * filters.star_ratio, SHARPNESS_RANGE[1] * filters.star_ratio
    point_like = (wide > 0) & (low * wide <= value) & (value <= high * wide)
    brighter = point_like & (value > filters.bright_flux_factor)
    row_cell = torch.from_numpy(grid.rows.segment_of_pixel(ny)).to(device)[rows]
    column_cell = torch.from_numpy(grid.columns.segment_of_pixel(nx)).to(device)[columns]
    flat = row_cell * grid.cell_shape[1] + column_cell
    cells = grid.cell_shape[0] * grid.cell_shape[1]
    counts = [
        torch.zeros(cells, dtype=torch.float64, device=device).index_add_(
            0, flat[mask], torch.ones_like(flat[mask], dtype=torch.float64)
        )
        for mask in (point_like, brighter)
    ]
    if saturated_bits and quality is not None:
        euler = _euler_windows((quality & saturated_bits) != 0)
        euler_rows = torch.from_numpy(grid.rows.segment_of_pixel(ny)[np.r_[0, 0:ny]]).to(device)
        euler_columns = torch.from_numpy(grid.columns.segment_of_pixel(nx)[np.r_[0, 0:nx]]).to(device)
        flat_windows = (euler_rows[:, None] * grid.cell_shape[1] + euler_columns[None, :]).reshape(-1)
        for count in counts:
            count.index_add_(0, flat_windows, euler.reshape(-1))
    return PointSourceCounts(*(count.reshape(grid.cell_shape).cpu().numpy() for count in counts))


def _euler_windows(saturated):  # torch.Tensor -> torch.Tensor
    """Each 2 x 2 window's share of the 8-connected Euler number, ``(ny + 1, nx + 1)`` windows whose top-left
    pixel runs from one above and left of the image (zeros around it)."""
    import torch
    from torch.nn.functional import pad

    padded = pad(saturated.to(torch.int64)[None, None], (1, 1, 1, 1))[0, 0]
    top_left, top_right = padded[:-1, :-1], padded[:-1, 1:]
    bottom_left, bottom_right = padded[1:, :-1], padded[1:, 1:]
    count = top_left + top_right + bottom_left + bottom_right
    diagonal = (count == 2) & (top_left == bottom_right)
    share = (count == 1).to(torch.float64) * 0.25 - (count == 3).to(torch.float64) * 0.25
    return share - diagonal.to(torch.float64) * 0.5


_NO_QUALITY = np.zeros((1, 1), dtype=np.int16)


def _native(array: np.ndarray) -> np.ndarray:
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


@numba.njit(cache=True, nogil=True)
def _background_subtracted(block, quality, has_quality, level):
    """The block minus the background, 0 where invalid (float64), and the valid mask, in one pass."""
    rows, width = block.shape
    values = np.empty((rows, width))
    valid = np.empty((rows, width), dtype=np.bool_)
    for row in range(rows):
        for column in range(width):
            value = block[row, column]
            good = np.isfinite(value) and (not has_quality or quality[row, column] == 0)
            valid[row, column] = good
            values[row, column] = value - level if good else 0.0
    return values, valid


@numba.njit(cache=True, nogil=True)
def _count_block(
    values,
    valid,
    first,
    stop,
    offset,
    height,
    narrow,
    wide,
    threshold,
    sharp_low,
    sharp_high,
    bright_flux,
    row_cell,
    column_cell,
    point_like,
    bright,
):
    """Peaks in rows ``first`` to ``stop`` of a block (with its halo) added to the cell counts.

    ``offset`` is the block's first image row, ``height`` the image's;
    ``sharp_low``, ``sharp_high`` bound the narrow-over-wide ratio (the star's ratio folded in).
    """
    rows, width = values.shape
    reach = narrow.size // 2
    wide_reach = wide.size // 2
    # The narrow filter along rows, then along columns, on the rows a 3 x 3 neighbourhood needs: taps in
    # the outer loop and contiguous columns in the inner one, which the compiler vectorises.
    top, bottom = max(first - 1 - reach, 0), min(stop + 1 + reach, rows)
    padded = np.zeros(width + 2 * reach)
    along = np.zeros((bottom - top, width))
    for row in range(top, bottom):
        padded[reach : reach + width] = values[row]
        out = along[row - top]
        for tap in range(narrow.size):
            weight = narrow[tap]
            for column in range(width):
                out[column] += weight * padded[column + tap]
    low, high = max(first - 1, 0), min(stop + 1, rows)
    filtered = np.zeros((high - low, width))
    for row in range(low, high):
        out = filtered[row - low]
        for tap in range(narrow.size):
            source = row + tap - reach
            if top <= source < bottom:
                weight = narrow[tap]
                line = along[source - top]
                for column in range(width):
                    out[column] += weight * line[column]
    for row in range(first, stop):
        image_row = row + offset
        if image_row < reach or image_row >= height - reach:
            continue
        local = row - low
        for column in range(reach, width - reach):
            value = filtered[local, column]
            if value < threshold:
                continue
            peak = True
            for dy in range(-1, 2):
                for dx in range(-1, 2):
                    if (dy or dx) and filtered[local + dy, column + dx] > value:
                        peak = False
            if not peak:
                continue
            clean = True
            for dy in range(-reach, reach + 1):
                for dx in range(-reach, reach + 1):
                    if not valid[row + dy, column + dx]:
                        clean = False
            if not clean:
                continue
            wide_value = 0.0
            for dy in range(-wide_reach, wide_reach + 1):
                source_row = row + dy
                if source_row < 0 or source_row >= rows:
                    continue
                partial = 0.0
                for dx in range(-wide_reach, wide_reach + 1):
                    source_column = column + dx
                    if 0 <= source_column < width:
                        partial += wide[dx + wide_reach] * values[source_row, source_column]
                wide_value += wide[dy + wide_reach] * partial
            if not (wide_value > 0 and sharp_low * wide_value <= value <= sharp_high * wide_value):
                continue
            cell_row, cell_column = row_cell[image_row], column_cell[column]
            point_like[cell_row, cell_column] += 1.0
            if value > bright_flux:
                bright[cell_row, cell_column] += 1.0


@numba.njit(cache=True, nogil=True)
def _add_euler(saturated, window_rows, offset, row_cell, column_cell, point_like, bright):
    """Add the 8-connected Euler number of ``saturated`` (rows from image row ``offset``) to the cells.

    Each 2 x 2 window whose top-left pixel is in the first ``window_rows`` rows (the last of them pairs
    with the row after, when given) adds ``(n1 - n3 - 2 nD) / 4`` to the cell of its top-left pixel: n1
    windows with one pixel set, n3 with three, nD with two diagonal ones.  Windows run from one pixel
    above and to the left of the image, so that blobs at the edges close.
    """
    rows, width = saturated.shape
    for row in range(window_rows):
        for column in range(-1, width):
            top_left = column >= 0 and saturated[row, column]
            top_right = column + 1 < width and saturated[row, column + 1]
            below = row + 1 < rows
            bottom_left = below and column >= 0 and saturated[row + 1, column]
            bottom_right = below and column + 1 < width and saturated[row + 1, column + 1]
            count = int(top_left) + int(top_right) + int(bottom_left) + int(bottom_right)
            if count == 1:
                contribution = 0.25
            elif count == 3:
                contribution = -0.25
            elif count == 2 and top_left == bottom_right:
                contribution = -0.5
            else:
                continue
            cell_row = row_cell[max(row + offset, 0)]
            cell_column = column_cell[max(column, 0)]
            point_like[cell_row, cell_column] += contribution
            bright[cell_row, cell_column] += contribution

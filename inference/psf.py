"""The PSF FWHM of an image, measured from its bright isolated point sources: the calibration's last resort.

The point-source pass (:mod:`density_db.inference.point_sources`) matches
its filter to the PSF.  An image whose header and instrument profile give no
FWHM gets one measured here, from the image itself:

1. **Candidates**: in a central window (at most ``WINDOW`` pixels a side),
   local maxima at least :data:`MIN_SNR` (50) sigma above the background that
   are the highest pixel of their box (``2 * half + 1`` pixels a side, 7 by
   default) and whose box holds no invalid pixel (saturated cores, defects
   and the window's edge are left out).
2. **Concentration**: each candidate's peak over its box's background-subtracted
   sum.  For a star this depends only on the PSF's width (and on where in its
   pixel the star falls); a galaxy, broader, is less concentrated; a cosmic
   ray or hot pixel, more than any PSF.
3. **Width**: each concentration is read as the FWHM of the reference star
   (the calibration's Moffat or Gaussian profile, sampled at pixel centres)
   whose concentration, averaged over where the star falls in its pixel,
   is the same.
4. **The stellar locus**: stars, unlike galaxies, share one width, so the
   widths pile up there; the answer is the median of the widths within
   +-10 % of the densest window of +-5 %.  Fewer than
   :data:`MIN_CANDIDATES` candidates give no answer.

On density-db's simulated images (Moffat, beta = 3) it recovers the bands'
FWHM to 0.2 % from isolated stars among as many galaxies and a hot pixel
(u, r, y; ``tests/test_preprocessing.py``), and reads 1-4 % low on
4096 x 4096 windows of simulated fields from (l, b) = (90, 50) to the
Galactic centre in g, r and y, where fainter neighbours crowd the boxes.
NUV images there hold too few stars at 20 sigma and get no answer.  A box
of 7 pixels holds a PSF up to about 4 px FWHM; wider PSFs are measured
again in a box about twice the first answer.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from density_db.inference.point_sources import Background

MIN_SNR = 20.0
"""Candidates peak at least this many background sigma high (their concentration is then measured to ~2 %)."""
MIN_CANDIDATES = 10
WINDOW = 4096
"""The measurement reads at most this many rows and columns around the image's centre."""

_FWHM_GRID = np.exp(np.linspace(math.log(0.8), math.log(40.0), 400))
_PHASES = (np.arange(5) - 2) / 5.0  # where in its pixel a star falls, in fifths of a pixel
_LOCUS = math.log(1.05)


def measure_fwhm(
    image, quality=None, *, moffat_beta: float | None = None, background: Background | None = None
) -> float | None:
    """The PSF FWHM of ``image`` in pixels, or ``None`` when it has too few bright isolated point sources.

    Parameters
    ----------
    image, quality
        The science image and its optional data-quality mask (non-zero: invalid).
    moffat_beta
        The PSF's Moffat index, ``None`` for a Gaussian (the shape the widths are read against).
    background
        The image's :class:`~density_db.inference.point_sources.Background`, when known.
    """
    background = background or Background.of_image(image, quality)
    ny, nx = image.shape
    top, left = max(0, (ny - WINDOW) // 2), max(0, (nx - WINDOW) // 2)
    window = np.asarray(image[top : top + WINDOW, left : left + WINDOW], dtype=np.float64) - background.level
    valid = np.isfinite(window)
    if quality is not None:
        valid &= np.asarray(quality[top : top + WINDOW, left : left + WINDOW]) == 0
    window[~valid] = 0.0
    fwhm = _locus(window, valid, 3, MIN_SNR * background.noise, moffat_beta)
    if fwhm is not None and fwhm > 4.0:  # the 7-pixel box cuts the wings: measure again in a wider one
        fwhm = _locus(window, valid, math.ceil(fwhm), MIN_SNR * background.noise, moffat_beta)
    return fwhm


def _locus(window: np.ndarray, valid: np.ndarray, half: int, threshold: float, beta: float | None) -> float | None:
    concentrations = _concentrations(window, valid, half, threshold)
    if concentrations.size < MIN_CANDIDATES:
        return None
    reference = _reference_concentrations(half, beta)  # decreasing with the FWHM
    log_widths = np.sort(np.log(np.interp(-concentrations, -reference, _FWHM_GRID)))
    # the densest +-5 % window is the stellar locus; its centre's +-10 % give the answer
    in_window = np.searchsorted(log_widths, log_widths + 2 * _LOCUS, side="right") - np.arange(log_widths.size)
    start = int(np.argmax(in_window))
    centre = float(np.median(log_widths[start : start + in_window[start]]))
    return float(np.exp(np.median(log_widths[np.abs(log_widths - centre) <= 2 * _LOCUS])))


def _reference_concentrations(half: int, beta: float | None) -> np.ndarray:
    """Peak over box sum of a unit star of each FWHM of the grid, averaged over its position in the pixel."""
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    concentrations = np.zeros(_FWHM_GRID.size)
    for dy in _PHASES:
        for dx in _PHASES:
            squared = np.add.outer((offsets - dy) ** 2, (offsets - dx) ** 2)[None]
            fwhm = _FWHM_GRID[:, None, None]
            if beta is None:
                sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
                star = np.exp(-0.5 * squared / sigma**2)
            else:
                alpha = fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
                star = (1.0 + squared / alpha**2) ** -beta
            concentrations += star[:, half, half] / star.sum(axis=(1, 2))
    return concentrations / _PHASES.size**2


@numba.njit(cache=True, nogil=True)
def _concentrations(window, valid, half, threshold):
    """Peak over box sum of every pixel above ``threshold`` that is the highest of its all-valid box."""
    rows, columns = window.shape
    found = []
    for row in range(half, rows - half):
        for column in range(half, columns - half):
            peak = window[row, column]
            if peak < threshold:
                continue
            total, highest, clean = 0.0, True, True
            for y in range(row - half, row + half + 1):
                for x in range(column - half, column + half + 1):
                    if not valid[y, x]:
                        clean = False
                    value = window[y, x]
                    if value > peak:
                        highest = False
                    total += value
            if clean and highest and total > 0:
                found.append(peak / total)
    return np.array(found, dtype=np.float64)

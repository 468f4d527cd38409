"""Frame footprints rasterised on the HEALPix grid: pixel centres inside spherical quadrilaterals.

A frame's footprint is the convex spherical polygon of its four WCS corners
(great-circle edges).  :func:`footprint_pixels` returns, for many frames at
once, the NESTED pixels of a (fine) order whose centres lie inside each
polygon: the set ``hpgeom.query_polygon(..., inclusive=False)`` returns, frame
by frame, computed here without a Python loop.  :func:`degrade` turns fine
pixels into the fraction of each coarser pixel a frame covers.

How: HEALPix pixel centres lie on iso-latitude rings at known longitudes.  For
every (frame, ring) pair the longitudes inside the polygon are worked out
exactly from the four edge constraints ``n_k . x >= 0`` (each one keeps an arc
of the ring), inside a window given by the frame's bounding cap, so pixels are
produced as runs of consecutive ring indices rather than tested one by one.
Pairs where two edges cut gaps into the middle of the window (possible only
for frames large against their distance to a pole) fall back to testing each
candidate pixel centre.  Polygons across RA = 0 and around a pole need no
special case.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import healpy
import numpy as np

logger = logging.getLogger(__name__)

MAX_ORDER = 29
"""Deepest HEALPix order of NESTED int64 indices."""

MAX_SUBPIXEL_LEVELS = 3
"""Coverage keeps a bit per sub-pixel for up to 3 orders (64 sub-pixels: one uint64)."""

_SLOPE, _PHI, _OTHER_PHI, _GAP_PHI = range(4)  # the per-edge numbers of _Polygons.edges

_WINDOW_MARGIN_RAD = 1e-9
"""The bounding cap is widened by this much so that rounding cannot cut a pixel centre off."""


@dataclass(frozen=True)
class FinePixels:
    """Pixels whose centres lie inside frames: one row per (frame, pixel).

    Attributes
    ----------
    frame_index
        Index of the frame in the arrays given to :func:`footprint_pixels`
        (int64, ascending).
    pixel
        NESTED pixel index at ``order`` (int64).
    order
        HEALPix order of ``pixel``.
    """

    frame_index: np.ndarray
    pixel: np.ndarray
    order: int


@dataclass(frozen=True)
class Coverage:
    """Fraction of coarse pixels covered by frames: one row per (frame, pixel) with a non-zero fraction.

    Attributes
    ----------
    frame_index
        Index of the frame (int64, ascending).
    pixel
        NESTED pixel index at ``order`` (int64).
    fraction
        Fraction of the pixel's fine sub-pixel centres inside the frame, in (0, 1] (float64).
    subpixels
        Which sub-pixels: bit ``i`` set when the NESTED sub-pixel ``pixel * 4**levels + i``
        has its centre inside the frame (dtype from :func:`subpixel_mask_dtype`).
    order
        HEALPix order of ``pixel``.
    """

    frame_index: np.ndarray
    pixel: np.ndarray
    fraction: np.ndarray
    subpixels: np.ndarray
    order: int


def footprint_pixels(corner_ra: np.ndarray, corner_dec: np.ndarray, *, order: int) -> FinePixels:
    """NESTED pixels of ``order`` whose centres lie inside each frame's corner polygon.

    Parameters
    ----------
    corner_ra, corner_dec : numpy.ndarray
        Shape ``(n, 4)``: each frame's corners in degrees (ICRS), in order
        around the frame, either orientation.  Frames must be convex and
        smaller than a hemisphere (any detector is).
    order : int
        HEALPix order of the pixels (0-29).

    Returns
    -------
    FinePixels
        Rows sorted by frame; a frame smaller than a pixel may have none.

    Raises
    ------
    ValueError
        If the order is out of range, the arrays are not ``(n, 4)`` or a corner is not finite.
    """
    if not 0 <= order <= MAX_ORDER:
        raise ValueError(f"order must be between 0 and {MAX_ORDER}, got {order}")
    corner_ra = np.asarray(corner_ra, dtype=np.float64)
    corner_dec = np.asarray(corner_dec, dtype=np.float64)
    if corner_ra.ndim != 2 or corner_ra.shape[1] != 4 or corner_dec.shape != corner_ra.shape:
        raise ValueError(f"corners must be two (n, 4) arrays, got shapes {corner_ra.shape} and {corner_dec.shape}")
    if not (np.all(np.isfinite(corner_ra)) and np.all(np.isfinite(corner_dec))):
        raise ValueError("frame corners must be finite")
    empty = np.zeros(0, dtype=np.int64)
    if corner_ra.shape[0] == 0:
        return FinePixels(frame_index=empty, pixel=empty, order=order)
    frames = _Polygons.from_corners(corner_ra, corner_dec)
    pairs = _ring_pairs(frames, nside=1 << order)
    segments, tested = _segments(frames, pairs)
    windows = segments[tested, 0]
    segments[tested] = (1.0, -1.0)
    frame_index, ring_pixel = _expand_segments(pairs, segments)
    if tested.size:
        extra_frames, extra_pixels = _test_candidates(frames, pairs, tested, windows)
        frame_index = np.concatenate([frame_index, extra_frames])
        ring_pixel = np.concatenate([ring_pixel, extra_pixels])
        by_frame = np.argsort(frame_index, kind="stable")
        frame_index, ring_pixel = frame_index[by_frame], ring_pixel[by_frame]
    pixel = healpy.ring2nest(1 << order, ring_pixel).astype(np.int64, copy=False)
    return FinePixels(frame_index=frame_index, pixel=pixel, order=order)


def footprint_area_deg2(corner_ra: np.ndarray, corner_dec: np.ndarray) -> np.ndarray:
    """Solid angle of each frame's corner polygon (great-circle edges), in square degrees.

    Parameters
    ----------
    corner_ra, corner_dec : numpy.ndarray
        Shape ``(n, 4)``: corners in degrees, in order around each (convex) frame.

    Returns
    -------
    numpy.ndarray
        Shape ``(n,)``.
    """
    ra, dec = np.radians(corner_ra), np.radians(corner_dec)
    cos_dec = np.cos(dec)
    corners = np.stack([cos_dec * np.cos(ra), cos_dec * np.sin(ra), np.sin(dec)], axis=-1)
    first = corners[:, 0]
    area = np.zeros(corners.shape[0])
    for second, third in ((corners[:, 1], corners[:, 2]), (corners[:, 2], corners[:, 3])):
        # Van Oosterom & Strackee (1983): tan(E / 2) = |a.(b x c)| / (1 + a.b + b.c + c.a)
        triple = np.abs(np.einsum("nd,nd->n", first, np.cross(second, third)))
        dots = 1.0 + np.einsum("nd,nd->n", first, second) + np.einsum("nd,nd->n", second, third)
        dots += np.einsum("nd,nd->n", third, first)
        area += 2.0 * np.arctan2(triple, dots)
    return area * (180.0 / np.pi) ** 2


def degrade(fine: FinePixels, *, levels: int) -> Coverage:
    """Covered fraction, and covered sub-pixels, of the pixels ``levels`` orders coarser than ``fine``.

    Parameters
    ----------
    fine : FinePixels
        Pixel centres inside frames at order ``fine.order`` (each at most once per frame).
    levels : int
        Orders to go up (0-3): each coarse pixel has ``4**levels`` fine ones.

    Returns
    -------
    Coverage
        One row per (frame, coarse pixel) holding at least one fine pixel centre.
    """
    if not 0 <= levels <= min(MAX_SUBPIXEL_LEVELS, fine.order):
        raise ValueError(f"levels must be between 0 and {min(MAX_SUBPIXEL_LEVELS, fine.order)}, got {levels}")
    shift = 2 * levels
    frame_index, pixel = fine.frame_index, fine.pixel
    # Sort by (frame, pixel): one int64 key when the frame index fits above the pixel's bits.
    pixel_bits = 2 * fine.order + 4
    if pixel.size and int(frame_index[-1]).bit_length() + pixel_bits <= 63:
        key = np.sort((frame_index << pixel_bits) | pixel)
        frame_index, pixel = key >> pixel_bits, key & ((1 << pixel_bits) - 1)
    else:
        by_frame_and_pixel = np.lexsort((pixel, frame_index))
        frame_index, pixel = frame_index[by_frame_and_pixel], pixel[by_frame_and_pixel]
    coarse = pixel >> shift
    starts = np.flatnonzero(
        np.concatenate([[True], (coarse[1:] != coarse[:-1]) | (frame_index[1:] != frame_index[:-1])])
    ) if pixel.size else np.zeros(0, dtype=np.int64)
    counts = np.diff(np.append(starts, pixel.size))
    mask_dtype = subpixel_mask_dtype(levels)
    bits = np.left_shift(mask_dtype.type(1), (pixel & ((1 << shift) - 1)).astype(mask_dtype))
    return Coverage(
        frame_index=frame_index[starts],
        pixel=coarse[starts],
        fraction=counts / float(1 << shift),
        subpixels=np.bitwise_or.reduceat(bits, starts) if starts.size else np.zeros(0, dtype=mask_dtype),
        order=fine.order - levels,
    )


def subpixel_mask_dtype(levels: int) -> np.dtype:
    """Unsigned integer type with a bit for each of the ``4**levels`` sub-pixels of a pixel (levels 0-3)."""
    if not 0 <= levels <= MAX_SUBPIXEL_LEVELS:
        raise ValueError(f"sub-pixel masks exist for levels 0 to {MAX_SUBPIXEL_LEVELS}, got {levels}")
    return np.dtype((np.uint8, np.uint8, np.uint16, np.uint64)[levels])


# -- geometry of the frames -----------------------------------------------------------------


@dataclass(frozen=True)
class _Polygons:
    """Per frame: inward edge normals, centre direction and the cap around the frame."""

    normals: np.ndarray  # (n, 4, 3), unit, pointing inside
    centre_z: np.ndarray  # sin(dec) of the centre direction
    centre_sin_theta: np.ndarray  # cos(dec) of the centre direction
    centre_phi: np.ndarray  # radians
    cos_radius: np.ndarray  # cosine of the cap radius containing the frame
    edges: np.ndarray
    """(n, 4, 4): per edge k, at _SLOPE: on a ring, the edge keeps cos(phi - phi_k) >= cot(theta) * slope_k;
    at _PHI: phi_k (the normal's horizontal direction) relative to centre_phi, in (-pi, pi]; at _OTHER_PHI:
    phi_k - 2 pi sign(phi_k), its copy on the other side of 0; at _GAP_PHI: phi_k + pi, in (-pi, pi]."""

    @classmethod
    def from_corners(cls, corner_ra: np.ndarray, corner_dec: np.ndarray) -> _Polygons:
        ra, dec = np.radians(corner_ra), np.radians(corner_dec)
        cos_dec = np.cos(dec)
        corners = np.stack([cos_dec * np.cos(ra), cos_dec * np.sin(ra), np.sin(dec)], axis=-1)
        normals = np.cross(corners, np.roll(corners, -1, axis=1))
        normals /= np.linalg.norm(normals, axis=2, keepdims=True)
        # The corners' mean direction lies inside a convex polygon: it tells which side is in.
        centre = corners.sum(axis=1)
        centre /= np.linalg.norm(centre, axis=1, keepdims=True)
        normals *= np.where(np.einsum("nkd,nd->nk", normals, centre) < 0, -1.0, 1.0)[:, :, None]
        radius = np.arccos(np.clip(np.einsum("nkd,nd->nk", corners, centre).min(axis=1), -1.0, 1.0))
        centre_phi = np.arctan2(centre[:, 1], centre[:, 0])
        edge_phi = _wrap(np.arctan2(normals[:, :, 1], normals[:, :, 0]) - centre_phi[:, None])
        horizontal = np.hypot(normals[:, :, 0], normals[:, :, 1])
        # An edge along a ring (its normal through a pole) keeps all of a ring or none of it.
        with np.errstate(divide="ignore"):
            slope = np.where(horizontal > 0, -normals[:, :, 2] / horizontal, -np.sign(normals[:, :, 2]) * 1e300)
        return cls(
            normals=normals,
            centre_z=centre[:, 2],
            centre_sin_theta=np.hypot(centre[:, 0], centre[:, 1]),
            centre_phi=centre_phi,
            cos_radius=np.cos(radius + _WINDOW_MARGIN_RAD),
            edges=np.stack(
                [slope, edge_phi, edge_phi - 2 * np.pi * np.where(edge_phi > 0, 1.0, -1.0), _wrap(edge_phi + np.pi)],
                axis=-1,
            ),
        )


@dataclass(frozen=True)
class _RingPairs:
    """One row per (frame, ring) pair: the ring's geometry and the frame's window on it."""

    nside: int
    frame: np.ndarray  # index of the frame
    z: np.ndarray
    sin_theta: np.ndarray
    ring_size: np.ndarray  # pixels on the ring (int64)
    phase: np.ndarray  # pixel j of the ring is at phi = (j + phase) * step
    step: np.ndarray  # 2 pi / ring_size
    first_pixel: np.ndarray  # RING index of pixel j = 0
    centre_phi: np.ndarray  # the frame's centre longitude (radians)
    half_window: np.ndarray  # the frame's cap spans centre_phi +- half_window on this ring


def _ring_pairs(frames: _Polygons, *, nside: int) -> _RingPairs:
    """Every ring that may cross each frame's cap, with its HEALPix geometry (Gorski et al. 2005)."""
    dec = np.arcsin(np.clip(frames.centre_z, -1.0, 1.0))
    radius = np.arccos(np.clip(frames.cos_radius, -1.0, 1.0))
    z_top = np.sin(np.minimum(dec + radius, np.pi / 2))
    z_bottom = np.sin(np.maximum(dec - radius, -np.pi / 2))
    last_ring = 4 * nside - 1
    first = np.clip(np.floor(_ring_coordinate(z_top, nside)).astype(np.int64), 1, last_ring)
    last = np.clip(np.ceil(_ring_coordinate(z_bottom, nside)).astype(np.int64), 1, last_ring)
    ring_count = last - first + 1
    frame = np.repeat(np.arange(ring_count.size), ring_count)
    ring = first[frame] + _ranks(ring_count)

    north, south = ring < nside, ring > 3 * nside
    cap = north | south
    cap_ring = np.where(south, 4 * nside - ring, ring)  # ring number counted from the nearer pole
    depth = cap_ring.astype(np.float64) ** 2 / (3.0 * nside * nside)  # 1 - |z| on the polar caps
    equatorial_z = 4.0 / 3.0 - 2.0 * ring / (3.0 * nside)
    z = np.where(north, 1.0 - depth, np.where(south, depth - 1.0, equatorial_z))
    sin_theta = np.where(
        cap, np.sqrt(np.clip(depth * (2.0 - depth), 0.0, 1.0)), np.sqrt(np.clip(1.0 - equatorial_z**2, 0.0, 1.0))
    )
    ring_size = np.where(cap, 4 * cap_ring, 4 * nside)
    # Equatorial rings alternate between pixel centres at phi = j*step and (j + 1/2)*step.
    phase = np.where(cap | ((ring + nside) % 2 == 0), 0.5, 0.0)
    south_first = 12 * nside * nside - 2 * cap_ring * (cap_ring + 1)
    equatorial_first = 2 * nside * (nside - 1) + (ring - nside) * 4 * nside
    first_pixel = np.where(north, 2 * ring * (ring - 1), np.where(south, south_first, equatorial_first))

    # Half-width in longitude of the frame's cap on this ring: cos(dphi) = (cos r - z zc) / (sin t sin tc).
    across = sin_theta * frames.centre_sin_theta[frame]
    along = z * frames.centre_z[frame]
    with np.errstate(divide="ignore", invalid="ignore"):
        cos_half = (frames.cos_radius[frame] - along) / across
    # A centre on a pole: the ring is wholly in the cap or wholly out.
    cos_half = np.where(across > 0, cos_half, np.where(along >= frames.cos_radius[frame], -2.0, 2.0))
    half_window = np.where(cos_half > 1.0, np.nan, np.arccos(np.clip(cos_half, -1.0, 1.0)))
    keep = ~np.isnan(half_window)
    return _RingPairs(
        nside=nside,
        frame=frame[keep],
        z=z[keep],
        sin_theta=sin_theta[keep],
        ring_size=ring_size[keep],
        phase=phase[keep],
        step=2 * np.pi / ring_size[keep],
        first_pixel=first_pixel[keep],
        centre_phi=frames.centre_phi[frame[keep]],
        half_window=half_window[keep],
    )


def _ring_coordinate(z: np.ndarray, nside: int) -> np.ndarray:
    """Continuous ring number (1 at the north pole's first ring, 4 nside - 1 at the south's) of height z."""
    polar_north = nside * np.sqrt(3.0 * np.maximum(1.0 - z, 0.0))
    polar_south = 4 * nside - nside * np.sqrt(3.0 * np.maximum(1.0 + z, 0.0))
    return np.where(z > 2 / 3, polar_north, np.where(z < -2 / 3, polar_south, nside * (2.0 - 1.5 * z)))


# -- longitudes inside a frame on each ring --------------------------------------------------


def _segments(frames: _Polygons, pairs: _RingPairs) -> tuple[np.ndarray, np.ndarray]:
    """Longitude intervals (relative to the frame centre) inside the frame, two per pair.

    Edge k keeps the longitudes where ``rho cos(u - a) + c >= 0``: an arc
    centred on ``a`` of half-width ``beta``; its complement is a gap.  Gaps
    touching an end of the window only shorten it, leaving one interval
    ``[lower, upper]``; a gap strictly inside the window splits it in two.
    Pairs with more than one such gap are returned apart, to be tested pixel by
    pixel.

    Returns
    -------
    segments : numpy.ndarray
        ``(p, 2, 2)``: for each pair, two ``[lower, upper]`` intervals of
        relative longitude (radians); empty ones have ``lower > upper``.
    tested : numpy.ndarray
        Indices of the pairs whose first segment is only a window (the hull of
        the inside longitudes) in which to test pixel by pixel.
    """
    frame = pairs.frame
    half_window = pairs.half_window[:, None]
    edges = frames.edges[frame]  # one gather of every per-edge number: (p, 4, 4)
    threshold = (pairs.z / pairs.sin_theta)[:, None] * edges[:, :, _SLOPE]
    keeps_nothing = np.any(threshold > 1.0, axis=1)
    keeps_some = threshold > -1.0
    beta = np.arccos(np.clip(threshold, -1.0, 1.0))

    # The gap (centre + pi, half-width pi - beta) strictly inside the window splits it.
    gap_centre = edges[:, :, _GAP_PHI]
    gap_lower, gap_upper = gap_centre - (np.pi - beta), gap_centre + (np.pi - beta)
    inner_gap = keeps_some & (gap_lower > -half_window) & (gap_upper < half_window)

    # Otherwise the kept part of the window is one interval, from one of the two copies of the
    # arc that can reach it (centred in (-pi, pi], and 2 pi nearer zero).
    centre = edges[:, :, _PHI]
    lower = np.maximum(centre - beta, -half_window)
    upper = np.minimum(centre + beta, half_window)
    other = edges[:, :, _OTHER_PHI]
    use_other = upper < lower
    lower = np.where(use_other, np.maximum(other - beta, -half_window), lower)
    upper = np.where(use_other, np.minimum(other + beta, half_window), upper)
    whole = ~keeps_some | inner_gap
    lower = np.where(whole, -half_window, lower).max(axis=1)
    upper = np.where(whole, half_window, upper).min(axis=1)
    lower[keeps_nothing], upper[keeps_nothing] = 1.0, -1.0

    inner_gaps = inner_gap.sum(axis=1)
    split = inner_gaps == 1
    which = np.argmax(inner_gap, axis=1)[:, None]
    split_lower = np.take_along_axis(gap_lower, which, axis=1)[:, 0]
    split_upper = np.take_along_axis(gap_upper, which, axis=1)[:, 0]
    segments = np.empty((frame.size, 2, 2))
    segments[:, 0, 0], segments[:, 1, 1] = lower, upper
    segments[:, 0, 1] = np.where(split, np.minimum(upper, split_lower), upper)
    segments[:, 1, 0] = np.where(split, np.maximum(lower, split_upper), 1.0)
    segments[~split, 1, 1] = -1.0
    tested = np.flatnonzero((inner_gaps > 1) & ~keeps_nothing)
    return segments, tested


def _pixel_range(
    pairs: _RingPairs, lower: np.ndarray, upper: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """First ring pixel number and count of the pixel centres in ``[lower, upper]`` (relative longitude)."""
    step, phase, size = pairs.step[rows], pairs.phase[rows], pairs.ring_size[rows]
    centre_phi = pairs.centre_phi[rows]
    first = np.ceil((lower + centre_phi) / step - phase)
    last = np.floor((upper + centre_phi) / step - phase)
    count = np.where(np.isfinite(first) & np.isfinite(last), last - first + 1, 0).astype(np.int64)
    # A whole ring (the window of a frame around a pole) must not count its pixels twice.
    count = np.clip(count, 0, size)
    return np.where(np.isfinite(first), first, 0).astype(np.int64), count


def _expand_segments(pairs: _RingPairs, segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frame index and RING pixel index of every pixel centre inside the segments."""
    rows = np.repeat(np.arange(pairs.frame.size), 2)
    first, count = _pixel_range(pairs, segments[:, :, 0].ravel(), segments[:, :, 1].ravel(), rows)
    occupied = count > 0
    rows, first, count = rows[occupied], first[occupied], count[occupied]
    row = np.repeat(rows, count)
    j = np.repeat(first, count) + _ranks(count)
    return pairs.frame[row], pairs.first_pixel[row] + j % pairs.ring_size[row]


def _test_candidates(
    frames: _Polygons, pairs: _RingPairs, tested: np.ndarray, windows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in the ``windows`` (``(t, 2)`` relative longitudes) of pairs ``tested`` inside every edge."""
    first, count = _pixel_range(pairs, windows[:, 0], windows[:, 1], tested)
    row = np.repeat(tested, count)
    j = (np.repeat(first, count) + _ranks(count)) % pairs.ring_size[row]
    phi = (j + pairs.phase[row]) * pairs.step[row]
    sin_theta = pairs.sin_theta[row]
    points = np.stack([sin_theta * np.cos(phi), sin_theta * np.sin(phi), pairs.z[row]], axis=-1)
    inside = np.all(np.einsum("pkd,pd->pk", frames.normals[pairs.frame[row]], points) >= 0.0, axis=1)
    return pairs.frame[row][inside], pairs.first_pixel[row][inside] + j[inside]


def _ranks(counts: np.ndarray) -> np.ndarray:
    """0, 1, ..., c - 1 for each count c, concatenated."""
    total = int(counts.sum())
    starts = np.cumsum(counts) - counts
    return np.arange(total, dtype=np.int64) - np.repeat(starts, counts)


def _wrap(angle: np.ndarray) -> np.ndarray:
    """Angles brought into (-pi, pi]."""
    return np.pi - np.mod(np.pi - angle, 2 * np.pi)

"""Frame footprints rasterised on the HEALPix grid: pixel centres inside spherical quadrilaterals.

A frame's footprint is the convex spherical polygon of its four WCS corners
(great-circle edges).  :func:`footprint_pixels` returns, for many frames at
once, the NESTED pixels of a (fine) order whose centres lie inside each
polygon: the set ``hpgeom.query_polygon(..., inclusive=False)`` returns, frame
by frame.  :func:`footprint_coverage` gathers them into the fraction of each coarser
pixel a frame covers.

How: HEALPix pixel centres lie on iso-latitude rings at known longitudes.  For
every (frame, ring) pair the longitudes inside the polygon are worked out
exactly from the four edge constraints ``n_k . x >= 0`` (each one keeps an arc
of the ring), inside a window given by the frame's bounding cap, so pixels are
produced as runs of consecutive ring indices rather than tested one by one.
Pairs where two edges cut gaps into the middle of the window (possible only
for frames large against their distance to a pole) fall back to testing each
candidate pixel centre.  Polygons across RA = 0 and around a pole need no
special case.  The per-frame geometry is vectorised NumPy; the loop over
rings and pixels is compiled with Numba (a few seconds on first use, then
cached), since at millions of frames it visits hundreds of millions of pixels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numba
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
    frame_index, pixel, _ = _rasterised(*_checked_corners(corner_ra, corner_dec), order, 0)
    return FinePixels(frame_index=frame_index, pixel=pixel, order=order)


def footprint_coverage(corner_ra: np.ndarray, corner_dec: np.ndarray, *, order: int, levels: int) -> Coverage:
    """Covered fraction, and covered sub-pixels, of the pixels of ``order`` inside each frame.

    The fine pixels of :func:`footprint_pixels` at ``order + levels``,
    gathered into their pixels of ``order`` as they are found.

    Parameters
    ----------
    corner_ra, corner_dec : numpy.ndarray
        Shape ``(n, 4)``: each frame's corners in degrees, as for :func:`footprint_pixels`.
    order : int
        HEALPix order of the coverage.
    levels : int
        Orders between the coverage and the fine pixels (0-3): ``4**levels`` sub-pixels per pixel.

    Returns
    -------
    Coverage
        One row per (frame, pixel) holding at least one fine pixel centre, grouped by frame.
    """
    if not 0 <= levels <= MAX_SUBPIXEL_LEVELS:
        raise ValueError(f"levels must be between 0 and {MAX_SUBPIXEL_LEVELS}, got {levels}")
    if not 0 <= order + levels <= MAX_ORDER:
        raise ValueError(f"order + levels must be between 0 and {MAX_ORDER}, got {order + levels}")
    frame_index, pixel, mask = _rasterised(*_checked_corners(corner_ra, corner_dec), order + levels, levels)
    subpixels = mask.astype(subpixel_mask_dtype(levels))
    return Coverage(
        frame_index=frame_index, pixel=pixel, fraction=popcount(mask) / float(1 << (2 * levels)),
        subpixels=subpixels, order=order,
    )


def _rasterised(
    corner_ra: np.ndarray, corner_dec: np.ndarray, order: int, levels: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows (frame, pixel ``levels`` orders above ``order``, sub-pixel mask) of :func:`_rasterise`."""
    if corner_ra.shape[0] == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint64)
    frames = _Polygons.from_corners(corner_ra, corner_dec)
    arguments = (order, levels, frames.normals, frames.centre_z, frames.centre_sin_theta, frames.centre_phi,
                 frames.cos_radius, frames.edges)
    # Room for the rows the frames' areas promise, with a margin; a second pass if that was short.
    fine_pixels = footprint_area_deg2(corner_ra, corner_dec) * (np.pi / 180) ** 2 / (np.pi / (3 << (2 * order)))
    capacity = int(np.sum(1.1 * fine_pixels / 4**levels + 8 * np.sqrt(fine_pixels) / 2**levels + 16))
    while True:
        rows = (np.empty(capacity, dtype=np.int64), np.empty(capacity, dtype=np.int64),
                np.empty(capacity, dtype=np.uint64))
        count = _rasterise(*arguments, *rows)
        if count <= capacity:
            return tuple(column[:count] for column in rows)
        capacity = count


def _checked_corners(corner_ra: np.ndarray, corner_dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    corner_ra = np.asarray(corner_ra, dtype=np.float64)
    corner_dec = np.asarray(corner_dec, dtype=np.float64)
    if corner_ra.ndim != 2 or corner_ra.shape[1] != 4 or corner_dec.shape != corner_ra.shape:
        raise ValueError(f"corners must be two (n, 4) arrays, got shapes {corner_ra.shape} and {corner_dec.shape}")
    if not (np.all(np.isfinite(corner_ra)) and np.all(np.isfinite(corner_dec))):
        raise ValueError("frame corners must be finite")
    return corner_ra, corner_dec


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


@numba.njit(cache=True, nogil=True)
def _spread_bits(value: int) -> int:
    """The bits of ``value`` (< 2**29) moved to the even positions (0, 2, 4, ...): half a NESTED index."""
    value &= 0x1FFFFFFF
    value = (value | (value << 16)) & 0x0000FFFF0000FFFF
    value = (value | (value << 8)) & 0x00FF00FF00FF00FF
    value = (value | (value << 4)) & 0x0F0F0F0F0F0F0F0F
    value = (value | (value << 2)) & 0x3333333333333333
    return (value | (value << 1)) & 0x5555555555555555


@numba.njit(cache=True, nogil=True)
def _ring_to_face_xy(order: int, ring: int, ring_pixel: int) -> tuple[int, int, int]:
    """Base face and in-face coordinates (x, y) of pixel ``ring_pixel`` (0-based along the ring) of ``ring``.

    As HEALPix's ``ring2xyf`` (Gorski et al. 2005); rings are numbered 1 .. 4 nside - 1.
    """
    nside = 1 << order
    iphi = ring_pixel + 1
    if ring < nside:  # north polar cap
        kshift, ring_length = 0, ring
        face = (iphi - 1) // ring_length
    elif ring <= 3 * nside:  # equatorial belt
        kshift, ring_length = (ring + nside) & 1, nside
        ire = ring - nside + 1
        irm = 2 * nside + 2 - ire
        ifm = (iphi - (ire >> 1) + nside - 1) >> order
        ifp = (iphi - (irm >> 1) + nside - 1) >> order
        face = (ifp | 4) if ifp == ifm else (ifp if ifp < ifm else ifm + 8)
    else:  # south polar cap
        kshift, ring_length = 0, 4 * nside - ring
        face = 8 + (iphi - 1) // ring_length
    irt = ring - (_FACE_RING[face] << order) + 1
    ipt = 2 * iphi - _FACE_PHI[face] * ring_length - kshift - 1
    if ipt >= 2 * nside:
        ipt -= 8 * nside
    return face, (ipt - irt) >> 1, (-ipt - irt) >> 1


@numba.njit(cache=True, nogil=True)
def _ring_coordinate(z: float, nside: int) -> float:
    """Continuous ring number (1 at the north pole's first ring, 4 nside - 1 at the south's) of height z."""
    if z > 2.0 / 3.0:
        return nside * np.sqrt(3.0 * max(1.0 - z, 0.0))
    if z < -2.0 / 3.0:
        return 4 * nside - nside * np.sqrt(3.0 * max(1.0 + z, 0.0))
    return nside * (2.0 - 1.5 * z)


@numba.njit(cache=True, nogil=True)
def _rasterise(
    order, levels, normals, centre_z, centre_sin_theta, centre_phi, cos_radius, edges, frame_out, pixel_out, mask_out,
):
    """Pixel centres inside each frame, ring by ring, gathered into pixels ``levels`` orders coarser.

    Writes one row per (frame, coarse pixel) with a centre inside: frame,
    NESTED coarse pixel and the mask of its fine pixels inside (bit ``i``:
    fine pixel ``coarse * 4**levels + i``), frame by frame, as far as the
    output arrays reach, and returns how many rows there are (counting on
    past their end).  For every ring that may cross a
    frame's bounding cap, the longitudes inside are worked out from the four
    edge constraints: edge k keeps the longitudes (relative to the frame
    centre) where ``cos(u - phi_k) >= cot(theta) * slope_k``, an arc of
    half-width ``beta_k`` around ``phi_k``; its complement is a gap.  Gaps
    touching an end of the cap's window only shorten it, leaving one interval;
    a gap strictly inside the window splits it in two.  A ring with more than
    one such gap (possible only for frames large against their distance to a
    pole) is tested pixel centre by pixel centre.
    """
    nside = 1 << order
    shift = 2 * levels
    fine_bits = (1 << shift) - 1
    capacity = frame_out.size
    found = 0
    last_ring = 4 * nside - 1
    lower_k = np.empty(4)
    upper_k = np.empty(4)
    for frame in range(centre_z.size):
        frame_start = found
        last_row = -1  # the row that took the last fine pixel (consecutive ones mostly share a coarse pixel)
        dec = np.arcsin(min(max(centre_z[frame], -1.0), 1.0))
        radius = np.arccos(min(max(cos_radius[frame], -1.0), 1.0))
        z_top = np.sin(min(dec + radius, np.pi / 2))
        z_bottom = np.sin(max(dec - radius, -np.pi / 2))
        first = min(max(int(np.floor(_ring_coordinate(z_top, nside))), 1), last_ring)
        last = min(max(int(np.ceil(_ring_coordinate(z_bottom, nside))), 1), last_ring)
        for ring in range(first, last + 1):
            north, south = ring < nside, ring > 3 * nside
            cap_ring = 4 * nside - ring if south else ring
            if north or south:
                depth = cap_ring * cap_ring / (3.0 * nside * nside)  # 1 - |z| on the polar caps
                z = 1.0 - depth if north else depth - 1.0
                sin_theta = np.sqrt(min(max(depth * (2.0 - depth), 0.0), 1.0))
                ring_size = 4 * cap_ring
                phase = 0.5
            else:
                z = 4.0 / 3.0 - 2.0 * ring / (3.0 * nside)
                sin_theta = np.sqrt(min(max(1.0 - z * z, 0.0), 1.0))
                ring_size = 4 * nside
                # Equatorial rings alternate between pixel centres at phi = j*step and (j + 1/2)*step.
                phase = 0.5 if (ring + nside) % 2 == 0 else 0.0
            step = 2 * np.pi / ring_size
            # Half-width in longitude of the frame's cap on this ring: cos(dphi) = (cos r - z zc) / (sin t sin tc).
            across = sin_theta * centre_sin_theta[frame]
            along = z * centre_z[frame]
            if across > 0:
                cos_half = (cos_radius[frame] - along) / across
            else:  # a centre on a pole: the ring is wholly in the cap or wholly out
                cos_half = -2.0 if along >= cos_radius[frame] else 2.0
            if cos_half > 1.0:
                continue
            half_window = np.arccos(max(cos_half, -1.0))

            keeps_nothing = False
            inner_gaps = 0
            split_lower = split_upper = 0.0
            for k in range(4):
                threshold = (z / sin_theta) * edges[frame, k, _SLOPE]
                if threshold > 1.0:
                    keeps_nothing = True
                beta = np.arccos(min(max(threshold, -1.0), 1.0))
                gap_lower = edges[frame, k, _GAP_PHI] - (np.pi - beta)
                gap_upper = edges[frame, k, _GAP_PHI] + (np.pi - beta)
                inner_gap = threshold > -1.0 and gap_lower > -half_window and gap_upper < half_window
                if inner_gap:
                    if inner_gaps == 0:
                        split_lower, split_upper = gap_lower, gap_upper
                    inner_gaps += 1
                if threshold <= -1.0 or inner_gap:  # this edge alone keeps the whole window
                    lower_k[k], upper_k[k] = -half_window, half_window
                else:
                    # the kept interval, from one of the two copies of the arc that can reach the window
                    lower = max(edges[frame, k, _PHI] - beta, -half_window)
                    upper = min(edges[frame, k, _PHI] + beta, half_window)
                    if upper < lower:
                        lower = max(edges[frame, k, _OTHER_PHI] - beta, -half_window)
                        upper = min(edges[frame, k, _OTHER_PHI] + beta, half_window)
                    lower_k[k], upper_k[k] = lower, upper
            if keeps_nothing:
                continue
            lower, upper = lower_k.max(), upper_k.min()
            first_pixel_phi = centre_phi[frame]
            tested = inner_gaps > 1
            for segment in range(1 if tested or inner_gaps == 0 else 2):
                if tested or inner_gaps == 0:
                    start, stop = lower, upper
                elif segment == 0:
                    start, stop = lower, min(upper, split_lower)
                else:
                    start, stop = max(lower, split_upper), upper
                first_j = np.ceil((start + first_pixel_phi) / step - phase)
                last_j = np.floor((stop + first_pixel_phi) / step - phase)
                if not (np.isfinite(first_j) and np.isfinite(last_j)):
                    continue
                # a whole ring (the window of a frame around a pole) must not count its pixels twice
                count = min(max(int(last_j - first_j) + 1, 0), ring_size)
                # Along a ring within a base face, each step east is x + 1, y - 1: the NESTED index
                # follows by incrementing its interleaved halves, recomputed where the run leaves the face.
                x = y = -1
                face_base = x_bits = y_bits = 0
                for offset in range(count):
                    j = int(first_j) + offset
                    j = j - ring_size if j >= ring_size else (j + ring_size if j < 0 else j)
                    if tested:
                        phi = (j + phase) * step
                        point_x, point_y = sin_theta * np.cos(phi), sin_theta * np.sin(phi)
                        inside = True
                        for k in range(4):
                            if (normals[frame, k, 0] * point_x + normals[frame, k, 1] * point_y
                                    + normals[frame, k, 2] * z) < 0.0:
                                inside = False
                        if not inside:
                            continue
                    if found >= capacity:  # out of room: count (an upper bound of the rows) for the second pass
                        found += 1
                        continue
                    x, y = x + 1, y - 1
                    if tested or offset == 0 or j == 0 or x >= nside or y < 0:
                        face, x, y = _ring_to_face_xy(order, ring, j)
                        face_base = face << (2 * order)
                        x_bits, y_bits = _spread_bits(x), _spread_bits(y) << 1
                    else:
                        x_bits = ((x_bits | _ODD_BITS) + 1) & _EVEN_BITS
                        y_bits = ((y_bits & _ODD_BITS) - 1) & _ODD_BITS
                    fine = face_base + x_bits + y_bits
                    coarse, bit = fine >> shift, np.uint64(1) << np.uint64(fine & fine_bits)
                    if shift:
                        row = last_row
                        if row < 0 or pixel_out[row] != coarse:
                            row = frame_start
                            while row < found and pixel_out[row] != coarse:
                                row += 1
                        if row < found:
                            mask_out[row] |= bit
                            last_row = row
                            continue
                    frame_out[found] = frame
                    pixel_out[found] = coarse
                    mask_out[found] = bit
                    last_row = found
                    found += 1
    return found


_EVEN_BITS = 0x5555555555555555
_ODD_BITS = 0x2AAAAAAAAAAAAAAA  # the odd bits below the sign bit (indices use at most 58 bits)

_POPCOUNT_16 = np.array([bin(value).count("1") for value in range(1 << 16)], dtype=np.uint8)


def popcount(masks: np.ndarray) -> np.ndarray:
    """Bits set in each unsigned integer (up to 64 bits)."""
    masks = masks.astype(np.uint64)
    total = np.zeros(masks.shape, dtype=np.int64)
    for shift in range(0, 64, 16):
        total += _POPCOUNT_16[(masks >> np.uint64(shift)) & np.uint64(0xFFFF)]
    return total


_FACE_RING = np.array([2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4], dtype=np.int64)
"""Ring of each base face's southernmost corner, in units of nside (HEALPix ``jrll``)."""

_FACE_PHI = np.array([1, 3, 5, 7, 0, 2, 4, 6, 1, 3, 5, 7], dtype=np.int64)
"""Longitude of each base face's centre, in units of pi/4 (HEALPix ``jpll``)."""


def _wrap(angle: np.ndarray) -> np.ndarray:
    """Angles brought into (-pi, pi]."""
    return np.pi - np.mod(np.pi - angle, 2 * np.pi)

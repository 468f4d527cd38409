"""Frame footprints sampled on the HEALPix grid: sub-pixel centres inside spherical quadrilaterals.

A frame's footprint is the convex spherical polygon of its four WCS corners
(great-circle edges).  :func:`footprint_pixels` returns, for many frames at
once, the NESTED pixels of one order whose centres lie inside each polygon:
the set ``hpgeom.query_polygon(..., inclusive=False)`` returns, frame by
frame.  :func:`footprint_coverage` samples each frame at an order of its own
and gathers what it finds into the fraction of each output pixel the frame
covers, and into the sub-pixels covered for the union of frames.

Sampling order.  A frame counts in a pixel where sub-pixel centres fall
inside it, so a frame smaller than a sub-pixel can hold none and vanish.
decasu (``nside``) and Rubin's healsparse property maps
(``HealSparseInputMapConfig.nside``) render every CCD at one fine nside,
32768 by default, with the same centre-in-polygon test, and leave degrading
to the reader.  Here each frame is sampled at the coarsest order where it
holds at least :data:`MIN_CENTRES` sub-pixel centres (its area over a
sub-pixel's), and never coarser than ``min_levels`` orders below the output
(the fraction of a pixel a frame covers needs sub-pixels even when the frame
is large): small frames stay sampled, large ones stay cheap.  Frames of one
chunk are grouped by sampling order.  A frame that holds no
sub-pixel centre even at :data:`DEEPEST_SAMPLING_ORDER` (or has a degenerate
corner polygon) is placed by its area: its exact area (:func:`footprint_area_deg2`)
goes to the output pixel holding its centre.  Every frame also counts in the
output pixel holding its centre, with what sampling found there (nothing for a
frame reaching into that pixel by a sliver finer than its sub-pixels).

How the centres are found: HEALPix pixel centres lie on iso-latitude rings at
known longitudes.  For every (frame, ring) pair the longitudes inside the
polygon are worked out exactly from the four edge constraints ``n_k . x >= 0``
(each one keeps an arc of the ring), inside a window given by the frame's
bounding cap, so pixels are produced as runs of consecutive ring indices
rather than tested one by one.  Pairs where two edges cut gaps into the middle
of the window (possible only for frames large against their distance to a
pole) fall back to testing each candidate pixel centre.  Polygons across
RA = 0 and around a pole need no special case.  The per-frame geometry is
vectorised NumPy; the loop over rings and pixels is compiled with Numba (a few
seconds on first use, then cached), since at millions of frames it visits
hundreds of millions of pixels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import healpy
import numba
import numpy as np

logger = logging.getLogger(__name__)

MAX_ORDER = 29
"""Deepest HEALPix order of NESTED int64 indices."""

MAX_SUBPIXEL_LEVELS = 3
"""A mask word holds a bit per sub-pixel for up to 3 orders (64 sub-pixels: one uint64)."""

MIN_CENTRES = 64
"""Each frame is sampled at the order where its area holds at least 64 sub-pixels.

With 64 centres a frame's covered fraction is good to a few per cent (the
sub-pixels its edges cut), and a frame reaches at least one sub-pixel of the
output pixel holding its centre even when that centre sits in a corner of it.
"""

DEEPEST_SAMPLING_ORDER = 20
"""No frame is sampled deeper than order 20 (sub-pixels of 0.2 arcsec) unless the output nside asks for it."""

SKY_AREA_DEG2 = 4 * np.pi * (180 / np.pi) ** 2

_SLOPE, _PHI, _OTHER_PHI, _GAP_PHI = range(4)  # the per-edge numbers of _Polygons.edges

_WINDOW_MARGIN_RAD = 1e-9
"""The bounding cap is widened by this much so that rounding cannot cut a pixel centre off."""


def pixel_area_deg2(order: int | np.ndarray) -> float | np.ndarray:
    """Area of one HEALPix pixel of ``order``, in square degrees."""
    return SKY_AREA_DEG2 / (12.0 * 4.0 ** np.asarray(order, dtype=np.float64))


def order_for_centres(area_deg2: np.ndarray, min_centres: int = MIN_CENTRES) -> np.ndarray:
    """The coarsest order at which a footprint of ``area_deg2`` holds ``min_centres`` pixels' worth of area.

    Unbounded: a zero or non-finite area gives :data:`MAX_ORDER` (callers clip).
    """
    area = np.asarray(area_deg2, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        wanted = np.log(min_centres * SKY_AREA_DEG2 / (12.0 * area)) / np.log(4.0)
    wanted = np.where(np.isfinite(wanted) & (area > 0), wanted, MAX_ORDER)
    # a hair below an integer is that integer: an area of exactly 64 pixels needs no deeper order
    return np.clip(np.ceil(wanted - 1e-9), 0, MAX_ORDER).astype(np.int64)


@dataclass(frozen=True)
class Sampling:
    """How deep footprints are sampled for maps of one output order.

    Attributes
    ----------
    order
        HEALPix order of the output maps.
    mask_order
        Order of the sub-pixels whose union makes each output pixel's covered
        fraction (at least ``order + min_levels``).  Frames sampled deeper add
        their covered fractions to it instead (see :class:`Coverage`).
    min_levels
        No frame is sampled coarser than this many orders below the output.
    min_centres
        Frames are sampled where they hold at least this many sub-pixels.
    deepest_order
        No frame is sampled deeper than this (unless ``order + min_levels`` is deeper).
    """

    order: int
    mask_order: int
    min_levels: int = 2
    min_centres: int = MIN_CENTRES
    deepest_order: int = DEEPEST_SAMPLING_ORDER

    def __post_init__(self) -> None:
        if not 0 <= self.order <= MAX_ORDER:
            raise ValueError(f"order must be between 0 and {MAX_ORDER}, got {self.order}")
        if self.min_levels < 0 or self.order + self.min_levels > MAX_ORDER:
            raise ValueError(
                f"order + min_levels must be between {self.order} and {MAX_ORDER}, got {self.order + self.min_levels}"
            )
        if not self.order + self.min_levels <= self.mask_order <= MAX_ORDER:
            raise ValueError(
                f"mask_order must be between {self.order + self.min_levels} and {MAX_ORDER}, got {self.mask_order}"
            )
        if self.min_centres < 1:
            raise ValueError(f"min_centres must be positive, got {self.min_centres}")

    @property
    def row_order(self) -> int:
        """Order of the pixels whose sub-pixels one mask word holds (at most 3 orders above ``mask_order``)."""
        return max(self.order, self.mask_order - MAX_SUBPIXEL_LEVELS)

    @property
    def mask_levels(self) -> int:
        """Orders between ``row_order`` and ``mask_order``: each mask word has ``4**mask_levels`` bits."""
        return self.mask_order - self.row_order

    @property
    def words(self) -> int:
        """Mask words per output pixel."""
        return 1 << (2 * (self.row_order - self.order))

    def frame_orders(self, area_deg2: np.ndarray) -> np.ndarray:
        """The order each frame is sampled at, from its area (int64)."""
        fewest = self.order + self.min_levels
        return np.clip(order_for_centres(area_deg2, self.min_centres), fewest, max(fewest, self.deepest_order))


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
    """Where a chunk of frames lies on the output grid.

    Cells (one per frame and output pixel it counts in) carry the statistics'
    weights; union rows carry the sub-pixels covered, for the covered fraction.

    Attributes
    ----------
    frame_index
        Per cell: index of the frame in the arrays given to :func:`footprint_coverage` (int64).
    pixel
        Per cell: NESTED output pixel (int64).
    fraction
        Per cell: fraction of the pixel's area the frame covers (float64; 0
        for a frame that reaches the pixel holding its centre by less than a sub-pixel).
    unmasked_fraction
        Per cell: the part of ``fraction`` that no sub-pixel bit holds: all
        of it for frames sampled deeper than ``sampling.mask_order`` or
        placed by their area, otherwise 0.
    subpixels
        Per cell, when an output pixel's sub-pixels fit one mask word
        (``sampling.row_order == sampling.order``): bit ``i`` set when
        sub-pixel ``pixel * 4**mask_levels + i`` (at ``sampling.mask_order``)
        lies inside the frame (dtype from :func:`subpixel_mask_dtype`); zeros otherwise.
    union_pixel
        When an output pixel needs several mask words: per union row, a NESTED
        pixel at ``sampling.row_order`` (one word); empty otherwise.
    union_bits
        Per union row: its sub-pixels inside a frame, as ``subpixels``.
    sampling_order
        Per frame: the order it was sampled at (int64).
    placed_by_area
        Per frame: no sub-pixel centre was found inside it (too small for
        the deepest order, or a degenerate polygon), so its area went to the
        pixel holding its centre.
    sampling
        How the frames were sampled.
    """

    frame_index: np.ndarray
    pixel: np.ndarray
    fraction: np.ndarray
    unmasked_fraction: np.ndarray
    subpixels: np.ndarray
    union_pixel: np.ndarray
    union_bits: np.ndarray
    sampling_order: np.ndarray
    placed_by_area: np.ndarray
    sampling: Sampling

    @property
    def order(self) -> int:
        """HEALPix order of the cells' pixels."""
        return self.sampling.order


def placeable(corner_ra: np.ndarray, corner_dec: np.ndarray) -> np.ndarray:
    """Which frames :func:`footprint_coverage` can place: four finite corners with a mean direction.

    Parameters
    ----------
    corner_ra, corner_dec : numpy.ndarray
        Shape ``(n, 4)``, degrees; NaN where a corner is unknown.

    Returns
    -------
    numpy.ndarray
        Boolean, shape ``(n,)``.
    """
    finite = np.all(np.isfinite(corner_ra), axis=1) & np.all(np.isfinite(corner_dec), axis=1)
    with np.errstate(invalid="ignore"):
        centre_norm = np.linalg.norm(_unit_corners(corner_ra, corner_dec).sum(axis=1), axis=1)
    return finite & (centre_norm > 1e-12)


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
    polygons = _Polygons.from_corners(*_checked_corners(corner_ra, corner_dec))
    frame_index, pixel, _, _ = _rasterised(polygons, order, order, order, order)
    return FinePixels(frame_index=frame_index, pixel=pixel, order=order)


def footprint_coverage(corner_ra: np.ndarray, corner_dec: np.ndarray, sampling: Sampling) -> Coverage:
    """Covered fraction of the output pixels each frame counts in, and the sub-pixels inside frames.

    Each frame is sampled at ``sampling.frame_orders`` of its area; every
    frame counts in the output pixel holding its centre (the normalised mean
    of its corners), and a frame with no sub-pixel centre inside is placed
    there by its area.

    Parameters
    ----------
    corner_ra, corner_dec : numpy.ndarray
        Shape ``(n, 4)``: each frame's corners in degrees, as for :func:`footprint_pixels`.
    sampling : Sampling
        Output order and sampling depths.

    Returns
    -------
    Coverage
        At least one cell per frame.

    Raises
    ------
    ValueError
        If the arrays are not ``(n, 4)`` or a corner is not finite.
    """
    corner_ra, corner_dec = _checked_corners(corner_ra, corner_dec)
    polygons = _Polygons.from_corners(corner_ra, corner_dec)
    area = polygons.area_deg2
    orders = sampling.frame_orders(area)
    drawable = np.all(np.isfinite(polygons.normals), axis=(1, 2)) & (area > 0)
    row_order, mask_order = sampling.row_order, sampling.mask_order
    groups = []
    for order in np.unique(orders[drawable]).tolist():
        members = np.flatnonzero(drawable & (orders == order))
        frame, row_pixel, bits, fraction = _rasterised(
            polygons.take(members), order, row_order, mask_order, sampling.order
        )
        groups.append((members[frame], row_pixel, bits, fraction))
    frame, row_pixel, bits, fraction = (
        np.concatenate(columns) if groups else np.zeros(0, dtype=dtype)
        for columns, dtype in zip(zip(*groups) if groups else ((),) * 4, (np.int64, np.int64, np.uint64, np.float64))
    )
    mask_dtype = subpixel_mask_dtype(sampling.mask_levels)
    if row_order == sampling.order:  # one row per frame and output pixel: the rows are the cells
        cell_frame, cell_pixel, cell_fraction, subpixels = frame, row_pixel, fraction, bits.astype(mask_dtype)
        union_pixel, union_bits = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=mask_dtype)
    else:
        cell_frame, cell_pixel, cell_fraction = _cells(frame, row_pixel, fraction, 2 * (row_order - sampling.order))
        subpixels = np.zeros(cell_frame.size, dtype=mask_dtype)
        kept = np.flatnonzero(bits)
        union_pixel, union_bits = row_pixel[kept], bits[kept].astype(mask_dtype)
    unmasked = np.where(orders[cell_frame] > mask_order, cell_fraction, 0.0)
    cell_frame, cell_pixel, cell_fraction, unmasked, subpixels, placed_by_area = _with_centres(
        polygons, area, sampling.order, cell_frame, cell_pixel, cell_fraction, unmasked, subpixels
    )
    return Coverage(
        frame_index=cell_frame,
        pixel=cell_pixel,
        fraction=cell_fraction,
        unmasked_fraction=unmasked,
        subpixels=subpixels,
        union_pixel=union_pixel,
        union_bits=union_bits,
        sampling_order=orders,
        placed_by_area=placed_by_area,
        sampling=sampling,
    )


def _rasterised(
    polygons: _Polygons, order: int, row_order: int, mask_order: int, output_order: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows of :func:`_rasterise`: frame, pixel of ``row_order``, bits at ``mask_order``, fraction of a pixel."""
    if polygons.normals.shape[0] == 0:
        return (
            np.zeros(0, dtype=np.int64),
            np.zeros(0, dtype=np.int64),
            np.zeros(0, dtype=np.uint64),
            np.zeros(0, dtype=np.float64),
        )
    arguments = (
        order,
        row_order,
        mask_order,
        output_order,
        polygons.normals,
        polygons.centre_z,
        polygons.centre_sin_theta,
        polygons.centre_phi,
        polygons.cos_radius,
        polygons.edges,
    )
    # Room for the rows the frames' areas promise, with a margin; a second pass if that was short.
    rows_each = polygons.area_deg2 / pixel_area_deg2(max(order, row_order)) * 4.0 ** max(row_order - order, 0)
    rows_each /= 4.0 ** max(order - row_order, 0)
    capacity = int(np.sum(1.1 * rows_each + 8 * np.sqrt(rows_each) + 16))
    while True:
        rows = (
            np.empty(capacity, dtype=np.int64),
            np.empty(capacity, dtype=np.int64),
            np.empty(capacity, dtype=np.uint64),
            np.empty(capacity, dtype=np.float64),
        )
        count = _rasterise(*arguments, *rows)
        if count <= capacity:
            return tuple(column[:count] for column in rows)
        capacity = count


def _cells(
    frame: np.ndarray, row_pixel: np.ndarray, fraction: np.ndarray, shift: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows gathered into one cell per (frame, output pixel ``row_pixel >> shift``), fractions summed."""
    cell_frame = np.empty(frame.size, dtype=np.int64)
    cell_pixel = np.empty(frame.size, dtype=np.int64)
    cell_fraction = np.empty(frame.size, dtype=np.float64)
    count = _gather_cells(frame, row_pixel, fraction, shift, cell_frame, cell_pixel, cell_fraction)
    return cell_frame[:count], cell_pixel[:count], cell_fraction[:count]


def _with_centres(
    polygons: _Polygons,
    area: np.ndarray,
    order: int,
    frame: np.ndarray,
    pixel: np.ndarray,
    fraction: np.ndarray,
    unmasked: np.ndarray,
    subpixels: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The cells, with a cell added where a frame has none in the output pixel holding its centre.

    A frame with no cell at all is placed by its area there (all of it unmasked); one with
    cells elsewhere only counts there (a sliver finer than its sub-pixels).
    """
    frames = area.size
    centre_pixel = healpy.vec2pix(1 << order, *polygons.centre.T, nest=True).astype(np.int64)
    at_centre = np.zeros(frames, dtype=bool)
    at_centre[frame[pixel == centre_pixel[frame]]] = True
    missing = np.flatnonzero(~at_centre)
    placed_by_area = np.ones(frames, dtype=bool)
    placed_by_area[frame] = False
    if missing.size == 0:
        return frame, pixel, fraction, unmasked, subpixels, placed_by_area
    added = np.where(placed_by_area[missing], np.minimum(area[missing] / pixel_area_deg2(order), 1.0), 0.0)
    return (
        np.concatenate([frame, missing]),
        np.concatenate([pixel, centre_pixel[missing]]),
        np.concatenate([fraction, added]),
        np.concatenate([unmasked, added]),
        np.concatenate([subpixels, np.zeros(missing.size, dtype=subpixels.dtype)]),
        placed_by_area,
    )


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
    return _polygon_area_deg2(_unit_corners(corner_ra, corner_dec))


def _unit_corners(corner_ra: np.ndarray, corner_dec: np.ndarray) -> np.ndarray:
    """Unit vectors of the corners, shape ``(n, 4, 3)``."""
    ra, dec = np.radians(corner_ra), np.radians(corner_dec)
    cos_dec = np.cos(dec)
    return np.stack([cos_dec * np.cos(ra), cos_dec * np.sin(ra), np.sin(dec)], axis=-1)


def _polygon_area_deg2(corners: np.ndarray) -> np.ndarray:
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
    """Per frame: inward edge normals, centre direction, area and the cap around the frame."""

    normals: np.ndarray  # (n, 4, 3), unit, pointing inside
    centre: np.ndarray  # (n, 3), the corners' normalised mean direction
    area_deg2: np.ndarray
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
        corners = _unit_corners(corner_ra, corner_dec)
        with np.errstate(invalid="ignore"):  # a repeated corner leaves an edge without a normal (NaN)
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
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = np.where(horizontal > 0, -normals[:, :, 2] / horizontal, -np.sign(normals[:, :, 2]) * 1e300)
        return cls(
            normals=normals,
            centre=centre,
            area_deg2=_polygon_area_deg2(corners),
            centre_z=centre[:, 2],
            centre_sin_theta=np.hypot(centre[:, 0], centre[:, 1]),
            centre_phi=centre_phi,
            cos_radius=np.cos(radius + _WINDOW_MARGIN_RAD),
            edges=np.stack(
                [slope, edge_phi, edge_phi - 2 * np.pi * np.where(edge_phi > 0, 1.0, -1.0), _wrap(edge_phi + np.pi)],
                axis=-1,
            ),
        )

    def take(self, frames: np.ndarray) -> _Polygons:
        """The polygons of ``frames`` (indices)."""
        return _Polygons(**{name: value[frames] for name, value in vars(self).items()})


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
    order,
    row_order,
    mask_order,
    output_order,
    normals,
    centre_z,
    centre_sin_theta,
    centre_phi,
    cos_radius,
    edges,
    frame_out,
    pixel_out,
    mask_out,
    fraction_out,
):
    """Pixel centres of ``order`` inside each frame, ring by ring, as rows of pixels of ``row_order``.

    Writes rows (frame, NESTED pixel of ``row_order``, bits of its sub-pixels
    at ``mask_order`` inside the frame, fraction of an output pixel of
    ``output_order`` they stand for), frame by frame, as far as the output
    arrays reach, and returns how many rows there are (counting on past their
    end).  A pixel centre found at ``order`` covers ``4**(mask_order - order)``
    sub-pixels when ``order <= mask_order``, and none when deeper (the rows
    then carry only the fraction); when ``order < row_order`` it spans
    ``4**(row_order - order)`` whole rows.  For every ring that may cross a
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
    capacity = frame_out.size
    found = 0
    last_ring = 4 * nside - 1
    lower_k = np.empty(4)
    upper_k = np.empty(4)
    # How a pixel centre found at `order` becomes rows.
    row_bits = 1 << (2 * (mask_order - row_order))  # sub-pixels (mask bits) per row pixel, at most 64
    whole_row = _low_bits(row_bits)
    spread = 1 << (2 * max(row_order - order, 0))  # rows one centre spans
    row_shift = 2 * max(order - row_order, 0)  # centre index >> row_shift: its row pixel
    run_shift = 2 * max(mask_order - order, 0)
    run = _low_bits(1 << run_shift) if order <= mask_order else np.uint64(0)  # its sub-pixels, from the first
    weight = 0.25 ** (max(order, row_order) - output_order)  # of an output pixel, per centre (or per spanned row)
    shared_rows = order > row_order  # several centres fall in one row: find it before adding one
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
                            if (
                                normals[frame, k, 0] * point_x
                                + normals[frame, k, 1] * point_y
                                + normals[frame, k, 2] * z
                            ) < 0.0:
                                inside = False
                        if not inside:
                            continue
                    if found >= capacity:  # out of room: count (an upper bound of the rows) for the second pass
                        found += spread
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
                    if spread > 1:
                        first_row = fine << (2 * (row_order - order))
                        for part in range(spread):
                            if found < capacity:
                                frame_out[found] = frame
                                pixel_out[found] = first_row + part
                                mask_out[found] = whole_row
                                fraction_out[found] = weight
                            found += 1
                        continue
                    coarse = fine >> row_shift
                    bits = run << np.uint64((fine << run_shift) & (row_bits - 1))
                    if shared_rows:
                        row = last_row
                        if row < 0 or pixel_out[row] != coarse:
                            row = frame_start
                            while row < found and pixel_out[row] != coarse:
                                row += 1
                        if row < found:
                            mask_out[row] |= bits
                            fraction_out[row] += weight
                            last_row = row
                            continue
                    frame_out[found] = frame
                    pixel_out[found] = coarse
                    mask_out[found] = bits
                    fraction_out[found] = weight
                    last_row = found
                    found += 1
    return found


@numba.njit(cache=True, nogil=True)
def _low_bits(count: int) -> np.uint64:
    """A uint64 with its ``count`` (1-64) lowest bits set."""
    if count >= 64:
        return np.uint64(0xFFFFFFFFFFFFFFFF)
    return (np.uint64(1) << np.uint64(count)) - np.uint64(1)


@numba.njit(cache=True, nogil=True)
def _gather_cells(frame, row_pixel, fraction, shift, cell_frame, cell_pixel, cell_fraction) -> int:
    """One cell per (frame, ``row_pixel >> shift``) with the rows' fractions summed; returns the cells written.

    A frame's rows must be consecutive; it has few cells (output pixels coarser than its rows), found by a scan.
    """
    cells = 0
    frame_start = 0
    for row in range(frame.size):
        if row == 0 or frame[row] != frame[row - 1]:
            frame_start = cells
        pixel = row_pixel[row] >> shift
        cell = frame_start
        while cell < cells and cell_pixel[cell] != pixel:
            cell += 1
        if cell == cells:
            cell_frame[cells] = frame[row]
            cell_pixel[cells] = pixel
            cell_fraction[cells] = 0.0
            cells += 1
        cell_fraction[cell] += fraction[row]
    return cells


_EVEN_BITS = 0x5555555555555555
_ODD_BITS = 0x2AAAAAAAAAAAAAAA  # the odd bits below the sign bit (indices use at most 58 bits)

_FACE_RING = np.array([2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4], dtype=np.int64)
"""Ring of each base face's southernmost corner, in units of nside (HEALPix ``jrll``)."""

_FACE_PHI = np.array([1, 3, 5, 7, 0, 2, 4, 6, 1, 3, 5, 7], dtype=np.int64)
"""Longitude of each base face's centre, in units of pi/4 (HEALPix ``jpll``)."""


def _wrap(angle: np.ndarray) -> np.ndarray:
    """Angles brought into (-pi, pi]."""
    return np.pi - np.mod(np.pi - angle, 2 * np.pi)

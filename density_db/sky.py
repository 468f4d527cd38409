"""Sky geometry of detector images: HEALPix indices, footprints, cones, polygons.

Everything is ICRS, angles in degrees, HEALPix in the NESTED scheme.  Sky
regions are stored as half-open ranges ``[lo, hi)`` of order-29 pixel indices
(the healpix-alchemy / MOC "depth-29 ranges" pattern): a pixel of order ``k``
is the range ``[p << 2(29-k), (p + 1) << 2(29-k))``, so regions of any
resolution compare with plain integer range operations in PostgreSQL.
"""

import logging

import astropy.units as u
import healpy
import numpy as np
from astropy.coordinates import Latitude, Longitude
from mocpy import MOC

logger = logging.getLogger(__name__)

HPX_ORDER = 29
"""HEALPix order of point indices (``frame.hpx``): pixels of about 0.4 mas."""

FOOTPRINT_DEPTH = 12
"""MOC depth (HEALPix order) at which frame footprints are rasterised.

The footprint is a conservative cover used as an index to find candidate
frames quickly; exact membership tests use the corners
(:func:`polygon_contains`).  Depth 12 pixels are 52" across: an 11.4'
detector is covered by about 27 ranges and 1.2 times its own area, a good
balance between index size and candidates to reject (depth 11 covers 1.5
times the area, depth 13 needs twice as many ranges).
"""

_MAX_CONE_ORDER = HPX_ORDER - 2
"""healpy's inclusive disc test oversamples pixels 4 times (two orders), which must stay within order 29."""

_ORDER0_RESOLUTION_DEG = float(np.degrees(healpy.nside2resol(1)))
"""Pixel size at order 0 (about 58.6 deg); it halves with every order."""

_COS_TOLERANCE = 1e-12
"""Points within this angle (radians, ~2e-7 arcsec) of an edge count as inside, so corners are inside."""


def hpx29(ra_deg: float | np.ndarray, dec_deg: float | np.ndarray) -> int | np.ndarray:
    """NESTED HEALPix index at order 29 of sky positions.

    Parameters
    ----------
    ra_deg, dec_deg : float or array_like
        ICRS right ascension and declination in degrees.

    Returns
    -------
    int or numpy.ndarray
        Pixel index (int64 array for array input).
    """
    pixels = healpy.ang2pix(2**HPX_ORDER, ra_deg, dec_deg, nest=True, lonlat=True)
    return int(pixels) if np.ndim(pixels) == 0 else np.asarray(pixels, dtype=np.int64)


def footprint_ranges(corner_ra: np.ndarray, corner_dec: np.ndarray, *, depth: int = FOOTPRINT_DEPTH) -> np.ndarray:
    """Depth-29 ranges of the MOC of a sky polygon at an explicit depth.

    Parameters
    ----------
    corner_ra, corner_dec : array_like
        Polygon vertices in degrees, in order (either orientation); edges are
        great circles.  Polygons across RA = 0 and around a pole are fine.
    depth : int, optional
        MOC depth (0-29): every pixel of this order that overlaps the polygon
        is included.

    Returns
    -------
    numpy.ndarray
        Shape ``(n, 2)`` int64: sorted, merged, half-open ``[lo, hi)`` ranges
        of order-29 pixels.
    """
    if not 0 <= depth <= HPX_ORDER:
        raise ValueError(f"depth must be between 0 and {HPX_ORDER}, got {depth}")
    moc = MOC.from_polygon(
        Longitude(np.asarray(corner_ra, dtype=float) * u.deg),
        Latitude(np.asarray(corner_dec, dtype=float) * u.deg),
        max_depth=depth,  # mocpy's default depth (10) would cover far too much sky
    )
    return np.asarray(moc.to_depth29_ranges, dtype=np.int64).reshape(-1, 2)


def cone_ranges(ra_deg: float, dec_deg: float, radius_deg: float) -> np.ndarray:
    """Depth-29 ranges covering at least the whole of a cone.

    The cone is rasterised at the order whose pixels are about a quarter of
    the radius (at most a hundred or so pixels, whatever the radius), keeping
    every pixel that overlaps it: a conservative cover for an index lookup,
    to be refined with :func:`angular_separation_deg`.

    Parameters
    ----------
    ra_deg, dec_deg : float
        Cone centre (ICRS, degrees).
    radius_deg : float
        Cone radius in degrees (>= 0).

    Returns
    -------
    numpy.ndarray
        Shape ``(n, 2)`` int64: sorted, merged, half-open ``[lo, hi)`` ranges
        of order-29 pixels.
    """
    if not (np.isfinite(radius_deg) and radius_deg >= 0):
        raise ValueError(f"cone radius must be a finite number of degrees >= 0, got {radius_deg}")
    order = _MAX_CONE_ORDER
    if radius_deg > 0:
        order = int(np.clip(np.floor(np.log2(4 * _ORDER0_RESOLUTION_DEG / radius_deg)), 0, _MAX_CONE_ORDER))
    nside = 2**order
    centre = healpy.ang2vec(ra_deg, dec_deg, lonlat=True)
    disc = healpy.query_disc(nside, centre, np.radians(radius_deg), inclusive=True, nest=True)
    # A tiny cone may fall between healpy's sample points: the centre's own pixel is always in.
    centre_pixel = healpy.ang2pix(nside, ra_deg, dec_deg, nest=True, lonlat=True)
    pixels = np.unique(np.append(disc, centre_pixel)).astype(np.int64)
    breaks = np.flatnonzero(np.diff(pixels) != 1) + 1
    first = pixels[np.r_[0, breaks]]
    last = pixels[np.r_[breaks - 1, pixels.size - 1]]
    shift = 2 * (HPX_ORDER - order)
    return np.column_stack([first << shift, (last + 1) << shift])


def angular_separation_deg(
    ra1: float | np.ndarray, dec1: float | np.ndarray, ra2: float | np.ndarray, dec2: float | np.ndarray
) -> float | np.ndarray:
    """Great-circle distance between sky positions, elementwise.

    Uses the Vincenty formula, accurate at every separation (the arccos of
    a dot product loses all precision below an arcsecond and near 180 deg).

    Parameters
    ----------
    ra1, dec1, ra2, dec2 : float or array_like
        Positions in degrees; arrays broadcast.

    Returns
    -------
    float or numpy.ndarray
        Separation in degrees, in [0, 180].
    """
    lon1, lat1, lon2, lat2 = (np.radians(np.asarray(value, dtype=float)) for value in (ra1, dec1, ra2, dec2))
    delta_lon = lon2 - lon1
    across = np.cos(lat2) * np.sin(delta_lon)
    along = np.cos(lat1) * np.sin(lat2) - np.sin(lat1) * np.cos(lat2) * np.cos(delta_lon)
    towards = np.sin(lat1) * np.sin(lat2) + np.cos(lat1) * np.cos(lat2) * np.cos(delta_lon)
    separation = np.degrees(np.arctan2(np.hypot(across, along), towards))
    return float(separation) if separation.ndim == 0 else separation


def polygon_contains(
    corner_ra: np.ndarray, corner_dec: np.ndarray, ra: float | np.ndarray, dec: float | np.ndarray
) -> bool | np.ndarray:
    """Whether sky positions lie inside a convex spherical polygon.

    Parameters
    ----------
    corner_ra, corner_dec : array_like
        The polygon's vertices in degrees (a detector's 4 corners), in order,
        either orientation; edges are great circles and the polygon is
        smaller than a hemisphere.
    ra, dec : float or array_like
        Positions to test, in degrees.

    Returns
    -------
    bool or numpy.ndarray
        True for positions inside or on the boundary.
    """
    corners = _unit_vectors(corner_ra, corner_dec)
    normals = np.cross(corners, np.roll(corners, -1, axis=0))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    # The vertices' mean lies inside a convex polygon: it fixes which side of each edge is in,
    # whatever the orientation of the corners.
    inward = np.sign(normals @ corners.sum(axis=0))
    inside = np.all((_unit_vectors(ra, dec) @ normals.T) * inward >= -_COS_TOLERANCE, axis=-1)
    return bool(inside) if inside.ndim == 0 else inside


def circumradius_deg(centre_ra: float, centre_dec: float, corner_ra: np.ndarray, corner_dec: np.ndarray) -> float:
    """Largest separation between a centre and the corners, in degrees.

    A cone of this radius around the centre contains the whole (convex) frame.
    """
    return float(np.max(angular_separation_deg(centre_ra, centre_dec, corner_ra, corner_dec)))


def _unit_vectors(ra_deg: float | np.ndarray, dec_deg: float | np.ndarray) -> np.ndarray:
    ra, dec = np.radians(np.asarray(ra_deg, dtype=float)), np.radians(np.asarray(dec_deg, dtype=float))
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)

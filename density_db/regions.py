"""Sky regions for region searches and plans: cones, spherical polygons and MOCs.

A region does two things for :func:`density_db.queries.frame_ids_in_region`: it
gives PostgreSQL a conservative cover (depth-29 NESTED ranges, compared with
the frames' stored footprints through their GiST index), and it decides
exactly whether a frame's corner quadrilateral overlaps it.

* :class:`ConeRegion`: a circle; a frame overlaps it when a frame corner lies
  inside it, its centre lies inside the frame, or a frame edge passes within
  the radius of its centre.
* :class:`PolygonRegion`: vertices joined by great-circle arcs, convex or not,
  across RA = 0 and around a pole alike; it must fit in a hemisphere and must
  not cross itself.  A frame overlaps it when a frame corner lies inside it, a
  vertex lies inside the frame, or two edges cross.
* :class:`MocRegion`: a MOC (e.g. read from a FITS file written by mocpy or
  Aladin).  A frame overlaps it when the frame polygon touches one of its
  cells, decided on the frame's exact HEALPix coverage at the MOC's depth (at
  most :data:`MOC_EXACT_DEPTH`).

:func:`parse_region` reads the command line's ``--region`` and
:func:`region_from_table` a rules file's ``region = {...}``; every region's
``spec`` is the JSON-able description stored with what was made from it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from mocpy import MOC

from density_db import sky
from density_db.errors import DensityDBError

logger = logging.getLogger(__name__)

MOC_EXACT_DEPTH = 20
"""Deepest order at which frames are tested against a MOC (cells of 0.2"); a deeper MOC is degraded to it.

The frame's coverage costs about 10 ms at this depth and four times more per
order; the frame corners themselves are no better than a pixel (0.074").
"""

_HEMISPHERE_MARGIN = 1e-3
"""Smallest cosine between a polygon vertex and the polygon's centre (vertices within 89.94 deg)."""

_EDGE_TOLERANCE = 1e-12
"""Points within this angle (radians) of an edge count as on it: touching counts as overlapping."""

_PAIRS_PER_CHUNK = 2**18
"""Frame edge x polygon edge pairs tested at once (bounds the memory of the arrays to some ten MB each)."""


class SkyRegion(Protocol):
    """What a region search needs from a region."""

    def cover_ranges(self) -> np.ndarray:
        """Depth-29 ranges ``(n, 2)`` covering at least the whole region."""
        ...

    def overlaps(self, corner_ra: np.ndarray, corner_dec: np.ndarray) -> np.ndarray:
        """Whether each frame, given by its corners ``(frames, corners)`` in degrees, overlaps the region."""
        ...

    @property
    def spec(self) -> dict:
        """The region as JSON-able data (stored as provenance; :func:`region_from_table` reads it back)."""
        ...


@dataclass(frozen=True)
class ConeRegion:
    """All sky within ``radius_deg`` of a centre (degrees, ICRS)."""

    ra: float
    dec: float
    radius_deg: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.ra) and np.isfinite(self.dec) and -90.0 <= self.dec <= 90.0):
            raise DensityDBError(f"a cone centre needs RA in degrees and Dec in [-90, 90], got ({self.ra}, {self.dec})")
        if not (np.isfinite(self.radius_deg) and 0.0 < self.radius_deg <= 180.0):
            raise DensityDBError(f"a cone radius must be in (0, 180] degrees, got {self.radius_deg}")

    @property
    def spec(self) -> dict:
        return {"cone": [self.ra, self.dec, self.radius_deg]}

    def cover_ranges(self) -> np.ndarray:
        """Depth-29 ranges of the HEALPix cells that overlap the cone."""
        return sky.cone_ranges(self.ra, self.dec, self.radius_deg)

    def overlaps(self, corner_ra: np.ndarray, corner_dec: np.ndarray) -> np.ndarray:
        """Whether each frame's convex corner polygon (``(frames, corners)`` degrees) overlaps the cone."""
        corner_ra, corner_dec = np.atleast_2d(corner_ra), np.atleast_2d(corner_dec)
        centre = sky._unit_vectors(self.ra, self.dec)
        cos_radius = np.cos(np.radians(self.radius_deg))
        corners = sky._unit_vectors(corner_ra, corner_dec)  # (frames, k, 3)
        corner_inside = np.any(corners @ centre >= cos_radius, axis=1)
        normals = np.cross(corners, np.roll(corners, -1, axis=1))
        normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
        inward = np.sign(np.einsum("fkc,fc->fk", normals, corners.sum(axis=1)))
        centre_inside = np.all((normals @ centre) * inward >= -_EDGE_TOLERANCE, axis=1)
        # the point of each edge's great circle nearest the centre, if it lies on the edge itself
        offset = normals @ centre  # sine of the distance from the centre to the great circle
        nearest = centre - offset[..., None] * normals
        nearest_norm = np.linalg.norm(nearest, axis=-1)
        on_edge = _between(corners, nearest, np.roll(corners, -1, axis=1), normals) & (nearest_norm > 0)
        edge_near = on_edge & (np.sqrt(np.clip(1 - offset**2, 0, 1)) >= cos_radius)
        return corner_inside | centre_inside | edge_near.any(axis=1)


@dataclass(frozen=True)
class PolygonRegion:
    """A spherical polygon with great-circle edges.

    Use :func:`polygon_region` to build one from user input: it checks the
    vertices.
    """

    vertex_ra: tuple[float, ...]
    vertex_dec: tuple[float, ...]

    @property
    def spec(self) -> dict:
        return {"polygon": [value for vertex in zip(self.vertex_ra, self.vertex_dec) for value in vertex]}

    @property
    def _vertices(self) -> np.ndarray:
        return sky._unit_vectors(self.vertex_ra, self.vertex_dec)

    @property
    def _centre(self) -> np.ndarray:
        total = self._vertices.sum(axis=0)
        return total / np.linalg.norm(total)

    def cover_ranges(self) -> np.ndarray:
        """Depth-29 ranges of the polygon's MOC, at an order fitted to its size (at most the footprint depth)."""
        radius = float(np.degrees(np.arccos(np.clip(np.min(self._vertices @ self._centre), -1, 1))))
        # pixels of about an eighth of the polygon's radius: some hundred ranges, whatever the size
        order = int(
            np.clip(np.floor(np.log2(sky._ORDER0_RESOLUTION_DEG / max(radius, 1e-9))) + 3, 0, sky.FOOTPRINT_DEPTH)
        )
        return sky.footprint_ranges(np.asarray(self.vertex_ra), np.asarray(self.vertex_dec), depth=order)

    def contains(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        """Whether positions (degrees) lie inside the polygon (even-odd rule in the gnomonic projection)."""
        points = sky._unit_vectors(ra, dec).reshape(-1, 3)
        plane = _gnomonic(points, self._centre)
        polygon = _gnomonic(self._vertices, self._centre)
        inside = np.zeros(len(points), dtype=bool)
        front = points @ self._centre > 0  # the polygon lies in the hemisphere in front of its centre
        x, y = plane[front, 0:1], plane[front, 1:2]
        x1, y1 = polygon[:, 0], polygon[:, 1]
        x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
        with np.errstate(divide="ignore", invalid="ignore"):
            crossing = ((y1 > y) != (y2 > y)) & (x < (x2 - x1) * (y - y1) / (y2 - y1) + x1)
        inside[front] = np.count_nonzero(crossing, axis=1) % 2 == 1
        return inside.reshape(np.shape(ra))

    def overlaps(self, corner_ra: np.ndarray, corner_dec: np.ndarray) -> np.ndarray:
        """Whether each frame's convex corner polygon (``(frames, corners)`` degrees) overlaps this polygon."""
        corner_ra, corner_dec = np.atleast_2d(corner_ra), np.atleast_2d(corner_dec)
        result = np.zeros(len(corner_ra), dtype=bool)
        frames_per_chunk = max(1, _PAIRS_PER_CHUNK // (corner_ra.shape[1] * len(self.vertex_ra)))
        for start in range(0, len(corner_ra), frames_per_chunk):
            chunk = slice(start, start + frames_per_chunk)
            result[chunk] = self._overlaps_chunk(corner_ra[chunk], corner_dec[chunk])
        return result

    def _overlaps_chunk(self, corner_ra: np.ndarray, corner_dec: np.ndarray) -> np.ndarray:
        corners = sky._unit_vectors(corner_ra, corner_dec)  # (frames, k, 3)
        vertices = self._vertices  # (m, 3)
        corner_inside = self.contains(corner_ra, corner_dec).any(axis=1)
        # a vertex inside a (convex) frame: on the inner side of all of its edges
        normals = np.cross(corners, np.roll(corners, -1, axis=1))
        normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
        inward = np.sign(np.einsum("fkc,fc->fk", normals, corners.sum(axis=1)))
        sides = np.einsum("fkc,mc->fkm", normals, vertices) * inward[:, :, None]
        vertex_inside = np.all(sides >= -_EDGE_TOLERANCE, axis=1).any(axis=1)
        crossing = _arcs_cross(
            corners[:, :, None, :],
            np.roll(corners, -1, axis=1)[:, :, None, :],
            vertices[None, None, :, :],
            np.roll(vertices, -1, axis=0)[None, None, :, :],
        ).any(axis=(1, 2))
        return corner_inside | vertex_inside | crossing


@dataclass(frozen=True)
class MocRegion:
    """A region given as a MOC (``source``: the file it was read from, if any)."""

    moc: MOC
    source: str | None = None

    @property
    def spec(self) -> dict:
        return {"moc": self.source}

    def cover_ranges(self) -> np.ndarray:
        """The MOC's depth-29 ranges, degraded to the footprint depth (fewer ranges, still a cover)."""
        moc = self.moc
        if moc.max_order > sky.FOOTPRINT_DEPTH:
            moc = moc.degrade_to_order(sky.FOOTPRINT_DEPTH)
        return np.asarray(moc.to_depth29_ranges, dtype=np.int64).reshape(-1, 2)

    def overlaps(self, corner_ra: np.ndarray, corner_dec: np.ndarray) -> np.ndarray:
        """Whether each frame's corner polygon touches a cell of the MOC.

        Coarse to fine: at each order the frame's exact coverage (every
        pixel the polygon touches) either misses the MOC (no overlap), has a
        pixel lying wholly inside the MOC (overlap), or is refined two orders
        deeper, down to the MOC's own depth where the answer is exact.
        """
        corner_ra, corner_dec = np.atleast_2d(corner_ra), np.atleast_2d(corner_dec)
        region = self.moc if self.moc.max_order <= MOC_EXACT_DEPTH else self.moc.degrade_to_order(MOC_EXACT_DEPTH)
        region_ranges = np.asarray(region.to_depth29_ranges, dtype=np.int64).reshape(-1, 2)
        result = np.zeros(len(corner_ra), dtype=bool)
        if len(region_ranges) == 0 or len(corner_ra) == 0:
            return result
        final_order = int(region.max_order)
        undecided = np.arange(len(corner_ra))
        order = min(sky.FOOTPRINT_DEPTH, final_order)
        while len(undecided):
            polygons = [value for index in undecided for value in (corner_ra[index] % 360, corner_dec[index])]
            coverages = MOC.from_polygons(polygons, max_depth=order, n_threads=1)
            still = []
            for index, coverage in zip(undecided, coverages, strict=True):
                ranges = np.asarray(coverage.to_depth29_ranges, dtype=np.int64).reshape(-1, 2)
                touched, inside = _compare_ranges(ranges, region_ranges)
                if inside or (touched and order == final_order):
                    result[index] = True
                elif touched:
                    still.append(index)
            undecided = np.asarray(still, dtype=int)
            order = min(order + 2, final_order)
        return result


def polygon_region(ra: np.ndarray, dec: np.ndarray) -> PolygonRegion:
    """A :class:`PolygonRegion` from vertices in degrees, checked.

    A last vertex repeating the first (a closed ring) is dropped.

    Raises
    ------
    DensityDBError
        If there are fewer than 3 distinct vertices, a coordinate is out of
        range, two consecutive vertices coincide or are antipodal, the polygon
        does not fit in a hemisphere, or its edges cross each other.
    """
    ra, dec = np.asarray(ra, dtype=float).ravel(), np.asarray(dec, dtype=float).ravel()
    if ra.shape != dec.shape:
        raise DensityDBError(f"a polygon needs as many right ascensions as declinations, got {ra.size} and {dec.size}")
    if not (np.all(np.isfinite(ra)) and np.all(np.isfinite(dec))):
        raise DensityDBError("polygon vertices must be finite numbers")
    if np.any(np.abs(dec) > 90):
        raise DensityDBError(f"polygon declinations must be within [-90, 90] degrees, got {dec[np.abs(dec) > 90][0]}")
    ra = ra % 360
    vertices = sky._unit_vectors(ra, dec)
    if len(vertices) > 1 and np.linalg.norm(vertices[0] - vertices[-1]) < 1e-12:
        ra, dec, vertices = ra[:-1], dec[:-1], vertices[:-1]
    if len(vertices) < 3:
        raise DensityDBError(f"a polygon needs at least 3 vertices, got {len(vertices)}")
    following = np.roll(vertices, -1, axis=0)
    chords = np.linalg.norm(vertices - following, axis=1)
    if np.any(chords < 1e-12):
        index = int(np.argmax(chords < 1e-12))
        raise DensityDBError(f"polygon vertex {index + 1} repeats the next one ({ra[index]}, {dec[index]})")
    if np.any(chords > 2 - 1e-12):
        raise DensityDBError("two consecutive polygon vertices are antipodal: the edge between them is undefined")
    centre = vertices.sum(axis=0)
    if np.linalg.norm(centre) < 1e-9 or np.min(vertices @ (centre / np.linalg.norm(centre))) < _HEMISPHERE_MARGIN:
        raise DensityDBError("the polygon must fit in a hemisphere; split larger regions or use a MOC")
    count = len(vertices)
    first, second = np.triu_indices(count, k=2)
    apart = (second - first) % count > 1
    apart &= (first - second) % count > 1  # edges sharing a vertex (including last-first) always meet
    first, second = first[apart], second[apart]
    if np.any(_arcs_cross(vertices[first], following[first], vertices[second], following[second])):
        raise DensityDBError("the polygon's edges cross each other; give its vertices in order around it")
    return PolygonRegion(vertex_ra=tuple(ra.tolist()), vertex_dec=tuple(dec.tolist()))


def read_moc(path: Path) -> MocRegion:
    """A :class:`MocRegion` from a MOC FITS file (as written by mocpy, Aladin, healpy tools ...).

    Raises
    ------
    DensityDBError
        If the file is missing or is not a MOC FITS file.
    """
    path = Path(path)
    if not path.is_file():
        raise DensityDBError(f"MOC file {path} does not exist")
    try:
        moc = MOC.from_fits(path)
    except Exception as error:  # mocpy raises assorted astropy, OSError and ValueError subclasses
        raise DensityDBError(f"cannot read {path} as a MOC FITS file: {error}") from None
    return MocRegion(moc=moc, source=str(path.resolve()))


def parse_region(text: str) -> SkyRegion:
    """A region from the command line: ``RA,DEC,RADIUS`` (a cone), ``polygon:RA,DEC,RA,DEC,...``
    (degrees) or the path of a MOC FITS file.

    Raises
    ------
    DensityDBError
        If the text is none of these, or the region is invalid.
    """
    text = text.strip()
    if text.startswith("polygon:"):
        values = _numbers(text.removeprefix("polygon:"), "polygon:RA,DEC,RA,DEC,...")
        if len(values) % 2:
            raise DensityDBError(f"a polygon needs RA,DEC pairs; got an odd number of values ({len(values)})")
        return polygon_region(values[0::2], values[1::2])
    if text.lower().endswith((".fits", ".fits.gz", ".fit")) or Path(text).is_file():
        return read_moc(Path(text))
    values = _numbers(text, "RA,DEC,RADIUS")
    if len(values) != 3:
        raise DensityDBError(f"a cone is RA,DEC,RADIUS in degrees, got {text!r}")
    return ConeRegion(*values)


def region_from_table(table: object, base_dir: Path | None = None) -> SkyRegion:
    """A region from data: ``{"cone": [ra, dec, radius]}``, ``{"polygon": [ra, dec, ...]}`` or
    ``{"moc": "file.fits"}`` (relative paths from ``base_dir``): a rules file's ``region``, or a ``spec``.

    Raises
    ------
    DensityDBError
        If the table has not exactly one of these keys, or its value is wrong.
    """
    if not isinstance(table, dict) or len(table) != 1 or next(iter(table)) not in ("cone", "polygon", "moc"):
        raise DensityDBError(
            "a region is a table with one key: cone = [ra, dec, radius], "
            'polygon = [ra, dec, ra, dec, ...] or moc = "file.fits"'
        )
    ((kind, value),) = table.items()
    if kind == "moc":
        if not isinstance(value, str):
            raise DensityDBError(f"region moc must be the path of a MOC FITS file, got {value!r}")
        path = Path(value)
        return read_moc(path if path.is_absolute() or base_dir is None else base_dir / path)
    if not isinstance(value, list) or not all(
        isinstance(item, int | float) and not isinstance(item, bool) for item in value
    ):
        raise DensityDBError(f"region {kind} must be a list of numbers (degrees), got {value!r}")
    if kind == "cone":
        if len(value) != 3:
            raise DensityDBError(f"region cone is [ra, dec, radius] in degrees, got {value!r}")
        return ConeRegion(*map(float, value))
    if len(value) % 2:
        raise DensityDBError(f"region polygon needs ra, dec pairs; got an odd number of values ({len(value)})")
    return polygon_region(value[0::2], value[1::2])


def _numbers(text: str, expected: str) -> list[float]:
    try:
        return [float(value) for value in text.replace(" ", "").split(",") if value]
    except ValueError:
        raise DensityDBError(f"expected {expected} in degrees, got {text!r}") from None


def _gnomonic(points: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Gnomonic (tangent-plane) coordinates around ``centre``: great circles become straight lines."""
    east = np.cross([0.0, 0.0, 1.0], centre)
    if np.linalg.norm(east) < 1e-9:  # centre at a pole: any tangent direction will do
        east = np.array([0.0, 1.0, 0.0])
    east /= np.linalg.norm(east)
    north = np.cross(centre, east)
    depth = points @ centre
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.stack([(points @ east) / depth, (points @ north) / depth], axis=-1)


def _arcs_cross(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Whether the minor great-circle arcs ``ab`` and ``cd`` (unit vectors, broadcast) share a point.

    The two great circles meet at +-p, p = (a x b) x (c x d); the arcs cross
    when one of these lies between the ends of both.  Arcs on the same great
    circle are reported as not crossing (their overlap is found through the
    vertex-inside tests).
    """
    first, second = np.cross(a, b), np.cross(c, d)
    first = first / np.linalg.norm(first, axis=-1, keepdims=True)
    second = second / np.linalg.norm(second, axis=-1, keepdims=True)
    meeting = np.cross(first, second)
    length = np.linalg.norm(meeting, axis=-1, keepdims=True)
    distinct = length[..., 0] > 1e-15
    meeting = meeting / np.where(length > 0, length, 1)
    crossed = np.zeros(distinct.shape, dtype=bool)
    for point in (meeting, -meeting):
        crossed |= _between(a, point, b, first) & _between(c, point, d, second)
    return crossed & distinct


def _between(start: np.ndarray, point: np.ndarray, end: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Whether ``point``, on the great circle of pole ``normal``, lies on the minor arc from ``start`` to ``end``."""
    after_start = np.sum(np.cross(start, point) * normal, axis=-1) >= -_EDGE_TOLERANCE
    before_end = np.sum(np.cross(point, end) * normal, axis=-1) >= -_EDGE_TOLERANCE
    return after_start & before_end


def _compare_ranges(ranges: np.ndarray, region: np.ndarray) -> tuple[bool, bool]:
    """Whether sorted ranges touch the sorted, merged ``region`` ranges, and whether one lies wholly inside."""
    after = np.searchsorted(region[:, 1], ranges[:, 0], side="right")  # first region range ending after lo
    valid = after < len(region)
    touched = valid & (region[np.minimum(after, len(region) - 1), 0] < ranges[:, 1])
    containing = np.searchsorted(region[:, 0], ranges[:, 0], side="right") - 1
    inside = (containing >= 0) & (region[np.maximum(containing, 0), 1] >= ranges[:, 1])
    return bool(touched.any()), bool(inside.any())

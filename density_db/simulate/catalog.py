"""Truth catalogs of simulated detector images, and the labels they define.

:func:`draw_catalog` puts the sky model of :mod:`density_db.simulate.fields`
on one detector: the image is cut into a grid of cells (at most 64 x 64),
the model's expected count of each population is taken at every cell
centre, one multinomial draw spreads the sources over (population, cell)
pairs, and each source lands uniformly inside its cell.  The total is
Poisson around the expectation.  Datasets ask instead for an exact number
of *counted* stars (those the label rule counts, :mod:`density_db.labels`):
stars are then drawn from the model until that many are counted, so the
uncounted ones come with them in the model's proportion.  Every source's
centre is on the image: ``x, y`` are 0-based pixel coordinates in
``[-0.5, n - 0.5)``.

The labels: ``counted_star_count`` counts the stars brighter than the
catalog's ``counting_limit`` (the 5-sigma point-source depth of one exposure
in the image's band under the ``detectable-stars`` rule; every star under the
paper's ``catalog-stars`` rule, Lai et al. 2026 Sec. 2.4), the density class
is its class, and ``bright_star_count`` counts the stars brighter than
``BRIGHT_MAGNITUDE_LIMIT`` in the band.  The catalog keeps every star down to
the 28 mag limit whatever the rule, and galaxies down to
``GALAXY_RENDER_LIMIT``; fainter galaxies are smooth light
(``unresolved_mag_arcsec2``).

Galaxy shapes: Sersic index 1 (discs, 70 %) or 4 (spheroids); half-light
radius (semi-major axis) 0.35" at r = 24, growing by 0.1 dex per magnitude
brighter, with 0.15 dex scatter (faint-galaxy sizes from deep HST fields);
axis ratio uniform in 0.2-1; position angle of the major axis uniform,
counted from the +x pixel axis towards +y.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, fields

import numpy as np
from astropy.table import Table
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_area

from density_db.labels import (
    BRIGHT_MAGNITUDE_LIMIT,
    DETECTION_SIGMA,
    LABEL_RULE,
    counted_stars,
    density_class,
    label_rule,
)
from density_db.simulate.fields import (
    Field,
    SkyComponent,
    band_magnitude,
    galaxy_component,
    star_components,
    unresolved_galaxy_light,
)
from density_db.simulate.photometry import band_photometry, point_source_depth

logger = logging.getLogger(__name__)

MAX_CELLS_PER_AXIS = 64
"""Resolution of the density grid: 11' / 64 = 10.7" cells resolve the dwarfs' profiles (r_h >= 11')."""

_OBJECT_TYPES = ("star", "galaxy")
_SCALARS = ("band", "label_rule", "counting_limit", "unresolved_mag_arcsec2")

MAX_DRAWN_STARS = 1_000_000
"""Stars drawn at most while looking for a requested number of counted stars (see :func:`draw_catalog`)."""


@dataclass(frozen=True)
class TruthCatalog:
    """Sources of one simulated detector image.

    Attributes
    ----------
    band : str
        The image's band; ``mag`` is in it.
    label_rule : str
        The rule of the labels (:data:`density_db.labels.LABEL_RULES`).
    counting_limit : float
        The stars the density class counts are brighter than this (inf: every star).
    unresolved_mag_arcsec2 : float
        Surface brightness of the galaxies too faint to be drawn (inf: none).
    ra, dec : numpy.ndarray
        ICRS position in degrees.
    x, y : numpy.ndarray
        0-based pixel coordinates of the centre.
    mag : numpy.ndarray
        AB magnitude in ``band``.
    obj_type : numpy.ndarray
        ``'star'`` or ``'galaxy'``.
    half_light_px, axis_ratio, position_angle_deg, sersic_n : numpy.ndarray
        Galaxy shapes (NaN for stars); sizes in the image's pixels, angles
        from +x towards +y.
    """

    band: str
    label_rule: str
    counting_limit: float
    unresolved_mag_arcsec2: float
    ra: np.ndarray
    dec: np.ndarray
    x: np.ndarray
    y: np.ndarray
    mag: np.ndarray
    obj_type: np.ndarray
    half_light_px: np.ndarray
    axis_ratio: np.ndarray
    position_angle_deg: np.ndarray
    sersic_n: np.ndarray

    def __post_init__(self) -> None:
        band_photometry(self.band)
        label_rule(self.label_rule)
        lengths = {field.name: len(getattr(self, field.name)) for field in fields(self) if field.name not in _SCALARS}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"catalog columns differ in length: {lengths}")
        unknown = set(np.unique(self.obj_type)) - set(_OBJECT_TYPES)
        if unknown:
            raise ValueError(f"obj_type must be 'star' or 'galaxy', got {sorted(unknown)}")

    @property
    def is_star(self) -> np.ndarray:
        """Boolean mask of the stars."""
        return self.obj_type == "star"

    @property
    def star_count(self) -> int:
        """Number of stars in the catalog, down to its limit."""
        return int(np.count_nonzero(self.is_star))

    @property
    def counted_star_count(self) -> int:
        """Number of stars the label rule counts: the classification label's N."""
        return counted_stars(self.mag[self.is_star], self.counting_limit)

    @property
    def bright_star_count(self) -> int:
        """Stars brighter than ``BRIGHT_MAGNITUDE_LIMIT`` in the band: the regression label."""
        return int(np.count_nonzero(self.is_star & (self.mag < BRIGHT_MAGNITUDE_LIMIT)))

    @property
    def density_class(self) -> int:
        """Density class (0-5) of ``counted_star_count``."""
        return density_class(self.counted_star_count)

    def to_table(self) -> Table:
        """The catalog as an astropy Table whose meta holds the labels.

        ``astropy.io.fits.table_to_hdu`` turns it into a ``TRUTH`` BINTABLE
        with the header keywords ``FILTER``, ``NSTARS`` (every star),
        ``LBLRULE`` (the label rule), ``CNTLIM`` (the counting limit, absent
        when every star counts), ``NCOUNTED`` (the stars it counts),
        ``DENSCLS``, ``NBRIGHT`` and ``MAGLIM``.
        """
        columns = {field.name: getattr(self, field.name) for field in fields(self) if field.name not in _SCALARS}
        meta = {
            "EXTNAME": "TRUTH",
            "FILTER": self.band,
            "NSTARS": self.star_count,
            "LBLRULE": self.label_rule,
            **({"CNTLIM": round(self.counting_limit, 3)} if np.isfinite(self.counting_limit) else {}),
            "NCOUNTED": self.counted_star_count,
            "DENSCLS": self.density_class,
            "NBRIGHT": self.bright_star_count,
            "MAGLIM": BRIGHT_MAGNITUDE_LIMIT,
        }
        return Table(columns, meta=meta)


def draw_catalog(
    wcs: WCS,
    shape: tuple[int, int],
    band: str,
    rng: np.random.Generator,
    *,
    field: Field | None = None,
    counted: int | None = None,
    include_galaxies: bool = True,
    rule: str = LABEL_RULE,
) -> TruthCatalog:
    """Draw the truth catalog of one detector image.

    Parameters
    ----------
    wcs : astropy.wcs.WCS
        Celestial WCS of the image (0-based pixel convention of astropy's
        ``*_values`` methods).
    shape : tuple of int
        ``(ny, nx)`` of the image.
    band : str
        The image's band.
    rng : numpy.random.Generator
        Source of randomness; the same seed gives the same catalog.
    field : Field, optional
        Named region whose dust screen applies.
    counted : int, optional
        Exact number of stars the label rule counts: stars are drawn from the
        model, spread like it, until that many are counted (at most
        :data:`MAX_DRAWN_STARS`, so a field and band that show very few of
        their stars may end with fewer); otherwise Poisson around the model.
    include_galaxies : bool
        Add galaxies (Poisson around their expected count) and the smooth
        light of those too faint to draw.
    rule : str
        The label rule (:data:`density_db.labels.LABEL_RULES`).

    Raises
    ------
    ConfigurationError
        If ``band`` or ``rule`` is unknown.
    ValueError
        If ``counted`` is negative.
    """
    band_photometry(band)
    counting_limit = label_rule(rule).counting_limit(_depth(band))
    if counted is not None and counted < 0:
        raise ValueError(f"counted must be >= 0, got {counted}")
    grid = _CellGrid.build(wcs, shape)
    stars = star_components(grid.ra, grid.dec, field=field)
    if counted is None:
        star_x, star_y, star_mag, star_colour = _draw_sources(stars, grid, rng, count=None)
    else:
        star_x, star_y, star_mag, star_colour = _draw_counted(stars, grid, rng, band, counting_limit, counted)
    galaxy_x, galaxy_y, galaxy_mag, galaxy_colour = _draw_sources(
        [galaxy_component(grid.ra, grid.dec, field=field)], grid, rng, count=None if include_galaxies else 0
    )
    shapes = _galaxy_shapes(galaxy_mag, grid.pixel_scale_arcsec, rng)
    star_nan = np.full(len(star_x), np.nan)
    x, y = np.concatenate([star_x, galaxy_x]), np.concatenate([star_y, galaxy_y])
    ra, dec = wcs.pixel_to_world_values(x, y)
    return TruthCatalog(
        band=band,
        label_rule=rule,
        counting_limit=counting_limit,
        unresolved_mag_arcsec2=unresolved_galaxy_light(band) if include_galaxies else float("inf"),
        ra=np.asarray(ra) % 360.0,
        dec=np.asarray(dec),
        x=x,
        y=y,
        mag=band_magnitude(np.concatenate([star_mag, galaxy_mag]), np.concatenate([star_colour, galaxy_colour]), band),
        obj_type=np.repeat(np.array(_OBJECT_TYPES), [len(star_x), len(galaxy_x)]),
        **{name: np.concatenate([star_nan, column]) for name, column in shapes.items()},
    )


@functools.cache
def _depth(band: str) -> float:
    return point_source_depth(band, DETECTION_SIGMA)


@dataclass(frozen=True)
class _CellGrid:
    """Cells over the image: pixel edges, sky positions of their centres and their areas."""

    x_edges: np.ndarray
    y_edges: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    cell_area_deg2: float
    pixel_scale_arcsec: float

    @classmethod
    def build(cls, wcs: WCS, shape: tuple[int, int]) -> _CellGrid:
        ny, nx = shape
        x_edges = np.linspace(-0.5, nx - 0.5, min(nx, MAX_CELLS_PER_AXIS) + 1)
        y_edges = np.linspace(-0.5, ny - 0.5, min(ny, MAX_CELLS_PER_AXIS) + 1)
        x_centres, y_centres = np.meshgrid((x_edges[:-1] + x_edges[1:]) / 2, (y_edges[:-1] + y_edges[1:]) / 2)
        ra, dec = wcs.pixel_to_world_values(x_centres.ravel(), y_centres.ravel())
        # a TAN projection's pixel area is constant to 1e-5 over an 11' detector
        pixel_area = float(proj_plane_pixel_area(wcs.celestial))
        cell_pixels = (x_edges[1] - x_edges[0]) * (y_edges[1] - y_edges[0])
        return cls(
            x_edges, y_edges, np.asarray(ra), np.asarray(dec), pixel_area * cell_pixels, 3600 * np.sqrt(pixel_area)
        )


def _draw_sources(
    components: list[SkyComponent], grid: _CellGrid, rng: np.random.Generator, *, count: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pixel positions, reference magnitudes and colours of sources spread like ``components``."""
    expected = np.stack([component.density_per_deg2 for component in components]) * grid.cell_area_deg2
    total = float(expected.sum())
    number = rng.poisson(total) if count is None else count
    if number and total <= 0:
        raise ValueError("the sky model puts no source here to draw")
    per_bin = rng.multinomial(number, expected.ravel() / total) if number else np.zeros(expected.size, np.int64)
    bins = np.repeat(np.arange(per_bin.size), per_bin)
    which, cell = np.divmod(bins, grid.ra.size)
    cells_x = grid.x_edges.size - 1
    cell_y, cell_x = np.divmod(cell, cells_x)
    x = grid.x_edges[cell_x] + rng.random(number) * (grid.x_edges[1] - grid.x_edges[0])
    y = grid.y_edges[cell_y] + rng.random(number) * (grid.y_edges[1] - grid.y_edges[0])
    magnitudes, colours = np.empty(number), np.empty(number)
    for index, component in enumerate(components):
        members = which == index
        extinction = component.extinction_mag[cell[members]]
        magnitudes[members], colours[members] = component.population.sample(rng, extinction)
    return x, y, magnitudes, colours


def _draw_counted(
    components: list[SkyComponent],
    grid: _CellGrid,
    rng: np.random.Generator,
    band: str,
    counting_limit: float,
    counted: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sources drawn like the model until ``counted`` of them are brighter than ``counting_limit`` in ``band``.

    Batches are drawn and the last one cut just before the next counted star,
    so the stars the rule does not count come in the model's proportion (the
    same as drawing one star at a time).
    """
    batches, found, drawn = [], 0, 0
    batch = 2 * counted + 64
    while True:
        x, y, magnitudes, colours = _draw_sources(components, grid, rng, count=batch)
        counted_at = np.flatnonzero(band_magnitude(magnitudes, colours, band) < counting_limit)
        if found + counted_at.size > counted:  # stop before the next counted star
            keep = counted_at[counted - found]
            batches.append((x[:keep], y[:keep], magnitudes[:keep], colours[:keep]))
            break
        batches.append((x, y, magnitudes, colours))
        found, drawn = found + counted_at.size, drawn + batch
        if drawn >= MAX_DRAWN_STARS:
            logger.info(
                "%d of the %d counted stars asked for after drawing %d stars in band %s: the catalog "
                "keeps %d (the field shows few of its stars there)",
                found,
                counted,
                drawn,
                band,
                found,
            )
            break
        # the next batch should hold the rest, going by the fraction counted so far
        batch = int(min(MAX_DRAWN_STARS - drawn, 1.3 * (counted - found + 1) * drawn / max(found, 1) + 64))
    return tuple(np.concatenate(column) for column in zip(*batches, strict=True))


def _galaxy_shapes(
    reference_magnitude: np.ndarray, pixel_scale_arcsec: float, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Sersic parameters of galaxies (see the module docstring)."""
    size = reference_magnitude.shape
    half_light_arcsec = 0.35 * 10 ** (-0.1 * (reference_magnitude - 24.0) + rng.normal(0.0, 0.15, size))
    return {
        "half_light_px": half_light_arcsec / pixel_scale_arcsec,
        "axis_ratio": rng.uniform(0.2, 1.0, size),
        "position_angle_deg": rng.uniform(0.0, 180.0, size),
        "sersic_n": np.where(rng.random(size) < 0.7, 1.0, 4.0),
    }

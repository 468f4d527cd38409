"""Where the simulator's stars and galaxies are and how bright they are.

Counts are of sources brighter than ``CATALOG_FAINT_LIMIT`` = 28 mag in the
reference band r (AB); a detector covers ``DETECTOR_AREA_DEG2`` = 0.0360 deg^2.
Every number below is given with its source; where a published count and
the paper's Table 1 disagree, the published count wins.

Published counts the model is built on (:mod:`density_db.simulate.published` holds them)
----------------------------------------------------------------------------------------
- Stars, 49 < ``|b|`` < 64 deg: 5.8e5 brighter than g' = 21 over 279 deg^2,
  2.08e3 deg^-2 (SDSS; Chen et al. 2001, ApJ 553, 184, abstract).
- Stars at ``|b|`` = 54 deg, the Hubble Ultra Deep Field: 25 stars brighter
  than i775 = 27.5 AB (18 M and later dwarfs, 2 L dwarfs, 5 white dwarfs;
  Pirzkal et al. 2005, ApJ 622, 319) over its 11 arcmin^2 (Beckwith et al.
  2006, AJ 132, 1729): 8.2e3 deg^-2.  Kilic et al. (2013) find the same 25
  to I = 27.  Faint counts are nearly flat: a Galaxy model that fits
  21 < V < 26.4 in the Hubble Deep Field over-predicts 26.4 < V < 30 four
  times (Mendez et al. 1996, ApJ 467, 42; the field is at b = 54.8 deg).
- How star counts change with latitude, and stars against galaxies: the
  LSST star-galaxy model, log10(N_stars / N_galaxies)(< i) = A(i) + 2.3
  exp(-``|b|`` / 20 deg) with A(i) = -1.3 - 0.28 (i - 25) - 0.0025 (i - 25)^2
  (Slater, Ivezic & Lupton 2020, AJ 159, 65, appendix C, as in LSST's
  sims_maf_contrib): 0.14 stars per galaxy brighter than i = 23.5 at the
  pole, 0.20 at b = 50.  Its absolute star counts at i < 21 are twice
  those SDSS counted (above): the SDSS counts set the normalisation here,
  the model only the latitude law's check.
- Galaxies: N(< i) = 46 x 10^(0.31 (i - 25)) arcmin^-2 (LSST Science Book
  2009, eq. 3.7, a fit to CFHTLS counts over 20.5 < i < 25.5): 5.7e4 deg^-2
  brighter than i = 23.5.  Fainter than i = 25.5 the counts flatten: slope
  0.26 in I814 (Marin-Franch & Aparicio 2003, ApJ 585, 714).

Milky Way (any position)
------------------------
A smooth law in Galactic coordinates (l, b), stars per deg^2 to 28 mag::

    Sigma(l, b) = [H + D (sin^2 b + sin^2 b_c)^(-p/2)] exp(k cos l cos b)

``H`` = 4000 deg^-2 is the part seen at every latitude (halo and distant
thick disk); the ``D`` = 4000 deg^-2 term is a plane-parallel disk whose
stars, counted to a deep magnitude limit, grow as csc^p ``|b|`` with
``p`` = 2.5 (between csc b for a column through a slab and csc^3 b for a
deep volume-limited count) up to the core latitude ``b_c`` = 1 deg, where
the line of sight reaches the magnitude limit before it leaves the disk;
``exp(k cos l cos b)`` with ``k`` = 0.5 (cos l cos b is the cosine of the
angle to the Galactic centre) puts 2.7 times more stars towards the inner
Galaxy than towards the anticentre.  H and D are set by the SDSS count
above (2.1e3 stars brighter than g = 21 at b = 55); the law then puts
1.47 times the pole's stars at b = 50 and 7.8 times at b = 20, where the
LSST model's 10^(2.3 exp(-``|b|``/20)) gives 1.46 and 6.6.  There is no global
dust: near the plane the law is an upper envelope, and a field adds its
own screen.  Per detector this gives 290 stars to 28 mag at the Galactic
poles (180 brighter than 23.5 in r), 420 at l = 90, b = 50 (260), 960 at
b = 30 and 2 240 at b = 20 (1 380); in the plane 2.2e6 (anticentre) to
5.9e6 (centre).

Luminosity functions
--------------------
Piecewise power laws dN/dm ∝ 10^(slope m) in r, continuous at the breaks:

- field stars: slope 0.2 from 15 to r = 21, where the counts of the halo's
  turn-off stars stop rising, then -0.05 (nearly flat) to 28: 30 % of
  them are brighter than 21, 62 % brighter than 23.5, 85 % brighter than 26
  (in r).  With the colours below this gives 2.06e3 stars brighter than
  g = 21 and 1.05e4 brighter than i = 27.5 at b = 55 (SDSS and HUDF above:
  2.08e3 and 8.2e3), and 0.09 (pole) and 0.14 (b = 50) stars per galaxy
  brighter than i = 23.5 (LSST model: 0.14 and 0.20);
- dSph members: slope 0.3 (red giant branch into the main sequence) from
  the tip of the red giant branch, r = 18.2 (Fornax) and 17.0 (Sculptor);
- galaxies: LSST eq. 3.7 moved to r with the galaxies' mean r - i = 0.26:
  slope 0.31 from r = 18 to 25.76, then 0.26 to 28; 9.0e5 deg^-2 to 28.
  Galaxies down to ``GALAXY_RENDER_LIMIT`` = 27 mag are drawn and rendered
  one by one (5.0e5 deg^-2, 17 900 per detector); the 4.1e5 deg^-2 from 27
  to 28 add their light as a smooth background, 31.3 mag arcsec^-2 in r
  (:func:`unresolved_galaxy_light`), 9 mag below the sky.

Dwarf spheroidals (Fornax, Sculptor)
------------------------------------
Circular Plummer profiles of their members, ``Sigma = N / (pi a^2)
(1 + theta^2 / a^2)^-2`` with the half-light radius ``a``: Fornax at
(39.997, -34.449) deg, a = 16.6', N = 23 000 members to r = 28 (3 730
stars on a detector at its centre with the field stars; Table 1:
100-4 000); Sculptor at (15.039, -33.709), a = 11.3', N = 2 300 (1 040;
Table 1: 100-1 000).  Their detectable stars fall in Table 1's ranges as they
are.  The members are part of the sky model at every position, as the
galaxies are real.

Galactic centre
---------------
The Table 1 box at l = 0, b = 1.05-1.51 deg sits behind patchy dust: the
field's ``DustScreen`` dims everything by an extinction falling linearly
with latitude from 9.9 to 6.5 mag (the same in every band: the screen is
grey), which leaves 1.5e5 to 4.9e5 stars to 28 mag on a detector, of which
1.0e4-1.2e5 (g) to 3.8e4-2.0e5 (i) are detectable in the bands g to y
(Table 1: 1e4-2e5); in u and NUV, where every star is fainter, at most
2.4e4 and 4 400.  Dimming a luminosity
function by A mag removes the sources that fall below the faint limit:
magnitudes are drawn between ``bright + A`` and the faint limit.

Counts of detectable stars (those the labels count,
:mod:`density_db.labels`) per detector in each named field are on the
simulator page of the documentation (``docs/simulation.md``);
``benchmarks/sky_model.py`` prints them.

Each source gets a colour c = g - r (field stars: 45 % blue turn-off stars
c ~ N(0.35, 0.12), 55 % M dwarfs c ~ N(1.35, 0.15); members N(0.55, 0.25);
galaxies N(0.7, 0.3)) and :func:`band_magnitude` places it in every band
along a linearised stellar locus: g = r + c, u - g = 0.6 + 1.4 c,
NUV - u = 0.8 + 1.6 c, r - i = 0.4 c - 0.02 (+ 1.6 (c - 1.2) for M dwarfs
redder than c = 1.2), i - z = 0.5 (r - i), z - y = 0.25 (r - i).
"""

from __future__ import annotations

from dataclasses import dataclass

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord

from density_db.errors import ConfigurationError
from density_db.focal_plane import DETECTOR_HEIGHT_DEG, DETECTOR_WIDTH_DEG
from density_db.simulate.photometry import band_photometry
from density_db.simulate.published import (
    GALAXY_COUNT_BREAK_I,
    GALAXY_COUNT_SLOPE,
    GALAXY_FAINT_SLOPE,
    lsst_galaxy_counts,
)

CATALOG_FAINT_LIMIT = 28.0
"""Faintest reference-band (r) magnitude in a truth catalog."""

DETECTOR_AREA_DEG2 = DETECTOR_WIDTH_DEG * DETECTOR_HEIGHT_DEG
"""Sky area of one full-size detector."""

HALO_DENSITY_PER_DEG2 = 4000.0
DISK_DENSITY_PER_DEG2 = 4000.0
DISK_LATITUDE_INDEX = 2.5
CORE_LATITUDE_DEG = 1.0
INNER_GALAXY_INDEX = 0.5

GALAXY_MEAN_R_MINUS_I = 0.26
"""r - i of the galaxies' mean colour c = 0.7 on the locus of :func:`band_magnitude`."""
GALAXY_BRIGHT_LIMIT = 18.0
GALAXY_RENDER_LIMIT = 27.0
"""Galaxies down to this r magnitude are drawn one by one; fainter ones are smooth light."""


@dataclass(frozen=True)
class LuminosityFunction:
    """Magnitude distribution dN/dm ∝ 10^(slope m), a power law in pieces, from ``bright`` to ``faint``.

    ``slopes[k]`` holds between ``breaks[k - 1]`` and ``breaks[k]``; the
    pieces join without a step.  Magnitudes are in the reference band.
    """

    slopes: tuple[float, ...]
    bright: float
    faint: float = CATALOG_FAINT_LIMIT
    breaks: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        edges = (self.bright, *self.breaks, self.faint)
        if len(self.slopes) != len(self.breaks) + 1 or np.any(np.diff(edges) <= 0):
            raise ValueError(f"a luminosity function needs one slope per piece and rising edges, got {self}")

    def brighter_fraction(self, magnitude: np.ndarray | float) -> np.ndarray:
        """Fraction of the sources brighter than ``magnitude``."""
        edges, cumulative, start_density = self._pieces()
        magnitude = np.clip(np.asarray(magnitude, dtype=np.float64), self.bright, self.faint)
        piece = np.clip(np.searchsorted(edges, magnitude, side="right") - 1, 0, len(self.slopes) - 1)
        return cumulative[piece] + _piece_integral(
            np.asarray(self.slopes)[piece], start_density[piece], magnitude - edges[piece]
        )

    def visible_fraction(self, extinction: np.ndarray | float) -> np.ndarray:
        """Fraction of sources still brighter than ``faint`` when dimmed by ``extinction`` mag."""
        return self.brighter_fraction(self.faint - np.asarray(extinction, dtype=np.float64))

    def sample(self, rng: np.random.Generator, extinction: np.ndarray) -> np.ndarray:
        """Magnitudes of ``len(extinction)`` sources, each dimmed by its extinction, still brighter than ``faint``."""
        extinction = np.asarray(extinction, dtype=np.float64)
        return self.magnitude_at(rng.random(extinction.shape) * self.visible_fraction(extinction)) + extinction

    def magnitude_at(self, fraction: np.ndarray) -> np.ndarray:
        """The magnitude with ``fraction`` of the sources brighter (the inverse of :meth:`brighter_fraction`)."""
        edges, cumulative, start_density = self._pieces()
        fraction = np.asarray(fraction, dtype=np.float64)
        piece = np.clip(np.searchsorted(cumulative, fraction, side="right") - 1, 0, len(self.slopes) - 1)
        slope, left = np.asarray(self.slopes)[piece], fraction - cumulative[piece]
        scale, density = slope * np.log(10), start_density[piece]
        with np.errstate(divide="ignore", invalid="ignore"):
            offset = np.where(
                scale != 0, np.log1p(left * scale / density) / np.where(scale != 0, scale, 1), left / density
            )
        return np.clip(edges[piece] + offset, self.bright, self.faint)

    def _pieces(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Piece edges, the fraction brighter than each piece's start, and the density (per mag) there."""
        edges = np.array((self.bright, *self.breaks, self.faint))
        slopes = np.asarray(self.slopes)
        density = np.ones(slopes.size)
        for piece in range(1, slopes.size):  # continuous at the breaks
            density[piece] = density[piece - 1] * 10 ** (slopes[piece - 1] * (edges[piece] - edges[piece - 1]))
        integrals = _piece_integral(slopes, density, np.diff(edges))
        total = integrals.sum()
        return edges, np.concatenate([[0.0], np.cumsum(integrals)[:-1]]) / total, density / total


def _piece_integral(slope: np.ndarray, density: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Integral over ``width`` mag of density * 10^(slope m) from the piece's start."""
    scale = np.asarray(slope, dtype=np.float64) * np.log(10)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(scale != 0, density * np.expm1(scale * width) / np.where(scale != 0, scale, 1), density * width)


@dataclass(frozen=True)
class Population:
    """A kind of source: its luminosity function and its mixture of colours c = g - r.

    ``colours`` holds ``(weight, mean, sigma)`` of normal components.
    """

    name: str
    luminosity_function: LuminosityFunction
    colours: tuple[tuple[float, float, float], ...]

    def sample(self, rng: np.random.Generator, extinction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reference (r) magnitudes and colours of ``len(extinction)`` sources."""
        magnitudes = self.luminosity_function.sample(rng, extinction)
        weights, means, sigmas = (np.array(column) for column in zip(*self.colours, strict=True))
        component = rng.choice(len(weights), size=magnitudes.shape, p=weights / weights.sum())
        colours = rng.normal(means[component], sigmas[component])
        return magnitudes, np.clip(colours, *_LOCUS_COLOURS)

    def brighter_fraction(self, band: str, limit: float, extinction: np.ndarray) -> np.ndarray:
        """Fraction of the sources :meth:`sample` draws (dimmed by ``extinction``) brighter than ``limit`` in ``band``.

        The colour mixture is integrated on a grid of 4-sigma spans; colours
        beyond the locus are clipped to its ends as :meth:`sample` clips them.
        """
        luminosity_function = self.luminosity_function
        extinction = np.asarray(extinction, dtype=np.float64)[..., None]
        visible = luminosity_function.faint - extinction
        total = np.zeros(extinction.shape[:-1])
        for weight, mean, sigma in self.colours:
            colours = mean + sigma * _COLOUR_GRID
            density = np.exp(-0.5 * _COLOUR_GRID**2)
            offset = band_magnitude(0.0, np.clip(colours, *_LOCUS_COLOURS), band)
            brighter = luminosity_function.brighter_fraction(np.minimum(limit - extinction - offset, visible))
            total += weight * (brighter * density).sum(axis=-1) / density.sum()
        visible_fraction = luminosity_function.brighter_fraction(visible[..., 0])
        total /= sum(weight for weight, _, _ in self.colours)
        return np.divide(total, visible_fraction, out=np.zeros_like(total), where=visible_fraction > 0)


_LOCUS_COLOURS = (-0.3, 1.8)
"""Colours are kept on the stretch of the locus the linear relations of :func:`band_magnitude` describe."""
_COLOUR_GRID = np.linspace(-4.0, 4.0, 161)


FIELD_STARS = Population(
    "field", LuminosityFunction((0.2, -0.05), 15.0, breaks=(21.0,)), ((0.45, 0.35, 0.12), (0.55, 1.35, 0.15))
)
GALAXY_COLOUR = 0.7
GALAXIES = Population(
    "galaxy",
    LuminosityFunction(
        (GALAXY_COUNT_SLOPE, GALAXY_FAINT_SLOPE),
        GALAXY_BRIGHT_LIMIT,
        GALAXY_RENDER_LIMIT,
        breaks=(GALAXY_COUNT_BREAK_I + GALAXY_MEAN_R_MINUS_I,),
    ),
    ((1.0, GALAXY_COLOUR, 0.3),),
)


def galaxies_brighter_than(r_magnitude: float | np.ndarray) -> np.ndarray:
    """Galaxies per deg^2 brighter than ``r_magnitude`` (LSST eq. 3.7 and its faint slope, moved to r)."""
    return lsst_galaxy_counts(np.asarray(r_magnitude, dtype=np.float64) - GALAXY_MEAN_R_MINUS_I)


GALAXY_DENSITY_PER_DEG2 = float(
    galaxies_brighter_than(GALAXY_RENDER_LIMIT) - galaxies_brighter_than(GALAXY_BRIGHT_LIMIT)
)
"""Galaxies per deg^2 drawn one by one (r from ``GALAXY_BRIGHT_LIMIT`` to ``GALAXY_RENDER_LIMIT``)."""


def unresolved_galaxy_light(band: str) -> float:
    """Surface brightness (AB mag arcsec^-2, in ``band``) of the galaxies from the render limit to 28 mag.

    They are not drawn one by one; their light is spread evenly, as the
    unresolved extragalactic background it is (about 32 mag arcsec^-2).
    """
    magnitudes = np.linspace(GALAXY_RENDER_LIMIT, CATALOG_FAINT_LIMIT, 201)
    per_mag = np.gradient(galaxies_brighter_than(magnitudes), magnitudes) / 3600.0**2  # per arcsec^2 per mag
    in_band = band_magnitude(magnitudes, np.full(magnitudes.shape, GALAXY_COLOUR), band)
    flux = np.trapezoid(per_mag * 10 ** (-0.4 * in_band), magnitudes)
    return float(-2.5 * np.log10(flux))


@dataclass(frozen=True)
class DwarfGalaxy:
    """A dwarf spheroidal: a circular Plummer profile of ``members`` stars."""

    name: str
    ra_deg: float
    dec_deg: float
    half_light_arcmin: float
    members: float
    population: Population

    def density(self, ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
        """Members per deg^2 at sky positions."""
        scale_deg = self.half_light_arcmin / 60.0
        separation = _separation_deg(ra_deg, dec_deg, self.ra_deg, self.dec_deg)
        return self.members / (np.pi * scale_deg**2) * (1.0 + (separation / scale_deg) ** 2) ** -2


def _members(name: str, tip_of_red_giant_branch: float) -> Population:
    """Stars of an old dwarf spheroidal, from the tip of its red giant branch down."""
    return Population(name, LuminosityFunction((0.3,), tip_of_red_giant_branch), ((1.0, 0.55, 0.25),))


DWARF_GALAXIES = (
    DwarfGalaxy("Fornax", 39.997, -34.449, 16.6, 23_000, _members("fornax", 18.2)),
    DwarfGalaxy("Sculptor", 15.039, -33.709, 11.3, 2_300, _members("sculptor", 17.0)),
)
"""Dwarf spheroidals whose members the sky model includes everywhere."""


@dataclass(frozen=True)
class DustScreen:
    """Extinction (reference band, mag) linear in ``|b|`` between two anchor latitudes, constant beyond them."""

    latitude_deg: tuple[float, float]
    extinction_mag: tuple[float, float]

    def extinction(self, b_deg: np.ndarray) -> np.ndarray:
        """Extinction at Galactic latitudes ``b_deg``."""
        return np.interp(np.abs(b_deg), self.latitude_deg, self.extinction_mag)


@dataclass(frozen=True)
class Field:
    """A named sky region of Lai et al. (2026) Table 1.

    Attributes
    ----------
    name : str
        Identifier, e.g. ``"fornax"``.
    ra_range, dec_range : tuple of float
        The region's box in degrees (J2000).
    stellar_density_range : tuple of float
        Table 1's range of stars per detector image.
    dust : DustScreen or None
        Extinction in front of the region, if any.
    """

    name: str
    ra_range: tuple[float, float]
    dec_range: tuple[float, float]
    stellar_density_range: tuple[float, float]
    dust: DustScreen | None = None

    def sample_positions(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions (ra, dec in degrees) uniform on the sphere within the box."""
        ra = rng.uniform(*self.ra_range, size=size)
        sin_dec = rng.uniform(*np.sin(np.radians(self.dec_range)), size=size)
        return ra, np.degrees(np.arcsin(sin_dec))


NAMED_FIELDS: dict[str, Field] = {
    field.name: field
    for field in (
        Field("galactic_l90_b20", (286.6, 291.5), (57.8, 60.3), (0, 3e3)),
        Field("galactic_l90_b30", (266.7, 271.9), (59.8, 62.3), (0, 1e3)),
        Field("galactic_l90_b50", (229.3, 233.8), (54.8, 57.3), (0, 6e2)),
        Field("default", (236.1, 256.9), (32.0, 48.0), (1e2, 8e2)),
        Field("fornax", (38.4, 41.5), (-35.8, -33.2), (1e2, 4e3)),
        Field("sculptor", (13.5, 16.6), (-35.0, -32.5), (1e2, 1e3)),
        Field("galactic_centre", (264.9, 265.3), (-28.5, -28.2), (1e4, 2e5), DustScreen((1.05, 1.51), (9.9, 6.5))),
    )
}
"""The seven regions of Lai et al. (2026) Table 1."""


def field_by_name(name: str) -> Field:
    """The named field ``name``.

    Raises
    ------
    ConfigurationError
        If there is no such field; the message lists the names.
    """
    try:
        return NAMED_FIELDS[name]
    except KeyError:
        raise ConfigurationError(f"unknown field {name!r}; named fields are {', '.join(NAMED_FIELDS)}") from None


@dataclass(frozen=True)
class SkyComponent:
    """Sources of one population at a set of positions: their density after dust and the extinction."""

    population: Population
    density_per_deg2: np.ndarray
    extinction_mag: np.ndarray


def star_components(ra_deg: np.ndarray, dec_deg: np.ndarray, *, field: Field | None = None) -> list[SkyComponent]:
    """Field stars and every dwarf galaxy's members at sky positions (stars brighter than the limit per deg^2)."""
    ra_deg, dec_deg = np.broadcast_arrays(np.asarray(ra_deg, dtype=np.float64), np.asarray(dec_deg, dtype=np.float64))
    l_rad, b_rad = _galactic_radians(ra_deg, dec_deg)
    extinction = _extinction(field, b_rad)
    core = np.sin(np.radians(CORE_LATITUDE_DEG)) ** 2
    disk = DISK_DENSITY_PER_DEG2 * (np.sin(b_rad) ** 2 + core) ** (-DISK_LATITUDE_INDEX / 2)
    milky_way = (HALO_DENSITY_PER_DEG2 + disk) * np.exp(INNER_GALAXY_INDEX * np.cos(l_rad) * np.cos(b_rad))
    densities = [(FIELD_STARS, milky_way)]
    densities += [(dwarf.population, dwarf.density(ra_deg, dec_deg)) for dwarf in DWARF_GALAXIES]
    return [
        SkyComponent(population, density * population.luminosity_function.visible_fraction(extinction), extinction)
        for population, density in densities
    ]


def galaxy_component(ra_deg: np.ndarray, dec_deg: np.ndarray, *, field: Field | None = None) -> SkyComponent:
    """Galaxies at sky positions: uniform counts, dimmed by the field's dust like the stars."""
    ra_deg, dec_deg = np.broadcast_arrays(np.asarray(ra_deg, dtype=np.float64), np.asarray(dec_deg, dtype=np.float64))
    extinction = _extinction(field, _galactic_radians(ra_deg, dec_deg)[1])
    density = GALAXY_DENSITY_PER_DEG2 * GALAXIES.luminosity_function.visible_fraction(extinction)
    return SkyComponent(GALAXIES, density, extinction)


def expected_stars(
    ra_deg: float | np.ndarray,
    dec_deg: float | np.ndarray,
    area_deg2: float | np.ndarray,
    *,
    field: Field | None = None,
    band: str = "r",
    brighter_than: float = np.inf,
) -> float | np.ndarray:
    """Expected number of stars on ``area_deg2`` around sky positions, all of them or those brighter than a limit.

    Parameters
    ----------
    ra_deg, dec_deg : float or array_like
        ICRS position(s) in degrees.
    area_deg2 : float or array_like
        Sky area, e.g. :data:`DETECTOR_AREA_DEG2`; the density is taken at
        the position, which is exact for areas small compared with the
        scales of the model (a detector is 11').
    field : Field, optional
        Adds the field's dust screen (the Galactic centre's).
    band : str
        The band of ``brighter_than``.
    brighter_than : float
        Count only the stars brighter than this magnitude in ``band`` (e.g.
        the depth of an exposure); by default every star to the catalog limit.

    Returns
    -------
    float or numpy.ndarray
        Expected counts, an array for array input.
    """
    components = star_components(ra_deg, dec_deg, field=field)
    if np.isfinite(brighter_than):
        densities = [
            component.density_per_deg2
            * component.population.brighter_fraction(band, brighter_than, component.extinction_mag)
            for component in components
        ]
    else:
        densities = [component.density_per_deg2 for component in components]
    expected = sum(densities) * np.asarray(area_deg2)
    return float(expected) if np.ndim(expected) == 0 else expected


def band_magnitude(reference_magnitude: np.ndarray, colour: np.ndarray, band: str) -> np.ndarray:
    """Magnitude in ``band`` of sources with r magnitude ``reference_magnitude`` and colour g - r.

    Raises
    ------
    ConfigurationError
        If ``band`` is unknown.
    """
    band_photometry(band)
    colour = np.asarray(colour, dtype=np.float64)
    r_minus_i = 0.4 * colour - 0.02 + 1.6 * np.maximum(colour - 1.2, 0.0)
    offsets = {
        "NUV": 1.4 + 4.0 * colour,
        "u": 0.6 + 2.4 * colour,
        "g": colour,
        "r": np.zeros_like(colour),
        "i": -r_minus_i,
        "z": -1.5 * r_minus_i,
        "y": -1.75 * r_minus_i,
    }
    return np.asarray(reference_magnitude, dtype=np.float64) + offsets[band]


def _separation_deg(ra1: np.ndarray, dec1: np.ndarray, ra2: float, dec2: float) -> np.ndarray:
    """Great-circle distance in degrees (haversine, accurate at small angles)."""
    ra1, dec1, ra2, dec2 = (np.radians(angle) for angle in (ra1, dec1, ra2, dec2))
    haversine = np.sin((dec1 - dec2) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra1 - ra2) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(haversine, 0.0, 1.0))))


def _galactic_radians(ra_deg: np.ndarray, dec_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Galactic longitude and latitude (radians) of ICRS positions."""
    galactic = SkyCoord(ra_deg * u.deg, dec_deg * u.deg, frame="icrs").galactic
    return galactic.l.radian, galactic.b.radian


def _extinction(field: Field | None, b_rad: np.ndarray) -> np.ndarray:
    """The field's dust extinction (mag) at Galactic latitudes, zero without a screen."""
    if field is None or field.dust is None:
        return np.zeros(np.shape(b_rad))
    return field.dust.extinction(np.degrees(b_rad))

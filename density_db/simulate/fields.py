"""Where the simulator's stars and galaxies are and how bright they are.

Counts are of sources brighter than ``CATALOG_FAINT_LIMIT`` = 28 mag in the
reference band r; a detector covers ``DETECTOR_AREA_DEG2`` = 0.0360 deg^2.

Milky Way (any position)
------------------------
A smooth law in Galactic coordinates (l, b), stars per deg^2::

    Sigma(l, b) = [H + D (sin^2 b + sin^2 b_c)^(-p/2)] exp(k cos l cos b)

``H`` = 2800 deg^-2 is the part seen at every latitude (halo and distant
thick disk); the ``D`` = 2800 deg^-2 term is a plane-parallel disk whose
stars, counted to a deep magnitude limit, grow as csc^p |b| with
``p`` = 2.5 (between csc b for a column through a slab and csc^3 b for a
deep volume-limited count) up to the core latitude ``b_c`` = 1 deg, where
the line of sight reaches the magnitude limit before it leaves the disk;
``exp(k cos l cos b)`` with ``k`` = 0.5 (cos l cos b is the cosine of the
angle to the Galactic centre) puts 2.7 times more stars towards the inner
Galaxy than towards the anticentre.  There is no global dust: near the
plane the law is an upper envelope, and a field adds its own screen.
Per detector this gives 200 stars at the Galactic poles and, over the
boxes of Lai et al. (2026) Table 1, 290-310 at l = 90, b = 50 (Table 1:
0-600), 610-740 at b = 30 (0-1000), 1300-1900 at b = 20 (0-3000),
320-640 on the simulation-default field (100-800) and a background of
200-230 around Fornax and Sculptor (above their lower bound of 100).  In
the plane it reaches 1.5e6 (anticentre) to 4e6 (centre) per detector.

Dwarf spheroidals (Fornax, Sculptor)
------------------------------------
Circular Plummer profiles of their members, ``Sigma = N / (pi a^2)
(1 + theta^2 / a^2)^-2`` with the half-light radius ``a``: Fornax at
(39.997, -34.449) deg, a = 16.6', N = 23 000 members to r = 28 (3 440 on
a detector at its centre, 3 640 with the field stars; Table 1: 100-4000);
Sculptor at (15.039, -33.709), a = 11.3', N = 2 300 (740 at its centre,
950 in all; Table 1: 100-1000).  The members are part of the sky model
at every position, as the galaxies are real.

Galactic centre
---------------
The Table 1 box at l = 0, b = 1.05-1.51 deg sits behind patchy dust: the
field's ``DustScreen`` dims everything by an extinction falling linearly
with latitude from 9.9 to 3.7 mag, so the count on a detector runs from
about 1.4e4 at the low-latitude edge to 1.6e5 at the other (Table 1:
1e4-2e5).  Dimming a power-law luminosity function by A mag keeps its shape
and removes the fraction ``1 - 10^(-slope A)`` of sources: magnitudes
are drawn between ``bright + A`` and the faint limit.

Magnitudes
----------
Luminosity functions dN/dm ∝ 10^(slope m) in r:

- field stars: slope 0.2 from 15 to 28 mag (counts flatten at faint
  magnitudes as the halo thins out): 12.4 % are brighter than 23.5 in r
  (NUV 1.7 %, u 4 %, g 8.4 %, i 16 %, z 18 %, y 19 %), e.g. 20-55 bright
  stars (r) per detector at b = 50 and 160-250 at b = 20; stars brighter
  than about 17.5 saturate;
- dSph members: slope 0.3 (red giant branch into the main sequence) from
  the tip of the red giant branch, r = 18.2 (Fornax) and 17.0 (Sculptor):
  4.4 % brighter than 23.5 in r (150 bright members at Fornax's centre);
- behind the Galactic centre's dust the bright end moves faint: 8 % of
  its stars are brighter than 23.5 in r (0.2 % in NUV, 15 % in y), from
  about 150 to 14 000 per detector across the box;
- galaxies: slope 0.25 from 18 to 28, 2e5 per deg^2 (7 200 per detector,
  2e4 per deg^2 brighter than 24).

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

CATALOG_FAINT_LIMIT = 28.0
"""Faintest reference-band (r) magnitude in a truth catalog."""

DETECTOR_AREA_DEG2 = DETECTOR_WIDTH_DEG * DETECTOR_HEIGHT_DEG
"""Sky area of one full-size detector."""

HALO_DENSITY_PER_DEG2 = 2800.0
DISK_DENSITY_PER_DEG2 = 2800.0
DISK_LATITUDE_INDEX = 2.5
CORE_LATITUDE_DEG = 1.0
INNER_GALAXY_INDEX = 0.5
GALAXY_DENSITY_PER_DEG2 = 2.0e5


@dataclass(frozen=True)
class LuminosityFunction:
    """Magnitude distribution dN/dm ∝ 10^(slope m) from ``bright`` to ``faint`` (reference band)."""

    slope: float
    bright: float
    faint: float = CATALOG_FAINT_LIMIT

    def visible_fraction(self, extinction: np.ndarray | float) -> np.ndarray:
        """Fraction of sources still brighter than ``faint`` when dimmed by ``extinction`` mag."""
        span = self.faint - self.bright
        remaining = np.clip(span - np.asarray(extinction, dtype=np.float64), 0.0, span)
        scale = self.slope * np.log(10)
        return np.expm1(scale * remaining) / np.expm1(scale * span)

    def sample(self, rng: np.random.Generator, extinction: np.ndarray) -> np.ndarray:
        """Magnitudes of ``len(extinction)`` sources, each dimmed by its extinction (inverse CDF)."""
        bright = self.bright + np.asarray(extinction, dtype=np.float64)
        scale = self.slope * np.log(10)
        uniform = rng.random(bright.shape)
        return bright + np.log1p(uniform * np.expm1(scale * (self.faint - bright))) / scale


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
        # keep colours on the stretch of the locus the linear relations describe
        return magnitudes, np.clip(colours, -0.3, 1.8)


FIELD_STARS = Population("field", LuminosityFunction(0.2, 15.0), ((0.45, 0.35, 0.12), (0.55, 1.35, 0.15)))
GALAXIES = Population("galaxy", LuminosityFunction(0.25, 18.0), ((1.0, 0.7, 0.3),))


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
    return Population(name, LuminosityFunction(0.3, tip_of_red_giant_branch), ((1.0, 0.55, 0.25),))


DWARF_GALAXIES = (
    DwarfGalaxy("Fornax", 39.997, -34.449, 16.6, 23_000, _members("fornax", 18.2)),
    DwarfGalaxy("Sculptor", 15.039, -33.709, 11.3, 2_300, _members("sculptor", 17.0)),
)
"""Dwarf spheroidals whose members the sky model includes everywhere."""


@dataclass(frozen=True)
class DustScreen:
    """Extinction (reference band, mag) linear in |b| between two anchor latitudes, constant beyond them."""

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
        Field("galactic_centre", (264.9, 265.3), (-28.5, -28.2), (1e4, 2e5), DustScreen((1.05, 1.51), (9.9, 3.7))),
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
) -> float | np.ndarray:
    """Expected number of stars (to the catalog limit) on ``area_deg2`` around sky positions.

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

    Returns
    -------
    float or numpy.ndarray
        Expected counts, an array for array input.
    """
    components = star_components(ra_deg, dec_deg, field=field)
    expected = sum(component.density_per_deg2 for component in components) * np.asarray(area_deg2)
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

"""Published star and galaxy counts the sky model is built on and checked against, each with its source.

Counts are per deg^2 of sources brighter than a magnitude (AB) in the band
the source measured.  :mod:`density_db.simulate.fields` explains how the
model uses them; ``tests/test_simulate_physics.py`` holds the model to
them within a factor of 1.5, and ``benchmarks/sky_model.py`` prints both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StarCount:
    """Stars per deg^2 brighter than ``brighter_than`` in ``band``, averaged over Galactic ``positions``."""

    band: str
    brighter_than: float
    positions: tuple[tuple[float, float], ...]
    """(l, b) in degrees where the model is evaluated and averaged, covering the source's fields."""
    per_deg2: float
    source: str


SDSS_HIGH_LATITUDE = StarCount(
    "g",
    21.0,
    tuple((l_deg, b_deg) for l_deg in (0.0, 90.0, 180.0, 270.0) for b_deg in (56.5, -56.5)),
    5.8e5 / 279,
    "SDSS commissioning data: 5.8e5 stars brighter than g' = 21 over 279 deg^2 at 49 < |b| < 64 deg, north and "
    "south (Chen et al. 2001, ApJ 553, 184)",
)
HUBBLE_ULTRA_DEEP_FIELD = StarCount(
    "i",
    27.5,
    ((223.6, -54.4),),
    25 / 11 * 3600,
    "25 stars brighter than i775 = 27.5 (Pirzkal et al. 2005, ApJ 622, 319) in the Hubble Ultra Deep Field's "
    "11 arcmin^2 (Beckwith et al. 2006, AJ 132, 1729)",
)
STAR_COUNTS = (SDSS_HIGH_LATITUDE, HUBBLE_ULTRA_DEEP_FIELD)

GALAXIES_PER_DEG2_AT_I25 = 46.0 * 3600
"""Galaxies brighter than i = 25 (LSST Science Book 2009, eq. 3.7: 46 arcmin^-2)."""
GALAXY_COUNT_SLOPE = 0.31
"""d log10 N / dm of galaxy counts to i = 25.5 (LSST Science Book eq. 3.7, a fit to CFHTLS over 20.5 < i < 25.5)."""
GALAXY_FAINT_SLOPE = 0.26
"""... and fainter: 0.26 in I814 (Marin-Franch & Aparicio 2003, ApJ 585, 714)."""
GALAXY_COUNT_BREAK_I = 25.5


def lsst_galaxy_counts(i_magnitude: float | np.ndarray) -> np.ndarray:
    """Galaxies per deg^2 brighter than i (LSST eq. 3.7 to i = 25.5, the faint slope beyond)."""
    i_magnitude = np.asarray(i_magnitude, dtype=np.float64)
    bright = np.minimum(i_magnitude, GALAXY_COUNT_BREAK_I) - 25.0
    faint = np.maximum(i_magnitude - GALAXY_COUNT_BREAK_I, 0.0)
    return GALAXIES_PER_DEG2_AT_I25 * 10 ** (GALAXY_COUNT_SLOPE * bright + GALAXY_FAINT_SLOPE * faint)


def lsst_star_model(i_magnitude: float | np.ndarray, b_deg: float | np.ndarray) -> np.ndarray:
    """Stars per deg^2 brighter than i at Galactic latitude b, by the LSST star-galaxy model.

    ``log10(N_stars / N_galaxies)(< i) = A(i) + 2.3 exp(-|b| / 20 deg)``,
    ``A(i) = -1.3 - 0.28 (i - 25) - 0.0025 (i - 25)^2`` (Slater, Ivezic &
    Lupton 2020, AJ 159, 65, appendix C, as LSST's sims_maf_contrib
    implements it), with the galaxies of LSST eq. 3.7.  It gives 0.14 stars
    per galaxy brighter than i = 23.5 at the pole and 0.20 at b = 50; its
    counts at i < 21 are twice what SDSS counted (:data:`SDSS_HIGH_LATITUDE`).
    """
    offset = np.asarray(i_magnitude, dtype=np.float64) - 25.0
    galaxies = GALAXIES_PER_DEG2_AT_I25 * 10 ** (GALAXY_COUNT_SLOPE * offset)
    ratio = -1.3 - 0.28 * offset - 0.0025 * offset**2 + 2.3 * np.exp(-np.abs(b_deg) / 20.0)
    return galaxies * 10**ratio

"""The simulator's sky against published counts, and the detectable stars of the named fields.

Prints, from the sky model's expectations (no image is drawn, the same
figures on every run):

* the field-star counts beside each published count of
  :mod:`density_db.simulate.published`, in the band it was measured in, and
  beside the LSST star model at the pole, b = 50 and b = 20 (l = 90);
* the galaxy counts beside LSST eq. 3.7 (and its faint slope);
* per detector, the stars brighter than r = 21, 23.5, 26 and 28 at those
  latitudes;
* per detector over each named field of Lai et al. (2026) Table 1, the
  detectable stars (brighter than the 5-sigma point-source depth of one
  exposure) in each band, beside the table's range.

Run from the repository root (a few seconds)::

    .venv/bin/python benchmarks/sky_model.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord

from density_db.simulate.fields import (
    DETECTOR_AREA_DEG2,
    GALAXIES,
    GALAXY_DENSITY_PER_DEG2,
    GALAXY_MEAN_R_MINUS_I,
    NAMED_FIELDS,
    expected_stars,
    galaxies_brighter_than,
)
from density_db.simulate.photometry import BANDS, point_source_depth
from density_db.simulate.published import STAR_COUNTS, lsst_galaxy_counts, lsst_star_model
from support import RESULTS_DIR, describe_machine, write_json

LATITUDES = (90.0, 50.0, 20.0)
LIMITS = (21.0, 23.5, 26.0, 28.0)
FIELD_POSITIONS = 2000
"""Positions drawn uniformly over each named field's box for the range of its counts."""


def stars_per_deg2(l_deg: float, b_deg: float, band: str, brighter_than: float) -> float:
    position = SkyCoord(l=l_deg * u.deg, b=b_deg * u.deg, frame="galactic").icrs
    return float(expected_stars(position.ra.deg, position.dec.deg, 1.0, band=band, brighter_than=brighter_than))


def published_comparison() -> dict:
    """Model against each published count, in its band."""
    rows = []
    print("field stars per deg^2, model against published:")
    for published in STAR_COUNTS:
        model = float(
            np.mean(
                [
                    stars_per_deg2(l_deg, b_deg, published.band, published.brighter_than)
                    for l_deg, b_deg in published.positions
                ]
            )
        )
        rows.append(
            {
                "source": published.source,
                "band": published.band,
                "brighter_than": published.brighter_than,
                "published": published.per_deg2,
                "model": model,
            }
        )
        print(
            f"  {published.band} < {published.brighter_than:g}: {model:8.0f} against {published.per_deg2:8.0f} "
            f"(ratio {model / published.per_deg2:.2f}) -- {published.source}"
        )
    for b_deg in LATITUDES:
        for i_magnitude in LIMITS:
            model, lsst = stars_per_deg2(90.0, b_deg, "i", i_magnitude), float(lsst_star_model(i_magnitude, b_deg))
            rows.append(
                {
                    "source": "LSST star model (Slater, Ivezic & Lupton 2020)",
                    "band": "i",
                    "brighter_than": i_magnitude,
                    "b_deg": b_deg,
                    "published": lsst,
                    "model": model,
                }
            )
            print(
                f"  b = {b_deg:2.0f}, i < {i_magnitude:4.1f}: {model:8.0f} against the LSST star model's "
                f"{lsst:8.0f} (ratio {model / lsst:.2f})"
            )
    print("galaxies per deg^2, model against LSST eq. 3.7 (faint slope 0.26 beyond i = 25.5):")
    for i_magnitude in LIMITS:
        drawn = GALAXY_DENSITY_PER_DEG2 * float(GALAXIES.brighter_fraction("i", i_magnitude, 0.0))
        model = float(galaxies_brighter_than(i_magnitude + GALAXY_MEAN_R_MINUS_I))
        published = float(lsst_galaxy_counts(i_magnitude))
        rows.append(
            {
                "source": "LSST Science Book eq. 3.7",
                "band": "i",
                "brighter_than": i_magnitude,
                "published": published,
                "model": model,
                "drawn": drawn,
            }
        )
        print(
            f"  i < {i_magnitude:4.1f}: {model:9.0f} against {published:9.0f} (ratio {model / published:.2f}); "
            f"drawn one by one {drawn:9.0f}"
        )
    return {"rows": rows}


def stars_per_detector() -> dict:
    """Stars per detector brighter than r = 21 ... 28 at l = 90 and each latitude."""
    print("field stars per detector brighter than r = " + ", ".join(f"{limit:g}" for limit in LIMITS) + " (l = 90):")
    table = {}
    for b_deg in LATITUDES:
        counts = [stars_per_deg2(90.0, b_deg, "r", limit) * DETECTOR_AREA_DEG2 for limit in LIMITS]
        table[str(b_deg)] = counts
        print(f"  b = {b_deg:2.0f}: " + ", ".join(f"{count:,.0f}" for count in counts))
    return table


def named_fields(seed: int) -> dict:
    """Detectable stars per detector over each named field's box, in every band."""
    rng = np.random.default_rng(seed)
    depths = {band: point_source_depth(band) for band in BANDS}
    print("detectable stars per detector (brighter than the 5-sigma depth of one exposure), over each field's box:")
    print(f"  {'field':18s} {'all to 28':>15s} " + " ".join(f"{band:>15s}" for band in BANDS) + "   Table 1")
    table = {}
    for name, field in NAMED_FIELDS.items():
        ra, dec = field.sample_positions(rng, FIELD_POSITIONS)
        every = expected_stars(ra, dec, DETECTOR_AREA_DEG2, field=field)
        detectable = {
            band: expected_stars(ra, dec, DETECTOR_AREA_DEG2, field=field, band=band, brighter_than=depth)
            for band, depth in depths.items()
        }
        table[name] = {
            "all": [float(every.min()), float(every.max())],
            **{band: [float(counts.min()), float(counts.max())] for band, counts in detectable.items()},
            "table_1": list(field.stellar_density_range),
        }
        low, high = field.stellar_density_range
        print(
            f"  {name:18s} {every.min():7.0f}-{every.max():<7.0f} "
            + " ".join(f"{counts.min():7.0f}-{counts.max():<7.0f}" for counts in detectable.values())
            + f"   {low:g}-{high:g}"
        )
    return {"depths": depths, "fields": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1, help="seed of the positions drawn over each field")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "sky_model.json")
    arguments = parser.parse_args()
    machine = describe_machine({})
    figures = {
        "published": published_comparison(),
        "stars_per_detector": stars_per_detector(),
        "named_fields": named_fields(arguments.seed),
    }
    write_json(arguments.json, machine, figures)
    print(f"figures written to {arguments.json}")


if __name__ == "__main__":
    main()

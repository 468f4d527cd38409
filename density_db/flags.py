"""Field flags: the bits of ``density_result.flags``, what each means, and the SQL that sets them.

A flag marks a result a survey team should treat with care (paper Sec.
4.3-4.5): the crowded and extreme fields that need other photometry, fields
whose astrometric solution may lack reference stars, counts outside the
regressor's validated range, and the soft errors that cluster at class
boundaries.  The bits are fixed (they are stored); the thresholds come from
the ``[flags]`` table of a rules file (:mod:`density_db.planning.rules`).

Flags are computed by PostgreSQL from what is stored (probabilities,
confidence, bright-star count, the frame's valid-pixel fraction, shape and
size on the sky, the models' training domain and the classes of
neighbouring frames), so they can be recomputed with other thresholds
without running the models again.  Every update records its run in
``density_result.flags_run_id``; that run's ``config`` holds the thresholds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from density_db.errors import DensityDBError
from density_db.labels import PIXEL_SCALE_TOLERANCE


@dataclass(frozen=True)
class FlagBit:
    """One bit of the flags bitmask: its position, name and a one-line meaning."""

    bit: int
    name: str
    meaning: str

    @property
    def mask(self) -> int:
        return 1 << self.bit


FLAGS: tuple[FlagBit, ...] = (
    FlagBit(
        0, "crowded", "density class >= crowded_min_class (default 4): needs deblending or crowded-field photometry"
    ),
    FlagBit(1, "extreme", "class 5 (>= 100,000 stars): regression bypassed, no bright-star count"),
    FlagBit(
        2,
        "few_references",
        "fewer than few_references_below bright stars: the astrometric solution may be ill-constrained",
    ),
    FlagBit(
        3,
        "out_of_regression_range",
        "bright-star count above regression_range_max (about 2000, the regressor's validated range)",
    ),
    FlagBit(4, "low_confidence", "probability of the predicted class below low_confidence_below"),
    FlagBit(
        5,
        "near_class_boundary",
        "the two most probable classes are adjacent and differ by less than near_boundary_margin",
    ),
    FlagBit(6, "poor_input", "fraction of valid pixels below poor_input_below"),
    FlagBit(
        7,
        "band_disagreement",
        "a frame of another band in the same exposure, centres within band_disagreement_max_separation_deg, "
        "has a class differing by band_disagreement_min_class_gap or more",
    ),
    FlagBit(
        8,
        "outside_training_domain",
        "the frame's shape or pixel scale differs from the images the models were trained on (their "
        "checkpoints' training_domain): its pooling bins hold other areas of sky, so its class and count "
        "are extrapolations",
    ),
)
FLAGS_BY_NAME = {flag.name: flag for flag in FLAGS}


@dataclass(frozen=True)
class FlagThresholds:
    """The thresholds of the flags (the ``[flags]`` table of a rules file)."""

    crowded_min_class: int
    few_references_below: float
    regression_range_max: float
    low_confidence_below: float
    near_boundary_margin: float
    poor_input_below: float
    band_disagreement_min_class_gap: int
    band_disagreement_max_separation_deg: float

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def flag_mask(names: Iterable[str]) -> int:
    """The bitmask of flag ``names``.

    Raises
    ------
    DensityDBError
        For a name that is no flag (the message lists the flags).
    """
    mask = 0
    for name in names:
        if name not in FLAGS_BY_NAME:
            raise DensityDBError(f"unknown flag {name!r}; the flags are {', '.join(FLAGS_BY_NAME)}")
        mask |= FLAGS_BY_NAME[name].mask
    return mask


def flag_names(mask: int) -> list[str]:
    """Names of the flags set in ``mask``, in bit order."""
    return [flag.name for flag in FLAGS if mask & flag.mask]


_SEPARATION_SQL = """degrees(2 * asin(least(1.0, sqrt(
            power(sin(radians(b.dec - a.dec) / 2), 2)
            + cos(radians(a.dec)) * cos(radians(b.dec)) * power(sin(radians(b.ra - a.ra) / 2), 2)))))"""


def _bit(name: str) -> int:
    return FLAGS_BY_NAME[name].mask


_UPDATE_FLAGS_SQL = f"""
WITH target AS (
    SELECT d.id, d.classifier_id, d.regressor_id, d.density_class, d.probabilities, d.class_confidence,
           d.bright_count, f.valid_fraction, f.exposure_pk, f.band, f.ra, f.dec, f.naxis1, f.naxis2, f.radius_deg
    FROM density_result d
    JOIN frame f ON f.id = d.frame_id
    WHERE {{scope}}
),
disagreeing AS (
    SELECT DISTINCT a.id
    FROM target a
    JOIN target b
      ON b.exposure_pk = a.exposure_pk AND b.band <> a.band
     AND b.classifier_id = a.classifier_id AND b.regressor_id = a.regressor_id
    WHERE abs(a.density_class - b.density_class) >= :band_disagreement_min_class_gap
      AND {_SEPARATION_SQL} <= :band_disagreement_max_separation_deg
),
computed AS (
    SELECT t.id,
           CASE WHEN t.density_class >= :crowded_min_class THEN {_bit("crowded")} ELSE 0 END
         | CASE WHEN t.density_class = 5 THEN {_bit("extreme")} ELSE 0 END
         | CASE WHEN t.bright_count < :few_references_below THEN {_bit("few_references")} ELSE 0 END
         | CASE WHEN t.bright_count > :regression_range_max THEN {_bit("out_of_regression_range")} ELSE 0 END
         | CASE WHEN t.class_confidence < :low_confidence_below THEN {_bit("low_confidence")} ELSE 0 END
         | CASE WHEN abs(top.classes[1] - top.classes[2]) = 1
                 AND top.probabilities[1] - top.probabilities[2] < :near_boundary_margin
                THEN {_bit("near_class_boundary")} ELSE 0 END
         | CASE WHEN t.valid_fraction < :poor_input_below THEN {_bit("poor_input")} ELSE 0 END
         | CASE WHEN g.id IS NOT NULL THEN {_bit("band_disagreement")} ELSE 0 END
         | CASE WHEN EXISTS (
               SELECT 1 FROM model m
               WHERE m.id IN (t.classifier_id, t.regressor_id) AND m.metadata -> 'training_domain' IS NOT NULL
                 AND (t.naxis2 <> CAST(m.metadata #>> '{{{{training_domain,image_shape,0}}}}' AS integer)
                      OR t.naxis1 <> CAST(m.metadata #>> '{{{{training_domain,image_shape,1}}}}' AS integer)
                      -- the pixel scale from the half-diagonal: 2 r / hypot(nx, ny), in arcsec
                      OR abs(7200 * t.radius_deg / sqrt(power(t.naxis1, 2) + power(t.naxis2, 2))
                             / CAST(m.metadata #>> '{{{{training_domain,pixel_scale_arcsec}}}}' AS float8) - 1)
                         > :domain_scale_tolerance))
           THEN {_bit("outside_training_domain")} ELSE 0 END AS flags
    FROM target t
    CROSS JOIN LATERAL (
        SELECT array_agg(u.k ORDER BY u.p DESC, u.k) AS classes,
               array_agg(u.p ORDER BY u.p DESC, u.k) AS probabilities
        FROM unnest(t.probabilities) WITH ORDINALITY AS u(p, k)
    ) top
    LEFT JOIN disagreeing g ON g.id = t.id
)
UPDATE density_result d
SET flags = c.flags, flags_run_id = :run_id
FROM computed c
WHERE d.id = c.id
"""


def update_flags(
    connection: sa.Connection,
    thresholds: FlagThresholds,
    *,
    run_id: int,
    frame_ids: Sequence[int] | None = None,
    classifier_id: int | None = None,
    regressor_id: int | None = None,
) -> int:
    """Set the flags of stored results from ``thresholds``; return how many results were updated.

    Parameters
    ----------
    connection : sa.Connection
        In the caller's transaction.
    thresholds : FlagThresholds
        The ``[flags]`` of the rules in force.
    run_id : int
        Recorded in ``flags_run_id``: the run whose configuration holds the thresholds.
    frame_ids : sequence of int, optional
        Only results of the exposures these frames belong to; all results when
        ``None``.  The band-disagreement flag compares the frames of one
        exposure, so whole exposures are updated: a frame's neighbours learn
        of its class too.
    classifier_id, regressor_id : int, optional
        Only results of this model pair.
    """
    scope = ["true"]
    parameters: dict[str, Any] = {
        **thresholds.as_dict(),
        "run_id": run_id,
        "domain_scale_tolerance": PIXEL_SCALE_TOLERANCE,
    }
    if frame_ids is not None:
        scope.append("f.exposure_pk IN (SELECT exposure_pk FROM frame WHERE id = ANY(CAST(:frame_ids AS bigint[])))")
        parameters["frame_ids"] = list(frame_ids)
    if classifier_id is not None:
        scope.append("d.classifier_id = :classifier_id")
        parameters["classifier_id"] = classifier_id
    if regressor_id is not None:
        scope.append("d.regressor_id = :regressor_id")
        parameters["regressor_id"] = regressor_id
    statement = sa.text(_UPDATE_FLAGS_SQL.format(scope=" AND ".join(scope)))
    return connection.execute(statement, parameters).rowcount

"""The numbers and the rule that define density-db's labels, in one place.

Six density classes by a number ``N`` of stars in a detector image, and a
regression target counting the stars brighter than 23.5 mag in the image's
band (Lai et al. 2026, Sec. 2.4).  Which stars ``N`` counts is the *label
rule*:

``detectable-stars`` (the default)
    the stars brighter than the 5-sigma point-source depth of one exposure
    in the image's band: what an image can show.  The depth comes from the
    instrument's photometry (for the simulated CSST camera,
    :func:`density_db.simulate.photometry.point_source_depth`).
``catalog-stars`` (the paper's wording)
    "the total count of star entries" of the truth catalog, whatever their
    magnitude (here down to the simulator's 28 mag).  Most of a catalog's
    faint stars are invisible in one 150 s exposure (24.7-26.0 mag deep),
    so a class counted this way is partly unknowable from the image
    (``benchmarks/label_ceiling.py`` measures how much).

Every dataset, checkpoint, evaluation report and stored model records its
rule; records made before the rule was recorded were made under
``catalog-stars``.  Every stored model and result also records the numbers
below, so a change here is visible in the database.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from density_db.errors import ConfigurationError

N_CLASSES = 6
"""Density classes 0-5."""

CLASS_LOWER_EDGES = (0, 1, 100, 1_000, 10_000, 100_000)
"""Smallest star count of each class: 0: N = 0; 1: 1-99; 2: 100-999; ... 5: >= 100 000."""

BRIGHT_MAGNITUDE_LIMIT = 23.5
"""Stars brighter than this magnitude (in the image's band) make up ``N_bright``."""

EMPTY_CLASS = 0
"""No star: the regressor is not run, the bright-star count is 0."""

BYPASSED_CLASS = N_CLASSES - 1
"""Class 5 (>= 100 000 stars): the regressor is bypassed, no bright-star count (paper Sec. 4.5)."""

INPUT_SIZE = 224
"""Side of the model input (every channel), in pixels."""

PIXEL_SCALE_TOLERANCE = 0.02
"""Relative pixel-scale difference within which a frame counts as the scale a model was trained on (WCS
rounding, field distortion); beyond it, or at another shape, its result is flagged ``outside_training_domain``."""

DETECTION_SIGMA = 5.0
"""The detectable stars are those brighter than the point-source depth at this signal-to-noise."""


@dataclass(frozen=True)
class LabelRule:
    """Which stars the density class counts."""

    name: str
    description: str
    counts_to_depth: bool
    """Whether the count stops at the image's point-source depth (else it takes every catalogued star)."""

    def counting_limit(self, depth: float) -> float:
        """The magnitude the stars counted must be brighter than, for an image of point-source ``depth``."""
        return float(depth) if self.counts_to_depth else float("inf")


DETECTABLE_STARS = LabelRule(
    "detectable-stars",
    f"stars brighter than the {DETECTION_SIGMA:g}-sigma point-source depth of one exposure in the image's band",
    True,
)
CATALOG_STARS = LabelRule(
    "catalog-stars", "every star of the truth catalog, as Lai et al. (2026) Sec. 2.4 counts them", False
)
LABEL_RULES = {rule.name: rule for rule in (DETECTABLE_STARS, CATALOG_STARS)}
LABEL_RULE = DETECTABLE_STARS.name
"""The rule of new datasets (``simulate dataset --label-rule`` chooses another)."""


def label_rule(name: str) -> LabelRule:
    """The rule called ``name``.

    Raises
    ------
    ConfigurationError
        If there is no such rule; the message lists the rules.
    """
    try:
        return LABEL_RULES[name]
    except KeyError:
        raise ConfigurationError(f"unknown label rule {name!r}; rules are {', '.join(LABEL_RULES)}") from None


def recorded_label_rule(record: Mapping[str, Any]) -> str:
    """The label rule a dataset description, checkpoint metadata or report records (``catalog-stars`` if none)."""
    return str(record.get("label_rule", CATALOG_STARS.name))


def counted_stars(star_magnitudes: np.ndarray, counting_limit: float) -> int:
    """How many of the stars the density class counts: those brighter than ``counting_limit``."""
    return int(np.count_nonzero(np.asarray(star_magnitudes) < counting_limit))


def density_class(star_count: int | np.ndarray) -> int | np.ndarray:
    """Density class (0-5) of a count of the stars the rule counts, elementwise for arrays.

    Raises
    ------
    ValueError
        If a count is negative.
    """
    counts = np.asarray(star_count)
    if np.any(counts < 0):
        raise ValueError(f"star counts must be >= 0, got {counts.min()}")
    classes = np.searchsorted(CLASS_LOWER_EDGES, counts, side="right") - 1
    return int(classes) if classes.ndim == 0 else classes

"""The numbers that define density-db's labels, in one place.

They come from Lai et al. (2026), Sec. 2.4: six density classes by the true
number ``N`` of stars in a detector image, and a regression target counting
stars brighter than 23.5 mag in the image's band.  Every stored model and
result records them, so a change here is visible in the database.
"""

import numpy as np

N_CLASSES = 6
"""Density classes 0-5."""

CLASS_LOWER_EDGES = (0, 1, 100, 1_000, 10_000, 100_000)
"""Smallest star count of each class: 0: N = 0; 1: 1-99; 2: 100-999; ... 5: >= 100 000."""

BRIGHT_MAGNITUDE_LIMIT = 23.5
"""Stars brighter than this magnitude (in the image's band) make up ``N_bright``."""

REGRESSION_MAX_BRIGHT = 2000
"""Upper end of the regressor's valid range of ``N_bright`` (paper Sec. 4.5)."""

INPUT_SIZE = 224
"""Side of the 2-channel model input, in pixels."""


def density_class(star_count: int | np.ndarray) -> int | np.ndarray:
    """Density class (0-5) of a true star count, elementwise for arrays.

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

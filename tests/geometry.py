"""Sky geometry the tests build frames with."""

import numpy as np


def tangent_to_sky(ra0: float, dec0: float, xi: np.ndarray, eta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse gnomonic projection: standard coordinates (deg) around (ra0, dec0) to ICRS degrees."""
    xi, eta, dec0_rad = np.radians(xi), np.radians(eta), np.radians(dec0)
    denominator = np.cos(dec0_rad) - eta * np.sin(dec0_rad)
    ra = ra0 + np.degrees(np.arctan2(xi, denominator))
    dec = np.degrees(np.arctan2(np.sin(dec0_rad) + eta * np.cos(dec0_rad), np.hypot(xi, denominator)))
    return ra % 360, dec

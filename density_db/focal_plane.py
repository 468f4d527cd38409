"""Geometry of the CSST survey camera's focal plane.

30 detectors of 9232 x 9216 pixels at 0.074"/px (11.4' on a side) in 6 rows
of 5 columns, ids 1-30 row-major, spanning about 1.1 x 1.2 deg; 18 of them
image the sky through one filter each (the ``[detectors]`` table of the
``csst`` instrument profile), the others are slitless.  All detectors of an
exposure share the exposure's tangent point, so a TAN WCS per detector is
the exposure's projection shifted to the detector's slot.
"""

from __future__ import annotations

import numpy as np
from astropy.io import fits

DETECTOR_SHAPE = (9216, 9232)
"""(ny, nx) of a full-size detector image."""

PIXEL_SCALE_ARCSEC = 0.074
COLUMNS, ROWS = 5, 6
COLUMN_GAP_DEG = 0.03  # gaps chosen so the field spans about 1.1 x 1.2 deg
ROW_GAP_DEG = 0.01

DETECTOR_WIDTH_DEG = DETECTOR_SHAPE[1] * PIXEL_SCALE_ARCSEC / 3600
DETECTOR_HEIGHT_DEG = DETECTOR_SHAPE[0] * PIXEL_SCALE_ARCSEC / 3600


def detector_offset_deg(detector: int) -> tuple[float, float]:
    """Tangent-plane offset (x east, y north, degrees, position angle 0) of a detector's centre.

    Raises
    ------
    ValueError
        If ``detector`` is not a focal-plane id (1-30).
    """
    if not 1 <= detector <= COLUMNS * ROWS:
        raise ValueError(f"CSST detector ids run from 1 to {COLUMNS * ROWS}, got {detector}")
    row, column = divmod(detector - 1, COLUMNS)
    x = (column - (COLUMNS - 1) / 2) * (DETECTOR_WIDTH_DEG + COLUMN_GAP_DEG)
    y = ((ROWS - 1) / 2 - row) * (DETECTOR_HEIGHT_DEG + ROW_GAP_DEG)
    return x, y


def detector_wcs_header(
    detector: int, *, ra: float, dec: float, position_angle_deg: float = 0.0, shape: tuple[int, int] = DETECTOR_SHAPE
) -> fits.Header:
    """TAN WCS keywords of one detector of an exposure pointed at (ra, dec).

    Pixels are always 0.074": a ``shape`` smaller than the real detector is a
    smaller patch of sky centred on the detector's slot, so that the density
    of sources per pixel stays realistic.
    """
    ny, nx = shape
    scale = PIXEL_SCALE_ARCSEC / 3600
    angle = np.radians(position_angle_deg)
    rotation = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    # east to the left on the image: the x pixel axis runs against xi (east)
    cd = rotation @ np.diag([-scale, scale])
    offset = rotation @ np.array(detector_offset_deg(detector))
    centre_pixel = np.array([(nx + 1) / 2, (ny + 1) / 2])
    crpix = centre_pixel - np.linalg.solve(cd, offset)
    header = fits.Header()
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CRVAL1"], header["CRVAL2"] = ra % 360.0, dec
    header["CRPIX1"], header["CRPIX2"] = float(crpix[0]), float(crpix[1])
    header["CD1_1"], header["CD1_2"] = float(cd[0, 0]), float(cd[0, 1])
    header["CD2_1"], header["CD2_2"] = float(cd[1, 0]), float(cd[1, 1])
    header["RADESYS"] = "ICRS"
    return header

"""Each image's calibration for the point-source pass: its header's values, else its band's in the profile.

The point-source channels of model input version 2 need an image's zero
point (to tell stars brighter than the regression's 23.5 mag limit), its
exposure time and its PSF (the matched filter and the sharpness of a
star).  The instrument profile's ``[calibration]`` says which header
keywords hold the zero point and the FWHM, and gives each band's typical
values for files without them (:class:`density_db.instrument.CalibrationSettings`);
the exposure time is the profile's ``exposure_time`` keyword.  An image
with neither gets no calibration, and a version 2 model records a
``no_calibration`` failure for it, naming what is missing: a wrong zero
point would shift every bright-star count without a trace.
"""

from __future__ import annotations

from density_db.errors import InputError
from density_db.fits_input import FrameHeader
from density_db.inference.point_sources import Calibration
from density_db.instrument import CalibrationSettings


def frame_calibration(header: FrameHeader, settings: CalibrationSettings) -> Calibration:
    """The calibration of one registered image.

    Raises
    ------
    InputError
        ``no_calibration``, naming the missing values and where they could come from.
    """
    band_values = settings.band_values.get(header.band)
    zero_point = header.zero_point if header.zero_point is not None else getattr(band_values, "zero_point", None)
    fwhm = header.psf_fwhm_px if header.psf_fwhm_px is not None else getattr(band_values, "psf_fwhm_px", None)
    missing = [
        what for what, value in (
            (f"a zero point ({settings.zero_point_keyword or 'no keyword'} or [calibration.bands] {header.band})",
             zero_point),
            (f"a PSF FWHM ({settings.psf_fwhm_keyword or 'no keyword'} or [calibration.bands] {header.band})", fwhm),
            ("an exposure time (the profile's exposure_time keyword)", header.exposure_time),
        ) if value is None
    ]
    if missing:
        raise InputError("no_calibration", f"{header.path} HDU {header.hdu_index}: the point-source input "
                                           f"(preprocessing version 2) needs {', '.join(missing)}")
    try:
        return Calibration(zero_point, header.exposure_time, fwhm, settings.moffat_beta)
    except ValueError as error:
        raise InputError("no_calibration", f"{header.path} HDU {header.hdu_index}: {error}") from error

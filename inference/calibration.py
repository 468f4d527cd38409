"""Each image's calibration for the point-source pass: its header's values, else its band's in the profile.

The point-source channels of model input version 2 need an image's zero
point (to tell stars brighter than the regression's 23.5 mag limit), its
exposure time and its PSF (the matched filter and the sharpness of a
star).  The instrument profile's ``[calibration]`` says which header
keywords hold the zero point and the FWHM, and gives each band's typical
values for files without them (:class:`density_db.instrument.CalibrationSettings`);
the exposure time is the profile's ``exposure_time`` keyword.  A FWHM that
neither gives is measured on the pixels (:func:`density_db.inference.psf.measure_fwhm`).
An image without a zero point or exposure time, or whose FWHM cannot be
measured, gets no calibration, and a version 2 model records a
``no_calibration`` failure for it, naming what is missing: a wrong zero
point would shift every bright-star count without a trace.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from density_db.errors import InputError
from density_db.fits_input import FrameHeader
from density_db.inference.point_sources import Calibration
from density_db.inference.psf import measure_fwhm
from density_db.instrument import CalibrationSettings


@dataclass(frozen=True)
class FrameCalibration:
    """What an image's header and the profile say of its calibration; a missing FWHM is measured on the pixels."""

    zero_point: float
    exposure_seconds: float
    fwhm_px: float | None
    moffat_beta: float | None
    where: str
    """The file and HDU, for messages."""

    def for_pixels(self, image: np.ndarray, quality: np.ndarray | None) -> Calibration:
        """The calibration of the image's pixels, measuring the FWHM there when nothing gave it.

        Raises
        ------
        InputError
            ``no_calibration`` when the FWHM cannot be measured or a value is out of range.
        """
        fwhm = self.fwhm_px
        if fwhm is None:
            fwhm = measure_fwhm(image, quality, moffat_beta=self.moffat_beta)
            if fwhm is None:
                raise InputError(
                    "no_calibration",
                    f"{self.where}: no PSF FWHM in the header or the profile, and "
                    "too few bright isolated point sources to measure one",
                )
        try:
            return Calibration(self.zero_point, self.exposure_seconds, fwhm, self.moffat_beta)
        except ValueError as error:
            raise InputError("no_calibration", f"{self.where}: {error}") from error


def frame_calibration(header: FrameHeader, settings: CalibrationSettings) -> FrameCalibration:
    """The calibration of one registered image, as far as its header and the profile give it.

    Raises
    ------
    InputError
        ``no_calibration``, naming the missing zero point or exposure time and where they could come from.
    """
    band_values = settings.band_values.get(header.band)
    zero_point = header.zero_point if header.zero_point is not None else getattr(band_values, "zero_point", None)
    fwhm = header.psf_fwhm_px if header.psf_fwhm_px is not None else getattr(band_values, "psf_fwhm_px", None)
    where = f"{header.path} HDU {header.hdu_index}"
    missing = [
        what
        for what, value in (
            (
                f"a zero point ({settings.zero_point_keyword or 'no keyword'} or [calibration.bands] {header.band})",
                zero_point,
            ),
            ("an exposure time (the profile's exposure_time keyword)", header.exposure_time),
        )
        if value is None
    ]
    if missing:
        raise InputError(
            "no_calibration", f"{where}: the point-source input (preprocessing version 2) needs {' and '.join(missing)}"
        )
    return FrameCalibration(zero_point, header.exposure_time, fwhm, settings.moffat_beta, where)

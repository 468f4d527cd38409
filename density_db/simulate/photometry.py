"""Instrument numbers of the simulated CSST survey camera, in one place.

Detector and exposure (Wei et al. 2025 / Lai et al. 2026 CSST parameters)
--------------------------------------------------------------------------
``EXPOSURE_SECONDS = 150``, ``GAIN = 1.0`` e-/ADU, ``READ_NOISE_E = 5.2`` e-,
0.074"/px.  The published table lists the dark current as "0.8 e/s/pixel"
and the sky as "2e3 e/s/pixel": both units are garbled.  0.8 e-/s/px would
put 120 e- of dark in every 150 s pixel, several times the sky, which no
deep-cooled survey CCD shows; ``DARK_E_PER_S = 0.02`` e-/s/px is typical
of such CCDs (3 e- per exposure).  The sky is derived below instead.
``FULL_WELL_E = 65535 * GAIN``: the 16-bit converter clips before the CCD's
physical full well, so a pixel saturates when its expected electrons
exceed 65535.

Zero points
-----------
``zero_point`` is the AB magnitude of a source giving 1 e-/s, from the
photon rate of an AB = 0 source through the unobstructed 2 m off-axis
aperture (``COLLECTING_AREA_M2`` = pi m^2)::

    rate = A * (3631 Jy / h) * throughput * width / centre      [e-/s]
    zero_point = 2.5 log10(rate)

with each filter's centre and width (nm) and an end-to-end throughput
(mirrors, filter, CCD quantum efficiency).  The throughputs are the free
parameters: they were set so that the 5-sigma point-source depth of one
150 s exposure (:func:`point_source_depth`) is about 26.0 mag in g and r
(CSST's quoted wide-survey depths, about 26.3 in g and 26.0 in r, count
all of a field's exposures); y is put just inside the 24.5-26.5 range asked
of the other bands, which is optimistic: CSST quotes about 24.4 for y.

====  ======  =====  ==========  =========  =========  =======  ====  =========
band  centre  width  throughput  zero pt.   sky        sky      FWHM  depth 5 s
      nm      nm                 (1 e-/s)   mag/"^2    e-/s/px  px    150 s
====  ======  =====  ==========  =========  =========  =======  ====  =========
NUV   288     60     0.26        24.92      26.0       0.0020   2.4   24.94
u     360     80     0.32        25.22      24.3       0.0128   2.2   25.29
g     475     150    0.48        26.04      22.9       0.0989   2.0   26.04
r     625     140    0.62        25.95      22.45      0.1371   1.9   25.94
i     765     130    0.58        25.57      22.35      0.1067   1.9   25.61
z     910     180    0.30        25.02      22.3       0.0673   2.0   25.08
y     970     150    0.26        24.60      22.3       0.0456   2.1   24.65
====  ======  =====  ==========  =========  =========  =======  ====  =========

Sky
---
In low Earth orbit the sky is zodiacal light (plus earthshine), i.e.
reflected sunlight: about 22.9 AB mag/arcsec^2 in g at moderate ecliptic
latitude, with the Sun's colours for the other bands (g-r = 0.45,
r-i = 0.1, u-g = 1.4) and the steep solar ultraviolet fall-off for NUV.
``sky_e_per_s`` converts it through the zero point and the 0.074" pixel.
At 150 s the sky gives 0.3-21 e- per pixel: the images are read-noise
limited in NUV, u and y and close to it elsewhere.

PSF
---
A circular Moffat profile, ``I(r) ∝ (1 + r^2/alpha^2)^-beta``, beta = 3
(a diffraction core with scattered-light wings), as the effective PSF
(optics convolved with the pixel) sampled at pixel centres.  FWHM about
2 px (0.15"), wider in the ultraviolet (NUV 2.4 px, u 2.2 px) where the
optics' scattering (growing as lambda^-2) weighs more, 1.9 px in r and i,
and widening again towards y as diffraction (lambda/D = 0.1" at 1 um)
grows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from density_db.errors import ConfigurationError
from density_db.focal_plane import PIXEL_SCALE_ARCSEC
from density_db.inference.point_sources import Calibration

EXPOSURE_SECONDS = 150.0
GAIN = 1.0
"""Electrons per ADU."""
READ_NOISE_E = 5.2
DARK_E_PER_S = 0.02
"""Dark current per pixel; see the module docstring for why not the published "0.8"."""
FULL_WELL_E = 65535 * GAIN
"""Saturation in electrons: the 16-bit converter's ceiling."""
COLLECTING_AREA_M2 = np.pi * 1.0**2
"""Unobstructed 2 m off-axis primary."""
AB_PHOTON_RATE = 3631e-26 / 6.62607015e-34
"""Photons per second, per m^2 and per unit ln(wavelength) from an AB = 0 source."""


@dataclass(frozen=True)
class BandPhotometry:
    """Filter, sky and PSF of one band.

    Attributes
    ----------
    band : str
        Canonical band name (``"NUV"``, ``"u"``, ... ``"y"``).
    centre_nm, width_nm : float
        Filter centre and width.
    throughput : float
        End-to-end efficiency (optics, filter, quantum efficiency).
    sky_mag_arcsec2 : float
        Sky surface brightness, AB mag/arcsec^2.
    fwhm_px : float
        PSF full width at half maximum in 0.074" pixels.
    moffat_beta : float
        Moffat index of the PSF.
    """

    band: str
    centre_nm: float
    width_nm: float
    throughput: float
    sky_mag_arcsec2: float
    fwhm_px: float
    moffat_beta: float = 3.0

    @property
    def zero_point(self) -> float:
        """AB magnitude of a source that gives 1 e-/s."""
        rate = COLLECTING_AREA_M2 * AB_PHOTON_RATE * self.throughput * self.width_nm / self.centre_nm
        return float(2.5 * np.log10(rate))

    @property
    def sky_e_per_s(self) -> float:
        """Sky background per pixel, e-/s."""
        return float(10 ** (-0.4 * (self.sky_mag_arcsec2 - self.zero_point)) * PIXEL_SCALE_ARCSEC**2)

    @property
    def moffat_alpha(self) -> float:
        """Moffat core radius in pixels (FWHM = 2 alpha sqrt(2^(1/beta) - 1))."""
        return float(self.fwhm_px / (2.0 * np.sqrt(2.0 ** (1.0 / self.moffat_beta) - 1.0)))

    def psf(self, radius_squared: np.ndarray) -> np.ndarray:
        """PSF value per pixel at squared distances (px^2) from the centre; it integrates to 1."""
        alpha2 = self.moffat_alpha**2
        peak = (self.moffat_beta - 1.0) / (np.pi * alpha2)
        return peak * (1.0 + radius_squared / alpha2) ** -self.moffat_beta


BANDS: dict[str, BandPhotometry] = {
    photometry.band: photometry
    for photometry in (
        BandPhotometry("NUV", 288.0, 60.0, 0.26, 26.0, 2.4),
        BandPhotometry("u", 360.0, 80.0, 0.32, 24.3, 2.2),
        BandPhotometry("g", 475.0, 150.0, 0.48, 22.9, 2.0),
        BandPhotometry("r", 625.0, 140.0, 0.62, 22.45, 1.9),
        BandPhotometry("i", 765.0, 130.0, 0.58, 22.35, 1.9),
        BandPhotometry("z", 910.0, 180.0, 0.30, 22.3, 2.0),
        BandPhotometry("y", 970.0, 150.0, 0.26, 22.3, 2.1),
    )
}
"""The seven imaging bands, in wavelength order."""


def image_calibration(band: str, exposure_seconds: float = EXPOSURE_SECONDS) -> Calibration:
    """What the point-source pass needs of a simulated image: zero point (of 1 ADU/s), exposure time and PSF."""
    photometry = band_photometry(band)
    return Calibration(
        zero_point=photometry.zero_point + 2.5 * float(np.log10(GAIN)),
        exposure_seconds=exposure_seconds,
        fwhm_px=photometry.fwhm_px,
        moffat_beta=photometry.moffat_beta,
    )


def band_photometry(band: str) -> BandPhotometry:
    """The numbers of one band.

    Raises
    ------
    ConfigurationError
        If ``band`` is not one of :data:`BANDS` (canonical spelling).
    """
    try:
        return BANDS[band]
    except KeyError:
        raise ConfigurationError(f"unknown band {band!r}; bands are {', '.join(BANDS)}") from None


def electrons(magnitude: float | np.ndarray, band: str, exposure_seconds: float = EXPOSURE_SECONDS) -> np.ndarray:
    """Expected electrons collected from sources of AB ``magnitude`` in ``band``."""
    zero_point = band_photometry(band).zero_point
    return exposure_seconds * 10 ** (-0.4 * (np.asarray(magnitude, dtype=np.float64) - zero_point))


def background_electrons(band: str, exposure_seconds: float = EXPOSURE_SECONDS) -> float:
    """Expected sky plus dark electrons per pixel in one exposure."""
    return (band_photometry(band).sky_e_per_s + DARK_E_PER_S) * exposure_seconds


def point_source_depth(band: str, sigma: float = 5.0, *, exposure_seconds: float = EXPOSURE_SECONDS) -> float:
    """Magnitude of a point source detected at ``sigma`` in one exposure.

    The signal-to-noise is that of optimal (PSF-weighted) photometry of a
    star centred on a pixel, the best any aperture can do:
    ``SNR^2 = sum_i (F p_i)^2 / (F p_i + B)`` with ``p_i`` the PSF in pixel
    ``i`` and ``B`` the sky, dark and read-noise variance per pixel.  It is
    solved for the flux ``F`` by bisection.
    """
    photometry = band_photometry(band)
    offsets = np.arange(-40, 41, dtype=np.float64)
    psf = photometry.psf(offsets[:, None] ** 2 + offsets[None, :] ** 2)
    psf /= psf.sum()
    variance = background_electrons(band, exposure_seconds) + READ_NOISE_E**2
    low, high = 1e-3, 1e9  # electrons; SNR grows monotonically with flux
    for _ in range(200):
        flux = np.sqrt(low * high)
        snr = np.sqrt(np.sum((flux * psf) ** 2 / (flux * psf + variance)))
        low, high = (flux, high) if snr < sigma else (low, flux)
    return float(photometry.zero_point - 2.5 * np.log10(flux / exposure_seconds))

"""Instrument profiles: which FITS keywords and HDUs describe a detector image.

A profile is a small TOML file.  ``density_db/instruments/`` ships the ones
density-db knows (``csst``); a survey team points :func:`load_profile` at its
own file for another imager.  ``density_db/instruments/csst.toml`` is the
annotated template.
"""

import logging
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from types import MappingProxyType
from typing import Any

from density_db.errors import ConfigurationError, InputError

logger = logging.getLogger(__name__)

_TEXT = "a non-empty string"
_TEXTS = "a list of non-empty strings"
_TABLE = "a table"

# Accepted keys of each TOML table: key -> (required, expected kind).
_NUMBER = "a number"
_TOP_SCHEMA = {
    "name": (True, _TEXT),
    "keywords": (True, _TABLE),
    "hdus": (True, _TABLE),
    "bands": (True, _TABLE),
    "detectors": (False, _TABLE),
    "calibration": (False, _TABLE),
}
_KEYWORD_SCHEMA = {
    "exposure_id": (True, _TEXT),
    "detector": (True, _TEXT),
    "band": (True, _TEXT),
    "date_obs": (False, _TEXT),
    "mjd_obs": (False, _TEXT),
    "exposure_time": (False, _TEXT),
    "pointing_ra": (False, _TEXTS),
    "pointing_dec": (False, _TEXTS),
}
_HDU_SCHEMA = {
    "science": (True, _TEXTS),
    "data_quality": (False, _TEXTS),
}
_CALIBRATION_SCHEMA = {
    "zero_point": (False, _TEXT),
    "psf_fwhm": (False, _TEXT),
    "moffat_beta": (False, _NUMBER),
    "saturated_bits": (False, _NUMBER),
    "bands": (False, _TABLE),
}
_BAND_CALIBRATION_SCHEMA = {
    "zero_point": (False, _NUMBER),
    "psf_fwhm": (False, _NUMBER),
}


@dataclass(frozen=True)
class BandCalibration:
    """A band's typical zero point (AB mag of 1 ADU/s) and PSF FWHM (pixels), for files that lack them."""

    zero_point: float | None = None
    psf_fwhm_px: float | None = None


@dataclass(frozen=True)
class CalibrationSettings:
    """Where the point-source pass (model input version 2) finds each image's zero point and PSF.

    Attributes
    ----------
    zero_point_keyword, psf_fwhm_keyword : str or None
        Header keywords of the zero point (AB magnitude of a source giving
        1 ADU per second) and of the PSF FWHM in pixels; a file's value wins
        over the band's.
    band_values : Mapping[str, BandCalibration]
        Canonical band -> the values used when a file lacks the keywords.
    moffat_beta : float or None
        Moffat index of the instrument's PSF, ``None`` for a Gaussian.
    saturated_bits : int
        Data-quality bits that mark saturated pixels (each saturated core
        counts as one bright point source); 0 when the mask does not say.
    """

    zero_point_keyword: str | None = None
    psf_fwhm_keyword: str | None = None
    band_values: Mapping[str, BandCalibration] = field(default_factory=dict, hash=False)
    moffat_beta: float | None = None
    saturated_bits: int = 0


@dataclass(frozen=True)
class InstrumentProfile:
    """Where an instrument's FITS files keep what density-db needs.

    Attributes
    ----------
    name : str
        Instrument name stored with every frame, e.g. ``"csst"``.
    exposure_id_keyword, detector_keyword, band_keyword : str
        Keywords of the exposure id, the detector number and the band.
    date_keyword : str or None
        Keyword of the ISO 8601 (UTC) observation start.
    mjd_keyword : str or None
        Keyword of the observation start as MJD, used when ``date_keyword``
        is absent from a file.
    exposure_time_keyword : str or None
        Keyword of the exposure time in seconds (optional in the files).
    pointing_ra_keywords, pointing_dec_keywords : tuple of str
        Alternative keywords of the telescope pointing in degrees; the first
        one present in a header is used.
    science_extnames, data_quality_extnames : tuple of str
        EXTNAMEs of science and data-quality image HDUs (upper case).
    band_aliases : Mapping[str, tuple[str, ...]]
        Canonical band -> accepted spellings of the band keyword, matched
        case-insensitively (the canonical name itself is always accepted).
    detector_bands : Mapping[int, str]
        Detector -> canonical band of the focal plane.  Informational only:
        the band keyword of each image wins.
    source : str
        The TOML file the profile was loaded from.
    calibration : CalibrationSettings
        Zero point, PSF and saturation for the point-source pass (``[calibration]``).
    """

    name: str
    exposure_id_keyword: str
    detector_keyword: str
    band_keyword: str
    date_keyword: str | None
    mjd_keyword: str | None
    exposure_time_keyword: str | None
    pointing_ra_keywords: tuple[str, ...]
    pointing_dec_keywords: tuple[str, ...]
    science_extnames: tuple[str, ...]
    data_quality_extnames: tuple[str, ...]
    # Mappings are not hashable; the profile hashes by its other fields.
    band_aliases: Mapping[str, tuple[str, ...]] = field(hash=False)
    detector_bands: Mapping[int, str] = field(hash=False)
    source: str
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings, hash=False)

    @property
    def bands(self) -> tuple[str, ...]:
        """Canonical band names, in profile order."""
        return tuple(self.band_aliases)

    def canonical_band(self, value: object) -> str:
        """Canonical name of a band keyword value.

        Parameters
        ----------
        value : object
            Value of the band keyword, e.g. ``"nuv"`` or ``" N "``.

        Returns
        -------
        str
            The canonical band, e.g. ``"NUV"``.

        Raises
        ------
        InputError
            Kind ``unknown_band`` when no band accepts the value.
        """
        spelling = str(value).strip().lower()
        for band, aliases in self.band_aliases.items():
            if spelling == band.lower() or spelling in (alias.lower() for alias in aliases):
                return band
        accepted = ", ".join(
            f"{band} ({', '.join(aliases)})" if aliases != (band,) else band
            for band, aliases in self.band_aliases.items()
        )
        raise InputError(
            "unknown_band",
            f"band {value!r} is not a {self.name} band; accepted (case-insensitive): {accepted}",
        )


def load_profile(name_or_path: str | Path = "csst") -> InstrumentProfile:
    """Load an instrument profile.

    Parameters
    ----------
    name_or_path : str or Path
        Name of a profile shipped in ``density_db/instruments/`` (``"csst"``),
        or the path of a user's own TOML file (anything that is a
        :class:`~pathlib.Path`, contains a path separator or ends in ``.toml``).

    Returns
    -------
    InstrumentProfile

    Raises
    ------
    ConfigurationError
        When the file cannot be found or read, is not TOML, or has a missing,
        unknown or mistyped field; the message names the file and the field.
    """
    source = _profile_source(name_or_path)
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigurationError(f"cannot read instrument profile {source}: {error}") from error
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigurationError(f"instrument profile {source} is not valid TOML: {error}") from error
    profile = _profile_from_toml(data, str(source))
    logger.debug("loaded instrument profile %s from %s", profile.name, source)
    return profile


def _profile_source(name_or_path: str | Path) -> Path | Traversable:
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in text or "\\" in text or text.endswith(".toml"):
        return Path(text).expanduser()
    shipped = resources.files("density_db") / "instruments"
    source = shipped / f"{text}.toml"
    if not source.is_file():
        names = sorted(item.name.removesuffix(".toml") for item in shipped.iterdir() if item.name.endswith(".toml"))
        raise ConfigurationError(
            f"no instrument profile named {text!r}; shipped profiles: {', '.join(names)} "
            "(or pass the path of your own TOML file)"
        )
    return source


def _profile_from_toml(data: dict[str, Any], source: str) -> InstrumentProfile:
    _check_table(data, _TOP_SCHEMA, "the top level", source)
    keywords = data["keywords"]
    hdus = data["hdus"]
    _check_table(keywords, _KEYWORD_SCHEMA, "[keywords]", source)
    _check_table(hdus, _HDU_SCHEMA, "[hdus]", source)
    if "date_obs" not in keywords and "mjd_obs" not in keywords:
        raise ConfigurationError(f"{source}: [keywords] needs date_obs or mjd_obs (or both)")
    band_aliases = _band_aliases(data["bands"], source)
    return InstrumentProfile(
        name=data["name"],
        exposure_id_keyword=keywords["exposure_id"].upper(),
        detector_keyword=keywords["detector"].upper(),
        band_keyword=keywords["band"].upper(),
        date_keyword=_upper_or_none(keywords.get("date_obs")),
        mjd_keyword=_upper_or_none(keywords.get("mjd_obs")),
        exposure_time_keyword=_upper_or_none(keywords.get("exposure_time")),
        pointing_ra_keywords=tuple(key.upper() for key in keywords.get("pointing_ra", [])),
        pointing_dec_keywords=tuple(key.upper() for key in keywords.get("pointing_dec", [])),
        science_extnames=tuple(name.upper() for name in hdus["science"]),
        data_quality_extnames=tuple(name.upper() for name in hdus.get("data_quality", [])),
        band_aliases=MappingProxyType(band_aliases),
        detector_bands=MappingProxyType(_detector_bands(data.get("detectors", {}), band_aliases, source)),
        source=source,
        calibration=_calibration(data.get("calibration", {}), band_aliases, source),
    )


def _check_table(table: dict[str, Any], schema: dict[str, tuple[bool, str]], where: str, source: str) -> None:
    unknown = sorted(set(table) - set(schema))
    if unknown:
        raise ConfigurationError(f"{source}: unknown key {unknown[0]!r} in {where}; accepted keys: {', '.join(schema)}")
    for key, (required, kind) in schema.items():
        if key not in table:
            if required:
                raise ConfigurationError(f"{source}: missing key {key!r} in {where}")
        elif not _is_kind(table[key], kind):
            raise ConfigurationError(f"{source}: key {key!r} in {where} must be {kind}, got {table[key]!r}")


def _is_kind(value: Any, kind: str) -> bool:
    if kind == _TABLE:
        return isinstance(value, dict)
    if kind == _NUMBER:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == _TEXTS:
        return isinstance(value, list) and all(_is_kind(item, _TEXT) for item in value)
    return isinstance(value, str) and bool(value.strip())


def _upper_or_none(value: str | None) -> str | None:
    return None if value is None else value.upper()


def _band_aliases(bands: dict[str, Any], source: str) -> dict[str, tuple[str, ...]]:
    if not bands:
        raise ConfigurationError(f"{source}: [bands] must list at least one band")
    owner: dict[str, str] = {}
    aliases: dict[str, tuple[str, ...]] = {}
    for band, spellings in bands.items():
        if not _is_kind(spellings, _TEXTS):
            raise ConfigurationError(f"{source}: band {band!r} in [bands] must be {_TEXTS}, got {spellings!r}")
        aliases[band] = tuple(spellings)
        # Matching is case-insensitive, so two bands must never share a spelling.
        for spelling in {band.lower(), *(s.lower() for s in spellings)}:
            if owner.setdefault(spelling, band) != band:
                raise ConfigurationError(
                    f"{source}: spelling {spelling!r} in [bands] belongs to both {owner[spelling]!r} and {band!r}"
                )
    return aliases


def _detector_bands(detectors: dict[str, Any], band_aliases: dict[str, tuple[str, ...]], source: str) -> dict[int, str]:
    detector_bands = {}
    for detector, band in detectors.items():
        if not detector.isdigit():
            raise ConfigurationError(f"{source}: detector {detector!r} in [detectors] must be an integer")
        if band not in band_aliases:
            raise ConfigurationError(
                f"{source}: detector {detector} in [detectors] has band {band!r}, "
                f"which is not a canonical band of [bands] ({', '.join(band_aliases)})"
            )
        detector_bands[int(detector)] = band
    return detector_bands


def _calibration(table: dict[str, Any], band_aliases: dict[str, tuple[str, ...]], source: str) -> CalibrationSettings:
    _check_table(table, _CALIBRATION_SCHEMA, "[calibration]", source)
    band_values = {}
    for band, values in table.get("bands", {}).items():
        if band not in band_aliases:
            raise ConfigurationError(
                f"{source}: band {band!r} in [calibration.bands] is not a canonical band of [bands] "
                f"({', '.join(band_aliases)})"
            )
        if not isinstance(values, dict):
            raise ConfigurationError(f"{source}: [calibration.bands] {band} must be a table, got {values!r}")
        _check_table(values, _BAND_CALIBRATION_SCHEMA, f"[calibration.bands] {band}", source)
        band_values[band] = BandCalibration(values.get("zero_point"), values.get("psf_fwhm"))
    saturated_bits = table.get("saturated_bits", 0)
    if saturated_bits != int(saturated_bits) or saturated_bits < 0:
        raise ConfigurationError(
            f"{source}: saturated_bits in [calibration] must be a bit mask (>= 0), got {saturated_bits!r}"
        )
    return CalibrationSettings(
        zero_point_keyword=_upper_or_none(table.get("zero_point")),
        psf_fwhm_keyword=_upper_or_none(table.get("psf_fwhm")),
        band_values=MappingProxyType(band_values),
        moffat_beta=table.get("moffat_beta"),
        saturated_bits=int(saturated_bits),
    )

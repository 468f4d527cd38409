"""Frame metadata from FITS files, read from the headers only.

A *frame* is one detector image: a 2-D image HDU of a single-HDU or
multi-extension FITS file (plain, gzip-compressed or tile-compressed).  This
module finds the input files (:func:`discover_inputs`), then the science and
data-quality HDUs of each file and what their headers say about the frame
(:func:`read_frame_headers`), following the input contract (docs/ingest.md).
Pixel data is never read here.  Bad input never raises: it becomes an
:class:`InputFailure` whose message says what to fix.
"""

import contextlib
import datetime
import glob
import gzip
import itertools
import logging
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS, FITSFixedWarning

from density_db import sky
from density_db.errors import ConfigurationError, InputError
from density_db.instrument import InstrumentProfile

logger = logging.getLogger(__name__)

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fits.fz")
"""File name endings searched for in directories (case-insensitive)."""

_GZIP_MAGIC = b"\x1f\x8b"
# Messages astropy warns with (instead of raising) when a file ends early.
_TRUNCATION_HINTS = ("truncated", "Error validating header")
# HDU names astropy makes up for HDUs without EXTNAME.
_DEFAULT_HDU_NAMES = {"", "PRIMARY", "COMPRESSED_IMAGE"}


@dataclass(frozen=True)
class FrameHeader:
    """What the headers of a file say about one detector image.

    Attributes
    ----------
    path : str
        Absolute path of the file.
    hdu_index : int
        Index of the science HDU in the file (0 = primary).
    dq_hdu_index : int or None
        Index of its data-quality HDU (non-zero = bad pixel), if any.
    instrument : str
        Name of the instrument profile.
    exposure_id : str
        Exposure id; integer keyword values are rendered as ``str(int)``.
    detector : int
        Detector number.
    band : str
        Canonical band of the profile.
    mjd : float
        Observation start, MJD (UTC).
    obs_time : datetime.datetime
        Observation start, timezone-aware UTC.
    exposure_time : float or None
        Exposure time in seconds.
    pointing_ra, pointing_dec : float or None
        Telescope pointing in degrees.
    shape : tuple of int
        Image shape ``(ny, nx)``.
    centre_ra, centre_dec : float
        ICRS position of the image centre, pixel ``((nx-1)/2, (ny-1)/2)`` (0-based).
    corner_ra, corner_dec : tuple of float
        ICRS positions of the outer pixel corners (-0.5, -0.5), (nx-0.5, -0.5),
        (nx-0.5, ny-0.5), (-0.5, ny-0.5), in that order.
    hpx : int
        NESTED HEALPix index of the centre at order 29.
    footprint : tuple of (int, int)
        Depth-29 ``[lo, hi)`` ranges of the MOC of the corners' polygon.
    footprint_depth : int
        Depth at which the footprint was rasterised.
    radius_deg : float
        Largest centre-to-corner separation in degrees.
    valid_fraction : float or None
        Fraction of valid pixels; unknown from headers alone.
    zero_point, psf_fwhm_px : float or None
        The image's zero point (AB mag of 1 ADU/s) and PSF FWHM (pixels), when
        its header has the profile's ``[calibration]`` keywords.
    """

    path: str
    hdu_index: int
    dq_hdu_index: int | None
    instrument: str
    exposure_id: str
    detector: int
    band: str
    mjd: float
    obs_time: datetime.datetime
    exposure_time: float | None
    pointing_ra: float | None
    pointing_dec: float | None
    shape: tuple[int, int]
    centre_ra: float
    centre_dec: float
    corner_ra: tuple[float, float, float, float]
    corner_dec: tuple[float, float, float, float]
    hpx: int
    footprint: tuple[tuple[int, int], ...]
    footprint_depth: int
    radius_deg: float
    valid_fraction: float | None = None
    zero_point: float | None = None
    psf_fwhm_px: float | None = None


@dataclass(frozen=True)
class InputFailure:
    """An input that cannot be used, as stored in the ``failure`` table.

    Attributes
    ----------
    path : str
        Absolute path of the file.
    hdu_index : int
        The HDU at fault; -1 means the file as a whole.
    error_kind : str
        Short kind: ``not_found``, ``not_fits``, ``truncated``, ``unreadable``,
        ``no_science_hdu``, ``not_2d``, ``no_wcs``, ``missing_keyword``,
        ``bad_keyword`` or ``unknown_band``.
    message : str
        What is wrong and where (file, HDU, keyword and value).
    """

    path: str
    hdu_index: int
    error_kind: str
    message: str


class _QualityKey(NamedTuple):
    """What pairs a data-quality HDU with its science HDU."""

    shape: tuple[int, int] | None
    extver: Any  # FITS: 1 when absent
    detector: int | None


def read_frame_headers(path: str | Path, profile: InstrumentProfile) -> list[FrameHeader | InputFailure]:
    """Describe every detector image of a FITS file from its headers.

    Parameters
    ----------
    path : str or Path
        A FITS file: single image or multi-extension, plain, gzip-compressed
        or tile-compressed (``.fits.fz``).  The name is never used to guess
        the content.
    profile : InstrumentProfile
        Which keywords and HDUs to read.

    Returns
    -------
    list of FrameHeader or InputFailure
        One entry per science HDU, in file order; or a single failure with
        ``hdu_index = -1`` when the file as a whole cannot be used.
    """
    path = Path(os.path.abspath(path))
    try:
        return _read_file(path, profile)
    except InputError as error:
        return [InputFailure(str(path), -1, error.kind, str(error))]
    except Exception as error:  # noqa: BLE001 -- one odd file must never stop an ingest run
        logger.debug("cannot read %s", path, exc_info=True)
        return [InputFailure(str(path), -1, "unreadable", f"{path} cannot be read: {type(error).__name__}: {error}")]


def discover_inputs(paths: Iterable[str | Path], *, from_file: str | Path | None = None) -> Iterator[Path]:
    """Stream the input files named by arguments and by a list file.

    Parameters
    ----------
    paths : iterable of str or Path
        Each is a file, a directory (searched recursively, in sorted order,
        for names ending in one of :data:`FITS_SUFFIXES`, any case) or a glob
        pattern (``**`` matches any number of directories).
    from_file : str or Path, optional
        A text file with one path (or directory, or pattern) per line; blank
        lines and lines starting with ``#`` are skipped; ``"-"`` reads
        standard input.

    Yields
    ------
    Path
        Absolute paths, each file once (compared after resolving links).
        Paths that do not exist are yielded too, so that the caller records
        them as ``not_found`` failures.

    Raises
    ------
    ConfigurationError
        If ``from_file`` cannot be read.
    """
    # A set of every path seen is the price of yielding each file once; ~100 bytes a path.
    seen: set[Path] = set()
    listed = _listed_paths(from_file) if from_file is not None else ()
    for argument in itertools.chain(paths, listed):
        for path in _expand(str(argument)):
            resolved = path.resolve()
            if resolved not in seen:
                seen.add(resolved)
                yield Path(os.path.abspath(path))


def _check_signature(path: Path) -> bool:
    """Fail unless the file starts like FITS; return whether it is gzip-compressed."""
    if not path.exists():
        raise InputError("not_found", f"{path} does not exist")
    if not path.is_file():
        raise InputError("unreadable", f"{path} is not a regular file")
    with path.open("rb") as stream:
        gzipped = stream.read(2) == _GZIP_MAGIC
    try:
        with gzip.open(path, "rb") if gzipped else path.open("rb") as stream:
            start = stream.read(80)
    except EOFError as error:
        raise InputError("truncated", f"{path} is a truncated gzip file ({error}); copy it again") from error
    except OSError as error:
        raise InputError("unreadable", f"{path} cannot be read: {error}") from error
    if not start.startswith(b"SIMPLE  ="):
        what = "is empty" if not start else "does not start with a SIMPLE card"
        raise InputError("not_fits", f"{path} is not a FITS file: it {what}")
    return gzipped


def _read_file(path: Path, profile: InstrumentProfile) -> list[FrameHeader | InputFailure]:
    gzipped = _check_signature(path)
    # astropy warns, rather than raises, about most of the damage it meets in headers.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with fits.open(path, memmap=False, lazy_load_hdus=True) as hdu_list:
                hdus = list(hdu_list)  # every header, no data
                _raise_if_warned_truncated(path, caught)
                _check_length(path, hdus, gzipped)
                return _read_frames(path, hdus, profile)
        except OSError as error:
            _raise_if_warned_truncated(path, caught)
            raise InputError("unreadable", f"{path} cannot be read as FITS: {error}") from error


def _raise_if_warned_truncated(path: Path, caught: list[warnings.WarningMessage]) -> None:
    for warning in caught:
        message = " ".join(str(warning.message).split())
        if any(hint in message for hint in _TRUNCATION_HINTS):
            raise InputError("truncated", f"{path} is truncated or corrupt ({message}); copy it again")


def _check_length(path: Path, hdus: list[Any], gzipped: bool) -> None:
    """Fail unless the file holds all the data its headers announce."""
    announced = max(hdu.fileinfo()["datLoc"] + hdu.fileinfo()["datSpan"] for hdu in hdus)
    if gzipped:
        # astropy stops listing HDUs quietly where a gzip stream ends early.  The gzip trailer
        # holds the uncompressed length (mod 2**32): a cut-off file ends in compressed data
        # instead, which almost never matches.  (Multi-member gzip files would fail this check.)
        with path.open("rb") as stream:
            stream.seek(-4, os.SEEK_END)
            length = int.from_bytes(stream.read(4), "little")
        if length != announced % 2**32:
            raise InputError(
                "truncated",
                f"{path} is truncated or corrupt: its gzip stream does not end where its "
                f"FITS headers do ({announced} bytes); copy it again",
            )
    elif (length := path.stat().st_size) < announced:
        raise InputError(
            "truncated",
            f"{path} is truncated: it has {length} bytes but its headers announce {announced}; copy it again",
        )


def _read_frames(path: Path, hdus: list[Any], profile: InstrumentProfile) -> list[FrameHeader | InputFailure]:
    named = any(_extname(hdu) not in _DEFAULT_HDU_NAMES for hdu in hdus)
    if named:
        science = [index for index, hdu in enumerate(hdus) if _extname(hdu) in profile.science_extnames]
    else:
        science = [
            index
            for index, hdu in enumerate(hdus)
            if hdu.is_image and hdu.header.get("NAXIS") == 2 and hdu.header.get("BITPIX", 0) < 0
        ]
    if not science:
        if named:
            found = ", ".join(sorted({_extname(hdu) for hdu in hdus} - _DEFAULT_HDU_NAMES))
            reason = (
                f"no HDU has EXTNAME {' or '.join(profile.science_extnames)} (found {found}); "
                "list science EXTNAMEs under [hdus] in the instrument profile"
            )
        else:
            reason = f"none of its {len(hdus)} HDUs is a 2-D floating-point image"
        raise InputError("no_science_hdu", f"{path} has no science HDU: {reason}")
    quality = {
        index: _QualityKey(
            _shape(hdu), hdu.header.get("EXTVER", 1), _detector_or_none(hdu.header.get(profile.detector_keyword))
        )
        for index, hdu in enumerate(hdus)
        if _extname(hdu) in profile.data_quality_extnames
    }
    frames: list[FrameHeader | InputFailure] = []
    for index in science:
        try:
            frames.append(_read_frame(path, hdus, index, quality, profile))
        except InputError as error:
            frames.append(InputFailure(str(path), index, error.kind, str(error)))
    return frames


def _read_frame(
    path: Path,
    hdus: list[Any],
    index: int,
    quality: dict[int, _QualityKey],
    profile: InstrumentProfile,
) -> FrameHeader:
    header = hdus[index].header
    where = f"{path} HDU {index}"
    shape = _shape(hdus[index])
    if shape is None:
        raise InputError(
            "not_2d", f"{where} ({_extname(hdus[index])}) is not a 2-D image (NAXIS = {header.get('NAXIS')})"
        )
    headers = (header,) if index == 0 else (header, hdus[0].header)
    exposure_value = _required(headers, profile.exposure_id_keyword, where)
    exposure_id = _exposure_id(exposure_value, profile.exposure_id_keyword, where)
    detector = _detector(_required(headers, profile.detector_keyword, where), profile.detector_keyword, where)
    band_value = _required(headers, profile.band_keyword, where)
    try:
        band = profile.canonical_band(band_value)
    except InputError as error:
        raise InputError(error.kind, f"{where}: {profile.band_keyword}: {error}") from error
    if profile.detector_bands.get(detector, band) != band:
        # The keyword wins: filter wheels and test set-ups do not always follow the focal-plane map.
        logger.debug("%s: band %s, detector %d usually has %s", where, band, detector, profile.detector_bands[detector])
    time = _observation_time(headers, profile, where)
    centre_ra, centre_dec, corner_ra, corner_dec = _sky_positions(header, shape, where)
    try:
        footprint = sky.footprint_ranges(corner_ra, corner_dec, depth=sky.FOOTPRINT_DEPTH)
    except Exception as error:  # noqa: BLE001 -- mocpy rejects degenerate polygons
        raise InputError("no_wcs", f"{where}: the WCS corners do not form a sky polygon ({error})") from error
    return FrameHeader(
        path=str(path),
        hdu_index=index,
        dq_hdu_index=_match_quality(quality, _QualityKey(shape, header.get("EXTVER", 1), detector), profile, where),
        instrument=profile.name,
        exposure_id=exposure_id,
        detector=detector,
        band=band,
        mjd=float(time.mjd),
        obs_time=time.to_datetime(timezone=datetime.UTC, leap_second_strict="silent"),
        exposure_time=_optional_number(headers, (profile.exposure_time_keyword,), where),
        pointing_ra=_optional_number(headers, profile.pointing_ra_keywords, where),
        pointing_dec=_optional_number(headers, profile.pointing_dec_keywords, where),
        shape=shape,
        centre_ra=centre_ra,
        centre_dec=centre_dec,
        corner_ra=corner_ra,
        corner_dec=corner_dec,
        hpx=sky.hpx29(centre_ra, centre_dec),
        footprint=tuple((int(lo), int(hi)) for lo, hi in footprint),
        footprint_depth=sky.FOOTPRINT_DEPTH,
        radius_deg=sky.circumradius_deg(centre_ra, centre_dec, corner_ra, corner_dec),
        zero_point=_optional_number(headers, (profile.calibration.zero_point_keyword,), where),
        psf_fwhm_px=_optional_number(headers, (profile.calibration.psf_fwhm_keyword,), where),
    )


def _extname(hdu: Any) -> str:
    return str(hdu.header.get("EXTNAME", "")).strip().upper()


def _shape(hdu: Any) -> tuple[int, int] | None:
    header = hdu.header
    if not hdu.is_image or header.get("NAXIS") != 2:
        return None
    return int(header["NAXIS2"]), int(header["NAXIS1"])


def _lookup(headers: tuple[fits.Header, ...], keyword: str) -> Any:
    """First non-blank value of a keyword, image header first, then the primary header."""
    for header in headers:
        value = header.get(keyword)
        if isinstance(value, str):
            value = value.strip() or None
        if value is not None and not isinstance(value, fits.card.Undefined):
            return value
    return None


def _required(headers: tuple[fits.Header, ...], keyword: str, where: str) -> Any:
    value = _lookup(headers, keyword)
    if value is None:
        looked = "the image header" + (" and the primary header" if len(headers) > 1 else "")
        raise InputError("missing_keyword", f"{where}: keyword {keyword} is missing or empty in {looked}")
    return value


def _bad_keyword(where: str, keyword: str, value: Any, expected: str) -> InputError:
    return InputError("bad_keyword", f"{where}: {keyword} = {value!r} is not {expected}")


def _exposure_id(value: Any, keyword: str, where: str) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise _bad_keyword(where, keyword, value, "an exposure id (a string or an integer)")


def _detector(value: Any, keyword: str, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value)  # zero-padded strings such as '06'
    raise _bad_keyword(where, keyword, value, "a detector number (an integer or digits such as '06')")


def _observation_time(headers: tuple[fits.Header, ...], profile: InstrumentProfile, where: str) -> Time:
    if profile.date_keyword and (value := _lookup(headers, profile.date_keyword)) is not None:
        try:
            # 'Z' is a common way of saying UTC that astropy does not parse.
            return Time(str(value).strip().removesuffix("Z"), scale="utc")
        except ValueError as error:
            raise _bad_keyword(where, profile.date_keyword, value, "an ISO 8601 date and time") from error
    if profile.mjd_keyword and (value := _lookup(headers, profile.mjd_keyword)) is not None:
        if not _is_number(value):
            raise _bad_keyword(where, profile.mjd_keyword, value, "a modified Julian date")
        return Time(float(value), format="mjd", scale="utc")
    keywords = " or ".join(key for key in (profile.date_keyword, profile.mjd_keyword) if key)
    raise InputError("missing_keyword", f"{where}: no observation time: keyword {keywords} is missing")


def _is_number(value: Any) -> bool:
    try:
        return not isinstance(value, bool) and bool(np.isfinite(float(value)))
    except (TypeError, ValueError):
        return False


def _optional_number(headers: tuple[fits.Header, ...], keywords: Iterable[str | None], where: str) -> float | None:
    """Value of the first keyword present; an unusable optional value is logged, not fatal."""
    for keyword in filter(None, keywords):
        value = _lookup(headers, keyword)
        if value is None:
            continue
        if _is_number(value):
            return float(value)
        logger.warning("%s: ignoring %s = %r, which is not a number", where, keyword, value)
        return None
    return None


def _sky_positions(
    header: fits.Header, shape: tuple[int, int], where: str
) -> tuple[float, float, tuple[float, ...], tuple[float, ...]]:
    """ICRS centre and outer corners of the image through its celestial WCS."""
    ny, nx = shape
    x = np.array([(nx - 1) / 2, -0.5, nx - 0.5, nx - 0.5, -0.5])
    y = np.array([(ny - 1) / 2, -0.5, -0.5, ny - 0.5, ny - 0.5])
    try:
        with warnings.catch_warnings():
            # astropy's notes on fixing non-standard cards are noise at a million files.
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header, naxis=2)
        if not wcs.has_celestial:
            ctypes = "/".join(repr(ctype) for ctype in wcs.wcs.ctype)
            raise InputError("no_wcs", f"{where} has no celestial WCS (CTYPE1/CTYPE2 = {ctypes})")
        # pixel_to_world goes through all_pix2world (SIP, TPV...) and converts FK5 & co. to ICRS.
        positions = wcs.pixel_to_world(x, y).icrs
        ra, dec = positions.ra.deg, positions.dec.deg
    except InputError:
        raise
    except Exception as error:  # noqa: BLE001 -- astropy raises many kinds for broken WCS cards
        reason = " ".join(str(error).split())  # wcslib messages span lines
        message = f"{where}: its WCS cannot be evaluated ({type(error).__name__}: {reason})"
        raise InputError("no_wcs", message) from error
    if not (np.all(np.isfinite(ra)) and np.all(np.isfinite(dec))):
        raise InputError("no_wcs", f"{where}: its WCS gives no sky position for the image centre or corners")
    return float(ra[0]), float(dec[0]), tuple(map(float, ra[1:])), tuple(map(float, dec[1:]))


def _match_quality(
    quality: dict[int, _QualityKey], science: _QualityKey, profile: InstrumentProfile, where: str
) -> int | None:
    """The data-quality HDU of a science HDU: same shape and same EXTVER, else same shape and detector."""
    for field in ("extver", "detector"):
        matches = [
            index
            for index, key in quality.items()
            if key.shape == science.shape and getattr(key, field) == getattr(science, field)
        ]
        if len(matches) == 1:
            return matches[0]
    if quality:
        logger.warning(
            "%s: no data-quality HDU matches it by EXTVER or %s; only non-finite pixels will be masked",
            where,
            profile.detector_keyword,
        )
    return None


def _detector_or_none(value: Any) -> int | None:
    try:
        return _detector(value, "", "")
    except InputError:
        return None


def _expand(argument: str) -> Iterator[Path]:
    path = Path(argument).expanduser()
    if path.is_dir():
        yield from _walk(path)
    elif path.exists() or not any(character in argument for character in "*?["):
        yield path
    else:
        matched = False
        for match in map(Path, glob.iglob(os.path.expanduser(argument), recursive=True)):
            matched = True
            yield from _walk(match) if match.is_dir() else (match,)
        if not matched:
            logger.warning("pattern %s matches no file", argument)


def _walk(directory: Path) -> Iterator[Path]:
    for root, dirnames, filenames in os.walk(directory, onerror=_log_walk_error):
        dirnames.sort()  # os.walk descends in this list's order
        for name in sorted(filenames):
            if name.lower().endswith(FITS_SUFFIXES):
                yield Path(root, name)


def _log_walk_error(error: OSError) -> None:
    logger.warning("cannot list %s: %s", error.filename, error.strerror)


def _listed_paths(from_file: str | Path) -> Iterator[str]:
    try:
        opened = contextlib.nullcontext(sys.stdin) if str(from_file) == "-" else open(from_file, encoding="utf-8")
    except OSError as error:
        raise ConfigurationError(f"cannot read the list of inputs {from_file}: {error}") from error
    with opened as lines:
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                yield line

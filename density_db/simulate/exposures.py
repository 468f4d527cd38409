"""Exposures mode: CSST-like detector images on disk, with truth catalogs and a manifest.

For each exposure (a pointing, a position angle and a start time) and each
chosen imaging detector, :func:`simulate_exposures` draws a truth catalog for
the detector's sky area, renders the image and writes

* ``DIR/<OBSID>/CSST_MSC_<OBSID>_<CHIPID>.fits`` (or ``.fits.fz``, tile-compressed):
  a primary header with the exposure's keywords (``OBSID``, ``DATE-OBS``,
  ``EXPTIME``, ``RA_PNT0``/``DEC_PNT0``) and the ``SCI`` image and ``DQ`` mask
  HDUs of the detector (``CHIPID``, ``FILTER``, TAN WCS at its focal-plane
  slot) -- the ``csst`` input contract;
* ``DIR/<OBSID>/CSST_MSC_<OBSID>_<CHIPID>_truth.ecsv``: every source on the
  image (ra, dec, x, y, mag, obj_type, ...) with the labels in its header
  (ECSV rather than a FITS table, so that ``density-db ingest DIR`` finds
  only the images);
* ``DIR/manifest.ecsv``: one row per detector image with its labels; its
  header records the label rule (:mod:`density_db.labels`).

Every detector gets its own random stream, keyed by (seed, exposure index,
detector), so the output for a seed does not depend on the number of workers
or on which detectors are asked for.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table, vstack
from astropy.wcs import WCS

from density_db.errors import ConfigurationError
from density_db.focal_plane import DETECTOR_SHAPE, detector_wcs_header
from density_db.instrument import load_profile
from density_db.labels import LABEL_RULE, label_rule, recorded_label_rule
from density_db.simulate.catalog import draw_catalog
from density_db.simulate.fields import Field
from density_db.simulate.photometry import EXPOSURE_SECONDS, FULL_WELL_E, GAIN, image_calibration
from density_db.simulate.render import render_detector

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.ecsv"
_EPOCH = datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC)
_DITHER_DEG = 0.5  # pointings around a given position spread by about half a field


@dataclass(frozen=True)
class Pointing:
    """One exposure to simulate."""

    index: int
    exposure_id: str
    ra: float
    dec: float
    position_angle_deg: float
    start: datetime.datetime


@dataclass(frozen=True)
class DetectorJob:
    """Everything a worker needs to simulate one detector image (small and picklable)."""

    pointing: Pointing
    detector: int
    band: str
    shape: tuple[int, int]
    seed: int
    field: Field | None
    galaxies: bool
    out: Path
    compress: bool
    rule: str = LABEL_RULE


@dataclass(frozen=True)
class ManifestRow:
    """One simulated detector image and its labels."""

    exposure_id: str
    detector: int
    band: str
    path: str
    truth_path: str
    ra: float
    dec: float
    star_count: int
    counting_limit: float
    counted_star_count: int
    bright_star_count: int
    density_class: int
    galaxy_count: int
    field: str
    seed: int


def imaging_detectors() -> dict[int, str]:
    """The 18 imaging detectors of the ``csst`` profile and their bands, by id."""
    return dict(sorted(load_profile("csst").detector_bands.items()))


def plan_pointings(
    count: int, *, seed: int, field: Field | None = None, ra: float | None = None, dec: float | None = None
) -> list[Pointing]:
    """Pointings uniform in a named field's RA/Dec box, or dithered around (ra, dec).

    Exposure ids are ``9SSSSIIIIII`` (seed modulo 10^4, then the exposure
    index), so two simulations with different seeds can share a catalog.
    """
    if (field is None) == (ra is None or dec is None):
        raise ValueError("give either a named field or both ra and dec")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xE905]))
    pointings = []
    for index in range(count):
        if field is not None:
            pointing_ra = rng.uniform(*field.ra_range)
            pointing_dec = np.degrees(np.arcsin(rng.uniform(*np.sin(np.radians(field.dec_range)))))
        else:
            offset_ra, offset_dec = rng.uniform(-_DITHER_DEG, _DITHER_DEG, size=2)
            pointing_dec = float(np.clip(dec + offset_dec, -89.0, 89.0))
            pointing_ra = (ra + offset_ra / max(np.cos(np.radians(pointing_dec)), 0.02)) % 360.0
        pointings.append(
            Pointing(
                index=index,
                exposure_id=f"9{seed % 10_000:04d}{index:06d}",
                ra=float(pointing_ra),
                dec=float(pointing_dec),
                position_angle_deg=float(rng.uniform(0.0, 360.0)),
                start=_EPOCH + datetime.timedelta(days=seed % 3650, minutes=3 * index),
            )
        )
    return pointings


def simulate_exposures(
    out: Path,
    pointings: Sequence[Pointing],
    *,
    detectors: Sequence[int] | None = None,
    shape: tuple[int, int] = DETECTOR_SHAPE,
    seed: int = 0,
    field: Field | None = None,
    galaxies: bool = True,
    compress: bool = False,
    workers: int = 1,
    rule: str = LABEL_RULE,
    progress: Callable[[ManifestRow], None] | None = None,
) -> list[ManifestRow]:
    """Simulate and write every (pointing, detector) image; return and write the manifest rows.

    Parameters
    ----------
    detectors
        Imaging detector ids (default: all 18).
    shape
        (ny, nx) of each image.  Smaller than the real detector makes a
        cut-out: the same 0.074" pixels on a smaller patch of sky around the
        detector's centre, so an image holds fewer sources.
    workers
        Processes rendering in parallel (the output does not depend on it).
    rule
        The label rule of the manifest and truth catalogs.

    Raises
    ------
    ConfigurationError
        If a detector is not an imaging one, or ``out`` already holds a
        manifest made under another label rule.
    """
    label_rule(rule)
    bands = imaging_detectors()
    chosen = list(bands) if detectors is None else list(detectors)
    unknown = sorted(set(chosen) - set(bands))
    if unknown:
        raise ConfigurationError(f"not imaging detectors: {unknown}; choose among {sorted(bands)}")
    _check_manifest_rule(out / MANIFEST_NAME, rule)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [
        DetectorJob(pointing, detector, bands[detector], tuple(shape), seed, field, galaxies, out, compress, rule)
        for pointing in pointings
        for detector in chosen
    ]
    rows: list[ManifestRow] = []
    with ProcessPoolExecutor(max_workers=workers) if workers > 1 else contextlib.nullcontext() as pool:
        for row in (pool.map if pool is not None else map)(simulate_detector, jobs):
            rows.append(row)
            if progress is not None:
                progress(row)
    write_manifest(out / MANIFEST_NAME, rows, rule)
    return rows


def _check_manifest_rule(path: Path, rule: str) -> None:
    """Refuse to add images labelled under ``rule`` to a manifest made under another."""
    if path.exists():
        earlier = recorded_label_rule(Table.read(path, format="ascii.ecsv").meta)
        if earlier != rule:
            raise ConfigurationError(
                f"{path} holds labels made under the {earlier!r} rule, not {rule!r}: simulate into a new directory"
            )


def simulate_detector(job: DetectorJob) -> ManifestRow:
    """Draw, render and write one detector image and its truth catalog."""
    pointing = job.pointing
    rng = np.random.default_rng(np.random.SeedSequence([job.seed, pointing.index, job.detector]))
    wcs_header = detector_wcs_header(
        job.detector, ra=pointing.ra, dec=pointing.dec, position_angle_deg=pointing.position_angle_deg, shape=job.shape
    )
    catalog = draw_catalog(
        WCS(wcs_header), job.shape, job.band, rng, field=job.field, include_galaxies=job.galaxies, rule=job.rule
    )
    image = render_detector(catalog, job.shape, job.band, rng)
    directory = job.out / pointing.exposure_id
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"CSST_MSC_{pointing.exposure_id}_{job.detector:02d}"
    path = directory / f"{stem}.fits{'.fz' if job.compress else ''}"
    truth_path = directory / f"{stem}_truth.ecsv"  # not .fits: ingest of the directory must see images only
    _write_image(path, job, wcs_header, image.science, image.quality)
    truth = catalog.to_table()
    truth.meta.update({"OBSID": pointing.exposure_id, "CHIPID": job.detector, "SIMSEED": job.seed})
    truth.write(truth_path, format="ascii.ecsv", overwrite=True)
    centre = WCS(wcs_header).pixel_to_world_values((job.shape[1] - 1) / 2, (job.shape[0] - 1) / 2)
    return ManifestRow(
        exposure_id=pointing.exposure_id,
        detector=job.detector,
        band=job.band,
        path=str(path),
        truth_path=str(truth_path),
        ra=float(centre[0]),
        dec=float(centre[1]),
        star_count=catalog.star_count,
        counting_limit=catalog.counting_limit,
        counted_star_count=catalog.counted_star_count,
        bright_star_count=catalog.bright_star_count,
        density_class=catalog.density_class,
        galaxy_count=int(np.count_nonzero(catalog.obj_type == "galaxy")),
        field=job.field.name if job.field is not None else "",
        seed=job.seed,
    )


def _write_image(
    path: Path, job: DetectorJob, wcs_header: fits.Header, science: np.ndarray, quality: np.ndarray
) -> None:
    pointing = job.pointing
    primary = fits.PrimaryHDU()
    primary.header["INSTRUME"] = ("CSST", "simulated by density-db")
    primary.header["OBSID"] = pointing.exposure_id
    primary.header["DATE-OBS"] = pointing.start.strftime("%Y-%m-%dT%H:%M:%S.%f")
    primary.header["EXPTIME"] = (EXPOSURE_SECONDS, "s")
    primary.header["RA_PNT0"] = (pointing.ra, "pointing RA, deg")
    primary.header["DEC_PNT0"] = (pointing.dec, "pointing Dec, deg")
    primary.header["SIMFIELD"] = job.field.name if job.field is not None else "position"
    primary.header["SIMSEED"] = job.seed
    science_header = wcs_header.copy()
    science_header["CHIPID"] = f"{job.detector:02d}"
    science_header["FILTER"] = job.band
    science_header["BUNIT"] = "ADU"
    science_header["GAIN"] = (GAIN, "e-/ADU")
    science_header["SATURATE"] = (FULL_WELL_E / GAIN, "ADU; saturated pixels are NaN, flagged in DQ")
    calibration = image_calibration(job.band)
    science_header["MAGZERO"] = (calibration.zero_point, "AB mag of a source giving 1 ADU/s")
    science_header["PSF_FWHM"] = (calibration.fwhm_px, f"PSF FWHM, pixels (Moffat, beta {calibration.moffat_beta:g})")
    science_header["EXTNAME"], science_header["EXTVER"] = "SCI", 1
    quality_header = fits.Header({"EXTNAME": "DQ", "EXTVER": 1, "CHIPID": f"{job.detector:02d}"})
    if job.compress:
        hdus = [primary, fits.CompImageHDU(science, science_header), fits.CompImageHDU(quality, quality_header)]
    else:
        hdus = [primary, fits.ImageHDU(science, science_header), fits.ImageHDU(quality, quality_header)]
    fits.HDUList(hdus).writeto(path, overwrite=True)


def write_manifest(path: Path, rows: Sequence[ManifestRow], rule: str = LABEL_RULE) -> None:
    """Write ``rows`` to the manifest, keeping rows of earlier runs for other images, and record the label rule."""
    table = Table(
        rows=[tuple(asdict(row).values()) for row in rows],
        names=list(ManifestRow.__dataclass_fields__),
        meta={"label_rule": rule, "label_rule_description": label_rule(rule).description},
    )
    if path.exists():
        earlier = Table.read(path, format="ascii.ecsv")
        replaced = {(str(e), int(d)) for e, d in zip(table["exposure_id"], table["detector"], strict=True)}
        keep = [
            (str(e), int(d)) not in replaced for e, d in zip(earlier["exposure_id"], earlier["detector"], strict=True)
        ]
        table = vstack([earlier[keep], table]) if any(keep) else table
    table.sort(["exposure_id", "detector"])
    table.write(path, format="ascii.ecsv", overwrite=True)

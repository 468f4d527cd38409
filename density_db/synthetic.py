"""Synthetic CSST-like exposure files with real headers and WCS, for the demo and benchmarks.

Each exposure is one multi-extension FITS file: a primary header with the
exposure's keywords, then for each of the 18 imaging detectors a ``SCI``
image (sky noise) and its ``DQ`` mask (one bad column), with the detector's
TAN WCS at its focal-plane slot.  Images default to 256 x 256 pixels that
span the real detector's 11.4' (header-level tests and the demo need the
geometry, not the pixels); the image simulator builds on the same layout.

``python -m density_db.synthetic --out DIR --exposures N`` writes N
exposures dithered around a position.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import numpy as np
from astropy.io import fits

from density_db.focal_plane import detector_wcs_header
from density_db.instrument import load_profile

EXPOSURE_SECONDS = 150.0


def write_exposure(
    path: Path,
    *,
    exposure_id: str,
    ra: float,
    dec: float,
    position_angle_deg: float = 0.0,
    shape: tuple[int, int] = (256, 256),
    compressed: bool = False,
    seed: int = 0,
    date_obs: datetime.datetime | None = None,
) -> Path:
    """Write one exposure (18 detectors, SCI + DQ each) to ``path`` and return it.

    ``compressed`` writes tile-compressed HDUs (give ``path`` a ``.fits.fz``
    suffix); a ``.gz`` suffix makes astropy gzip the file.
    """
    rng = np.random.default_rng(seed)
    date_obs = date_obs or datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC)
    primary = fits.PrimaryHDU()
    primary.header["INSTRUME"] = "CSST"
    primary.header["OBSID"] = exposure_id
    primary.header["DATE-OBS"] = date_obs.strftime("%Y-%m-%dT%H:%M:%S.%f")
    primary.header["EXPTIME"] = EXPOSURE_SECONDS
    primary.header["RA_PNT0"], primary.header["DEC_PNT0"] = ra % 360.0, dec
    hdus: list[fits.hdu.base.ExtensionHDU | fits.PrimaryHDU] = [primary]
    image_class = fits.CompImageHDU if compressed else fits.ImageHDU
    for version, (detector, band) in enumerate(sorted(load_profile("csst").detector_bands.items()), start=1):
        header = detector_wcs_header(detector, ra=ra, dec=dec, position_angle_deg=position_angle_deg, shape=shape)
        header["CHIPID"], header["FILTER"] = f"{detector:02d}", band
        science = rng.normal(200.0, 12.0, size=shape).astype(np.float32)
        quality = np.zeros(shape, dtype=np.int16)
        quality[:, rng.integers(shape[1])] = 1
        header["EXTNAME"], header["EXTVER"] = "SCI", version
        hdus.append(image_class(science, header))
        hdus.append(image_class(quality, fits.Header({"EXTNAME": "DQ", "EXTVER": version, "CHIPID": f"{detector:02d}"})))
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


def write_survey(
    out: Path, *, exposures: int, ra: float, dec: float, compressed: bool = False, seed: int = 0,
    shape: tuple[int, int] = (256, 256),
) -> list[Path]:
    """Write ``exposures`` exposures dithered by about half a field around (ra, dec)."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    suffix = ".fits.fz" if compressed else ".fits"
    start = datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC)
    paths = []
    for index in range(exposures):
        offset_ra, offset_dec = rng.uniform(-0.5, 0.5, size=2)
        paths.append(write_exposure(
            out / f"exposure_{index:05d}{suffix}",
            exposure_id=f"{10_100_000_000 + index}",
            ra=ra + offset_ra / np.cos(np.radians(dec)), dec=dec + offset_dec,
            position_angle_deg=float(rng.uniform(0, 360)), shape=shape, compressed=compressed,
            seed=seed + index, date_obs=start + datetime.timedelta(minutes=5 * index),
        ))
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="Directory to write the exposure files to.")
    parser.add_argument("--exposures", type=int, default=4)
    parser.add_argument("--ra", type=float, default=150.0)
    parser.add_argument("--dec", type=float, default=2.2)
    parser.add_argument("--compressed", action="store_true", help="Tile-compressed HDUs (.fits.fz).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = write_survey(args.out, exposures=args.exposures, ra=args.ra, dec=args.dec,
                         compressed=args.compressed, seed=args.seed)
    print(f"wrote {len(paths)} exposures ({18 * len(paths)} detector images) to {args.out}")


if __name__ == "__main__":
    main()

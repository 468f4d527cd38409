"""Small synthetic detector images for the tests, in every file layout of the ingest contract.

Images are 64 x 64 px with a TAN WCS whose pixel scale makes them span about
0.19 deg, the size of a CSST detector (11.4'), so geometry is realistic while
files stay a few kilobytes.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from astropy.io import fits

SHAPE = (64, 64)
PIXEL_SCALE_DEG = 0.19 / 64


def csst_keywords(
    *,
    obsid: str | int = "10100000001",
    chipid: int | str = 8,
    band: str = "g",
    date_obs: str | None = "2026-03-01T12:00:00",
    exptime: float | None = 150.0,
    **extra: Any,
) -> dict[str, Any]:
    """CSST keywords of one detector image; ``None`` leaves a keyword out."""
    keywords = {"OBSID": obsid, "CHIPID": chipid, "FILTER": band, "DATE-OBS": date_obs, "EXPTIME": exptime, **extra}
    return {key: value for key, value in keywords.items() if value is not None}


@dataclass
class FrameSpec:
    """One detector image: where it points, its shape and its header keywords."""

    ra: float = 150.0
    dec: float = 2.0
    rotation_deg: float = 0.0
    shape: tuple[int, ...] = SHAPE
    keywords: dict[str, Any] = field(default_factory=csst_keywords)
    wcs: bool = True


def wcs_header(
    ra: float,
    dec: float,
    *,
    rotation_deg: float = 0.0,
    shape: tuple[int, ...] = SHAPE,
    pixel_scale_deg: float = PIXEL_SCALE_DEG,
) -> fits.Header:
    """A TAN WCS centred on the image, north up and east left before rotation."""
    ny, nx = shape[-2:]
    cos, sin = np.cos(np.radians(rotation_deg)), np.sin(np.radians(rotation_deg))
    header = fits.Header()
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CRPIX1"], header["CRPIX2"] = (nx + 1) / 2, (ny + 1) / 2
    header["CRVAL1"], header["CRVAL2"] = ra, dec
    header["CD1_1"], header["CD1_2"] = -pixel_scale_deg * cos, pixel_scale_deg * sin
    header["CD2_1"], header["CD2_2"] = pixel_scale_deg * sin, pixel_scale_deg * cos
    header["RADESYS"] = "ICRS"
    return header


def image_hdu(
    spec: FrameSpec,
    rng: np.random.Generator,
    *,
    primary: bool = False,
    compressed: bool = False,
    extname: str | None = None,
    extver: int | None = None,
    data: np.ndarray | None = None,
) -> fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU:
    """An image HDU holding ``spec`` (or ``data``, e.g. a data-quality mask)."""
    if data is None:
        data = rng.normal(100.0, 10.0, size=spec.shape).astype(np.float32)
    header = fits.Header()
    if spec.wcs:
        header = wcs_header(spec.ra, spec.dec, rotation_deg=spec.rotation_deg, shape=spec.shape)
    header.update(spec.keywords)
    if extname is not None:
        header["EXTNAME"] = extname
    if extver is not None:
        header["EXTVER"] = extver
    if primary:
        return fits.PrimaryHDU(data, header)
    return fits.CompImageHDU(data, header) if compressed else fits.ImageHDU(data, header)


def write_single(path: Path, spec: FrameSpec | None = None, *, seed: int = 0) -> Path:
    """A file whose primary HDU is the image, without EXTNAME (``.gz`` names get gzip-compressed)."""
    image_hdu(spec or FrameSpec(), np.random.default_rng(seed), primary=True).writeto(path)
    return path


def write_mef(
    path: Path,
    specs: Sequence[FrameSpec],
    *,
    extname: str | None = "SCI",
    compressed: bool = False,
    dq: Literal["extver", "chipid"] | None = None,
    dq_extname: str = "DQ",
    primary_keywords: dict[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """A multi-extension file: an empty primary HDU then one image HDU per spec.

    With ``dq``, data-quality HDUs follow all science HDUs in reverse order, so
    that only their EXTVER (``"extver"``) or their CHIPID (``"chipid"``, no
    EXTVER anywhere) tells which science HDU each belongs to.
    """
    rng = np.random.default_rng(seed)
    hdus: list[Any] = [fits.PrimaryHDU(header=fits.Header(primary_keywords or {}))]
    use_extver = dq != "chipid" and extname is not None
    for version, spec in enumerate(specs, start=1):
        hdus.append(
            image_hdu(spec, rng, compressed=compressed, extname=extname, extver=version if use_extver else None)
        )
    if dq is not None:
        for version, spec in reversed(list(enumerate(specs, start=1))):
            mask = FrameSpec(keywords={"CHIPID": spec.keywords["CHIPID"]} if dq == "chipid" else {}, wcs=False)
            data = (rng.random(spec.shape) < 0.01).astype(np.int16)
            hdus.append(
                image_hdu(
                    mask,
                    rng,
                    compressed=compressed,
                    extname=dq_extname,
                    extver=version if dq == "extver" else None,
                    data=data,
                )
            )
    fits.HDUList(hdus).writeto(path)
    return path


def truncate(path: Path, length: int) -> Path:
    """Keep the first ``length`` bytes of a file (negative: drop that many from the end)."""
    data = path.read_bytes()
    path.write_bytes(data[:length])
    return path

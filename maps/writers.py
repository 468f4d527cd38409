"""Map files: healsparse ``.hsp``, healpy FITS and MOC FITS, named predictably.

Every file records where it came from: statistic, band, nside, run and models
(FITS header keys ``STATNAME``, ``BAND``, ``NSIDE``, ``RUN``, ``MODELS``,
``BUNIT``; the same keys in a healsparse map's metadata).  healpy FITS maps
are full-sky, NESTED, ``COORDSYS = 'C'``, float32 with ``UNSEEN`` where no
frame covers the pixel; a statistic of several fields (the class histogram,
the per-flag fractions) has one column per field.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import healpy
import numpy as np

from density_db.maps.aggregate import Statistic

logger = logging.getLogger(__name__)

ALL_BANDS = "all"
"""The band name of the maps that combine every band."""

HEALSPARSE_COVERAGE_NSIDE = 32


@dataclass(frozen=True)
class MapProvenance:
    """What a map was made from, written into every file.

    Attributes
    ----------
    band
        Canonical band name, or ``all``.
    nside
        HEALPix nside of the map.
    run
        ``latest`` (each frame's latest result) or the run id.
    models
        ``classifier+regressor`` names of the results used.
    """

    band: str
    nside: int
    run: str
    models: tuple[str, ...]

    def header(self, statistic: Statistic) -> list[tuple[str, str | int, str]]:
        """FITS header cards (key, value, comment) for one statistic."""
        return [
            _fitting_comment(*card)
            for card in (
                ("STATNAME", statistic.name, "density-db map statistic"),
                ("BAND", self.band, "band of the frames ('all': every band)"),
                ("NSIDE", self.nside, "HEALPix nside"),
                ("RUN", self.run, "results: 'latest' per frame, or this run id"),
                ("MODELS", ", ".join(self.models), "classifier+regressor of the results"),
                ("BUNIT", statistic.unit, "unit of the values"),
            )
        ]


def _fitting_comment(key: str, value: str | int, comment: str) -> tuple[str, str | int, str]:
    """The card with its comment dropped where it does not fit beside the value in 80 characters.

    astropy would cut such a comment and warn once per card and file: long
    model names made ``maps build`` print dozens of warnings.
    """
    from astropy.io import fits

    fits_beside = len(fits.Card(key, value).image.rstrip()) + len(" / ") + len(comment) <= fits.Card.length
    return key, value, comment if fits_beside else ""


def map_stem(band: str, statistic_name: str, nside: int) -> str:
    """File name without suffix: ``{band}_{statistic}_nside{nside}`` (band made file-name safe)."""
    return f"{_safe(band)}_{statistic_name}_nside{nside}"


def moc_stem(band: str, what: str, nside: int) -> str:
    """File name of a MOC without suffix: ``{band}_{what}_nside{nside}_moc``."""
    return f"{_safe(band)}_{what}_nside{nside}_moc"


def full_sky(nside: int, pixels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """A full-sky float32 NESTED map: ``values`` at ``pixels``, ``UNSEEN`` elsewhere and where values are NaN."""
    sky = np.full(12 * nside * nside, healpy.UNSEEN, dtype=np.float32)
    sky[pixels] = np.where(np.isnan(values), healpy.UNSEEN, values)
    return sky


def write_healpix_fits(
    path: Path, statistic: Statistic, pixels: np.ndarray, values: np.ndarray, provenance: MapProvenance
) -> Path:
    """Write a healpy-readable FITS map (``healpy.read_map(path, nest=True)``; all columns with ``field=None``)."""
    nside = provenance.nside
    if statistic.fields:
        columns = [full_sky(nside, pixels, values[:, index]) for index in range(len(statistic.fields))]
        names = [name.upper() for name in statistic.fields]
    else:
        columns = [full_sky(nside, pixels, values)]
        names = [statistic.name.upper()]
    healpy.write_map(
        str(path),
        columns,
        nest=True,
        coord="C",
        dtype=[np.float32] * len(columns),
        column_names=names,
        column_units=[statistic.unit] * len(columns),
        extra_header=provenance.header(statistic),
        overwrite=True,
    )
    return path


def write_healsparse(
    path: Path,
    statistic: Statistic,
    pixels: np.ndarray,
    values: np.ndarray,
    provenance: MapProvenance,
    *,
    compress: bool = False,
) -> Path:
    """Write a healsparse map (``healsparse.HealSparseMap.read(path)``).

    Floats are float32 with ``UNSEEN`` as sentinel; classes int16 and frame
    counts int32 with -1 (a covered pixel may count 0 bypassed frames).  A
    statistic of several fields is a record map with a field each (the class
    histogram: int32 ``class_0`` ... ``class_5``; the flag fractions: float32
    fields named after the flags), the first field primary.  Pixels no frame
    covers hold the sentinel, like ``UNSEEN`` in the FITS maps.

    ``compress`` compresses integer maps (RICE) and float maps (GZIP)
    losslessly, as healsparse does by default; record maps never are.  It is
    off by default: at nside 1024 near-full-sky maps took about 1 s (integers)
    and 2.5 s (floats) each to compress.
    """
    from healsparse import HealSparseMap

    metadata = {key: value for key, value, _ in provenance.header(statistic)}
    dtype = statistic.dtype
    sentinel = healpy.UNSEEN if dtype.kind == "f" else -1
    if statistic.fields:
        # big-endian, as FITS stores it: the fields are swapped while they are laid out, not copied again
        record = np.dtype([(name, dtype.newbyteorder(">")) for name in statistic.fields])
        fields = [values[:, index] for index in range(len(statistic.fields))]
        coverage, blocks = _sparse_layout(pixels, fields, record, provenance.nside, sentinel)
        _write_record_map(path, coverage, blocks, provenance.nside, sentinel, metadata)
        return path
    defined = ~np.isnan(values) if values.dtype.kind == "f" else slice(None)
    coverage, blocks = _sparse_layout(pixels[defined], [values[defined]], dtype, provenance.nside, sentinel)
    sparse = HealSparseMap(
        cov_map=coverage, sparse_map=blocks, nside_sparse=provenance.nside, sentinel=sentinel, metadata=metadata
    )
    sparse.write(str(path), clobber=True, nocompress=not compress)
    return path


def _sparse_layout(pixels: np.ndarray, fields: list[np.ndarray], dtype: np.dtype, nside: int, sentinel):
    """healsparse's coverage and sparse array for ``fields`` (one array, or one per field of a record
    ``dtype``, the first primary) at the ascending, distinct NESTED ``pixels``.

    The layout is healsparse's own (one block of ``nfine_per_cov`` pixels per
    covered coverage pixel, after a first block of sentinels), filled by one
    assignment per field, where ``update_values_pix`` checks and reorders
    what is already sorted, at a second per near-full-sky map.
    """
    from healsparse import HealSparseCoverage

    nside_coverage = min(HEALSPARSE_COVERAGE_NSIDE, nside)
    shift = 2 * (int(nside).bit_length() - int(nside_coverage).bit_length())
    coverage_of_pixel = pixels >> shift
    starts = np.flatnonzero(np.diff(coverage_of_pixel, prepend=-1)) if pixels.size else np.zeros(0, dtype=np.int64)
    coverage_pixels = coverage_of_pixel[starts]  # the sorted pixels' distinct coverage pixels, without a sort
    coverage = HealSparseCoverage.make_from_pixels(nside_coverage, nside, coverage_pixels)
    positions = pixels + coverage[coverage_of_pixel]
    size = (coverage_pixels.size + 1) << shift
    if dtype.names:
        blocks = np.zeros(size, dtype=dtype)
        blocks[dtype.names[0]] = sentinel
        for name, values in zip(dtype.names, fields, strict=True):
            blocks[name][positions] = values
    else:
        blocks = np.full(size, sentinel, dtype=dtype)
        blocks[positions] = fields[0]
    return coverage, blocks


def _write_record_map(path: Path, coverage, blocks: np.ndarray, nside: int, sentinel, metadata: dict) -> None:
    """Write a healsparse record map as ``HealSparseMap.write`` does (uncompressed), at the speed of the disk.

    This writes healsparse's file format itself, so ``pyproject.toml`` pins
    the healsparse releases it was checked against, and
    ``tests/test_maps.py`` reads every map written back with healsparse.

    The same two HDUs and header keys (primary: the coverage index map,
    ``EXTNAME = 'COV'``; a binary table ``SPARSE`` of the big-endian records
    with ``PIXTYPE``, ``NSIDE``, ``SENTINEL``, ``PRIMARY`` and the metadata),
    but the table's rows are written in one piece instead of through
    astropy's table machinery, which took about 2 s per near-full-sky record
    map at nside 1024.
    """
    from astropy.io import fits

    coverage_header, table_header = fits.Header(), fits.Header()
    for key, value in metadata.items():
        for header in (coverage_header, table_header):
            header[f"HIERARCH {key}" if len(key) > 8 else key] = value
    coverage_header.update({"PIXTYPE": "HEALSPARSE", "NSIDE": coverage.nside_coverage, "EXTNAME": "COV"})
    table = fits.BinTableHDU(data=np.zeros(0, dtype=blocks.dtype), header=table_header)
    table.header.update(
        {
            "NAXIS2": blocks.size,
            "PIXTYPE": "HEALSPARSE",
            "NSIDE": nside,
            "SENTINEL": sentinel,
            "PRIMARY": blocks.dtype.names[0],
            "EXTNAME": "SPARSE",
        }
    )
    with open(path, "wb") as output:
        fits.PrimaryHDU(data=coverage[:], header=coverage_header).writeto(output)
        output.write(table.header.tostring().encode("ascii"))
        blocks.tofile(output)
        output.write(b"\0" * (-blocks.nbytes % 2880))


def write_moc(path: Path, pixels: np.ndarray, provenance: MapProvenance, description: str) -> Path:
    """Write the MOC of NESTED pixels at the map's order (FITS, readable by mocpy and Aladin)."""
    from mocpy import MOC

    order = int(np.log2(provenance.nside))
    pixels = np.asarray(pixels, dtype=np.uint64)
    moc = MOC.from_healpix_cells(pixels, np.full(pixels.size, order, dtype=np.uint8), max_depth=order)
    keywords = {
        "STATNAME": description,
        "BAND": provenance.band,
        "NSIDE": provenance.nside,
        "RUN": provenance.run,
        "MODELS": ", ".join(provenance.models),
    }
    moc.save(str(path), format="fits", overwrite=True, fits_keywords=keywords)
    return path


def _safe(band: str) -> str:
    return re.sub(r"[^A-Za-z0-9+-]", "-", band) or "-"

"""``density-db maps build``: stream frames band by band, rasterise, aggregate and write every map.

One band at a time: its frames stream from the catalog in chunks, each chunk's
footprints are rasterised at ``oversampling_levels`` orders below the output
(pixel centres in the corner polygon) and degraded into covered fractions,
and the sums go into the band's accumulator.  When the band is done its maps
are written (two at a time, on threads) while PostgreSQL already sorts the
next band's rows, and its accumulator is merged into the all-bands one, so
memory holds at most two accumulators whatever the number of bands.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import healpy
import numpy as np

from density_db.database import Database
from density_db.errors import DensityDBError
from density_db.maps import source
from density_db.maps.aggregate import STATISTICS, FrameValues, MapAccumulator, PixelStatistics, Statistic
from density_db.maps.rasterize import MAX_ORDER, MAX_SUBPIXEL_LEVELS, footprint_area_deg2, footprint_coverage
from density_db.maps.source import FrameChunk, Selection
from density_db.maps.writers import (
    ALL_BANDS,
    MapProvenance,
    map_stem,
    moc_stem,
    write_healpix_fits,
    write_healsparse,
    write_moc,
)

logger = logging.getLogger(__name__)

DEFAULT_OVERSAMPLING_LEVELS = 2
"""Footprints are rasterised 2 orders below the output: 16 sub-pixels (4 x the nside) per output pixel."""

WRITER_THREADS = min(2, os.cpu_count() or 1)
"""Maps made at the same time (a statistic's values, then its files): two keep the memory of a band's
largest maps bounded while both cores work."""

DEFAULT_CHUNK_SIZE = 10_000
"""Frames read and rasterised at a time (about 50 MB of temporary arrays; larger chunks run slower)."""

FORMATS = ("hsp", "fits")

CROWDED_CLASS = 4
"""The class-crowded MOC holds pixels covered by frames of this class or higher."""


@dataclass(frozen=True)
class MapSettings:
    """What to map and how.

    Attributes
    ----------
    nside
        Output HEALPix nside (a power of two).
    out_dir
        Directory the files go to (created if needed).
    selection
        Bands, run and region of the results.
    png
        Also draw a PNG per statistic and band.
    moc
        Also write MOCs of crowded (class >= 4) and flagged pixels.
    compress
        Compress the healsparse integer and float maps losslessly (smaller,
        several times slower to write).
    formats
        Map file formats among ``hsp`` and ``fits``.
    oversampling_levels
        Orders between the output and the rasterisation: 2 (4 x the nside) or 3 (8 x).
    chunk_size
        Frames streamed and rasterised at a time.
    """

    nside: int
    out_dir: Path
    selection: Selection = field(default_factory=Selection)
    png: bool = False
    moc: bool = False
    compress: bool = False
    formats: tuple[str, ...] = FORMATS
    oversampling_levels: int = DEFAULT_OVERSAMPLING_LEVELS
    chunk_size: int = DEFAULT_CHUNK_SIZE

    def __post_init__(self) -> None:
        if self.nside < 1 or self.nside & (self.nside - 1):
            raise ValueError(f"nside must be a power of two, got {self.nside}")
        if not 2 <= self.oversampling_levels <= MAX_SUBPIXEL_LEVELS:
            raise ValueError(
                f"oversampling_levels must be between 2 and {MAX_SUBPIXEL_LEVELS}, got {self.oversampling_levels}"
            )
        if self.order + self.oversampling_levels > MAX_ORDER:
            raise ValueError(
                f"nside {self.nside} is too fine: rasterising {self.oversampling_levels} orders deeper "
                f"needs order <= {MAX_ORDER}, so nside <= {2 ** (MAX_ORDER - self.oversampling_levels)}"
            )
        unknown = set(self.formats) - set(FORMATS)
        if unknown:
            raise ValueError(f"unknown map formats {sorted(unknown)}; choose among {', '.join(FORMATS)}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {self.chunk_size}")

    @property
    def order(self) -> int:
        """HEALPix order of the output maps."""
        return self.nside.bit_length() - 1


@dataclass(frozen=True)
class BandSummary:
    """What went into one band's maps (or the all-bands maps)."""

    band: str
    frames_mapped: int
    frames_without_result: int
    frames_without_corners: int
    pixels: int
    covered_area_deg2: float


@dataclass(frozen=True)
class BuildSummary:
    """The outcome of :func:`build_maps`."""

    nside: int
    run: str
    models: tuple[str, ...]
    bands: tuple[BandSummary, ...]
    files: tuple[Path, ...]
    stream_seconds: float
    """Reading frames from the catalog, rasterising and accumulating them (grows with the frames)."""
    finalize_seconds: float
    """Finding the covered pixels and merging the bands' sums (grows with the pixels covered)."""
    write_seconds: float
    """Working each map's values out of the sums and writing the files, side by side on threads."""

    @property
    def frames_mapped(self) -> int:
        return sum(band.frames_mapped for band in self.bands if band.band != ALL_BANDS)

    @property
    def frames_skipped(self) -> int:
        return sum(
            band.frames_without_result + band.frames_without_corners for band in self.bands if band.band != ALL_BANDS
        )


def build_maps(
    database: Database, settings: MapSettings, *, progress: Callable[[int, int], None] | None = None
) -> BuildSummary:
    """Aggregate the selected results into HEALPix maps and write them under ``settings.out_dir``.

    Parameters
    ----------
    database : Database
        The catalog.
    settings : MapSettings
        What to map and how.
    progress : callable, optional
        Called as ``progress(done, total)`` with the frames of the selection
        processed so far (mapped or skipped) and their total.

    Returns
    -------
    BuildSummary

    Raises
    ------
    DensityDBError
        If the run does not exist or no frame of the selection has a result.
    """
    if settings.selection.run_id is not None:
        source.check_run(database, settings.selection.run_id)
    selection = source.resolve_region(database, settings.selection)
    totals = source.frames_per_band(database, selection)
    run = "latest" if selection.run_id is None else str(selection.run_id)
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    writer = _Writer(settings, run)
    grand_total, done = sum(totals.values()), 0

    def advance(frames: int) -> None:
        nonlocal done
        done += frames
        if progress is not None:
            progress(done, grand_total)

    summaries = []
    all_pairs: set[tuple[int, int]] = set()
    combined: MapAccumulator | None = None
    stream_seconds = finalize_seconds = 0.0
    bands = list(totals)
    with contextlib.ExitStack() as streams:
        # The next band's stream starts before this band's maps are written: PostgreSQL sorts its
        # rows meanwhile.
        stream = streams.enter_context(_stream(database, selection, bands[0], settings)) if bands else None
        for position, (band, total) in enumerate(totals.items()):
            started = time.perf_counter()
            accumulator, without_corners, pairs = _accumulate(stream, settings, advance)
            stream.close()
            if position + 1 < len(bands):
                stream = streams.enter_context(_stream(database, selection, bands[position + 1], settings))
            without_result = total - accumulator.frames - without_corners
            advance(without_result)
            stream_seconds += time.perf_counter() - started
            if not pairs:
                logger.warning("no results for band %s in this selection: no maps for it", band)
                continue
            all_pairs |= pairs
            started = time.perf_counter()
            statistics = accumulator.statistics()
            finalize_seconds += time.perf_counter() - started
            logger.info("band %s: %d frames on %d pixels", band, accumulator.frames, statistics.pixels.size)
            summaries.append(_summary(band, accumulator.frames, without_result, without_corners, statistics, settings))
            writer.write(band, statistics, source.model_pair_names(database, pairs))
            del statistics  # memory holds at most two accumulators, or one and one band's statistics
            started = time.perf_counter()
            if combined is None:
                combined = accumulator  # the first band's sums become the all-bands sums (its maps are written)
            else:
                combined.merge(accumulator)
            finalize_seconds += time.perf_counter() - started
            del accumulator
    if selection.bands is not None:
        missing = [band for band in selection.bands if band not in {summary.band for summary in summaries}]
        if missing:
            logger.warning("no results for band(s) %s in this selection", ", ".join(missing))
    if not summaries:
        raise DensityDBError("no frame of the selection has a density result: nothing to map")
    models = tuple(source.model_pair_names(database, all_pairs))
    if len(summaries) > 1:
        started = time.perf_counter()
        statistics = combined.statistics()
        finalize_seconds += time.perf_counter() - started
        without_result = sum(summary.frames_without_result for summary in summaries)
        without_corners = sum(summary.frames_without_corners for summary in summaries)
        summaries.append(_summary(ALL_BANDS, combined.frames, without_result, without_corners, statistics, settings))
        writer.write(ALL_BANDS, statistics, models)
    summary = BuildSummary(
        nside=settings.nside,
        run=run,
        models=models,
        bands=tuple(summaries),
        files=tuple(writer.files),
        stream_seconds=stream_seconds,
        finalize_seconds=finalize_seconds,
        write_seconds=writer.seconds,
    )
    manifest = settings.out_dir / f"maps_nside{settings.nside}.json"
    manifest.write_text(json.dumps(_manifest(summary, settings), indent=2) + "\n")
    return replace(summary, files=(*summary.files, manifest))


def _accumulate(
    stream: source.FrameStream, settings: MapSettings, advance: Callable[[int], None]
) -> tuple[MapAccumulator, int, set[tuple[int, int]]]:
    """One band's sums from its stream; also the frames without usable corners and the model pairs seen.

    A two-stage pipeline: a thread rasterises the next chunk while this one's
    coverage is added (both compiled loops run without the GIL).
    """
    accumulator = MapAccumulator(order=settings.order, levels=settings.oversampling_levels)
    without_corners = 0
    pairs: set[tuple[int, int]] = set()
    pending = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="density-db-maps-rasterise") as rasteriser:
        for chunk in stream:
            usable = np.all(np.isfinite(chunk.corner_ra), axis=1) & np.all(np.isfinite(chunk.corner_dec), axis=1)
            unusable = int(usable.size - np.count_nonzero(usable))
            if unusable:
                logger.warning("%d frames without four finite corners are left out of the maps", unusable)
                without_corners += unusable
                chunk = chunk.take(usable)
            coverage = rasteriser.submit(footprint_coverage, chunk.corner_ra, chunk.corner_dec,
                                         order=settings.order, levels=settings.oversampling_levels)
            if pending is not None:
                accumulator.add(pending[1].result(), frame_values(pending[0]))
            pending = (chunk, coverage)
            pairs.update(zip(chunk.classifier_id.tolist(), chunk.regressor_id.tolist()))
            advance(int(usable.size))
        if pending is not None:
            accumulator.add(pending[1].result(), frame_values(pending[0]))
    return accumulator, without_corners, pairs


def _stream(database: Database, selection: Selection, band: str, settings: MapSettings) -> source.FrameStream:
    return source.FrameStream(database, selection, band, chunk_size=settings.chunk_size)


def frame_values(chunk: FrameChunk) -> FrameValues:
    """Class, bright-star surface density (stars/deg^2 of valid area) and flags of each frame."""
    valid_area = footprint_area_deg2(chunk.corner_ra, chunk.corner_dec) * chunk.valid_fraction
    with np.errstate(divide="ignore", invalid="ignore"):
        density = np.where(valid_area > 0, chunk.bright_count / valid_area, np.nan)
    return FrameValues(density_class=chunk.density_class, bright_density=density, flags=chunk.flags)


def _summary(
    band: str, frames: int, without_result: int, without_corners: int, statistics: PixelStatistics,
    settings: MapSettings,
) -> BandSummary:
    pixel_area = healpy.nside2pixarea(settings.nside, degrees=True)
    return BandSummary(
        band=band,
        frames_mapped=frames,
        frames_without_result=without_result,
        frames_without_corners=without_corners,
        pixels=int(statistics.pixels.size),
        covered_area_deg2=float(statistics["covered_fraction"].sum() * pixel_area),
    )


def _manifest(summary: BuildSummary, settings: MapSettings) -> dict:
    selection = settings.selection
    return {
        "nside": summary.nside,
        "order": settings.order,
        "rasterised_at_order": settings.order + settings.oversampling_levels,
        "run": summary.run,
        "models": list(summary.models),
        "region": None if selection.region is None else selection.region.spec,
        "statistics": {statistic.name: {"unit": statistic.unit, "description": statistic.description}
                       for statistic in STATISTICS},
        "bands": [asdict(band) for band in summary.bands],
        "files": [path.name for path in summary.files],
    }


class _Writer:
    """Writes every file of one band's maps, a few at a time on threads, and remembers what it wrote.

    The statistics' compiled loops and NumPy's copies and file writes release
    the GIL, so files are made side by side; the PNGs are drawn one at a time
    (matplotlib figures are not shared between threads, but the library's
    state is).
    """

    def __init__(self, settings: MapSettings, run: str) -> None:
        self.settings = settings
        self.run = run
        self.files: list[Path] = []
        self.seconds = 0.0

    def write(self, band: str, statistics: PixelStatistics, models: Sequence[str]) -> None:
        started = time.perf_counter()
        settings = self.settings
        provenance = MapProvenance(band=band, nside=settings.nside, run=self.run, models=tuple(models))
        with ThreadPoolExecutor(max_workers=WRITER_THREADS, thread_name_prefix="density-db-maps-writer") as pool:
            # the one-value maps (made together in one pass) first, then the record maps (the largest),
            # one at a time, so that memory never holds two of these at once
            order = sorted(STATISTICS, key=lambda statistic: len(statistic.fields))
            written = dict(zip(order, pool.map(lambda item: self._write(item, statistics, provenance), order)))
        for statistic in STATISTICS:  # the files listed in the order of the statistics
            self.files.extend(written[statistic])
        if settings.moc:
            crowded = statistics.pixels[statistics["class_max"] >= CROWDED_CLASS]
            flagged = statistics.pixels[statistics["flagged_fraction"] > 0]
            for what, pixels, description in (
                (f"class_ge{CROWDED_CLASS}", crowded, f"pixels covered by frames of class >= {CROWDED_CLASS}"),
                ("flagged", flagged, "pixels covered by flagged frames"),
            ):
                path = settings.out_dir / f"{moc_stem(band, what, settings.nside)}.fits"
                self.files.append(write_moc(path, pixels, provenance, description))
        self.seconds += time.perf_counter() - started

    def _write(self, statistic: Statistic, statistics: PixelStatistics, provenance: MapProvenance) -> list[Path]:
        """Every file of one statistic: its values are worked out here, then written in each format."""
        with _RECORD_MAP if statistic.fields else contextlib.nullcontext():
            return self._write_files(statistic, statistics.pixels, statistics[statistic.name], provenance)

    def _write_files(
        self, statistic: Statistic, pixels: np.ndarray, values: np.ndarray, provenance: MapProvenance
    ) -> list[Path]:
        """The files of one statistic's values, in each format asked for."""
        settings = self.settings
        stem = settings.out_dir / map_stem(provenance.band, statistic.name, settings.nside)
        files = []
        if "hsp" in settings.formats:
            files.append(write_healsparse(stem.with_suffix(".hsp"), statistic, pixels, values, provenance,
                                          compress=settings.compress))
        if "fits" in settings.formats:
            files.append(write_healpix_fits(stem.with_suffix(".fits"), statistic, pixels, values, provenance))
        if settings.png:
            from density_db.maps.plots import plot_map

            with _PLOTTING:
                files.append(plot_map(stem.with_suffix(".png"), statistic, pixels, values, provenance))
        return files


_PLOTTING = threading.Lock()
_RECORD_MAP = threading.Lock()
"""Held while a record map (a value per class or flag per pixel, the largest maps) is made and written."""

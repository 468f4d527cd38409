"""``density-db maps build``: stream frames band by band, rasterise, aggregate and write every map.

First one pass over the catalog counts the frames of each band and how
large they are, which sets the order at which the union of frames is kept
(:func:`plan_sampling`).  Then one band at a time: its frames stream from the
catalog in chunks, each chunk's footprints are sampled (sub-pixel centres in
the corner polygon, each frame deep enough to hold many of them) and gathered
into covered fractions of the output pixels, and the sums go into the band's
accumulator.  When the band is done its maps
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
from density_db.flag_rules import flag_rules_in_force
from density_db.maps import source
from density_db.maps.aggregate import BLOCK_LEVELS, STATISTICS, FrameValues, MapAccumulator, PixelStatistics, Statistic
from density_db.maps.rasterize import (
    DEEPEST_SAMPLING_ORDER,
    MAX_ORDER,
    MAX_SUBPIXEL_LEVELS,
    Coverage,
    Sampling,
    footprint_area_deg2,
    footprint_coverage,
    order_for_centres,
    pixel_area_deg2,
    placeable,
    subpixel_mask_dtype,
)
from density_db.maps.source import Census, FrameChunk, FrameName, Selection
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
"""Footprints are sampled at least 2 orders below the output: 16 sub-pixels (4 x the nside) per output pixel."""

MASK_BUDGET_BYTES = 256 << 20
"""The covered sub-pixels of one accumulator may take up to about 256 MiB: the union of frames is kept
as deep as the smallest frames ask while its estimated size fits (two accumulators are held at once)."""

NAMED_FRAMES = 20
"""A warning names up to 20 frames that could not be placed; the manifest names them all."""

WRITER_THREADS = min(2, os.cpu_count() or 1)
"""Maps made at the same time (a statistic's values, then its files): two keep the memory of a band's
largest maps bounded while both cores work."""

DEFAULT_CHUNK_SIZE = 10_000
"""Frames read and rasterised at a time (about 50 MB of temporary arrays; larger chunks run slower)."""

FORMATS = ("hsp", "fits")


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
        Also write MOCs of crowded and flagged pixels.
    crowded_min_class
        The crowded MOC holds pixels covered by frames of this class or
        higher; ``None``: the ``crowded_min_class`` of the flag thresholds in
        force (:func:`~density_db.flag_rules.flag_rules_in_force`, 4 by default),
        so the MOC and the ``crowded`` flag agree.
    compress
        Compress the healsparse integer and float maps losslessly (smaller,
        several times slower to write).
    formats
        Map file formats among ``hsp`` and ``fits``.
    oversampling_levels
        Fewest orders between the output and the sampling: 2 (4 x the nside) or 3 (8 x).
        Frames are sampled deeper where they need it to hold many sub-pixel centres.
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
    crowded_min_class: int | None = None

    def __post_init__(self) -> None:
        if self.nside < 1 or self.nside & (self.nside - 1):
            raise ValueError(f"nside must be a power of two, got {self.nside}")
        if not 2 <= self.oversampling_levels <= MAX_SUBPIXEL_LEVELS:
            raise ValueError(
                f"oversampling_levels must be between 2 and {MAX_SUBPIXEL_LEVELS}, got {self.oversampling_levels}"
            )
        if self.order + self.oversampling_levels > MAX_ORDER:
            raise ValueError(
                f"nside {self.nside} is too fine: sampling {self.oversampling_levels} orders deeper "
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
    """What went into one band's maps (or the all-bands maps).

    Attributes
    ----------
    band
        Canonical band name, or ``all``.
    frames_placed
        Frames that count in the maps (each in at least the pixel holding its centre).
    frames_placed_by_area
        Of those, frames with no sub-pixel centre inside even at the deepest
        sampling order (or a degenerate corner polygon): their area went to
        the pixel holding their centre.
    frames_without_result
        Frames of the selection with no density result.
    frames_without_corners
        Frames with a result that could not be placed: no four finite WCS
        corners (or corners without a mean direction).
    pixels
        Output pixels that frames cover.
    covered_area_deg2
        Sum of ``covered_fraction`` times the pixel area.
    sampling_orders
        Frames sampled at each HEALPix order.
    unplaced
        The frames that could not be placed.
    """

    band: str
    frames_placed: int
    frames_placed_by_area: int
    frames_without_result: int
    frames_without_corners: int
    pixels: int
    covered_area_deg2: float
    sampling_orders: dict[int, int]
    unplaced: tuple[FrameName, ...] = ()


@dataclass(frozen=True)
class BuildSummary:
    """The outcome of :func:`build_maps`."""

    nside: int
    run: str
    models: tuple[str, ...]
    sampling: Sampling
    bands: tuple[BandSummary, ...]
    files: tuple[Path, ...]
    stream_seconds: float
    """Reading frames from the catalog, rasterising and accumulating them (grows with the frames)."""
    finalize_seconds: float
    """Finding the covered pixels and merging the bands' sums (grows with the pixels covered)."""
    write_seconds: float
    """Working each map's values out of the sums and writing the files, side by side on threads."""

    @property
    def frames_placed(self) -> int:
        return sum(band.frames_placed for band in self.bands if band.band != ALL_BANDS)

    @property
    def frames_skipped(self) -> int:
        return sum(
            band.frames_without_result + band.frames_without_corners for band in self.bands if band.band != ALL_BANDS
        )


def plan_sampling(order: int, min_levels: int, census: Census) -> Sampling:
    """How deep to sample footprints for maps of ``order``, from the sizes of the frames to map.

    Each frame is sampled where it holds :data:`~density_db.maps.rasterize.MIN_CENTRES`
    sub-pixels; the union of frames (the covered fraction) is kept at the
    order the smallest frame asks for, as far as :data:`MASK_BUDGET_BYTES`
    allows for the pixels the frames may touch.  Frames sampled deeper than
    that order add their covered fractions to the union instead.

    Parameters
    ----------
    order : int
        HEALPix order of the maps.
    min_levels : int
        Fewest orders between the output and the sampling.
    census : Census
        The frames to map, and the sizes of the smallest and largest.

    Returns
    -------
    Sampling
    """
    fewest = order + min_levels
    wanted = int(np.clip(order_for_centres(census.smallest_area_deg2), fewest, max(fewest, DEEPEST_SAMPLING_ORDER)))
    frames = sum(census.frames.values())
    largest = census.largest_area_deg2 if np.isfinite(census.largest_area_deg2) else 0.0
    block_pixels = 1 << (2 * min(BLOCK_LEVELS, order))
    # Pixels the frames may touch: a few blocks per frame, or its area, at most the sky.
    pixels = min(12 << (2 * order), frames * (4 * block_pixels + 2 * largest / pixel_area_deg2(order)))
    mask_order = fewest
    while mask_order < wanted and pixels * _mask_bytes_per_pixel(mask_order + 1 - order) <= MASK_BUDGET_BYTES:
        mask_order += 1
    return Sampling(order=order, mask_order=mask_order, min_levels=min_levels)


def _mask_bytes_per_pixel(levels: int) -> int:
    """Bytes of covered sub-pixels per output pixel with ``levels`` orders of sub-pixels."""
    word_levels = min(levels, MAX_SUBPIXEL_LEVELS)
    return subpixel_mask_dtype(word_levels).itemsize << (2 * (levels - word_levels))


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
    census = source.census(database, selection)
    sampling = plan_sampling(settings.order, settings.oversampling_levels, census)
    logger.info(
        "footprints sampled from order %d down, %d sub-pixels a frame; their union kept at order %d",
        settings.order + settings.oversampling_levels,
        sampling.min_centres,
        sampling.mask_order,
    )
    run = "latest" if selection.run_id is None else str(selection.run_id)
    if settings.moc and settings.crowded_min_class is None:
        settings = replace(settings, crowded_min_class=flag_rules_in_force(database).thresholds.crowded_min_class)
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    writer = _Writer(settings, run)
    grand_total, done = sum(census.frames.values()), 0

    def advance(frames: int) -> None:
        nonlocal done
        done += frames
        if progress is not None:
            progress(done, grand_total)

    summaries = []
    all_pairs: set[tuple[int, int]] = set()
    combined: MapAccumulator | None = None
    stream_seconds = finalize_seconds = 0.0
    bands = list(census.frames)
    with contextlib.ExitStack() as streams:
        # The next band's stream starts before this band's maps are written: PostgreSQL sorts its
        # rows meanwhile.
        stream = streams.enter_context(_stream(database, selection, bands[0], settings)) if bands else None
        for position, band in enumerate(bands):
            started = time.perf_counter()
            accumulator = MapAccumulator(sampling=sampling)
            placement = _accumulate(stream, accumulator, advance)
            stream.close()
            if position + 1 < len(bands):
                stream = streams.enter_context(_stream(database, selection, bands[position + 1], settings))
            without_result = census.frames[band] - accumulator.frames - placement.without_corners
            advance(without_result)
            stream_seconds += time.perf_counter() - started
            if not placement.pairs:
                logger.warning("no results for band %s in this selection: no maps for it", band)
                continue
            all_pairs |= placement.pairs
            unplaced = _report_unplaced(database, band, placement.unplaced_ids)
            started = time.perf_counter()
            statistics = accumulator.statistics()
            finalize_seconds += time.perf_counter() - started
            logger.info("band %s: %d frames placed on %d pixels", band, placement.placed, statistics.pixels.size)
            summaries.append(_summary(band, placement, without_result, unplaced, statistics, settings))
            writer.write(band, statistics, source.model_pair_names(database, placement.pairs))
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
        summaries.append(_all_bands_summary(summaries, statistics, settings))
        writer.write(ALL_BANDS, statistics, models)
    summary = BuildSummary(
        nside=settings.nside,
        run=run,
        models=models,
        sampling=sampling,
        bands=tuple(summaries),
        files=tuple(writer.files),
        stream_seconds=stream_seconds,
        finalize_seconds=finalize_seconds,
        write_seconds=writer.seconds,
    )
    manifest = settings.out_dir / f"maps_nside{settings.nside}.json"
    manifest.write_text(json.dumps(_manifest(summary, settings), indent=2) + "\n")
    return replace(summary, files=(*summary.files, manifest))


@dataclass
class _Placement:
    """Where one band's frames went: counted as the chunks are added."""

    placed: int = 0
    placed_by_area: int = 0
    without_corners: int = 0
    unplaced_ids: list[int] = field(default_factory=list)
    sampling_orders: dict[int, int] = field(default_factory=dict)
    pairs: set[tuple[int, int]] = field(default_factory=set)

    def count(self, coverage: Coverage) -> None:
        """Count a chunk's frames: :func:`footprint_coverage` places every frame it is given."""
        self.placed += int(coverage.sampling_order.size)
        self.placed_by_area += int(np.count_nonzero(coverage.placed_by_area))
        orders, frames = np.unique(coverage.sampling_order, return_counts=True)
        for order, count in zip(orders.tolist(), frames.tolist()):
            self.sampling_orders[order] = self.sampling_orders.get(order, 0) + count


def _accumulate(stream: source.FrameStream, accumulator: MapAccumulator, advance: Callable[[int], None]) -> _Placement:
    """Add one band's stream to its accumulator; return where its frames went and the model pairs seen.

    A two-stage pipeline: a thread rasterises the next chunk while this one's
    coverage is added (both compiled loops run without the GIL).
    """
    placement = _Placement()
    pending = None

    def add(chunk: FrameChunk, coverage: Coverage) -> None:
        accumulator.add(coverage, frame_values(chunk))
        placement.count(coverage)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="density-db-maps-rasterise") as rasteriser:
        for chunk in stream:
            usable = placeable(chunk.corner_ra, chunk.corner_dec)
            if not np.all(usable):
                placement.without_corners += int(usable.size - np.count_nonzero(usable))
                placement.unplaced_ids.extend(chunk.frame_id[~usable].tolist())
                chunk = chunk.take(usable)
            coverage = rasteriser.submit(footprint_coverage, chunk.corner_ra, chunk.corner_dec, accumulator.sampling)
            if pending is not None:
                add(pending[0], pending[1].result())
            pending = (chunk, coverage)
            placement.pairs.update(zip(chunk.classifier_id.tolist(), chunk.regressor_id.tolist()))
            advance(int(usable.size))
        if pending is not None:
            add(pending[0], pending[1].result())
    return placement


def _report_unplaced(database: Database, band: str, frame_ids: list[int]) -> tuple[FrameName, ...]:
    """Warn about, and name, the frames of a band that could not be placed."""
    if not frame_ids:
        return ()
    names = tuple(source.frame_names(database, frame_ids))
    shown = "; ".join(str(name) for name in names[:NAMED_FRAMES])
    more = f"; and {len(names) - NAMED_FRAMES} more (the manifest names them all)" if len(names) > NAMED_FRAMES else ""
    logger.warning(
        "band %s: %d frames without four usable WCS corners cannot be placed and are left out of the maps: %s%s",
        band,
        len(frame_ids),
        shown,
        more,
    )
    return names


def _stream(database: Database, selection: Selection, band: str, settings: MapSettings) -> source.FrameStream:
    return source.FrameStream(database, selection, band, chunk_size=settings.chunk_size)


def frame_values(chunk: FrameChunk) -> FrameValues:
    """Class, bright-star surface density (stars/deg^2 of valid area) and flags of each frame."""
    valid_area = footprint_area_deg2(chunk.corner_ra, chunk.corner_dec) * chunk.valid_fraction
    with np.errstate(divide="ignore", invalid="ignore"):
        density = np.where(valid_area > 0, chunk.bright_count / valid_area, np.nan)
    return FrameValues(density_class=chunk.density_class, bright_density=density, flags=chunk.flags)


def _summary(
    band: str,
    placement: _Placement,
    without_result: int,
    unplaced: tuple[FrameName, ...],
    statistics: PixelStatistics,
    settings: MapSettings,
) -> BandSummary:
    return BandSummary(
        band=band,
        frames_placed=placement.placed,
        frames_placed_by_area=placement.placed_by_area,
        frames_without_result=without_result,
        frames_without_corners=placement.without_corners,
        pixels=int(statistics.pixels.size),
        covered_area_deg2=_covered_area_deg2(statistics, settings),
        sampling_orders=dict(sorted(placement.sampling_orders.items())),
        unplaced=unplaced,
    )


def _all_bands_summary(bands: list[BandSummary], statistics: PixelStatistics, settings: MapSettings) -> BandSummary:
    orders: dict[int, int] = {}
    for band in bands:
        for order, frames in band.sampling_orders.items():
            orders[order] = orders.get(order, 0) + frames
    return BandSummary(
        band=ALL_BANDS,
        frames_placed=sum(band.frames_placed for band in bands),
        frames_placed_by_area=sum(band.frames_placed_by_area for band in bands),
        frames_without_result=sum(band.frames_without_result for band in bands),
        frames_without_corners=sum(band.frames_without_corners for band in bands),
        pixels=int(statistics.pixels.size),
        covered_area_deg2=_covered_area_deg2(statistics, settings),
        sampling_orders=dict(sorted(orders.items())),
        unplaced=tuple(name for band in bands for name in band.unplaced),
    )


def _covered_area_deg2(statistics: PixelStatistics, settings: MapSettings) -> float:
    return float(
        statistics["covered_fraction"].sum(dtype=np.float64) * healpy.nside2pixarea(settings.nside, degrees=True)
    )


def _manifest(summary: BuildSummary, settings: MapSettings) -> dict:
    selection = settings.selection
    sampling = summary.sampling
    return {
        "nside": summary.nside,
        "order": settings.order,
        "sampling": {
            "min_centres": sampling.min_centres,
            "min_order": sampling.order + sampling.min_levels,
            "deepest_order": max(sampling.deepest_order, sampling.order + sampling.min_levels),
            "union_order": sampling.mask_order,
        },
        "run": summary.run,
        "models": list(summary.models),
        "region": None if selection.region is None else selection.region.spec,
        "statistics": {
            statistic.name: {"unit": statistic.unit, "description": statistic.description} for statistic in STATISTICS
        },
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
            crowded_min = settings.crowded_min_class
            crowded = statistics.pixels[statistics["class_max"] >= crowded_min]
            flagged = statistics.pixels[statistics["flagged_fraction"] > 0]
            for what, pixels, description in (
                (f"class_ge{crowded_min}", crowded, f"pixels covered by frames of class >= {crowded_min}"),
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
            files.append(
                write_healsparse(
                    stem.with_suffix(".hsp"), statistic, pixels, values, provenance, compress=settings.compress
                )
            )
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

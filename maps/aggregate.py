"""Per-pixel statistics of frames on a HEALPix grid, accumulated chunk by chunk.

:class:`MapAccumulator` keeps, for every output pixel some frame covers, the
sums that the statistics need (frames and summed covered fraction per density
class, the coverage-weighted bright-star density with its minimum and
maximum, the flagged coverage) and, at the fine resolution, which sub-pixels
at least one frame covers.  Memory is held per coverage block (as healsparse
does): a block of 64 pixels costs nothing until a frame touches it, so a
regional catalog makes small accumulators and an all-sky one at nside 1024
takes about 1.3 GB (100 bytes per pixel, and a bit per sub-pixel).
Accumulators of several bands merge into the all-bands one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from density_db.maps.rasterize import MAX_SUBPIXEL_LEVELS, Coverage, popcount, subpixel_mask_dtype
from density_db.planning.flags import FLAGS

logger = logging.getLogger(__name__)

DENSITY_CLASSES = 6
"""Density classes 0-5 (class 5: regression bypassed, no bright-star count)."""

BYPASSED_CLASS = 5

BLOCK_LEVELS = 3
"""Memory is held in blocks of 4**3 = 64 output pixels (the pixels of one pixel 3 orders coarser)."""


@dataclass(frozen=True)
class Statistic:
    """One output map: its name (used in file names), unit and meaning."""

    name: str
    unit: str
    description: str
    kind: str
    """``class`` (0-5), ``count`` (frames), ``fraction`` (0-1) or ``density`` (stars/deg^2)."""
    fields: tuple[str, ...] = ()
    """For a map of several values per pixel (a healsparse record map, a FITS column each): their names."""


STATISTICS = (
    Statistic("class_max", "", "highest density class of the frames covering the pixel", "class"),
    Statistic(
        "class_mode", "",
        "density class with the largest summed covered fraction in the pixel (ties: the higher class)", "class",
    ),
    Statistic(
        "class_histogram", "frames", "frames of each density class covering the pixel (fields class_0 ... class_5)",
        "count", tuple(f"class_{index}" for index in range(DENSITY_CLASSES)),
    ),
    Statistic(
        "bright_density_mean", "stars/deg2",
        "bright stars per square degree (bright_count / valid area), mean weighted by covered fraction", "density",
    ),
    Statistic("bright_density_min", "stars/deg2", "lowest bright-star density of the covering frames", "density"),
    Statistic("bright_density_max", "stars/deg2", "highest bright-star density of the covering frames", "density"),
    Statistic("bypassed_frames", "frames", "class-5 frames (no bright-star count) covering the pixel", "count"),
    Statistic(
        "bypassed_fraction", "", "share of the pixel's summed covered fraction that comes from class-5 frames",
        "fraction",
    ),
    Statistic("frames", "frames", "frames covering the pixel (at least one sub-pixel centre inside)", "count"),
    Statistic("covered_fraction", "", "fraction of the pixel inside at least one frame", "fraction"),
    Statistic(
        "flagged_fraction", "",
        "share of the pixel's summed covered fraction that comes from flagged frames (flags != 0)",
        "fraction",
    ),
    Statistic(
        "flag_fractions", "",
        "share of the pixel's summed covered fraction that comes from frames with each flag (a field per flag)",
        "fraction", tuple(flag.name for flag in FLAGS),
    ),
)
"""Every statistic, in the order they are written."""

STATISTIC_NAMES = tuple(statistic.name for statistic in STATISTICS)

# Columns of the accumulator, per pixel.
_COUNT = 0  # frames of class c at _COUNT + c
_WEIGHT = _COUNT + DENSITY_CLASSES  # summed covered fraction of the frames of class c
_DENSITY_SUM = _WEIGHT + DENSITY_CLASSES  # sum of covered fraction * bright density, frames with a count
_DENSITY_MIN = _DENSITY_SUM + 1
_DENSITY_MAX = _DENSITY_MIN + 1
_COUNTED_WEIGHT = _DENSITY_MAX + 1  # summed covered fraction of the frames with a count
_FLAGGED_WEIGHT = _COUNTED_WEIGHT + 1
_FLAG_WEIGHT = _FLAGGED_WEIGHT + 1  # summed covered fraction of the frames with flag bit b at _FLAG_WEIGHT + b
_COLUMNS = _FLAG_WEIGHT + len(FLAGS)
_SUMMED = np.r_[_COUNT:_DENSITY_MIN, _COUNTED_WEIGHT:_COLUMNS]
_EMPTY_ROW = np.zeros(_COLUMNS, dtype=np.float32)
_EMPTY_ROW[_DENSITY_MIN], _EMPTY_ROW[_DENSITY_MAX] = np.inf, -np.inf

_PREALLOCATE_BYTES = 2 << 30
"""Accumulators whose whole sky fits in this (up to nside 1024) reserve it at once instead of growing."""

_BATCH_PIXELS = 1 << 20
"""Pixels merged or turned into statistics at a time (bounds the temporary copies)."""


@dataclass(frozen=True)
class FrameValues:
    """What each frame of a chunk contributes to the maps.

    Attributes
    ----------
    density_class
        0-5 per frame.
    bright_density
        Bright stars per square degree of valid area; NaN for a frame without a count.
    flags
        The flag bits of each frame's result (int64).
    """

    density_class: np.ndarray
    bright_density: np.ndarray
    flags: np.ndarray


@dataclass(frozen=True)
class PixelStatistics:
    """The statistics of one map (a band or all bands) on the pixels that frames cover.

    Attributes
    ----------
    order
        HEALPix order of the maps (NESTED).
    pixels
        Covered pixels, ascending (int64).
    values
        Statistic name -> values on ``pixels``: ``(m,)`` arrays, ``(m, 6)``
        for ``class_histogram``; float statistics are float32, NaN where
        undefined (e.g. bright-star density where every frame is class 5).
    """

    order: int
    pixels: np.ndarray
    values: Mapping[str, np.ndarray]


class MapAccumulator:
    """Sums per output pixel, and covered sub-pixels, over the chunks of frames added.

    Parameters
    ----------
    order : int
        HEALPix order of the output maps.
    levels : int
        Orders between the output pixels and the fine pixels frames are
        rasterised at (each output pixel has ``4**levels`` sub-pixels; 0-3).
    """

    def __init__(self, *, order: int, levels: int) -> None:
        if not 0 <= levels <= MAX_SUBPIXEL_LEVELS:
            raise ValueError(f"levels must be between 0 and {MAX_SUBPIXEL_LEVELS}, got {levels}")
        self.order = order
        self.levels = levels
        coverage_order = max(0, order - BLOCK_LEVELS)
        self._block_shift = 2 * (order - coverage_order)
        self._block_size = 1 << self._block_shift
        self._subpixels = 1 << (2 * levels)
        self._slot_of_block = np.full(12 << (2 * coverage_order), -1, dtype=np.int64)
        self._block_of_slot = np.zeros(0, dtype=np.int64)
        self._used = 0
        self._sums = np.zeros((0, self._block_size, _COLUMNS), dtype=np.float32)
        self._mask_dtype = subpixel_mask_dtype(levels)
        self._covered = np.zeros((0, self._block_size), dtype=self._mask_dtype)
        blocks = self._slot_of_block.size
        if blocks * self._block_size * (_COLUMNS * 4 + self._mask_dtype.itemsize) <= _PREALLOCATE_BYTES:
            # Zeroed memory is only made resident when written: reserving the whole sky costs
            # nothing until blocks are used, and spares the copies of growing.
            self._grow(blocks)
        self.frames = 0

    @property
    def nbytes(self) -> int:
        """Memory held by the accumulator."""
        return self._sums.nbytes + self._covered.nbytes + self._slot_of_block.nbytes

    def add(self, coverage: Coverage, values: FrameValues) -> None:
        """Add one chunk of frames: their covered fractions and sub-pixels, and what they carry.

        Parameters
        ----------
        coverage : Coverage
            Covered fraction and sub-pixels per (frame, output pixel), at this
            accumulator's order and ``levels``.
        values : FrameValues
            Per frame of the chunk, indexed by ``coverage.frame_index``.
        """
        if coverage.order != self.order or coverage.subpixels.dtype != self._mask_dtype:
            raise ValueError(f"expected coverage of order {self.order} with {self._subpixels} sub-pixels")
        self.frames += int(values.density_class.size)
        if coverage.pixel.size == 0:
            return
        slots = self._slots(coverage.pixel >> self._block_shift)
        row = slots * self._block_size + (coverage.pixel & (self._block_size - 1))
        frame = coverage.frame_index
        density_class = values.density_class[frame].astype(np.int64)
        weight = coverage.fraction.astype(np.float32)
        density = values.bright_density[frame].astype(np.float32)
        counted = np.isfinite(density)
        flags = values.flags[frame]
        flagged = flags != 0
        base = row * _COLUMNS
        counted_base = base[counted]
        # (row, flag bit) of each flag set: flagged rows are few, so each bit is found on those only
        flag_rows, flag_bits = np.nonzero((flags[flagged, None] >> np.arange(len(FLAGS))) & 1)
        sums = self._sums.reshape(-1)
        np.add.at(
            sums,
            np.concatenate([
                base + _COUNT + density_class,
                base + _WEIGHT + density_class,
                counted_base + _DENSITY_SUM,
                counted_base + _COUNTED_WEIGHT,
                base[flagged] + _FLAGGED_WEIGHT,
                base[flagged][flag_rows] + _FLAG_WEIGHT + flag_bits,
            ]),
            np.concatenate([
                np.ones(row.size, dtype=np.float32),
                weight,
                weight[counted] * density[counted],
                weight[counted],
                weight[flagged],
                weight[flagged][flag_rows],
            ]),
        )
        np.minimum.at(sums, counted_base + _DENSITY_MIN, density[counted])
        np.maximum.at(sums, counted_base + _DENSITY_MAX, density[counted])
        np.bitwise_or.at(self._covered.reshape(-1), row, coverage.subpixels)

    def merge(self, other: MapAccumulator) -> None:
        """Add another accumulator's frames (e.g. one band's into the all-bands maps)."""
        if (other.order, other.levels) != (self.order, self.levels):
            raise ValueError("accumulators of different orders cannot be merged")
        self.frames += other.frames
        batch = max(1, _BATCH_PIXELS // self._block_size)
        for start in range(0, other._used, batch):
            theirs = np.arange(start, min(start + batch, other._used))
            ours = self._slots(other._block_of_slot[theirs])
            incoming = other._sums[theirs]
            mine = self._sums[ours]
            mine[:, :, _SUMMED] += incoming[:, :, _SUMMED]
            np.minimum(mine[:, :, _DENSITY_MIN], incoming[:, :, _DENSITY_MIN], out=mine[:, :, _DENSITY_MIN])
            np.maximum(mine[:, :, _DENSITY_MAX], incoming[:, :, _DENSITY_MAX], out=mine[:, :, _DENSITY_MAX])
            self._sums[ours] = mine
            self._covered[ours] |= other._covered[theirs]

    def statistics(self) -> PixelStatistics:
        """Every statistic of :data:`STATISTICS` on the pixels that frames cover."""
        # Slots in block order give the pixels in ascending order.
        slots = np.argsort(self._block_of_slot[: self._used], kind="stable")
        batch = max(1, _BATCH_PIXELS // self._block_size)
        batches = [slots[start:start + batch] for start in range(0, slots.size, batch)]
        kept = [int(np.count_nonzero(self._frames(part))) for part in batches]
        ends = np.cumsum(kept)
        pixels = np.empty(int(ends[-1]) if kept else 0, dtype=np.int64)
        values: dict[str, np.ndarray] = {}
        for part, stop, count in zip(batches, ends.tolist(), kept):
            part_pixels, part_values = self._statistics(part)
            pixels[stop - count:stop] = part_pixels
            for name, value in part_values.items():
                if name not in values:
                    values[name] = np.empty((pixels.size, *value.shape[1:]), dtype=value.dtype)
                values[name][stop - count:stop] = value
        if not values:
            _, values = self._statistics(np.zeros(0, dtype=np.int64))
        return PixelStatistics(order=self.order, pixels=pixels, values=values)

    def _frames(self, slots: np.ndarray) -> np.ndarray:
        """Frames covering each pixel of some slots."""
        return self._sums[slots][:, :, _COUNT:_WEIGHT].sum(axis=2).reshape(-1)

    def _statistics(self, slots: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The covered pixels of some slots and their statistics."""
        pixels = ((self._block_of_slot[slots, None] << self._block_shift) + np.arange(self._block_size)).reshape(-1)
        sums = self._sums[slots].reshape(-1, _COLUMNS)
        keep = sums[:, _COUNT:_WEIGHT].sum(axis=1) > 0
        pixels, sums = pixels[keep], sums[keep].astype(np.float64)
        covered = popcount(self._covered[slots].reshape(-1)[keep])
        counts = np.rint(sums[:, _COUNT:_WEIGHT]).astype(np.int32)
        weights = sums[:, _WEIGHT:_DENSITY_SUM]
        total_weight = weights.sum(axis=1)
        counted_weight = sums[:, _COUNTED_WEIGHT]
        has_density = counted_weight > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            density_mean = np.where(has_density, sums[:, _DENSITY_SUM] / counted_weight, np.nan)
        # argmax over the reversed classes: ties go to the higher (more crowded) class.
        mode = DENSITY_CLASSES - 1 - np.argmax(weights[:, ::-1], axis=1)
        values = {
            "class_max": np.max(np.where(counts > 0, np.arange(DENSITY_CLASSES), -1), axis=1).astype(np.int16),
            "class_mode": mode.astype(np.int16),
            "class_histogram": counts,
            "bright_density_mean": density_mean,
            "bright_density_min": np.where(has_density, sums[:, _DENSITY_MIN], np.nan),
            "bright_density_max": np.where(has_density, sums[:, _DENSITY_MAX], np.nan),
            "bypassed_frames": counts[:, BYPASSED_CLASS].copy(),
            "bypassed_fraction": weights[:, BYPASSED_CLASS] / total_weight,
            "frames": counts.sum(axis=1),
            "covered_fraction": covered / self._subpixels,
            "flagged_fraction": sums[:, _FLAGGED_WEIGHT] / total_weight,
            "flag_fractions": sums[:, _FLAG_WEIGHT:_COLUMNS] / total_weight[:, None],
        }
        for name, value in values.items():
            if value.dtype == np.float64:
                values[name] = value.astype(np.float32)  # what the files hold; halves the memory
        return pixels, values

    def _slots(self, blocks: np.ndarray) -> np.ndarray:
        """Slots of coverage ``blocks`` (any order, repeats allowed), allocating the new ones."""
        slots = self._slot_of_block[blocks]
        missing = slots < 0
        if np.any(missing):
            new_blocks = np.unique(blocks[missing])
            self._grow(self._used + new_blocks.size)
            new_slots = np.arange(self._used, self._used + new_blocks.size)
            self._slot_of_block[new_blocks] = new_slots
            self._block_of_slot[new_slots] = new_blocks
            self._sums[new_slots] = _EMPTY_ROW
            self._used += new_blocks.size
            slots = self._slot_of_block[blocks]
        return slots

    def _grow(self, needed: int) -> None:
        capacity = self._sums.shape[0]
        if needed <= capacity:
            return
        capacity = min(max(needed, capacity + capacity // 2 + 8), self._slot_of_block.size)
        logger.debug("map accumulator grows to %d blocks", capacity)
        sums = np.zeros((capacity, self._block_size, _COLUMNS), dtype=np.float32)
        sums[: self._used] = self._sums[: self._used]
        covered = np.zeros((capacity, self._block_size), dtype=self._mask_dtype)
        covered[: self._used] = self._covered[: self._used]
        block_of_slot = np.zeros(capacity, dtype=np.int64)
        block_of_slot[: self._used] = self._block_of_slot[: self._used]
        self._sums, self._covered, self._block_of_slot = sums, covered, block_of_slot

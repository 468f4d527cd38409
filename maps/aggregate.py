"""Per-pixel statistics of frames on a HEALPix grid, accumulated chunk by chunk.

:class:`MapAccumulator` keeps, for every output pixel some frame covers, the
sums that the statistics need (frames and summed covered fraction per density
class, the coverage-weighted bright-star density with its minimum and
maximum, the flagged coverage) and, at the sampling's mask order, which
sub-pixels at least one frame covers (a bit each, one or more mask words per
pixel), with the covered fraction that frames sampled deeper than that order
add on their own.  Memory is held per coverage block (as healsparse
does): a block of 64 pixels costs nothing until a frame touches it, so a
regional catalog makes small accumulators and an all-sky one at nside 1024
takes about 1.3 GB (100 bytes per pixel, and a bit per sub-pixel; 4 bytes
more where frames are sampled deeper than the mask).
Accumulators of several bands merge into the all-bands one.  Adding and
merging run as compiled loops (Numba) over the rows; the statistics are
worked out when a writer asks for them (the one-value ones together, in one
pass), so that memory never holds every map of a band at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numba
import numpy as np

from density_db.flags import FLAGS
from density_db.labels import BYPASSED_CLASS, N_CLASSES
from density_db.maps.rasterize import Coverage, Sampling, subpixel_mask_dtype

logger = logging.getLogger(__name__)

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

    @property
    def dtype(self) -> np.dtype:
        """What the values are made and stored as: int16 classes, int32 frame counts, float32 otherwise."""
        return np.dtype({"class": np.int16, "count": np.int32}.get(self.kind, np.float32))


STATISTICS = (
    Statistic("class_max", "", "highest density class of the frames covering the pixel", "class"),
    Statistic(
        "class_mode",
        "",
        "density class with the largest summed covered fraction in the pixel (ties: the higher class)",
        "class",
    ),
    Statistic(
        "class_histogram",
        "frames",
        "frames of each density class covering the pixel (fields class_0 ... class_5)",
        "count",
        tuple(f"class_{index}" for index in range(N_CLASSES)),
    ),
    Statistic(
        "bright_density_mean",
        "stars/deg2",
        "bright stars per square degree (bright_count / valid area), mean weighted by covered fraction",
        "density",
    ),
    Statistic("bright_density_min", "stars/deg2", "lowest bright-star density of the covering frames", "density"),
    Statistic("bright_density_max", "stars/deg2", "highest bright-star density of the covering frames", "density"),
    Statistic("bypassed_frames", "frames", "class-5 frames (no bright-star count) covering the pixel", "count"),
    Statistic(
        "bypassed_fraction",
        "",
        "share of the pixel's summed covered fraction that comes from class-5 frames",
        "fraction",
    ),
    Statistic(
        "frames", "frames", "frames covering the pixel (a sub-pixel centre inside, or the frame's centre)", "count"
    ),
    Statistic("covered_fraction", "", "fraction of the pixel inside at least one frame", "fraction"),
    Statistic(
        "flagged_fraction",
        "",
        "share of the pixel's summed covered fraction that comes from flagged frames (flags != 0)",
        "fraction",
    ),
    Statistic(
        "flag_fractions",
        "",
        "share of the pixel's summed covered fraction that comes from frames with each flag (a field per flag)",
        "fraction",
        tuple(flag.name for flag in FLAGS),
    ),
)
"""Every statistic, in the order they are written."""

STATISTIC_NAMES = tuple(statistic.name for statistic in STATISTICS)

# Columns of the accumulator, per pixel.
_COUNT = 0  # frames of class c at _COUNT + c
_WEIGHT = _COUNT + N_CLASSES  # summed covered fraction of the frames of class c
_DENSITY_SUM = _WEIGHT + N_CLASSES  # sum of covered fraction * bright density, frames with a count
_DENSITY_MIN = _DENSITY_SUM + 1
_DENSITY_MAX = _DENSITY_MIN + 1
_COUNTED_WEIGHT = _DENSITY_MAX + 1  # summed covered fraction of the frames with a count
_FLAGGED_WEIGHT = _COUNTED_WEIGHT + 1
_FLAG_WEIGHT = _FLAGGED_WEIGHT + 1  # summed covered fraction of the frames with flag bit b at _FLAG_WEIGHT + b
# Compiled loops (cached on disk, where a global is frozen at its value then) take the number of flags
# from the arrays' shapes, not from a global that a new flag would change.
_COLUMNS = _FLAG_WEIGHT + len(FLAGS)

_PREALLOCATE_BYTES = 2 << 30
"""Accumulators whose whole sky fits in this (up to nside 1024) reserve it at once instead of growing."""


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


class PixelStatistics(Mapping):
    """The statistics of one map (a band or all bands) on the pixels that frames cover.

    A mapping from statistic name to its values on :attr:`pixels`, worked out
    from the accumulator when asked for and handed over, not kept (asking
    again works them out again): ``(m,)`` arrays, ``(m, k)`` for a statistic
    of ``k`` fields; float statistics are float32, NaN where undefined (e.g.
    bright-star density where every frame is class 5).  The one-value
    statistics that read the sums come out of one pass over the pixels, and
    wait here until asked for.  Valid while the accumulator it came from is not
    changed.

    Attributes
    ----------
    order
        HEALPix order of the maps (NESTED).
    pixels
        Covered pixels, ascending (int64).
    """

    def __init__(self, accumulator: MapAccumulator, rows: np.ndarray, pixels: np.ndarray) -> None:
        self.order = accumulator.order
        self.pixels = pixels
        self._accumulator = accumulator
        self._rows = rows
        self._waiting: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()  # writers ask from several threads

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in STATISTIC_NAMES:
            raise KeyError(name)
        if name not in _CELL_STATISTIC_NAMES:
            return self._accumulator._statistic(name, self._rows)
        with self._lock:
            if name not in self._waiting:
                self._waiting = self._accumulator._cell_statistics(self._rows)
            return self._waiting.pop(name)

    def __iter__(self) -> Iterator[str]:
        return iter(STATISTIC_NAMES)

    def __len__(self) -> int:
        return len(STATISTIC_NAMES)


class MapAccumulator:
    """Sums per output pixel, and covered sub-pixels, over the chunks of frames added.

    Parameters
    ----------
    sampling : Sampling
        Output order, and the mask order of the covered sub-pixels (each
        output pixel keeps ``sampling.words`` mask words of ``4**sampling.mask_levels`` bits).
    """

    def __init__(self, *, sampling: Sampling) -> None:
        self.sampling = sampling
        self.order = sampling.order
        coverage_order = max(0, self.order - BLOCK_LEVELS)
        self._block_shift = 2 * (self.order - coverage_order)
        self._block_size = 1 << self._block_shift
        self._subpixels = sampling.words << (2 * sampling.mask_levels)
        self._slot_of_block = np.full(12 << (2 * coverage_order), -1, dtype=np.int64)
        self._block_of_slot = np.zeros(0, dtype=np.int64)
        self._used = np.zeros(1, dtype=np.int64)  # an array, so that the compiled loops can allocate slots
        self._sums = np.zeros((0, self._block_size, _COLUMNS), dtype=np.float32)
        self._mask_dtype = subpixel_mask_dtype(sampling.mask_levels)
        self._covered = np.zeros((0, self._block_size, sampling.words), dtype=self._mask_dtype)
        # Covered fraction of frames sampled deeper than the mask, per pixel: kept from the first such frame on.
        self._unmasked = np.zeros((0, self._block_size), dtype=np.float32)
        self._keeps_unmasked = False
        blocks = self._slot_of_block.size
        pixel_bytes = _COLUMNS * 4 + self._mask_dtype.itemsize * sampling.words
        if blocks * self._block_size * pixel_bytes <= _PREALLOCATE_BYTES:
            # Zeroed memory is only made resident when written: reserving the whole sky costs
            # nothing until blocks are used, and spares the copies of growing.
            self._grow(blocks)
        self.frames = 0

    @property
    def nbytes(self) -> int:
        """Memory held by the accumulator."""
        return self._sums.nbytes + self._covered.nbytes + self._unmasked.nbytes + self._slot_of_block.nbytes

    def add(self, coverage: Coverage, values: FrameValues) -> None:
        """Add one chunk of frames: their covered fractions and sub-pixels, and what they carry.

        Parameters
        ----------
        coverage : Coverage
            Cells and covered sub-pixels of the chunk's frames, sampled as this accumulator's maps.
        values : FrameValues
            Per frame of the chunk, indexed by ``coverage.frame_index``.
        """
        if coverage.sampling != self.sampling:
            raise ValueError(f"expected coverage sampled as {self.sampling}, got {coverage.sampling}")
        self.frames += int(values.density_class.size)
        if np.any(coverage.unmasked_fraction):
            self._keep_unmasked()
        cells = (
            coverage.frame_index,
            coverage.pixel,
            coverage.fraction.astype(np.float32),
            coverage.unmasked_fraction.astype(np.float32),
            coverage.subpixels,
            values.density_class.astype(np.int64),
            values.bright_density.astype(np.float32),
            values.flags.astype(np.int64),
        )
        start = 0
        while (start := _add_cells(*cells, start, self._unmasked, *self._layout())) < coverage.pixel.size:
            self._grow(self._used[0] + 1)
        union = (coverage.union_pixel, coverage.union_bits, 2 * (self.sampling.row_order - self.order))
        start = 0
        while (start := _add_union(*union, start, *self._layout())) < coverage.union_pixel.size:
            self._grow(self._used[0] + 1)

    def merge(self, other: MapAccumulator) -> None:
        """Add another accumulator's frames (e.g. one band's into the all-bands maps)."""
        if other.sampling != self.sampling:
            raise ValueError("accumulators sampled differently cannot be merged")
        self.frames += other.frames
        if other._keeps_unmasked:
            self._keep_unmasked()
        start = 0
        while (
            start := _merge_slots(
                other._block_of_slot[: other._used[0]],
                other._sums,
                other._covered,
                other._unmasked,
                self._unmasked,
                start,
                *self._layout(),
            )
        ) < other._used[0]:
            self._grow(self._used[0] + 1)

    def statistics(self) -> PixelStatistics:
        """The statistics of :data:`STATISTICS` on the pixels that frames cover (each worked out when read)."""
        used = self._used[0]
        # Slots in block order give the pixels in ascending order.
        slots = np.argsort(self._block_of_slot[:used], kind="stable")
        rows = _covered_rows(slots, self._sums)
        pixels = (self._block_of_slot[rows // self._block_size] << self._block_shift) + rows % self._block_size
        return PixelStatistics(self, rows, pixels)

    def _layout(self) -> tuple:
        return self._block_shift, self._slot_of_block, self._block_of_slot, self._used, self._sums, self._covered

    def _cell_statistics(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The statistics of :data:`_CELL_STATISTICS` on the accumulator ``rows``, in one pass."""
        values = {statistic.name: np.empty(rows.size, dtype=statistic.dtype) for statistic in _CELL_STATISTICS}
        _cell_statistic_values(self._sums.reshape(-1, _COLUMNS), rows, *values.values())
        return values

    def _statistic(self, name: str, rows: np.ndarray) -> np.ndarray:
        """A statistic not in :data:`_CELL_STATISTICS` on the accumulator ``rows`` (slot * block size + pixel)."""
        statistic = STATISTICS[STATISTIC_NAMES.index(name)]
        values = np.empty((rows.size, len(statistic.fields) or 1), dtype=statistic.dtype)
        _statistic_values(
            STATISTIC_NAMES.index(name),
            self._sums.reshape(-1, _COLUMNS),
            self._covered.reshape(-1, self.sampling.words),
            self._unmasked.reshape(-1),
            rows,
            self._subpixels,
            values,
        )
        return values if statistic.fields else values[:, 0]

    def _grow(self, needed: int) -> None:
        capacity = self._sums.shape[0]
        if needed <= capacity:
            return
        capacity = min(max(needed, capacity + capacity // 2 + 8), self._slot_of_block.size)
        logger.debug("map accumulator grows to %d blocks", capacity)
        used = self._used[0]
        sums = np.zeros((capacity, self._block_size, _COLUMNS), dtype=np.float32)
        sums[:used] = self._sums[:used]
        covered = np.zeros((capacity, *self._covered.shape[1:]), dtype=self._mask_dtype)
        covered[:used] = self._covered[:used]
        block_of_slot = np.zeros(capacity, dtype=np.int64)
        block_of_slot[:used] = self._block_of_slot[:used]
        self._sums, self._covered, self._block_of_slot = sums, covered, block_of_slot
        if self._keeps_unmasked:
            self._keep_unmasked()

    def _keep_unmasked(self) -> None:
        """Make (or grow) the per-pixel covered fraction of deep-sampled frames to the slots' capacity."""
        self._keeps_unmasked = True
        capacity = self._sums.shape[0]
        if self._unmasked.shape[0] == capacity:
            return
        unmasked = np.zeros((capacity, self._block_size), dtype=np.float32)
        unmasked[: self._unmasked.shape[0]] = self._unmasked
        self._unmasked = unmasked


# -- compiled loops ----------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _slot(block, slot_of_block, block_of_slot, used, sums) -> int:
    """The slot of a coverage block, allocated (its sums set empty) if new; -1 when no slot is left."""
    slot = slot_of_block[block]
    if slot >= 0:
        return slot
    slot = used[0]
    if slot >= sums.shape[0]:
        return -1
    slot_of_block[block] = slot
    block_of_slot[slot] = block
    for pixel in range(sums.shape[1]):
        sums[slot, pixel, _DENSITY_MIN] = np.inf
        sums[slot, pixel, _DENSITY_MAX] = -np.inf
    used[0] = slot + 1
    return slot


@numba.njit(cache=True, nogil=True)
def _add_cells(
    frame,
    pixel,
    fraction,
    unmasked_fraction,
    subpixels,
    density_class,
    bright_density,
    flags,
    start,
    unmasked,
    shift,
    slot_of_block,
    block_of_slot,
    used,
    sums,
    covered,
) -> int:
    """Add cells from ``start`` on; returns the cell it stopped at (all cells, or one needing a new slot).

    A cell's sub-pixels go into the pixel's first mask word: where a pixel has
    several, the cells carry none and the union rows (:func:`_add_union`) do.
    """
    block_size = sums.shape[1]
    for row in range(start, pixel.size):
        slot = _slot(pixel[row] >> shift, slot_of_block, block_of_slot, used, sums)
        if slot < 0:
            return row
        cell = sums[slot, pixel[row] & (block_size - 1)]
        f, weight = frame[row], fraction[row]
        cell[_COUNT + density_class[f]] += 1.0
        cell[_WEIGHT + density_class[f]] += weight
        if unmasked_fraction[row] != 0:  # only then has the accumulator made `unmasked`
            unmasked[slot, pixel[row] & (block_size - 1)] += unmasked_fraction[row]
        density = bright_density[f]
        if np.isfinite(density):
            cell[_DENSITY_SUM] += weight * density
            cell[_DENSITY_MIN] = min(cell[_DENSITY_MIN], density)
            cell[_DENSITY_MAX] = max(cell[_DENSITY_MAX], density)
            cell[_COUNTED_WEIGHT] += weight
        if flags[f] != 0:
            cell[_FLAGGED_WEIGHT] += weight
            for bit in range(cell.size - _FLAG_WEIGHT):  # from the array: a cached compilation keeps no count
                if (flags[f] >> bit) & 1:
                    cell[_FLAG_WEIGHT + bit] += weight
        covered[slot, pixel[row] & (block_size - 1), 0] |= subpixels[row]
    return pixel.size


@numba.njit(cache=True, nogil=True)
def _add_union(
    union_pixel,
    union_bits,
    word_shift,
    start,
    shift,
    slot_of_block,
    block_of_slot,
    used,
    sums,
    covered,
) -> int:
    """OR the union rows from ``start`` on into the pixels' mask words; returns the row it stopped at.

    A union row's pixel is ``word_shift`` bits finer than the output pixel: its low bits pick the word.
    """
    block_size = sums.shape[1]
    words = covered.shape[2]
    for row in range(start, union_pixel.size):
        pixel = union_pixel[row] >> word_shift
        slot = _slot(pixel >> shift, slot_of_block, block_of_slot, used, sums)
        if slot < 0:
            return row
        covered[slot, pixel & (block_size - 1), union_pixel[row] & (words - 1)] |= union_bits[row]
    return union_pixel.size


@numba.njit(cache=True, nogil=True)
def _merge_slots(
    their_blocks,
    their_sums,
    their_covered,
    their_unmasked,
    unmasked,
    start,
    shift,
    slot_of_block,
    block_of_slot,
    used,
    sums,
    covered,
) -> int:
    """Add another accumulator's slots from ``start`` on; returns the slot it stopped at (as :func:`_add_cells`)."""
    for theirs in range(start, their_blocks.size):
        slot = _slot(their_blocks[theirs], slot_of_block, block_of_slot, used, sums)
        if slot < 0:
            return theirs
        for pixel in range(sums.shape[1]):
            mine, incoming = sums[slot, pixel], their_sums[theirs, pixel]
            for column in range(sums.shape[2]):
                if column == _DENSITY_MIN:
                    mine[column] = min(mine[column], incoming[column])
                elif column == _DENSITY_MAX:
                    mine[column] = max(mine[column], incoming[column])
                else:
                    mine[column] += incoming[column]
            for word in range(covered.shape[2]):
                covered[slot, pixel, word] |= their_covered[theirs, pixel, word]
            if their_unmasked.size:
                unmasked[slot, pixel] += their_unmasked[theirs, pixel]
    return their_blocks.size


@numba.njit(cache=True, nogil=True)
def _covered_rows(slots, sums):
    """Rows (slot * block size + pixel) of the pixels some frame covers, slot by slot in the order given."""
    block_size = sums.shape[1]
    rows = np.empty(slots.size * block_size, dtype=np.int64)
    found = 0
    for slot in slots:
        for pixel in range(block_size):
            frames = 0.0
            for density_class in range(N_CLASSES):
                frames += sums[slot, pixel, _COUNT + density_class]
            if frames > 0:
                rows[found] = slot * block_size + pixel
                found += 1
    return rows[:found]


_CELL_STATISTICS = tuple(
    statistic
    for statistic in STATISTICS
    if statistic.name
    in (
        "class_max",
        "class_mode",
        "bright_density_mean",
        "bright_density_min",
        "bright_density_max",
        "bypassed_frames",
        "bypassed_fraction",
        "frames",
        "flagged_fraction",
    )
)
"""One-value statistics made from the sums, in the order :func:`_cell_statistic_values` fills them."""
_CELL_STATISTIC_NAMES = frozenset(statistic.name for statistic in _CELL_STATISTICS)

_CLASS_HISTOGRAM, _COVERED_FRACTION, _FLAG_FRACTIONS = (
    STATISTIC_NAMES.index(name) for name in ("class_histogram", "covered_fraction", "flag_fractions")
)


@numba.njit(cache=True, nogil=True)
def _cell_statistic_values(
    sums,
    rows,
    class_max,
    class_mode,
    density_mean,
    density_min,
    density_max,
    bypassed_frames,
    bypassed_fraction,
    frames,
    flagged_fraction,
):
    """Every statistic of :data:`_CELL_STATISTICS` of the pixels at ``rows`` of the sums (``(pixels, _COLUMNS)``).

    One pass: each pixel's sums are read once for all of them.  Undefined floats are NaN.
    """
    for out, row in enumerate(rows):
        cell = sums[row]
        covering = 0.0
        total_weight = 0.0
        highest = -1
        mode = N_CLASSES - 1  # ties go to the higher (more crowded) class
        for density_class in range(N_CLASSES - 1, -1, -1):
            covering += cell[_COUNT + density_class]
            total_weight += np.float64(cell[_WEIGHT + density_class])
            if highest < 0 and cell[_COUNT + density_class] > 0:
                highest = density_class
            if cell[_WEIGHT + density_class] > cell[_WEIGHT + mode]:
                mode = density_class
        counted_weight = np.float64(cell[_COUNTED_WEIGHT])
        class_max[out] = highest
        class_mode[out] = mode
        density_mean[out] = cell[_DENSITY_SUM] / counted_weight if counted_weight > 0 else np.nan
        density_min[out] = cell[_DENSITY_MIN] if counted_weight > 0 else np.nan
        density_max[out] = cell[_DENSITY_MAX] if counted_weight > 0 else np.nan
        bypassed_frames[out] = np.rint(cell[_COUNT + BYPASSED_CLASS])
        bypassed_fraction[out] = cell[_WEIGHT + BYPASSED_CLASS] / total_weight
        frames[out] = np.rint(covering)
        flagged_fraction[out] = cell[_FLAGGED_WEIGHT] / total_weight


@numba.njit(cache=True, nogil=True)
def _statistic_values(statistic, sums, covered, unmasked, rows, subpixels, values):
    """Fill ``values`` (``(len(rows), fields)``) with the class histogram, covered fraction or flag fractions
    (the statistic's index in :data:`STATISTICS`) of the pixels at ``rows`` of the sums and sub-pixel masks;
    the covered fraction adds ``unmasked`` (the fraction of frames sampled deeper than the masks) if it is not empty.
    """
    for out, row in enumerate(rows):
        if statistic == _COVERED_FRACTION:
            bits = 0
            for word in range(covered.shape[1]):
                mask = np.uint64(covered[row, word])
                while mask:
                    mask &= mask - np.uint64(1)
                    bits += 1
            values[out, 0] = min(bits / subpixels + unmasked[row], 1.0) if unmasked.size else bits / subpixels
            continue
        cell = sums[row]
        if statistic == _CLASS_HISTOGRAM:
            for density_class in range(N_CLASSES):
                values[out, density_class] = np.rint(cell[_COUNT + density_class])
        else:
            total_weight = 0.0
            for density_class in range(N_CLASSES):
                total_weight += np.float64(cell[_WEIGHT + density_class])
            for bit in range(values.shape[1]):
                values[out, bit] = cell[_FLAG_WEIGHT + bit] / total_weight

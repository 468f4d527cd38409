"""The one preprocessing function: a detector image to the model's 2 x 224 x 224 input.

Lai et al. (2026), Sec. 2.3: valid pixels are the finite ones whose
data-quality value is 0; the image is standardised with the mean and standard
deviation of its valid pixels (invalid pixels become 0); the standardised
image and the mask are stacked and area-averaged to 224 x 224 (adaptive
average pooling, PyTorch's bins: ``floor(i * n / 224)`` to
``ceil((i + 1) * n / 224)``, which overlap by a pixel when ``n / 224`` is not
an integer).  Never point sampling: it would drop stars at a 41x reduction.

Because pooling is linear, the pooled standardised image equals
``(pool(x * m) - mean * pool(m)) / std``, so both paths here pool the masked
image and the mask once and standardise the small result:

* :func:`preprocess` (NumPy, CPU) streams the image in row blocks (no
  full-size temporary).  Each block is centred on a fixed typical value in
  one float32 pass (which also byte-swaps FITS data), so sums of squares
  (float64) and per-cell sums (float32 over at most ~42 rows of a cell, then
  float64) have no cancellation; invalid pixels are zeroed and counted only
  in the columns that have any.  The cells are the pieces the overlapping
  pooling bins cut the image into (:class:`CellGrid`); a full-size detector
  takes about twice the time of reading and byte-swapping it;
* :func:`preprocess_tensor` (torch, any device) does the same with
  ``adaptive_avg_pool2d``, for the GPU.

Both are used by training, evaluation, the simulator's dataset mode and
ingest; they agree to float32 precision (``tests/test_preprocessing.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from density_db.errors import InputError
from density_db.labels import INPUT_SIZE

if TYPE_CHECKING:
    import torch

PREPROCESSING_VERSION = 1
"""Recorded with every model and result: bump it when the tensor a given image gives changes."""

_BLOCK_ROWS = 256  # rows per streamed block: ~10 MB of float32 at full width


@dataclass(frozen=True)
class PixelStatistics:
    """Mean and standard deviation of the valid pixels, and how many there are."""

    mean: float
    std: float
    valid_count: int
    pixel_count: int

    @property
    def valid_fraction(self) -> float:
        return self.valid_count / self.pixel_count


def preprocess(
    image: np.ndarray, quality: np.ndarray | None = None, *, size: int = INPUT_SIZE
) -> tuple[np.ndarray, PixelStatistics]:
    """The model input for one detector image, on the CPU.

    Parameters
    ----------
    image
        2-D science image (any float dtype and byte order; NaN/Inf are invalid).
    quality
        Optional data-quality mask of the same shape: non-zero marks a bad pixel.
    size
        Side of the output (224 for the paper's models).

    Returns
    -------
    tensor, statistics
        float32 array ``(2, size, size)`` -- standardised image, valid fraction
        -- and the statistics of the valid pixels.

    Raises
    ------
    InputError
        ``not_2d`` for a wrong shape, ``all_invalid`` when no pixel is valid.
    """
    _check_shapes(image, quality, size)
    grid = CellGrid.for_shape(image.shape, size)
    shift = _typical_value(image, quality)
    centred_sums = np.zeros(grid.cell_shape)
    invalid_counts = np.zeros(grid.cell_shape)
    squares = 0.0
    for rows, cells in grid.row_blocks():
        block = image[rows]
        valid = np.isfinite(block)
        if quality is not None:
            valid &= np.asarray(quality[rows]) == 0
        # One float32 pass centres the block (and byte-swaps FITS data); centred values keep
        # float32 row sums and float64 squares free of cancellation.
        centred = np.subtract(block, np.float32(shift), dtype=np.float32)
        invalid = ~valid
        # Invalid pixels are few and gather in few columns (bad columns, patches, saturated stars):
        # zero and count them there only.
        columns = np.flatnonzero(invalid.any(axis=0))
        if columns.size:
            np.copyto(centred, np.float32(0), where=invalid)
            invalid_counts[cells] += grid.cell_sums_of_columns(invalid[:, columns].view(np.uint8), rows, columns)
        squares += float(np.square(centred).sum(dtype=np.float64))
        centred_sums[cells] = grid.cell_sums(centred, rows, row_dtype=np.float32)
    valid_counts = grid.cell_areas() - invalid_counts
    count = int(valid_counts.sum())
    if count == 0:
        raise InputError("all_invalid", "no valid pixel: every pixel is NaN/Inf or flagged in the data-quality mask")
    # The cells' sums add at most ~42 centred float32 values before float64 takes over.
    centred_mean = float(centred_sums.sum()) / count
    variance = squares / count - centred_mean**2
    statistics = PixelStatistics(shift + centred_mean, _safe_std(variance), count, image.size)
    return model_input(grid, centred_sums + shift * valid_counts, valid_counts, statistics), statistics


def _typical_value(image: np.ndarray, quality: np.ndarray | None) -> float:
    """Median of the valid pixels of a sparse, fixed sample of the image: the shift that centres it."""
    step_y, step_x = max(1, image.shape[0] // 101), max(1, image.shape[1] // 103)
    sample = np.asarray(image[::step_y, ::step_x], dtype=np.float64)
    valid = np.isfinite(sample)
    if quality is not None:
        valid &= np.asarray(quality[::step_y, ::step_x]) == 0
    return float(np.median(sample[valid])) if valid.any() else 0.0


def model_input(
    grid: CellGrid, value_sums: np.ndarray, valid_counts: np.ndarray, statistics: PixelStatistics
) -> np.ndarray:
    """The 2 x size x size input from per-cell sums of valid pixel values and counts.

    Shared by :func:`preprocess` and by the simulator's dataset mode, which
    knows the cell sums without making the full-resolution pixels.
    """
    pooled_image = grid.pool(value_sums)
    pooled_valid = grid.pool(valid_counts)
    standardised = (pooled_image - statistics.mean * pooled_valid) / statistics.std
    return np.stack([standardised, pooled_valid]).astype(np.float32)


def preprocess_tensor(
    image: torch.Tensor, quality: torch.Tensor | None = None, *, size: int = INPUT_SIZE
) -> tuple[torch.Tensor, PixelStatistics]:
    """The model input for one detector image already on a torch device (e.g. CUDA).

    Same result as :func:`preprocess` to float32 precision; statistics in float64.
    """
    import torch
    from torch.nn.functional import adaptive_avg_pool2d

    _check_shapes(image, quality, size)
    valid = torch.isfinite(image)
    if quality is not None:
        valid &= quality == 0
    zero = torch.zeros((), dtype=torch.float32, device=image.device)
    count = int(valid.sum())
    if count == 0:
        raise InputError("all_invalid", "no valid pixel: every pixel is NaN/Inf or flagged in the data-quality mask")
    mean = float(torch.where(valid, image.float(), zero).sum(dtype=torch.float64)) / count
    # Centre before pooling: float32 sums of values near the mean would lose the small differences.
    centred = torch.where(valid, image.float() - mean, zero)
    variance = float((centred * centred).sum(dtype=torch.float64)) / count
    statistics = PixelStatistics(mean, _safe_std(variance), count, image.numel())
    pooled = adaptive_avg_pool2d(torch.stack([centred / statistics.std, valid.float()])[None], size)[0]
    return pooled, statistics


# -- helpers ------------------------------------------------------------------------------


def _check_shapes(image, quality, size: int) -> None:
    if image.ndim != 2:
        raise InputError("not_2d", f"expected a 2-D image, got shape {tuple(image.shape)}")
    if quality is not None and tuple(quality.shape) != tuple(image.shape):
        raise InputError(
            "bad_quality_mask", f"data-quality shape {tuple(quality.shape)} differs from image {tuple(image.shape)}"
        )
    if min(image.shape) < size:
        raise InputError("too_small", f"image {tuple(image.shape)} is smaller than the {size} x {size} model input")


@dataclass(frozen=True)
class _AxisBins:
    """PyTorch's adaptive-pooling bins along one axis, as runs of the segments their edges cut it into.

    Bin ``i`` covers pixels ``floor(i * length / size)`` to ``ceil((i + 1) * length / size)``;
    its sum is the sum of segments ``first[i]`` to ``stop[i]`` (exclusive); segment ``j``
    starts at pixel ``cuts[j]``.
    """

    cuts: np.ndarray
    first: np.ndarray
    stop: np.ndarray
    width: np.ndarray

    @classmethod
    def for_length(cls, length: int, size: int) -> _AxisBins:
        index = np.arange(size)
        starts = (index * length) // size
        ends = -((-(index + 1) * length) // size)
        cuts = np.unique(np.concatenate([starts, ends[:-1]]))
        cuts = cuts[cuts < length]  # an axis shorter than ``size`` has bins ending at its end
        return cls(cuts, np.searchsorted(cuts, starts), np.searchsorted(cuts, ends), (ends - starts).astype(np.float64))

    def segment_of_pixel(self, length: int) -> np.ndarray:
        """Index of the segment each pixel of the axis belongs to."""
        return np.searchsorted(self.cuts, np.arange(length), side="right") - 1

    def combine(self, segment_sums: np.ndarray, *, axis: int) -> np.ndarray:
        """Bin sums along ``axis`` from segment sums."""
        cumulative = np.insert(np.cumsum(segment_sums, axis=axis), 0, 0.0, axis=axis)
        return np.take(cumulative, self.stop, axis=axis) - np.take(cumulative, self.first, axis=axis)


@dataclass(frozen=True)
class CellGrid:
    """The cells that the pooling bins' edges cut an image into (about 447 x 447 for 224 bins).

    Every pooling bin is a whole number of cells, so per-cell sums are all
    that pooling needs; the simulator draws its noise per cell for the same reason.
    """

    shape: tuple[int, int]
    rows: _AxisBins
    columns: _AxisBins

    @classmethod
    def for_shape(cls, shape: tuple[int, int], size: int = INPUT_SIZE) -> CellGrid:
        ny, nx = shape
        return cls((ny, nx), _AxisBins.for_length(ny, size), _AxisBins.for_length(nx, size))

    @property
    def cell_shape(self) -> tuple[int, int]:
        return self.rows.cuts.size, self.columns.cuts.size

    def row_blocks(self):
        """(row slice, cell-row slice) of blocks of about _BLOCK_ROWS rows that end on cell boundaries."""
        cuts, first_cell = self.rows.cuts, 0
        while first_cell < cuts.size:
            last_cell = max(int(np.searchsorted(cuts, cuts[first_cell] + _BLOCK_ROWS, side="right")) - 1, first_cell + 1)
            end = int(cuts[last_cell]) if last_cell < cuts.size else self.shape[0]
            yield slice(int(cuts[first_cell]), end), slice(first_cell, last_cell)
            first_cell = last_cell

    def cell_sums(self, values: np.ndarray, rows: slice, *, row_dtype: type = np.float64) -> np.ndarray:
        """Float64 sums over the cells of a row block (the rows of ``rows``).

        ``row_dtype`` float32 sums the ~41 rows of a cell in single precision
        first (about twice as fast; relative error ~1e-6), for callers that
        do not need the last digits.
        """
        local_cuts = self.rows.cuts[(self.rows.cuts >= rows.start) & (self.rows.cuts < rows.stop)] - rows.start
        by_rows = np.add.reduceat(values, local_cuts, axis=0, dtype=row_dtype)
        return np.add.reduceat(by_rows, self.columns.cuts, axis=1, dtype=np.float64)

    def tensor_cell_sums(self, values) -> np.ndarray:  # values: torch.Tensor of the whole image
        """Float64 per-cell sums of a whole image held in a torch tensor (on any device)."""
        import torch

        device = values.device
        row_cells = torch.from_numpy(self.rows.segment_of_pixel(self.shape[0])).to(device)
        column_cells = torch.from_numpy(self.columns.segment_of_pixel(self.shape[1])).to(device)
        by_rows = torch.zeros((self.rows.cuts.size, self.shape[1]), dtype=torch.float64, device=device)
        by_rows.index_add_(0, row_cells, values.to(torch.float64))
        cells = torch.zeros(self.cell_shape, dtype=torch.float64, device=device)
        cells.index_add_(1, column_cells, by_rows)
        return cells.cpu().numpy()

    def cell_sums_of_columns(self, values: np.ndarray, rows: slice, columns: np.ndarray) -> np.ndarray:
        """Per-cell sums of a row block of which only ``columns`` (sorted) are given, the rest being 0."""
        local_cuts = self.rows.cuts[(self.rows.cuts >= rows.start) & (self.rows.cuts < rows.stop)] - rows.start
        by_rows = np.add.reduceat(values, local_cuts, axis=0, dtype=np.float64)
        sums = np.zeros((local_cuts.size, self.columns.cuts.size))
        np.add.at(sums, (slice(None), self.columns.segment_of_pixel(self.shape[1])[columns]), by_rows)
        return sums

    def cell_areas(self) -> np.ndarray:
        """Pixels in each cell."""
        row_widths = np.diff(self.rows.cuts, append=self.shape[0])
        column_widths = np.diff(self.columns.cuts, append=self.shape[1])
        return np.outer(row_widths, column_widths).astype(np.float64)

    def pool(self, cell_sums: np.ndarray) -> np.ndarray:
        """Bin means from per-cell sums."""
        sums = self.columns.combine(self.rows.combine(cell_sums, axis=0), axis=1)
        return sums / np.outer(self.rows.width, self.columns.width)


def _safe_std(variance: float) -> float:
    """Standard deviation, 1 for a constant image (its standardised pixels are then all 0)."""
    return float(np.sqrt(variance)) if variance > 0 else 1.0

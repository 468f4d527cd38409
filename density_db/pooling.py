"""The cells the model input's pooling bins cut an image into, shared by preprocessing and the simulator.

The model input averages a detector image over 224 x 224 bins with
PyTorch's adaptive-pooling edges (``floor(i * n / 224)`` to
``ceil((i + 1) * n / 224)``), which overlap by a pixel when ``n / 224`` is
not an integer.  Their edges cut the image into about 447 x 447 *cells*;
every bin is a whole number of cells, so per-cell sums are all that pooling
needs.  :mod:`density_db.inference.preprocessing` sums an image's pixels per
cell; the simulator's dataset mode draws its noise per cell
(:mod:`density_db.simulate.noise`) for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from density_db.labels import INPUT_SIZE

BLOCK_ROWS = 256
"""Rows per streamed block: about 10 MB of float32 at a detector's full width."""


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
        """(row slice, cell-row slice) of blocks of about :data:`BLOCK_ROWS` rows that end on cell boundaries."""
        cuts, first_cell = self.rows.cuts, 0
        while first_cell < cuts.size:
            last_cell = max(int(np.searchsorted(cuts, cuts[first_cell] + BLOCK_ROWS, side="right")) - 1, first_cell + 1)
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

    def bin_sums(self, cell_sums: np.ndarray) -> np.ndarray:
        """Bin sums from per-cell sums (a cell on the pixel two bins share counts in both)."""
        return self.columns.combine(self.rows.combine(cell_sums, axis=0), axis=1)

    def pool(self, cell_sums: np.ndarray) -> np.ndarray:
        """Bin means from per-cell sums."""
        return self.bin_sums(cell_sums) / np.outer(self.rows.width, self.columns.width)

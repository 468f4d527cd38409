"""Noise drawn per pooling cell first, then per pixel given the cell totals.

The model input only needs, per cell of the preprocessing grid
(:class:`~density_db.pooling.CellGrid`, ~447 x 447 cells on
a detector), the sum of the valid pixels, plus the mean and standard
deviation of all valid pixels.  So the simulator draws its noise in two
stages, which together are exactly the per-pixel model
``z_i ~ N(0, v_i)``, ``v_i = lambda_i + READ_NOISE_E^2``, independent:

1. per cell, the total ``T_c ~ N(0, V_c)``, ``V_c = sum of v_i`` over its valid pixels;
2. per pixel, ``z_i ~ N(0, v_i)`` conditioned on its cell's total:
   ``z_i + v_i (T_c - sum_c z) / V_c`` (for Gaussians this is the exact
   conditional distribution, covariance ``diag(v) - v v^T / V``).

Exposures mode does both stages and writes the pixels.  Dataset mode stops
after stage 1: the cell sums are then known exactly, and the mean too; the
variance of the valid pixels is its expectation given the cell totals
(computable from per-cell sums of ``lambda`` and ``lambda^2``), which
differs from the realised one by about ``sqrt(2 / N)``, 1.5e-4 for a
full-size detector.  Both paths draw the same cell totals from the same
random stream, so for a seed the dataset tensor equals the one made by
preprocessing the written file, to that precision (``tests/test_simulate.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from density_db.pooling import CellGrid, PixelStatistics
from density_db.simulate.photometry import DARK_E_PER_S, GAIN, READ_NOISE_E

_READ_VARIANCE = READ_NOISE_E**2


@dataclass(frozen=True)
class CellNoise:
    """Per-cell sums over valid pixels of the expected electrons, and the cells' noise totals."""

    grid: CellGrid
    valid_counts: np.ndarray
    electron_sums: np.ndarray
    electron_squares: np.ndarray
    totals: np.ndarray

    @property
    def variances(self) -> np.ndarray:
        """``V_c``: the noise variance of each cell's sum, in electrons^2."""
        return self.electron_sums + self.valid_counts * _READ_VARIANCE

    @classmethod
    def draw(cls, expected: np.ndarray, quality: np.ndarray, grid: CellGrid, rng: np.random.Generator) -> CellNoise:
        """Sum the expected electrons per cell and draw each cell's noise total (stage 1)."""
        counts, sums, squares = (np.zeros(grid.cell_shape) for _ in range(3))
        for rows, cells in grid.row_blocks():
            valid = quality[rows] == 0
            electrons = np.where(valid, expected[rows], np.float32(0))
            # single precision within a cell's rows is plenty for noise variances and moments
            counts[cells] = grid.cell_sums(valid, rows, row_dtype=np.float32)
            sums[cells] = grid.cell_sums(electrons, rows, row_dtype=np.float32)
            squares[cells] = grid.cell_sums(electrons * electrons, rows, row_dtype=np.float32)
        return cls._with_totals(grid, counts, sums, squares, rng)

    @classmethod
    def draw_on_device(cls, expected, quality, grid: CellGrid, rng: np.random.Generator) -> CellNoise:
        """:meth:`draw` for torch tensors (e.g. on CUDA); the totals come from the same NumPy stream."""
        valid = quality == 0
        electrons = expected * valid
        return cls._with_totals(
            grid,
            grid.tensor_cell_sums(valid),
            grid.tensor_cell_sums(electrons),
            grid.tensor_cell_sums(electrons * electrons),
            rng,
        )

    @classmethod
    def _with_totals(cls, grid: CellGrid, counts, sums, squares, rng: np.random.Generator) -> CellNoise:
        variances = sums + counts * _READ_VARIANCE
        totals = rng.standard_normal(grid.cell_shape) * np.sqrt(variances)
        return cls(grid, counts, sums, squares, totals)

    def observe(
        self, expected: np.ndarray, quality: np.ndarray, rng: np.random.Generator, exposure_seconds: float
    ) -> None:
        """Stage 2, in place: expected electrons to a calibrated image in ADU, NaN where ``quality`` is set.

        The pixel noise of every cell adds up to the cell's drawn total.  Each
        row block takes its standard normal deviates from ``rng`` in one call
        (the stream does not depend on how the rest is computed); scaling,
        the cells' sums, the correction and the calibration are two compiled
        passes over the block.
        """
        ny, nx = expected.shape
        row_cells = self.grid.rows.segment_of_pixel(ny)
        column_cells = self.grid.columns.segment_of_pixel(nx)
        variances = self.variances
        dark = np.float32(DARK_E_PER_S * exposure_seconds)
        for rows, cells in self.grid.row_blocks():
            block, block_quality = expected[rows], quality[rows]
            block_cells = row_cells[rows] - cells.start
            noise = rng.standard_normal(block.shape, dtype=np.float32)
            sums = np.zeros((cells.stop - cells.start, column_cells[-1] + 1))
            _scale_noise(noise, block, block_quality, block_cells, column_cells, sums)
            with np.errstate(invalid="ignore", divide="ignore"):
                per_variance = np.where(variances[cells] > 0, (self.totals[cells] - sums) / variances[cells], 0.0)
            _add_noise(block, noise, block_quality, block_cells, column_cells, per_variance.astype(np.float32), dark)

    def value_sums(self, exposure_seconds: float) -> np.ndarray:
        """Per-cell sums of the calibrated valid pixels (ADU), exactly as stage 2 makes them."""
        dark = DARK_E_PER_S * exposure_seconds
        return (self.electron_sums - self.valid_counts * dark + self.totals) / GAIN

    def statistics(self, exposure_seconds: float, pixel_count: int) -> PixelStatistics:
        """Mean (exact) and standard deviation (expected given the cell totals) of the valid pixels, in ADU."""
        count = float(self.valid_counts.sum())
        dark = DARK_E_PER_S * exposure_seconds
        n, sums, squares, totals = self.valid_counts, self.electron_sums, self.electron_squares, self.totals
        variances = self.variances
        signal_squares = squares - 2 * dark * sums + n * dark**2  # sum of (lambda - dark)^2
        signal_times_variance = squares + (_READ_VARIANCE - dark) * sums - dark * _READ_VARIANCE * n
        variance_squares = squares + 2 * _READ_VARIANCE * sums + n * _READ_VARIANCE**2
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = np.where(variances > 0, totals / variances, 0.0)
            noise_squares = np.where(variances > 0, variances + variance_squares * (scale**2 - 1 / variances), 0.0)
        square_sum = (signal_squares.sum() + 2 * (scale * signal_times_variance).sum() + noise_squares.sum()) / GAIN**2
        mean = float(self.value_sums(exposure_seconds).sum()) / count
        variance = square_sum / count - mean**2
        return PixelStatistics(mean, float(np.sqrt(variance)) if variance > 0 else 1.0, int(count), pixel_count)


@numba.njit(cache=True, nogil=True)
def _scale_noise(noise, expected, quality, row_cells, column_cells, sums):
    """Standard normal deviates to pixel noise of variance ``expected + read^2`` (0 where invalid), in place,
    and its sums per cell (cell rows local to the block) into ``sums``."""
    rows, width = noise.shape
    read_variance = np.float32(_READ_VARIANCE)
    for row in range(rows):
        cell_row = row_cells[row]
        for column in range(width):
            if quality[row, column] != 0:
                noise[row, column] = 0.0
                continue
            value = noise[row, column] * np.sqrt(expected[row, column] + read_variance)
            noise[row, column] = value
            sums[cell_row, column_cells[column]] += value


@numba.njit(cache=True, nogil=True)
def _add_noise(expected, noise, quality, row_cells, column_cells, per_variance, dark):
    """Expected electrons to calibrated ADU in place: plus the noise, corrected so that each cell's noise adds
    up to its total (``variance * per_variance`` of the cell), minus the dark, over the gain; NaN where invalid."""
    rows, width = expected.shape
    read_variance = np.float32(_READ_VARIANCE)
    gain = np.float32(GAIN)
    for row in range(rows):
        cell_row = row_cells[row]
        for column in range(width):
            if quality[row, column] != 0:
                expected[row, column] = np.nan
                continue
            electrons = expected[row, column]
            correction = (electrons + read_variance) * per_variance[cell_row, column_cells[column]]
            expected[row, column] = (electrons + noise[row, column] + correction - dark) / gain

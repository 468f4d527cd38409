"""The one preprocessing function: a detector image to the model's 224 x 224 input.

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
  pooling bins cut the image into (:class:`density_db.pooling.CellGrid`); a full-size detector
  takes about the time of reading and byte-swapping it.  Version 2 streams
  the image once: the point-source pass hands each of its blocks over, and
  the same sums are taken from it;
* :func:`preprocess_tensor` (torch, any device) does the same with
  ``adaptive_avg_pool2d``, for the GPU.

Both are used by training, evaluation, the simulator's dataset mode and
ingest; they agree to float32 precision (``tests/test_preprocessing.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from density_db.errors import InputError
from density_db.inference.point_sources import (
    Background,
    Calibration,
    PointSourceCounts,
    count_point_sources,
    count_point_sources_tensor,
)
from density_db.labels import INPUT_SIZE
from density_db.pooling import CellGrid, PixelStatistics

if TYPE_CHECKING:
    import torch

PAPER_PREPROCESSING_VERSION = 1
"""The paper's input (Sec. 2.3): the version of checkpoints that record none."""

DEFAULT_PREPROCESSING_VERSION = 2
"""What ``simulate dataset`` makes by default, and so what new models take; ingest follows each model's own."""

CHANNELS = {
    1: ("image", "valid_fraction"),
    2: ("image", "valid_fraction", "point_like", "bright_point_like"),
}
"""The input's channels by preprocessing version, recorded with every model and dataset.  Version 1 is the
paper's; version 2 adds, per pooling bin, the point-like sources and those brighter than the regression's
limit (:mod:`density_db.inference.point_sources`).  A change to the tensor an image gives is a new version."""


def preprocess(
    image: np.ndarray,
    quality: np.ndarray | None = None,
    *,
    size: int = INPUT_SIZE,
    version: int = 1,
    calibration: Calibration | None = None,
    saturated_bits: int = 0,
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
    version
        1, the paper's two channels, or 2, with the point-source channels (see :data:`CHANNELS`).
    calibration, saturated_bits
        Version 2: the image's zero point, exposure time and PSF, and the
        data-quality bits that mean saturated.

    Returns
    -------
    tensor, statistics
        float32 array ``(channels, size, size)`` -- standardised image, valid
        fraction, and for version 2 the point-like and bright point-like
        sources per bin -- and the statistics of the valid pixels.

    Raises
    ------
    InputError
        ``not_2d`` for a wrong shape, ``all_invalid`` when no pixel is valid.
    ValueError
        For an unknown version, or version 2 without a calibration.
    """
    _check_version(version, calibration)
    _check_shapes(image, quality, size)
    grid = CellGrid.for_shape(image.shape, size)
    # the median of a sparse, fixed sample of valid pixels, the point-source pass's sky too
    background = Background.of_image(image, quality)
    sums = _CentredCellSums(grid, background.level)
    counts = None
    if version == 2:  # one streaming pass makes both: the point sources and the paper's sums
        counts = count_point_sources(
            image, quality, grid, calibration, saturated_bits=saturated_bits, background=background, on_block=sums.add
        )
    else:
        for rows, cells in grid.row_blocks():
            block = image[rows]
            valid = np.isfinite(block)
            if quality is not None:
                valid &= np.asarray(quality[rows]) == 0
            sums.add(rows, cells, block, ~valid)
    valid_counts = grid.cell_areas() - sums.invalid_counts
    count = int(valid_counts.sum())
    if count == 0:
        raise InputError("all_invalid", "no valid pixel: every pixel is NaN/Inf or flagged in the data-quality mask")
    # The cells' sums add at most ~42 centred float32 values before float64 takes over.
    centred_mean = float(sums.centred.sum()) / count
    variance = sums.squares / count - centred_mean**2
    statistics = PixelStatistics(sums.shift + centred_mean, _safe_std(variance), count, image.size)
    tensor = model_input(grid, sums.centred + sums.shift * valid_counts, valid_counts, statistics)
    if counts is not None:
        tensor = np.concatenate([tensor, point_source_channels(grid, counts)])
    return tensor, statistics


class _CentredCellSums:
    """The paper's channels' sums, block by block: valid pixels minus a typical value, per cell; invalid pixels
    per cell; and the sum of squares."""

    def __init__(self, grid: CellGrid, shift: float) -> None:
        self.grid, self.shift = grid, shift
        self.centred = np.zeros(grid.cell_shape)
        self.invalid_counts = np.zeros(grid.cell_shape)
        self.squares = 0.0

    def add(self, rows: slice, cells: slice, block: np.ndarray, invalid: np.ndarray) -> None:
        # One float32 pass centres the block (and byte-swaps FITS data); centred values keep
        # float32 row sums and float64 squares free of cancellation.
        centred = np.subtract(block, np.float32(self.shift), dtype=np.float32)
        # Invalid pixels are few and gather in few columns (bad columns, patches, saturated stars):
        # zero and count them there only.
        columns = np.flatnonzero(invalid.any(axis=0))
        if columns.size:
            np.copyto(centred, np.float32(0), where=invalid)
            self.invalid_counts[cells] += self.grid.cell_sums_of_columns(
                invalid[:, columns].view(np.uint8), rows, columns
            )
        self.squares += float(np.square(centred).sum(dtype=np.float64))
        self.centred[cells] = self.grid.cell_sums(centred, rows, row_dtype=np.float32)


def point_source_channels(grid: CellGrid, counts: PointSourceCounts) -> np.ndarray:
    """Version 2's extra channels: the point-like and bright point-like sources in each pooling bin (float32)."""
    return np.stack([grid.bin_sums(counts.point_like), grid.bin_sums(counts.bright)]).astype(np.float32)


def _check_version(version: int, calibration: Calibration | None) -> None:
    if version not in CHANNELS:
        raise ValueError(f"preprocessing version must be one of {sorted(CHANNELS)}, got {version}")
    if version == 2 and calibration is None:
        raise ValueError("preprocessing version 2 needs the image's calibration (zero point, exposure time, PSF)")


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
    image: torch.Tensor,
    quality: torch.Tensor | None = None,
    *,
    size: int = INPUT_SIZE,
    version: int = 1,
    calibration: Calibration | None = None,
    saturated_bits: int = 0,
) -> tuple[torch.Tensor, PixelStatistics]:
    """The model input for one detector image already on a torch device (e.g. CUDA).

    Same result as :func:`preprocess` to float32 precision (the point-source
    channels exactly); statistics in float64.
    """
    import torch
    from torch.nn.functional import adaptive_avg_pool2d

    _check_version(version, calibration)
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
    if version == 2:
        grid = CellGrid.for_shape(tuple(image.shape), size)
        counts = count_point_sources_tensor(image, quality, grid, calibration, saturated_bits=saturated_bits)
        pooled = torch.cat([pooled, torch.from_numpy(point_source_channels(grid, counts)).to(image.device)])
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


def _safe_std(variance: float) -> float:
    """Standard deviation, 1 for a constant image (its standardised pixels are then all 0)."""
    return float(np.sqrt(variance)) if variance > 0 else 1.0

"""The paper's four-fold expansion of the training split (Lai et al. 2026, Sec. 2.3).

Each training sample is shown ``copies`` times per epoch: copy 0 as it is,
every other copy with a random horizontal flip, a rotation by a random
multiple of 90 degrees (every channel, so the mask still marks the valid
pixels and version 2's point-source counts stay on their bins) and a
brightness/contrast jitter of the image channel only.  The
validation and test splits are never augmented.

The draws depend only on ``(seed, epoch, index)``: a run is reproducible and
a resumed run sees the augmentations it would have seen without stopping.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

COPIES = 4
"""Copies of each training sample, the original included (paper Sec. 2.3: "three additional augmented versions")."""

BRIGHTNESS_JITTER = 0.1
"""Largest brightness offset, in units of the image's standard deviation (the paper gives no amplitude)."""

CONTRAST_JITTER = 0.1
"""Largest relative contrast change: the image is scaled by a factor in ``1 +- CONTRAST_JITTER`` (our choice)."""


def augment(
    sample: torch.Tensor,
    rng: np.random.Generator,
    *,
    brightness: float = BRIGHTNESS_JITTER,
    contrast: float = CONTRAST_JITTER,
) -> torch.Tensor:
    """One random augmentation of a ``(channels, H, W)`` sample (image, mask, then any point-source counts).

    The jitter is ``image * c + b * mask``: invalid pixels (0 in both
    channels) stay 0, and since preprocessing area-averages, adding ``b`` to
    every valid full-resolution pixel is exactly ``b * mask`` after pooling.
    """
    if rng.random() < 0.5:
        sample = torch.flip(sample, dims=(-1,))
    sample = torch.rot90(sample, k=int(rng.integers(4)), dims=(-2, -1))
    scale = 1.0 + rng.uniform(-contrast, contrast)
    offset = rng.uniform(-brightness, brightness)
    image = sample[0] * scale + offset * sample[1]
    # the mask and version 2's point-source counts turn with the image and are not jittered
    return torch.cat((image[None], sample[1:])).contiguous()


class Augmented(Dataset):
    """Present each sample of ``dataset`` ``copies`` times, all but the first randomly augmented.

    Parameters
    ----------
    dataset
        Yields ``(tensor (2, H, W), target)``.
    copies
        Presentations of each sample per epoch, the unchanged original included.
    seed
        With :attr:`epoch` and the index, fixes every random draw.
    brightness, contrast
        Jitter amplitudes of the image channel (see :func:`augment`).
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        copies: int = COPIES,
        seed: int = 0,
        brightness: float = BRIGHTNESS_JITTER,
        contrast: float = CONTRAST_JITTER,
    ) -> None:
        if copies < 1:
            raise ValueError(f"copies must be at least 1, got {copies}")
        self.dataset, self.copies, self.seed = dataset, copies, seed
        self.brightness, self.contrast = brightness, contrast
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the augmentations of ``epoch`` (call before creating the epoch's data loader iterator)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset) * self.copies

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        sample, target = self.dataset[index // self.copies]
        if index % self.copies == 0:
            return sample, target
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return augment(sample, rng, brightness=self.brightness, contrast=self.contrast), target

"""PyTorch access to datasets written by ``density-db simulate dataset``.

Shards are memory-mapped, so a dataset larger than memory trains from the
page cache; a sample is read only when asked for.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
from astropy.table import Table
from torch.utils.data import Dataset

from density_db.errors import ConfigurationError
from density_db.simulate.dataset import DESCRIPTION_NAME, SAMPLES_NAME


class SimulatedDataset(Dataset):
    """Preprocessed samples and their target: the density class, or log10(1 + N_bright).

    Parameters
    ----------
    directory
        A directory written by ``density-db simulate dataset``.
    target
        ``density_class`` (an int64 class index) or ``log_bright`` (a float32);
        default: the dataset's own task.
    indices
        The samples to expose (e.g. one split), default all.
    """

    def __init__(self, directory: Path, *, target: str | None = None, indices: np.ndarray | None = None) -> None:
        self.directory = Path(directory)
        try:
            self.description = json.loads((self.directory / DESCRIPTION_NAME).read_text())
        except FileNotFoundError:
            raise ConfigurationError(f"{self.directory} is not a dataset (no {DESCRIPTION_NAME})") from None
        self.samples = Table.read(self.directory / SAMPLES_NAME, format="ascii.ecsv")
        self.target = target or {"classify": "density_class", "regress": "log_bright"}[self.description["task"]]
        if self.target not in ("density_class", "log_bright"):
            raise ConfigurationError(f"target must be density_class or log_bright, got {self.target!r}")
        self.indices = np.arange(len(self.samples)) if indices is None else np.asarray(indices)
        self._shards: dict[int, np.ndarray] = {}

    def subset(self, indices: np.ndarray) -> SimulatedDataset:
        """The samples at ``indices`` of the whole dataset (e.g. one split), sharing the table already read."""
        subset = copy.copy(self)
        subset.indices, subset._shards = np.asarray(indices), {}
        return subset

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.samples[int(self.indices[item])]
        tensor = torch.from_numpy(np.asarray(self._shard(int(row["shard"]))[int(row["offset"])], dtype=np.float32))
        if self.target == "density_class":
            return tensor, torch.tensor(int(row["density_class"]), dtype=torch.int64)
        return tensor, torch.tensor(float(row["log_bright"]), dtype=torch.float32)

    def _shard(self, index: int) -> np.ndarray:
        # Opened lazily in each DataLoader worker process, never pickled with the dataset.
        if index not in self._shards:
            self._shards[index] = np.load(self.directory / f"shard_{index:05d}.npy", mmap_mode="r")
        return self._shards[index]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_shards": {}}

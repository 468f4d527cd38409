"""PyTorch access to datasets written by ``density-db simulate dataset``.

Shards are memory-mapped, so a dataset larger than memory trains from the
page cache; a sample is read only when asked for.  Several datasets (made in
parts, with different seeds, or one of each task) read as one, in the order
given, provided they describe the same model input.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from astropy.table import Table, vstack
from torch.utils.data import Dataset

from density_db.errors import ConfigurationError
from density_db.focal_plane import PIXEL_SCALE_ARCSEC
from density_db.inference.checkpoints import TrainingDomain, file_sha256
from density_db.inference.preprocessing import CHANNELS, PAPER_PREPROCESSING_VERSION
from density_db.labels import recorded_label_rule

SAMPLES_NAME = "samples.ecsv"
"""A dataset's table: one row per sample (labels and simulation parameters), in shard order."""
DESCRIPTION_NAME = "dataset.json"
"""A dataset's description: task, model input, label rule, shards."""

# What a model learns from: datasets that differ in any of these cannot be read as one.
INPUT_KEYS = (
    "input_size",
    "preprocessing_version",
    "class_lower_edges",
    "bright_magnitude_limit",
    "image_shape",
    "pixel_scale_arcsec",
)


class SimulatedDataset(Dataset):
    """Preprocessed samples and their target: the density class, or log10(1 + N_bright).

    Parameters
    ----------
    directories
        A directory written by ``density-db simulate dataset``, or several,
        read one after the other.
    target
        ``density_class`` (an int64 class index) or ``log_bright`` (a float32);
        default: the datasets' own task.
    indices
        The samples to expose (e.g. one split), default all.
    preprocessing_version
        The model input to read, default the datasets' own.  Version 1 (the
        paper's two channels) can be read from version 2 samples, whose
        first two channels it is exactly: the same data with and without
        the point-source channels, for ablations.

    Raises
    ------
    ConfigurationError
        A directory is not a dataset, the datasets describe different
        model inputs (``INPUT_KEYS``), or their samples do not hold
        ``preprocessing_version``'s channels.
    """

    def __init__(
        self,
        directories: Path | Sequence[Path],
        *,
        target: str | None = None,
        indices: np.ndarray | None = None,
        preprocessing_version: int | None = None,
    ) -> None:
        paths = [directories] if isinstance(directories, (str, Path)) else list(directories)
        if not paths:
            raise ConfigurationError("no dataset directory given")
        self.directories = [Path(path) for path in paths]
        self.descriptions = [_description(directory) for directory in self.directories]
        _check_same_input(self.directories, self.descriptions)
        tables = [Table.read(directory / SAMPLES_NAME, format="ascii.ecsv") for directory in self.directories]
        for number, table in enumerate(tables):
            table["dataset"] = np.full(len(table), number, dtype=np.int64)
        self.samples = tables[0] if len(tables) == 1 else vstack(tables, join_type="inner", metadata_conflicts="silent")
        tasks = self.tasks
        if target is None and len(tasks) > 1:
            raise ConfigurationError(f"the datasets mix the {' and '.join(tasks)} tasks: say which target to read")
        self.target = target or {"classify": "density_class", "regress": "log_bright"}[tasks[0]]
        if self.target not in ("density_class", "log_bright"):
            raise ConfigurationError(f"target must be density_class or log_bright, got {self.target!r}")
        self.indices = np.arange(len(self.samples)) if indices is None else np.asarray(indices)
        self._shards: dict[tuple[int, int], np.ndarray] = {}
        stored = int(self.descriptions[0].get("preprocessing_version", PAPER_PREPROCESSING_VERSION))
        self.preprocessing_version = stored if preprocessing_version is None else preprocessing_version
        wanted, held = CHANNELS.get(self.preprocessing_version), CHANNELS[stored]
        if wanted is None or held[: len(wanted)] != wanted:
            raise ConfigurationError(
                f"{self.directories[0]} holds preprocessing version {stored} samples ({', '.join(held)}), which do "
                f"not contain version {self.preprocessing_version}'s channels: make a dataset with "
                f"`density-db simulate dataset --preprocessing-version {self.preprocessing_version}`"
            )
        self._channels = len(wanted)

    @property
    def label_rule(self) -> str:
        """The rule the density classes were counted under (:mod:`density_db.labels`), the same for every part."""
        return recorded_label_rule(self.descriptions[0])

    @property
    def training_domain(self) -> TrainingDomain:
        """The shape and pixel scale of the simulated images (datasets older than the record: the detector's pixels)."""
        first = self.descriptions[0]
        return TrainingDomain(tuple(first["image_shape"]), float(first.get("pixel_scale_arcsec", PIXEL_SCALE_ARCSEC)))

    @property
    def class_counts(self) -> np.ndarray:
        """Per sample (all, not only :attr:`indices`): the star count its density class was made from.

        The count of stars the label rule counts; every star in datasets older than label rules.
        """
        column = "counted_star_count" if "counted_star_count" in self.samples.colnames else "star_count"
        return np.asarray(self.samples[column], dtype=np.int64)

    @property
    def tasks(self) -> list[str]:
        """The tasks (``classify``, ``regress``) of the datasets read, each once, in order."""
        return list(dict.fromkeys(description["task"] for description in self.descriptions))

    def manifest_sha256(self) -> str:
        """The training-data hash recorded in checkpoints.

        One dataset: the sha256 of its ``samples.ecsv``.  Several: the sha256 of
        their hashes, one per line in order, so another order or another part
        is another training set.
        """
        hashes = [file_sha256(directory / SAMPLES_NAME) for directory in self.directories]
        if len(hashes) == 1:
            return hashes[0]
        return hashlib.sha256("\n".join(hashes).encode()).hexdigest()

    def subset(self, indices: np.ndarray) -> SimulatedDataset:
        """The samples at ``indices`` of the whole dataset (e.g. one split), sharing the table already read."""
        subset = copy.copy(self)
        subset.indices, subset._shards = np.asarray(indices), {}
        return subset

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.samples[int(self.indices[item])]
        shard = self._shard(int(row["dataset"]), int(row["shard"]))
        tensor = torch.from_numpy(np.asarray(shard[int(row["offset"]), : self._channels], dtype=np.float32))
        if self.target == "density_class":
            return tensor, torch.tensor(int(row["density_class"]), dtype=torch.int64)
        return tensor, torch.tensor(float(row["log_bright"]), dtype=torch.float32)

    def _shard(self, dataset: int, index: int) -> np.ndarray:
        # Opened lazily in each DataLoader worker process, never pickled with the dataset.
        if (dataset, index) not in self._shards:
            path = self.directories[dataset] / f"shard_{index:05d}.npy"
            self._shards[dataset, index] = np.load(path, mmap_mode="r")
        return self._shards[dataset, index]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_shards": {}}


def _description(directory: Path) -> dict:
    if not directory.is_dir():
        raise ConfigurationError(f"dataset directory {directory} does not exist")
    try:
        return json.loads((directory / DESCRIPTION_NAME).read_text())
    except FileNotFoundError:
        raise ConfigurationError(f"{directory} is not a dataset (no {DESCRIPTION_NAME})") from None


def _check_same_input(directories: list[Path], descriptions: list[dict]) -> None:
    first = descriptions[0]
    for directory, description in zip(directories[1:], descriptions[1:]):
        for key in INPUT_KEYS:
            if description.get(key) != first.get(key):
                raise ConfigurationError(
                    f"{directory} cannot be read with {directories[0]}: its {key} is {description.get(key)!r}, "
                    f"not {first.get(key)!r}"
                )
        if recorded_label_rule(description) != recorded_label_rule(first):
            raise ConfigurationError(
                f"{directory} cannot be read with {directories[0]}: its classes count "
                f"{recorded_label_rule(description)!r}, not {recorded_label_rule(first)!r} (label rule)"
            )


def split_indices(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training, validation and test sample indices, 8:1:1, from a seeded permutation.

    Validation and test get ``round(n / 10)`` samples each, at least one.

    Raises
    ------
    ConfigurationError
        If ``n < 3``.
    """
    if n < 3:
        raise ConfigurationError(f"a dataset needs at least 3 samples to split 8:1:1, this one has {n}")
    order = np.random.default_rng(seed).permutation(n)
    held_out = max(1, round(n / 10))
    return np.sort(order[2 * held_out :]), np.sort(order[:held_out]), np.sort(order[held_out : 2 * held_out])

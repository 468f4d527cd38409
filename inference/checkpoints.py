"""Model checkpoint files: one network, its stage and architecture, and what it was trained with.

A checkpoint is one ``torch.save`` file holding a dict::

    {"format": "density-db-checkpoint", "version": 1,
     "stage": "classifier" | "regressor", "architecture": "resnet34", ...,
     "state_dict": {...},
     "metadata": {"class_lower_edges": [...], "bright_magnitude_limit": 23.5,
                  "input_size": 224, "preprocessing_version": 2,
                  "input_channels": ["image", "valid_fraction", "point_like", "bright_point_like"],
                  "label_rule": "detectable-stars",
                  "training_domain": {"image_shape": [9216, 9232], "pixel_scale_arcsec": 0.074}, ...}}

The metadata records the numbers that give the outputs their meaning
(``density_db.labels``, ``inference.preprocessing``), the preprocessing
version and channels of the model input (version 1, the paper's, for
checkpoints older than version 2; the network's first layer takes that many
channels), the label rule of the classes (training records its data's;
checkpoints older than label rules have none and were trained under
``catalog-stars``), the shape and pixel scale of the images it was trained
on (``training_domain``; absent from checkpoints that do not know it), plus
whatever training adds (data manifest hash, evaluation summary,
``trained_on``).  It must be JSON-compatible: it is stored as is in the
catalog's ``model.metadata``.  A model is identified in the catalog by the
sha256 of its file.

Loading never runs pickled code (``weights_only=True``) and refuses a
checkpoint whose labels differ from this density-db's, or whose
preprocessing version it does not know, since its classes or counts would
mean something else.  A checkpoint of another label rule loads: its classes
have the same edges but count other stars, which ``density-db models
show``, ``ingest`` and ``evaluate`` say.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from density_db.errors import ConfigurationError
from density_db.inference.architectures import (
    build_model,
    check_architecture,
    is_state_dict,
    read_torch_file,
    state_dict_mismatches,
)
from density_db.inference.preprocessing import CHANNELS, PAPER_PREPROCESSING_VERSION
from density_db.labels import BRIGHT_MAGNITUDE_LIMIT, CLASS_LOWER_EDGES, INPUT_SIZE, LABEL_RULE, label_rule

DEMO_MODELS_DIRECTORY = Path(__file__).parent / "demo_models"
"""The small models shipped with density-db, trained on its simulator (model card: ``docs/model_card.md``)."""

CHECKPOINT_FORMAT = "density-db-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class LoadedModel:
    """A network read from a checkpoint, in eval mode, with what identifies it.

    Attributes
    ----------
    model : torch.nn.Module
        The network, in eval mode, on the requested device.
    stage : str
        ``"classifier"`` or ``"regressor"``.
    architecture : str
        One of ``inference.architectures.ARCHITECTURES[stage]``.
    metadata : dict
        The checkpoint's metadata (labels, preprocessing version, training summary).
    sha256 : str
        Hex digest of the checkpoint file: the model's identity in the catalog.
    path : pathlib.Path
        The checkpoint file.
    """

    model: nn.Module
    stage: str
    architecture: str
    metadata: dict[str, Any]
    sha256: str
    path: Path

    @property
    def preprocessing_version(self) -> int:
        """The version of the model input the network takes (:func:`recorded_preprocessing_version`)."""
        return recorded_preprocessing_version(self.metadata)

    @property
    def training_domain(self) -> TrainingDomain | None:
        """The shape and pixel scale of its training images, when the checkpoint records them."""
        return TrainingDomain.from_metadata(self.metadata)


@dataclass(frozen=True)
class TrainingDomain:
    """The images a model was trained on: their shape and pixel scale.

    A frame of another shape or pixel scale is outside what the model has
    seen (its pooling bins hold other areas of sky and other numbers of
    stars), and its result is flagged ``outside_training_domain``
    (:mod:`density_db.flags` compares them in SQL, within
    :data:`~density_db.labels.PIXEL_SCALE_TOLERANCE`).
    """

    image_shape: tuple[int, int]
    pixel_scale_arcsec: float

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> TrainingDomain | None:
        domain = metadata.get("training_domain")
        if not isinstance(domain, Mapping):
            return None
        return cls(tuple(int(side) for side in domain["image_shape"]), float(domain["pixel_scale_arcsec"]))

    def as_metadata(self) -> dict[str, Any]:
        return {"image_shape": list(self.image_shape), "pixel_scale_arcsec": self.pixel_scale_arcsec}


def recorded_preprocessing_version(metadata: Mapping[str, Any]) -> int:
    """The preprocessing version a checkpoint's metadata records (1, the paper's, when it records none)."""
    return int(metadata.get("preprocessing_version", PAPER_PREPROCESSING_VERSION))


def label_metadata(preprocessing_version: int = PAPER_PREPROCESSING_VERSION) -> dict[str, Any]:
    """The numbers every model records: class edges, magnitude limit, input size, preprocessing version and channels."""
    return {
        "class_lower_edges": list(CLASS_LOWER_EDGES),
        "bright_magnitude_limit": BRIGHT_MAGNITUDE_LIMIT,
        "input_size": INPUT_SIZE,
        "preprocessing_version": preprocessing_version,
        "input_channels": list(CHANNELS[preprocessing_version]),
    }


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    stage: str,
    architecture: str,
    metadata: Mapping[str, Any] | None = None,
) -> str:
    """Write a model to a checkpoint file, atomically (temporary file, then rename).

    Parameters
    ----------
    path : str or pathlib.Path
        Where to write; parent folders are created.
    model : torch.nn.Module
        A network built by ``build_model(stage, architecture, in_channels=...)``, on any device.
    stage, architecture : str
        What the network is; checked against its tensors.
    metadata : mapping, optional
        JSON-compatible extras (training data manifest hash, evaluation
        summary, ``trained_on``, ``label_rule`` (default: this density-db's),
        ``preprocessing_version`` (default 1, the paper's), ``training_domain``...),
        recorded next to :func:`label_metadata`.

    Returns
    -------
    str
        The sha256 (hex) of the written file.

    Raises
    ------
    ConfigurationError
        If the stage or architecture is unknown, the model's tensors do not fit
        them, the metadata is not JSON-compatible or contradicts the labels.
    """
    check_architecture(stage, architecture)
    version = recorded_preprocessing_version(metadata or {})
    _check_version(version, source="the metadata to save")
    state_dict = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    expected = build_model(stage, architecture, in_channels=len(CHANNELS[version])).state_dict()
    problems = state_dict_mismatches(expected, state_dict)
    if problems:
        raise ConfigurationError(
            f"the model is not a {stage} {architecture} for preprocessing version {version}: {problems}"
        )
    recorded = _json_compatible({**label_metadata(version), "label_rule": LABEL_RULE, **(metadata or {})})
    _check_labels(recorded, source="the metadata to save")
    label_rule(recorded["label_rule"])
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "stage": stage,
        "architecture": architecture,
        "state_dict": state_dict,
        "metadata": recorded,
    }
    return _write_atomically(Path(path), checkpoint)


def load_checkpoint(
    path: str | Path,
    *,
    architecture: str | None = None,
    stage: str | None = None,
    map_location: str | torch.device = "cpu",
) -> LoadedModel:
    """Read a model from a density-db checkpoint or from a plain state dict.

    Parameters
    ----------
    path : str or pathlib.Path
        A file written by :func:`save_checkpoint`, or a plain (torchvision
        style) state dict saved with ``torch.save``.
    architecture, stage : str, optional
        Required for a plain state dict; for a checkpoint, they must agree
        with the file when given.  A plain state dict is assumed to follow
        this density-db's labels and preprocessing, and its metadata says so.
    map_location : str or torch.device
        Device the tensors are read to and the model is placed on.

    Returns
    -------
    LoadedModel
        The model in eval mode, with its stage, architecture, metadata and sha256.

    Raises
    ------
    ConfigurationError
        If the file cannot be read, a plain state dict comes without
        ``architecture`` and ``stage``, the file disagrees with them, its
        tensors do not fit the architecture, or its metadata disagrees with
        ``density_db.labels`` or the preprocessing version (naming the mismatch).
    """
    path = Path(path)
    content = read_torch_file(path, map_location=map_location)
    if isinstance(content, Mapping) and content.get("format") == CHECKPOINT_FORMAT:
        stage, architecture, state_dict, metadata = _unwrap(content, path, stage=stage, architecture=architecture)
    elif is_state_dict(content):
        if stage is None or architecture is None:
            raise ConfigurationError(
                f"{path} is a plain state dict without density-db metadata: pass its architecture (--arch) and stage"
            )
        state_dict, metadata = content, {**label_metadata(), "checkpoint_format": "plain state dict"}
    else:
        raise ConfigurationError(f"{path} is neither a density-db checkpoint nor a state dict")
    in_channels = len(CHANNELS[recorded_preprocessing_version(metadata)])
    model = build_model(stage, architecture, in_channels=in_channels).to(map_location)
    problems = state_dict_mismatches(model.state_dict(), state_dict)
    if problems:
        raise ConfigurationError(f"{path} does not fit a {stage} {architecture}: {problems}")
    model.load_state_dict(state_dict)
    return LoadedModel(
        model=model.eval(),
        stage=stage,
        architecture=architecture,
        metadata=metadata,
        sha256=file_sha256(path),
        path=path,
    )


def demo_checkpoint(stage: str) -> Path:
    """The shipped demo checkpoint of ``stage`` (``classifier`` or ``regressor``).

    Raises
    ------
    ConfigurationError
        If this installation has no demo model for that stage.
    """
    path = DEMO_MODELS_DIRECTORY / f"{stage}.pt"
    if not path.is_file():
        raise ConfigurationError(f"this density-db installation has no demo {stage} ({path} is missing)")
    return path


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _unwrap(
    content: Mapping[str, Any], path: Path, *, stage: str | None, architecture: str | None
) -> tuple[str, str, Mapping[str, torch.Tensor], dict[str, Any]]:
    """Stage, architecture, state dict and metadata of a checkpoint, checked against the caller and the labels."""
    if content.get("version") != CHECKPOINT_VERSION:
        raise ConfigurationError(
            f"{path} is a density-db checkpoint of version {content.get('version')!r}; "
            f"this density-db reads version {CHECKPOINT_VERSION}"
        )
    recorded = {"stage": content.get("stage"), "architecture": content.get("architecture")}
    for key, expected in (("stage", stage), ("architecture", architecture)):
        if expected is not None and expected != recorded[key]:
            raise ConfigurationError(
                f"{path} holds a {recorded['stage']} {recorded['architecture']}, not {key} {expected!r}"
            )
    check_architecture(recorded["stage"], recorded["architecture"])
    if not is_state_dict(content.get("state_dict")):
        raise ConfigurationError(f"{path} is a density-db checkpoint without a state dict")
    metadata = dict(content.get("metadata") or {})
    _check_labels(metadata, source=str(path))
    return recorded["stage"], recorded["architecture"], content["state_dict"], metadata


def _check_labels(metadata: Mapping[str, Any], *, source: str) -> None:
    """Raise unless ``metadata`` records this density-db's labels and a preprocessing version it knows.

    Checkpoints older than version 2 record no channels: those of their version are implied.
    """
    version = recorded_preprocessing_version(metadata)
    _check_version(version, source=source)
    expected_metadata = label_metadata(version)
    recorded = {"input_channels": expected_metadata["input_channels"], **metadata}
    mismatches = [
        f"{key} is {_normalise(recorded.get(key))!r}, this density-db uses {_normalise(expected)!r}"
        for key, expected in expected_metadata.items()
        if _normalise(recorded.get(key)) != _normalise(expected)
    ]
    if mismatches:
        raise ConfigurationError(f"{source} does not match this density-db's labels: {'; '.join(mismatches)}")


def _check_version(version: int, *, source: str) -> None:
    if version not in CHANNELS:
        raise ConfigurationError(
            f"{source} records preprocessing_version {version}; this density-db knows versions "
            f"{', '.join(map(str, sorted(CHANNELS)))}"
        )


def _normalise(value: Any) -> Any:
    # Lists and tuples of edges compare equal whichever way they were stored.
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _json_compatible(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """A copy made of plain JSON types, so that it loads with ``weights_only`` and stores as jsonb."""
    try:
        return json.loads(json.dumps(metadata, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ConfigurationError(f"checkpoint metadata must be JSON-compatible: {error}") from error


def _write_atomically(path: Path, checkpoint: dict[str, Any]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    temporary = Path(handle.name)
    try:
        with handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())
        sha256 = file_sha256(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return sha256

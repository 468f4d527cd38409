"""What a Dask worker does for ingest: read a shard of detector images, reduce them, run both stages.

A task is a shard of :class:`FrameTask` (paths and HDU numbers, a few
hundred bytes) and a :class:`ModelSpec` (checkpoint paths and checksums);
it returns small :class:`~density_db.results.ResultRow` and
:class:`~density_db.results.InferenceFailure` objects, never pixels.  Each
image is read once, reduced to the 224 x 224 model input of the models'
preprocessing version on the worker's device (NumPy on CPU, torch on CUDA),
and the shard goes through the two-stage predictor in one batch.

Models load once per worker process and stay in :data:`_PREDICTORS`, keyed
by the spec; a checkpoint whose checksum differs from the one the run
registered (another file at the same path on this host) is refused.

Per-image problems (file gone, truncated, all pixels invalid) become failure
rows and the rest of the shard goes on; a problem with the models raises, and
the ingest stops with that message.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np

from density_db.errors import ConfigurationError, InputError
from density_db.fits_input import FrameHeader
from density_db.inference.calibration import FrameCalibration, frame_calibration
from density_db.inference.devices import resolve_device
from density_db.instrument import InstrumentProfile
from density_db.results import InferenceFailure, ResultRow

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrameTask:
    """Where one registered frame's pixels are, and what the point-source input needs to know of it.

    ``calibration`` is ``None`` when the frame has none (``calibration_error``
    says why); only models of preprocessing version 2 need it.
    """

    frame_id: int
    path: str
    hdu_index: int
    dq_hdu_index: int | None
    calibration: FrameCalibration | None = None
    calibration_error: str | None = None
    saturated_bits: int = 0

    @classmethod
    def of_frame(cls, frame_id: int, header: FrameHeader, profile: InstrumentProfile) -> FrameTask:
        """The task of a registered frame, its calibration resolved from its header and the profile."""
        try:
            calibration, error = frame_calibration(header, profile.calibration), None
        except InputError as problem:
            calibration, error = None, str(problem)
        return cls(
            frame_id,
            header.path,
            header.hdu_index,
            header.dq_hdu_index,
            calibration,
            error,
            profile.calibration.saturated_bits,
        )


@dataclass(frozen=True)
class CheckpointFile:
    """One stage's checkpoint as the run registered it.

    Attributes
    ----------
    path : str
        On a remote cluster it must be readable by the workers at the same
        path (a shared file system).
    sha256 : str
        What the run registered; a worker refuses a different file.
    architecture : str
        Needed for plain state dicts; checked against density-db checkpoints.
    """

    path: str
    sha256: str
    architecture: str


@dataclass(frozen=True)
class ModelSpec:
    """The model pair a run uses, and how workers should run it.

    Attributes
    ----------
    classifier, regressor : CheckpointFile
        The two stages' checkpoints.
    device : str
        ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA where the worker has it).
    torch_threads : int or None
        Intra-op threads per worker; ``None`` leaves torch's default.
    preprocessing_version : int
        The model input both checkpoints take (they record it); a worker
        refuses checkpoints that say otherwise.
    """

    classifier: CheckpointFile
    regressor: CheckpointFile
    device: str = "auto"
    torch_threads: int | None = None
    preprocessing_version: int = 1


@dataclass
class ShardOutcome:
    """What a task returns: answers and failures for its frames."""

    results: list[ResultRow] = field(default_factory=list)
    failures: list[InferenceFailure] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.results) + len(self.failures)


_PREDICTORS: dict[ModelSpec, object] = {}


def process_shard(tasks: list[FrameTask], spec: ModelSpec) -> ShardOutcome:
    """Read, reduce and classify (then regress) every frame of a shard.

    Raises
    ------
    ConfigurationError
        If the models cannot be loaded on this worker.
    """
    import torch

    predictor = loaded_predictor(spec)
    outcome = ShardOutcome()
    inputs, prepared = [], []
    for task in tasks:
        try:
            tensor, valid_fraction, read_seconds, preprocess_seconds = _reduce(
                task, predictor.device, spec.preprocessing_version
            )
        except Exception as error:  # noqa: BLE001 - every bad input must end as a failure row
            outcome.failures.append(_failure(task, error))
            continue
        inputs.append(tensor)
        prepared.append((task, valid_fraction, read_seconds, preprocess_seconds))
    if not inputs:
        return outcome
    started = time.perf_counter()
    predictions = predictor.predict(torch.stack(inputs))
    infer_seconds = (time.perf_counter() - started) / len(inputs)
    for (task, valid_fraction, read_seconds, preprocess_seconds), prediction in zip(prepared, predictions):
        outcome.results.append(
            ResultRow(
                frame_id=task.frame_id,
                probabilities=prediction.probabilities,
                density_class=prediction.density_class,
                class_confidence=prediction.confidence,
                log_bright=prediction.log_bright,
                bright_count=prediction.bright_count,
                regression_status=prediction.regression_status,
                valid_fraction=valid_fraction,
                read_seconds=read_seconds,
                preprocess_seconds=preprocess_seconds,
                infer_seconds=infer_seconds,
            )
        )
    return outcome


def worker_device(requested: str) -> str:
    """The torch device a worker uses for ``requested`` (``auto``, ``cpu`` or ``cuda``).

    Workers of a local GPU cluster are named 0, 1, ...; without
    ``CUDA_VISIBLE_DEVICES`` pinning them (as dask-cuda does), worker ``i``
    takes GPU ``i`` modulo the number of GPUs.
    """
    import torch

    if resolve_device(requested) == "cpu":
        return "cpu"
    count = torch.cuda.device_count()
    name = _worker_name()
    if count > 1 and "CUDA_VISIBLE_DEVICES" not in os.environ and isinstance(name, int):
        return f"cuda:{name % count}"
    return "cuda"


def _worker_name():
    try:
        from distributed import get_worker

        return get_worker().name
    except ValueError:  # not inside a Dask worker (direct calls, tests)
        return None


def loaded_predictor(spec: ModelSpec):
    """The two-stage predictor of ``spec``, loaded on first use in this process."""
    predictor = _PREDICTORS.get(spec)
    if predictor is None:
        import torch

        from density_db.inference.checkpoints import load_checkpoint
        from density_db.inference.predictor import TwoStagePredictor

        if spec.torch_threads is not None:
            torch.set_num_threads(spec.torch_threads)
        device = worker_device(spec.device)
        loaded = {}
        for stage, checkpoint in (("classifier", spec.classifier), ("regressor", spec.regressor)):
            path, sha256 = checkpoint.path, checkpoint.sha256
            if not os.path.exists(path):
                raise ConfigurationError(f"the {stage} checkpoint {path} is not readable on this worker")
            loaded[stage] = load_checkpoint(path, architecture=checkpoint.architecture, stage=stage)
            if loaded[stage].sha256 != sha256:
                raise ConfigurationError(
                    f"the {stage} checkpoint {path} on this worker is not the file the run registered "
                    f"(sha256 {loaded[stage].sha256[:12]} != {sha256[:12]})"
                )
            if loaded[stage].preprocessing_version != spec.preprocessing_version:
                raise ConfigurationError(
                    f"the {stage} checkpoint {path} takes preprocessing version "
                    f"{loaded[stage].preprocessing_version} inputs, not the run's {spec.preprocessing_version}"
                )
        predictor = TwoStagePredictor(loaded["classifier"].model, loaded["regressor"].model, device=device)
        _PREDICTORS[spec] = predictor
        logger.info("loaded models on %s", device)
    return predictor


def _reduce(task: FrameTask, device, version: int):
    """Read one frame's pixels and reduce them: (tensor, valid fraction, read s, preprocess s)."""
    if version == 2 and task.calibration is None:
        raise InputError("no_calibration", task.calibration_error or f"{task.path} has no calibration")
    started = time.perf_counter()
    image, quality = read_pixels(task)
    read_seconds = time.perf_counter() - started
    started = time.perf_counter()
    calibration = task.calibration.for_pixels(image, quality) if version == 2 else None
    tensor, statistics = reduce_pixels(
        image, quality, device, version=version, calibration=calibration, saturated_bits=task.saturated_bits
    )
    return tensor, statistics.valid_fraction, read_seconds, time.perf_counter() - started


def read_pixels(task: FrameTask) -> tuple[np.ndarray, np.ndarray | None]:
    """The science image and data-quality mask of a frame, as stored (big-endian for plain FITS).

    Memory-mapped: the CPU preprocessing's single streaming pass reads the
    pixels straight from the page cache (and byte-swaps while it centres), so
    a plain FITS frame's bytes cross memory once instead of being copied into
    the process first (tile-compressed and gzipped files are decoded into
    memory as before).  A file shorter than its headers say fails here with a
    clear error, as without the map.
    """
    from astropy.io import fits

    with fits.open(task.path, memmap=True, lazy_load_hdus=True) as hdus:
        image = hdus[task.hdu_index].data
        quality = hdus[task.dq_hdu_index].data if task.dq_hdu_index is not None else None
    if image is None:
        raise InputError("no_data", f"HDU {task.hdu_index} of {task.path} has no pixels")
    return image, quality


def reduce_pixels(
    image: np.ndarray,
    quality: np.ndarray | None,
    device,
    *,
    version: int = 1,
    calibration=None,
    saturated_bits: int = 0,
):
    """The model input of ``version`` (a torch tensor on ``device``) and pixel statistics of one image.

    ``calibration`` (a :class:`~density_db.inference.point_sources.Calibration`) is version 2's.
    """
    import torch

    from density_db.inference.preprocessing import preprocess, preprocess_tensor

    options = {"version": version, "calibration": calibration, "saturated_bits": saturated_bits}
    if device.type == "cuda":
        image_on_device = torch.from_numpy(np.asarray(image, dtype=np.float32)).to(device, non_blocking=True)
        quality_on_device = (
            torch.from_numpy(np.asarray(quality, dtype=np.int32)).to(device, non_blocking=True)
            if quality is not None
            else None
        )
        return preprocess_tensor(image_on_device, quality_on_device, **options)
    array, statistics = preprocess(image, quality, **options)
    return torch.from_numpy(array), statistics


def _failure(task: FrameTask, error: Exception) -> InferenceFailure:
    """A failure row naming what went wrong with the frame's file or pixels."""
    if isinstance(error, InputError):
        kind, message = error.kind, str(error)
    elif isinstance(error, FileNotFoundError):
        kind, message = "not_found", f"{task.path} no longer exists (it was registered, then moved or deleted)"
    elif isinstance(error, (OSError, ValueError, TypeError, IndexError, EOFError)):
        kind, message = "unreadable", f"cannot read the pixels of HDU {task.hdu_index}: {type(error).__name__}: {error}"
    else:
        kind, message = "processing_error", f"{type(error).__name__}: {error}"
    return InferenceFailure(task.frame_id, task.path, task.hdu_index, kind, message[:2000])

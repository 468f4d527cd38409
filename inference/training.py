"""Training of the two stages on a simulated dataset (Lai et al. 2026, Sec. 3.2).

:func:`train` builds everything (data, model, loss, optimiser, scheduler) and
runs the epochs; :func:`train_one_epoch` and :func:`evaluate_loss` are the
small pieces other scripts import, as in torchvision's classification
references.  Library code never prints: a ``progress`` callback receives
``(epoch, step, steps, loss, images_per_s)``.

Classifier (paper Sec. 3.2.1): cross-entropy, AdamW, gradient-norm clipping
at 1.0, early stopping after 15 epochs without a lower validation loss, and
(ours: the paper names no schedule for it) the regressor's ReduceLROnPlateau.
Regressor (Sec. 3.2.2): ``a*MSE + b*MAE + c*RelativeMSE`` on
``y = log10(1 + N_bright)`` with the relative term clamped at 10, AdamW with
layer-wise learning-rate multipliers, three stages (head only 30 epochs;
+ ``layer4`` 40 epochs; all layers 70 epochs), a ReduceLROnPlateau scheduler
per stage on the validation loss.  Both use bf16 autocast on CUDA (never on
the CPU).  The training split (8:1:1) is augmented four-fold
(``inference.augmentation``); validation and test are not.

After every epoch ``<out>.state.pt`` holds what a resumed run needs, and the
model with the lowest validation loss so far is the checkpoint at ``out``.
At the end the best model is measured on the test split, which training never
saw, and the headline figures go into the checkpoint's metadata
(``evaluation``, :func:`summarise_test_split`).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from density_db.errors import ConfigurationError, TrainingDivergedError
from density_db.inference.architectures import (
    build_model,
    check_architecture,
    input_channels,
    load_imagenet_weights,
    state_dict_mismatches,
)
from density_db.inference.augmentation import COPIES, Augmented
from density_db.inference.checkpoints import load_checkpoint, save_checkpoint
from density_db.inference.datasets import SimulatedDataset, split_indices
from density_db.inference.devices import torch_device
from density_db.inference.evaluation import classification_report, regression_report
from density_db.inference.head_refit import refit_classifier_head
from density_db.inference.preprocessing import CHANNELS

logger = logging.getLogger(__name__)

PAPER_STAGE_EPOCHS = (30, 40, 70)
"""Regressor epochs with the head, + layer4, and all layers trainable (paper Sec. 3.2.2)."""

CLASSIFIER_MAX_EPOCHS = 100
"""Classifier epoch limit when none is given; early stopping usually ends sooner (the paper gives none)."""

TARGETS = {"classifier": "density_class", "regressor": "log_bright"}
PARAMETER_GROUPS = ("head", "layer4", "backbone")
TRAINABLE_GROUPS = (("head",), ("head", "layer4"), ("head", "layer4", "backbone"))
"""Parameter groups trained in the regressor's stages 1, 2 and 3."""

TRAINED_ON = "density-db simulator dataset"

Progress = Callable[[int, int, int, float, float], None]
"""``progress(epoch, step, steps, loss, images_per_s)`` after every training step."""


@dataclass(frozen=True)
class TrainingConfig:
    """Everything that decides a training run; recorded in the checkpoint.

    Attributes
    ----------
    stage, architecture : str
        What to train (``inference.architectures.ARCHITECTURES``).
    epochs : int, optional
        Classifier: the limit (default 100, early stopping usually ends
        sooner).  Regressor: the total of its three stages (default
        30 + 40 + 70 = 140, the paper's); another total scales the stages
        proportionally, each at least one epoch.
    batch_size, learning_rate, weight_decay
        AdamW settings; the paper tuned them with Optuna and does not give
        them, so these defaults are ours.
    patience : int
        Classifier epochs without a lower validation loss before stopping (paper: 15).
    gradient_clip_norm : float
        Largest L2 norm of the gradient (paper: 1.0).
    device : str
        ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    seed, split_seed : int
        Initialisation, shuffling, augmentation; the 8:1:1 split.
    augment_copies : int
        Presentations of each training sample per epoch (paper: 4).
    loss_weights : tuple of float
        ``(a, b, c)`` of the regression loss; the paper does not give them:
        ours are 1, 1, 0.1.
    relative_clamp : float
        Upper clamp of the relative squared error per sample (paper: 10).
    stage_epochs : tuple of int
        The regressor's stage lengths at the paper's total (paper: 30, 40, 70).
    lr_multipliers : tuple of float
        Learning-rate multipliers of the head, ``layer4`` and the rest of the
        backbone (regressor); Optuna-tuned in the paper and not given there,
        ours are 1, 0.5, 0.1 (not smaller, since without ImageNet weights
        the backbone must still learn).
    scheduler_factor, scheduler_patience
        ReduceLROnPlateau settings (ours): the learning rate is multiplied by
        the factor after more than ``scheduler_patience`` epochs without a
        lower validation loss.  The paper uses the scheduler for the
        regressor; we use it for the classifier too, whose validation loss
        at a constant rate swings from epoch to epoch (measured on the
        simulator's data: between 0.59 and 0.97 over the last eight of 18
        epochs), so that the best epoch is a matter of luck.
    amp : bool
        bf16 autocast when on CUDA.
    workers : int
        Data loader worker processes.
    pretrained_weights : str, optional
        A local torchvision ImageNet state dict for the ResNet backbone.
    backbone_checkpoint : str, optional
        A density-db checkpoint of the same architecture (typically the
        trained classifier, for the regressor) whose every layer but the head
        starts this model: the counterpart of ImageNet weights for
        ``baseline_cnn``, which has none (:func:`load_backbone`).
    preprocessing_version : int, optional
        The model input to train on, default the data's; version 1 (the
        paper's) reads the first two channels of version 2 data, so both
        inputs train on the same images (``SimulatedDataset``).
    refit_head : bool
        Classifier only, our addition to the paper's recipe: after training,
        refit the last linear layer of the best model to convergence on the
        training split's features (:mod:`~density_db.inference.head_refit`).
    """

    stage: str
    architecture: str
    epochs: int | None = None
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    patience: int = 15
    gradient_clip_norm: float = 1.0
    device: str = "auto"
    seed: int = 0
    split_seed: int = 0
    augment_copies: int = COPIES
    loss_weights: tuple[float, float, float] = (1.0, 1.0, 0.1)
    relative_clamp: float = 10.0
    stage_epochs: tuple[int, int, int] = PAPER_STAGE_EPOCHS
    lr_multipliers: tuple[float, float, float] = (1.0, 0.5, 0.1)
    scheduler_factor: float = 0.5
    scheduler_patience: int = 5
    amp: bool = True
    workers: int = 0
    pretrained_weights: str | None = None
    backbone_checkpoint: str | None = None
    preprocessing_version: int | None = None
    refit_head: bool = False

    def __post_init__(self) -> None:
        check_architecture(self.stage, self.architecture)
        if self.pretrained_weights and self.backbone_checkpoint:
            raise ConfigurationError("give ImageNet weights or a backbone checkpoint to start from, not both")
        positive = {
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "augment_copies": self.augment_copies,
            "patience": self.patience,
            "gradient_clip_norm": self.gradient_clip_norm,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigurationError(f"{name} must be positive, got {value!r}")
        if self.scheduler_patience < 0 or not 0 < self.scheduler_factor < 1:
            raise ConfigurationError(
                f"the learning-rate schedule needs a patience >= 0 and a factor in (0, 1), got "
                f"{self.scheduler_patience!r} and {self.scheduler_factor!r}"
            )
        if self.epochs is not None and self.epochs < (3 if self.stage == "regressor" else 1):
            raise ConfigurationError(
                f"epochs must be at least {3 if self.stage == 'regressor' else 1} for the {self.stage}, "
                f"got {self.epochs}"
            )
        if self.refit_head and self.stage != "classifier":
            raise ConfigurationError("--refit-head is for the classifier (the regressor's head is not linear)")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigurationError(f"device must be auto, cpu or cuda, got {self.device!r}")

    @property
    def total_epochs(self) -> int:
        """Epochs of the whole run (the classifier may stop earlier)."""
        if self.stage == "classifier":
            return self.epochs or CLASSIFIER_MAX_EPOCHS
        return sum(regressor_stage_epochs(self))

    def as_dict(self) -> dict[str, Any]:
        """Plain, JSON-compatible values (tuples as lists)."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


@dataclass(frozen=True)
class TrainingResult:
    """What a training run produced."""

    checkpoint: Path
    sha256: str
    state_file: Path
    device: str
    epochs_run: int
    best_epoch: int
    best_validation_loss: float
    train_losses: tuple[float, ...]
    validation_losses: tuple[float, ...]
    stopped_early: bool
    split_sizes: dict[str, int] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)


class RegressionLoss(nn.Module):
    """``a*MSE + b*MAE + c*mean(clamp(((pred - y) / (y + eps))**2, max=clamp))`` (paper Sec. 3.2.2)."""

    def __init__(
        self, weights: tuple[float, float, float] = (1.0, 1.0, 0.1), *, clamp: float = 10.0, eps: float = 1e-3
    ) -> None:
        super().__init__()
        self.weights, self.clamp, self.eps = tuple(weights), clamp, eps

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        error = prediction - target
        relative = torch.clamp((error / (target + self.eps)) ** 2, max=self.clamp).mean()
        mse, mae = (error**2).mean(), error.abs().mean()
        return self.weights[0] * mse + self.weights[1] * mae + self.weights[2] * relative


def regressor_stage_epochs(config: TrainingConfig) -> tuple[int, int, int]:
    """Epochs of the regressor's three stages: the configured ones, scaled to ``config.epochs`` if given."""
    stages = config.stage_epochs
    if config.epochs is None or config.epochs == sum(stages):
        return tuple(stages)
    bounds = [round(config.epochs * value / sum(stages)) for value in np.cumsum(stages)]
    scaled = [max(1, upper - lower) for lower, upper in zip([0, *bounds[:-1]], bounds)]
    while sum(scaled) > config.epochs:  # only when a stage was raised to one epoch
        scaled[scaled.index(max(scaled))] -= 1
    return tuple(scaled)


def phase_of_epoch(config: TrainingConfig, epoch: int) -> int:
    """The regressor's stage (0, 1, 2) of a 0-based epoch; always 2 (all layers) for the classifier."""
    if config.stage == "classifier":
        return 2
    return min(2, int(np.searchsorted(np.cumsum(regressor_stage_epochs(config)), epoch, side="right")))


def parameter_groups(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """The model's parameters as ``head``, ``layer4`` and ``backbone``.

    ResNets: ``fc`` is the head and ``layer4`` its last residual stage.  The
    plain ``baseline_cnn`` has no ``layer4``: its final linear layer is the
    head and its last (fourth) convolution block plays ``layer4``.
    """
    names = [name for name, _ in model.named_parameters()]
    if hasattr(model, "fc") and hasattr(model, "layer4"):

        def group(name: str) -> str:
            return "head" if name.startswith("fc.") else "layer4" if name.startswith("layer4.") else "backbone"
    elif isinstance(model, nn.Sequential):
        head = max(i for i, module in enumerate(model) if isinstance(module, nn.Linear))
        last_block = max(i for i, module in enumerate(model) if isinstance(module, nn.Conv2d))

        def group(name: str) -> str:
            index = int(name.split(".")[0])
            return "head" if index >= head else "layer4" if index >= last_block else "backbone"
    else:
        raise ConfigurationError(f"cannot tell the head and layer4 of a {type(model).__name__}")
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {key: [] for key in PARAMETER_GROUPS}
    for name, parameter in zip(names, model.parameters()):
        groups[group(name)].append((name, parameter))
    return groups


def load_backbone(model: nn.Module, path: str | Path, *, architecture: str) -> None:
    """Start ``model``, in place, from every layer but the head of the density-db checkpoint at ``path``.

    The checkpoint may be of either stage but must be of ``architecture``:
    the backbones of the two stages are then the same network, and only the
    head (``parameter_groups``'s ``head``: ``fc`` or the last linear layer)
    differs and keeps its fresh initialisation.  The regressor's stage 1
    trains the head on features learnt for density, as the paper's trains it
    on ImageNet features.

    Raises
    ------
    ConfigurationError
        If the file is not a checkpoint of ``architecture``, takes another
        preprocessing version's input, or its backbone tensors do not match the model's.
    """
    source = load_checkpoint(path)
    if source.architecture != architecture:
        raise ConfigurationError(
            f"{path} is a {source.architecture} {source.stage}; a {architecture} backbone needs a {architecture} "
            "checkpoint"
        )
    if input_channels(source.model) != input_channels(model):
        raise ConfigurationError(
            f"{path} takes preprocessing version {source.preprocessing_version} inputs "
            f"({input_channels(source.model)} channels); this model takes {input_channels(model)}: "
            "start from a checkpoint trained on data of the same preprocessing version"
        )
    head = tuple({name.split(".")[0] + "." for name, _ in parameter_groups(model)["head"]})
    backbone = {name: tensor for name, tensor in source.model.state_dict().items() if not name.startswith(head)}
    expected = {name: tensor for name, tensor in model.state_dict().items() if not name.startswith(head)}
    problems = state_dict_mismatches(expected, backbone)
    if problems:
        raise ConfigurationError(f"the backbone of {path} does not fit this {architecture}: {problems}")
    model.load_state_dict(backbone, strict=False)


def set_trainable(model: nn.Module, phase: int) -> list[str]:
    """Freeze all but the parameter groups of ``phase`` (0, 1, 2); return the trainable parameter names."""
    trainable = []
    for group, members in parameter_groups(model).items():
        for name, parameter in members:
            parameter.requires_grad_(group in TRAINABLE_GROUPS[phase])
            if parameter.requires_grad:
                trainable.append(name)
    return trainable


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterable,
    device: torch.device,
    *,
    epoch: int = 0,
    gradient_clip_norm: float = 1.0,
    amp: bool = False,
    progress: Progress | None = None,
) -> float:
    """One pass over ``loader``; returns the mean training loss per sample."""
    model.train()
    steps = len(loader)
    total, count, start = 0.0, 0, time.perf_counter()
    for step, (images, targets) in enumerate(loader, start=1):
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            outputs = model(images)
        loss = criterion(outputs.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], gradient_clip_norm)
        optimizer.step()
        total += loss.item() * len(images)
        count += len(images)
        if progress is not None:
            progress(epoch, step, steps, loss.item(), count / max(time.perf_counter() - start, 1e-9))
    return total / max(count, 1)


def evaluate_loss(
    model: nn.Module, criterion: nn.Module, loader: Iterable, device: torch.device, *, amp: bool = False
) -> float:
    """Mean loss per sample of ``model`` (in eval mode, no gradients) over ``loader``."""
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for images, targets in loader:
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                outputs = model(images)
            total += criterion(outputs.float(), targets).item() * len(images)
            count += len(images)
    return total / max(count, 1)


def state_file_of(out_path: str | Path) -> Path:
    """The resumable state written next to the checkpoint: ``<out>.state.pt``."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".state.pt")


def train(
    config: TrainingConfig,
    data_dirs: str | Path | Sequence[str | Path],
    out_path: str | Path,
    *,
    resume: bool = False,
    progress: Progress | None = None,
) -> TrainingResult:
    """Train one stage on a simulated dataset; the best model (lowest validation loss) goes to ``out_path``.

    Parameters
    ----------
    config : TrainingConfig
        The run's settings.
    data_dirs : str, pathlib.Path or a sequence of them
        A directory written by ``density-db simulate dataset``, or several
        read as one (:class:`~density_db.inference.datasets.SimulatedDataset`);
        the 8:1:1 split is drawn over all their samples.
    out_path : str or pathlib.Path
        The checkpoint (``inference.checkpoints``); ``<out>.state.pt`` is written next to it.
    resume : bool
        Continue from ``<out>.state.pt`` (same stage, architecture, split and dataset).
    progress : callable, optional
        ``progress(epoch, step, steps, loss, images_per_s)`` after every step.

    Raises
    ------
    ConfigurationError
        A missing or unsuitable dataset, an unavailable device, or a state
        file that does not belong to this run.
    """
    out_path = Path(out_path)
    device = torch_device(config.device)
    amp = config.amp and device.type == "cuda"
    train_set, validation_set, test_set = _datasets(config, data_dirs)
    split_sizes = {"train": len(train_set.dataset), "validation": len(validation_set), "test": len(test_set)}
    manifest_sha256 = test_set.manifest_sha256()
    torch.manual_seed(config.seed)
    version = test_set.preprocessing_version
    model = build_model(config.stage, config.architecture, in_channels=len(CHANNELS[version]))
    if config.pretrained_weights:
        load_imagenet_weights(model, config.pretrained_weights)
    if config.backbone_checkpoint:
        load_backbone(model, config.backbone_checkpoint, architecture=config.architecture)
    model.to(device)
    criterion = (
        nn.CrossEntropyLoss()
        if config.stage == "classifier"
        else RegressionLoss(config.loss_weights, clamp=config.relative_clamp)
    )
    validation_loader = DataLoader(validation_set, batch_size=config.batch_size, num_workers=config.workers)
    state_file = state_file_of(out_path)
    run = _RunState()
    saved: dict[str, Any] | None = None
    if resume:
        saved = _read_state(state_file, config, manifest_sha256)
        model.load_state_dict(saved["model"])
        run = _RunState(**saved["run"])

    def metadata() -> dict[str, Any]:
        return {
            "trained_on": TRAINED_ON,
            "data_manifest_sha256": manifest_sha256,
            "label_rule": test_set.label_rule,
            "preprocessing_version": version,
            "training_domain": test_set.training_domain.as_metadata(),
            "split_seed": config.split_seed,
            "split_sizes": split_sizes,
            "epochs_run": len(run.train_losses),
            "best_epoch": run.best_epoch,
            "best_validation_loss": run.best_validation_loss,
            "config": config.as_dict(),
        }

    optimizer = scheduler = None
    phase = None
    for epoch in range(run.epoch, config.total_epochs):
        if config.stage == "classifier" and run.stale_epochs >= config.patience:
            run.stopped_early = True
            break
        if phase_of_epoch(config, epoch) != phase:
            phase = phase_of_epoch(config, epoch)
            set_trainable(model, phase)
            optimizer, scheduler = _optimizer(model, config, phase)
            if saved is not None and saved["phase"] == phase:
                optimizer.load_state_dict(saved["optimizer"])
                if saved["scheduler"] is not None:  # runs saved before the classifier had one start it afresh
                    scheduler.load_state_dict(saved["scheduler"])
            saved = None
        torch.manual_seed(config.seed * 100_003 + epoch)  # dropout draws: a resumed run repeats them
        train_set.set_epoch(epoch)
        loader = DataLoader(
            train_set,
            batch_size=config.batch_size,
            shuffle=True,
            num_workers=config.workers,
            generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch),
            drop_last=len(train_set) > config.batch_size,  # BatchNorm cannot train on a last batch of one
            pin_memory=device.type == "cuda",
        )
        train_loss = train_one_epoch(
            model,
            criterion,
            optimizer,
            loader,
            device,
            epoch=epoch,
            gradient_clip_norm=config.gradient_clip_norm,
            amp=amp,
            progress=progress,
        )
        validation_loss = evaluate_loss(model, criterion, validation_loader, device, amp=amp)
        logger.info("epoch %d: training loss %.4g, validation loss %.4g", epoch, train_loss, validation_loss)
        scheduler.step(validation_loss)
        run.epoch = epoch + 1
        run.train_losses.append(train_loss)
        run.validation_losses.append(validation_loss)
        if validation_loss < run.best_validation_loss:
            run.best_validation_loss, run.best_epoch, run.stale_epochs = validation_loss, epoch, 0
            save_checkpoint(out_path, model, stage=config.stage, architecture=config.architecture, metadata=metadata())
        else:
            run.stale_epochs += 1
        _write_state(
            state_file,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            phase=phase,
            run=run,
            config=config,
            manifest_sha256=manifest_sha256,
        )
    else:
        run.stopped_early = config.stage == "classifier" and run.stale_epochs >= config.patience
    if run.best_epoch < 0:
        raise TrainingDivergedError(
            f"no epoch gave a finite validation loss (try a lower --lr); nothing was written to {out_path}"
        )
    # The best weights, with the summary of the whole run and their figures on the test split.
    best = load_checkpoint(out_path, stage=config.stage, architecture=config.architecture).model.to(device)
    refit = {}
    if config.refit_head:
        refit = {
            "head_refit": refit_classifier_head(
                best, train_set.dataset, validation_set, device=device, batch_size=config.batch_size
            )
        }
    evaluation = summarise_test_split(
        best.to(device), config.stage, test_set, device=device, batch_size=config.batch_size
    )
    sha256 = save_checkpoint(
        out_path,
        best,
        stage=config.stage,
        architecture=config.architecture,
        metadata={**metadata(), **refit, "evaluation": evaluation},
    )
    return TrainingResult(
        checkpoint=out_path,
        sha256=sha256,
        state_file=state_file,
        device=str(device),
        epochs_run=len(run.train_losses),
        best_epoch=run.best_epoch,
        best_validation_loss=run.best_validation_loss,
        train_losses=tuple(run.train_losses),
        validation_losses=tuple(run.validation_losses),
        stopped_early=run.stopped_early,
        split_sizes=split_sizes,
        evaluation=evaluation,
    )


def summarise_test_split(
    model: nn.Module, stage: str, test_set: SimulatedDataset, *, device: torch.device, batch_size: int = 64
) -> dict[str, Any]:
    """The headline figures of a trained stage on the test split, for its checkpoint's metadata.

    The classifier's are those of :func:`~density_db.inference.evaluation.classification_report`;
    the regressor's those of :func:`~density_db.inference.evaluation.regression_report`
    (dex) over every test sample, ungated: a regressor is trained without a
    classifier, and ``density-db evaluate`` measures the two stages together.
    Always in float32, even where training used bf16: the split is small, and
    bf16 would round a log count of 3 by up to 0.008 dex.
    """
    model.eval()
    outputs = []
    with torch.inference_mode():
        for images, _targets in DataLoader(test_set, batch_size=batch_size):
            outputs.append(model(images.to(device)).float().cpu())
    output = torch.cat(outputs)
    truth = test_set.samples[test_set.indices]
    true_class = np.asarray(truth["density_class"], dtype=np.int64)
    if stage == "classifier":
        report = classification_report(
            true_class, torch.softmax(output, dim=1).numpy(), test_set.class_counts[test_set.indices]
        )
        keys = ("accuracy", "accuracy_within_one_class", "macro_f1", "brier_score", "expected_calibration_error")
    else:
        report = regression_report(
            np.asarray(truth["log_bright"], dtype=np.float64), output.reshape(-1).numpy(), true_class
        )["overall"]
        keys = ("mae", "rmse", "r2", "within_20_percent")
    return {"split": "test", "samples": len(test_set), **{key: report[key] for key in keys}}


@dataclass
class _RunState:
    """The progress of a run, saved after every epoch."""

    epoch: int = 0
    best_validation_loss: float = math.inf
    best_epoch: int = -1
    stale_epochs: int = 0
    stopped_early: bool = False
    train_losses: list[float] = field(default_factory=list)
    validation_losses: list[float] = field(default_factory=list)


def _datasets(config: TrainingConfig, data_dirs) -> tuple[Augmented, SimulatedDataset, SimulatedDataset]:
    """The augmented training split, the validation split and the test split, checked against the stage."""
    target = TARGETS[config.stage]
    everything = SimulatedDataset(data_dirs, target=target, preprocessing_version=config.preprocessing_version)
    for directory, description in zip(everything.directories, everything.descriptions):
        task = description.get("task")
        if config.stage == "regressor" and task != "regress":
            raise ConfigurationError(
                f"{directory} is a {task} dataset; the regressor needs a regress dataset "
                "(density-db simulate dataset --task regress)"
            )
        if config.stage == "classifier" and task != "classify":
            logger.warning(
                "training the classifier on %s, a %s dataset: its density_class column is used", directory, task
            )
    train_indices, validation_indices, test_indices = split_indices(len(everything), config.split_seed)
    train_set = Augmented(everything.subset(train_indices), copies=config.augment_copies, seed=config.seed)
    return train_set, everything.subset(validation_indices), everything.subset(test_indices)


def _optimizer(model: nn.Module, config: TrainingConfig, phase: int):
    """AdamW and ReduceLROnPlateau over the trainable parameters of ``phase``.

    The regressor's parameter groups get their layer-wise learning rates;
    the classifier trains every parameter at one rate.
    """
    if config.stage == "classifier":
        groups: list[dict[str, Any]] = [{"params": list(model.parameters())}]
    else:
        multipliers = dict(zip(PARAMETER_GROUPS, config.lr_multipliers))
        groups = [
            {
                "params": [parameter for _, parameter in members],
                "lr": config.learning_rate * multipliers[group],
                "name": group,
            }
            for group, members in parameter_groups(model).items()
            if group in TRAINABLE_GROUPS[phase] and members
        ]
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=config.scheduler_factor, patience=config.scheduler_patience
    )
    return optimizer, scheduler


def _write_state(
    path: Path, *, model, optimizer, scheduler, phase, run: _RunState, config: TrainingConfig, manifest_sha256: str
) -> None:
    state = {
        "model": {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "phase": phase,
        "epoch": run.epoch,
        "best_validation_loss": run.best_validation_loss,
        "run": asdict(run),
        "config": config.as_dict(),
        "data_manifest_sha256": manifest_sha256,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            torch.save(state, handle)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def _read_state(path: Path, config: TrainingConfig, manifest_sha256: str) -> dict[str, Any]:
    """The saved state of a run, refused unless it belongs to the same stage, architecture, split and data."""
    if not path.exists():
        raise ConfigurationError(f"cannot resume: {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises pickle, zip and runtime errors alike
        raise ConfigurationError(f"cannot resume from {path}: {error}") from error
    saved = state.get("config", {})
    current = config.as_dict()
    keys = ("stage", "architecture", "split_seed", "augment_copies", "pretrained_weights", "backbone_checkpoint")
    differences = [f"{key} {saved.get(key)!r} != {current[key]!r}" for key in keys if saved.get(key) != current[key]]
    if state.get("data_manifest_sha256") != manifest_sha256:
        differences.append("the training data differs: another samples.ecsv, or other datasets or order")
    if differences:
        raise ConfigurationError(f"cannot resume from {path}: it belongs to another run ({'; '.join(differences)})")
    known = {item.name for item in fields(_RunState)}
    state["run"] = {key: value for key, value in state["run"].items() if key in known}
    return state

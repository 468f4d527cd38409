"""The networks of the two stages, built by name, and ImageNet initialisation.

Lai et al. (2026), Sec. 3.1 and Table 3: stage 1 (``classifier``) is a
torchvision ResNet-34 whose first convolution takes the 2-channel input
(standardised image, valid-pixel mask) and whose last layer gives one logit
per density class; stage 2 (``regressor``) is a ResNet-50 with the same first
convolution and a regression head 2048 -> 512 -> 256 -> 128 -> 1 with batch
normalisation, ReLU and dropout, predicting ``log10(1 + N_bright)``.
The first convolution takes as many channels as the model input has: 2 for
the paper's (preprocessing version 1), 4 for version 2, which adds the
point-source counts (``inference.preprocessing.CHANNELS``).

Version 2 networks also hand the counts to their head (our deviation from
the paper; the paper's networks are those of version 1): the head sees,
beside the pooled features, ``log10(1 + total)`` of each point-source
channel, and the regressor predicts a correction to the bright channel's
``log10(1 + total)`` instead of the whole value.  The totals are what a
star count is about; a stack of convolutions and an average pool can only
approximate a sum over 50,000 bins through non-linear layers, and on 512
training images did so to 0.55 dex where the total alone is within 0.015
dex (``benchmarks/model_inputs.py``).  The convolutions then learn what the
totals miss: galaxies taken for stars in empty fields, blends in crowded ones.

Smaller stand-ins share the same inputs and outputs, for laptops and tests:
``resnet18`` for either stage and ``baseline_cnn``, a compact plain CNN in the
spirit of the paper's "Baseline CNN" (Table 4: 90.04 % accuracy, 0.42 M
parameters; its layers are not described, so this one is ours).

Every network is built without weights (no download); a classifier returns
logits of shape ``(batch, N_CLASSES)``, a regressor a tensor of shape
``(batch,)``.  Module names follow torchvision (``conv1``, ``layer4``, ``fc``)
so that torchvision state dicts load into the backbones.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from density_db.errors import ConfigurationError
from density_db.labels import N_CLASSES

INPUT_CHANNELS = 2
"""The paper's input: standardised image and valid-pixel mask (preprocessing version 1); version 2 has 4."""

REGRESSION_HEAD_WIDTHS = (512, 256, 128)
"""Hidden layers of the regression head (paper Sec. 3.1.3)."""

REGRESSION_DROPOUT = 0.3
"""Dropout after each hidden layer of the regression head.

The paper uses dropout there (Sec. 3.1.3) without giving its rate; 0.3 is our
choice.
"""

_RESNETS: dict[str, tuple[type[nn.Module], list[int]]] = {
    "resnet18": (models.resnet.BasicBlock, [2, 2, 2, 2]),
    "resnet34": (models.resnet.BasicBlock, [3, 4, 6, 3]),
    "resnet50": (models.resnet.Bottleneck, [3, 4, 6, 3]),
}
"""torchvision's ResNets by their blocks and stage depths (what ``models.resnet34`` and the others build)."""

ARCHITECTURES: dict[str, tuple[str, ...]] = {
    "classifier": ("resnet34", "resnet18", "baseline_cnn"),
    "regressor": ("resnet50", "resnet18", "baseline_cnn"),
}
"""Allowed architectures per stage, the paper's first."""

_BASELINE_WIDTHS = (16, 32, 64, 128)


COUNT_CHANNELS = (2, 3)
"""Channels of a version 2 input that count sources (point-like, bright point-like): summed for the head."""


def build_model(stage: str, architecture: str, *, in_channels: int = INPUT_CHANNELS) -> nn.Module:
    """A freshly initialised network of one stage (no pretrained weights, no network access).

    Parameters
    ----------
    stage : str
        ``"classifier"`` (6 logits) or ``"regressor"`` (``log10(1 + N_bright)``).
    architecture : str
        One of ``ARCHITECTURES[stage]``.
    in_channels : int
        Channels of the model input: 2 for preprocessing version 1 (the
        paper's), 4 for version 2 (``inference.preprocessing.CHANNELS``),
        whose networks also give their head the counts' totals
        (:func:`count_features`).

    Returns
    -------
    torch.nn.Module
        Takes ``(batch, in_channels, 224, 224)`` float32; returns ``(batch, 6)``
        logits for a classifier, ``(batch,)`` for a regressor.

    Raises
    ------
    ConfigurationError
        If the stage or the architecture is unknown; the message lists the choices.
    """
    check_architecture(stage, architecture)
    outputs = N_CLASSES if stage == "classifier" else 1
    if in_channels < 1:
        raise ConfigurationError(f"a model needs at least one input channel, got {in_channels}")
    counted = in_channels > max(COUNT_CHANNELS)
    if architecture == "baseline_cnn":
        return _baseline_cnn(outputs, in_channels, counted=counted)
    block, layers = _RESNETS[architecture]
    network = _CountingResNet(block, layers, residual=stage == "regressor") if counted else models.ResNet(block, layers)
    network.conv1 = _input_conv(network.conv1, in_channels)
    features = network.fc.in_features + (len(COUNT_CHANNELS) if counted else 0)
    network.fc = nn.Linear(features, outputs) if stage == "classifier" else _regression_head(features)
    return network


def count_features(inputs: torch.Tensor) -> torch.Tensor:
    """``log10(1 + total)`` of each point-source channel of a batch of version 2 inputs: ``(batch, 2)``.

    The pooling bins overlap by a pixel, so a total exceeds the sources on
    the image by a constant 4-5 % (0.02 dex), which the head's bias absorbs.
    """
    totals = inputs[:, list(COUNT_CHANNELS)].sum(dim=(2, 3))
    return torch.log10(1 + totals.clamp(min=0))


class _CountingResNet(models.ResNet):
    """A torchvision ResNet whose head also sees :func:`count_features` (the same module names and weights)."""

    def __init__(self, block, layers: list[int], *, residual: bool) -> None:
        super().__init__(block, layers)
        self.residual = residual

    def _forward_impl(self, inputs: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(inputs))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        counts = count_features(inputs)
        outputs = self.fc(torch.cat([torch.flatten(self.avgpool(x), 1), counts], dim=1))
        return outputs + counts[:, 1] if self.residual else outputs


class _CountingSequential(nn.Sequential):
    """``baseline_cnn`` whose last linear layer also sees :func:`count_features` (the same module indices)."""

    def __init__(self, *layers: nn.Module, residual: bool) -> None:
        super().__init__(*layers)
        self.residual = residual

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        counts = count_features(inputs)
        outputs = inputs
        for module in self:
            if isinstance(module, nn.Linear):
                outputs = torch.cat([outputs, counts], dim=1)
            outputs = module(outputs)
        return outputs + counts[:, 1] if self.residual else outputs


def input_channels(model: nn.Module) -> int | None:
    """The number of input channels a network takes: those of its first convolution (None without one)."""
    return next((module.in_channels for module in model.modules() if isinstance(module, nn.Conv2d)), None)


def check_architecture(stage: str, architecture: str) -> None:
    """Raise :class:`ConfigurationError` unless ``architecture`` is allowed for ``stage``."""
    if stage not in ARCHITECTURES:
        raise ConfigurationError(f"unknown model stage {stage!r}; choose one of {', '.join(ARCHITECTURES)}")
    if architecture not in ARCHITECTURES[stage]:
        raise ConfigurationError(
            f"unknown {stage} architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES[stage])}"
        )


def adapt_first_conv_from_rgb(weight: torch.Tensor, in_channels: int = INPUT_CHANNELS) -> torch.Tensor:
    """Turn RGB first-convolution weights into weights for the model input's channels.

    Each input channel (image, mask, and version 2's point-source counts) gets the mean of the kernel
    over the red, green and blue channels.  The mean, not the sum, keeps every
    weight at the magnitude of one pretrained input channel, so one
    standardised input channel excites the filter about as strongly as one
    ImageNet-normalised colour channel did; the spatial pattern of each filter
    (edges, blobs) is kept as it was.

    Parameters
    ----------
    weight : torch.Tensor
        Shape ``(out_channels, 3, kh, kw)``.

    in_channels : int
        Channels of the model input.

    Returns
    -------
    torch.Tensor
        Shape ``(out_channels, in_channels, kh, kw)``, a new tensor.

    Raises
    ------
    ConfigurationError
        If ``weight`` does not have 3 input channels.
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ConfigurationError(
            f"expected first-convolution weights of shape (out, 3, kh, kw), got {tuple(weight.shape)}"
        )
    return weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1)


def load_imagenet_weights(model: nn.Module, path: str | Path) -> None:
    """Initialise a ResNet backbone, in place, from a local torchvision weights file.

    The file is a state dict saved with ``torch.save`` (e.g. torchvision's
    ``resnet50-11ad3fa6.pth``); nothing is downloaded.  The first convolution
    is adapted with :func:`adapt_first_conv_from_rgb`, the ImageNet ``fc``
    layer is dropped (the model keeps its own freshly initialised head) and
    every other tensor must match the model by name and shape.

    Parameters
    ----------
    model : torch.nn.Module
        A ResNet from :func:`build_model`.
    path : str or pathlib.Path
        The weights file.

    Raises
    ------
    ConfigurationError
        If the model is not a ResNet, the file cannot be read as a state dict,
        or its tensors do not match the model's backbone (names the tensors).
    """
    if not isinstance(model, models.ResNet):
        raise ConfigurationError(f"ImageNet weights need a ResNet backbone, not {type(model).__name__}")
    pretrained = {name: tensor for name, tensor in _read_state_dict(path).items() if not name.startswith("fc.")}
    first_conv = pretrained.get("conv1.weight")
    if first_conv is not None and first_conv.ndim == 4 and first_conv.shape[1] == 3:
        pretrained["conv1.weight"] = adapt_first_conv_from_rgb(first_conv, model.conv1.in_channels)
    backbone = {name: tensor for name, tensor in model.state_dict().items() if not name.startswith("fc.")}
    problems = state_dict_mismatches(backbone, pretrained)
    if problems:
        raise ConfigurationError(f"{path} does not fit this {type(model).__name__} backbone: {problems}")
    model.load_state_dict(pretrained, strict=False)


def state_dict_mismatches(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> str:
    """Describe how the tensors of ``given`` differ from those of ``expected``.

    Returns
    -------
    str
        Missing, unexpected and wrongly shaped tensors (at most five names of
        each) on one line; empty when names and shapes all match.
    """
    missing = sorted(expected.keys() - given.keys())
    unexpected = sorted(given.keys() - expected.keys())
    reshaped = sorted(
        f"{name} {tuple(given[name].shape)} != {tuple(expected[name].shape)}"
        for name in expected.keys() & given.keys()
        if given[name].shape != expected[name].shape
    )
    parts = [
        f"{label} ({len(names)}): {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}"
        for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", reshaped))
        if names
    ]
    return "; ".join(parts)


def read_torch_file(path: str | Path, *, map_location: str | torch.device = "cpu") -> object:
    """Read a file written by ``torch.save`` without running arbitrary pickled code.

    Uses ``torch.load(..., weights_only=True)``: tensors, containers and plain
    Python values only.

    Raises
    ------
    ConfigurationError
        If the file does not exist or is not such a file.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as error:
        raise ConfigurationError(f"weights file {path} does not exist") from error
    except Exception as error:  # torch raises pickle, zip and runtime errors alike
        raise ConfigurationError(f"cannot read {path} as a torch weights file: {error}") from error


def is_state_dict(value: object) -> bool:
    """Whether ``value`` is a mapping of tensor names to tensors (a plain PyTorch state dict)."""
    return isinstance(value, Mapping) and all(
        isinstance(name, str) and isinstance(tensor, torch.Tensor) for name, tensor in value.items()
    )


def _input_conv(rgb_conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    return nn.Conv2d(
        in_channels,
        rgb_conv.out_channels,
        kernel_size=rgb_conv.kernel_size,
        stride=rgb_conv.stride,
        padding=rgb_conv.padding,
        bias=rgb_conv.bias is not None,
    )


def _regression_head(in_features: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in REGRESSION_HEAD_WIDTHS:
        layers += [
            nn.Linear(in_features, width),
            nn.BatchNorm1d(width),
            nn.ReLU(inplace=True),
            nn.Dropout(REGRESSION_DROPOUT),
        ]
        in_features = width
    # Flatten(0) turns the (batch, 1) output into (batch,).
    return nn.Sequential(*layers, nn.Linear(in_features, 1), nn.Flatten(0))


class SignedLog(nn.Module):
    """``asinh`` of the input, a fixed (parameter-free) compression of its dynamic range.

    A standardised detector image spans noise (about 1) to bright stars
    hundreds of standard deviations high; ``asinh`` keeps small values as
    they are and turns the tail logarithmic, so a small network's batch
    statistics are not dominated by a few stars.
    """

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.asinh(inputs)


def _baseline_cnn(outputs: int, in_channels: int, *, counted: bool) -> nn.Sequential:
    """``SignedLog``, four blocks of 3x3 convolution, batch norm, ReLU and 2x2 max pooling, global average.

    The first convolution has stride 2 (every pixel still falls under a
    kernel): with max pooling after each block, the blocks work at 56, 28, 14
    and 7 pixels, about 50 M multiply-adds per image, cheap enough to train
    on a CPU.
    """
    layers: list[nn.Module] = [SignedLog()]
    for index, width in enumerate(_BASELINE_WIDTHS):
        layers += [
            nn.Conv2d(in_channels, width, kernel_size=3, stride=2 if index == 0 else 1, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
        in_channels = width
    layers += [
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(in_channels + (len(COUNT_CHANNELS) if counted else 0), outputs),
    ]
    if outputs == 1:
        layers.append(nn.Flatten(0))
    return _CountingSequential(*layers, residual=outputs == 1) if counted else nn.Sequential(*layers)


def _read_state_dict(path: str | Path) -> Mapping[str, torch.Tensor]:
    state = read_torch_file(path)
    if not is_state_dict(state):
        raise ConfigurationError(f"{path} is not a state dict (a mapping of tensor names to tensors)")
    return state

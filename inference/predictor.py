"""The two-stage predictor: classify every image, count bright stars where the regressor is valid.

Gating (Lai et al. 2026, Sec. 4.5):

* class 0 (no star): ``N_bright = 0`` without running the regressor (``"empty"``);
* class 5 (>= 100 000 stars): the regressor is bypassed, since such fields
  lie beyond its validated range of about 2000 bright stars; no count
  (``"bypassed"``), the field goes to crowded-field photometry;
* classes 1-4: the regressor predicts ``y = log10(1 + N_bright)`` for those
  images only, in one batched call (``"predicted"``).

On CUDA both networks run in bfloat16 autocast on channels-last tensors;
probabilities are computed in float32 either way, and the regressor's last
linear layer runs in float32, since bfloat16's 8-bit mantissa would round
``log10(1 + N_bright)`` to steps of up to 0.016 dex.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from density_db.inference.architectures import input_channels
from density_db.labels import BYPASSED_CLASS, EMPTY_CLASS, INPUT_SIZE, N_CLASSES


@dataclass(frozen=True)
class Prediction:
    """The two stages' answer for one image.

    Attributes
    ----------
    probabilities : tuple of float
        Softmax probability of each of the ``N_CLASSES`` density classes.
    density_class : int
        The most probable class.
    confidence : float
        Its probability.
    log_bright : float or None
        ``log10(1 + N_bright)``: 0.0 for class 0, None for class 5.
    bright_count : float or None
        ``max(10**log_bright - 1, 0)``: 0.0 for class 0, None for class 5.
    regression_status : str
        ``"empty"`` (class 0), ``"bypassed"`` (class 5) or ``"predicted"``.
    """

    probabilities: tuple[float, ...]
    density_class: int
    confidence: float
    log_bright: float | None
    bright_count: float | None
    regression_status: str


class TwoStagePredictor:
    """Run a classifier and a regressor on preprocessed images with the paper's gating.

    Parameters
    ----------
    classifier : torch.nn.Module
        Returns ``(batch, N_CLASSES)`` logits.
    regressor : torch.nn.Module
        Returns ``log10(1 + N_bright)``, one value per image.
    device : str or torch.device
        Where both networks run; they are moved there and put in eval mode.
    mixed_precision : bool, optional
        bfloat16 autocast; by default on CUDA only.
    """

    def __init__(
        self,
        classifier: nn.Module,
        regressor: nn.Module,
        *,
        device: str | torch.device = "cpu",
        mixed_precision: bool | None = None,
    ) -> None:
        self.device = torch.device(device)
        self._on_cuda = self.device.type == "cuda"
        self._mixed_precision = self._on_cuda if mixed_precision is None else mixed_precision
        memory_format = torch.channels_last if self._on_cuda else torch.contiguous_format
        self.channels = input_channels(classifier)
        if input_channels(regressor) not in (None, self.channels):
            raise ValueError(
                f"the classifier takes {self.channels} input channels and the regressor "
                f"{input_channels(regressor)}: the two stages must share one preprocessing version"
            )
        self.classifier = classifier.to(self.device, memory_format=memory_format).eval()
        self.regressor = regressor.to(self.device, memory_format=memory_format).eval()
        if self._mixed_precision:
            _last_linear(self.regressor).register_forward_hook(_recompute_in_float32)

    def predict(self, batch: torch.Tensor | np.ndarray) -> list[Prediction]:
        """Predict density class and bright-star count for each image of a batch.

        Parameters
        ----------
        batch : torch.Tensor or numpy.ndarray
            Preprocessed inputs of shape ``(n, channels, 224, 224)``
            (``inference.preprocessing``, the models' version), on any device.

        Returns
        -------
        list of Prediction
            One per image, in order.

        Raises
        ------
        ValueError
            If the batch does not have the model input's shape, or a network's
            output has the wrong shape.
        """
        inputs = self._inputs(batch)
        with torch.inference_mode():
            probabilities = self._classify(inputs)
            classes = probabilities.argmax(dim=1)
            regressed = torch.nonzero((classes != EMPTY_CLASS) & (classes != BYPASSED_CLASS)).flatten()
            log_bright = self._regress(inputs[regressed]) if len(regressed) else torch.empty(0)
        return _predictions(
            probabilities.cpu().numpy(), classes.cpu().numpy(), regressed.cpu().numpy(), log_bright.cpu().numpy()
        )

    def _inputs(self, batch: torch.Tensor | np.ndarray) -> torch.Tensor:
        inputs = torch.as_tensor(batch)
        expected = (self.channels, INPUT_SIZE, INPUT_SIZE)
        if inputs.ndim != 4 or (self.channels is not None and tuple(inputs.shape[1:]) != expected):
            raise ValueError(
                f"expected a batch of shape (n, {', '.join(map(str, expected))}), got {tuple(inputs.shape)}"
            )
        return inputs.to(self.device, dtype=torch.float32, non_blocking=True)

    def _layout(self, inputs: torch.Tensor) -> torch.Tensor:
        # Channels-last lets cuDNN use tensor-core convolutions under autocast.
        return inputs.contiguous(memory_format=torch.channels_last) if self._on_cuda else inputs

    def _classify(self, inputs: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._mixed_precision):
            logits = self.classifier(self._layout(inputs))
        if tuple(logits.shape) != (len(inputs), N_CLASSES):
            raise ValueError(
                f"the classifier returned shape {tuple(logits.shape)}, expected ({len(inputs)}, {N_CLASSES})"
            )
        return torch.softmax(logits.float(), dim=1)

    def _regress(self, inputs: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._mixed_precision):
            output = self.regressor(self._layout(inputs))
        if output.numel() != len(inputs):
            raise ValueError(f"the regressor returned shape {tuple(output.shape)} for {len(inputs)} images")
        return output.float().reshape(-1)


def _last_linear(network: nn.Module) -> nn.Linear:
    """The network's last ``nn.Linear`` (the output layer of every regressor architecture)."""
    linears = [module for module in network.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"the regressor {type(network).__name__} has no linear output layer")
    return linears[-1]


def _recompute_in_float32(layer: nn.Linear, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> torch.Tensor:
    """Forward hook: the layer's output again in float32, outside autocast, replacing the bfloat16 one."""
    with torch.autocast(inputs[0].device.type, enabled=False):
        bias = None if layer.bias is None else layer.bias.float()
        return nn.functional.linear(inputs[0].float(), layer.weight.float(), bias)


def _predictions(
    probabilities: np.ndarray, classes: np.ndarray, regressed: np.ndarray, log_bright: np.ndarray
) -> list[Prediction]:
    """Assemble per-image predictions; ``log_bright[i]`` belongs to image ``regressed[i]``."""
    log_bright_of = dict(zip(regressed.tolist(), log_bright.tolist()))
    return [
        _prediction(row, int(density_class), log_bright_of.get(index))
        for index, (row, density_class) in enumerate(zip(probabilities, classes))
    ]


def _prediction(probabilities: np.ndarray, density_class: int, log_bright: float | None) -> Prediction:
    if density_class == EMPTY_CLASS:
        log_bright, bright_count, status = 0.0, 0.0, "empty"
    elif density_class == BYPASSED_CLASS:
        log_bright, bright_count, status = None, None, "bypassed"
    else:
        bright_count, status = max(10.0**log_bright - 1.0, 0.0), "predicted"
    return Prediction(
        probabilities=tuple(probabilities.tolist()),
        density_class=density_class,
        confidence=float(probabilities[density_class]),
        log_bright=log_bright,
        bright_count=bright_count,
        regression_status=status,
    )

"""Refit a trained classifier's last linear layer to convergence on its training features (our addition).

Stochastic training with weight decay leaves the last layer short of the
sharp class boundaries that a count calls for: a version 2 classifier sees
``log10(1 + N)`` of the point-like sources, and the classes are intervals
of it.  Its last layer is a multinomial logistic regression on the pooled
features (and the counts' totals), a convex problem, so once the network is
trained it can be solved to the optimum: the training split's features
(without augmentation) are standardised, the layer is fitted with L-BFGS on
cross-entropy plus an L2 penalty, the penalty chosen from
:data:`PENALTIES` by the validation split's cross-entropy, and the
standardisation folded into the weights, so the network keeps its shape.

Measured on the shipped demo classifier (``baseline_cnn``, 1,536 uniform
training images): validation cross-entropy 0.184 before the refit, 0.118
after; 95.8 % accuracy on 2,000 held-out images after (see the model card).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

PENALTIES = (1e-4, 1e-3, 1e-2)
"""L2 penalties tried (on standardised features, per weight), the best by validation cross-entropy."""

_MAX_ITERATIONS = 500


def last_linear_layer(model: nn.Module) -> nn.Linear:
    """The classifier's output layer: its last ``nn.Linear`` (``fc`` of a ResNet, the end of ``baseline_cnn``)."""
    layers = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no linear layer to refit")
    return layers[-1]


def refit_classifier_head(
    model: nn.Module, train_set: Dataset, validation_set: Dataset, *, device: torch.device, batch_size: int = 64
) -> dict[str, Any]:
    """Refit ``model``'s last linear layer in place; return what was done, for the checkpoint's metadata."""
    head = last_linear_layer(model)
    train_features, train_labels = _features(model, head, train_set, device, batch_size)
    validation_features, validation_labels = _features(model, head, validation_set, device, batch_size)
    mean, scale = train_features.mean(0), train_features.std(0).clamp(min=1e-6)
    standardised = (train_features - mean) / scale
    validation_standardised = (validation_features - mean) / scale
    fits = {}
    for penalty in PENALTIES:
        layer = _fitted_layer(standardised, train_labels, penalty, head.out_features)
        with torch.no_grad():
            loss = nn.functional.cross_entropy(layer(validation_standardised), validation_labels).item()
        fits[penalty] = (loss, layer)
    penalty = min(fits, key=lambda key: fits[key][0])
    loss, layer = fits[penalty]
    with torch.no_grad():
        before = nn.functional.cross_entropy(head(validation_features.to(head.weight)).cpu(), validation_labels)
        weight = layer.weight / scale
        head.weight.copy_(weight.to(head.weight))
        head.bias.copy_((layer.bias - weight @ mean).to(head.bias))
    return {
        "penalty": penalty,
        "penalties_tried": list(PENALTIES),
        "validation_loss_before": float(before),
        "validation_loss_after": loss,
    }


def _features(
    model: nn.Module, head: nn.Linear, dataset: Dataset, device: torch.device, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``head`` receives for every sample (float64 on the CPU), and the labels."""
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _module, inputs, _output: captured.append(inputs[0].double().cpu()))
    labels = []
    model.eval()
    try:
        with torch.inference_mode():
            for inputs, targets in DataLoader(dataset, batch_size=batch_size):
                model(inputs.to(device, torch.float32))
                labels.append(targets)
    finally:
        hook.remove()
    return torch.cat(captured), torch.cat(labels).long()


def _fitted_layer(features: torch.Tensor, labels: torch.Tensor, penalty: float, classes: int) -> nn.Linear:
    """Multinomial logistic regression by L-BFGS (float64, deterministic), from zero weights."""
    layer = nn.Linear(features.shape[1], classes, dtype=torch.float64)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    optimizer = torch.optim.LBFGS(layer.parameters(), max_iter=_MAX_ITERATIONS, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(layer(features), labels) + penalty * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return layer

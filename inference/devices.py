"""Where torch runs: one reading of ``--device auto|cpu|cuda`` for training, evaluation, the cluster and workers."""

from __future__ import annotations

from density_db.errors import ConfigurationError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(requested: str) -> str:
    """``cpu`` or ``cuda`` for a requested ``auto``, ``cpu`` or ``cuda`` on this machine.

    ``auto`` takes CUDA where this process sees a CUDA device.

    Raises
    ------
    ConfigurationError
        If ``cuda`` is asked for and this process has no CUDA device.
    """
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError("--device cuda: no CUDA device is available on this machine")
    return requested


def torch_device(requested: str):
    """:func:`resolve_device` as a ``torch.device``."""
    import torch

    return torch.device(resolve_device(requested))

"""Hyper-parameter tuning of the learning rates with Optuna (Lai et al. 2026, Sec. 3.2).

The paper tuned the learning rates with Optuna and does not give the values.
:func:`tune` runs an in-memory Optuna study (TPE sampler, minimising the best
validation loss of :func:`inference.training.train`) over

* ``learning_rate``: the AdamW base learning rate, log-uniform in [1e-4, 3e-3];
* regressor only, the layer-wise multipliers of ``layer4`` (log-uniform in
  [0.05, 1]) and of the rest of the backbone, sampled as a fraction of the
  ``layer4`` multiplier (log-uniform in [0.05, 1]) so that it never exceeds
  it.  The head multiplier stays the configuration's.

Every trial trains with the same seed and split, into its own checkpoint in
a temporary directory next to ``out_path``; the best trial's checkpoint is
then moved to ``out_path`` (atomic replace) with a ``"tuning"`` entry added to
its metadata.  Library code never prints.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from density_db.errors import ConfigurationError, DensityDBError, TrainingDivergedError
from density_db.inference.checkpoints import load_checkpoint, save_checkpoint
from density_db.inference.training import Progress, TrainingConfig, train

logger = logging.getLogger(__name__)

LEARNING_RATE_RANGE = (1e-4, 3e-3)
"""Log-uniform range of the AdamW base learning rate."""

LAYER4_MULTIPLIER_RANGE = (0.05, 1.0)
"""Log-uniform range of the regressor's ``layer4`` learning-rate multiplier."""

BACKBONE_FRACTION_RANGE = (0.05, 1.0)
"""Log-uniform range of the rest of the backbone's multiplier as a fraction of ``layer4``'s."""


@dataclass(frozen=True)
class TuningResult:
    """What a tuning study produced.

    Attributes
    ----------
    best_params : dict
        The chosen settings as :class:`TrainingConfig` fields:
        ``learning_rate`` and, for the regressor, ``lr_multipliers``
        (head, layer4, rest of the backbone).
    best_validation_loss : float
        The best trial's lowest validation loss.
    trials : tuple of (dict, float)
        ``(params, best validation loss)`` of every completed trial, in order.
    failed_trials : int
        Trials that raised an exception other than a :class:`DensityDBError`.
    checkpoint : pathlib.Path
        ``out_path``, holding the best trial's model.
    sha256 : str
        SHA-256 of that checkpoint file.
    """

    best_params: dict[str, Any]
    best_validation_loss: float
    trials: tuple[tuple[dict[str, Any], float], ...]
    failed_trials: int = 0
    checkpoint: Path | None = None
    sha256: str = ""


def suggest_params(trial: optuna.Trial, config: TrainingConfig) -> dict[str, Any]:
    """The trial's settings as :class:`TrainingConfig` fields (see the module docstring)."""
    params: dict[str, Any] = {
        "learning_rate": trial.suggest_float("learning_rate", *LEARNING_RATE_RANGE, log=True),
    }
    if config.stage == "regressor":
        layer4 = trial.suggest_float("layer4_multiplier", *LAYER4_MULTIPLIER_RANGE, log=True)
        fraction = trial.suggest_float("backbone_fraction", *BACKBONE_FRACTION_RANGE, log=True)
        params["lr_multipliers"] = (config.lr_multipliers[0], layer4, layer4 * fraction)
    return params


def tune(
    config: TrainingConfig,
    data_dirs: str | Path | Sequence[str | Path],
    out_path: str | Path,
    *,
    trials: int,
    seed: int,
    progress: Progress | None = None,
) -> TuningResult:
    """Tune the learning rates of ``config`` with ``trials`` Optuna trials; the best model goes to ``out_path``.

    Parameters
    ----------
    config : TrainingConfig
        The base settings; each trial replaces ``learning_rate`` (and the
        regressor's ``lr_multipliers``).
    data_dirs : str, pathlib.Path or a sequence of them
        A directory written by ``density-db simulate dataset``, or several
        read as one (as :func:`~density_db.inference.training.train`).
    out_path : str or pathlib.Path
        Where the best trial's checkpoint goes; its metadata gains a
        ``"tuning"`` entry.  No ``<out>.state.pt`` is written: a tuned run
        cannot be resumed.
    trials : int
        Number of trials (at least 1).
    seed : int
        Seed of the TPE sampler (the training seed is ``config.seed``, the
        same for every trial).
    progress : callable, optional
        ``progress(epoch, step, steps, loss, images_per_s)`` with epochs
        counted over the whole study: trial ``i``'s epoch ``e`` is
        ``i * config.total_epochs + e``.

    Raises
    ------
    DensityDBError
        As raised by a trial (for instance an unsuitable dataset); the study
        stops and nothing is written to ``out_path``.
    ConfigurationError
        ``trials`` is below 1, or no trial completed.
    """
    if trials < 1:
        raise ConfigurationError(f"trials must be at least 1, got {trials}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    work = Path(tempfile.mkdtemp(dir=out_path.parent, prefix=f".{out_path.name}.tuning."))
    completed: list[tuple[dict[str, Any], float]] = []
    failed = 0
    best: tuple[int, dict[str, Any], float, Path] | None = None  # trial number, params, loss, checkpoint
    try:
        for index in range(trials):
            trial = study.ask()
            params = suggest_params(trial, config)
            checkpoint = work / f"trial-{trial.number}.pt"
            try:
                result = train(
                    dataclasses.replace(config, **params),
                    data_dirs,
                    checkpoint,
                    progress=_offset(progress, index * config.total_epochs),
                )
            except TrainingDivergedError:
                logger.warning("tuning trial %d diverged with %s", trial.number, params)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                failed += 1
                continue
            except DensityDBError:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise
            except Exception:  # noqa: BLE001 - a failed trial must not lose the study
                logger.exception("tuning trial %d failed with %s", trial.number, params)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                failed += 1
                continue
            finally:
                (work / f"trial-{trial.number}.pt.state.pt").unlink(missing_ok=True)
            loss = result.best_validation_loss
            study.tell(trial, loss)
            completed.append((params, loss))
            logger.info("tuning trial %d: %s -> best validation loss %.4g", trial.number, params, loss)
            if best is None or loss < best[2]:
                if best is not None:
                    best[3].unlink(missing_ok=True)
                best = (trial.number, params, loss, checkpoint)
            else:
                checkpoint.unlink(missing_ok=True)
        if best is None:
            raise ConfigurationError(f"none of the {trials} tuning trials completed; nothing was written to {out_path}")
        number, params, loss, checkpoint = best
        loaded = load_checkpoint(checkpoint, stage=config.stage, architecture=config.architecture)
        tuning = {
            "sampler": "optuna TPESampler",
            "sampler_seed": seed,
            "trials": trials,
            "completed_trials": len(completed),
            "failed_trials": failed,
            "best_trial": number,
            "best_params": _plain(params),
            "best_validation_loss": loss,
            "search_space": {
                "learning_rate": list(LEARNING_RATE_RANGE),
                **(
                    {
                        "layer4_multiplier": list(LAYER4_MULTIPLIER_RANGE),
                        "backbone_fraction_of_layer4": list(BACKBONE_FRACTION_RANGE),
                    }
                    if config.stage == "regressor"
                    else {}
                ),
            },
            "history": [{"params": _plain(p), "best_validation_loss": value} for p, value in completed],
        }
        final = work / "best.pt"
        sha256 = save_checkpoint(
            final,
            loaded.model,
            stage=config.stage,
            architecture=config.architecture,
            metadata={**loaded.metadata, "tuning": tuning},
        )
        os.replace(final, out_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return TuningResult(
        best_params=params,
        best_validation_loss=loss,
        trials=tuple(completed),
        failed_trials=failed,
        checkpoint=out_path,
        sha256=sha256,
    )


def _plain(params: dict[str, Any]) -> dict[str, Any]:
    return {key: list(value) if isinstance(value, tuple) else value for key, value in params.items()}


def _offset(progress: Progress | None, epochs: int) -> Progress | None:
    if progress is None:
        return None

    def shifted(epoch: int, step: int, steps: int, loss: float, images_per_s: float) -> None:
        progress(epoch + epochs, step, steps, loss, images_per_s)

    return shifted

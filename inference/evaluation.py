"""Test-set metrics of the two stages (Lai et al. 2026, Sec. 4) and calibration (Stoppa et al., ASID-C, Sec. III C).

The metric functions take numpy arrays and need no torch:

* :func:`classification_report`: accuracy, per-class precision/recall/F1,
  macro-F1, accuracy within one class, confusion matrix, multi-class Brier
  score, expected calibration error with its reliability bins, and the error
  rate versus distance (dex) to the nearest class edge (paper Fig. 10).
* :func:`regression_report`: MAE, MSE, RMSE and R^2 in dex on
  ``log10(1 + N_bright)`` (paper Sec. 4.2), overall and by true class, and
  the fraction of predictions within +-20 % (paper Fig. 9).

:func:`predict_samples` runs :class:`~density_db.inference.predictor.TwoStagePredictor`
over a simulated dataset and :func:`summarise` turns its per-sample answers
into one JSON-compatible report, with the headline scores of each band
(:func:`scores_by_band`); :func:`evaluate` does both.

Conventions, chosen so that every number is defined on small or skewed sets:

* A class with no true sample (no support) gets precision, recall and F1
  ``None`` and is left out of the macro-F1; its ``predicted`` count still
  shows false alarms, which also lower the other classes' recall.  A class
  with support that was never predicted gets precision 0 (so F1 0).
* Regression metrics of an empty group are ``None``; R^2 is ``None`` when
  the true values do not vary.
* "Within +-20 %" compares ``1 + N`` (``|(1 + N_pred) / (1 + N_true) - 1| <=
  0.2``), so that empty fields have a defined relative error; for large N it
  is the relative error of N itself.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from density_db.errors import ConfigurationError
from density_db.inference.devices import torch_device
from density_db.labels import CLASS_LOWER_EDGES, N_CLASSES, label_rule, recorded_label_rule

if TYPE_CHECKING:
    from density_db.inference.checkpoints import LoadedModel

logger = logging.getLogger(__name__)

CALIBRATION_BINS = 15
"""Equal-width confidence bins of the expected calibration error."""

EDGE_DISTANCE_BINS = (0.0, 0.1, 0.2, 0.5, 1.0, np.inf)
"""Bin edges (dex) of the distance ``min |log10 N - log10 edge|`` to the nearest class edge."""

CLASS_EDGES = tuple(edge for edge in CLASS_LOWER_EDGES if edge > 0)
"""The star counts at which the class changes: 1, 100, 1 000, 10 000, 100 000."""

RELATIVE_TOLERANCE = 0.2
"""The +-20 % band of the paper's Fig. 9."""

SPLITS = ("test", "all")


def classification_report(true_class: np.ndarray, probabilities: np.ndarray, star_count: np.ndarray) -> dict[str, Any]:
    """Classification metrics of softmax outputs against the true classes.

    Parameters
    ----------
    true_class : array of int, shape (n,)
        True density class (0 to ``N_CLASSES - 1``) of each sample.
    probabilities : array of float, shape (n, N_CLASSES)
        Predicted class probabilities; the predicted class is the most probable.
    star_count : array of int, shape (n,)
        True number of stars, for the distance to the nearest class edge.

    Returns
    -------
    dict
        ``samples``, ``accuracy``, ``accuracy_within_one_class``, ``macro_f1``
        (over classes with support), ``per_class`` (one dict per class:
        ``class``, ``range``, ``support``, ``predicted``, ``precision``,
        ``recall``, ``f1``), ``confusion_matrix`` (rows true, columns predicted),
        ``brier_score``, ``expected_calibration_error``, ``reliability`` (bins)
        and ``error_rate_by_edge_distance`` (bins).

    Raises
    ------
    ValueError
        If the arrays are empty, disagree in length or hold invalid classes,
        probabilities or counts.
    """
    true_class, probabilities, star_count = _checked_classification(true_class, probabilities, star_count)
    predicted = probabilities.argmax(axis=1)
    confusion = np.zeros((N_CLASSES, N_CLASSES), dtype=np.int64)
    np.add.at(confusion, (true_class, predicted), 1)
    per_class = [_class_scores(confusion, index) for index in range(N_CLASSES)]
    f1_scores = [row["f1"] for row in per_class if row["f1"] is not None]
    correct = predicted == true_class
    expected_error, reliability = _calibration(probabilities.max(axis=1), correct)
    return {
        "samples": int(len(true_class)),
        "accuracy": float(correct.mean()),
        "accuracy_within_one_class": float((np.abs(predicted - true_class) <= 1).mean()),
        "macro_f1": float(np.mean(f1_scores)),
        "macro_f1_classes": [row["class"] for row in per_class if row["f1"] is not None],
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "brier_score": float(np.mean(np.sum((probabilities - np.eye(N_CLASSES)[true_class]) ** 2, axis=1))),
        "expected_calibration_error": expected_error,
        "reliability": reliability,
        "error_rate_by_edge_distance": _error_rate_by_edge_distance(star_count, correct),
    }


def regression_report(true_log: np.ndarray, predicted_log: np.ndarray, true_class: np.ndarray) -> dict[str, Any]:
    """Regression metrics in dex on ``log10(1 + N_bright)``, overall and by true density class.

    Parameters
    ----------
    true_log, predicted_log : array of float, shape (n,)
        True and predicted ``log10(1 + N_bright)``.
    true_class : array of int, shape (n,)
        True density class of each sample, for the per-class rows.

    Returns
    -------
    dict
        ``overall`` and ``by_class`` (a list of ``N_CLASSES`` dicts with
        ``class`` added), each with ``samples``, ``mae``, ``mse``, ``rmse``,
        ``r2`` and ``within_20_percent``; ``None`` where a group is empty
        (R^2 also where its true values are all equal).

    Raises
    ------
    ValueError
        If the arrays disagree in length or hold non-finite values or invalid classes.
    """
    true_log = np.asarray(true_log, dtype=np.float64).reshape(-1)
    predicted_log = np.asarray(predicted_log, dtype=np.float64).reshape(-1)
    true_class = np.asarray(true_class).reshape(-1)
    if not len(true_log) == len(predicted_log) == len(true_class):
        raise ValueError(
            f"true_log, predicted_log and true_class differ in length: "
            f"{len(true_log)}, {len(predicted_log)}, {len(true_class)}"
        )
    if not (np.all(np.isfinite(true_log)) and np.all(np.isfinite(predicted_log))):
        raise ValueError("true_log and predicted_log must be finite")
    _check_classes(true_class, "true_class")
    return {
        "overall": _regression_scores(true_log, predicted_log),
        "by_class": [
            {"class": index, **_regression_scores(true_log[true_class == index], predicted_log[true_class == index])}
            for index in range(N_CLASSES)
        ],
    }


@dataclass(frozen=True)
class EvaluationSamples:
    """Per-sample truth and two-stage predictions of an evaluated dataset split.

    Attributes
    ----------
    indices : array of int
        Rows of the dataset's ``samples.ecsv`` that were evaluated (of the
        datasets' samples one after the other, when several were given).
    true_class, star_count, true_log : arrays
        Truth: density class, number of stars the label rule counts (the
        class's), ``log10(1 + N_bright)``.
    band : array of str
        The band each image was simulated in.
    probabilities : array of float, shape (n, N_CLASSES)
        Classifier softmax outputs.
    predicted_class : array of int
        The most probable class.
    predicted_log : array of float
        Predicted ``log10(1 + N_bright)``: 0 for ``empty``, NaN for ``bypassed``
        and wherever no regressor was given.
    status : array of str
        The predictor's gating: ``empty``, ``bypassed`` or ``predicted``.
    regressed : bool
        Whether a regressor ran on the ``predicted`` samples.
    split, split_seed
        Which samples: ``test`` (of ``split_indices(n, split_seed)``) or ``all``.
    data_dirs, data_manifest_sha256
        The datasets read, in order, and their hash as training records it.
    label_rule : str
        Which stars the classes count (:mod:`density_db.labels`).
    """

    indices: np.ndarray
    true_class: np.ndarray
    star_count: np.ndarray
    true_log: np.ndarray
    band: np.ndarray
    probabilities: np.ndarray
    predicted_class: np.ndarray
    predicted_log: np.ndarray
    status: np.ndarray
    regressed: bool
    split: str
    split_seed: int | None
    data_dirs: tuple[str, ...]
    data_manifest_sha256: str
    label_rule: str

    @property
    def regression_mask(self) -> np.ndarray:
        """Samples whose count came from the regressor (status ``predicted``)."""
        return (self.status == "predicted") & self.regressed


def predict_samples(
    data_dirs: str | Path | Sequence[str | Path],
    classifier: LoadedModel,
    regressor: LoadedModel | None,
    *,
    split: str = "test",
    batch_size: int = 64,
    device: str = "cpu",
) -> EvaluationSamples:
    """Run the two-stage predictor over a simulated dataset split and collect truth and predictions.

    Parameters
    ----------
    data_dirs : str, pathlib.Path or a sequence of them
        A dataset written by ``density-db simulate dataset``, or several read
        as one (as training reads them).
    classifier, regressor : LoadedModel
        The two stages; without a regressor only the classification (and the
        gating counts) are evaluated.
    split : {"test", "all"}
        ``test``: the test part of ``split_indices(n, seed)`` with the seed the
        classifier was trained with (``metadata["split_seed"]``, 0 when not
        recorded), i.e. the samples training never saw when both models were
        trained on this dataset (the same directories, in the same order; a
        warning says when the classifier's recorded training data differs);
        ``all``: every sample (e.g. a separate test set).
    batch_size : int
        Images per forward pass.
    device : {"auto", "cpu", "cuda"} or a torch device string
        Where the networks run; ``auto`` picks CUDA when available.

    Raises
    ------
    ConfigurationError
        If the split is unknown, the directory is not a dataset, the models
        are not a classifier and a regressor, or the classifier was trained
        on classes counted under another label rule than the samples'.
    """
    from torch.utils.data import DataLoader

    from density_db.inference.datasets import SimulatedDataset, split_indices
    from density_db.inference.predictor import TwoStagePredictor

    if split not in SPLITS:
        raise ConfigurationError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if batch_size < 1:
        raise ConfigurationError(f"batch_size must be at least 1, got {batch_size}")
    if classifier.stage != "classifier":
        raise ConfigurationError(f"{classifier.path} is a {classifier.stage}, not a classifier")
    if regressor is not None and regressor.stage != "regressor":
        raise ConfigurationError(f"{regressor.path} is a {regressor.stage}, not a regressor")
    if regressor is not None and regressor.preprocessing_version != classifier.preprocessing_version:
        raise ConfigurationError(
            f"the classifier takes preprocessing version {classifier.preprocessing_version} inputs and the "
            f"regressor version {regressor.preprocessing_version}: the two stages must read the same input"
        )
    everything = SimulatedDataset(
        data_dirs, target="density_class", preprocessing_version=classifier.preprocessing_version
    )
    _check_label_rule(classifier, everything)
    samples = everything.samples
    directories = tuple(str(directory) for directory in everything.directories)
    named = ", ".join(directories)
    manifest_sha256 = everything.manifest_sha256()
    if split == "test":
        split_seed = int(classifier.metadata.get("split_seed", 0))
        indices = split_indices(len(samples), split_seed)[2]
        trained_on = classifier.metadata.get("data_manifest_sha256")
        if trained_on is not None and trained_on != manifest_sha256:
            logger.warning(
                "the classifier was trained on other data than %s (another manifest): the test split "
                "of these samples is held out only if it never saw them; --split all evaluates a "
                "dataset kept apart for testing",
                named,
            )
    else:
        split_seed, indices = None, np.arange(len(samples))
    if len(indices) == 0:
        raise ConfigurationError(f"{named} holds no samples to evaluate")
    stages = (classifier.model, regressor.model if regressor is not None else _missing_regressor())
    predictor = TwoStagePredictor(*stages, device=torch_device(device))
    loader = DataLoader(everything.subset(indices), batch_size=batch_size)
    predictions = [prediction for batch, _ in loader for prediction in predictor.predict(batch)]
    logger.info("evaluated %d samples of %s on %s", len(predictions), named, predictor.device)
    return EvaluationSamples(
        indices=indices,
        true_class=np.asarray(samples["density_class"], dtype=np.int64)[indices],
        star_count=everything.class_counts[indices],
        true_log=np.asarray(samples["log_bright"], dtype=np.float64)[indices],
        band=np.asarray(samples["band"], dtype=str)[indices],
        probabilities=np.array([prediction.probabilities for prediction in predictions], dtype=np.float64),
        predicted_class=np.array([prediction.density_class for prediction in predictions], dtype=np.int64),
        predicted_log=np.array(
            [np.nan if prediction.log_bright is None else prediction.log_bright for prediction in predictions],
            dtype=np.float64,
        ),
        status=np.array([prediction.regression_status for prediction in predictions]),
        regressed=regressor is not None,
        split=split,
        split_seed=split_seed,
        data_dirs=directories,
        data_manifest_sha256=manifest_sha256,
        label_rule=everything.label_rule,
    )


def _check_label_rule(classifier: LoadedModel, dataset) -> None:
    """Refuse to score a classifier against density classes counted under another label rule."""
    trained_under = recorded_label_rule(classifier.metadata)
    if trained_under != dataset.label_rule:
        raise ConfigurationError(
            f"{classifier.path} was trained on classes counting {trained_under!r} "
            f"({label_rule(trained_under).description}), but these samples count {dataset.label_rule!r}: the "
            f"scores would compare different things. Evaluate it on a dataset made with "
            f"`density-db simulate dataset --label-rule {trained_under}`"
        )


def summarise(samples: EvaluationSamples, classifier: LoadedModel, regressor: LoadedModel | None) -> dict[str, Any]:
    """The JSON-compatible report of evaluated samples.

    Returns
    -------
    dict
        ``data`` (the datasets' directories and manifest hash),
        ``samples`` (count), ``split``, ``split_seed``, ``classification``
        (:func:`classification_report`), ``regression``
        (:func:`regression_report` on the samples the regressor ran on,
        against the true ``log_bright``; ``None`` without a regressor),
        ``gating`` (counts of ``empty``, ``bypassed`` and ``predicted``),
        ``by_band`` (:func:`scores_by_band`), ``models`` and ``labels``
        (the class edges and preprocessing the numbers refer to).
    """
    from density_db.inference.checkpoints import label_metadata

    mask = samples.regression_mask
    regression = (
        regression_report(samples.true_log[mask], samples.predicted_log[mask], samples.true_class[mask])
        if samples.regressed
        else None
    )
    return {
        "data": {"directories": list(samples.data_dirs), "manifest_sha256": samples.data_manifest_sha256},
        "samples": int(len(samples.indices)),
        "split": samples.split,
        "split_seed": samples.split_seed,
        "classification": classification_report(samples.true_class, samples.probabilities, samples.star_count),
        "regression": regression,
        "gating": {status: int(np.sum(samples.status == status)) for status in ("empty", "bypassed", "predicted")},
        "by_band": scores_by_band(samples),
        "models": {
            "classifier": _model_summary(classifier),
            "regressor": _model_summary(regressor) if regressor is not None else None,
        },
        "labels": {**label_metadata(classifier.preprocessing_version), "label_rule": samples.label_rule},
    }


def scores_by_band(samples: EvaluationSamples) -> list[dict[str, Any]]:
    """The headline scores of each band's images, bands in alphabetical order.

    A detector images one band, and the model is not told which: the bands
    differ in depth and in how many of their stars are bright, so a model
    that is reliable in one band may not be in another.

    Returns
    -------
    list of dict
        One per band: ``band``, ``samples``, ``accuracy``,
        ``accuracy_within_one_class`` and ``macro_f1`` (of
        :func:`classification_report` on that band's images), and
        ``regression`` (the overall scores of :func:`regression_report` on
        that band's regressed images; ``None`` without a regressor).
    """
    rows = []
    for band in sorted(set(samples.band.tolist())):
        chosen = samples.band == band
        classification = classification_report(
            samples.true_class[chosen], samples.probabilities[chosen], samples.star_count[chosen]
        )
        regressed = chosen & samples.regression_mask
        rows.append(
            {
                "band": band,
                "samples": int(np.count_nonzero(chosen)),
                **{key: classification[key] for key in ("accuracy", "accuracy_within_one_class", "macro_f1")},
                "regression": (
                    _regression_scores(samples.true_log[regressed], samples.predicted_log[regressed])
                    if samples.regressed
                    else None
                ),
            }
        )
    return rows


def evaluate(
    data_dir: str | Path,
    classifier: LoadedModel,
    regressor: LoadedModel | None,
    *,
    split: str = "test",
    batch_size: int = 64,
    device: str = "cpu",
) -> dict[str, Any]:
    """Evaluate the two stages on a simulated dataset: :func:`predict_samples`, then :func:`summarise`.

    See :func:`predict_samples` for the parameters (``split="test"`` is the
    test part of the classifier's recorded ``split_seed``) and :func:`summarise`
    for the report.
    """
    samples = predict_samples(data_dir, classifier, regressor, split=split, batch_size=batch_size, device=device)
    return summarise(samples, classifier, regressor)


def edge_distance(star_count: np.ndarray) -> np.ndarray:
    """Distance in dex from each star count to the nearest class edge; ``inf`` for ``N = 0``.

    An empty field is not near any edge in log space (the 0 / 1 boundary is a
    difference of one star), so it is kept apart.
    """
    counts = np.asarray(star_count, dtype=np.float64)
    distance = np.full(counts.shape, np.inf)
    positive = counts > 0
    log_counts = np.log10(counts[positive])[:, None]
    distance[positive] = np.min(np.abs(log_counts - np.log10(CLASS_EDGES)[None, :]), axis=1)
    return distance


def _checked_classification(
    true_class: np.ndarray, probabilities: np.ndarray, star_count: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    true_class = np.asarray(true_class).reshape(-1)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    star_count = np.asarray(star_count).reshape(-1)
    if len(true_class) == 0:
        raise ValueError("no samples to evaluate")
    if probabilities.shape != (len(true_class), N_CLASSES):
        raise ValueError(f"probabilities must have shape ({len(true_class)}, {N_CLASSES}), got {probabilities.shape}")
    if len(star_count) != len(true_class):
        raise ValueError(f"star_count has {len(star_count)} values for {len(true_class)} samples")
    if not np.all(np.isfinite(probabilities)) or np.any(probabilities < 0):
        raise ValueError("probabilities must be finite and non-negative")
    if np.any(star_count < 0):
        raise ValueError(f"star counts must be >= 0, got {star_count.min()}")
    _check_classes(true_class, "true_class")
    return true_class.astype(np.int64), probabilities, star_count


def _check_classes(classes: np.ndarray, name: str) -> None:
    if len(classes) and (
        not np.issubdtype(classes.dtype, np.integer) or classes.min() < 0 or classes.max() >= N_CLASSES
    ):
        raise ValueError(f"{name} must hold integer classes 0-{N_CLASSES - 1}, got {np.unique(classes)}")


def _class_range(index: int) -> str:
    lower = CLASS_LOWER_EDGES[index]
    if index == 0:
        return "0"
    if index + 1 == N_CLASSES:
        return f">={lower:,}"
    return f"{lower:,}-{CLASS_LOWER_EDGES[index + 1] - 1:,}"


def _class_scores(confusion: np.ndarray, index: int) -> dict[str, Any]:
    true_positive = int(confusion[index, index])
    support, predicted = int(confusion[index].sum()), int(confusion[:, index].sum())
    row = {
        "class": index,
        "range": _class_range(index),
        "support": support,
        "predicted": predicted,
        "precision": None,
        "recall": None,
        "f1": None,
    }
    if support == 0:
        return row
    precision = true_positive / predicted if predicted else 0.0
    recall = true_positive / support
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {**row, "precision": precision, "recall": recall, "f1": f1}


def _calibration(confidence: np.ndarray, correct: np.ndarray) -> tuple[float, list[dict[str, Any]]]:
    """Expected calibration error and reliability bins (bins ``(lower, upper]``, the first also holds 0)."""
    edges = np.linspace(0.0, 1.0, CALIBRATION_BINS + 1)
    bin_of = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, CALIBRATION_BINS - 1)
    bins, expected_error = [], 0.0
    for index in range(CALIBRATION_BINS):
        members = bin_of == index
        count = int(members.sum())
        mean_confidence = float(confidence[members].mean()) if count else None
        accuracy = float(correct[members].mean()) if count else None
        if count:
            expected_error += count / len(confidence) * abs(accuracy - mean_confidence)
        bins.append(
            {
                "lower": float(edges[index]),
                "upper": float(edges[index + 1]),
                "count": count,
                "mean_confidence": mean_confidence,
                "accuracy": accuracy,
            }
        )
    return float(expected_error), bins


def _error_rate_by_edge_distance(star_count: np.ndarray, correct: np.ndarray) -> list[dict[str, Any]]:
    """Misclassification rate in bins of distance to the nearest class edge, plus one bin for ``N = 0``."""
    distance = edge_distance(star_count)
    empty = np.asarray(star_count) == 0
    groups = [("N = 0", None, None, empty)]
    for lower, upper in zip(EDGE_DISTANCE_BINS[:-1], EDGE_DISTANCE_BINS[1:]):
        label = f">{lower:g} dex" if np.isinf(upper) else f"{lower:g}-{upper:g} dex"
        groups.append(
            (label, lower, None if np.isinf(upper) else upper, ~empty & (distance >= lower) & (distance < upper))
        )
    rows = []
    for label, lower, upper, members in groups:
        count, errors = int(members.sum()), int((~correct[members]).sum())
        rows.append(
            {
                "label": label,
                "lower_dex": lower,
                "upper_dex": upper,
                "count": count,
                "errors": errors,
                "error_rate": errors / count if count else None,
            }
        )
    return rows


def _regression_scores(true_log: np.ndarray, predicted_log: np.ndarray) -> dict[str, Any]:
    count = len(true_log)
    if count == 0:
        return {"samples": 0, "mae": None, "mse": None, "rmse": None, "r2": None, "within_20_percent": None}
    residual = predicted_log - true_log
    mse = float(np.mean(residual**2))
    total = float(np.sum((true_log - true_log.mean()) ** 2))
    # 10**(p - t) = (1 + N_pred) / (1 + N_true): the +-20 % band on 1 + N.
    ratio = 10.0**residual
    return {
        "samples": count,
        "mae": float(np.mean(np.abs(residual))),
        "mse": mse,
        "rmse": float(np.sqrt(mse)),
        "r2": 1.0 - float(np.sum(residual**2)) / total if total > 0 else None,
        "within_20_percent": float(np.mean(np.abs(ratio - 1.0) <= RELATIVE_TOLERANCE + 1e-12)),
    }


def _model_summary(model: LoadedModel) -> dict[str, Any]:
    return {
        "name": Path(model.path).name,
        "path": str(model.path),
        "stage": model.stage,
        "architecture": model.architecture,
        "sha256": model.sha256,
        "split_seed": model.metadata.get("split_seed"),
        "label_rule": recorded_label_rule(model.metadata),
    }


def _missing_regressor():
    """A stand-in for an absent regressor: NaN counts, which :func:`summarise` leaves out."""
    from torch import nn

    class MissingRegressor(nn.Module):
        def forward(self, inputs):
            return inputs.new_full((len(inputs),), float("nan"))

    return MissingRegressor()

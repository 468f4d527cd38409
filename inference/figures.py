"""Evaluation figures as PNG files (paper Figs. 8-10 and a reliability diagram).

Each function draws on its own ``Figure`` (the object-oriented API, never
pyplot's global state) with the Agg canvas, so it works without a display
and leaves the caller's matplotlib backend alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from density_db.labels import N_CLASSES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from density_db.inference.evaluation import EvaluationSamples


DPI = 120


def plot_confusion_matrix(confusion: Sequence[Sequence[int]], class_ranges: Sequence[str], path: str | Path) -> Path:
    """Confusion matrix: counts written in the cells, colours normalised by true class (row).

    Parameters
    ----------
    confusion : N_CLASSES x N_CLASSES counts
        Rows true class, columns predicted class.
    class_ranges : sequence of str
        Star-count range of each class (e.g. ``"100-999"``), for the axis labels.
    path : str or pathlib.Path
        The PNG to write.
    """
    counts = np.asarray(confusion, dtype=np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    figure = _figure((7.2, 6.2))
    axes = figure.add_subplot()
    image = axes.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, label="fraction of the true class")
    for (row, column), count in np.ndenumerate(counts):
        axes.text(
            column,
            row,
            str(count),
            ha="center",
            va="center",
            color="white" if fractions[row, column] > 0.5 else "black",
            fontsize=9,
        )
    labels = [f"{index}: {text}" for index, text in enumerate(class_ranges)]
    axes.set_xticks(range(len(labels)), labels, fontsize=8, rotation=30, ha="right")
    axes.set_yticks(range(len(labels)), labels, fontsize=8)
    axes.set_xlabel("predicted density class (stars per image)")
    axes.set_ylabel("true density class (stars per image)")
    axes.set_title("Confusion matrix\n(numbers: images; colour: fraction of the true class)")
    return _save(figure, path)


def plot_reliability(bins: Sequence[dict[str, Any]], expected_calibration_error: float, path: str | Path) -> Path:
    """Reliability diagram: accuracy against top-class confidence per bin, the diagonal, and bin counts.

    Parameters
    ----------
    bins : sequence of dict
        ``classification_report(...)["reliability"]``.
    expected_calibration_error : float
        Shown in the title.
    path : str or pathlib.Path
        The PNG to write.
    """
    lower = np.array([row["lower"] for row in bins])
    upper = np.array([row["upper"] for row in bins])
    counts = np.array([row["count"] for row in bins])
    accuracy = np.array([np.nan if row["accuracy"] is None else row["accuracy"] for row in bins])
    figure = _figure((6.0, 6.4))
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1)})
    top.bar(
        lower,
        np.nan_to_num(accuracy),
        width=upper - lower,
        align="edge",
        edgecolor="navy",
        color="cornflowerblue",
        label="accuracy in bin",
    )
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("fraction correctly classified")
    top.set_title(f"Reliability of the classifier (ECE = {expected_calibration_error:.3f})")
    top.legend(loc="upper left")
    bottom.bar(lower, counts, width=upper - lower, align="edge", color="grey", edgecolor="black")
    for left, width, count in zip(lower, upper - lower, counts):
        if count:
            bottom.text(left + width / 2, count, str(count), ha="center", va="bottom", fontsize=7)
    bottom.set_xlabel("confidence (probability of the predicted class)")
    bottom.set_ylabel("images")
    return _save(figure, path)


def plot_error_rate_by_edge_distance(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Misclassification rate against the distance (dex) to the nearest class edge, with images per bin.

    Parameters
    ----------
    rows : sequence of dict
        ``classification_report(...)["error_rate_by_edge_distance"]``.
    path : str or pathlib.Path
        The PNG to write.
    """
    labels = [row["label"] for row in rows]
    rates = [0.0 if row["error_rate"] is None else 100.0 * row["error_rate"] for row in rows]
    figure = _figure((7.0, 4.6))
    axes = figure.add_subplot()
    positions = np.arange(len(rows))
    axes.bar(positions, rates, color="indianred", edgecolor="darkred")
    for position, rate, row in zip(positions, rates, rows):
        text = "no images" if not row["count"] else f"{row['errors']}/{row['count']}"
        axes.text(position, rate, text, ha="center", va="bottom", fontsize=8)
    axes.set_xticks(positions, labels)
    axes.set_xlabel("|log10 N - log10 edge| to the nearest class edge (1, 100, 1k, 10k, 100k stars)")
    axes.set_ylabel("misclassified images (%)")
    axes.set_ylim(0, max(max(rates) * 1.15, 5.0))
    axes.set_title("Classification errors near class edges (labels: errors / images)")
    return _save(figure, path)


def plot_regression(true_log: np.ndarray, predicted_log: np.ndarray, true_class: np.ndarray, path: str | Path) -> Path:
    """Predicted against true ``log10(1 + N_bright)``, coloured by true class, with the 1:1 and +-20 % lines.

    Parameters
    ----------
    true_log, predicted_log : array of float
        True and predicted ``log10(1 + N_bright)`` of the regressed images.
    true_class : array of int
        True density class, for the colours.
    path : str or pathlib.Path
        The PNG to write.
    """
    true_log, predicted_log = np.asarray(true_log, dtype=float), np.asarray(predicted_log, dtype=float)
    true_class = np.asarray(true_class)
    figure = _figure((6.0, 6.0))
    axes = figure.add_subplot()
    finite = np.concatenate([true_log, predicted_log])
    finite = finite[np.isfinite(finite)]
    upper = max(float(finite.max()) if len(finite) else 1.0, 1.0) * 1.05
    lower = min(float(finite.min()) if len(finite) else 0.0, 0.0)  # a regressor may predict below 0
    line = np.linspace(lower, upper, 200)
    axes.plot(line, line, color="red", label="perfect prediction (y = x)")
    # +-20 % on 1 + N is a constant offset of log10(1.2) and log10(0.8) dex.
    axes.plot(line, line + np.log10(1.2), color="red", linestyle="--", label="+-20 %")
    axes.plot(line, line + np.log10(0.8), color="red", linestyle="--")
    colours = [f"C{index}" for index in range(N_CLASSES)]
    for index in range(N_CLASSES):
        members = true_class == index
        if members.any():
            axes.scatter(
                true_log[members],
                predicted_log[members],
                s=12,
                alpha=0.7,
                color=colours[index],
                label=f"true class {index}",
            )
    axes.set_xlim(lower, upper)
    axes.set_ylim(lower, upper)
    axes.set_aspect("equal")
    axes.set_xlabel("true log10(1 + N bright stars)")
    axes.set_ylabel("predicted log10(1 + N bright stars)")
    axes.set_title(f"Bright-star counts of {len(true_log)} regressed images")
    axes.legend(loc="upper left", fontsize=8)
    return _save(figure, path)


def write_figures(samples: EvaluationSamples, report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write the evaluation figures of a report into ``out_dir``; return ``{name: path}``.

    The regression plot is written only when the report has a regression part.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    classification = report["classification"]
    written = {
        "confusion_matrix": plot_confusion_matrix(
            classification["confusion_matrix"],
            [row["range"] for row in classification["per_class"]],
            out_dir / "confusion_matrix.png",
        ),
        "reliability": plot_reliability(
            classification["reliability"], classification["expected_calibration_error"], out_dir / "reliability.png"
        ),
        "error_rate_by_edge_distance": plot_error_rate_by_edge_distance(
            classification["error_rate_by_edge_distance"], out_dir / "error_rate_by_edge_distance.png"
        ),
    }
    if report.get("regression") is not None:
        mask = samples.regression_mask
        written["regression"] = plot_regression(
            samples.true_log[mask], samples.predicted_log[mask], samples.true_class[mask], out_dir / "regression.png"
        )
    return written


def _figure(size: tuple[float, float]) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path

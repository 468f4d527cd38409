"""One evaluation table for the model inputs: the paper's (version 1) against ours (version 2), same data.

On held-out datasets of preprocessing version 2 (``density-db simulate
dataset``, other seeds than training): classification sets (``--data``,
repeatable, read as one) and, optionally, regression sets
(``--regression-data``), this prints and writes:

* the same architecture trained on the same images with the paper's input
  (version 1: the first two channels of each sample) and with version 2
  (``train --preprocessing-version 1`` and the default): the ablation;
* the point-source count alone, a classical reference the networks must
  beat: the class of the sum of the ``point_like`` channel, and
  ``log10(1 + N)`` of the sum of ``bright_point_like``.  Pooling bins overlap
  by a pixel, so the sums are scaled by the image's area over the bins'
  summed areas (a 4-5 % correction on a detector);
* per class (recall), per band (accuracy) and near class edges (accuracy of
  the images within 0.04 dex, 10 %, of an edge, and of the others);
* the regression gated by each classifier (MAE, RMSE, R^2 in dex), against
  the bright point-source count alone, on the images each regressor ran on:
  on the regression sets when given (a second table), else on the
  classification sets;
* the paper's Table 5 (Lai et al. 2026; its Sec. 4.1-4.2 give the R^2 of
  0.9076 and Table 4 the macro-F1 of 96.27 %), for reference: its
  simulation has stars only and counts every catalogued star.

and, to say what limits any classifier of the count, the count's precision:
the scatter (1.4826 MAD, dex) of ``log10`` of the point-like sum over the
label's star count, after each band's median offset (stars near the depth
are found only in part), on images with at least ``MIN_PRECISION_STARS``
counted stars; and the accuracy a count with that scatter would reach on
these images' true counts (classes 1-5: the probability that a lognormal
error of that width keeps each image in its class, averaged).

The ``sep`` peer on full-size frames is ``benchmarks/ingest_throughput.py``'s.

Run from the repository root::

    .venv/bin/python benchmarks/model_inputs.py --data HELDOUT [--data ...] [--regression-data REG_HELDOUT ...] \
        --v1 CLS_V1 REG_V1 --v2 CLS_V2 REG_V2
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from density_db.inference.checkpoints import load_checkpoint
from density_db.inference.datasets import SimulatedDataset
from density_db.inference.evaluation import (
    classification_report,
    edge_distance,
    predict_samples,
    regression_report,
)
from density_db.labels import CLASS_LOWER_EDGES, N_CLASSES
from density_db.pooling import CellGrid
from support import RESULTS_DIR, describe_machine, write_json

MIN_PRECISION_STARS = 30
"""Images with fewer counted stars are left out of the count's scatter (Poisson noise of the label itself)."""

NEAR_EDGE_DEX = np.log10(1.1)
"""Images whose counted stars lie within 10 % of a class edge."""

PAPER_TABLE_5 = {
    "accuracy": 0.9883,
    "macro_f1": 0.9627,
    "recall": [1.0, 0.9874, 0.9879, 0.9790, 0.9919, 0.9962],
    "mae": 0.0824,
    "rmse": 0.1333,
    "r2": 0.9076,
}
"""Lai et al. (2026), Table 5 (per-class recall, regression MAE/RMSE), Table 4 (macro-F1), Sec. 4.2 (R^2)."""


def network_row(data: list[Path], classifier: Path, regressor: Path) -> dict:
    """The two stages' scores on every sample of ``data``, read as the models' preprocessing version."""
    samples = predict_samples(data, load_checkpoint(classifier), load_checkpoint(regressor), split="all")
    row = _classification_row(samples.true_class, samples.probabilities, samples.star_count, samples.band)
    mask = samples.status == "predicted"
    regression = regression_report(samples.true_log[mask], samples.predicted_log[mask], samples.true_class[mask])[
        "overall"
    ]
    return {
        **row,
        "regressed": int(mask.sum()),
        "mae": regression["mae"],
        "rmse": regression["rmse"],
        "r2": regression["r2"],
        "regressed_mask": mask,
    }


def count_row(data: list[Path], regressed: np.ndarray) -> dict:
    """The point-source count alone: classes from the point-like sum, log counts from the bright sum."""
    dataset = SimulatedDataset(data, target="density_class")
    shape = tuple(dataset.descriptions[0]["image_shape"])
    grid = CellGrid.for_shape(shape)
    scale = shape[0] * shape[1] / float(grid.bin_sums(grid.cell_areas()).sum())
    point_like, bright = np.zeros(len(dataset)), np.zeros(len(dataset))
    for index in range(len(dataset)):
        tensor, _ = dataset[index]
        point_like[index] = float(tensor[2].double().sum()) * scale
        bright[index] = float(tensor[3].double().sum()) * scale
    samples = dataset.samples
    predicted = np.searchsorted(CLASS_LOWER_EDGES, np.rint(point_like), side="right") - 1
    true_class = np.asarray(samples["density_class"], dtype=np.int64)
    row = _classification_row(
        true_class, np.eye(N_CLASSES)[predicted], dataset.class_counts, np.asarray(samples["band"], dtype=str)
    )
    precision = count_precision(point_like, dataset.class_counts, np.asarray(samples["band"], dtype=str))
    true_log = np.asarray(samples["log_bright"], dtype=np.float64)
    regression = regression_report(true_log[regressed], np.log10(1 + bright[regressed]), true_class[regressed])[
        "overall"
    ]
    return {
        **row,
        "regressed": int(regressed.sum()),
        "mae": regression["mae"],
        "rmse": regression["rmse"],
        "r2": regression["r2"],
        "count_precision": precision,
    }


def count_precision(point_like: np.ndarray, counted: np.ndarray, band: np.ndarray) -> dict:
    """The point-like count's scatter about the label's star count, and the accuracy that scatter allows."""
    counted = np.asarray(counted, dtype=np.float64)
    used = counted >= MIN_PRECISION_STARS
    ratio = np.log10((1 + point_like) / (1 + counted))
    offsets = {str(name): float(np.median(ratio[used & (band == name)])) for name in sorted(set(band[used]))}
    residual = ratio[used] - np.array([offsets[str(name)] for name in band[used]])
    scatter = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
    log_count = np.log10(counted[counted > 0])
    edges = np.log10(np.asarray(CLASS_LOWER_EDGES[2:], dtype=np.float64))  # the edges between classes 1-5
    position = np.searchsorted(edges, log_count, side="right")
    lower = np.concatenate([[-np.inf], edges])[position]
    upper = np.concatenate([edges, [np.inf]])[position]
    stays = _normal_cdf((upper - log_count) / scatter) - _normal_cdf((lower - log_count) / scatter)
    return {
        "images": int(used.sum()),
        "scatter_dex": scatter,
        "band_offsets_dex": offsets,
        "allowed_accuracy_classes_1_5": float(stays.mean()),
        "images_classes_1_5": int(log_count.size),
    }


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))


def _classification_row(true_class, probabilities, star_count, band) -> dict:
    report = classification_report(true_class, probabilities, star_count)
    predicted = probabilities.argmax(axis=1)
    correct = predicted == true_class
    near = edge_distance(star_count) <= NEAR_EDGE_DEX
    return {
        "samples": report["samples"],
        "accuracy": report["accuracy"],
        "within_one": report["accuracy_within_one_class"],
        "macro_f1": report["macro_f1"],
        "recall": [row["recall"] for row in report["per_class"]],
        "near_edge": {"samples": int(near.sum()), "accuracy": float(correct[near].mean()) if near.any() else None},
        "far_from_edges": {"samples": int((~near).sum()), "accuracy": float(correct[~near].mean())},
        "by_band": {str(name): float(correct[band == name].mean()) for name in sorted(set(band))},
    }


def report(rows: dict[str, dict]) -> None:
    def percent(value) -> str:
        return "-" if value is None else f"{100 * value:.1f}"

    print(
        "| input | accuracy % | within one % | macro-F1 % | recall per class 0-5 % | near edges % (n) | "
        "far % | MAE dex | RMSE dex | R^2 | regressed |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, row in rows.items():
        recall = " / ".join(percent(value) for value in row["recall"])
        near = row.get("near_edge", {})
        far = row.get("far_from_edges", {})
        mae, rmse, r2 = (
            "-" if row.get(key) is None else f"{row[key]:.{digits}f}"
            for key, digits in (("mae", 4), ("rmse", 4), ("r2", 3))
        )
        print(
            f"| {name} | {percent(row['accuracy'])} | {percent(row.get('within_one'))} | "
            f"{percent(row['macro_f1'])} | {recall} | {percent(near.get('accuracy'))} ({near.get('samples', '-')}) | "
            f"{percent(far.get('accuracy'))} | {mae} | {rmse} | {r2} | {row.get('regressed', '-')} |"
        )
    bands = sorted(next(row for row in rows.values() if "by_band" in row)["by_band"])
    print("\n| input | " + " | ".join(bands) + " |")
    print("| --- |" + " --- |" * len(bands))
    for name, row in rows.items():
        if "by_band" in row:
            print(f"| {name} | " + " | ".join(percent(row["by_band"][band]) for band in bands) + " |")


def table(data: list[Path], v1: list[Path], v2: list[Path]) -> dict[str, dict]:
    """The rows of one evaluation table on ``data``: the paper's, the two inputs, and the count alone."""
    rows = {"paper, Table 5 (ResNet-34 / ResNet-50, their simulation)": PAPER_TABLE_5}
    rows["version 1, the paper's input"] = network_row(data, *v1)
    rows["version 2, with point-source channels"] = network_row(data, *v2)
    regressed = rows["version 2, with point-source channels"]["regressed_mask"]
    rows["point-source count alone (no network)"] = count_row(data, regressed)
    for row in rows.values():
        row.pop("regressed_mask", None)
    return rows


def main(arguments: argparse.Namespace) -> None:
    tables = {"classification sets": table(arguments.data, arguments.v1, arguments.v2)}
    if arguments.regression_data:
        tables["regression sets"] = table(arguments.regression_data, arguments.v1, arguments.v2)
    for name, rows in tables.items():
        print(f"\n### {name}\n")
        report(rows)
        precision = rows["point-source count alone (no network)"]["count_precision"]
        offsets = ", ".join(f"{band} {offset:+.3f}" for band, offset in precision["band_offsets_dex"].items())
        print(
            f"\npoint-like count against the label ({precision['images']} images with >= {MIN_PRECISION_STARS} "
            f"counted stars): scatter {precision['scatter_dex']:.4f} dex after each band's offset ({offsets}); "
            f"a count that precise keeps {100 * precision['allowed_accuracy_classes_1_5']:.1f} % of the "
            f"{precision['images_classes_1_5']} images of classes 1-5 in their class"
        )
    machine = describe_machine({})
    write_json(
        arguments.json,
        machine,
        {
            "data": list(map(str, arguments.data)),
            "regression_data": list(map(str, arguments.regression_data)),
            "v1": list(map(str, arguments.v1)),
            "v2": list(map(str, arguments.v2)),
            "tables": tables,
        },
    )
    print(f"figures written to {arguments.json}")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=Path,
        action="append",
        required=True,
        help="held-out classification dataset of preprocessing version 2 (repeat: read as one)",
    )
    parser.add_argument(
        "--regression-data",
        type=Path,
        action="append",
        default=[],
        help="held-out regression dataset of preprocessing version 2 (repeat: read as one)",
    )
    parser.add_argument("--v1", type=Path, nargs=2, required=True, metavar=("CLASSIFIER", "REGRESSOR"))
    parser.add_argument("--v2", type=Path, nargs=2, required=True, metavar=("CLASSIFIER", "REGRESSOR"))
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "model_inputs.json")
    return parser.parse_args()


if __name__ == "__main__":
    main(_arguments())

"""Evaluation metrics against hand-computed values, the figures, and ``density-db evaluate`` end to end."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from numpy.testing import assert_allclose

from density_db.cli import main
from density_db.errors import ConfigurationError
from density_db.inference.evaluation import (
    EvaluationSamples,
    classification_report,
    edge_distance,
    evaluate,
    regression_report,
    scores_by_band,
)
from density_db.inference.figures import (
    plot_confusion_matrix,
    plot_error_rate_by_edge_distance,
    plot_regression,
    plot_reliability,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Three images.  A: class 1 (50 stars) predicted 1 with 0.7.  B: class 2 (120 stars)
# predicted 1 with 0.65 (one class off).  C: class 3 (5000 stars) predicted 5 with 0.9.
TRUE_CLASS = np.array([1, 2, 3])
STAR_COUNT = np.array([50, 120, 5000])
PROBABILITIES = np.array(
    [
        [0.10, 0.70, 0.20, 0.0, 0.0, 0.0],
        [0.00, 0.65, 0.35, 0.0, 0.0, 0.0],
        [0.00, 0.00, 0.00, 0.1, 0.0, 0.9],
    ]
)


@pytest.fixture(scope="module")
def three_image_report() -> dict:
    return classification_report(TRUE_CLASS, PROBABILITIES, STAR_COUNT)


def test_accuracy_and_within_one_class_count_adjacent_mistakes_as_soft(three_image_report):
    assert three_image_report["accuracy"] == pytest.approx(1 / 3)
    # A exact, B one class off, C two classes off.
    assert three_image_report["accuracy_within_one_class"] == pytest.approx(2 / 3)
    expected = np.zeros((6, 6), dtype=int)
    expected[1, 1] = expected[2, 1] = expected[3, 5] = 1
    np.testing.assert_array_equal(three_image_report["confusion_matrix"], expected)


def test_per_class_scores_and_macro_f1_leave_out_classes_without_support(three_image_report):
    rows = {row["class"]: row for row in three_image_report["per_class"]}
    # Class 1: predicted twice, right once -> precision 1/2, recall 1/1, F1 2/3.
    assert (rows[1]["precision"], rows[1]["recall"]) == (0.5, 1.0)
    assert rows[1]["f1"] == pytest.approx(2 / 3)
    # Classes 2 and 3 have support but are never predicted correctly.
    for index in (2, 3):
        assert (rows[index]["precision"], rows[index]["recall"], rows[index]["f1"]) == (0.0, 0.0, 0.0)
    # Classes 0, 4, 5 have no true image: undefined, even class 5 with its one false alarm.
    for index in (0, 4, 5):
        assert (rows[index]["precision"], rows[index]["recall"], rows[index]["f1"]) == (None, None, None)
    assert rows[5]["predicted"] == 1
    assert three_image_report["macro_f1_classes"] == [1, 2, 3]
    assert three_image_report["macro_f1"] == pytest.approx((2 / 3 + 0 + 0) / 3)
    assert rows[2]["range"] == "100-999"


def test_brier_score_sums_squared_errors_over_classes(three_image_report):
    # A: 0.1^2 + 0.3^2 + 0.2^2 = 0.14; B: 0.65^2 + 0.65^2 = 0.845; C: 0.9^2 + 0.9^2 = 1.62.
    assert three_image_report["brier_score"] == pytest.approx((0.14 + 0.845 + 1.62) / 3)


def test_expected_calibration_error_weights_each_bin_gap(three_image_report):
    # Each image in its own 1/15-wide bin: |1 - 0.7|, |0 - 0.65|, |0 - 0.9|, each with weight 1/3.
    assert three_image_report["expected_calibration_error"] == pytest.approx((0.3 + 0.65 + 0.9) / 3)
    filled = [row for row in three_image_report["reliability"] if row["count"]]
    assert [row["count"] for row in filled] == [1, 1, 1]
    assert len(three_image_report["reliability"]) == 15
    # Four images at confidence 0.7, three right: accuracy 0.75 against 0.7.
    probabilities = np.tile([0.7, 0.3, 0.0, 0.0, 0.0, 0.0], (4, 1))
    report = classification_report(np.array([0, 0, 0, 1]), probabilities, np.array([0, 0, 0, 5]))
    assert report["expected_calibration_error"] == pytest.approx(0.05)


def test_edge_distance_is_in_dex_and_keeps_empty_fields_apart(three_image_report):
    distance = edge_distance(np.array([0, 1, 50, 120, 5000, 300_000]))
    assert_allclose(distance, [np.inf, 0.0, np.log10(2), np.log10(1.2), np.log10(2), np.log10(3)])
    rows = {row["label"]: row for row in three_image_report["error_rate_by_edge_distance"]}
    # B (0.079 dex from 100) is wrong; A and C (0.301 dex) one right, one wrong.
    assert (rows["0-0.1 dex"]["count"], rows["0-0.1 dex"]["error_rate"]) == (1, 1.0)
    assert (rows["0.2-0.5 dex"]["count"], rows["0.2-0.5 dex"]["error_rate"]) == (2, 0.5)
    assert (rows["N = 0"]["count"], rows["N = 0"]["error_rate"]) == (0, None)
    assert sum(row["count"] for row in rows.values()) == 3


def test_classification_report_names_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        classification_report(TRUE_CLASS, PROBABILITIES[:, :5], STAR_COUNT)
    with pytest.raises(ValueError, match="classes 0-5"):
        classification_report(np.array([1, 2, 7]), PROBABILITIES, STAR_COUNT)


def test_regression_report_in_dex_overall_and_by_class():
    true_log = np.array([0.0, 1.0, 2.0, 3.0])
    predicted_log = np.array([0.1, 0.9, 2.2, 3.0])
    report = regression_report(true_log, predicted_log, np.array([0, 1, 2, 2]))
    overall = report["overall"]
    # Residuals 0.1, -0.1, 0.2, 0: MAE 0.1, MSE 0.06 / 4, SS_tot 5 around the mean 1.5.
    assert overall["samples"] == 4
    assert overall["mae"] == pytest.approx(0.1)
    assert overall["mse"] == pytest.approx(0.015)
    assert overall["rmse"] == pytest.approx(np.sqrt(0.015))
    assert overall["r2"] == pytest.approx(1 - 0.06 / 5)
    # Only the exact prediction is within +-20 % of 1 + N (10**0.1 = 1.26 is not).
    assert overall["within_20_percent"] == pytest.approx(0.25)
    by_class = report["by_class"]
    assert by_class[2]["mse"] == pytest.approx(0.02)
    assert by_class[2]["r2"] == pytest.approx(1 - 0.04 / 0.5)
    assert by_class[0]["mae"] == pytest.approx(0.1) and by_class[0]["r2"] is None  # one value: no variance
    assert by_class[3] == {
        "class": 3,
        "samples": 0,
        "mae": None,
        "mse": None,
        "rmse": None,
        "r2": None,
        "within_20_percent": None,
    }


def test_regression_report_of_no_samples_is_all_none():
    report = regression_report(np.array([]), np.array([]), np.array([], dtype=int))
    assert report["overall"]["samples"] == 0 and report["overall"]["rmse"] is None


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 5_000


def test_scores_by_band_split_the_images_by_the_band_they_were_taken_in():
    # Images A and C in r, B in g (the three images above); A and B regressed (true 1.0 and 2.0,
    # predicted 1.1 and 1.6), C bypassed.
    samples = EvaluationSamples(
        indices=np.arange(3),
        true_class=TRUE_CLASS,
        star_count=STAR_COUNT,
        true_log=np.array([1.0, 2.0, 3.0]),
        band=np.array(["r", "g", "r"]),
        probabilities=PROBABILITIES,
        predicted_class=np.array([1, 1, 5]),
        predicted_log=np.array([1.1, 1.6, np.nan]),
        status=np.array(["predicted", "predicted", "bypassed"]),
        regressed=True,
        split="all",
        split_seed=None,
        data_dirs=("set",),
        data_manifest_sha256="0" * 64,
        label_rule="detectable-stars",
    )
    g, r = scores_by_band(samples)
    assert (g["band"], g["samples"], r["band"], r["samples"]) == ("g", 1, "r", 2)
    assert g["accuracy"] == 0.0 and g["accuracy_within_one_class"] == 1.0
    assert r["accuracy"] == 0.5 and r["accuracy_within_one_class"] == 0.5
    # r: class 1 right (F1 1), class 3 never predicted (F1 0); class 5 has no support.
    assert r["macro_f1"] == pytest.approx(0.5)
    assert g["regression"]["samples"] == 1 and g["regression"]["mae"] == pytest.approx(0.4)
    assert r["regression"]["samples"] == 1 and r["regression"]["mae"] == pytest.approx(0.1)
    without_regressor = scores_by_band(dataclasses.replace(samples, regressed=False))
    assert [row["regression"] for row in without_regressor] == [None, None]


def test_figures_are_written_as_png(tmp_path, three_image_report):
    rng = np.random.default_rng(3)
    true_log = rng.uniform(0, 3, 40)
    report = three_image_report
    paths = [
        plot_confusion_matrix(
            report["confusion_matrix"], [row["range"] for row in report["per_class"]], tmp_path / "confusion.png"
        ),
        plot_reliability(report["reliability"], report["expected_calibration_error"], tmp_path / "reliability.png"),
        plot_error_rate_by_edge_distance(report["error_rate_by_edge_distance"], tmp_path / "edges.png"),
        plot_regression(
            true_log, true_log + rng.normal(0, 0.1, 40), rng.integers(1, 5, 40), tmp_path / "nested" / "regression.png"
        ),
    ]
    for path in paths:
        _assert_png(path)


@pytest.fixture(scope="module")
def evaluation_inputs(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A 16-image regress dataset and untrained baseline_cnn checkpoints of both stages."""
    from density_db.inference.architectures import build_model
    from density_db.inference.checkpoints import save_checkpoint
    from density_db.simulate.dataset import plan_samples, write_dataset

    root = tmp_path_factory.mktemp("evaluation")
    data_dir = root / "set"
    write_dataset(data_dir, plan_samples(16, task="regress", seed=1), task="regress", balance="paper", shape=(240, 250))
    checkpoints = []
    for stage in ("classifier", "regressor"):
        path = root / f"{stage}.pt"
        save_checkpoint(
            path,
            build_model(stage, "baseline_cnn", in_channels=4),
            stage=stage,
            architecture="baseline_cnn",
            metadata={"preprocessing_version": 2},
        )
        checkpoints.append(path)
    return data_dir, checkpoints[0], checkpoints[1]


def test_a_paper_input_model_reads_version_2_samples_and_the_reverse_is_refused(tmp_path, evaluation_inputs) -> None:
    """Version 2 samples hold the paper's two channels first (the ablation's same data); version 1 samples
    lack the point-source channels, and the error names the dataset to make."""
    from density_db.inference.architectures import build_model
    from density_db.inference.checkpoints import load_checkpoint, save_checkpoint
    from density_db.inference.evaluation import predict_samples
    from density_db.simulate.dataset import plan_samples, write_dataset

    data_dir, classifier, regressor = evaluation_inputs
    for stage in ("classifier", "regressor"):
        save_checkpoint(
            tmp_path / f"{stage}_v1.pt", build_model(stage, "baseline_cnn"), stage=stage, architecture="baseline_cnn"
        )
    paper = [load_checkpoint(tmp_path / f"{stage}_v1.pt") for stage in ("classifier", "regressor")]
    assert len(predict_samples(data_dir, *paper, split="all", device="cpu").indices) == 16
    with pytest.raises(
        ConfigurationError, match="the classifier takes preprocessing version 2 inputs and the regressor version 1"
    ):
        predict_samples(data_dir, load_checkpoint(classifier), paper[1], split="all", device="cpu")
    write_dataset(
        tmp_path / "v1",
        plan_samples(2, task="regress", seed=3),
        task="regress",
        balance="paper",
        shape=(240, 250),
        version=1,
    )
    with pytest.raises(
        ConfigurationError,
        match="holds preprocessing version 1 samples .image, valid_fraction., "
        "which do not contain version 2's channels: make a dataset with "
        ".*--preprocessing-version 2",
    ):
        predict_samples(
            tmp_path / "v1", load_checkpoint(classifier), load_checkpoint(regressor), split="all", device="cpu"
        )


def test_evaluate_command_writes_report_and_figures(tmp_path, evaluation_inputs):
    data_dir, classifier, regressor = evaluation_inputs
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            "--data",
            str(data_dir),
            "--classifier",
            str(classifier),
            "--regressor",
            str(regressor),
            "--out",
            str(out),
            "--split",
            "all",
            "--batch-size",
            "8",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "macro-F1" in result.output
    report = json.loads((out / "report.json").read_text())
    assert {"classification", "regression", "gating", "models", "samples", "split", "labels", "data"} <= report.keys()
    assert report["samples"] == 16
    assert sum(report["gating"].values()) == 16
    assert report["classification"]["samples"] == 16
    assert report["regression"]["overall"]["samples"] == report["gating"]["predicted"]
    assert sum(row["samples"] for row in report["by_band"]) == 16
    assert "accuracy by band: " in result.output and "regression MAE by band (dex): " in result.output
    assert report["models"]["classifier"]["architecture"] == "baseline_cnn"
    assert len(report["models"]["regressor"]["sha256"]) == 64
    for name in ("confusion_matrix", "reliability", "error_rate_by_edge_distance"):
        _assert_png(out / f"{name}.png")
    if report["gating"]["predicted"]:
        _assert_png(out / "regression.png")


def test_evaluate_refuses_a_classifier_of_another_label_rule_and_reports_the_rule(tmp_path, evaluation_inputs):
    from density_db.inference.architectures import build_model
    from density_db.inference.checkpoints import load_checkpoint, save_checkpoint

    data_dir, classifier, _ = evaluation_inputs
    report = evaluate(data_dir, load_checkpoint(classifier), None, split="all", batch_size=8)
    assert report["labels"]["label_rule"] == "detectable-stars"
    assert report["models"]["classifier"]["label_rule"] == "detectable-stars"
    paper = tmp_path / "paper.pt"
    save_checkpoint(
        paper,
        build_model("classifier", "baseline_cnn"),
        stage="classifier",
        architecture="baseline_cnn",
        metadata={"label_rule": "catalog-stars"},
    )
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            "--data",
            str(data_dir),
            "--classifier",
            str(paper),
            "--regressor",
            "none",
            "--out",
            str(tmp_path / "out"),
            "--split",
            "all",
        ],
    )
    assert result.exit_code == 1
    assert "trained on classes counting 'catalog-stars'" in result.output
    assert "--label-rule catalog-stars" in result.output
    assert not (tmp_path / "out" / "report.json").exists()


def test_evaluate_test_split_uses_the_held_out_tenth(evaluation_inputs):
    from density_db.inference.checkpoints import load_checkpoint

    data_dir, classifier, _ = evaluation_inputs
    report = evaluate(data_dir, load_checkpoint(classifier), None, split="test", batch_size=4)
    assert report["samples"] == 2  # round(16 / 10)
    assert report["split_seed"] == 0
    assert report["regression"] is None and report["models"]["regressor"] is None


def test_evaluate_command_refuses_a_missing_dataset(tmp_path, evaluation_inputs):
    _, classifier, _ = evaluation_inputs
    result = CliRunner().invoke(
        main,
        ["evaluate", "--data", str(tmp_path / "none"), "--classifier", str(classifier), "--out", str(tmp_path / "out")],
    )
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_evaluate_reads_several_datasets_and_warns_when_their_test_split_was_not_held_out(
    tmp_path, evaluation_inputs, caplog
):
    from density_db.inference.architectures import build_model
    from density_db.inference.checkpoints import load_checkpoint, save_checkpoint
    from density_db.inference.datasets import SimulatedDataset

    data_dir, classifier, _ = evaluation_inputs
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            "--data",
            str(data_dir),
            "--data",
            str(data_dir),
            "--classifier",
            str(classifier),
            "--regressor",
            "none",
            "--out",
            str(tmp_path / "out"),
            "--split",
            "all",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["samples"] == 32 and report["data"]["directories"] == [str(data_dir)] * 2

    def trained_on(manifest: str) -> Path:
        path = tmp_path / f"{manifest[:8]}.pt"
        save_checkpoint(
            path,
            build_model("classifier", "baseline_cnn", in_channels=4),
            stage="classifier",
            architecture="baseline_cnn",
            metadata={"data_manifest_sha256": manifest, "split_seed": 0, "preprocessing_version": 2},
        )
        return path

    own = trained_on(SimulatedDataset(data_dir).manifest_sha256())
    with caplog.at_level("WARNING", logger="density_db.inference.evaluation"):
        evaluate(data_dir, load_checkpoint(own), None, split="test")
        assert not caplog.records
        evaluate([data_dir, data_dir], load_checkpoint(own), None, split="test")
    assert "the classifier was trained on other data" in caplog.text

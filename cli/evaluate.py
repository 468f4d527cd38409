"""``density-db evaluate``: metrics and figures of a classifier (and regressor) on a simulated dataset."""

from __future__ import annotations

import json
from pathlib import Path

import click

from density_db.cli.context import AppContext, pass_app


@click.command()
@click.option(
    "--data",
    "data_dirs",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    multiple=True,
    help="A dataset directory written by 'density-db simulate dataset'; repeat it to evaluate several "
    "as one (in the order training was given them, for --split test).",
)
@click.option(
    "--classifier",
    "classifier_path",
    default="demo",
    show_default=True,
    help="Classifier: 'demo' (shipped), a checkpoint file or a registered model name.",
)
@click.option(
    "--regressor",
    "regressor_path",
    default="demo",
    show_default=True,
    help="Regressor: 'demo' (shipped), a checkpoint file or a registered model name; "
    "'none' evaluates the classification only.",
)
@click.option(
    "--arch-classifier",
    "classifier_architecture",
    default=None,
    help="Architecture of a plain state dict given as --classifier (e.g. resnet34).",
)
@click.option(
    "--arch-regressor",
    "regressor_architecture",
    default=None,
    help="Architecture of a plain state dict given as --regressor (e.g. resnet50).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for report.json and the PNG figures (created if needed).",
)
@click.option(
    "--split",
    type=click.Choice(["test", "all"]),
    default="test",
    show_default=True,
    help="test: the test part of the 8:1:1 split with the classifier's recorded split seed; "
    "all: every sample (a dataset kept apart for testing).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@pass_app
def evaluate(
    app: AppContext,
    data_dirs,
    classifier_path,
    regressor_path,
    classifier_architecture,
    regressor_architecture,
    out_dir,
    split,
    batch_size,
    device,
) -> None:
    """Evaluate the models on a simulated dataset: write report.json and figures to --out."""
    from density_db.inference.checkpoints import load_checkpoint
    from density_db.inference.evaluation import predict_samples, summarise
    from density_db.inference.figures import write_figures

    classifier = load_checkpoint(
        _checkpoint(app, classifier_path, "classifier"), architecture=classifier_architecture, stage="classifier"
    )
    regressor = (
        load_checkpoint(
            _checkpoint(app, regressor_path, "regressor"), architecture=regressor_architecture, stage="regressor"
        )
        if regressor_path != "none"
        else None
    )
    samples = predict_samples(data_dirs, classifier, regressor, split=split, batch_size=batch_size, device=device)
    report = summarise(samples, classifier, regressor)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = write_figures(samples, report, out_dir)
    report["figures"] = {name: path.name for name, path in figures.items()}
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    click.echo(_summary(report, out_dir))


def _checkpoint(app: AppContext, name_or_path: str, stage: str) -> Path:
    """A checkpoint file; the catalog is opened only to resolve a registered model's name."""
    from density_db.inference.checkpoints import demo_checkpoint
    from density_db.inference.model_registry import DEMO_MODEL, checkpoint_path

    if name_or_path == DEMO_MODEL:
        return demo_checkpoint(stage)
    if Path(name_or_path).is_file():
        return Path(name_or_path)
    return checkpoint_path(app.open_database(), name_or_path)


def _summary(report: dict, out_dir: Path) -> str:
    classification = report["classification"]
    lines = [
        f"{report['samples']} images ({report['split']} split): accuracy {classification['accuracy']:.2%}, "
        f"macro-F1 {classification['macro_f1']:.2%}, within one class "
        f"{classification['accuracy_within_one_class']:.2%}, Brier {classification['brier_score']:.3f}, "
        f"ECE {classification['expected_calibration_error']:.3f}",
    ]
    regression = report["regression"]
    if regression is not None:
        overall = regression["overall"]
        if overall["samples"]:
            r2 = "undefined" if overall["r2"] is None else f"{overall['r2']:.3f}"
            lines.append(
                f"{overall['samples']} regressed images: MAE {overall['mae']:.4f} dex, "
                f"RMSE {overall['rmse']:.4f} dex, R^2 {r2}, within +-20 % "
                f"{overall['within_20_percent']:.1%}"
            )
        else:
            lines.append("no image was routed to the regressor (all predicted empty or too crowded)")
    lines.append("accuracy by band: " + ", ".join(f"{row['band']} {row['accuracy']:.1%}" for row in report["by_band"]))
    if regression is not None:
        lines.append(
            "regression MAE by band (dex): "
            + ", ".join(
                f"{row['band']} {'-' if row['regression']['mae'] is None else format(row['regression']['mae'], '.3f')}"
                for row in report["by_band"]
            )
        )
    gating = report["gating"]
    lines.append(f"gating: {gating['empty']} empty, {gating['predicted']} regressed, {gating['bypassed']} bypassed")
    lines.append(f"wrote {out_dir / 'report.json'} and {len(report['figures'])} figures")
    return "\n".join(lines)

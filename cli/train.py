"""``density-db train``: train the classifier or the regressor on a simulated dataset."""

from __future__ import annotations

from pathlib import Path

import click

from density_db.cli.context import AppContext, pass_app
from density_db.cli.progress import progress_bar

INIT_SOURCES = {"imagenet": "pretrained_weights", "backbone": "backbone_checkpoint"}
"""``--init`` prefixes and the ``TrainingConfig`` field each one sets."""


def _parse_init(_ctx, _param, value: str | None) -> dict[str, str]:
    """``imagenet:PATH`` or ``backbone:CKPT`` as the matching ``TrainingConfig`` keyword, checked to exist."""
    if value is None:
        return {}
    source, _, path = value.partition(":")
    if source not in INIT_SOURCES or not path:
        raise click.BadParameter(f"expected imagenet:PATH or backbone:CKPT, got {value!r}")
    if not Path(path).is_file():
        raise click.BadParameter(f"{source} weights {path} is not a file")
    return {INIT_SOURCES[source]: path}


@click.command()
@click.argument("stage", type=click.Choice(["classifier", "regressor"]))
@click.option(
    "--data",
    "data_dirs",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    multiple=True,
    help="A dataset directory written by 'density-db simulate dataset'; repeat it to train on several "
    "as one (the split is drawn over all their samples).",
)
@click.option(
    "--arch",
    "architecture",
    required=True,
    help="Network: classifier resnet34|resnet18|baseline_cnn, regressor resnet50|resnet18|baseline_cnn.",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Checkpoint of the best model; OUT.state.pt is written next to it after every epoch.",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Classifier: epoch limit (default 100, early stopping after 15 without improvement). "
    "Regressor: total of its three stages (default 30+40+70; others scale them).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option(
    "--lr",
    "learning_rate",
    type=click.FloatRange(min=0, min_open=True),
    default=1e-3,
    show_default=True,
    help="AdamW base learning rate.",
)
@click.option(
    "--lr-patience",
    "scheduler_patience",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Halve the learning rate after more than this many epochs without a lower validation loss "
    "(ReduceLROnPlateau, both stages).",
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Initialisation, shuffling and augmentation.")
@click.option(
    "--loader-workers",
    "--workers",
    "workers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Processes of the DataLoader reading the samples (--workers: the former name).",
)
@click.option(
    "--init",
    "initial_weights",
    default=None,
    callback=_parse_init,
    metavar="imagenet:PATH|backbone:CKPT",
    help="Start from weights: 'imagenet:PATH', a local torchvision ImageNet weights file of the ResNet "
    "(first convolution averaged to the input's channels; nothing is downloaded), or 'backbone:CKPT', "
    "every layer but the head from a density-db checkpoint of the same architecture (e.g. the trained "
    "classifier, for the regressor). Default: random initialisation.",
)
@click.option(
    "--preprocessing-version",
    "preprocessing_version",
    type=click.Choice(["1", "2"]),
    default=None,
    help="The model input to train on, default the data's. 1 (the paper's image and valid fraction) "
    "can be read from version 2 data: the same images without the point-source channels.",
)
@click.option(
    "--refit-head",
    is_flag=True,
    help="Classifier: after training, refit its last linear layer to convergence on the training split's "
    "features (L-BFGS, L2 penalty chosen on the validation split); not in the paper's recipe. With --resume "
    "on a finished run, refits the saved best model.",
)
@click.option("--resume", is_flag=True, help="Continue the run saved in OUT.state.pt.")
@click.option(
    "--tune",
    "tune_trials",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Tune the learning rates (and the regressor's layer multipliers) with N Optuna trials "
    "instead of one run (--lr is then searched, not used); the best trial goes to --out.",
)
@pass_app
def train(
    app: AppContext,
    stage,
    data_dirs,
    architecture,
    out_path,
    epochs,
    batch_size,
    learning_rate,
    scheduler_patience,
    device,
    seed,
    workers,
    initial_weights,
    preprocessing_version,
    refit_head,
    resume,
    tune_trials,
) -> None:
    """Train STAGE (classifier or regressor) on a simulated dataset; the best model goes to --out."""
    from density_db.inference.training import TrainingConfig, state_file_of
    from density_db.inference.training import train as run_training

    if resume and tune_trials is not None:
        raise click.UsageError("--tune and --resume cannot be combined: a tuning study cannot be resumed")
    if resume and not state_file_of(out_path).exists():
        raise click.UsageError(f"--resume: {state_file_of(out_path)} does not exist")
    config = TrainingConfig(
        stage=stage,
        architecture=architecture,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        scheduler_patience=scheduler_patience,
        device=device,
        seed=seed,
        workers=workers,
        **initial_weights,
        preprocessing_version=None if preprocessing_version is None else int(preprocessing_version),
        refit_head=refit_head,
    )
    if tune_trials is not None:
        import optuna

        from density_db.inference.tuning import tune

        if app.verbosity < 1:  # Optuna reports every trial on stderr; -v shows it
            optuna.logging.set_verbosity(optuna.logging.WARNING)

        with _training_bar(app) as bar:
            tuned = tune(
                config,
                data_dirs,
                out_path,
                trials=tune_trials,
                seed=seed,
                progress=_epoch_reporter(bar, tune_trials * config.total_epochs),
            )
        params = ", ".join(
            f"{key}={value:.4g}" if isinstance(value, float) else f"{key}=({', '.join(f'{v:.4g}' for v in value)})"
            for key, value in tuned.best_params.items()
        )
        failed = f", {tuned.failed_trials} failed" if tuned.failed_trials else ""
        click.echo(
            f"tuned with {len(tuned.trials)} completed trials{failed}: best {params}, best validation loss "
            f"{tuned.best_validation_loss:.4g}; wrote {tuned.checkpoint} (sha256 {tuned.sha256[:12]})"
        )
        return
    with _training_bar(app) as bar:
        result = run_training(
            config, data_dirs, out_path, resume=resume, progress=_epoch_reporter(bar, config.total_epochs)
        )
    ending = "stopped early" if result.stopped_early else "done"
    click.echo(
        f"{ending} after {result.epochs_run} epochs on {result.device}: best validation loss "
        f"{result.best_validation_loss:.4g} (epoch {result.best_epoch + 1}); "
        f"wrote {result.checkpoint} (sha256 {result.sha256[:12]}); resumable state in {result.state_file}"
    )
    click.echo(_test_split_line(result.evaluation))


def _test_split_line(evaluation: dict) -> str:
    """The best model's figures on the test split, as stored in the checkpoint's metadata."""
    head = f"test split ({evaluation['samples']} images): "
    if "accuracy" in evaluation:
        return (
            head + f"accuracy {evaluation['accuracy']:.2%}, macro-F1 {evaluation['macro_f1']:.2%}, "
            f"within one class {evaluation['accuracy_within_one_class']:.2%}"
        )
    r2 = "undefined" if evaluation["r2"] is None else f"{evaluation['r2']:.3f}"
    return head + f"MAE {evaluation['mae']:.4f} dex, RMSE {evaluation['rmse']:.4f} dex, R^2 {r2} (ungated)"


def _training_bar(app: AppContext):
    """A progress bar with loss, images/s and ETA (``None`` with -q)."""
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return progress_bar(
        app,
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("loss {task.fields[loss]:.4g}"),
        TextColumn("{task.fields[rate]:.1f} images/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )


def _epoch_reporter(bar, total_epochs: int):
    """The training progress callback: steps of all remaining epochs on ``bar`` (``None`` without one)."""
    if bar is None:
        return None
    task = None

    def update(epoch: int, step: int, steps: int, loss: float, images_per_s: float) -> None:
        nonlocal task
        description = f"epoch {epoch + 1}/{total_epochs}"
        if task is None:  # the first step tells the remaining work (a resumed run starts later)
            task = bar.add_task(description, total=(total_epochs - epoch) * steps, loss=loss, rate=images_per_s)
        bar.update(task, advance=1, description=description, loss=loss, rate=images_per_s)

    return update

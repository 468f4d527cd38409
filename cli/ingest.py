"""``density-db ingest``: register detector images and run the two-stage model on them with Dask."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import click

from density_db.cli.context import AppContext
from density_db.cli.progress import progress_bar

if TYPE_CHECKING:
    from density_db.database import Database
    from density_db.inference.cluster import Cluster
    from density_db.inference.driver import IngestOptions
    from density_db.inference.model_registry import ModelPair

EXIT_SOME_INPUTS_FAILED = 3


@click.command()
@click.argument("paths", nargs=-1)
@click.option(
    "--from-file",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="Text file with one input path per line ('-' for stdin).",
)
@click.option("--metadata-only", is_flag=True, help="Register exposures and frames from headers only (no inference).")
@click.option(
    "--classifier",
    default="demo",
    show_default=True,
    help="Classifier: 'demo' (shipped), a checkpoint file, or a registered model's name.",
)
@click.option(
    "--regressor",
    default="demo",
    show_default=True,
    help="Regressor: 'demo' (shipped), a checkpoint file, or a registered model's name.",
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
    "--scheduler",
    default=None,
    help="Address of a running Dask scheduler (default: $DASK_SCHEDULER_ADDRESS, else a local cluster).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Worker processes of the local cluster [default: one per GPU, else one per CPU core].",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where workers reduce images and run the models (auto: CUDA where a worker has it).",
)
@click.option(
    "--shard-size",
    type=click.IntRange(min=1),
    default=None,
    help="Detector images per Dask task [default: 2 on CPU, 64 on GPU].",
)
@click.option(
    "--rules",
    "rules_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Rules file whose [flags] thresholds flag the new results [default: those in force].",
)
@click.option(
    "--max-in-flight",
    type=click.IntRange(min=1),
    default=None,
    help="Tasks submitted at once [default: twice the worker threads].",
)
@click.option(
    "--rerun", is_flag=True, help="Recompute frames that already have a result for these models, replacing it."
)
@click.option("--profile", default=None, help="Instrument profile: a shipped name (csst) or a TOML file.")
@click.option("--run-name", default=None, help="A name for this run, stored in the run table.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="Frames registered per transaction.",
)
@click.pass_context
def ingest(
    ctx: click.Context,
    paths: tuple[str, ...],
    from_file: Path | None,
    metadata_only: bool,
    classifier: str,
    regressor: str,
    classifier_architecture: str | None,
    regressor_architecture: str | None,
    scheduler: str | None,
    workers: int | None,
    device: str,
    shard_size: int | None,
    rules_path: Path | None,
    max_in_flight: int | None,
    rerun: bool,
    profile: str | None,
    run_name: str | None,
    batch_size: int,
) -> None:
    """Register FITS detector images from PATHS and store a density result for each.

    PATHS are files, directories (searched recursively) or glob patterns.
    Every science HDU becomes a frame; every frame without a result for the
    chosen classifier and regressor is classified (and, for classes 1-4,
    its stars brighter than 23.5 mag counted) on Dask workers.  Running
    again skips what is stored, so an interrupted ingest is finished by
    running it again.  Exit code 3 means some inputs failed (listed in the
    failure table) while the others were stored.
    """
    from density_db.flag_rules import FlagRules
    from density_db.inference.driver import IngestOptions
    from density_db.planning.rules import load_rules

    app = ctx.find_object(AppContext)
    if not paths and from_file is None:
        raise click.UsageError("give input PATHS or --from-file LIST")
    options = IngestOptions(
        shard_size=shard_size,
        max_in_flight=max_in_flight,
        rerun=rerun,
        register_batch=batch_size,
        flag_rules=FlagRules.from_rules(load_rules(rules_path)) if rules_path else None,
        profile=profile or app.settings.profile,
        run_name=run_name,
    )
    if metadata_only:
        counts_failed = _register_only(app, paths, from_file, options)
    else:
        from density_db.inference.cluster import Cluster
        from density_db.inference.model_registry import ModelPair

        database = app.open_database()
        models = ModelPair.resolve(
            database,
            classifier,
            regressor,
            classifier_architecture=classifier_architecture,
            regressor_architecture=regressor_architecture,
        )
        with Cluster(scheduler=scheduler, workers=workers, device=device) as cluster:
            counts_failed = _ingest(app, database, paths, from_file, options, models, cluster)
    if counts_failed:
        ctx.exit(EXIT_SOME_INPUTS_FAILED)


def _register_only(app: AppContext, paths, from_file, options: IngestOptions) -> int:
    """``--metadata-only``: frames from headers; returns the number of failed inputs."""
    from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

    from density_db.fits_input import discover_inputs
    from density_db.instrument import load_profile
    from density_db.registration import RegistrationCounts, register_paths
    from density_db.runs import begin_run, recording_outcome

    instrument = load_profile(options.profile)
    database = app.open_database()
    config = {
        "paths": list(paths),
        "from_file": str(from_file) if from_file else None,
        "metadata_only": True,
        "profile": instrument.name,
        "batch_size": options.register_batch,
    }
    with (
        begin_run(database, kind="register", name=options.run_name, config=config) as run,
        progress_bar(app, SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()) as bar,
    ):
        counts = RegistrationCounts()
        with recording_outcome(run, counts.as_dict):
            register_paths(
                database,
                discover_inputs(paths, from_file=from_file),
                instrument,
                counts=counts,
                run_id=run.id,
                batch_size=options.register_batch,
                progress=_registration_reporter(bar),
            )
    click.echo(
        f"run {run.id}: {counts.files} files, {counts.frames_new} frames registered, "
        f"{counts.frames_known} already known, {counts.failures} failures"
    )
    _point_at_failures(run.id, counts.failures)
    return counts.failures


def _warn_of_domain(database, run_id: int) -> None:
    """Say how many of the run's answers are for frames unlike the models' training images."""
    import sqlalchemy as sa

    from density_db.flags import flag_mask

    with database.engine.connect() as connection:
        outside = connection.execute(
            sa.text("SELECT count(*) FROM density_result WHERE run_id = :run AND (flags & :mask) <> 0"),
            {"run": run_id, "mask": flag_mask(["outside_training_domain"])},
        ).scalar_one()
    if outside:
        click.echo(
            f"warning: {outside} frames differ in shape or pixel scale from the models' training images: their "
            "results carry the flag outside_training_domain (classes and counts there are extrapolations)",
            err=True,
        )


def _ingest(
    app: AppContext, database: Database, paths, from_file, options: IngestOptions, models: ModelPair, cluster: Cluster
) -> int:
    """Registration and inference; returns the number of failed inputs."""
    from density_db.fits_input import discover_inputs
    from density_db.inference.driver import ingest

    with _ingest_progress(app, cluster) as report:
        outcome = ingest(
            database,
            discover_inputs(paths, from_file=from_file),
            models=models,
            options=options,
            cluster=cluster,
            progress=report,
            run_config={"paths": list(paths), "from_file": str(from_file) if from_file else None},
        )
    counts, registration = outcome.counts, outcome.counts.registration
    click.echo(
        f"run {outcome.run_id}: {registration.files} files, {registration.frames_new} new frames; "
        f"{counts.results} frames classified with {models.classifier.name} + {models.regressor.name}, "
        f"{counts.already_done} had results already, {counts.failures} failures"
    )
    _point_at_failures(outcome.run_id, counts.failures)
    _warn_of_domain(database, outcome.run_id)
    return counts.failures


def _point_at_failures(run_id: int, failures: int) -> None:
    if failures:
        click.echo(
            "failures are listed by: density-db query sql "
            f'"SELECT path, hdu_index, stage, error_kind, message FROM failure WHERE run_id = {run_id}"',
            err=True,
        )


def _registration_reporter(bar):
    """A progress callback showing files, frames and failures so far (``None`` without a bar)."""
    if bar is None:
        return None
    task = bar.add_task("registering")

    def report(counts) -> None:
        bar.update(
            task,
            description=(
                f"{counts.files} files, {counts.frames_new} new frames, "
                f"{counts.frames_known} known, {counts.failures} failures"
            ),
        )

    return report


def _ingest_progress(app: AppContext, cluster):
    """A context giving the ingest's progress callback: frames done/queued, frames/s, ETA, failures."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    @contextlib.contextmanager
    def reporter():
        with progress_bar(
            app,
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
        ) as bar:
            if bar is None:
                yield None
                return
            task = bar.add_task(f"frames on {cluster.describe()}", total=None, rate="", status="")

            def report(counts) -> None:
                import time

                elapsed = max(time.monotonic() - counts.started, 1e-9)
                bar.update(
                    task,
                    completed=counts.processed,
                    total=counts.queued or None,
                    rate=f"{counts.processed / elapsed:.2f} frames/s",
                    status=(
                        f"{counts.failures} failed, {counts.already_done} done before, "
                        f"{counts.registration.files} files read"
                    ),
                )

            yield report

    return reporter()

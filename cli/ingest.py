"""``density-db ingest``: register detector images (and, later, run the two-stage model on them)."""

from __future__ import annotations

from pathlib import Path

import click

from density_db.cli.context import AppContext
from density_db.cli.progress import progress_bar

EXIT_SOME_INPUTS_FAILED = 3


@click.command()
@click.argument("paths", nargs=-1)
@click.option(
    "--from-file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="Text file with one input path per line ('-' for stdin).",
)
@click.option("--metadata-only", is_flag=True, help="Register exposures and frames from headers only (no inference).")
@click.option("--profile", default=None, help="Instrument profile: a shipped name (csst) or a TOML file.")
@click.option("--run-name", default=None, help="A name for this run, stored in the run table.")
@click.option("--batch-size", type=click.IntRange(min=1), default=500, show_default=True,
              help="Frames written to the database per transaction.")
@click.pass_context
def ingest(
    ctx: click.Context,
    paths: tuple[str, ...],
    from_file: Path | None,
    metadata_only: bool,
    profile: str | None,
    run_name: str | None,
    batch_size: int,
) -> None:
    """Register FITS detector images from PATHS (files, directories, glob patterns).

    Every science HDU becomes a frame row, or a failure row that says what is
    wrong; running again on the same inputs adds nothing.  Exit code 3 means
    some inputs failed while the others were stored.
    """
    app = ctx.find_object(AppContext)
    if not paths and from_file is None:
        raise click.UsageError("give input PATHS or --from-file LIST")
    if not metadata_only:
        raise click.UsageError(
            "the two-stage inference is not part of this density-db yet; "
            "use --metadata-only to register frames"
        )
    from density_db.fits_input import discover_inputs
    from density_db.instrument import load_profile
    from density_db.registration import register_paths
    from density_db.runs import finish_run, start_run
    from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

    instrument = load_profile(profile or app.settings.profile)
    database = app.open_database()
    config = {
        "paths": list(paths), "from_file": str(from_file) if from_file else None,
        "metadata_only": metadata_only, "profile": instrument.name, "batch_size": batch_size,
    }
    run_id = start_run(database, kind="register", name=run_name, config=config)
    with progress_bar(app, SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()) as bar:
        report = _counts_reporter(bar)
        try:
            counts = register_paths(
                database, discover_inputs(paths, from_file=from_file), instrument,
                run_id=run_id, batch_size=batch_size, progress=report,
            )
        except KeyboardInterrupt:
            finish_run(database, run_id, status="interrupted", counts={}, message="interrupted by the user")
            raise
        except Exception as error:
            finish_run(database, run_id, status="failed", counts={}, message=str(error)[:2000])
            raise
    finish_run(database, run_id, status="completed", counts=counts.as_dict())
    click.echo(
        f"run {run_id}: {counts.files} files, {counts.frames_new} frames registered, "
        f"{counts.frames_known} already known, {counts.failures} failures"
    )
    if counts.failures:
        click.echo(
            "failures are listed by: density-db query sql "
            f"\"SELECT path, hdu_index, error_kind, message FROM failure WHERE run_id = {run_id}\"",
            err=True,
        )
        ctx.exit(EXIT_SOME_INPUTS_FAILED)


def _counts_reporter(bar):
    """A progress callback showing files, frames and failures so far (``None`` without a bar)."""
    if bar is None:
        return None
    task = bar.add_task("registering")

    def report(counts) -> None:
        bar.update(task, description=(
            f"{counts.files} files, {counts.frames_new} new frames, "
            f"{counts.frames_known} known, {counts.failures} failures"
        ))

    return report

"""``density-db maps``: HEALPix maps of density class, bright-star density, coverage and flags."""

from __future__ import annotations

from pathlib import Path

import click

from density_db.cli.context import AppContext, pass_app
from density_db.cli.options import region_option
from density_db.cli.progress import progress_bar


@click.group()
def maps() -> None:
    """Build HEALPix maps (healsparse, healpy FITS, PNG, MOC) from the stored results."""


@maps.command()
@click.option("--nside", type=click.IntRange(min=1), required=True, help="HEALPix nside of the maps (a power of two).")
@click.option("--band", "bands", multiple=True, help="Map this band (repeatable; default: every band with results).")
@click.option("--all-bands", is_flag=True, help="Map every band with results (the default), each and all together.")
@click.option(
    "--run",
    "run_id",
    type=click.IntRange(min=1),
    default=None,
    help="Use this run's results (default: each frame's latest result).",
)
@region_option
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory for the map files (created if needed).",
)
@click.option("--png", is_flag=True, help="Also draw a Mollweide PNG of every map.")
@click.option("--moc", is_flag=True, help="Also write MOCs of pixels with class >= 4 frames and with flagged frames.")
@click.option(
    "--compress",
    is_flag=True,
    help="Compress the healsparse integer and float maps losslessly (smaller files, slower to write).",
)
@click.option(
    "--chunk-size",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Frames read from the database and rasterised at a time.",
)
@pass_app
def build(
    app: AppContext,
    nside: int,
    bands: tuple[str, ...],
    all_bands: bool,
    run_id: int | None,
    region,
    out_dir: Path,
    png: bool,
    moc: bool,
    compress: bool,
    chunk_size: int,
) -> None:
    """Aggregate frame results into HEALPix maps, per band and for all bands together.

    Footprints come from each frame's WCS corners, sampled at least 4 times
    finer than NSIDE and deep enough that each frame holds 64 sub-pixels, so
    every pixel knows the fraction of it each frame covers and every frame
    counts (at least in the pixel holding its centre).
    Writes, per band and statistic, BAND_STATISTIC_nsideN.hsp (healsparse)
    and .fits (healpy, NESTED, COORDSYS C), with --png a .png and with --moc
    BAND_class_geC_nsideN_moc.fits (C: the crowded_min_class of the flag
    thresholds in force, 4 by default) and BAND_flagged_nsideN_moc.fits; band
    'all' combines the bands when there are several.

    Example: density-db maps build --nside 1024 --all-bands --out maps/ --png
    """
    if bands and all_bands:
        raise click.UsageError("give --band or --all-bands, not both")
    from density_db.maps.build import MapSettings, build_maps
    from density_db.maps.source import Selection

    selection = Selection(bands=app.canonical_bands(bands) if bands else None, run_id=run_id, region=region)
    try:
        settings = MapSettings(
            nside=nside,
            out_dir=out_dir,
            selection=selection,
            png=png,
            moc=moc,
            compress=compress,
            chunk_size=chunk_size,
        )
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--nside") from None
    database = app.open_database()
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with progress_bar(
        app, TextColumn("mapping frames"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()
    ) as bar:
        task = None if bar is None else bar.add_task("maps", total=None)

        def report(done: int, total: int) -> None:
            if bar is not None:
                bar.update(task, completed=done, total=total)

        summary = build_maps(database, settings, progress=report)
    _print_summary(summary, out_dir)


def _print_summary(summary, out_dir: Path) -> None:
    click.echo(f"maps at nside {summary.nside} from results: {summary.run}; models: {', '.join(summary.models) or '-'}")
    for band in summary.bands:
        skipped = ""
        if band.frames_without_result or band.frames_without_corners:
            skipped = f", skipped {band.frames_without_result} without a result"
            if band.frames_without_corners:
                skipped += f" and {band.frames_without_corners} without corners (named above and in the manifest)"
        by_area = f" ({band.frames_placed_by_area} by their area)" if band.frames_placed_by_area else ""
        orders = ", ".join(f"{frames} at order {order}" for order, frames in band.sampling_orders.items())
        click.echo(
            f"  {band.band}: {band.frames_placed} frames placed{by_area}{skipped}; {band.pixels} pixels, "
            f"{band.covered_area_deg2:.3f} deg^2 covered; sampled {orders or '-'}"
        )
    click.echo(f"{len(summary.files)} files written to {out_dir}:")
    for path in summary.files:
        click.echo(f"  {path.name}")

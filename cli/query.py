"""``density-db query``: read-only SQL, cone, point-in-footprint and region searches."""

from __future__ import annotations

from pathlib import Path

import click

from density_db.cli.context import AppContext, pass_app
from density_db.cli.options import band_option, output_format_option, resolve_output_format


@click.group()
def query() -> None:
    """Query the catalog; rows carry the field_density columns."""


def _parse_parameters(values: tuple[str, ...]) -> dict[str, str]:
    parameters = {}
    for value in values:
        name, separator, text = value.partition("=")
        if not separator or not name.isidentifier():
            raise click.BadParameter(f"expected NAME=VALUE, got {value!r}", param_hint="--param")
        parameters[name] = text
    return parameters


def _emit(result, output_format: str | None) -> None:
    from density_db.cli.output import write_result

    write_result(result, resolve_output_format(output_format))


@query.command()
@click.argument("statement")
@click.option(
    "--param",
    "parameters",
    multiple=True,
    metavar="NAME=VALUE",
    help="Bind :NAME in the statement to VALUE (repeatable).",
)
@output_format_option
@pass_app
def sql(app: AppContext, statement: str, parameters: tuple[str, ...], output_format: str | None) -> None:
    """Run one SQL STATEMENT in a read-only transaction.

    Example: density-db query sql "SELECT * FROM field_density WHERE band = :band" --param band=g
    """
    from density_db.queries import run_sql

    _emit(run_sql(app.open_database(), statement, _parse_parameters(parameters)), output_format)


# Negative declinations (``cone 30 -10 0.5``) must not be read as options.
@query.command(context_settings={"ignore_unknown_options": True})
@click.argument("ra", type=float)
@click.argument("dec", type=float)
@click.argument("radius_deg", type=float)
@band_option
@output_format_option
@pass_app
def cone(
    app: AppContext, ra: float, dec: float, radius_deg: float, band: str | None, output_format: str | None
) -> None:
    """Frames whose centre lies within RADIUS_DEG of (RA, DEC), degrees ICRS, nearest first."""
    from density_db.queries import cone_search

    _emit(cone_search(app.open_database(), ra, dec, radius_deg, band=app.canonical_band(band)), output_format)


@query.command()
@click.option(
    "--at", "position", type=(float, float), required=True, metavar="RA DEC", help="The sky position, degrees ICRS."
)
@band_option
@output_format_option
@pass_app
def frames(app: AppContext, position: tuple[float, float], band: str | None, output_format: str | None) -> None:
    """Frames whose footprint contains the position given by --at RA DEC."""
    from density_db.queries import frames_at

    ra, dec = position
    _emit(frames_at(app.open_database(), ra, dec, band=app.canonical_band(band)), output_format)


def _parse_polygon(text: str) -> tuple[list[float], list[float]]:
    """``RA,DEC,RA,DEC,...`` (degrees) as lists of right ascensions and declinations."""
    try:
        values = [float(value) for value in text.replace(" ", "").split(",") if value]
    except ValueError:
        raise click.BadParameter(
            f"expected RA,DEC,RA,DEC,... in degrees, got {text!r}", param_hint="--polygon"
        ) from None
    if len(values) % 2:
        raise click.BadParameter(
            f"expected pairs RA,DEC; got an odd number of values ({len(values)})", param_hint="--polygon"
        )
    return values[0::2], values[1::2]


@query.command()
@click.option(
    "--polygon",
    metavar="RA,DEC,RA,DEC,...",
    default=None,
    help="Vertices in order, degrees ICRS, edges along great circles (at least 3 vertices).",
)
@click.option(
    "--moc",
    "moc_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A MOC FITS file (mocpy, Aladin ...).",
)
@band_option
@output_format_option
@pass_app
def region(
    app: AppContext, polygon: str | None, moc_path: Path | None, band: str | None, output_format: str | None
) -> None:
    """Frames whose footprint overlaps a region: a --polygon or a --moc file.

    Example: density-db query region --polygon 359,-1,1,-1,1,1,359,1 --band g
    """
    if (polygon is None) == (moc_path is None):
        raise click.UsageError("give exactly one of --polygon and --moc")
    from density_db.errors import DensityDBError
    from density_db.queries import region_search
    from density_db.regions import polygon_region, read_moc

    try:
        if polygon is not None:
            sky_region = polygon_region(*_parse_polygon(polygon))
        else:
            sky_region = read_moc(moc_path)
    except DensityDBError as error:
        raise click.BadParameter(str(error), param_hint="--polygon" if polygon is not None else "--moc") from None
    _emit(region_search(app.open_database(), sky_region, band=app.canonical_band(band)), output_format)

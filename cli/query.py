"""``density-db query``: read-only SQL, cone search and point-in-footprint search."""

from __future__ import annotations

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


def _canonical_band(app: AppContext, band: str | None) -> str | None:
    """The profile's spelling of ``band`` (``nuv`` -> ``NUV``), or the value as given for other instruments."""
    if band is None:
        return None
    from density_db.errors import InputError
    from density_db.instrument import load_profile

    try:
        return load_profile(app.settings.profile).canonical_band(band)
    except InputError:
        return band


@query.command()
@click.argument("statement")
@click.option("--param", "parameters", multiple=True, metavar="NAME=VALUE",
              help="Bind :NAME in the statement to VALUE (repeatable).")
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
def cone(app: AppContext, ra: float, dec: float, radius_deg: float, band: str | None, output_format: str | None) -> None:
    """Frames whose centre lies within RADIUS_DEG of (RA, DEC), degrees ICRS, nearest first."""
    from density_db.queries import cone_search

    _emit(cone_search(app.open_database(), ra, dec, radius_deg, band=_canonical_band(app, band)), output_format)


@query.command()
@click.option("--at", "position", type=(float, float), required=True, metavar="RA DEC",
              help="The sky position, degrees ICRS.")
@band_option
@output_format_option
@pass_app
def frames(app: AppContext, position: tuple[float, float], band: str | None, output_format: str | None) -> None:
    """Frames whose footprint contains the position given by --at RA DEC."""
    from density_db.queries import frames_at

    ra, dec = position
    _emit(frames_at(app.open_database(), ra, dec, band=_canonical_band(app, band)), output_format)

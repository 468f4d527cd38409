"""Options shared by several commands."""

from __future__ import annotations

import sys
from pathlib import Path

import click

OUTPUT_FORMATS = ("table", "csv", "ecsv", "json", "votable")

output_format_option = click.option(
    "--format",
    "output_format",
    type=click.Choice(OUTPUT_FORMATS),
    default=None,
    help="Output format (default: table on a terminal, csv otherwise).",
)

band_option = click.option("--band", default=None, help="Only frames of this band (e.g. g, NUV).")


def resolve_output_format(output_format: str | None) -> str:
    """The chosen format, or ``table`` on a terminal and ``csv`` in a pipe."""
    if output_format is not None:
        return output_format
    return "table" if sys.stdout.isatty() else "csv"


def _parse_region(context: click.Context, parameter: click.Parameter, value: str | None):
    if value is None:
        return None
    from density_db.errors import DensityDBError
    from density_db.regions import parse_region

    try:
        return parse_region(value)
    except DensityDBError as error:
        raise click.BadParameter(str(error)) from None


region_option = click.option(
    "--region",
    callback=_parse_region,
    metavar="REGION",
    help="Only frames overlapping a sky region: RA,DEC,RADIUS (a cone), polygon:RA,DEC,RA,DEC,... "
    "or a MOC FITS file (degrees, ICRS).",
)

rules_option = click.option(
    "--rules",
    "rules_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Rules file (TOML) [default: the shipped paper routing; see `density-db plan rules`].",
)

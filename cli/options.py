"""Options shared by several commands."""

from __future__ import annotations

import sys

import click

OUTPUT_FORMATS = ("table", "csv", "ecsv", "json", "votable")

output_format_option = click.option(
    "--format", "output_format", type=click.Choice(OUTPUT_FORMATS), default=None,
    help="Output format (default: table on a terminal, csv otherwise).",
)

band_option = click.option("--band", default=None, help="Only frames of this band (e.g. g, NUV).")


def resolve_output_format(output_format: str | None) -> str:
    """The chosen format, or ``table`` on a terminal and ``csv`` in a pipe."""
    if output_format is not None:
        return output_format
    return "table" if sys.stdout.isatty() else "csv"

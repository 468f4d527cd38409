"""Writing query results as a table, CSV, ECSV, JSON or VOTable on stdout."""

from __future__ import annotations

import csv
import datetime
import json
import sys
from typing import Any

from density_db.queries import QueryResult


def write_result(result: QueryResult, output_format: str) -> None:
    """Write ``result`` to stdout in ``output_format`` (one of ``options.OUTPUT_FORMATS``)."""
    {"table": _write_table, "csv": _write_csv, "json": _write_json, "ecsv": _write_astropy, "votable": _write_astropy}[
        output_format
    ](result, output_format)


def _plain(value: Any) -> Any:
    """A value that csv/json/astropy understand: datetimes as ISO strings, ranges as text."""
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return str(value)


def _write_table(result: QueryResult, _: str) -> None:
    """Aligned columns like psql's: nothing truncated (wide results read well in ``less -S``)."""
    cells = [["" if value is None else _format_cell(value) for value in row] for row in result.rows]
    widths = [max([len(name), *(len(row[index]) for row in cells)]) for index, name in enumerate(result.columns)]
    lines = [
        " | ".join(name.ljust(width) for name, width in zip(result.columns, widths, strict=True)).rstrip(),
        "-+-".join("-" * width for width in widths),
    ]
    for row in cells:
        lines.append(" | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    lines.append(f"({len(cells)} row{'' if len(cells) == 1 else 's'})")
    sys.stdout.write("\n".join(lines) + "\n")


def _format_cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.10g}"
    plain = _plain(value)
    return ", ".join(map(str, plain)) if isinstance(plain, list) else str(plain)


def _write_csv(result: QueryResult, _: str) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(result.columns)
    for row in result.rows:
        writer.writerow(["" if value is None else _plain(value) for value in row])


def _write_json(result: QueryResult, _: str) -> None:
    records = [dict(zip(result.columns, map(_plain, row), strict=True)) for row in result.rows]
    json.dump(records, sys.stdout, indent=1)
    sys.stdout.write("\n")


def _write_astropy(result: QueryResult, output_format: str) -> None:
    import numpy as np
    from astropy.table import MaskedColumn, Table

    columns = []
    for index, name in enumerate(result.columns):
        values = [_plain(row[index]) for row in result.rows]
        missing = [value is None for value in values]
        present = [value for value in values if value is not None]
        if present and all(isinstance(value, list) for value in present):
            values = [", ".join(map(str, value)) if value is not None else None for value in values]
            present = [value for value in values if value is not None]
        fill = type(present[0])() if present else ""
        data = np.array([fill if value is None else value for value in values]) if values else np.array([], dtype=str)
        columns.append(MaskedColumn(data, name=name, mask=missing))
    table = Table(columns)
    if output_format == "ecsv":
        table.write(sys.stdout, format="ascii.ecsv")
    else:
        sys.stdout.flush()
        table.write(sys.stdout.buffer, format="votable")
        sys.stdout.buffer.flush()

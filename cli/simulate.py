"""``density-db simulate``: CSST-like exposures on disk, and training sets."""

from __future__ import annotations

from pathlib import Path

import click

from density_db.cli.context import AppContext, pass_app
from density_db.cli.options import output_format_option, resolve_output_format
from density_db.cli.progress import progress_bar
from density_db.errors import ConfigurationError
from density_db.labels import LABEL_RULE, LABEL_RULES

label_rule_option = click.option(
    "--label-rule",
    "rule",
    type=click.Choice(list(LABEL_RULES)),
    default=LABEL_RULE,
    show_default=True,
    help="Which stars the density class counts: those brighter than the image's 5-sigma depth, or every "
    "catalogued star (the paper's wording).",
)


def _parse_shape(_ctx, _param, value: str) -> tuple[int, int]:
    """'9232x9216' (width x height, as FITS NAXIS1 x NAXIS2) -> (ny, nx)."""
    try:
        width, height = (int(part) for part in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected WIDTHxHEIGHT such as 9232x9216, got {value!r}") from None
    if min(width, height) < 16:
        raise click.BadParameter(f"images must be at least 16 x 16 pixels, got {value!r}")
    return height, width


def _parse_detectors(_ctx, _param, value: str) -> list[int] | None:
    if value == "all":
        return None
    try:
        return sorted({int(part) for part in value.split(",")})
    except ValueError:
        raise click.BadParameter(f"expected 'all' or ids such as 6,7,8, got {value!r}") from None


@click.group()
def simulate() -> None:
    """Simulate CSST-like detector images (with truth catalogs) and training sets."""


@simulate.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory for the FITS files, truth catalogs and manifest.ecsv.",
)
@click.option("--n-exposures", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--field",
    "field_name",
    default=None,
    help="A named field of the paper's Table 1 (see --list-fields); default: 'default'.",
)
@click.option("--ra", type=float, default=None, help="Pointing RA (deg), with --dec, instead of a named field.")
@click.option("--dec", type=float, default=None, help="Pointing Dec (deg).")
@click.option(
    "--detectors",
    default="all",
    callback=_parse_detectors,
    show_default=True,
    help="Imaging detectors to simulate: 'all' (18) or ids such as 6,7,8.",
)
@click.option(
    "--shape",
    default="9232x9216",
    callback=_parse_shape,
    show_default=True,
    help='WIDTHxHEIGHT in pixels; smaller images are cut-outs: the same 0.074" pixels on less sky.',
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-galaxies", is_flag=True, help="Stars only (as the paper's classification set).")
@label_rule_option
@click.option("--compress", is_flag=True, help="Tile-compressed HDUs (.fits.fz; lossy quantisation of the image).")
@click.option(
    "--processes",
    "--workers",
    "workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes rendering in parallel; the output does not depend on it (--workers: the former name).",
)
@click.option("--list-fields", is_flag=True, help="List the named fields and exit.")
@pass_app
def exposures(
    app: AppContext,
    out,
    n_exposures,
    field_name,
    ra,
    dec,
    detectors,
    shape,
    seed,
    no_galaxies,
    rule,
    compress,
    workers,
    list_fields,
) -> None:
    """Write simulated exposures: one FITS file per detector, a truth catalog each, and a manifest."""
    from density_db.simulate.exposures import plan_pointings, simulate_exposures
    from density_db.simulate.fields import NAMED_FIELDS, field_by_name

    if list_fields:
        for field in NAMED_FIELDS.values():
            click.echo(
                f"{field.name:18s} RA {field.ra_range[0]:g} to {field.ra_range[1]:g}, "
                f"Dec {field.dec_range[0]:g} to {field.dec_range[1]:g}"
            )
        return
    if (ra is None) != (dec is None):
        raise click.UsageError("--ra and --dec go together")
    if ra is not None and field_name is not None:
        raise click.UsageError("give --field or --ra/--dec, not both")
    field = None if ra is not None else field_by_name(field_name or "default")
    pointings = plan_pointings(n_exposures, seed=seed, field=field, ra=ra, dec=dec)
    count = n_exposures * (len(detectors) if detectors else 18)
    with progress_bar(app) as bar:
        task = bar.add_task("simulating detector images", total=count) if bar else None
        try:
            rows = simulate_exposures(
                out,
                pointings,
                detectors=detectors,
                shape=shape,
                seed=seed,
                field=field,
                galaxies=not no_galaxies,
                compress=compress,
                workers=workers,
                rule=rule,
                progress=(lambda _row: bar.advance(task)) if bar else None,
            )
        except ConfigurationError as error:
            raise click.ClickException(str(error)) from None
    classes = sorted({row.density_class for row in rows})
    counted = [row.counted_star_count for row in rows]
    click.echo(
        f"wrote {len(rows)} detector images of {n_exposures} exposures to {out} "
        f"(stars per image {min(r.star_count for r in rows)}-{max(r.star_count for r in rows)}, "
        f"of which {min(counted)}-{max(counted)} counted by the {rule!r} rule; "
        f"classes {', '.join(map(str, classes))}); "
        f"labels in {out / 'manifest.ecsv'}"
    )


@simulate.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="New directory for the shards, samples.ecsv and dataset.json.",
)
@click.option("--n", "count", type=click.IntRange(min=1), required=True, help="Number of samples.")
@click.option("--task", type=click.Choice(["classify", "regress"]), required=True)
@click.option(
    "--balance",
    type=click.Choice(["paper", "uniform"]),
    default="paper",
    show_default=True,
    help="classify: the paper's class mix (Table 2) or equal classes.",
)
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    default="cpu",
    show_default=True,
    help="Where the full-size image work runs (random draws stay on the CPU: same dataset either way).",
)
@click.option(
    "--shape",
    default="9232x9216",
    callback=_parse_shape,
    show_default=True,
    help="WIDTHxHEIGHT of the simulated images before reduction to 224 x 224.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--stars-only",
    is_flag=True,
    help="No galaxies on the images: the paper's stars-only classification set (galaxies are on "
    "by default, as on real images).",
)
@label_rule_option
@click.option(
    "--preprocessing-version",
    "version",
    type=click.Choice(["1", "2"]),
    default="2",
    show_default=True,
    help="The model input: 1 is the paper's (image, valid fraction), 2 adds point-like source counts.",
)
@click.option(
    "--processes",
    "--workers",
    "workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes simulating in parallel; the dataset does not depend on it (--workers: the former name).",
)
@pass_app
def dataset(
    app: AppContext, out, count, task, balance, device, shape, seed, stars_only, rule, version, workers
) -> None:
    """Write a training set of preprocessed 224 x 224 samples with labels (no FITS files)."""
    import numpy as np

    from density_db.simulate.dataset import plan_samples, write_dataset

    if device == "cuda":
        from density_db.inference.devices import resolve_device

        resolve_device(device)  # the error now, not in a worker process
    specs = plan_samples(count, task=task, seed=seed, balance=balance, galaxies=not stars_only, rule=rule)
    with progress_bar(app) as bar:
        bar_task = bar.add_task("simulating samples", total=count) if bar else None
        try:
            samples = write_dataset(
                out,
                specs,
                task=task,
                balance=balance,
                shape=shape,
                workers=workers,
                device=None if device == "cpu" else device,
                version=int(version),
                progress=(lambda: bar.advance(bar_task)) if bar else None,
            )
        except FileExistsError as error:
            raise click.ClickException(str(error)) from None
    counts = np.bincount(np.asarray(samples["density_class"]), minlength=6)
    click.echo(
        f"wrote {len(samples)} samples to {out} (preprocessing version {version}, {rule!r} labels, "
        f"classes 0-5: {', '.join(map(str, counts))}; "
        f"bright stars {int(np.min(samples['bright_star_count']))}-{int(np.max(samples['bright_star_count']))})"
    )


@simulate.command()
@click.argument("directories", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@output_format_option
@pass_app
def truth(app: AppContext, directories: tuple[Path, ...], output_format: str | None) -> None:
    """Each simulated image's truth beside the catalog's answer for it.

    Reads the manifest.ecsv of each DIRECTORY written by `simulate exposures` and, for every image, the
    answer `field_density` holds (matched by exposure, detector and band): true class, the stars its label
    rule counted and the stars brighter than 23.5 mag, against the predicted class, its confidence and the
    predicted bright-star count.  Images not ingested yet have empty answer columns.
    """
    import sqlalchemy as sa
    from astropy.table import Table, vstack

    from density_db.cli.output import write_result
    from density_db.queries import QueryResult
    from density_db.simulate.exposures import MANIFEST_NAME

    manifests = []
    for directory in directories:
        if not (directory / MANIFEST_NAME).is_file():
            raise click.ClickException(f"{directory} holds no {MANIFEST_NAME}: not a `simulate exposures` directory")
        manifests.append(Table.read(directory / MANIFEST_NAME, format="ascii.ecsv"))
    truth_rows = vstack(manifests, metadata_conflicts="silent")
    with app.open_database().engine.connect() as connection:
        answers = {
            (exposure_id, int(detector), band): answer
            for exposure_id, detector, band, *answer in connection.execute(
                sa.text(
                    "SELECT exposure_id, detector, band, density_class, round(class_confidence::numeric, 3), "
                    "round(bright_count::numeric), flag_names(flags) FROM field_density "
                    "WHERE exposure_id = ANY(:exposures)"
                ),
                {"exposures": sorted(set(truth_rows["exposure_id"]))},
            )
        }
    counted = "counted_star_count" if "counted_star_count" in truth_rows.colnames else "star_count"  # older
    rows = []
    for row in truth_rows:
        key = (str(row["exposure_id"]), int(row["detector"]), str(row["band"]))
        answer = answers.get(key, [None] * 4)
        rows.append(
            (
                *key,
                str(row["field"]),
                int(row["density_class"]),
                int(row[counted]),
                int(row["bright_star_count"]),
                *answer,
            )
        )
    columns = (
        "exposure_id",
        "detector",
        "band",
        "field",
        "true_class",
        "counted_stars",
        "true_bright",
        "density_class",
        "confidence",
        "bright_count",
        "flags",
    )
    write_result(
        QueryResult(columns, sorted(rows, key=lambda r: (r[4], r[0], r[1]))), resolve_output_format(output_format)
    )

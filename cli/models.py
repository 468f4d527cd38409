"""``density-db models``: register checkpoints in the catalog and look them up."""

from __future__ import annotations

import json
from pathlib import Path

import click

from density_db.cli.context import AppContext, pass_app
from density_db.cli.options import output_format_option, resolve_output_format


@click.group()
def models() -> None:
    """Register trained checkpoints (by sha256) and list them."""


@models.command()
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", default=None, help="Name to refer to it by (default: STAGE-ARCH-SHA8).")
@click.option("--arch", default=None, help="Architecture, for a plain torchvision-style state dict.")
@click.option(
    "--stage",
    type=click.Choice(["classifier", "regressor"]),
    default=None,
    help="Stage, for a plain torchvision-style state dict.",
)
@pass_app
def add(app: AppContext, checkpoint: Path, name: str | None, arch: str | None, stage: str | None) -> None:
    """Register CHECKPOINT; the same file added again keeps its one row."""
    from density_db.inference.model_registry import register_model

    registered, created = register_model(app.open_database(), checkpoint, name=name, architecture=arch, stage=stage)
    verb = "registered" if created else "already registered as"
    click.echo(
        f"{verb} {registered.name} ({registered.stage}, {registered.architecture}, sha256 {registered.sha256[:12]})"
    )


@models.command(name="list")
@output_format_option
@pass_app
def list_(app: AppContext, output_format: str | None) -> None:
    """List the registered models."""
    from density_db.cli.output import write_result
    from density_db.inference.model_registry import list_models
    from density_db.labels import recorded_label_rule
    from density_db.queries import QueryResult

    rows = [
        (m.id, m.name, m.stage, m.architecture, recorded_label_rule(m.metadata), m.sha256[:12], m.path)
        for m in list_models(app.open_database())
    ]
    write_result(
        QueryResult(("id", "name", "stage", "architecture", "label_rule", "sha256", "path"), rows),
        resolve_output_format(output_format),
    )


@models.command()
@click.argument("name")
@pass_app
def show(app: AppContext, name: str) -> None:
    """Show a registered model (by name or sha256) with its metadata and the label rule it was trained under."""
    from density_db.inference.checkpoints import TrainingDomain, recorded_preprocessing_version
    from density_db.inference.model_registry import find_model
    from density_db.inference.preprocessing import CHANNELS
    from density_db.labels import LABEL_RULE, label_rule, recorded_label_rule

    model = find_model(app.open_database(), name)
    click.echo(f"{model.name}: {model.stage}, {model.architecture}")
    click.echo(f"sha256: {model.sha256}")
    click.echo(f"path: {model.path}")
    rule = recorded_label_rule(model.metadata)
    click.echo(f"labels: {rule} ({label_rule(rule).description})")
    if rule != LABEL_RULE:
        click.echo(
            f"note: trained under the {rule!r} rule, not this density-db's {LABEL_RULE!r}: its density classes "
            f"count {label_rule(rule).description}, not {label_rule(LABEL_RULE).description}"
        )
    version = recorded_preprocessing_version(model.metadata)
    click.echo(f"input: preprocessing version {version} ({', '.join(CHANNELS.get(version, ('unknown',)))})")
    domain = TrainingDomain.from_metadata(model.metadata)
    click.echo(
        "trained on: "
        + (
            f"{domain.image_shape[0]} x {domain.image_shape[1]} images at "
            f'{domain.pixel_scale_arcsec:g}"/px (others are flagged outside_training_domain)'
            if domain
            else "images of unrecorded shape and scale (no domain flag)"
        )
    )
    click.echo(json.dumps(model.metadata, indent=1, sort_keys=True))

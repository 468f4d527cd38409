"""``density-db plan``: reprocessing campaigns from the stored density results."""

from __future__ import annotations

from pathlib import Path

import click

from density_db.cli.context import AppContext, pass_app
from density_db.cli.options import output_format_option, region_option, resolve_output_format, rules_option

EXIT_SOME_LINES_UNMATCHED = 3
_EXPORT_FORMATS = ("csv", "ecsv", "json", "moc")
_PROBLEMS_SHOWN = 20


@click.group()
def plan() -> None:
    """Plan reprocessing campaigns: route each frame to a processing branch by rules."""


def _write(result, output_format: str | None, out: Path | None = None) -> None:
    import contextlib

    from density_db.cli.output import write_result

    if out is None:
        write_result(result, resolve_output_format(output_format))
        return
    with open(out, "w", encoding="utf-8", newline="") as stream, contextlib.redirect_stdout(stream):
        write_result(result, output_format or "csv")


@plan.command()
@rules_option
@click.option(
    "--dump", is_flag=True, help="Print the rules file itself (the shipped one by default), to copy and edit."
)
@pass_app
def rules(app: AppContext, rules_path: Path | None, dump: bool) -> None:
    """Check a rules file and show its branches in order (the shipped rules without --rules).

    Example: density-db plan rules --dump > my_rules.toml; density-db plan rules --rules my_rules.toml
    """
    from density_db.flag_rules import default_rules_bytes
    from density_db.planning.rules import load_rules

    if dump:
        if rules_path is None:
            click.echo(default_rules_bytes().decode("utf-8"), nl=False)
        else:
            click.echo(Path(rules_path).read_text(), nl=False)
        return
    checked = load_rules(rules_path, canonical_band=app.canonical_band)
    click.echo(f"rules {checked.name!r} from {checked.source}: {len(checked.branches)} branches, first match wins")
    for index, branch in enumerate(checked.branches, start=1):
        cost = "" if branch.cost_per_frame is None else f" (cost {branch.cost_per_frame:g} per frame)"
        click.echo(f"  {index}. {branch.name}{cost}: {branch.description or ''}")
    for warning in checked.warnings:
        click.echo(f"warning: {warning}", err=True)


@plan.command()
@click.argument("name")
@rules_option
@click.option("--band", "bands", multiple=True, help="Only frames of this band (repeatable).")
@region_option
@click.option(
    "--run",
    "run_id",
    type=click.IntRange(min=1),
    default=None,
    help="Route this run's results [default: each frame's latest result].",
)
@click.option("--description", default=None, help="What the campaign is for [default: the rules' description].")
@pass_app
def create(
    app: AppContext,
    name: str,
    rules_path: Path | None,
    bands: tuple[str, ...],
    region,
    run_id: int | None,
    description: str | None,
) -> None:
    """Create campaign NAME: one pending item per selected frame with a result, in its branch.

    Example: density-db plan create spring-2027 --band g --band r --region 266.4,-29.0,5
    """
    from density_db.planning.campaigns import PlanSelection, create_campaign
    from density_db.planning.rules import load_rules

    checked = load_rules(rules_path, canonical_band=app.canonical_band)
    selection = PlanSelection(bands=app.canonical_bands(bands) if bands else None, region=region, run_id=run_id)
    created = create_campaign(app.open_database(), name, checked, selection, description=description)
    click.echo(f"campaign {name!r} (run {created.run_id}): {created.frames} frames with rules {checked.name!r}")
    width = max(len(branch) for branch in created.frames_by_branch)
    for branch, frames in created.frames_by_branch.items():
        click.echo(f"  {branch.ljust(width)}  {frames}")
    if created.frames_without_result:
        click.echo(
            f"{created.frames_without_result} selected frames have no density result and are not planned "
            "(run density-db ingest on them first)"
        )
    for warning in created.warnings:
        click.echo(f"warning: {warning}", err=True)


@plan.command("list")
@output_format_option
@pass_app
def list_(app: AppContext, output_format: str | None) -> None:
    """Every campaign with its frames and progress."""
    from density_db.planning.campaigns import list_campaigns

    _write(list_campaigns(app.open_database()), output_format)


@plan.command()
@click.argument("name")
@output_format_option
@pass_app
def show(app: AppContext, name: str, output_format: str | None) -> None:
    """Frames, area (deg2), estimated cost and progress of campaign NAME per branch and band.

    The area sums the frames' footprints (overlapping frames each count); the
    cost is frames times the branch's cost_per_frame.
    """
    from density_db.planning.campaigns import show_campaign

    report = show_campaign(app.open_database(), name)
    output_format = resolve_output_format(output_format)
    if output_format == "table":
        rules = report.rules
        click.echo(f"campaign {report.name!r}, created {report.created_at:%Y-%m-%d %H:%M} by run {report.run_id}")
        if report.description:
            click.echo(f"  {report.description}")
        click.echo(f"  rules {rules.get('name')!r} from {rules.get('source')} (sha256 {rules.get('sha256', '')[:12]})")
        click.echo(f"  selection: {_describe_selection(report.selection)}")
    _write(report.table, output_format)
    if output_format == "table":
        rows = report.table.rows
        costs = [row[4] for row in rows if row[4] is not None]
        click.echo(
            f"total: {sum(row[2] for row in rows)} frames, {sum(row[3] for row in rows):.2f} deg2"
            + (f", cost {sum(costs):g}" if costs else "")
        )


def _describe_selection(selection: dict) -> str:
    parts = []
    if selection.get("bands"):
        parts.append("bands " + ", ".join(selection["bands"]))
    if selection.get("region"):
        parts.append(f"region {selection['region']}")
    parts.append(f"results of run {selection['run_id']}" if selection.get("run_id") else "latest result per frame")
    return "; ".join(parts)


@plan.command()
@click.argument("name")
@click.option(
    "--format",
    "export_format",
    type=click.Choice(_EXPORT_FORMATS),
    default="csv",
    show_default=True,
    help="csv, ecsv or json: one row per frame; moc: one MOC FITS file per branch (for Aladin).",
)
@click.option("--branch", default=None, help="Only this branch.")
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path),
    default=None,
    help="File to write (a directory for moc) [default: stdout; the current directory for moc].",
)
@pass_app
def export(app: AppContext, name: str, export_format: str, branch: str | None, out: Path | None) -> None:
    """Export campaign NAME's items, or its branches' sky coverage as MOCs.

    Example: density-db plan export spring-2027 --format moc --out mocs/
    """
    database = app.open_database()
    if export_format == "moc":
        from density_db.planning.exports import write_branch_mocs

        written = write_branch_mocs(database, name, out or Path("."), branch=branch)
        if not written:
            click.echo(f"campaign {name!r} has no frames" + (f" in branch {branch!r}" if branch else ""), err=True)
        for path in written:
            click.echo(str(path))
        return
    from density_db.planning.exports import campaign_items

    _write(campaign_items(database, name, branch=branch), export_format, out)


@plan.command()
@click.argument("first")
@click.argument("second")
@click.option("--frames", "list_frames", is_flag=True, help="List every frame that changed branch.")
@output_format_option
@pass_app
def diff(app: AppContext, first: str, second: str, list_frames: bool, output_format: str | None) -> None:
    """Frames whose branch differs between campaigns FIRST and SECOND (e.g. after new models).

    An empty from_branch or to_branch: the frame is in one campaign only.
    """
    from density_db.planning.campaigns import diff_campaigns

    difference = diff_campaigns(app.open_database(), first, second)
    _write(difference.changed_frames if list_frames else difference.transitions, output_format)
    if resolve_output_format(output_format) == "table":
        moved = sum(row[-1] for row in difference.transitions.rows)
        click.echo(f"{moved} frames changed branch, {difference.unchanged} kept it")


@plan.command()
@click.argument("name")
@click.option(
    "--from",
    "report",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    required=True,
    help="A pipeline's CSV report: a status column (done, failed, pending) and frame_id, path "
    "(+ hdu_index) or exposure_id + detector.",
)
@pass_app
def update(app: AppContext, name: str, report: Path) -> None:
    """Mark items of campaign NAME done or failed from a pipeline's report.

    Lines that match no item of the campaign are listed and the exit status is 3;
    the other lines are applied.  A bad status rejects the whole report.
    """
    from density_db.planning.campaigns import update_from_report

    outcome = update_from_report(app.open_database(), name, report)
    click.echo(
        f"campaign {name!r}: {outcome.updated} items updated, {outcome.unchanged} already had that status, "
        f"{len(outcome.problems)} report lines matched no item"
    )
    for problem in outcome.problems[:_PROBLEMS_SHOWN]:
        click.echo(f"  {problem}", err=True)
    if len(outcome.problems) > _PROBLEMS_SHOWN:
        click.echo(f"  ... and {len(outcome.problems) - _PROBLEMS_SHOWN} more", err=True)
    if outcome.problems:
        click.get_current_context().exit(EXIT_SOME_LINES_UNMATCHED)


@plan.command()
@click.argument("name", required=False)
@output_format_option
@pass_app
def status(app: AppContext, name: str | None, output_format: str | None) -> None:
    """Progress of every campaign, or of campaign NAME per branch."""
    from density_db.planning.campaigns import campaign_status

    _write(campaign_status(app.open_database(), name), output_format)


@plan.command()
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def delete(app: AppContext, name: str, yes: bool) -> None:
    """Delete campaign NAME and its items (the frames and results stay)."""
    from density_db.planning.campaigns import delete_campaign

    if not yes:
        click.confirm(f"delete campaign {name!r} and its items?", abort=True)
    items = delete_campaign(app.open_database(), name)
    click.echo(f"campaign {name!r} deleted ({items} items)")

"""``density-db flags``: the flag bits, and recomputing them from stored results with other thresholds."""

from __future__ import annotations

from pathlib import Path

import click

from density_db.cli.context import AppContext, pass_app
from density_db.cli.options import output_format_option, resolve_output_format, rules_option


@click.group()
def flags() -> None:
    """Field flags on density results: list the bits, recompute them with a rules file."""


@flags.command("list")
@output_format_option
@pass_app
def list_flags(app: AppContext, output_format: str | None) -> None:
    """The flag bits: bit, mask, name and meaning, with the thresholds in force.

    In SQL, flag_names(flags) names the bits of a bitmask:
    SELECT frame_id, flag_names(flags) FROM field_density WHERE flags <> 0
    """
    from density_db.cli.output import write_result
    from density_db.flag_rules import flag_rules_in_force
    from density_db.flags import FLAGS
    from density_db.queries import QueryResult

    rules = flag_rules_in_force(app.open_database())
    rows = [(flag.bit, flag.mask, flag.name, flag.meaning) for flag in FLAGS]
    write_result(
        QueryResult(columns=("bit", "mask", "name", "meaning"), rows=rows), resolve_output_format(output_format)
    )
    if resolve_output_format(output_format) == "table":
        thresholds = ", ".join(f"{name} = {value}" for name, value in rules.thresholds.as_dict().items())
        click.echo(f"thresholds in force ({rules.provenance.get('source')}): {thresholds}")


@flags.command()
@rules_option
@click.option("--run-name", default=None, help="A name for the flags run.")
@pass_app
def recompute(app: AppContext, rules_path: Path | None, run_name: str | None) -> None:
    """Recompute the flags of every stored result from a rules file's [flags] thresholds.

    Uses the stored probabilities, counts and valid-pixel fractions: no model
    runs again.  The run records the rules, and later ingests flag their
    results with them until the next recompute.

    Example: density-db flags recompute --rules my_rules.toml
    """
    from density_db.flag_rules import FlagRules
    from density_db.planning.flag_runs import recompute_flags
    from density_db.planning.rules import load_rules

    rules = load_rules(rules_path, canonical_band=app.canonical_band)
    outcome = recompute_flags(app.open_database(), FlagRules.from_rules(rules), run_name=run_name)
    set_flags = ", ".join(f"{name} {count}" for name, count in outcome.counts.items() if count)
    click.echo(
        f"run {outcome.run_id}: flags of {outcome.results} results recomputed with {rules.source} rules"
        f" ({set_flags or 'no flag set'})"
    )

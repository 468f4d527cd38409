"""Which flag thresholds are in force, and ``flags recompute``: new thresholds over every stored result.

The thresholds in force are those of the latest completed ``flags`` run (a
team's own rules, once recomputed, stay in force for later ingests), or the
shipped default rules.  A recompute is a run of kind ``flags`` whose
``config`` holds the rules; every result it touches points at it through
``density_result.flags_run_id``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from density_db.database import Database
from density_db.flags import FLAGS, FlagThresholds, update_flags
from density_db.models import Run
from density_db.planning.rules import Rules, default_rules
from density_db.runs import begin_run, recording_outcome


@dataclass(frozen=True)
class FlagRules:
    """Flag thresholds and where they came from (stored in the ``config`` of the runs that apply them)."""

    thresholds: FlagThresholds
    provenance: dict[str, Any]

    @classmethod
    def from_rules(cls, rules: Rules) -> FlagRules:
        return cls(
            thresholds=rules.require_flags(),
            provenance={
                "name": rules.name,
                "source": rules.source,
                "sha256": rules.sha256,
                "flags": rules.require_flags().as_dict(),
            },
        )


def flag_rules_in_force(database: Database) -> FlagRules:
    """The thresholds of the latest completed ``flags recompute``, else the shipped defaults."""
    with database.engine.connect() as connection:
        config = connection.execute(
            sa.select(Run.config).where(Run.kind == "flags", Run.status == "completed").order_by(Run.id.desc()).limit(1)
        ).scalar()
    if config and "flag_rules" in config:
        stored = config["flag_rules"]
        return FlagRules(thresholds=FlagThresholds(**stored["flags"]), provenance=stored)
    return FlagRules.from_rules(default_rules())


@dataclass(frozen=True)
class RecomputeOutcome:
    run_id: int
    results: int
    """Results whose flags were set."""
    counts: dict[str, int]
    """Results carrying each flag afterwards."""


def recompute_flags(database: Database, rules: FlagRules, *, run_name: str | None = None) -> RecomputeOutcome:
    """Set the flags of every stored result from ``rules`` in one transaction, as a ``flags`` run."""
    outcome: dict[str, Any] = {}
    with (
        begin_run(database, kind="flags", name=run_name, config={"flag_rules": rules.provenance}) as run,
        recording_outcome(run, lambda: outcome),
    ):
        with database.engine.begin() as connection:
            outcome["results"] = update_flags(connection, rules.thresholds, run_id=run.id)
            row = connection.execute(
                sa.text(
                    "SELECT "
                    + ", ".join(f"count(*) FILTER (WHERE flags & {flag.mask} <> 0)" for flag in FLAGS)
                    + " FROM density_result"
                )
            ).one()
        outcome["flags"] = {flag.name: int(value) for flag, value in zip(FLAGS, row, strict=True)}
    return RecomputeOutcome(run_id=run.id, results=outcome["results"], counts=outcome["flags"])

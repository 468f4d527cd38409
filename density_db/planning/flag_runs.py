"""``flags recompute``: new thresholds over every stored result.

A recompute puts its thresholds in force for later ingests
(:func:`density_db.flag_rules.flag_rules_in_force`).  It is a run of kind ``flags`` whose
``config`` holds the rules; every result it touches points at it through
``density_result.flags_run_id``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from density_db.database import Database
from density_db.flag_rules import FlagRules
from density_db.flags import FLAGS, update_flags
from density_db.runs import begin_run, recording_outcome


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

"""The flag thresholds a result is flagged with: the ``[flags]`` table, the shipped defaults, those in force.

Thresholds are read from the ``[flags]`` table of a rules file
(``density_db/default_rules.toml`` is shipped; the planning rules of
:mod:`density_db.planning.rules` use the same file for their campaign
branches).  The thresholds in force are those of the latest completed
``flags`` run (a team's own rules, once recomputed, stay in force for later
ingests), else the shipped defaults.  Every run that flags results stores the
:attr:`FlagRules.provenance` of its thresholds in its ``config``.
"""

from __future__ import annotations

import hashlib
import math
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any

import sqlalchemy as sa

from density_db.database import Database
from density_db.errors import RulesError
from density_db.flags import FlagThresholds
from density_db.labels import N_CLASSES
from density_db.tables import Run

DEFAULT_RULES = "default_rules.toml"
"""The shipped rules file, package data of ``density_db``: flag thresholds and the default campaign."""

_INTEGER_THRESHOLDS = ("crowded_min_class", "band_disagreement_min_class_gap")


@dataclass(frozen=True)
class FlagRules:
    """Flag thresholds and where they came from (stored in the ``config`` of the runs that apply them)."""

    thresholds: FlagThresholds
    provenance: dict[str, Any]

    @classmethod
    def from_rules(cls, rules) -> FlagRules:
        """The thresholds of a checked rules file (:class:`density_db.planning.rules.Rules`)."""
        return cls.of_file(rules.require_flags(), name=rules.name, source=rules.source, sha256=rules.sha256)

    @classmethod
    def of_file(cls, thresholds: FlagThresholds, *, name: str, source: str, sha256: str) -> FlagRules:
        """Thresholds read from a rules file, with the provenance every run stores of them."""
        return cls(
            thresholds=thresholds,
            provenance={"name": name, "source": source, "sha256": sha256, "flags": thresholds.as_dict()},
        )


def default_rules_bytes() -> bytes:
    """The shipped rules file as written."""
    return resources.files("density_db").joinpath(DEFAULT_RULES).read_bytes()


def default_flag_rules() -> FlagRules:
    """The thresholds of the shipped rules file, with the provenance a parsed rules file gives them."""
    data = default_rules_bytes()
    document = tomllib.loads(data.decode("utf-8"))
    return FlagRules.of_file(
        parse_flag_thresholds(document["flags"], "default"),
        name=document["name"],
        source="default",
        sha256=hashlib.sha256(data).hexdigest(),
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
    return default_flag_rules()


def parse_flag_thresholds(table: object, source: str) -> FlagThresholds:
    """Check a ``[flags]`` table and return its thresholds.

    Raises
    ------
    RulesError
        For a key that is no threshold, a missing one, or a value of the wrong type or range.
    """
    where = f"{source}: [flags]"
    if not isinstance(table, dict):
        raise RulesError(f"{where} must be a table")
    fields = FlagThresholds.__dataclass_fields__
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise RulesError(f"{where}: unknown key {unknown[0]!r}; expected one of {', '.join(sorted(fields))}")
    missing = [name for name in fields if name not in table]
    if missing:
        raise RulesError(f"{where}: missing {', '.join(missing)}")
    values: dict[str, Any] = {}
    for name in fields:
        value = table[name]
        integer = name in _INTEGER_THRESHOLDS
        if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
            raise RulesError(f"{where}: {name} must be {'an integer' if integer else 'a number'}, got {value!r}")
        if value < 0 or not math.isfinite(value):
            raise RulesError(f"{where}: {name} must be a finite number >= 0, got {value!r}")
        values[name] = value
    if values["crowded_min_class"] > N_CLASSES - 1:
        raise RulesError(
            f"{where}: crowded_min_class must be a class 0-{N_CLASSES - 1}, got {values['crowded_min_class']}"
        )
    return FlagThresholds(**values)
